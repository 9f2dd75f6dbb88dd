//! The regorus side of initialization policies, run only inside the policy evaluator child
//! (see [`super::child`]): compile a policy, evaluate its `deny` rule.
//!
//! A policy is compiled once: parsed (as Rego v1, or v0 as in the seed's example), analysed and
//! prepared for `data.spacelift.deny`. Each evaluation clones the prepared engine (a few
//! reference counts), sets the input and evaluates `deny` under a wall-clock limit. Anything
//! that goes wrong while evaluating denies the run (fail closed).

use std::num::NonZeroU32;
use std::time::{Duration, Instant};

use regorus::utils::limits::ExecutionTimerConfig;
use regorus::{Engine, Value};

use super::{PolicyError, PolicyEvalError, RegoVersion};

/// The package initialization policies declare, as in Spacelift.
pub const PACKAGE: &str = "data.spacelift";
/// The rule whose messages deny a run.
pub const DENY_RULE: &str = "data.spacelift.deny";

/// A compiled initialization policy, ready to be evaluated.
#[derive(Clone)]
pub struct Compiled {
    name: String,
    engine: Engine,
    /// Whether the policy declares a `deny` rule; without one it denies nothing. Decided at
    /// compile time so that no evaluation error is ever mistaken for "no rule".
    has_deny: bool,
    version: RegoVersion,
}

impl std::fmt::Debug for Compiled {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Compiled")
            .field("name", &self.name)
            .field("version", &self.version)
            .finish_non_exhaustive()
    }
}

impl Compiled {
    /// Parses and prepares `source`. `file` is the name used in syntax error positions.
    pub fn compile(
        name: &str,
        file: &str,
        source: &str,
        version: RegoVersion,
    ) -> Result<Self, PolicyError> {
        let (mut engine, version) = match version {
            RegoVersion::V0 | RegoVersion::V1 => (parse(file, source, version)?, version),
            RegoVersion::Auto => match parse(file, source, RegoVersion::V1) {
                Ok(engine) => (engine, RegoVersion::V1),
                Err(v1_error) => match parse(file, source, RegoVersion::V0) {
                    Ok(engine) => (engine, RegoVersion::V0),
                    Err(v0_error) => return Err(pick_error(source, v1_error, v0_error)),
                },
            },
        };
        let packages = engine
            .get_packages()
            .map_err(|e| PolicyError::Prepare(e.to_string()))?;
        if packages.iter().any(|p| p != PACKAGE) || packages.is_empty() {
            let found = packages
                .iter()
                .find(|p| *p != PACKAGE)
                .map(|p| format!("`package {}`", p.trim_start_matches("data.")))
                .unwrap_or_else(|| "no package".into());
            return Err(PolicyError::Package { found });
        }
        // Analyse and schedule the policy now, once, so each evaluation clones a prepared
        // engine. A policy without a `deny` rule is fine: it denies nothing.
        let has_deny = engine
            .has_declared_rule_rooted_at(file, "deny")
            .map_err(|e| PolicyError::Prepare(format!("cannot look for a `deny` rule: {e:#}")))?;
        if has_deny {
            engine
                .compile_with_entrypoint(&DENY_RULE.into())
                .map_err(|e| PolicyError::Prepare(format!("{e:#}")))?;
        }
        Ok(Self {
            name: name.to_string(),
            engine,
            has_deny,
            version,
        })
    }

    /// The syntax the policy was parsed with.
    pub fn version(&self) -> RegoVersion {
        self.version
    }

    /// Whether the policy has a `deny` rule (without one it allows every run).
    pub fn has_deny(&self) -> bool {
        self.has_deny
    }

