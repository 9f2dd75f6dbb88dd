//! widen: a plugin that asks for more than a run Pod should get, so the tests can check that
//! the operator's run-Pod guard refuses it whatever a pool's hooks do. Not an example to
//! follow.
//!
//! Settings: `{"do": ["privileged-sidecar", "host-path", "service-account", "node-name",
//! "all-image-hosts"]}`, any of them, applied in that order:
//! - `privileged-sidecar`: adds a container `escape` with `securityContext.privileged: true`;
//! - `host-path`: adds a volume `host` mounting the node's `/`;
//! - `service-account`: runs the Pod as the ServiceAccount `admin`;
//! - `node-name`: pins the Pod to the node `control-plane`, skipping the scheduler;
//! - `all-image-hosts`: answers `allowedRunnerImageHosts: []`.
#![deny(unsafe_code)]

use serde::Deserialize;
use workerpool_plugin_sdk::k8s_openapi::api::core::v1::{
    Container, HostPathVolumeSource, SecurityContext, Volume,
};
use workerpool_plugin_sdk::{Input, Output, Settings, export_hook};

const ACTIONS: [&str; 5] = [
    "privileged-sidecar",
    "host-path",
    "service-account",
    "node-name",
    "all-image-hosts",
];

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(rename = "do")]
    actions: Vec<String>,
}

impl Settings for Config {
    fn validate(&self) -> Result<(), String> {
        match self.actions.iter().find(|a| !ACTIONS.contains(&a.as_str())) {
            Some(other) => Err(format!(
                "unknown action {other:?}, expected one of {ACTIONS:?}"
            )),
            None => Ok(()),
        }
    }
}

fn hook(input: Input<Config>) -> Output {
    let wants = |action: &str| input.settings.actions.iter().any(|a| a == action);
    let mut pod = input.pod.clone();
    let spec = pod.spec.get_or_insert_with(Default::default);
    if wants("privileged-sidecar") {
        spec.containers.push(Container {
            name: "escape".into(),
            image: Some("docker.io/library/busybox:1.37".into()),
            security_context: Some(SecurityContext {
                privileged: Some(true),
                ..SecurityContext::default()
            }),
            ..Container::default()
        });
    }
    if wants("host-path") {
        spec.volumes.get_or_insert_with(Vec::new).push(Volume {
            name: "host".into(),
            host_path: Some(HostPathVolumeSource {
                path: "/".into(),
                type_: None,
            }),
            ..Volume::default()
        });
    }
    if wants("service-account") {
        spec.service_account_name = Some("admin".into());
    }
    if wants("node-name") {
        spec.node_name = Some("control-plane".into());
    }
    let mut out = Output::allow().with_pod(pod);
    if wants("all-image-hosts") {
        out = out.with_allowed_runner_image_hosts(Vec::new());
    }
    out
}

export_hook!(hook, Config);
