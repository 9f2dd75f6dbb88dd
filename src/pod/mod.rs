//! The run Pod: `build_pod(pool, worker, run)` turns a pool's settings and one scheduled run
//! stage into the Pod that processes it. Pure: no I/O, so every field is table-tested.

mod checks;
mod containers;
mod image;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    EmptyDirVolumeSource, KeyToPath, Pod, PodSecurityContext, PodSpec, ProjectedVolumeSource,
    SecretProjection, Volume, VolumeProjection,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::Resource;
use launcher_api::layout;
use thiserror::Error;

pub use image::{DOCKER_HUB, ImageError, ImageReference};

use crate::crd::{
    DEFAULT_ACTIVE_DEADLINE_SECONDS, DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS, LABEL_RUN_ID,
    LABEL_ULID, LABEL_WORKER, LABEL_WORKERPOOL, PodTemplate, WORKER_SECRET_PRIVATE_KEY, Worker,
    WorkerPool,
};
use crate::protocol::{RunRef, RunSchedule, check_stage};

/// The user and group every run container runs as unless the pool says otherwise.
pub const SPACELIFT_UID: i64 = 1983;
/// Where the run's workspace is mounted.
pub const WORKSPACE_PATH: &str = layout::WORKSPACE_PATH;
/// Where the shared binaries cache is mounted.
pub const BINARIES_CACHE_PATH: &str = layout::BINARIES_CACHE_PATH;
/// Where the init container puts the worker binary and tools for the run.
pub const BINARIES_PATH: &str = layout::BINARIES_PATH;
/// The built-in init container.
pub const INIT_CONTAINER: &str = "init";
/// The built-in gRPC sidecar.
pub const GRPC_CONTAINER: &str = "launcher-grpc";
/// The container that processes the run with the runner image.
pub const WORKER_CONTAINER: &str = "worker";

const WORKSPACE_VOLUME: &str = "workspace";
const BINARIES_CACHE_VOLUME: &str = "binaries-cache";
const BINARIES_VOLUME: &str = "binaries";
/// The worker's key and the pool token, for `init` and `launcher-grpc` only.
const IDENTITY_VOLUME: &str = "launcher-identity";

/// Why a run Pod cannot be built. Each message names the field to fix.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum BuildError {
    #[error("run id {0:?} is not a ULID: the backend must send a 26-character ULID as runId")]
    RunIdNotUlid(String),
    #[error("the run's stage {0}: it becomes part of the Pod name")]
    BadStage(String),
    #[error("the run's attempt must be 1 or more, got 0")]
    ZeroAttempt,
    #[error(
        "no runner image: the run names none and the WorkerPool has no spec.defaultRunnerImage"
    )]
    NoRunnerImage,
    #[error(
        "no launcher image: the run names none and the WorkerPool has no spec.pod.launcherImage"
    )]
    NoLauncherImage,
    #[error("{from} is not usable: {error}")]
    BadRunnerImage {
        /// Where the image came from: the run, the pool, or the hooks.
        from: &'static str,
        error: ImageError,
    },
    #[error(
        "runner image {image:?} is hosted on {host:?}, which is not in spec.allowedRunnerImageHosts [{allowed}]: add the host there or use an image from an allowed registry"
    )]
    RunnerImageHostNotAllowed {
        image: String,
        host: String,
        allowed: String,
    },
    #[error("Worker {worker:?} has no {label} label: it was not created by this operator")]
    WorkerMissingLabel { worker: String, label: &'static str },
    #[error("Worker {0:?} has no uid: it has not been stored in the cluster yet")]
    WorkerWithoutUid(String),
    #[error(
        "spec.pod.{field}: volume name {name:?} is used twice in the run Pod: rename one of them"
    )]
    DuplicateVolume { field: String, name: String },
    #[error(
        "spec.pod.{field}: container name {name:?} is used twice in the run Pod (init, launcher-grpc and worker are reserved): rename it"
    )]
    DuplicateContainer { field: String, name: String },
    #[error(
        "spec.pod.{field}: {name} is set by the operator in every run Pod ({what}): remove it from the WorkerPool{hint}",
        hint = if name == "PATH" { "; spec.pod.customBinariesPath puts directories in front of the run's PATH" } else { "" }
    )]
    ReservedEnv {
        field: String,
        name: String,
        what: &'static str,
    },
    #[error(
        "spec.pod.{field}.mountPath: {mount_path:?} is at or under {builtin}, where the operator mounts {what} in every run Pod: mount the volume outside /opt/spacelift/workspace, /opt/spacelift/binaries, /opt/spacelift/binaries_cache and /opt/spacelift/identity (spec.pod.workspaceVolume and spec.pod.binariesCacheVolume choose the storage of the first two)"
    )]
    BuiltinMountPath {
        field: String,
        mount_path: String,
        builtin: &'static str,
        what: &'static str,
    },
    #[error(
        "spec.pod.{field}.name: the volume \"launcher-identity\" holds the worker's private key, which only the operator's init and launcher-grpc containers mount: remove this mount"
    )]
    IdentityMounted { field: String },
    #[error(
        "spec.pod.{field}: {name:?} is not a valid {kind} name (1-63 lowercase letters, digits or '-', starting and ending with a letter or digit): rename it"
    )]
    InvalidName {
        field: String,
        kind: &'static str,
        name: String,
    },
}

