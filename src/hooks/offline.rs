//! Hooks without a cluster: the pipeline for `render --plugin FILE[=SETTINGS] --policy FILE`,
//! the decision trail as text, and `plugin check FILE`.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use super::abi::ABI_MARKER;
use super::host::{HostLimits, WasmHost};
use super::pipeline::{Decision, Pipeline, PluginEntry, PolicyEntry};
use super::plugin::Plugin;
use super::rego::{Policy, PolicyEvaluator, RegoVersion};
use super::source::gunzip_if_needed;
use super::spec::PluginSpec;
use super::trail::HookRecord;

/// `--plugin FILE[=SETTINGS]`: a module file and its settings (JSON or YAML text).
#[derive(Clone, Debug, PartialEq)]
pub struct PluginArg {
    pub path: PathBuf,
    pub settings: Option<serde_json::Value>,
}

/// Why an offline hook cannot be used. Names the file and the problem.
#[derive(Debug, thiserror::Error)]
pub enum OfflineError {
    #[error("--plugin {arg:?}: the settings after '=' are neither JSON nor YAML: {message}")]
    Settings { arg: String, message: String },
    #[error("{file}: {message}")]
    File { file: String, message: String },
    #[error("{0}")]
    Host(#[from] super::host::HostError),
}

impl std::str::FromStr for PluginArg {
    type Err = OfflineError;

