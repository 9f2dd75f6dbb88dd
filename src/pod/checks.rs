//! What a pool's `spec.pod` may not do to the run Pod, although the apiserver stores it: the
//! operator's own mounts, environment and the worker's key are the run's contract with the
//! launcher, and names the Pod API would refuse are better refused naming the pool field.
//! Every refusal names the WorkerPool field, what is wrong and the fix.

use k8s_openapi::api::core::v1::{Container, EnvVar, VolumeMount};
use launcher_api::layout;

use super::{BuildError, IDENTITY_VOLUME};
use crate::crd::{ContainerOverride, PodTemplate};

/// The operator's mounts in the built-in containers, and what each holds.
const BUILTIN_PATHS: &[(&str, &str)] = &[
    (layout::WORKSPACE_PATH, "the run's workspace"),
    (layout::BINARIES_PATH, "the run's binaries"),
    (layout::BINARIES_CACHE_PATH, "the binaries cache"),
    (layout::IDENTITY_PATH, "the worker's key and the pool token"),
];

/// Variables the operator sets in the built-in containers, and why a pool may not.
const RESERVED_ENV: &[(&str, &str)] = &[
    (layout::ENV_POOL, "the pool's identity"),
    (layout::ENV_WORKER, "the worker's identity"),
    (layout::ENV_RUN, "the run's identity"),
    (layout::ENV_STAGE, "the run's identity"),
    (layout::ENV_ATTEMPT, "the run's identity"),
    (layout::ENV_ENDPOINT, "where the backend sends the launcher"),
    (
        "SPACELIFT_WORKSPACE_PATH",
        "where the operator mounts the workspace",
    ),
    (
        "SPACELIFT_BINARIES_PATH",
        "where the operator mounts the binaries",
    ),
    (
        "SPACELIFT_BINARIES_CACHE_PATH",
        "where the operator mounts the cache",
    ),
];

/// The longest container or volume name Kubernetes accepts (a DNS label).
const MAX_NAME: usize = 63;

/// Checks everything in `template` that would break the run Pod's contract or that the Pod API
/// would refuse, in field order.
pub(super) fn check_template(template: &PodTemplate) -> Result<(), BuildError> {
    let builtin = [
        ("initContainer", template.init_container.as_ref()),
        (
            "grpcServerContainer",
            template.grpc_server_container.as_ref(),
        ),
        ("workerContainer", template.worker_container.as_ref()),
    ];
    for (field, over) in builtin {
        let Some(over) = over else { continue };
        check_override(field, over)?;
    }
    let user = [
        ("customInitContainers", &template.custom_init_containers),
        (
            "additionalSidecarContainers",
            &template.additional_sidecar_containers,
        ),
    ];
    for (field, containers) in user {
        for (i, container) in containers.iter().flatten().enumerate() {
            check_user_container(&format!("{field}[{i}]"), container)?;
        }
    }
    for (i, volume) in template.volumes.iter().flatten().enumerate() {
        check_name(&format!("volumes[{i}].name"), "volume", &volume.name)?;
    }
    Ok(())
}

fn check_override(field: &str, over: &ContainerOverride) -> Result<(), BuildError> {
    for (i, EnvVar { name, .. }) in over.env.iter().flatten().enumerate() {
        let reserved = RESERVED_ENV
            .iter()
            .find(|(reserved, _)| reserved == name)
            .map(|(_, what)| *what)
            .or_else(|| (field == "workerContainer" && name == "PATH").then_some("the PATH"));
        if let Some(what) = reserved {
            return Err(BuildError::ReservedEnv {
                field: format!("{field}.env[{i}]"),
                name: name.clone(),
                what,
            });
        }
    }
    for (i, mount) in over.volume_mounts.iter().flatten().enumerate() {
        let field = format!("{field}.volumeMounts[{i}]");
        check_identity(&field, mount)?;
        if let Some((path, what)) = BUILTIN_PATHS
            .iter()
            .find(|(path, _)| is_at_or_under(&mount.mount_path, path))
        {
            return Err(BuildError::BuiltinMountPath {
                field,
                mount_path: mount.mount_path.clone(),
                builtin: path,
                what,
            });
        }
    }
    Ok(())
}

fn check_user_container(field: &str, container: &Container) -> Result<(), BuildError> {
    check_name(&format!("{field}.name"), "container", &container.name)?;
    for (i, mount) in container.volume_mounts.iter().flatten().enumerate() {
        check_identity(&format!("{field}.volumeMounts[{i}]"), mount)?;
    }
    Ok(())
}

fn check_identity(field: &str, mount: &VolumeMount) -> Result<(), BuildError> {
    if mount.name == IDENTITY_VOLUME {
        return Err(BuildError::IdentityMounted {
            field: field.to_string(),
        });
    }
    Ok(())
}

/// A DNS label (RFC 1123), as the Pod API wants container and volume names.
fn check_name(field: &str, kind: &'static str, name: &str) -> Result<(), BuildError> {
    let bytes = name.as_bytes();
    let label = |b: &u8| b.is_ascii_lowercase() || b.is_ascii_digit();
    let ok = !bytes.is_empty()
        && bytes.len() <= MAX_NAME
        && bytes.first().is_some_and(label)
        && bytes.last().is_some_and(label)
        && bytes.iter().all(|b| label(b) || *b == b'-');
    if ok {
        Ok(())
    } else {
        Err(BuildError::InvalidName {
            field: field.to_string(),
            kind,
            name: name.to_string(),
        })
    }
}

/// Whether `path` is `base` or lies under it, read as the kubelet joins paths (repeated and
/// trailing slashes and `.` components do not count; `..` goes up).
fn is_at_or_under(path: &str, base: &str) -> bool {
    let components = |p: &str| {
        let mut out: Vec<String> = Vec::new();
        for part in p.split('/') {
            match part {
                "" | "." => {}
                ".." => {
                    out.pop();
                }
                other => out.push(other.to_string()),
            }
        }
        out
    };
    let (path, base) = (components(path), components(base));
    path.len() >= base.len() && path[..base.len()] == base[..]
}

#[cfg(test)]
mod tests {
    use super::is_at_or_under;

    #[test]
    fn paths_compare_as_the_kubelet_joins_them() {
        let under = |p| is_at_or_under(p, "/opt/spacelift/workspace");
        assert!(under("/opt/spacelift/workspace"));
        assert!(under("/opt/spacelift/workspace/"));
        assert!(under("//opt/spacelift//workspace/source"));
        assert!(under("/opt/spacelift/./workspace"));
        assert!(under("/opt/spacelift/x/../workspace"));
        assert!(!under("/opt/spacelift"));
        assert!(!under("/opt/spacelift/workspace2"));
        assert!(!under("/opt/spacelift/policies/initialization"));
    }
}
