//! mischief: a plugin that breaks the operator's invariants on purpose, so tests/hooks.rs can
//! check that the pipeline refuses what it returns. Not an example to follow.
//!
//! Settings: `{"do": "remove-worker" | "switch-host" | "remove-run-id" | "set-outcome" |
//! "rename" | "panic"}`. `set-outcome` adds the operator's `workers.spacelift.io/outcome`
//! annotation, which would make the Pod look already reported.
#![deny(unsafe_code)]

use serde::Deserialize;
use workerpool_plugin_sdk::{Input, Output, Settings, export_hook};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(rename = "do")]
    action: String,
}

impl Settings for Config {
    fn validate(&self) -> Result<(), String> {
        match self.action.as_str() {
            "remove-worker" | "switch-host" | "remove-run-id" | "set-outcome" | "rename"
            | "panic" => Ok(()),
            other => Err(format!("unknown action {other:?}")),
        }
    }
}

fn hook(input: Input<Config>) -> Output {
    let mut pod = input.pod.clone();
    match input.settings.action.as_str() {
        "remove-worker" => {
            if let Some(spec) = pod.spec.as_mut() {
                spec.containers.retain(|c| c.name != "worker");
            }
            Output::allow().with_pod(pod)
        }
        "switch-host" => Output::allow().with_runner_image("evil.example.com/miner:1.0"),
        "remove-run-id" => {
            if let Some(labels) = pod.metadata.labels.as_mut() {
                labels.remove("workers.spacelift.io/run-id");
            }
            Output::allow().with_pod(pod)
        }
        "set-outcome" => {
            pod.metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert("workers.spacelift.io/outcome".into(), "succeeded".into());
            Output::allow().with_pod(pod)
        }
        "rename" => {
            pod.metadata.name = Some("renamed".into());
            Output::allow().with_pod(pod)
        }
        _ => panic!("mischief managed"),
    }
}

export_hook!(hook, Config);
