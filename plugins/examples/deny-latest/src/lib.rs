//! deny-latest: refuses run Pods whose images float: tagged `:latest`, or not tagged at all
//! (which means `:latest`), unless pinned by digest.
//!
//! Settings (all optional):
//! - `containers`: `"all"` (default) checks every container and init container; `"worker"`
//!   checks only the runner image.
//! - `allowDigest`: a digest-pinned image passes even when tagged `latest` (default `true`).
#![deny(unsafe_code)]

use serde::Deserialize;
use workerpool_plugin_sdk::image::ImageReference;
use workerpool_plugin_sdk::{Input, Output, Settings, export_hook};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    #[serde(default = "all")]
    containers: String,
    #[serde(default = "yes")]
    allow_digest: bool,
}

fn all() -> String {
    "all".into()
}
fn yes() -> bool {
    true
}

impl Settings for Config {
    fn validate(&self) -> Result<(), String> {
        match self.containers.as_str() {
            "all" | "worker" => Ok(()),
            other => Err(format!(
                "containers must be \"all\" or \"worker\", not {other:?}"
            )),
        }
    }
}

fn hook(input: Input<Config>) -> Output {
    let spec = input.pod.spec.as_ref();
    let init = spec
        .and_then(|s| s.init_containers.as_deref())
        .unwrap_or_default();
    let main = spec.map(|s| s.containers.as_slice()).unwrap_or_default();
    let mut problems = Vec::new();
    for container in init.iter().chain(main) {
        if input.settings.containers == "worker" && container.name != "worker" {
            continue;
        }
        let image = container.image.as_deref().unwrap_or_default();
        let floating = match ImageReference::parse(image) {
            Ok(reference) => {
                let pinned = input.settings.allow_digest && reference.digest.is_some();
                let latest = matches!(reference.tag.as_deref(), None | Some("latest"));
                latest && !pinned
            }
            Err(_) => false, // the operator itself refuses unparsable runner images
        };
        if floating {
            problems.push(format!("container {:?} uses {image:?}", container.name));
        }
    }
    if problems.is_empty() {
        Output::allow()
    } else {
        Output::deny(format!(
            "images must be pinned to a tag other than latest (or a digest): {}",
            problems.join(", ")
        ))
    }
}

export_hook!(hook, Config);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use workerpool_plugin_sdk::testing;

    use super::*;

    #[test]
    fn latest_and_untagged_images_are_denied() {
        let out = testing::evaluate(hook, &testing::input().runner_image("ubuntu"));
        assert_eq!(
            out.message.as_deref(),
            Some(
                "images must be pinned to a tag other than latest (or a digest): container \"worker\" uses \"ubuntu\""
            )
        );
        assert!(!out.allowed);
    }

    #[test]
    fn pinned_images_pass() {
        let out = testing::evaluate(hook, &testing::input().runner_image("ubuntu:24.04"));
        assert!(out.allowed, "{out:?}");
        let digest =
            "ubuntu:latest@sha256:0000000000000000000000000000000000000000000000000000000000000000";
        assert!(testing::evaluate(hook, &testing::input().runner_image(digest)).allowed);
    }

    #[test]
    fn worker_only_ignores_other_containers() {
        let input = testing::input()
            .runner_image("ubuntu:24.04")
            .settings(json!({"containers": "worker"}))
            .pod(|pod| {
                pod.spec.as_mut().unwrap().containers[0].image = Some("launcher".into());
            });
        assert!(testing::evaluate(hook, &input).allowed);
    }

    #[test]
    fn bad_settings_are_refused() {
        assert_eq!(
            testing::validate::<Config>(json!({"containers": "some"})),
            Err("containers must be \"all\" or \"worker\", not \"some\"".into())
        );
        assert!(
            testing::validate::<Config>(json!({"contaners": "all"}))
                .unwrap_err()
                .starts_with("settings: unknown field `contaners`")
        );
    }
}
