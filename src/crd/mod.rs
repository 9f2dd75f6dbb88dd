//! The `workers.spacelift.io/v1beta1` custom resources, and the labels that tie pools, workers
//! and run Pods together. The YAML in `crds/` is generated from these types.

mod autoscaling;
mod worker;
mod workerpool;

pub use autoscaling::{Autoscaling, AutoscalingStatus, AutoscalingWindow, MAX_WINDOWS};
pub use worker::{
    CurrentRun, DeniedBy, FINISHED_RUNS_KEPT, FinishedOutcome, FinishedRun, Worker, WorkerSpec,
    WorkerState, WorkerStatus,
};
pub use workerpool::{
    ContainerOverride, DEFAULT_ACTIVE_DEADLINE_SECONDS, DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS,
    MAX_POOL_NAME, POOL_NAME_MESSAGE, PodTemplate, SecretKeyRef, WorkerPool, WorkerPoolSpec,
    WorkerPoolStatus,
};

use kube::CustomResourceExt;

/// The API group of both kinds.
pub const GROUP: &str = "workers.spacelift.io";
/// Label on Workers and run Pods: the pool's ULID.
pub const LABEL_WORKERPOOL: &str = "workers.spacelift.io/workerpool";
/// Label on run Pods: the worker's ULID.
pub const LABEL_WORKER: &str = "workers.spacelift.io/worker";
/// Label on run Pods: the run's ULID.
pub const LABEL_RUN_ID: &str = "workers.spacelift.io/run-id";
/// Label on WorkerPools (the pool's ULID) and Workers (the worker's ULID).
pub const LABEL_ULID: &str = "workers.spacelift.io/ulid";
/// Annotation on Workers: the name of their WorkerPool (the "Pool" printer column).
pub const ANNOTATION_WORKERPOOL_NAME: &str = "workers.spacelift.io/workerpool-name";
/// Key of the worker's private key in its Secret (named after the Worker, owned by it).
pub const WORKER_SECRET_PRIVATE_KEY: &str = "privateKey";
/// Key of the worker's public key in its Secret.
pub const WORKER_SECRET_PUBLIC_KEY: &str = "publicKey";

/// The CRD manifests, as written to `crds/`: file name and YAML.
pub fn crd_manifests() -> Result<Vec<(&'static str, String)>, yaml_serde::Error> {
    Ok(vec![
        ("workerpools.yaml", to_manifest(&WorkerPool::crd())?),
        ("workers.yaml", to_manifest(&Worker::crd())?),
    ])
}

fn to_manifest<T: serde::Serialize>(crd: &T) -> Result<String, yaml_serde::Error> {
    let mut crd = serde_json::to_value(crd).unwrap_or_default();
    nullable_optionals(&mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]);
    Ok(format!(
        "# Generated from src/crd by `workerpool-operator crds`. Do not edit.\n{}",
        yaml_serde::to_string(&crd)?
    ))
}

/// Marks every optional field `nullable`. The seed writes `requests:` with nothing but
/// comments under it (YAML null) inside k8s-openapi types whose schemas do not allow null, and
/// server-side apply refuses such a manifest otherwise. A null then reads as "unset", as it
/// does for the Go operator.
///
/// Fields with a default are left alone: the apiserver drops a null there and applies the
/// default, whereas a nullable field keeps the null, which the Rust type (a plain `i32` for
/// `poolSize`) could not read.
fn nullable_optionals(schema: &mut serde_json::Value) {
    use serde_json::Value;
    let required: Vec<String> = schema
        .get("required")
        .and_then(Value::as_array)
        .map(|r| {
            r.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    if let Some(properties) = schema.get_mut("properties").and_then(Value::as_object_mut) {
        for (name, property) in properties.iter_mut() {
            if !required.contains(name)
                && let Some(property) = property.as_object_mut()
                && !property.contains_key("default")
            {
                property.insert("nullable".into(), Value::Bool(true));
            }
            nullable_optionals(property);
        }
    }
    for nested in ["items", "additionalProperties"] {
        if let Some(child) = schema.get_mut(nested).filter(|c| c.is_object()) {
            nullable_optionals(child);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn crd_yaml_in_the_repository_matches_the_rust_types() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
        for (file, generated) in super::crd_manifests().expect("CRDs serialize") {
            let path = dir.join(file);
            let committed = std::fs::read_to_string(&path).unwrap_or_default();
            assert!(
                committed == generated,
                "{} is stale: regenerate it with `cargo run --bin workerpool-operator -- crds --out-dir crds`",
                path.display()
            );
        }
    }
}
