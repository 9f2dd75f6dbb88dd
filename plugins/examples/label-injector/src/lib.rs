//! label-injector: adds labels and annotations to the run Pod from the run's metadata, so cost
//! reports, network policies and log pipelines can tell runs apart.
//!
//! Settings:
//! ```json
//! {"labels": {"spacelift.io/stack": "{run.metadata.stack}", "spacelift.io/stage": "{run.stage}"},
//!  "annotations": {"spacelift.io/commit": "{run.metadata.commit}"}}
//! ```
//! Placeholders: `{run.runId}`, `{run.stage}`, `{run.attempt}`, `{run.metadata.KEY}`,
//! `{pool.name}`, `{pool.namespace}`, `{worker.name}`. A label whose value would be empty is
//! left out; label values are cut to Kubernetes' rules (63 characters of `[A-Za-z0-9_.-]`).
//! Keys under `workers.spacelift.io/` belong to the operator and are refused.
#![deny(unsafe_code)]

use std::collections::BTreeMap;

use serde::Deserialize;
use workerpool_plugin_sdk::{Input, Output, Settings, export_hook};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    annotations: BTreeMap<String, String>,
}

impl Settings for Config {
    fn validate(&self) -> Result<(), String> {
        for (field, map) in [("labels", &self.labels), ("annotations", &self.annotations)] {
            for (key, template) in map {
                if key.starts_with("workers.spacelift.io/") {
                    return Err(format!("{field}: {key:?} is reserved for the operator"));
                }
                check_template(template).map_err(|e| format!("{field}[{key:?}]: {e}"))?;
            }
        }
        Ok(())
    }
}

fn check_template(template: &str) -> Result<(), String> {
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        let end = rest[start..].find('}').ok_or("unclosed {")? + start;
        let name = &rest[start + 1..end];
        let known = matches!(
            name,
            "run.runId"
                | "run.stage"
                | "run.attempt"
                | "pool.name"
                | "pool.namespace"
                | "worker.name"
        ) || name
            .strip_prefix("run.metadata.")
            .is_some_and(|k| !k.is_empty());
        if !known {
            return Err(format!("unknown placeholder {{{name}}}"));
        }
        rest = &rest[end + 1..];
    }
    Ok(())
}

fn render<S>(template: &str, input: &Input<S>) -> String {
    let run = &input.context.run;
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let Some(end) = rest[start..].find('}').map(|e| e + start) else {
            break;
        };
        let name = &rest[start + 1..end];
        let value = match name {
            "run.runId" => run.run_id.clone(),
            "run.stage" => run.stage.clone(),
            "run.attempt" => run.attempt.to_string(),
            "pool.name" => input.context.pool.name.clone(),
            "pool.namespace" => input.context.pool.namespace.clone(),
            "worker.name" => input.context.worker.name.clone(),
            other => other
                .strip_prefix("run.metadata.")
                .and_then(|key| run.metadata.get(key).cloned())
                .unwrap_or_default(),
        };
        out.push_str(&value);
        rest = &rest[end + 1..];
    }
    out.push_str(rest);
    out
}

/// Kubernetes label value rules: at most 63 characters of `[A-Za-z0-9_.-]`, alphanumeric at
/// both ends.
fn label_value(value: &str) -> String {
    let cleaned: String = value
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "_.-".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(63)
        .collect();
    cleaned
        .trim_matches(|c: char| !c.is_ascii_alphanumeric())
        .to_string()
}

fn hook(input: Input<Config>) -> Output {
    let mut pod = input.pod.clone();
    let meta = &mut pod.metadata;
    let mut changed = false;
    for (key, template) in &input.settings.labels {
        let value = label_value(&render(template, &input));
        let labels = meta.labels.get_or_insert_with(BTreeMap::new);
        if !value.is_empty() && labels.get(key) != Some(&value) {
            labels.insert(key.clone(), value);
            changed = true;
        }
    }
    for (key, template) in &input.settings.annotations {
        let value = render(template, &input);
        let annotations = meta.annotations.get_or_insert_with(BTreeMap::new);
        if !value.is_empty() && annotations.get(key) != Some(&value) {
            annotations.insert(key.clone(), value);
            changed = true;
        }
    }
    if changed {
        Output::allow().with_pod(pod)
    } else {
        Output::allow()
    }
}

export_hook!(hook, Config);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use workerpool_plugin_sdk::testing;

    use super::*;

    #[test]
    fn labels_come_from_run_metadata() {
        let input = testing::input()
            .settings(json!({"labels": {"spacelift.io/stack": "{run.metadata.stack}", "spacelift.io/stage": "{run.stage}",
                                        "spacelift.io/none": "{run.metadata.missing}"},
                             "annotations": {"spacelift.io/commit": "{run.metadata.commit} on {pool.name}"}}))
            .metadata("stack", "infra/prod net!")
            .metadata("commit", "abc123");
        let pod = testing::evaluate(hook, &input).pod.expect("changed");
        let labels = pod.metadata.labels.unwrap();
        assert_eq!(labels["spacelift.io/stack"], "infra_prod_net");
        assert_eq!(labels["spacelift.io/stage"], "planning");
        assert!(!labels.contains_key("spacelift.io/none"));
        assert_eq!(
            pod.metadata.annotations.unwrap()["spacelift.io/commit"],
            "abc123 on test-workerpool"
        );
    }

    #[test]
    fn reserved_keys_and_unknown_placeholders_are_refused() {
        assert_eq!(
            testing::validate::<Config>(json!({"labels": {"workers.spacelift.io/run-id": "x"}})),
            Err("labels: \"workers.spacelift.io/run-id\" is reserved for the operator".into())
        );
        assert_eq!(
            testing::validate::<Config>(json!({"labels": {"a": "{run.nope}"}})),
            Err("labels[\"a\"]: unknown placeholder {run.nope}".into())
        );
    }
}
