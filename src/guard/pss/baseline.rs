//! The baseline checks of Pod Security admission (and the helpers restricted shares:
//! `proc_mount`, the seccomp profiles).

use k8s_openapi::api::core::v1::{Pod, PodSpec};

use super::{ContainerView, Findings, quoted};
use crate::guard::path::FieldPath;

const BASELINE_CAPABILITIES: [&str; 13] = [
    "AUDIT_WRITE",
    "CHOWN",
    "DAC_OVERRIDE",
    "FOWNER",
    "FSETID",
    "KILL",
    "MKNOD",
    "NET_BIND_SERVICE",
    "SETFCAP",
    "SETGID",
    "SETPCAP",
    "SETUID",
    "SYS_CHROOT",
];
const SAFE_SYSCTLS: [&str; 12] = [
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];
const SELINUX_TYPES: [&str; 5] = [
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];
const APPARMOR_ANNOTATION_PREFIX: &str = "container.apparmor.security.beta.kubernetes.io/";

pub(super) fn host_namespaces(spec: &PodSpec, out: &mut Findings<'_>) {
    for (field, on) in [
        ("hostNetwork", spec.host_network),
        ("hostPID", spec.host_pid),
        ("hostIPC", spec.host_ipc),
    ] {
        if on == Some(true) {
            out.add(
                "hostNamespaces",
                FieldPath::spec().field(field),
                "is true".into(),
                "sharing the host's namespaces is not allowed",
            );
        }
    }
}

pub(super) fn privileged(containers: &[ContainerView<'_>], out: &mut Findings<'_>) {
    for c in containers {
        if c.security.and_then(|s| s.privileged) == Some(true) {
            out.add(
                "privileged",
                c.security_field("privileged"),
                "is true".into(),
                "privileged containers are not allowed",
            );
        }
    }
}

pub(super) fn capabilities_baseline(containers: &[ContainerView<'_>], out: &mut Findings<'_>) {
    for c in containers {
        let added = c
            .security
            .and_then(|s| s.capabilities.as_ref()?.add.as_ref());
        let extra: Vec<String> = added
            .into_iter()
            .flatten()
            .filter(|cap| !BASELINE_CAPABILITIES.contains(&cap.as_str()))
            .cloned()
            .collect();
        if !extra.is_empty() {
            out.add(
                "capabilities_baseline",
                c.security_field("capabilities").field("add"),
                format!("adds {}", quoted(&extra)),
                "capabilities beyond the container runtime's default set are not allowed",
            );
        }
    }
}

pub(super) fn host_path_volumes(spec: &PodSpec, out: &mut Findings<'_>) {
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            out.add(
                "hostPathVolumes",
                FieldPath::spec()
                    .field("volumes")
                    .named(&volume.name)
                    .field("hostPath"),
                "is set".into(),
                "hostPath volumes are not allowed",
            );
        }
    }
}

