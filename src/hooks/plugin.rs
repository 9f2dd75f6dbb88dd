//! A loaded WASM plugin: a compiled module plus its settings and limits, validated once at load
//! and called once per run with the ABI's JSON documents.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use super::abi::{self, ABI_VERSION, CallError, CallLimits, Entry};
use super::compile::CompileWait;
use super::host::{CompiledModule, Digest, ModuleError, WasmHost};
use super::input::ContextRef;
use super::spec::{FailurePolicy, PluginSpec};

/// The input document of `evaluate`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct EvaluateInput<'a> {
    abi: u32,
    settings: &'a serde_json::Value,
    context: &'a ContextRef<'a>,
    pod: &'a Pod,
    runner_image: &'a str,
    allowed_runner_image_hosts: &'a [String],
}

/// The input document of `validate_settings`.
#[derive(Serialize)]
struct ValidateInput<'a> {
    abi: u32,
    settings: &'a serde_json::Value,
}

/// The output document of `evaluate`.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EvaluateOutput {
    allowed: bool,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    pod: Option<Pod>,
    #[serde(default)]
    runner_image: Option<String>,
    #[serde(default)]
    allowed_runner_image_hosts: Option<Vec<String>>,
}

/// The output document of `validate_settings`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ValidateOutput {
    valid: bool,
    #[serde(default)]
    message: Option<String>,
}

/// What a plugin decided about one run.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Allowed; each `Some` replaces that part of the input.
    Allow {
        pod: Option<Box<Pod>>,
        runner_image: Option<String>,
        allowed_runner_image_hosts: Option<Vec<String>>,
        message: Option<String>,
    },
    Deny {
        message: String,
    },
}

/// Why a plugin could not be loaded. The registry adds the plugin's name and source.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("{0}")]
    Module(#[from] ModuleError),
    #[error("its settings were rejected: {0}")]
    SettingsRejected(String),
    #[error("validate_settings failed: {0}")]
    SettingsCall(CallError),
    #[error("validate_settings returned {0}")]
    SettingsAnswer(String),
}

impl LoadError {
    /// Whether loading the same bytes with the same settings would fail the same way: every
    /// failure but a compile that found no free slot (tried again at the next reload).
    pub fn is_lasting(&self) -> bool {
        !matches!(
            self,
            LoadError::Module(ModuleError::Slow(CompileWait::Busy { .. }))
        )
    }
}

/// Why one evaluation failed (as opposed to denying).
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    #[error("{0}")]
    Call(#[from] CallError),
    #[error("returned output that is not a valid hook result: {0}")]
    Output(String),
}

impl EvalError {
    /// A short, stable word for metrics (`kind` label).
    pub fn kind(&self) -> &'static str {
        match self {
            EvalError::Call(call) => call.kind(),
            EvalError::Output(_) => "output",
        }
    }
}

/// A plugin ready to be called: compiled, linked and with validated settings.
#[derive(Debug)]
pub struct Plugin {
    name: String,
    host: Arc<WasmHost>,
    module: Arc<CompiledModule>,
    settings: serde_json::Value,
    failure_policy: FailurePolicy,
    limits: CallLimits,
}

impl Plugin {
    /// Compiles (or reuses) the module, checks the ABI and calls `validate_settings` once.
    pub fn load(
        host: &Arc<WasmHost>,
        name: &str,
        bytes: &[u8],
        spec: &PluginSpec,
    ) -> Result<Self, LoadError> {
        Self::load_for(host, "", name, bytes.to_vec(), spec)
    }

    /// [`Plugin::load`] for `scope` (a pool, or the cluster-wide hooks), whose compiles take
    /// one compile slot at a time. Takes the bytes, so that a large module is never copied.
    pub fn load_for(
        host: &Arc<WasmHost>,
        scope: &str,
        name: &str,
        bytes: Vec<u8>,
        spec: &PluginSpec,
    ) -> Result<Self, LoadError> {
        let module = host.compile_for(scope, bytes)?;
        let host_limits = host.limits();
        // A pool plugin's own values were checked against the operator's caps by the registry.
        let limits = CallLimits {
            timeout: spec.timeout_millis.map_or(host_limits.timeout, |ms| {
                Duration::from_millis(u64::from(ms))
            }),
            memory_limit_bytes: spec
                .memory_limit_mib
                .map_or(host_limits.memory_limit_bytes, |mib| (mib as usize) << 20),
            max_output_bytes: host_limits.max_output_bytes,
            max_stdio_bytes: host_limits.max_stdio_bytes,
        };
        let plugin = Self {
            name: name.to_string(),
            host: host.clone(),
            module,
            settings: spec
                .settings
                .clone()
                .unwrap_or_else(|| serde_json::Value::Object(Default::default())),
            failure_policy: spec.failure_policy,
            limits,
        };
        plugin.validate_settings()?;
        Ok(plugin)
    }

