//! Every Pod Security Standards check, each with a Pod that violates it and one that does not
//! (the cases of k8s.io/pod-security-admission's own tests, v1.36, in brief). `pss.rs` runs
//! them through the guard and through the real API server's Pod Security admission.

use k8s_openapi::api::core::v1::Pod;
use serde_json::{Value, json};
use workerpool_operator::guard::Level;

/// A Pod every level allows: non-root, seccomp RuntimeDefault, no privilege escalation, all
/// capabilities dropped, one init container and one container.
pub fn allowed() -> Value {
    let hardened = json!({"allowPrivilegeEscalation": false, "capabilities": {"drop": ["ALL"]}});
    json!({
        "metadata": {"name": "run", "namespace": "team"},
        "spec": {
            "securityContext": {"runAsNonRoot": true, "seccompProfile": {"type": "RuntimeDefault"}},
            "initContainers": [{"name": "init", "image": "busybox", "securityContext": hardened}],
            "containers": [{"name": "worker", "image": "busybox", "securityContext": hardened}],
            "volumes": [{"name": "workspace", "emptyDir": {}}]
        }
    })
}

pub fn pod(value: Value) -> Pod {
    serde_json::from_value(value).expect("a valid Pod")
}

pub type Change = fn(&mut Value);

pub struct Case {
    pub check: &'static str,
    /// The level whose check it is.
    pub level: Level,
    /// The field the finding names.
    pub field: &'static str,
    pub violate: Change,
    pub comply: Change,
}

pub fn worker(pod: &mut Value) -> &mut Value {
    &mut pod["spec"]["containers"][0]
}

/// Makes `container` privileged; the API server refuses a privileged container that also
/// says `allowPrivilegeEscalation: false`, so that goes.
fn privileged(container: &mut Value) {
    container["securityContext"]["privileged"] = json!(true);
    container["securityContext"]["allowPrivilegeEscalation"] = Value::Null;
}

