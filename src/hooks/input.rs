//! What every hook sees: the run's context (pool, worker, run) and the Pod as it stands, with
//! the runner image and the allowed runner image hosts.
//!
//! Plugins get these as the ABI's input document (see [`super::plugin`]); Rego policies get
//! them flat as `input.pool`, `input.worker`, `input.run`, `input.pod`, `input.runnerImage` and
//! `input.allowedRunnerImageHosts`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde::{Deserialize, Serialize};

use crate::protocol::RunSchedule;

/// The pool the run belongs to, as hooks see it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PoolContext {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub annotations: BTreeMap<String, String>,
    /// The WorkerPool's `spec`, as JSON. Secret references appear by name, never their values.
    #[serde(default)]
    pub spec: serde_json::Value,
}

/// The worker that takes the run.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerContext {
    pub name: String,
    pub namespace: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
}

/// The input of the pipeline. `pod` is `build_pod`'s output.
#[derive(Clone, Debug, PartialEq)]
pub struct HookInput {
    pub pool: PoolContext,
    pub worker: WorkerContext,
    pub run: RunSchedule,
    pub pod: Pod,
    pub runner_image: String,
    pub allowed_runner_image_hosts: Vec<String>,
}

/// The run's context, serialized once per evaluation and shared by every hook.
#[derive(Serialize)]
pub(super) struct ContextRef<'a> {
    pub pool: &'a PoolContext,
    pub worker: &'a WorkerContext,
    pub run: &'a RunSchedule,
}

/// The part of the input hooks may change, as it stands between two hooks.
#[derive(Clone, Debug, PartialEq)]
pub struct PodState {
    pub pod: Pod,
    pub runner_image: String,
    pub allowed_runner_image_hosts: Vec<String>,
}

/// The flat document Rego policies see as `input`.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct PolicyInput<'a> {
    pub pool: &'a PoolContext,
    pub worker: &'a WorkerContext,
    pub run: &'a RunSchedule,
    pub pod: &'a Pod,
    pub runner_image: &'a str,
    pub allowed_runner_image_hosts: &'a [String],
}

impl PoolContext {
    /// The hooks' view of a WorkerPool.
    pub fn from_pool(pool: &crate::crd::WorkerPool) -> Self {
        Self {
            name: pool.metadata.name.clone().unwrap_or_default(),
            namespace: pool.metadata.namespace.clone().unwrap_or_default(),
            labels: pool.metadata.labels.clone().unwrap_or_default(),
            annotations: pool.metadata.annotations.clone().unwrap_or_default(),
            spec: serde_json::to_value(&pool.spec).unwrap_or_default(),
        }
    }
}

impl WorkerContext {
    /// The hooks' view of a Worker.
    pub fn from_worker(worker: &crate::crd::Worker) -> Self {
        Self {
            name: worker.metadata.name.clone().unwrap_or_default(),
            namespace: worker.metadata.namespace.clone().unwrap_or_default(),
            labels: worker.metadata.labels.clone().unwrap_or_default(),
        }
    }
}

impl HookInput {
    /// Builds the run Pod with [`crate::pod::build_pod`] and wraps it as the pipeline's input:
    /// the runner image is the `worker` container's, the allowed hosts are the pool's.
    pub fn build(
        pool: &crate::crd::WorkerPool,
        worker: &crate::crd::Worker,
        run: &RunSchedule,
    ) -> Result<Self, crate::pod::BuildError> {
        let pod = crate::pod::build_pod(pool, worker, run)?;
        let runner_image = super::invariants::worker_image(&pod)
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            pool: PoolContext::from_pool(pool),
            worker: WorkerContext::from_worker(worker),
            run: run.clone(),
            pod,
            runner_image,
            allowed_runner_image_hosts: pool
                .spec
                .allowed_runner_image_hosts
                .clone()
                .unwrap_or_default(),
        })
    }
}