    fn validate_settings(&self) -> Result<(), LoadError> {
        let input = serde_json::to_vec(&ValidateInput {
            abi: ABI_VERSION,
            settings: &self.settings,
        })
        .map_err(|e| LoadError::SettingsAnswer(e.to_string()))?;
        let raw = abi::call(
            &self.host,
            &self.module,
            Entry::ValidateSettings,
            &input,
            &self.limits,
        )
        .map_err(LoadError::SettingsCall)?;
        let answer: ValidateOutput = parse(&raw.bytes).map_err(LoadError::SettingsAnswer)?;
        if answer.valid {
            Ok(())
        } else {
            Err(LoadError::SettingsRejected(
                answer
                    .message
                    .unwrap_or_else(|| "no reason given".to_string()),
            ))
        }
    }

    /// Calls `evaluate` with the current state of the Pod.
    pub(super) fn evaluate(
        &self,
        context: &ContextRef<'_>,
        pod: &Pod,
        runner_image: &str,
        allowed_runner_image_hosts: &[String],
    ) -> Result<(Verdict, Duration), EvalError> {
        let input = serde_json::to_vec(&EvaluateInput {
            abi: ABI_VERSION,
            settings: &self.settings,
            context,
            pod,
            runner_image,
            allowed_runner_image_hosts,
        })
        .map_err(|e| EvalError::Output(format!("cannot encode the input: {e}")))?;
        let raw = abi::call(
            &self.host,
            &self.module,
            Entry::Evaluate,
            &input,
            &self.limits,
        )?;
        if !raw.stderr.is_empty() || !raw.stdout.is_empty() {
            tracing::debug!(plugin = %self.name, stdout = %raw.stdout, stderr = %raw.stderr, "plugin output");
        }
        let output: EvaluateOutput = parse(&raw.bytes).map_err(EvalError::Output)?;
        let verdict = if output.allowed {
            Verdict::Allow {
                pod: output.pod.map(Box::new),
                runner_image: output.runner_image,
                allowed_runner_image_hosts: output.allowed_runner_image_hosts,
                message: output.message,
            }
        } else {
            Verdict::Deny {
                message: output
                    .message
                    .filter(|m| !m.trim().is_empty())
                    .unwrap_or_else(|| "denied without a message".to_string()),
            }
        };
        Ok((verdict, raw.elapsed))
    }

    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn digest(&self) -> &Digest {
        self.module.digest()
    }
    pub fn module(&self) -> &CompiledModule {
        &self.module
    }
    pub fn failure_policy(&self) -> FailurePolicy {
        self.failure_policy
    }
    pub fn settings(&self) -> &serde_json::Value {
        &self.settings
    }
    pub fn limits(&self) -> &CallLimits {
        &self.limits
    }
}

/// Parses an ABI output document; the error names the JSON path and position. The path is
/// tracked only to explain a failure: a document that parses is read once, without it.
fn parse<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    serde_json::from_slice(bytes).or_else(|_| parse_with_path(bytes))
}

fn parse_with_path<T: serde::de::DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    let mut de = serde_json::Deserializer::from_slice(bytes);
    let value: T = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let mut path = e.path().to_string();
        let message = e.into_inner().to_string();
        // For an unknown field the path ends with the field itself, which the message names.
        if message.starts_with("unknown field") {
            path = match path.rsplit_once('.') {
                Some((parent, _)) => parent.to_string(),
                None => ".".to_string(),
            };
        }
        if path == "." {
            message
        } else {
            format!("at {path}: {message}")
        }
    })?;
    de.end().map_err(|e| e.to_string())?;
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn output_errors_name_the_path() {
        let err = parse::<EvaluateOutput>(
            br#"{"allowed":true,"pod":{"spec":{"containers":[{"name":1}]}}}"#,
        )
        .unwrap_err();
        assert_eq!(
            err,
            "at pod.spec.containers[0].name: invalid type: integer `1`, expected a string at line 1 column 54"
        );
        let err = parse::<EvaluateOutput>(b"not json").unwrap_err();
        assert_eq!(err, "expected ident at line 1 column 2");
        let err = parse::<EvaluateOutput>(br#"{"allow":true}"#).unwrap_err();
        assert!(
            err.starts_with("unknown field `allow`, expected one of `allowed`"),
            "{err}"
        );
    }
}
