//! What no hook may change: the Pod's identity (name, namespace, owner reference), the
//! `workers.spacelift.io/*` labels that tie it to its pool, worker and run, the
//! `workers.spacelift.io/*` annotations the operator keeps its own state in (an added
//! `workers.spacelift.io/outcome` would make the Pod look already reported), and the built-in
//! containers. Checked after every hook (so the offending hook is named) and once more at the
//! end, where `allowedRunnerImageHosts` is also enforced on the final runner image.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};

use crate::pod::{GRPC_CONTAINER, INIT_CONTAINER, WORKER_CONTAINER, check_runner_image};

/// Labels and annotations under this prefix are the operator's.
pub const RESERVED_PREFIX: &str = "workers.spacelift.io/";

/// Every way `after` breaks an invariant set by `before` (the Pod `build_pod` made).
pub fn violations(before: &Pod, after: &Pod) -> Vec<String> {
    let mut problems = Vec::new();
    let (b, a) = (&before.metadata, &after.metadata);
    if b.name != a.name {
        problems.push(format!(
            "changed metadata.name from {} to {}",
            show(&b.name),
            show(&a.name)
        ));
    }
    if b.namespace != a.namespace {
        problems.push(format!(
            "changed metadata.namespace from {} to {}",
            show(&b.namespace),
            show(&a.namespace)
        ));
    }
    if b.owner_references != a.owner_references {
        problems.push(
            "changed metadata.ownerReferences (the run Pod must stay owned by its Worker)".into(),
        );
    }
    reserved_changes("label", &b.labels, &a.labels, &mut problems);
    reserved_changes("annotation", &b.annotations, &a.annotations, &mut problems);
    for name in [INIT_CONTAINER, GRPC_CONTAINER, WORKER_CONTAINER] {
        let was_init = find(before, name, true).is_some();
        let was_main = find(before, name, false).is_some();
        if (was_init && find(after, name, true).is_none())
            || (was_main && find(after, name, false).is_none())
        {
            let list = if was_init {
                "initContainers"
            } else {
                "containers"
            };
            problems.push(format!("removed the {name:?} container from spec.{list}"));
        }
    }
    problems
}

/// Lists every `workers.spacelift.io/*` key of `kind` (label or annotation) that `after`
/// removed, changed or added compared with `before`.
fn reserved_changes(
    kind: &str,
    before: &Option<BTreeMap<String, String>>,
    after: &Option<BTreeMap<String, String>>,
    problems: &mut Vec<String>,
) {
    let reserved = |map: &Option<BTreeMap<String, String>>| -> BTreeMap<String, String> {
        map.iter()
            .flatten()
            .filter(|(k, _)| k.starts_with(RESERVED_PREFIX))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    let (rb, ra) = (reserved(before), reserved(after));
    for (key, value) in &rb {
        match ra.get(key) {
            None => problems.push(format!("removed {kind} {key}")),
            Some(new) if new != value => {
                problems.push(format!("changed {kind} {key} from {value:?} to {new:?}"))
            }
            Some(_) => {}
        }
    }
    for key in ra.keys().filter(|k| !rb.contains_key(*k)) {
        problems.push(format!("added {kind} {key}"));
    }
}

/// Enforces `allowedRunnerImageHosts` on the final runner image.
pub fn runner_image_allowed(image: &str, allowed: &[String]) -> Result<(), String> {
    check_runner_image(image, "the final runner image", allowed).map_err(|e| e.to_string())
}

/// The `worker` container's image, if there is one.
pub fn worker_image(pod: &Pod) -> Option<&str> {
    find(pod, WORKER_CONTAINER, false).and_then(|c| c.image.as_deref())
}

/// Sets the `worker` container's image.
pub fn set_worker_image(pod: &mut Pod, image: &str) {
    if let Some(container) = pod.spec.as_mut().and_then(|spec| {
        spec.containers
            .iter_mut()
            .find(|c| c.name == WORKER_CONTAINER)
    }) {
        container.image = Some(image.to_string());
    }
}

fn find<'a>(pod: &'a Pod, name: &str, init: bool) -> Option<&'a Container> {
    let spec = pod.spec.as_ref()?;
    let list = if init {
        spec.init_containers.as_deref().unwrap_or_default()
    } else {
        &spec.containers
    };
    list.iter().find(|c| c.name == name)
}

fn show(value: &Option<String>) -> String {
    value
        .as_deref()
        .map_or_else(|| "nothing".to_string(), |v| format!("{v:?}"))
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::core::v1::PodSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;

    fn pod() -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("01h-planning-1".into()),
                namespace: Some("ns".into()),
                labels: Some(BTreeMap::from([
                    ("workers.spacelift.io/run-id".into(), "01H".into()),
                    ("team".into(), "a".into()),
                ])),
                annotations: Some(BTreeMap::from([(
                    "workers.spacelift.io/workerpool-name".into(),
                    "pool".into(),
                )])),
                ..Default::default()
            },
            spec: Some(PodSpec {
                init_containers: Some(vec![Container {
                    name: "init".into(),
                    ..Default::default()
                }]),
                containers: vec![
                    Container {
                        name: "launcher-grpc".into(),
                        ..Default::default()
                    },
                    Container {
                        name: "worker".into(),
                        image: Some("runner:1".into()),
                        ..Default::default()
                    },
                ],
                ..Default::default()
            }),
            status: None,
        }
    }

    #[test]
    fn an_untouched_pod_and_ordinary_changes_pass() {
        let mut after = pod();
        after
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("team".into(), "b".into());
        set_worker_image(&mut after, "runner:2");
        assert!(violations(&pod(), &after).is_empty());
        assert_eq!(worker_image(&after), Some("runner:2"));
    }

    #[test]
    fn every_broken_invariant_is_listed() {
        let mut after = pod();
        after.metadata.name = Some("other".into());
        after
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .remove("workers.spacelift.io/run-id");
        after
            .metadata
            .labels
            .as_mut()
            .unwrap()
            .insert("workers.spacelift.io/extra".into(), "x".into());
        let annotations = after.metadata.annotations.as_mut().unwrap();
        annotations.insert(
            "workers.spacelift.io/workerpool-name".into(),
            "other".into(),
        );
        annotations.insert("workers.spacelift.io/outcome".into(), "succeeded".into());
        annotations.insert("team.example.com/owner".into(), "a".into());
        after
            .spec
            .as_mut()
            .unwrap()
            .containers
            .retain(|c| c.name != "worker");
        assert_eq!(
            violations(&pod(), &after),
            [
                "changed metadata.name from \"01h-planning-1\" to \"other\"",
                "removed label workers.spacelift.io/run-id",
                "added label workers.spacelift.io/extra",
                "changed annotation workers.spacelift.io/workerpool-name from \"pool\" to \"other\"",
                "added annotation workers.spacelift.io/outcome",
                "removed the \"worker\" container from spec.containers",
            ]
        );
    }
}