    fn from_str(arg: &str) -> Result<Self, Self::Err> {
        let (path, settings) = match arg.split_once('=') {
            Some((path, settings)) => {
                let value: serde_json::Value =
                    yaml_serde::from_str(settings).map_err(|e| OfflineError::Settings {
                        arg: arg.to_string(),
                        message: e.to_string(),
                    })?;
                (path, Some(value))
            }
            None => (arg, None),
        };
        Ok(Self {
            path: PathBuf::from(path),
            settings,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, OfflineError> {
    std::fs::read(path).map_err(|e| OfflineError::File {
        file: path.display().to_string(),
        message: e.to_string(),
    })
}

/// The name of a hook loaded from a file: the file name without its extensions.
fn stem(path: &Path) -> String {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    name.split('.').next().unwrap_or_default().to_string()
}

/// A pipeline of `plugins` (as cluster plugins, in order) and `policies` (as cluster policies).
/// Loading problems are errors here: offline there is no previous version to fall back on.
pub fn pipeline(
    plugins: &[PluginArg],
    pool_policy: Option<&Path>,
    policies: &[PathBuf],
) -> Result<Pipeline, OfflineError> {
    let host = WasmHost::new(HostLimits::default())?;
    let mut pipeline = Pipeline {
        scope: "render".into(),
        ..Pipeline::default()
    };
    for arg in plugins {
        let file = arg.path.display().to_string();
        let bytes = gunzip_if_needed(&read(&arg.path)?, host.limits().max_module_bytes).map_err(
            |message| OfflineError::File {
                file: file.clone(),
                message,
            },
        )?;
        let spec = PluginSpec {
            config_map: file.clone(),
            settings: arg.settings.clone(),
            ..PluginSpec::default()
        };
        let plugin = Plugin::load(&host, &stem(&arg.path), &bytes, &spec).map_err(|e| {
            OfflineError::File {
                file,
                message: e.to_string(),
            }
        })?;
        pipeline
            .cluster_plugins
            .push(PluginEntry::Ready(Arc::new(plugin)));
    }
    if pool_policy.is_none() && policies.is_empty() {
        return Ok(pipeline);
    }
    // Policies run in a child of this binary (`render` is the operator's), as in the operator.
    let evaluator =
        PolicyEvaluator::of_this_program(super::config::ConfigLimits::default().policy_limits())
            .map_err(|e| OfflineError::File {
                file: "(policy evaluator)".into(),
                message: e.to_string(),
            })?;
    if let Some(path) = pool_policy {
        pipeline.pool_policy = Some(PolicyEntry::Ready(compile_policy(&evaluator, path)?));
    }
    for path in policies {
        pipeline
            .cluster_policies
            .push(PolicyEntry::Ready(compile_policy(&evaluator, path)?));
    }
    Ok(pipeline)
}

/// A Rego file, compiled as the operator compiles a policy (either syntax).
fn compile_policy(policies: &Arc<PolicyEvaluator>, path: &Path) -> Result<Policy, OfflineError> {
    let file = path.display().to_string();
    let text = String::from_utf8(read(path)?).map_err(|e| OfflineError::File {
        file: file.clone(),
        message: format!("not UTF-8: {e}"),
    })?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    policies
        .compile(&name, &file, &text, RegoVersion::Auto)
        .map_err(|e| OfflineError::File {
            file,
            message: e.to_string(),
        })
}

/// The trail as aligned text, one hook a line, then `allowed` when the run may go on (a
/// denial is the caller's error message).
pub fn describe(decision: &Decision) -> String {
    let mut out = String::new();
    let trail: &[HookRecord] = decision.trail();
    let width = trail.iter().map(|r| r.hook.len()).max().unwrap_or(0).max(4);
    for record in trail {
        let outcome = serde_json::to_value(record.outcome)
            .ok()
            .and_then(|v| v.as_str().map(str::to_string))
            .unwrap_or_default();
        let _ = write!(
            out,
            "{:<26} {:<width$}  {:<8} {:>8} µs",
            record.stage.to_string(),
            record.hook,
            outcome,
            record.micros
        );
        if !record.changes.is_empty() {
            let _ = write!(out, "  changed {}", record.changes.join(", "));
        }
        if let Some(message) = &record.message {
            let _ = write!(out, "  {message}");
        }
        out.push('\n');
    }
    if let Decision::Allowed(_) = decision {
        out.push_str("allowed\n");
    }
    out
}

/// What `plugin check FILE` found.
#[derive(Debug)]
pub struct CheckReport {
    pub file: String,
    pub size: usize,
    pub digest: String,
    pub compile_millis: f64,
    pub exports: Vec<String>,
    pub imports: Vec<String>,
    pub abi: &'static str,
}

impl std::fmt::Display for CheckReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "{}: ok", self.file)?;
        writeln!(f, "  abi       {}", self.abi)?;
        writeln!(f, "  size      {} bytes ({})", self.size, self.digest)?;
        writeln!(f, "  compile   {:.0} ms", self.compile_millis)?;
        writeln!(f, "  exports   {}", self.exports.join(", "))?;
        writeln!(
            f,
            "  imports   {}",
            if self.imports.is_empty() {
                "none".to_string()
            } else {
                self.imports.join(", ")
            }
        )?;
        writeln!(f, "  settings  valid")
    }
}

/// Compiles `path`, checks its imports and ABI exports and runs `validate_settings` once.
pub fn check(
    path: &Path,
    settings: Option<serde_json::Value>,
) -> Result<CheckReport, OfflineError> {
    let file = path.display().to_string();
    let host = WasmHost::new(HostLimits::default())?;
    let bytes =
        gunzip_if_needed(&read(path)?, host.limits().max_module_bytes).map_err(|message| {
            OfflineError::File {
                file: file.clone(),
                message,
            }
        })?;
    let started = Instant::now();
    let spec = PluginSpec {
        config_map: file.clone(),
        settings,
        ..PluginSpec::default()
    };
    let plugin =
        Plugin::load(&host, &stem(path), &bytes, &spec).map_err(|e| OfflineError::File {
            file: file.clone(),
            message: e.to_string(),
        })?;
    let module = plugin.module();
    Ok(CheckReport {
        file,
        size: module.size(),
        digest: module.digest().to_string(),
        compile_millis: started.elapsed().as_secs_f64() * 1e3,
        exports: module.exports().to_vec(),
        imports: module.imports().to_vec(),
        abi: ABI_MARKER,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plugin_args_take_json_or_yaml_settings() {
        let arg: PluginArg = "m.wasm={\"mirrors\":{\"docker.io\":\"m\"}}"
            .parse()
            .unwrap();
        assert_eq!(arg.path, PathBuf::from("m.wasm"));
        assert_eq!(
            arg.settings,
            Some(serde_json::json!({"mirrors": {"docker.io": "m"}}))
        );
        let arg: PluginArg = "m.wasm".parse().unwrap();
        assert_eq!(arg.settings, None);
        let err = "m.wasm={nope".parse::<PluginArg>().unwrap_err();
        assert!(
            err.to_string().starts_with(
                "--plugin \"m.wasm={nope\": the settings after '=' are neither JSON nor YAML"
            ),
            "{err}"
        );
    }
}
