//! The Pod Security Standards, checked as Kubernetes' Pod Security admission checks them
//! (k8s.io/pod-security-admission, policy version v1.36): the same checks, the same allowed
//! values, the same relaxations (user-namespaced Pods, Windows Pods), so a user who knows PSA
//! knows these. Each violation is reported per field, so the guard can say which pool field
//! or hook set it.
//!
//! `baseline`: host namespaces, privileged, capabilities beyond the default set, hostPath
//! volumes, host ports, AppArmor, SELinux, /proc mount, seccomp (not Unconfined), sysctls,
//! Windows HostProcess, probe and lifecycle hosts. `restricted` adds: volume types,
//! privilege escalation, running as non-root, runAsUser 0, seccomp required, capabilities
//! dropped (ALL) and only NET_BIND_SERVICE added, /proc mount even in a user namespace.

use std::fmt;

use k8s_openapi::api::core::v1::{
    Container, ContainerPort, EphemeralContainer, Lifecycle, LifecycleHandler, Pod, PodSpec, Probe,
    SecurityContext,
};
use serde::{Deserialize, Serialize};

use super::path::FieldPath;

mod baseline;
mod restricted;

/// A Pod Security Standards level, from most to least permissive.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Privileged,
    Baseline,
    Restricted,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Privileged => "privileged",
            Level::Baseline => "baseline",
            Level::Restricted => "restricted",
        }
    }

    /// The next more permissive level: what a Pod refused at this level would need.
    pub fn looser(self) -> Level {
        match self {
            Level::Restricted => Level::Baseline,
            Level::Baseline | Level::Privileged => Level::Privileged,
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Level {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        match text {
            "privileged" => Ok(Level::Privileged),
            "baseline" => Ok(Level::Baseline),
            "restricted" => Ok(Level::Restricted),
            other => Err(format!(
                "{other:?} is not a Pod Security Standards level: use privileged, baseline or restricted"
            )),
        }
    }
}

/// One field of a Pod that a level does not allow.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Finding {
    /// The Pod Security admission check, e.g. `privileged`, `capabilities_restricted`.
    pub check: &'static str,
    /// The level that has this check (`baseline` or `restricted`).
    pub level: Level,
    pub field: FieldPath,
    /// What the field holds, e.g. `is true`, `adds "SYS_ADMIN"`, `is not set`.
    pub found: String,
    /// The rule, e.g. `privileged containers are not allowed`.
    pub rule: &'static str,
}

/// Every field of `pod` that `level` does not allow, in check order.
pub fn check(pod: &Pod, level: Level) -> Vec<Finding> {
    let mut findings = Vec::new();
    if level == Level::Privileged {
        return findings;
    }
    let empty = PodSpec::default();
    let spec = pod.spec.as_ref().unwrap_or(&empty);
    let containers = containers(spec);
    let mut out = Findings {
        level: Level::Baseline,
        list: &mut findings,
    };
    baseline::host_namespaces(spec, &mut out);
    baseline::privileged(&containers, &mut out);
    if level == Level::Baseline {
        baseline::capabilities_baseline(&containers, &mut out);
        baseline::host_path_volumes(spec, &mut out);
    }
    baseline::host_ports(&containers, &mut out);
    baseline::app_armor(pod, spec, &containers, &mut out);
    baseline::se_linux(spec, &containers, &mut out);
    // In 1.35+ baseline allows any /proc mount in a user namespace; restricted never does.
    if !user_namespaced(spec) {
        let check = match level {
            Level::Restricted => "procMount_restricted",
            _ => "procMount",
        };
        baseline::proc_mount(check, &containers, &mut out);
    } else if level == Level::Restricted {
        out.level = Level::Restricted;
        baseline::proc_mount("procMount_restricted", &containers, &mut out);
        out.level = Level::Baseline;
    }
    if level == Level::Baseline {
        baseline::seccomp_baseline(spec, &containers, &mut out);
    }
    baseline::sysctls(spec, &mut out);
    baseline::windows_host_process(spec, &containers, &mut out);
    baseline::probe_hosts(&containers, &mut out);
    if level == Level::Restricted {
        out.level = Level::Restricted;
        restricted::restricted_volumes(spec, &mut out);
        if !windows(spec) {
            restricted::allow_privilege_escalation(&containers, &mut out);
        }
        if !user_namespaced(spec) {
            restricted::run_as_non_root(spec, &containers, &mut out);
            restricted::run_as_user(spec, &containers, &mut out);
        }
        if !windows(spec) {
            restricted::seccomp_restricted(spec, &containers, &mut out);
            restricted::capabilities_restricted(&containers, &mut out);
        }
    }
    findings
}

