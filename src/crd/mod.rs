//! The `workers.spacelift.io/v1beta1` custom resources, and the labels that tie pools, workers
//! and run Pods together. The YAML in `crds/` is generated from these types.

mod worker;
mod workerpool;

pub use worker::{CurrentRun, Worker, WorkerSpec, WorkerState, WorkerStatus};
pub use workerpool::{
    ContainerOverride, DEFAULT_ACTIVE_DEADLINE_SECONDS, DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS,
    PodTemplate, SecretKeyRef, WorkerPool, WorkerPoolSpec, WorkerPoolStatus,
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

/// The CRD manifests, as written to `crds/`: file name and YAML.
pub fn crd_manifests() -> Result<Vec<(&'static str, String)>, yaml_serde::Error> {
    Ok(vec![
        ("workerpools.yaml", to_manifest(&WorkerPool::crd())?),
        ("workers.yaml", to_manifest(&Worker::crd())?),
    ])
}

fn to_manifest<T: serde::Serialize>(crd: &T) -> Result<String, yaml_serde::Error> {
    Ok(format!(
        "# Generated from src/crd by `workerpool-operator crds`. Do not edit.\n{}",
        yaml_serde::to_string(crd)?
    ))
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
                "{} is stale: regenerate it with `cargo run -- crds --out-dir crds`",
                path.display()
            );
        }
    }
}