/// Builds the Pod for one stage of a run on `worker`, exactly as the seed documents it: see
/// docs/run-pod.md for every field and default.
pub fn build_pod(pool: &WorkerPool, worker: &Worker, run: &RunSchedule) -> Result<Pod, BuildError> {
    let template = pool.pod_template();
    let name = pod_name(run)?;
    checks::check_template(&template)?;
    let worker_name = worker.metadata.name.clone().unwrap_or_default();
    let worker_label = |label| {
        worker
            .metadata
            .labels
            .as_ref()
            .and_then(|labels| labels.get(label))
            .filter(|value| !value.is_empty())
            .cloned()
            .ok_or_else(|| BuildError::WorkerMissingLabel {
                worker: worker_name.clone(),
                label,
            })
    };
    let pool_ulid = worker_label(LABEL_WORKERPOOL)?;
    let worker_ulid = worker_label(LABEL_ULID)?;
    let owner = owner_reference(worker)?;

    let launcher_image = non_empty(&template.launcher_image)
        .or(non_empty(&Some(run.launcher_image.clone())))
        .ok_or(BuildError::NoLauncherImage)?;
    let (runner_image, source) = match non_empty(&run.runner_image) {
        Some(image) => (image, "the run's runnerImage"),
        None => (
            non_empty(&pool.spec.default_runner_image).ok_or(BuildError::NoRunnerImage)?,
            "spec.defaultRunnerImage",
        ),
    };
    check_runner_image(
        &runner_image,
        source,
        pool.spec
            .allowed_runner_image_hosts
            .as_deref()
            .unwrap_or_default(),
    )?;

    let volumes = volumes(&template, identity_volume(pool, &worker_name))?;
    let ids = containers::RunIds {
        pool: &pool_ulid,
        worker: &worker_ulid,
        run,
    };
    let (init_containers, containers) =
        containers::containers(&template, &ids, &volumes, &launcher_image, &runner_image)?;

    let mut labels: BTreeMap<String, String> = template.labels.clone().unwrap_or_default();
    labels.insert(LABEL_RUN_ID.into(), run.run_id.clone());
    labels.insert(LABEL_WORKER.into(), worker_ulid.clone());
    labels.insert(LABEL_WORKERPOOL.into(), pool_ulid.clone());

    Ok(Pod {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: worker.metadata.namespace.clone(),
            labels: Some(labels),
            annotations: template.annotations.clone().filter(|a| !a.is_empty()),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        spec: Some(PodSpec {
            restart_policy: Some("Never".into()),
            active_deadline_seconds: Some(
                template
                    .active_deadline_seconds
                    .unwrap_or(DEFAULT_ACTIVE_DEADLINE_SECONDS),
            ),
            termination_grace_period_seconds: Some(
                template
                    .termination_grace_period_seconds
                    .unwrap_or(DEFAULT_TERMINATION_GRACE_PERIOD_SECONDS),
            ),
            security_context: Some(pod_security_context(template.security_context.clone())),
            init_containers: Some(init_containers),
            containers,
            volumes: Some(volumes.all),
            service_account_name: non_empty(&template.service_account_name),
            automount_service_account_token: template.automount_service_account_token,
            image_pull_secrets: template.image_pull_secrets.clone(),
            node_selector: template.node_selector.clone(),
            node_name: non_empty(&template.node_name),
            affinity: template.affinity.clone(),
            scheduler_name: non_empty(&template.scheduler_name),
            tolerations: template.tolerations.clone(),
            host_aliases: template.host_aliases.clone(),
            dns_config: template.dns_config.clone(),
            runtime_class_name: non_empty(&template.runtime_class_name),
            topology_spread_constraints: template.topology_spread_constraints.clone(),
            share_process_namespace: template.share_process_namespace,
            ..PodSpec::default()
        }),
        status: None,
    })
}

/// The run Pod's name: `<lowercase run ULID>-<stage>-<attempt>`. Deterministic, so a
/// redelivered schedule finds the Pod it already created.
pub fn pod_name(run: &RunSchedule) -> Result<String, BuildError> {
    let ulid: ulid::Ulid = run
        .run_id
        .parse()
        .map_err(|_| BuildError::RunIdNotUlid(run.run_id.clone()))?;
    check_stage(&run.stage).map_err(BuildError::BadStage)?;
    if run.attempt == 0 {
        return Err(BuildError::ZeroAttempt);
    }
    Ok(RunRef::new(&ulid.to_string(), &run.stage, run.attempt).pod_name())
}

