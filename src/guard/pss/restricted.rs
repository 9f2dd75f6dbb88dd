//! The restricted checks of Pod Security admission; each of `seccompProfile_restricted`,
//! `restrictedVolumes`, `capabilities_restricted` and `procMount_restricted` replaces its
//! baseline counterpart at level restricted.

use k8s_openapi::api::core::v1::PodSpec;
use serde_json::Value;

use super::baseline::{invalid_seccomp, valid_seccomp};
use super::{ContainerView, Findings, quoted};
use crate::guard::path::FieldPath;

const RESTRICTED_VOLUME_TYPES: [&str; 9] = [
    "configMap",
    "csi",
    "downwardAPI",
    "emptyDir",
    "ephemeral",
    "image",
    "persistentVolumeClaim",
    "projected",
    "secret",
];

pub(super) fn seccomp_restricted(
    spec: &PodSpec,
    containers: &[ContainerView<'_>],
    out: &mut Findings<'_>,
) {
    const RULE: &str = "the seccomp profile must be RuntimeDefault or Localhost";
    invalid_seccomp("seccompProfile_restricted", RULE, spec, containers, out);
    let pod_set = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .is_some_and(|p| valid_seccomp(&p.type_));
    for c in containers {
        if !pod_set
            && c.security
                .and_then(|s| s.seccomp_profile.as_ref())
                .is_none()
        {
            out.add(
                "seccompProfile_restricted",
                c.security_field("seccompProfile"),
                "is not set, nor spec.securityContext.seccompProfile".into(),
                RULE,
            );
        }
    }
}

pub(super) fn restricted_volumes(spec: &PodSpec, out: &mut Findings<'_>) {
    for volume in spec.volumes.iter().flatten() {
        let value = serde_json::to_value(volume).unwrap_or(Value::Null);
        let kinds: Vec<&String> = value
            .as_object()
            .into_iter()
            .flat_map(|o| o.keys())
            .filter(|k| *k != "name")
            .collect();
        if kinds
            .iter()
            .any(|k| RESTRICTED_VOLUME_TYPES.contains(&k.as_str()))
        {
            continue;
        }
        let kind = kinds.first().map_or("unknown", |k| k.as_str());
        out.add(
            "restrictedVolumes",
            FieldPath::spec().field("volumes").named(&volume.name).field(kind),
            "is set".into(),
            "volume types other than configMap, csi, downwardAPI, emptyDir, ephemeral, image, persistentVolumeClaim, projected and secret are not allowed",
        );
    }
}

pub(super) fn allow_privilege_escalation(containers: &[ContainerView<'_>], out: &mut Findings<'_>) {
    for c in containers {
        let allowed = c.security.and_then(|s| s.allow_privilege_escalation);
        if allowed != Some(false) {
            out.add(
                "allowPrivilegeEscalation",
                c.security_field("allowPrivilegeEscalation"),
                match allowed {
                    Some(_) => "is true".into(),
                    None => "is not set".into(),
                },
                "containers must set allowPrivilegeEscalation to false",
            );
        }
    }
}

pub(super) fn run_as_non_root(
    spec: &PodSpec,
    containers: &[ContainerView<'_>],
    out: &mut Findings<'_>,
) {
    const RULE: &str = "containers must run as non-root (runAsNonRoot: true)";
    let pod = spec
        .security_context
        .as_ref()
        .and_then(|s| s.run_as_non_root);
    if pod == Some(false) {
        out.add(
            "runAsNonRoot",
            FieldPath::pod_security_context().field("runAsNonRoot"),
            "is false".into(),
            RULE,
        );
    }
    for c in containers {
        match c.security.and_then(|s| s.run_as_non_root) {
            Some(false) => out.add(
                "runAsNonRoot",
                c.security_field("runAsNonRoot"),
                "is false".into(),
                RULE,
            ),
            None if pod != Some(true) => out.add(
                "runAsNonRoot",
                c.security_field("runAsNonRoot"),
                "is not set, nor spec.securityContext.runAsNonRoot".into(),
                RULE,
            ),
            _ => {}
        }
    }
}

pub(super) fn run_as_user(
    spec: &PodSpec,
    containers: &[ContainerView<'_>],
    out: &mut Findings<'_>,
) {
    const RULE: &str = "running as root (runAsUser: 0) is not allowed";
    if spec.security_context.as_ref().and_then(|s| s.run_as_user) == Some(0) {
        out.add(
            "runAsUser",
            FieldPath::pod_security_context().field("runAsUser"),
            "is 0".into(),
            RULE,
        );
    }
    for c in containers {
        if c.security.and_then(|s| s.run_as_user) == Some(0) {
            out.add(
                "runAsUser",
                c.security_field("runAsUser"),
                "is 0".into(),
                RULE,
            );
        }
    }
}

pub(super) fn capabilities_restricted(containers: &[ContainerView<'_>], out: &mut Findings<'_>) {
    const RULE: &str = "containers must drop ALL capabilities and may add only NET_BIND_SERVICE";
    for c in containers {
        let capabilities = c.security.and_then(|s| s.capabilities.as_ref());
        let drops_all = capabilities
            .and_then(|caps| caps.drop.as_ref())
            .is_some_and(|drop| drop.iter().any(|d| d == "ALL"));
        if !drops_all {
            out.add(
                "capabilities_restricted",
                c.security_field("capabilities").field("drop"),
                "does not include \"ALL\"".into(),
                RULE,
            );
        }
        let extra: Vec<String> = capabilities
            .and_then(|caps| caps.add.as_ref())
            .into_iter()
            .flatten()
            .filter(|cap| *cap != "NET_BIND_SERVICE")
            .cloned()
            .collect();
        if !extra.is_empty() {
            out.add(
                "capabilities_restricted",
                c.security_field("capabilities").field("add"),
                format!("adds {}", quoted(&extra)),
                RULE,
            );
        }
    }
}
