//! resource-guard: gives run containers default resource requests and limits, and refuses
//! run Pods that ask for more than a ceiling.
//!
//! Settings:
//! ```json
//! {"defaults": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
//!  "max": {"cpu": "4", "memory": "8Gi"},
//!  "containers": ["worker"]}
//! ```
//! - `defaults.requests` / `defaults.limits`: set where a container has none for that resource.
//! - `max`: no request or limit may exceed it (after defaults); the run is denied otherwise.
//! - `containers`: which containers to guard (default: every container, not init containers).
#![deny(unsafe_code)]

use std::collections::BTreeMap;

use serde::Deserialize;
use workerpool_plugin_sdk::k8s_openapi::api::core::v1::ResourceRequirements;
use workerpool_plugin_sdk::k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use workerpool_plugin_sdk::{Input, Output, Settings, export_hook};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default)]
    defaults: Defaults,
    #[serde(default)]
    max: BTreeMap<String, String>,
    #[serde(default)]
    containers: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Defaults {
    #[serde(default)]
    requests: BTreeMap<String, String>,
    #[serde(default)]
    limits: BTreeMap<String, String>,
}

impl Settings for Config {
    fn validate(&self) -> Result<(), String> {
        let all = [
            ("defaults.requests", &self.defaults.requests),
            ("defaults.limits", &self.defaults.limits),
            ("max", &self.max),
        ];
        for (field, map) in all {
            for (resource, value) in map {
                parse_quantity(value).map_err(|e| format!("{field}.{resource}: {e}"))?;
            }
        }
        for (resource, value) in self.defaults.requests.iter().chain(&self.defaults.limits) {
            if let Some(max) = self.max.get(resource)
                && parse_quantity(value)? > parse_quantity(max)?
            {
                return Err(format!(
                    "the default {resource} {value} is above max.{resource} {max}"
                ));
            }
        }
        Ok(())
    }
}

/// A Kubernetes quantity (`250m`, `1.5Gi`, `2e3`) as a number of base units.
fn parse_quantity(text: &str) -> Result<f64, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-'))
        .unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    let number: f64 = number
        .parse()
        .map_err(|_| format!("{text:?} is not a quantity"))?;
    let factor = match suffix {
        "" => 1.0,
        "n" => 1e-9,
        "u" => 1e-6,
        "m" => 1e-3,
        "k" => 1e3,
        "M" => 1e6,
        "G" => 1e9,
        "T" => 1e12,
        "P" => 1e15,
        "E" => 1e18,
        "Ki" => 1024.0,
        "Mi" => 1024f64.powi(2),
        "Gi" => 1024f64.powi(3),
        "Ti" => 1024f64.powi(4),
        "Pi" => 1024f64.powi(5),
        "Ei" => 1024f64.powi(6),
        exp if exp.starts_with(['e', 'E']) => {
            let e: i32 = exp[1..]
                .parse()
                .map_err(|_| format!("{text:?} is not a quantity"))?;
            10f64.powi(e)
        }
        _ => return Err(format!("{text:?} has an unknown suffix {suffix:?}")),
    };
    Ok(number * factor)
}

fn hook(input: Input<Config>) -> Output {
    let settings = &input.settings;
    let mut pod = input.pod.clone();
    let mut problems = Vec::new();
    let mut changed = false;
    if let Some(spec) = pod.spec.as_mut() {
        for container in spec.containers.iter_mut() {
            if let Some(names) = &settings.containers
                && !names.contains(&container.name)
            {
                continue;
            }
            let resources = container
                .resources
                .get_or_insert_with(ResourceRequirements::default);
            for (kind, defaults, current) in [
                (
                    "requests",
                    &settings.defaults.requests,
                    &mut resources.requests,
                ),
                ("limits", &settings.defaults.limits, &mut resources.limits),
            ] {
                for (resource, value) in defaults {
                    let map = current.get_or_insert_with(BTreeMap::new);
                    if !map.contains_key(resource) {
                        map.insert(resource.clone(), Quantity(value.clone()));
                        changed = true;
                    }
                }
                for (resource, Quantity(value)) in current.iter().flatten() {
                    let Some(max) = settings.max.get(resource) else {
                        continue;
                    };
                    match (parse_quantity(value), parse_quantity(max)) {
                        (Ok(v), Ok(m)) if v > m => problems.push(format!(
                            "container {:?} {kind} {resource} {value} is above the ceiling {max}",
                            container.name
                        )),
                        (Err(e), _) => problems.push(format!(
                            "container {:?} {kind} {resource}: {e}",
                            container.name
                        )),
                        _ => {}
                    }
                }
            }
        }
    }
    if !problems.is_empty() {
        return Output::deny(problems.join("; "));
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

    fn settings() -> serde_json::Value {
        json!({"defaults": {"requests": {"cpu": "250m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
               "max": {"cpu": "4", "memory": "8Gi"}, "containers": ["worker"]})
    }

    #[test]
    fn defaults_fill_only_what_is_missing() {
        let input = testing::input().settings(settings()).pod(|pod| {
            let worker = &mut pod.spec.as_mut().unwrap().containers[1];
            worker.resources = Some(ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("1".into()))])),
                ..Default::default()
            });
        });
        let out = testing::evaluate(hook, &input);
        let pod = out.pod.expect("changed");
        let spec = pod.spec.unwrap();
        let worker = spec.containers[1].resources.clone().unwrap();
        assert_eq!(worker.requests.unwrap()["cpu"], Quantity("1".into()));
        assert_eq!(worker.limits.unwrap()["memory"], Quantity("2Gi".into()));
        assert!(
            spec.containers[0].resources.is_none(),
            "launcher-grpc is not guarded"
        );
    }

    #[test]
    fn ceilings_deny_with_every_problem() {
        let input = testing::input().settings(settings()).pod(|pod| {
            pod.spec.as_mut().unwrap().containers[1].resources = Some(ResourceRequirements {
                requests: Some(BTreeMap::from([("cpu".into(), Quantity("8".into()))])),
                limits: Some(BTreeMap::from([("memory".into(), Quantity("16Gi".into()))])),
                ..Default::default()
            });
        });
        let out = testing::evaluate(hook, &input);
        assert_eq!(
            out.message.as_deref(),
            Some(
                "container \"worker\" requests cpu 8 is above the ceiling 4; container \"worker\" limits memory 16Gi is above the ceiling 8Gi"
            )
        );
    }

    #[test]
    fn quantities_parse_like_kubernetes() {
        assert_eq!(parse_quantity("250m").unwrap(), 0.25);
        assert_eq!(parse_quantity("1Gi").unwrap(), 1073741824.0);
        assert_eq!(parse_quantity("2e3").unwrap(), 2000.0);
        assert!(
            testing::validate::<Config>(json!({"max": {"cpu": "lots"}}))
                .unwrap_err()
                .contains("max.cpu")
        );
    }
}
