//! Who put a field on the Pod: a hook (the pipeline's trail says which hooks changed what) or
//! the pool itself (the field is already in `build_pod`'s output, so it came from one of the
//! pool's own fields, or from the run).

use serde_json::Value;

use super::path::{FieldPath, Segment};
use crate::pod::{GRPC_CONTAINER, INIT_CONTAINER, WORKER_CONTAINER};
use crate::protocol::RunSchedule;

/// What one hook changed, in pipeline order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HookChanges<'a> {
    /// How a person names the hook, e.g. `pool plugin "widen"`.
    pub hook: String,
    /// The paths it changed, as the trail records them (`spec.containers[x].image`,
    /// `allowedRunnerImageHosts`, `... and 3 more`).
    pub changes: &'a [String],
}

/// Finds where fields came from, for one Pod.
pub(super) struct Sources<'a> {
    built: Value,
    pod: Value,
    hooks: &'a [HookChanges<'a>],
    pool_spec: &'a Value,
    run: &'a RunSchedule,
}

impl<'a> Sources<'a> {
    pub fn new(
        built: Value,
        pod: Value,
        hooks: &'a [HookChanges<'a>],
        pool_spec: &'a Value,
        run: &'a RunSchedule,
    ) -> Self {
        Self {
            built,
            pod,
            hooks,
            pool_spec,
            run,
        }
    }

    /// The pool field or hook that introduced `field` as the final Pod has it.
    pub fn of(&self, field: &FieldPath) -> String {
        if field.resolve(&self.built) == field.resolve(&self.pod) {
            return self.pool_field(field);
        }
        self.hook_that_touched(|change| field.touched_by(change))
            .unwrap_or_else(|| "the hooks".to_string())
    }

    /// The last hook whose changes `touched` matches; failing that, the last hook whose list
    /// of changes was cut short (it may hold the change).
    pub fn hook_that_touched(&self, touched: impl Fn(&str) -> bool) -> Option<String> {
        let last = |want: &dyn Fn(&str) -> bool| {
            self.hooks
                .iter()
                .rev()
                .find(|h| h.changes.iter().any(|c| want(c)))
                .map(|h| h.hook.clone())
        };
        last(&touched).or_else(|| last(&|c: &str| c.starts_with("... and ")))
    }

    /// The pool field (or the run's field) that `build_pod` made `field` from.
    fn pool_field(&self, field: &FieldPath) -> String {
        let names: Vec<&str> = field
            .segments()
            .iter()
            .map(|s| match s {
                Segment::Field(name) | Segment::Named(name) => name.as_str(),
                Segment::Index(_) => "",
            })
            .collect();
        match names.as_slice() {
            [
                "spec",
                "initContainers" | "containers" | "ephemeralContainers",
                name,
                rest @ ..,
            ] => self.container_field(names[1], name, rest.first().copied()),
            ["spec", "volumes", name, ..] => self.volume_field(name),
            ["spec", first, ..] => format!("spec.pod.{first}"),
            ["metadata", "annotations", ..] => "spec.pod.annotations".into(),
            ["metadata", "labels", ..] => "spec.pod.labels".into(),
            _ => field.to_string(),
        }
    }

    fn container_field(&self, list: &str, name: &str, first: Option<&str>) -> String {
        let builtin = match (list, name) {
            ("initContainers", INIT_CONTAINER) => Some("initContainer"),
            ("containers", GRPC_CONTAINER) => Some("grpcServerContainer"),
            ("containers", WORKER_CONTAINER) => Some("workerContainer"),
            _ => None,
        };
        if let Some(over) = builtin {
            return match first {
                Some("image") if name == WORKER_CONTAINER => self.runner_image_source(),
                Some("image") => self.launcher_image_source(),
                Some(first) => format!("spec.pod.{over}.{first}"),
                None => format!("spec.pod.{over}"),
            };
        }
        let pool_list = match list {
            "initContainers" => "customInitContainers",
            _ => "additionalSidecarContainers",
        };
        match self.position(pool_list, name) {
            Some(i) => format!("spec.pod.{pool_list}[{i}]"),
            None => format!("spec.pod.{pool_list}"),
        }
    }

    fn volume_field(&self, name: &str) -> String {
        if let Some(i) = self.position("volumes", name) {
            return format!("spec.pod.volumes[{i}]");
        }
        for special in ["workspaceVolume", "binariesCacheVolume"] {
            if self.pool_spec.pointer(&format!("/pod/{special}/name")) == Some(&Value::from(name)) {
                return format!("spec.pod.{special}");
            }
        }
        format!("the operator's built-in volume {name:?}")
    }

    /// The index of the element named `name` in `spec.pod.<list>` of the pool.
    fn position(&self, list: &str, name: &str) -> Option<usize> {
        self.pool_spec
            .pointer(&format!("/pod/{list}"))?
            .as_array()?
            .iter()
            .position(|item| item.get("name").and_then(Value::as_str) == Some(name))
    }

    fn runner_image_source(&self) -> String {
        if self
            .run
            .runner_image
            .as_deref()
            .is_some_and(|i| !i.trim().is_empty())
        {
            "the run's runnerImage".into()
        } else {
            "spec.defaultRunnerImage".into()
        }
    }

    fn launcher_image_source(&self) -> String {
        let pool = self
            .pool_spec
            .pointer("/pod/launcherImage")
            .and_then(Value::as_str);
        if pool.is_some_and(|i| !i.trim().is_empty()) {
            "spec.pod.launcherImage".into()
        } else {
            "the run's launcherImage".into()
        }
    }
}
