//! The decision trail: which hooks ran, in order, and what each changed or decided. It is
//! shown by `render`, and written onto the created Pod as the [`TRAIL_ANNOTATION`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The Pod annotation that records the trail (JSON, without timings so it is deterministic).
pub const TRAIL_ANNOTATION: &str = "workers.spacelift.io/hooks";

/// At most this many changed paths are recorded per hook.
const MAX_CHANGES: usize = 20;

/// Where in the pipeline a hook runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Stage {
    ClusterPlugin,
    PoolPlugin,
    PoolPolicy,
    ClusterPolicy,
    Invariants,
    /// The cluster admin's run-Pod guard, after the invariants.
    Guard,
}

impl Stage {
    /// A stable word for metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Stage::ClusterPlugin => "clusterPlugin",
            Stage::PoolPlugin => "poolPlugin",
            Stage::PoolPolicy => "poolPolicy",
            Stage::ClusterPolicy => "clusterPolicy",
            Stage::Invariants => "invariants",
            Stage::Guard => "guard",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Stage::ClusterPlugin => "cluster plugin",
            Stage::PoolPlugin => "pool plugin",
            Stage::PoolPolicy => "pool initialization policy",
            Stage::ClusterPolicy => "cluster policy",
            Stage::Invariants => "invariants",
            Stage::Guard => "guard",
        })
    }
}

/// What one hook did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Allowed without changing anything.
    Allowed,
    /// Allowed and changed the Pod, the runner image or the allowed hosts.
    Changed,
    /// Denied the run.
    Denied,
    /// Failed, and its `failurePolicy: Ignore` let the run go on without it.
    Skipped,
}

/// One line of the trail.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HookRecord {
    pub stage: Stage,
    pub hook: String,
    pub outcome: Outcome,
    /// Paths that changed, e.g. `spec.containers[worker].image`, `runnerImage`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<String>,
    /// The hook's message, or why it was skipped or denied.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// How long the hook took, in microseconds (not written to the annotation).
    #[serde(default, skip_serializing)]
    pub micros: u64,
}

/// A record's message is cut at this many bytes in the annotation.
pub const MAX_ANNOTATION_MESSAGE_BYTES: usize = 512;
/// A changed path is cut at this many bytes in the annotation.
const MAX_ANNOTATION_PATH_BYTES: usize = 256;

/// The annotation value for a trail. Messages and paths are cut, so that hooks' texts (a
/// plugin's message may be a megabyte) never push the Pod past the API server's 256 KiB for
/// all annotations: at most 20 paths and one message per hook.
pub fn annotation(trail: &[HookRecord]) -> String {
    use crate::protocol::limits::truncate;
    let bounded: Vec<HookRecord> = trail
        .iter()
        .map(|record| HookRecord {
            changes: record
                .changes
                .iter()
                .map(|path| truncate(path, MAX_ANNOTATION_PATH_BYTES))
                .collect(),
            message: record
                .message
                .as_deref()
                .map(|m| truncate(m, MAX_ANNOTATION_MESSAGE_BYTES)),
            ..record.clone()
        })
        .collect();
    serde_json::to_string(&bounded).unwrap_or_else(|_| "[]".to_string())
}

/// Every path at which `before` and `after` differ, named the way a person reads a Pod:
/// lists of named objects (containers, volumes, env) are matched by `name`.
pub fn changed_paths(before: &Value, after: &Value, prefix: &str) -> Vec<String> {
    let mut out = Vec::new();
    diff(prefix, before, after, &mut out);
    if out.len() > MAX_CHANGES {
        let more = out.len() - MAX_CHANGES;
        out.truncate(MAX_CHANGES);
        out.push(format!("... and {more} more"));
    }
    out
}

fn join(prefix: &str, key: &str) -> String {
    let plain = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    match (prefix.is_empty(), plain) {
        (true, true) => key.to_string(),
        (false, true) => format!("{prefix}.{key}"),
        (_, false) => format!("{prefix}[{key:?}]"),
    }
}

fn diff(path: &str, a: &Value, b: &Value, out: &mut Vec<String>) {
    if a == b {
        return;
    }
    match (a, b) {
        (Value::Object(a), Value::Object(b)) => {
            let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
            keys.sort();
            keys.dedup();
            for key in keys {
                let null = Value::Null;
                diff(
                    &join(path, key),
                    a.get(key).unwrap_or(&null),
                    b.get(key).unwrap_or(&null),
                    out,
                );
            }
        }
        (Value::Array(a), Value::Array(b)) => match (names(a), names(b)) {
            (Some(na), Some(nb)) => {
                let mut all: Vec<&str> = na.clone();
                all.extend(nb.iter().filter(|n| !na.contains(n)));
                for name in all {
                    let null = Value::Null;
                    let find = |list: &[Value]| -> Option<usize> {
                        list.iter()
                            .position(|v| v.get("name").and_then(Value::as_str) == Some(name))
                    };
                    let (ia, ib) = (find(a), find(b));
                    diff(
                        &format!("{path}[{name}]"),
                        ia.map_or(&null, |i| &a[i]),
                        ib.map_or(&null, |i| &b[i]),
                        out,
                    );
                }
            }
            _ if a.len() == b.len() => {
                for (i, (x, y)) in a.iter().zip(b).enumerate() {
                    diff(&format!("{path}[{i}]"), x, y, out);
                }
            }
            _ => out.push(path.to_string()),
        },
        _ => out.push(path.to_string()),
    }
}

/// The `name` of every element, when every element is an object with a unique name.
fn names(list: &[Value]) -> Option<Vec<&str>> {
    let names: Vec<&str> = list
        .iter()
        .map(|v| v.get("name").and_then(Value::as_str))
        .collect::<Option<_>>()?;
    let mut sorted = names.clone();
    sorted.sort_unstable();
    sorted.dedup();
    (sorted.len() == names.len()).then_some(names)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn named_lists_are_matched_by_name() {
        let before = json!({"spec": {"containers": [{"name": "init", "image": "a"}, {"name": "worker", "image": "b"}]},
                            "metadata": {"labels": {"workers.spacelift.io/run-id": "x"}}});
        let after = json!({"spec": {"containers": [{"name": "worker", "image": "c"}, {"name": "init", "image": "a"}, {"name": "new"}]},
                           "metadata": {"labels": {}}});
        assert_eq!(
            changed_paths(&before, &after, ""),
            [
                "metadata.labels[\"workers.spacelift.io/run-id\"]",
                "spec.containers[worker].image",
                "spec.containers[new]",
            ]
        );
    }

    #[test]
    fn the_annotation_has_no_timings() {
        let record = HookRecord {
            stage: Stage::PoolPlugin,
            hook: "mirror".into(),
            outcome: Outcome::Changed,
            changes: vec!["runnerImage".into()],
            message: None,
            micros: 42,
        };
        assert_eq!(
            annotation(&[record]),
            r#"[{"stage":"poolPlugin","hook":"mirror","outcome":"changed","changes":["runnerImage"]}]"#
        );
    }
}
