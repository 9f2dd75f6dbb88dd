//! The run-Pod guard: what the cluster admin allows a run Pod to be, enforced on the final Pod
//! after `build_pod` and every hook, so that neither a pool's spec nor any of its hooks can
//! widen it. Only the operator's own configuration sets it (see [`RunPodGuard`]); see
//! docs/security.md.
//!
//! Its rules, per namespace:
//! - a Pod Security Standards level ([`pss`]), the checks of Kubernetes' Pod Security
//!   admission;
//! - `allowedImageHosts`, a floor for every container's image; the pool's
//!   `allowedRunnerImageHosts` only narrows it for the runner, and an empty list from a hook
//!   never means "every registry";
//! - the ServiceAccounts a run Pod may run as;
//! - `nodeName`, refused unless allowed (it skips the scheduler and the node's taints).
//!
//! Each refusal names the rule, the Pod field and where the field came from: the hook that
//! changed it (the pipeline's trail), or the pool field `build_pod` made it from.

mod config;
mod path;
pub mod pss;
mod source;

use k8s_openapi::api::core::v1::Pod;
use serde_json::Value;

pub use config::{GuardConfigError, NamespaceRules, Rules, RunPodGuard};
pub use path::FieldPath;
pub use pss::Level;
pub use source::HookChanges;

use crate::pod::ImageReference;
use crate::protocol::RunSchedule;
use source::Sources;

/// What the guard looks at for one run Pod.
#[derive(Clone, Debug)]
pub struct GuardInput<'a> {
    /// The run Pod's namespace (the pool's).
    pub namespace: &'a str,
    /// The WorkerPool's `spec` as JSON, to name the pool field a Pod field came from.
    pub pool_spec: &'a Value,
    pub run: &'a RunSchedule,
    /// `build_pod`'s output.
    pub built: &'a Pod,
    /// The Pod as every hook left it: the one that would be created.
    pub pod: &'a Pod,
    /// What each hook changed, in order.
    pub hooks: &'a [HookChanges<'a>],
    /// The runner image hosts as the hooks left them (`allowedRunnerImageHosts`).
    pub runner_image_hosts: &'a [String],
}

impl RunPodGuard {
    /// Every reason the guard refuses `input.pod`; none when it is allowed.
    pub fn check(&self, input: &GuardInput<'_>) -> Vec<String> {
        let rules = self.rules(input.namespace);
        let ns = input.namespace;
        let sources = Sources::new(
            serde_json::to_value(input.built).unwrap_or_default(),
            serde_json::to_value(input.pod).unwrap_or_default(),
            input.hooks,
            input.pool_spec,
            input.run,
        );
        let mut reasons: Vec<String> = pss::check(input.pod, rules.level)
            .into_iter()
            .map(|finding| {
                format!(
                    "guard {level}: {field} {found} (from {source}): {rule} at level {level}; ask your cluster admin for level {looser} in namespace {ns}",
                    level = rules.level,
                    field = finding.field,
                    found = finding.found,
                    source = sources.of(&finding.field),
                    rule = finding.rule,
                    looser = finding.level.looser(),
                )
            })
            .collect();
        image_hosts(&rules, input, &sources, &mut reasons);
        service_accounts(&rules, input, &sources, &mut reasons);
        if let Some(node) = input
            .pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.as_deref())
            .filter(|n| !n.is_empty())
            && !rules.allow_node_name
        {
            let field = FieldPath::spec().field("nodeName");
            reasons.push(format!(
                "guard nodeName: {field} is {node:?} (from {}): a nodeName skips the scheduler and the node's taints and is not allowed in namespace {ns}; use nodeSelector or affinity, or ask your cluster admin for allowNodeName",
                sources.of(&field)
            ));
        }
        reasons
    }
}

