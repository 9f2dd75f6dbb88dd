//! A native test harness: run a hook exactly as the operator would (through the ABI's JSON
//! documents), without wasm.
//!
//! ```
//! use workerpool_plugin_sdk::{Input, Output, testing};
//!
//! fn hook(input: Input) -> Output {
//!     if input.runner_image.ends_with(":latest") { Output::deny("pin the image") } else { Output::allow() }
//! }
//!
//! let out = testing::evaluate(hook, &testing::input().runner_image("runner:latest"));
//! assert_eq!(out.message.as_deref(), Some("pin the image"));
//! ```

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use serde::Serialize;

use crate::abi::{evaluate_bytes, validate_bytes};
use crate::types::{Context, Input, Output, PoolInfo, Run, Settings, WorkerInfo};

/// Runs `hook` on `input` through the same JSON round trip as the operator.
pub fn evaluate<S: Settings>(hook: fn(Input<S>) -> Output, input: &TestInput) -> Output {
    let bytes = serde_json::to_vec(&input.0).expect("the test input serializes");
    let out = evaluate_bytes::<S>(&bytes, hook);
    serde_json::from_slice(&out).expect("the SDK writes valid output")
}

/// Runs `validate_settings` for settings type `S`: `Err` carries the message the operator shows.
pub fn validate<S: Settings>(settings: serde_json::Value) -> Result<(), String> {
    let bytes = serde_json::to_vec(&serde_json::json!({"abi": 1, "settings": settings}))
        .expect("settings serialize");
    let out: serde_json::Value =
        serde_json::from_slice(&validate_bytes::<S>(&bytes)).expect("the SDK writes valid output");
    if out["valid"] == serde_json::Value::Bool(true) {
        Ok(())
    } else {
        Err(out["message"].as_str().unwrap_or_default().to_string())
    }
}

/// An input document under construction; starts from [`input`].
#[derive(Clone, Debug)]
pub struct TestInput(Input<serde_json::Value>);

/// A realistic input: a run Pod as `build_pod` makes it (containers `init`, `launcher-grpc`,
/// `worker`, the operator's labels and owner reference), for run stage `planning`.
pub fn input() -> TestInput {
    TestInput(Input {
        abi: 1,
        settings: serde_json::json!({}),
        context: Context {
            pool: PoolInfo {
                name: "test-workerpool".into(),
                namespace: "default".into(),
                ..PoolInfo::default()
            },
            worker: WorkerInfo {
                name: "test-workerpool-01hn37wc3mcne3cy9hahwrf06k".into(),
                namespace: "default".into(),
                ..WorkerInfo::default()
            },
            run: Run {
                run_id: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
                stage: "planning".into(),
                attempt: 1,
                runner_image: Some("public.ecr.aws/spacelift/runner-terraform:latest".into()),
                launcher_image: "public.ecr.aws/spacelift/launcher:v1".into(),
                ..Run::default()
            },
        },
        pod: run_pod(
            "public.ecr.aws/spacelift/launcher:v1",
            "public.ecr.aws/spacelift/runner-terraform:latest",
        ),
        runner_image: "public.ecr.aws/spacelift/runner-terraform:latest".into(),
        allowed_runner_image_hosts: Vec::new(),
    })
}

impl TestInput {
    pub fn settings(mut self, settings: impl Serialize) -> Self {
        self.0.settings = serde_json::to_value(settings).expect("settings serialize");
        self
    }

    /// Sets the runner image, in the `worker` container too.
    pub fn runner_image(mut self, image: &str) -> Self {
        self.0.runner_image = image.to_string();
        self.0.context.run.runner_image = Some(image.to_string());
        if let Some(spec) = self.0.pod.spec.as_mut() {
            for c in spec.containers.iter_mut().filter(|c| c.name == "worker") {
                c.image = Some(image.to_string());
            }
        }
        self
    }

    pub fn allowed_runner_image_hosts(mut self, hosts: &[&str]) -> Self {
        self.0.allowed_runner_image_hosts = hosts.iter().map(|h| h.to_string()).collect();
        self
    }

    pub fn stage(mut self, stage: &str) -> Self {
        self.0.context.run.stage = stage.to_string();
        self
    }

    pub fn metadata(mut self, key: &str, value: &str) -> Self {
        self.0
            .context
            .run
            .metadata
            .insert(key.to_string(), value.to_string());
        self
    }

    /// Changes the Pod with `f`.
    pub fn pod(mut self, f: impl FnOnce(&mut Pod)) -> Self {
        f(&mut self.0.pod);
        self
    }

    /// The input document as the operator would send it.
    pub fn document(&self) -> &Input<serde_json::Value> {
        &self.0
    }
}

/// A run Pod like the operator's, with these images.
pub fn run_pod(launcher_image: &str, runner_image: &str) -> Pod {
    let container = |name: &str, image: &str| Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        ..Container::default()
    };
    Pod {
        metadata: ObjectMeta {
            name: Some("01hn37wc3mcne3cy9hahwrf06k-planning-1".into()),
            namespace: Some("default".into()),
            labels: Some(BTreeMap::from([
                (
                    "workers.spacelift.io/run-id".into(),
                    "01HN37WC3MCNE3CY9HAHWRF06K".into(),
                ),
                (
                    "workers.spacelift.io/worker".into(),
                    "01HN37WC3MCNE3CY9HAHWRF06K".into(),
                ),
                (
                    "workers.spacelift.io/workerpool".into(),
                    "01HN37WC3MCNE3CY9HAHWRF06P".into(),
                ),
            ])),
            owner_references: Some(vec![OwnerReference {
                api_version: "workers.spacelift.io/v1beta1".into(),
                kind: "Worker".into(),
                name: "test-workerpool-01hn37wc3mcne3cy9hahwrf06k".into(),
                uid: "5b7b1c2e-0000-4000-8000-000000000000".into(),
                controller: Some(true),
                ..OwnerReference::default()
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            init_containers: Some(vec![container("init", launcher_image)]),
            containers: vec![
                container("launcher-grpc", launcher_image),
                container("worker", runner_image),
            ],
            restart_policy: Some("Never".into()),
            ..PodSpec::default()
        }),
        status: None,
    }
}
