//! The run Pod's containers: custom init containers, `init`, `launcher-grpc`, `worker` and the
//! additional sidecars, with the pool's per-container overrides applied.

use k8s_openapi::api::core::v1::{Container, EnvVar, SecurityContext, VolumeMount};

use launcher_api::layout;

use super::{
    BINARIES_CACHE_PATH, BINARIES_PATH, BINARIES_VOLUME, BuildError, GRPC_CONTAINER,
    IDENTITY_VOLUME, INIT_CONTAINER, Volumes, WORKER_CONTAINER, WORKSPACE_PATH, non_empty,
};
use crate::crd::{ContainerOverride, PodTemplate};
use crate::protocol::RunSchedule;

/// The launcher binary in the launcher image.
const LAUNCHER_COMMAND: &str = layout::LAUNCHER_BINARY;
/// The worker binary, put in the binaries volume by the init container.
const WORKER_COMMAND: &str = "/opt/spacelift/binaries/spacelift-worker";
/// The PATH of a stock container image, after the Spacelift directories.
const IMAGE_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Who the run Pod works for, passed to every built-in container.
pub(super) struct RunIds<'a> {
    pub pool: &'a str,
    pub worker: &'a str,
    pub run: &'a RunSchedule,
}

/// Builds `(initContainers, containers)`.
pub(super) fn containers(
    template: &PodTemplate,
    ids: &RunIds<'_>,
    volumes: &Volumes,
    launcher_image: &str,
    runner_image: &str,
) -> Result<(Vec<Container>, Vec<Container>), BuildError> {
    let mount = |volume: &str, path: &str| VolumeMount {
        name: volume.to_string(),
        mount_path: path.to_string(),
        ..VolumeMount::default()
    };
    let workspace = mount(&volumes.workspace, WORKSPACE_PATH);
    let binaries = mount(BINARIES_VOLUME, BINARIES_PATH);
    let cache = mount(&volumes.binaries_cache, BINARIES_CACHE_PATH);
    let identity = VolumeMount {
        read_only: Some(true),
        ..mount(IDENTITY_VOLUME, layout::IDENTITY_PATH)
    };

    let init = builtin(
        INIT_CONTAINER,
        launcher_image,
        LAUNCHER_COMMAND,
        &["init"],
        launcher_env(ids),
        vec![
            workspace.clone(),
            binaries.clone(),
            cache.clone(),
            identity.clone(),
        ],
        template.init_container.as_ref(),
    );
    let grpc = builtin(
        GRPC_CONTAINER,
        launcher_image,
        LAUNCHER_COMMAND,
        &["grpc-server"],
        launcher_env(ids),
        vec![workspace.clone(), identity],
        template.grpc_server_container.as_ref(),
    );
    let mut worker_env = run_env(ids);
    worker_env.push(env("PATH", worker_path(template)));
    if let Some(seconds) = ids.run.run_timeout_seconds {
        worker_env.push(env(layout::ENV_RUN_TIMEOUT, format!("{seconds}s")));
    }
    if let Some(seconds) = ids.run.logs_timeout_seconds {
        worker_env.push(env(layout::ENV_LOGS_TIMEOUT, format!("{seconds}s")));
    }
    let worker = builtin(
        WORKER_CONTAINER,
        runner_image,
        WORKER_COMMAND,
        &[],
        worker_env,
        vec![workspace, binaries, cache],
        template.worker_container.as_ref(),
    );

    let mut init_containers = template.custom_init_containers.clone().unwrap_or_default();
    init_containers.push(init);
    let mut containers = vec![grpc, worker];
    containers.extend(
        template
            .additional_sidecar_containers
            .clone()
            .unwrap_or_default(),
    );
    check_unique_names(&init_containers, &containers)?;
    Ok((init_containers, containers))
}

/// `customBinariesPath`, then the Spacelift binaries, then the image's usual PATH.
fn worker_path(template: &PodTemplate) -> String {
    match non_empty(&template.custom_binaries_path) {
        Some(custom) => format!("{custom}:{BINARIES_PATH}:{IMAGE_PATH}"),
        None => format!("{BINARIES_PATH}:{IMAGE_PATH}"),
    }
}