/// Every container's image against the floor, and the runner image hosts a hook emptied.
fn image_hosts(
    rules: &Rules,
    input: &GuardInput<'_>,
    sources: &Sources<'_>,
    reasons: &mut Vec<String>,
) {
    let ns = input.namespace;
    let floor = &rules.allowed_image_hosts;
    if !floor.iter().any(|h| h == "*") {
        for (field, image) in images(input.pod) {
            let refused = match ImageReference::parse(image) {
                Ok(reference) if reference.host_is_allowed(floor) => continue,
                Ok(reference) => format!(
                    "is hosted on {:?}, and images may come only from [{}] in namespace {ns}; use an image from one of those registries, or ask your cluster admin to add the host to allowedImageHosts",
                    reference.host,
                    floor.join(", ")
                ),
                Err(error) => format!("cannot be checked against allowedImageHosts: {error}"),
            };
            reasons.push(format!(
                "guard allowedImageHosts: {field} {image:?} (from {}) {refused}",
                sources.of(&field)
            ));
        }
    }
    // An empty list allows every registry only as the pool's own setting. A hook that empties
    // the list (the last hook to change it left it empty) does not open every registry.
    if input.runner_image_hosts.is_empty()
        && let Some(hook) = sources.hook_that_touched(|c| c == "allowedRunnerImageHosts")
    {
        reasons.push(format!(
            "guard allowedImageHosts: allowedRunnerImageHosts is empty (from {hook}): a hook may narrow the runner image hosts, but an empty list from a hook never allows every registry; leave allowedRunnerImageHosts out of the hook's answer to keep the list as it was"
        ));
    }
}

/// `(field, image)` of every container, init and ephemeral included.
fn images(pod: &Pod) -> Vec<(FieldPath, &str)> {
    let Some(spec) = pod.spec.as_ref() else {
        return Vec::new();
    };
    let init = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| ("initContainers", &c.name, &c.image));
    let main = spec
        .containers
        .iter()
        .map(|c| ("containers", &c.name, &c.image));
    let ephemeral = spec
        .ephemeral_containers
        .iter()
        .flatten()
        .map(|c| ("ephemeralContainers", &c.name, &c.image));
    init.chain(main)
        .chain(ephemeral)
        .map(|(list, name, image)| {
            (
                FieldPath::spec().field(list).named(name).field("image"),
                image.as_deref().unwrap_or_default(),
            )
        })
        .collect()
}

fn service_accounts(
    rules: &Rules,
    input: &GuardInput<'_>,
    sources: &Sources<'_>,
    reasons: &mut Vec<String>,
) {
    if rules.service_accounts.iter().any(|a| a == "*") {
        return;
    }
    let ns = input.namespace;
    let spec = input.pod.spec.as_ref();
    let named = |field: &str, value: Option<&String>| {
        value
            .filter(|v| !v.is_empty())
            .map(|v| (FieldPath::spec().field(field), v.clone()))
    };
    let mut used: Vec<(FieldPath, String)> = [
        named(
            "serviceAccountName",
            spec.and_then(|s| s.service_account_name.as_ref()),
        ),
        // The deprecated alias: the API server uses it when serviceAccountName is empty.
        named(
            "serviceAccount",
            spec.and_then(|s| s.service_account.as_ref()),
        ),
    ]
    .into_iter()
    .flatten()
    .collect();
    let implicit = used.is_empty();
    if implicit {
        used.push((
            FieldPath::spec().field("serviceAccountName"),
            "default".into(),
        ));
    }
    for (field, account) in used {
        if rules.service_accounts.contains(&account) {
            continue;
        }
        let found = if implicit {
            "is not set, so the Pod would run as \"default\"".to_string()
        } else {
            format!("is {account:?}")
        };
        reasons.push(format!(
            "guard serviceAccounts: {field} {found} (from {}): run Pods in namespace {ns} may run only as [{}]; ask your cluster admin to allow {account:?} in serviceAccounts",
            sources.of(&field),
            rules.service_accounts.join(", ")
        ));
    }
}