    /// Evaluates `deny` for `input` (a JSON document) within `timeout` and returns its
    /// messages (empty: allowed). Every evaluation error denies.
    pub fn evaluate(&self, input: &str, timeout: Duration) -> Result<Vec<String>, PolicyEvalError> {
        if !self.has_deny {
            return Ok(Vec::new());
        }
        let started = Instant::now();
        let mut engine = self.engine.clone();
        engine.set_execution_timer_config(ExecutionTimerConfig {
            limit: timeout,
            check_interval: NonZeroU32::MIN,
        });
        let input = Value::from_json_str(input)
            .map_err(|e| PolicyEvalError::Failed(format!("the input is not JSON: {e}")))?;
        engine.set_input(input);
        match engine.eval_rule(DENY_RULE.to_string()) {
            Ok(value) => deny_messages(&self.name, value).map_err(PolicyEvalError::Failed),
            Err(e) => {
                let text = format!("{e:#}");
                if started.elapsed() >= timeout
                    || e.downcast_ref::<regorus::LimitError>()
                        .is_some_and(|l| matches!(l, regorus::LimitError::TimeLimitExceeded { .. }))
                {
                    Err(PolicyEvalError::Timeout {
                        limit_millis: u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX),
                    })
                } else {
                    Err(PolicyEvalError::Failed(one_line(&text)))
                }
            }
        }
    }
}

fn parse(file: &str, source: &str, version: RegoVersion) -> Result<Engine, PolicyError> {
    let mut engine = Engine::new();
    engine.set_rego_v0(version == RegoVersion::V0);
    engine
        .add_policy(file.to_string(), source.to_string())
        .map_err(|e| PolicyError::Syntax(one_line(&format!("{e:#}"))))?;
    Ok(engine)
}

/// regorus reports a syntax error as a code frame (`--> file:line:col`, the line, a caret,
/// `error: ...`); events and conditions want one line: `file:line:col: message`.
fn one_line(error: &str) -> String {
    let location = error
        .lines()
        .find_map(|line| line.trim().strip_prefix("--> "));
    let message = error
        .lines()
        .find_map(|line| line.trim().strip_prefix("error: "));
    match (location, message) {
        (Some(location), Some(message)) => format!("{location}: {message}"),
        _ => error.split_whitespace().collect::<Vec<_>>().join(" "),
    }
}

/// Both syntaxes failed: report the error of the one the policy was most likely written in.
fn pick_error(source: &str, v1_error: PolicyError, v0_error: PolicyError) -> PolicyError {
    let looks_v1 = source.contains("import rego.v1")
        || source
            .split(|c: char| !c.is_alphanumeric() && c != '_')
            .any(|word| word == "if" || word == "contains");
    let (version, error) = if looks_v1 {
        ("v1", v1_error)
    } else {
        ("v0", v0_error)
    };
    PolicyError::Syntax(format!(
        "does not parse as Rego {version} (set regoVersion to pin the syntax): {error}"
    ))
}