struct Findings<'a> {
    level: Level,
    list: &'a mut Vec<Finding>,
}

impl Findings<'_> {
    fn add(&mut self, check: &'static str, field: FieldPath, found: String, rule: &'static str) {
        self.list.push(Finding {
            check,
            level: self.level,
            field,
            found,
            rule,
        });
    }
}

/// What the checks read of a container, ephemeral or not, and where it is.
struct ContainerView<'a> {
    path: FieldPath,
    security: Option<&'a SecurityContext>,
    ports: Vec<Option<i32>>,
    probes: [(&'static str, Option<&'a Probe>); 3],
    lifecycle: [(&'static str, Option<&'a LifecycleHandler>); 2],
}

impl<'a> ContainerView<'a> {
    fn of(list: &str, c: &'a Container) -> Self {
        Self::new(
            FieldPath::spec().field(list).named(&c.name),
            c.security_context.as_ref(),
            c.ports.as_deref(),
            [&c.liveness_probe, &c.readiness_probe, &c.startup_probe],
            c.lifecycle.as_ref(),
        )
    }

    fn ephemeral(c: &'a EphemeralContainer) -> Self {
        Self::new(
            FieldPath::spec()
                .field("ephemeralContainers")
                .named(&c.name),
            c.security_context.as_ref(),
            c.ports.as_deref(),
            [&c.liveness_probe, &c.readiness_probe, &c.startup_probe],
            c.lifecycle.as_ref(),
        )
    }

    fn new(
        path: FieldPath,
        security: Option<&'a SecurityContext>,
        ports: Option<&'a [ContainerPort]>,
        [liveness, readiness, startup]: [&'a Option<Probe>; 3],
        lifecycle: Option<&'a Lifecycle>,
    ) -> Self {
        Self {
            path,
            security,
            ports: ports
                .unwrap_or_default()
                .iter()
                .map(|p| p.host_port)
                .collect(),
            probes: [
                ("livenessProbe", liveness.as_ref()),
                ("readinessProbe", readiness.as_ref()),
                ("startupProbe", startup.as_ref()),
            ],
            lifecycle: [
                ("postStart", lifecycle.and_then(|l| l.post_start.as_ref())),
                ("preStop", lifecycle.and_then(|l| l.pre_stop.as_ref())),
            ],
        }
    }

    fn security_field(&self, name: &str) -> FieldPath {
        self.path.clone().field("securityContext").field(name)
    }
}

/// Init containers, containers and ephemeral containers, as PSA visits them.
fn containers(spec: &PodSpec) -> Vec<ContainerView<'_>> {
    let init = spec.init_containers.iter().flatten();
    let ephemeral = spec.ephemeral_containers.iter().flatten();
    init.map(|c| ContainerView::of("initContainers", c))
        .chain(
            spec.containers
                .iter()
                .map(|c| ContainerView::of("containers", c)),
        )
        .chain(ephemeral.map(ContainerView::ephemeral))
        .collect()
}

fn user_namespaced(spec: &PodSpec) -> bool {
    spec.host_users == Some(false)
}

fn windows(spec: &PodSpec) -> bool {
    spec.os.as_ref().is_some_and(|os| os.name == "windows")
}

fn quoted(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("{i:?}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::Level;

    #[test]
    fn levels_parse_and_loosen_as_documented() {
        assert_eq!("baseline".parse::<Level>(), Ok(Level::Baseline));
        assert!(
            "strict"
                .parse::<Level>()
                .unwrap_err()
                .contains("use privileged, baseline or restricted")
        );
        assert_eq!(Level::Restricted.looser(), Level::Baseline);
        assert_eq!(Level::Baseline.looser(), Level::Privileged);
    }
}