fn run_env(ids: &RunIds<'_>) -> Vec<EnvVar> {
    vec![
        env(layout::ENV_POOL, ids.pool.to_string()),
        env(layout::ENV_WORKER, ids.worker.to_string()),
        env(layout::ENV_RUN, ids.run.run_id.clone()),
        env(layout::ENV_STAGE, ids.run.stage.clone()),
        env(layout::ENV_ATTEMPT, ids.run.attempt.to_string()),
        env("SPACELIFT_WORKSPACE_PATH", WORKSPACE_PATH.to_string()),
        env("SPACELIFT_BINARIES_PATH", BINARIES_PATH.to_string()),
        env(
            "SPACELIFT_BINARIES_CACHE_PATH",
            BINARIES_CACHE_PATH.to_string(),
        ),
    ]
}

/// The launcher containers also learn where the backend's launcher API is.
fn launcher_env(ids: &RunIds<'_>) -> Vec<EnvVar> {
    let mut env_vars = run_env(ids);
    if let Some(endpoint) = non_empty(&ids.run.launcher_endpoint) {
        env_vars.push(env(layout::ENV_ENDPOINT, endpoint));
    }
    env_vars
}

fn env(name: &str, value: String) -> EnvVar {
    EnvVar {
        name: name.to_string(),
        value: Some(value),
        value_from: None,
    }
}

/// A built-in container with the pool's override applied: env, envFrom and volumeMounts are
/// appended (a variable the pool sets replaces the built-in one of the same name), resources,
/// securityContext, imagePullPolicy and lifecycle replace the defaults.
fn builtin(
    name: &str,
    image: &str,
    command: &str,
    args: &[&str],
    mut env: Vec<EnvVar>,
    mut volume_mounts: Vec<VolumeMount>,
    over: Option<&ContainerOverride>,
) -> Container {
    let over = over.cloned().unwrap_or_default();
    let user_env = over.env.unwrap_or_default();
    env.retain(|builtin| user_env.iter().all(|user| user.name != builtin.name));
    env.extend(user_env);
    volume_mounts.extend(over.volume_mounts.unwrap_or_default());
    Container {
        name: name.to_string(),
        image: Some(image.to_string()),
        command: Some(vec![command.to_string()]),
        args: (!args.is_empty()).then(|| args.iter().map(|a| a.to_string()).collect()),
        env: Some(env),
        env_from: over.env_from.filter(|e| !e.is_empty()),
        volume_mounts: Some(volume_mounts),
        resources: over.resources,
        security_context: Some(over.security_context.unwrap_or_else(|| SecurityContext {
            allow_privilege_escalation: Some(false),
            ..SecurityContext::default()
        })),
        image_pull_policy: non_empty(&over.image_pull_policy),
        lifecycle: over.lifecycle,
        ..Container::default()
    }
}

/// Container names must be unique across init and regular containers. A clash is reported on
/// the pool field that introduced the user's container.
fn check_unique_names(init: &[Container], containers: &[Container]) -> Result<(), BuildError> {
    // `init` is the last init container; `launcher-grpc` and `worker` the first two containers.
    let (custom_init, _) = init.split_at(init.len().saturating_sub(1));
    let sidecars = containers.get(2..).unwrap_or_default();
    let user = custom_init
        .iter()
        .map(|c| ("customInitContainers", c.name.as_str()))
        .chain(
            sidecars
                .iter()
                .map(|c| ("additionalSidecarContainers", c.name.as_str())),
        );
    let mut seen = vec![INIT_CONTAINER, GRPC_CONTAINER, WORKER_CONTAINER];
    for (field, name) in user {
        if seen.contains(&name) {
            return Err(BuildError::DuplicateContainer {
                field: field.to_string(),
                name: name.to_string(),
            });
        }
        seen.push(name);
    }
    Ok(())
}