/// `deny` may be a set (or array) of messages, or a boolean.
fn deny_messages(name: &str, value: Value) -> Result<Vec<String>, String> {
    let message = |v: &Value| match v {
        Value::String(s) => s.to_string(),
        other => other.to_json_str().unwrap_or_else(|_| format!("{other:?}")),
    };
    Ok(match value {
        Value::Undefined | Value::Null | Value::Bool(false) => Vec::new(),
        Value::Bool(true) => vec![format!("denied by policy {name}")],
        Value::Set(set) => set.iter().map(message).collect(),
        Value::Array(items) => items.iter().map(message).collect(),
        other => {
            return Err(format!(
                "`deny` must be a set of messages, got {}",
                other.to_json_str().unwrap_or_default()
            ));
        }
    })
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    const SEED: &str = "package spacelift\n\ndeny[\"you shall not pass\"] {\n    false\n}\n";

    fn compile(source: &str) -> Result<Compiled, PolicyError> {
        Compiled::compile("test", "test.rego", source, RegoVersion::Auto)
    }

    fn eval(policy: &Compiled, input: serde_json::Value) -> Result<Vec<String>, PolicyEvalError> {
        policy.evaluate(&input.to_string(), Duration::from_millis(200))
    }

    #[test]
    fn the_seed_policy_is_v0_and_allows() {
        let policy = compile(SEED).unwrap();
        assert_eq!(policy.version(), RegoVersion::V0);
        assert_eq!(eval(&policy, json!({})).unwrap(), Vec::<String>::new());
    }

    #[test]
    fn v0_and_v1_deny_with_every_message() {
        let v0 = "package spacelift\ndeny[\"a\"] { input.run.stage == \"planning\" }\ndeny[\"b\"] { true }";
        let v1 = "package spacelift\ndeny contains \"a\" if input.run.stage == \"planning\"\ndeny contains \"b\" if true";
        for source in [v0, v1] {
            let policy = compile(source).unwrap();
            let mut reasons = eval(&policy, json!({"run": {"stage": "planning"}})).unwrap();
            reasons.sort();
            assert_eq!(reasons, ["a", "b"]);
            assert_eq!(
                eval(&policy, json!({"run": {"stage": "applying"}})).unwrap(),
                ["b"]
            );
        }
    }

    #[test]
    fn a_syntax_error_names_the_version_and_position() {
        let err = compile("package spacelift\ndeny contains msg if {\n  msg := \n}").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("does not parse as Rego v1 (set regoVersion to pin the syntax): "),
            "{text}"
        );
        assert!(
            text.ends_with("test.rego:3:7: expecting `}` while parsing set"),
            "{text}"
        );
    }

    #[test]
    fn another_package_is_refused() {
        let err = compile("package other\ndeny contains \"x\" if true").unwrap_err();
        assert_eq!(
            err.to_string(),
            "the policy declares `package other`, but initialization policies must declare `package spacelift`"
        );
    }

    #[test]
    fn a_policy_without_deny_allows() {
        let policy = compile("package spacelift\nallow := true").unwrap();
        assert!(eval(&policy, json!({})).unwrap().is_empty());
        // Decided at compile time: its other rules are never evaluated, even broken ones.
        let policy = compile("package spacelift\nimport rego.v1\nbroken := 1 / 0").unwrap();
        assert!(eval(&policy, json!({})).unwrap().is_empty());
        let policy = compile("package spacelift\nimport rego.v1\ndefault deny := false").unwrap();
        assert!(eval(&policy, json!({})).unwrap().is_empty());
    }

    #[test]
    fn every_evaluation_error_of_a_deny_rule_denies_whatever_its_text() {
        // regorus quotes the offending value: an input of "not found" once made this error
        // look like "no deny rule" and let the run through.
        let policy = compile(
            "package spacelift\nimport rego.v1\ndeny contains \"odd\" if 1 + input.note > 0",
        )
        .unwrap();
        for note in ["not found", "not a valid rule path", "x"] {
            let err = eval(&policy, json!({"note": note})).unwrap_err();
            assert_eq!(err.kind(), "error");
            assert_eq!(
                err.to_string(),
                format!(
                    "evaluation failed: test.rego:3:33: `add` expects numeric argument. Got `\"{note}\"` instead; the run is denied"
                )
            );
        }
        let policy =
            compile("package spacelift\nimport rego.v1\ndeny contains \"x\" if 1 / 0 > 0").unwrap();
        assert!(eval(&policy, json!({})).is_err());
    }

    #[test]
    fn a_looping_policy_times_out() {
        let source = "package spacelift\ndeny contains \"never\" if {\n  some i in numbers.range(1, 20000)\n  some j in numbers.range(1, 20000)\n  i * j < 0\n}";
        let policy = Compiled::compile("loop", "loop.rego", source, RegoVersion::Auto).unwrap();
        let started = Instant::now();
        let err = policy
            .evaluate("{}", Duration::from_millis(50))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "evaluation took longer than 50 ms (the policy time limit); the run is denied"
        );
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
    }
}