pub fn cases() -> Vec<Case> {
    vec![
        Case {
            check: "hostNamespaces",
            level: Level::Baseline,
            field: "spec.hostPID",
            violate: |p| p["spec"]["hostPID"] = json!(true),
            comply: |p| p["spec"]["hostPID"] = json!(false),
        },
        Case {
            check: "hostNamespaces",
            level: Level::Baseline,
            field: "spec.hostNetwork",
            violate: |p| p["spec"]["hostNetwork"] = json!(true),
            comply: |p| p["spec"]["hostIPC"] = json!(false),
        },
        Case {
            check: "privileged",
            level: Level::Baseline,
            field: "spec.containers[worker].securityContext.privileged",
            violate: |p| privileged(worker(p)),
            comply: |p| worker(p)["securityContext"]["privileged"] = json!(false),
        },
        Case {
            check: "privileged",
            level: Level::Baseline,
            field: "spec.initContainers[init].securityContext.privileged",
            violate: |p| privileged(&mut p["spec"]["initContainers"][0]),
            comply: |_| {},
        },
        Case {
            check: "capabilities_baseline",
            level: Level::Baseline,
            field: "spec.containers[worker].securityContext.capabilities.add",
            violate: |p| worker(p)["securityContext"]["capabilities"]["add"] = json!(["NET_ADMIN"]),
            comply: |p| {
                worker(p)["securityContext"]["capabilities"]["add"] = json!(["NET_BIND_SERVICE"])
            },
        },
        Case {
            check: "hostPathVolumes",
            level: Level::Baseline,
            field: "spec.volumes[host].hostPath",
            violate: |p| {
                p["spec"]["volumes"] = json!([{"name": "host", "hostPath": {"path": "/"}}])
            },
            comply: |p| p["spec"]["volumes"] = json!([{"name": "host", "emptyDir": {}}]),
        },
        Case {
            check: "hostPorts",
            level: Level::Baseline,
            field: "spec.containers[worker].ports[1].hostPort",
            violate: |p| {
                worker(p)["ports"] =
                    json!([{"containerPort": 80}, {"containerPort": 81, "hostPort": 8081}])
            },
            comply: |p| {
                worker(p)["ports"] =
                    json!([{"containerPort": 80}, {"containerPort": 81, "hostPort": 0}])
            },
        },
        Case {
            check: "appArmorProfile",
            level: Level::Baseline,
            field: "spec.securityContext.appArmorProfile.type",
            violate: |p| {
                p["spec"]["securityContext"]["appArmorProfile"] = json!({"type": "Unconfined"})
            },
            comply: |p| {
                p["spec"]["securityContext"]["appArmorProfile"] = json!({"type": "RuntimeDefault"})
            },
        },
        Case {
            check: "appArmorProfile",
            level: Level::Baseline,
            field: "metadata.annotations[\"container.apparmor.security.beta.kubernetes.io/worker\"]",
            violate: |p| {
                p["metadata"]["annotations"] =
                    json!({"container.apparmor.security.beta.kubernetes.io/worker": "unconfined"})
            },
            comply: |p| {
                p["metadata"]["annotations"] = json!({"container.apparmor.security.beta.kubernetes.io/worker": "localhost/mine"})
            },
        },
        Case {
            check: "seLinuxOptions",
            level: Level::Baseline,
            field: "spec.containers[worker].securityContext.seLinuxOptions.type",
            violate: |p| worker(p)["securityContext"]["seLinuxOptions"] = json!({"type": "spc_t"}),
            comply: |p| {
                worker(p)["securityContext"]["seLinuxOptions"] =
                    json!({"type": "container_engine_t", "level": "s0:c1"})
            },
        },
        Case {
            check: "seLinuxOptions",
            level: Level::Baseline,
            field: "spec.securityContext.seLinuxOptions.user",
            violate: |p| {
                p["spec"]["securityContext"]["seLinuxOptions"] = json!({"user": "system_u"})
            },
            comply: |p| {
                p["spec"]["securityContext"]["seLinuxOptions"] = json!({"type": "container_t"})
            },
        },
        Case {
            check: "procMount",
            level: Level::Baseline,
            field: "spec.containers[worker].securityContext.procMount",
            violate: |p| worker(p)["securityContext"]["procMount"] = json!("Unmasked"),
            comply: |p| worker(p)["securityContext"]["procMount"] = json!("Default"),
        },
        Case {
            check: "seccompProfile_baseline",
            level: Level::Baseline,
            field: "spec.containers[worker].securityContext.seccompProfile.type",
            violate: |p| {
                worker(p)["securityContext"]["seccompProfile"] = json!({"type": "Unconfined"})
            },
            comply: |p| {
                worker(p)["securityContext"]["seccompProfile"] =
                    json!({"type": "Localhost", "localhostProfile": "p.json"})
            },
        },
        Case {
            check: "sysctls",
            level: Level::Baseline,
            field: "spec.securityContext.sysctls[kernel.msgmax]",
            violate: |p| {
                p["spec"]["securityContext"]["sysctls"] =
                    json!([{"name": "kernel.msgmax", "value": "1"}])
            },
            comply: |p| {
                p["spec"]["securityContext"]["sysctls"] =
                    json!([{"name": "net.ipv4.tcp_rmem", "value": "4096 87380 6291456"}])
            },
        },
        Case {
            check: "windowsHostProcess",
            level: Level::Baseline,
            field: "spec.containers[worker].securityContext.windowsOptions.hostProcess",
            // The API server wants every container of a HostProcess Pod to be one, on the
            // host's network.
            violate: |p| {
                p["spec"]["hostNetwork"] = json!(true);
                for list in ["initContainers", "containers"] {
                    p["spec"][list][0]["securityContext"]["windowsOptions"] =
                        json!({"hostProcess": true});
                }
            },
            comply: |p| {
                worker(p)["securityContext"]["windowsOptions"] = json!({"hostProcess": false})
            },
        },
        Case {
            check: "hostProbesAndHostLifecycle",
            level: Level::Baseline,
            field: "spec.containers[worker].livenessProbe.httpGet.host",
            violate: |p| {
                worker(p)["livenessProbe"] =
                    json!({"httpGet": {"port": 80, "host": "169.254.169.254"}})
            },
            comply: |p| worker(p)["livenessProbe"] = json!({"httpGet": {"port": 80}}),
        },
        Case {
            check: "hostProbesAndHostLifecycle",
            level: Level::Baseline,
            field: "spec.containers[worker].lifecycle.preStop.tcpSocket.host",
            violate: |p| {
                worker(p)["lifecycle"] =
                    json!({"preStop": {"tcpSocket": {"port": 80, "host": "10.0.0.1"}}})
            },
            comply: |p| worker(p)["lifecycle"] = json!({"preStop": {"sleep": {"seconds": 1}}}),
        },
        Case {
            check: "restrictedVolumes",
            level: Level::Restricted,
            field: "spec.volumes[share].nfs",
            violate: |p| {
                p["spec"]["volumes"] =
                    json!([{"name": "share", "nfs": {"server": "nfs", "path": "/"}}])
            },
            comply: |p| {
                p["spec"]["volumes"] =
                    json!([{"name": "share", "persistentVolumeClaim": {"claimName": "c"}}])
            },
        },
        Case {
            check: "allowPrivilegeEscalation",
            level: Level::Restricted,
            field: "spec.containers[worker].securityContext.allowPrivilegeEscalation",
            violate: |p| worker(p)["securityContext"]["allowPrivilegeEscalation"] = Value::Null,
            // Windows Pods cannot set it, so PSA lets them through.
            // A Windows Pod may not set Linux-only fields (seccomp, capabilities) either.
            comply: |p| {
                p["spec"]["os"] = json!({"name": "windows"});
                p["spec"]["securityContext"] = json!({"runAsNonRoot": true});
                for list in ["initContainers", "containers"] {
                    p["spec"][list][0]["securityContext"] = json!({});
                }
            },
        },
        Case {
            check: "runAsNonRoot",
            level: Level::Restricted,
            field: "spec.containers[worker].securityContext.runAsNonRoot",
            violate: |p| worker(p)["securityContext"]["runAsNonRoot"] = json!(false),
            comply: |p| worker(p)["securityContext"]["runAsNonRoot"] = json!(true),
        },
        Case {
            check: "runAsNonRoot",
            level: Level::Restricted,
            field: "spec.initContainers[init].securityContext.runAsNonRoot",
            violate: |p| p["spec"]["securityContext"]["runAsNonRoot"] = Value::Null,
            // A user-namespaced Pod may run as root in it (1.35+).
            comply: |p| {
                p["spec"]["securityContext"]["runAsNonRoot"] = Value::Null;
                p["spec"]["hostUsers"] = json!(false);
            },
        },
        Case {
            check: "runAsUser",
            level: Level::Restricted,
            field: "spec.securityContext.runAsUser",
            violate: |p| p["spec"]["securityContext"]["runAsUser"] = json!(0),
            comply: |p| p["spec"]["securityContext"]["runAsUser"] = json!(1983),
        },
        Case {
            check: "seccompProfile_restricted",
            level: Level::Restricted,
            field: "spec.containers[worker].securityContext.seccompProfile",
            violate: |p| {
                p["spec"]["securityContext"]["seccompProfile"] = Value::Null;
                p["spec"]["initContainers"][0]["securityContext"]["seccompProfile"] =
                    json!({"type": "RuntimeDefault"});
            },
            comply: |p| {
                p["spec"]["securityContext"]["seccompProfile"] = Value::Null;
                for list in ["initContainers", "containers"] {
                    p["spec"][list][0]["securityContext"]["seccompProfile"] =
                        json!({"type": "RuntimeDefault"});
                }
            },
        },
        Case {
            check: "capabilities_restricted",
            level: Level::Restricted,
            field: "spec.containers[worker].securityContext.capabilities.drop",
            violate: |p| worker(p)["securityContext"]["capabilities"]["drop"] = json!(["NET_RAW"]),
            comply: |p| {
                worker(p)["securityContext"]["capabilities"]["drop"] = json!(["NET_RAW", "ALL"])
            },
        },
        Case {
            check: "capabilities_restricted",
            level: Level::Restricted,
            field: "spec.containers[worker].securityContext.capabilities.add",
            violate: |p| worker(p)["securityContext"]["capabilities"]["add"] = json!(["CHOWN"]),
            comply: |p| {
                worker(p)["securityContext"]["capabilities"]["add"] = json!(["NET_BIND_SERVICE"])
            },
        },
        Case {
            check: "procMount_restricted",
            level: Level::Restricted,
            field: "spec.containers[worker].securityContext.procMount",
            // Baseline allows an unmasked /proc in a user namespace; restricted never does.
            violate: |p| {
                worker(p)["securityContext"]["procMount"] = json!("Unmasked");
                p["spec"]["hostUsers"] = json!(false);
            },
            comply: |p| p["spec"]["hostUsers"] = json!(false),
        },
    ]
}