/// Checks a runner image against `allowedRunnerImageHosts` (empty allows every registry).
/// `source` says where the image came from, for the error.
pub fn check_runner_image(
    image: &str,
    source: &'static str,
    allowed: &[String],
) -> Result<(), BuildError> {
    let reference = ImageReference::parse(image).map_err(|error| BuildError::BadRunnerImage {
        from: source,
        error,
    })?;
    if reference.host_is_allowed(allowed) {
        Ok(())
    } else {
        Err(BuildError::RunnerImageHostNotAllowed {
            image: image.to_string(),
            host: reference.host,
            allowed: allowed.join(", "),
        })
    }
}

fn owner_reference(worker: &Worker) -> Result<OwnerReference, BuildError> {
    let name = worker.metadata.name.clone().unwrap_or_default();
    let uid = worker
        .metadata
        .uid
        .clone()
        .ok_or_else(|| BuildError::WorkerWithoutUid(name.clone()))?;
    Ok(OwnerReference {
        api_version: Worker::api_version(&()).into_owned(),
        kind: Worker::kind(&()).into_owned(),
        name,
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    })
}

fn pod_security_context(configured: Option<PodSecurityContext>) -> PodSecurityContext {
    let mut context = configured.unwrap_or_default();
    context.run_as_user.get_or_insert(SPACELIFT_UID);
    context.run_as_group.get_or_insert(SPACELIFT_UID);
    context
}

/// The run Pod's volumes: the workspace and binaries cache (the pool's or emptyDirs), the
/// binaries directory, the launcher's identity, then `spec.pod.volumes`.
struct Volumes {
    workspace: String,
    binaries_cache: String,
    all: Vec<Volume>,
}

/// The launcher's identity: the worker's private key from the Worker's own Secret, and the
/// pool token (for the backend's CA) from the pool's Secret. Mounted into `init` and
/// `launcher-grpc` only, never into the runner's container. Files are 0444: the containers
/// run as 1983 and a Secret volume's files belong to root unless the pool sets an `fsGroup`;
/// only the two launcher containers mount the volume.
fn identity_volume(pool: &WorkerPool, worker_name: &str) -> Volume {
    let item = |key: &str, path: &str| KeyToPath {
        key: key.to_string(),
        path: path.to_string(),
        mode: None,
    };
    let mut sources = vec![VolumeProjection {
        secret: Some(SecretProjection {
            name: worker_name.to_string(),
            items: Some(vec![item(
                WORKER_SECRET_PRIVATE_KEY,
                layout::IDENTITY_KEY_FILE,
            )]),
            optional: Some(false),
        }),
        ..VolumeProjection::default()
    }];
    if let Some(token) = &pool.spec.token {
        let selector = &token.secret_key_ref;
        sources.push(VolumeProjection {
            secret: Some(SecretProjection {
                name: selector.name.clone(),
                items: Some(vec![item(&selector.key, layout::IDENTITY_TOKEN_FILE)]),
                optional: Some(false),
            }),
            ..VolumeProjection::default()
        });
    }
    Volume {
        name: IDENTITY_VOLUME.to_string(),
        projected: Some(ProjectedVolumeSource {
            default_mode: Some(0o444),
            sources: Some(sources),
        }),
        ..Volume::default()
    }
}

fn volumes(template: &PodTemplate, identity: Volume) -> Result<Volumes, BuildError> {
    let special = |configured: &Option<Volume>, default_name: &str| {
        let mut volume = configured
            .clone()
            .unwrap_or_else(|| empty_dir(default_name));
        if volume.name.is_empty() {
            volume.name = default_name.to_string();
        }
        volume
    };
    let workspace = special(&template.workspace_volume, WORKSPACE_VOLUME);
    let binaries_cache = special(&template.binaries_cache_volume, BINARIES_CACHE_VOLUME);
    // The binaries volume comes first so that a clash is reported on the user's field.
    let builtin = [
        ("volumes", empty_dir(BINARIES_VOLUME)),
        ("workspaceVolume", workspace.clone()),
        ("binariesCacheVolume", binaries_cache.clone()),
        ("volumes", identity),
    ];
    let extra = template
        .volumes
        .iter()
        .flatten()
        .enumerate()
        .map(|(i, v)| (format!("volumes[{i}]"), v.clone()));
    let mut all: Vec<Volume> = Vec::new();
    for (field, volume) in builtin
        .into_iter()
        .map(|(f, v)| (f.to_string(), v))
        .chain(extra)
    {
        if all.iter().any(|v| v.name == volume.name) {
            return Err(BuildError::DuplicateVolume {
                field,
                name: volume.name,
            });
        }
        all.push(volume);
    }
    Ok(Volumes {
        workspace: workspace.name,
        binaries_cache: binaries_cache.name,
        all,
    })
}

fn empty_dir(name: &str) -> Volume {
    Volume {
        name: name.to_string(),
        empty_dir: Some(EmptyDirVolumeSource::default()),
        ..Volume::default()
    }
}

/// The seed's examples write `""` for unset strings (`launcherImage: ""`): treat them as unset.
fn non_empty(value: &Option<String>) -> Option<String> {
    value
        .as_ref()
        .map(|v| v.trim())
        .filter(|v| !v.is_empty())
        .map(str::to_string)
}
