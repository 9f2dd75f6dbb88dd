//! Logging: a tracing subscriber writing JSON (for log collectors) or text (for people) to
//! stderr, like controller-runtime's zap logger.

use std::io::IsTerminal as _;

use tracing_subscriber::EnvFilter;

/// How log lines are written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One JSON object per line, event fields at the top level.
    Json,
    /// Human-readable text.
    Text,
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("invalid log filter {filter:?} (from {source_name}): {source}")]
    Filter {
        filter: String,
        source_name: &'static str,
        #[source]
        source: tracing_subscriber::filter::ParseError,
    },
}

/// Install the global subscriber. `filter` is an `EnvFilter` directive (`info`,
/// `workerpool_operator=debug,kube=info`); a non-empty `RUST_LOG` overrides it.
///
/// Returns `Ok(false)` when a subscriber was already installed (a second call, or a test
/// harness that set one): the existing one is kept. A bad filter is an error, so a typo in a
/// flag does not silently log nothing.
pub fn init(format: LogFormat, filter: &str) -> Result<bool, TelemetryError> {
    let env = std::env::var("RUST_LOG")
        .ok()
        .filter(|s| !s.trim().is_empty());
    let filter = build_filter(filter, env.as_deref())?;
    // Colours only on a terminal: in a container log or a file, escape codes split every
    // `field=value` and defeat grep.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr);
    // `try_init` fails only when a global subscriber exists already.
    let installed = match format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .with_span_list(false)
            .try_init()
            .is_ok(),
        LogFormat::Text => builder.try_init().is_ok(),
    };
    Ok(installed)
}

/// The filter from `RUST_LOG` when set, else from the flag.
fn build_filter(flag: &str, rust_log: Option<&str>) -> Result<EnvFilter, TelemetryError> {
    let (directives, source_name) = match rust_log {
        Some(env) => (env, "RUST_LOG"),
        None => (flag, "the log filter flag"),
    };
    EnvFilter::builder()
        .parse(directives)
        .map_err(|source| TelemetryError::Filter {
            filter: directives.to_owned(),
            source_name,
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rust_log_overrides_the_flag() {
        let filter = build_filter("info", Some("debug")).map(|f| f.to_string());
        assert_eq!(filter.ok().as_deref(), Some("debug"));
    }

    #[test]
    fn the_flag_is_used_without_rust_log() {
        let filter = build_filter("workerpool_operator=debug,kube=info", None);
        assert!(filter.is_ok());
    }

    #[test]
    fn a_bad_filter_names_where_it_came_from() {
        let err = build_filter("info", Some("foo=notalevel")).err();
        let msg = err.map(|e| e.to_string()).unwrap_or_default();
        assert!(msg.contains("RUST_LOG"), "{msg}");
    }

    #[test]
    fn init_twice_keeps_the_first_subscriber() {
        let first = init(LogFormat::Text, "info");
        let second = init(LogFormat::Json, "info");
        assert!(first.is_ok() && second.is_ok());
        assert_eq!(second.ok(), Some(false));
    }
}