pub(super) fn host_ports(containers: &[ContainerView<'_>], out: &mut Findings<'_>) {
    for c in containers {
        for (i, port) in c.ports.iter().enumerate() {
            if let Some(port) = port.filter(|p| *p != 0) {
                out.add(
                    "hostPorts",
                    c.path.clone().field("ports").index(i).field("hostPort"),
                    format!("is {port}"),
                    "host ports are not allowed",
                );
            }
        }
    }
}

pub(super) fn app_armor(
    pod: &Pod,
    spec: &PodSpec,
    containers: &[ContainerView<'_>],
    out: &mut Findings<'_>,
) {
    const RULE: &str = "AppArmor profiles other than RuntimeDefault and Localhost are not allowed";
    let allowed = |kind: &str| kind == "RuntimeDefault" || kind == "Localhost";
    let pod_profile = spec
        .security_context
        .as_ref()
        .and_then(|s| s.app_armor_profile.as_ref());
    if let Some(profile) = pod_profile.filter(|p| !allowed(&p.type_)) {
        out.add(
            "appArmorProfile",
            FieldPath::pod_security_context()
                .field("appArmorProfile")
                .field("type"),
            format!("is {:?}", profile.type_),
            RULE,
        );
    }
    for c in containers {
        let profile = c.security.and_then(|s| s.app_armor_profile.as_ref());
        if let Some(profile) = profile.filter(|p| !allowed(&p.type_)) {
            out.add(
                "appArmorProfile",
                c.security_field("appArmorProfile").field("type"),
                format!("is {:?}", profile.type_),
                RULE,
            );
        }
    }
    for (key, value) in pod.metadata.annotations.iter().flatten() {
        let allowed_value =
            value.is_empty() || value == "runtime/default" || value.starts_with("localhost/");
        if key.starts_with(APPARMOR_ANNOTATION_PREFIX) && !allowed_value {
            out.add(
                "appArmorProfile",
                FieldPath::default()
                    .field("metadata")
                    .field("annotations")
                    .field(key),
                format!("is {value:?}"),
                RULE,
            );
        }
    }
}

pub(super) fn se_linux(spec: &PodSpec, containers: &[ContainerView<'_>], out: &mut Findings<'_>) {
    const RULE: &str = "SELinux types other than container_t, container_init_t, container_kvm_t and container_engine_t, and any SELinux user or role, are not allowed";
    let pod = spec
        .security_context
        .as_ref()
        .and_then(|s| s.se_linux_options.as_ref())
        .map(|o| (FieldPath::pod_security_context().field("seLinuxOptions"), o));
    let own = containers.iter().filter_map(|c| {
        let options = c.security?.se_linux_options.as_ref()?;
        Some((c.security_field("seLinuxOptions"), options))
    });
    for (path, options) in pod.into_iter().chain(own) {
        let kind = options.type_.as_deref().unwrap_or_default();
        if !SELINUX_TYPES.contains(&kind) {
            out.add(
                "seLinuxOptions",
                path.clone().field("type"),
                format!("is {kind:?}"),
                RULE,
            );
        }
        for (field, value) in [("user", &options.user), ("role", &options.role)] {
            if let Some(value) = value.as_deref().filter(|v| !v.is_empty()) {
                out.add(
                    "seLinuxOptions",
                    path.clone().field(field),
                    format!("is {value:?}"),
                    RULE,
                );
            }
        }
    }
}

pub(super) fn proc_mount(
    check: &'static str,
    containers: &[ContainerView<'_>],
    out: &mut Findings<'_>,
) {
    for c in containers {
        let mount = c.security.and_then(|s| s.proc_mount.as_deref());
        if let Some(mount) = mount.filter(|m| *m != "Default") {
            out.add(
                check,
                c.security_field("procMount"),
                format!("is {mount:?}"),
                "an unmasked /proc is not allowed (procMount must be Default)",
            );
        }
    }
}

/// The seccomp profiles of the Pod and of each container that sets one.
fn seccomp_profiles<'a>(
    spec: &'a PodSpec,
    containers: &'a [ContainerView<'_>],
) -> impl Iterator<Item = (FieldPath, &'a str)> {
    let pod = spec
        .security_context
        .as_ref()
        .and_then(|s| s.seccomp_profile.as_ref())
        .map(|p| (FieldPath::pod_security_context(), p.type_.as_str()));
    let own = containers.iter().filter_map(|c| {
        let profile = c.security?.seccomp_profile.as_ref()?;
        Some((
            c.path.clone().field("securityContext"),
            profile.type_.as_str(),
        ))
    });
    pod.into_iter().chain(own)
}

pub(super) fn valid_seccomp(kind: &str) -> bool {
    kind == "RuntimeDefault" || kind == "Localhost"
}

pub(super) fn seccomp_baseline(
    spec: &PodSpec,
    containers: &[ContainerView<'_>],
    out: &mut Findings<'_>,
) {
    invalid_seccomp(
        "seccompProfile_baseline",
        "seccomp profiles other than RuntimeDefault and Localhost are not allowed",
        spec,
        containers,
        out,
    );
}

/// Every seccomp profile set, of the Pod or a container, that is neither RuntimeDefault nor
/// Localhost: refused by `check` (restricted's check replaces baseline's, so both use this).
pub(super) fn invalid_seccomp(
    check: &'static str,
    rule: &'static str,
    spec: &PodSpec,
    containers: &[ContainerView<'_>],
    out: &mut Findings<'_>,
) {
    for (path, kind) in seccomp_profiles(spec, containers) {
        if !valid_seccomp(kind) {
            out.add(
                check,
                path.field("seccompProfile").field("type"),
                format!("is {kind:?}"),
                rule,
            );
        }
    }
}

pub(super) fn sysctls(spec: &PodSpec, out: &mut Findings<'_>) {
    let set = spec
        .security_context
        .as_ref()
        .and_then(|s| s.sysctls.as_ref());
    for sysctl in set.into_iter().flatten() {
        if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
            out.add(
                "sysctls",
                FieldPath::pod_security_context()
                    .field("sysctls")
                    .named(&sysctl.name),
                format!("sets {:?}", sysctl.name),
                "sysctls outside Kubernetes' safe set are not allowed",
            );
        }
    }
}

pub(super) fn windows_host_process(
    spec: &PodSpec,
    containers: &[ContainerView<'_>],
    out: &mut Findings<'_>,
) {
    let pod = spec
        .security_context
        .as_ref()
        .and_then(|s| s.windows_options.as_ref()?.host_process)
        .map(|on| (FieldPath::pod_security_context(), on));
    let own = containers.iter().filter_map(|c| {
        let on = c.security?.windows_options.as_ref()?.host_process?;
        Some((c.path.clone().field("securityContext"), on))
    });
    for (path, on) in pod.into_iter().chain(own) {
        if on {
            out.add(
                "windowsHostProcess",
                path.field("windowsOptions").field("hostProcess"),
                "is true".into(),
                "Windows HostProcess containers are not allowed",
            );
        }
    }
}

pub(super) fn probe_hosts(containers: &[ContainerView<'_>], out: &mut Findings<'_>) {
    const RULE: &str = "probes and lifecycle handlers may not name a host";
    for c in containers {
        let probes = c.probes.iter().filter_map(|(name, probe)| {
            let probe = (*probe)?;
            Some((
                c.path.clone().field(name),
                probe.http_get.as_ref().and_then(|h| h.host.clone()),
                probe.tcp_socket.as_ref().and_then(|t| t.host.clone()),
            ))
        });
        let handlers = c.lifecycle.iter().filter_map(|(name, handler)| {
            let handler = (*handler)?;
            Some((
                c.path.clone().field("lifecycle").field(name),
                handler.http_get.as_ref().and_then(|h| h.host.clone()),
                handler.tcp_socket.as_ref().and_then(|t| t.host.clone()),
            ))
        });
        for (path, http, tcp) in probes.chain(handlers) {
            for (kind, host) in [("httpGet", http), ("tcpSocket", tcp)] {
                if let Some(host) = host.filter(|h| !h.is_empty()) {
                    out.add(
                        "hostProbesAndHostLifecycle",
                        path.clone().field(kind).field("host"),
                        format!("is {host:?}"),
                        RULE,
                    );
                }
            }
        }
    }
}
