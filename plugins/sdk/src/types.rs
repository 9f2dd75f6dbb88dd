//! The ABI's JSON documents, typed. Field names match docs/plugins.md.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// A plugin's settings. Implement `validate` to refuse bad settings when the operator loads the
/// plugin (its message reaches the WorkerPool's events and conditions).
pub trait Settings: DeserializeOwned {
    fn validate(&self) -> Result<(), String> {
        Ok(())
    }
}

impl Settings for serde_json::Value {}

/// What `evaluate` receives.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Input<S = serde_json::Value> {
    /// The ABI version (1).
    pub abi: u32,
    /// The plugin's settings from its `PluginSpec`.
    pub settings: S,
    /// The pool, worker and run.
    pub context: Context,
    /// The run Pod as it stands after the hooks before this one.
    pub pod: Pod,
    /// The image of the `worker` container.
    pub runner_image: String,
    /// Registries the runner image may come from; empty allows every registry.
    #[serde(default)]
    pub allowed_runner_image_hosts: Vec<String>,
}

impl<S> Input<S> {
    pub fn run(&self) -> &Run {
        &self.context.run
    }
}

/// The run's context.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Context {
    pub pool: PoolInfo,
    pub worker: WorkerInfo,
    pub run: Run,
}

/// The WorkerPool the run belongs to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolInfo {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The WorkerPool's `spec` as JSON.
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// The Worker that takes the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerInfo {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The run stage the Pod processes (the protocol's run-schedule message).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Run {
    pub run_id: String,
    pub stage: String,
    pub attempt: u32,
    #[serde(default)]
    pub runner_image: Option<String>,
    #[serde(default)]
    pub launcher_image: String,
    #[serde(default)]
    pub run_timeout_seconds: Option<u64>,
    #[serde(default)]
    pub logs_timeout_seconds: Option<u64>,
    /// Free-form metadata from the backend (stack, commit, triggered-by ...).
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
}

/// What `evaluate` returns.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Output {
    pub allowed: bool,
    /// Why the run is denied (shown to the user), or a note recorded in the Pod's hook trail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The changed Pod; omit to leave it as it was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<Pod>,
    /// A new runner image; the operator writes it into the `worker` container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runner_image: Option<String>,
    /// A new list of allowed runner image hosts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_runner_image_hosts: Option<Vec<String>>,
}

impl Output {
    /// Allow the run unchanged.
    pub fn allow() -> Self {
        Self {
            allowed: true,
            ..Self::default()
        }
    }

    /// Deny the run with a message the user sees.
    pub fn deny(message: impl Into<String>) -> Self {
        Self {
            allowed: false,
            message: Some(message.into()),
            ..Self::default()
        }
    }

    /// Allow the run with this Pod instead.
    pub fn with_pod(mut self, pod: Pod) -> Self {
        self.pod = Some(pod);
        self
    }

    pub fn with_runner_image(mut self, image: impl Into<String>) -> Self {
        self.runner_image = Some(image.into());
        self
    }

    pub fn with_allowed_runner_image_hosts(mut self, hosts: Vec<String>) -> Self {
        self.allowed_runner_image_hosts = Some(hosts);
        self
    }

    pub fn with_message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }
}

#[derive(Deserialize)]
pub(crate) struct ValidateInput<S> {
    pub settings: S,
}

#[derive(Serialize)]
pub(crate) struct ValidateOutput {
    valid: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
}

impl ValidateOutput {
    pub fn valid() -> Self {
        Self {
            valid: true,
            message: None,
        }
    }
    pub fn invalid(message: String) -> Self {
        Self {
            valid: false,
            message: Some(message),
        }
    }
}
