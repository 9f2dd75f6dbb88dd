//! registry-mirror: pulls every image of the run Pod through a mirror, e.g. Docker Hub images
//! from `mirror.example.com/dockerhub`, and allows the mirror as a runner image host.
//!
//! Settings:
//! ```json
//! {"mirrors": {"docker.io": "mirror.example.com/dockerhub", "public.ecr.aws": "mirror.example.com/ecr"}}
//! ```
//! - `mirrors` (required): registry host -> mirror (host and optional path prefix). Hosts are
//!   read the way Docker reads them: `ubuntu` is `docker.io/library/ubuntu`.
//! - `allowMirrorHosts` (default `true`): when `allowedRunnerImageHosts` is not empty and
//!   allows a mirrored host, the mirror's host is allowed too, so the rewritten runner image
//!   passes the operator's final check.
#![deny(unsafe_code)]

use std::collections::BTreeMap;

use serde::Deserialize;
use workerpool_plugin_sdk::image::ImageReference;
use workerpool_plugin_sdk::{Input, Output, Settings, export_hook};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Config {
    mirrors: BTreeMap<String, String>,
    #[serde(default = "yes")]
    allow_mirror_hosts: bool,
}

fn yes() -> bool {
    true
}

impl Settings for Config {
    fn validate(&self) -> Result<(), String> {
        if self.mirrors.is_empty() {
            return Err("mirrors must map at least one registry host to a mirror".into());
        }
        for (host, mirror) in &self.mirrors {
            if mirror.contains("://") {
                return Err(format!(
                    "mirrors[{host:?}]: {mirror:?} must be host[/path], without a scheme"
                ));
            }
            if mirror.trim_matches('/').is_empty() {
                return Err(format!("mirrors[{host:?}] is empty"));
            }
        }
        Ok(())
    }
}

impl Config {
    /// The mirrored reference, if `image` comes from a mirrored host.
    fn rewrite(&self, image: &str) -> Option<(String, String)> {
        let reference = ImageReference::parse(image).ok()?;
        let mirror = self.mirrors.iter().find_map(|(host, mirror)| {
            let host = if host == "index.docker.io" {
                "docker.io"
            } else {
                host.as_str()
            };
            host.eq_ignore_ascii_case(&reference.host).then_some(mirror)
        })?;
        let mirror = mirror.trim_end_matches('/');
        let mut out = format!("{mirror}/{}", reference.repository);
        if let Some(tag) = &reference.tag {
            out.push(':');
            out.push_str(tag);
        }
        if let Some(digest) = &reference.digest {
            out.push('@');
            out.push_str(digest);
        }
        Some((out, reference.host))
    }
}

fn hook(input: Input<Config>) -> Output {
    let settings = &input.settings;
    let mut pod = input.pod.clone();
    let mut rewritten = Vec::new();
    if let Some(spec) = pod.spec.as_mut() {
        let init = spec.init_containers.iter_mut().flatten();
        for container in init.chain(spec.containers.iter_mut()) {
            let image = container.image.clone().unwrap_or_default();
            if let Some((mirrored, host)) = settings.rewrite(&image) {
                rewritten.push((container.name.clone(), host));
                container.image = Some(mirrored);
            }
        }
    }
    if rewritten.is_empty() {
        return Output::allow();
    }
    let mut out = Output::allow().with_message(format!(
        "mirrored {}",
        rewritten
            .iter()
            .map(|(name, _)| name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ));
    if let Some((mirrored, host)) = settings.rewrite(&input.runner_image) {
        let mut hosts = input.allowed_runner_image_hosts.clone();
        let allowed = hosts.iter().any(|h| h.eq_ignore_ascii_case(&host));
        if settings.allow_mirror_hosts
            && allowed
            && let Ok(mirror) = ImageReference::parse(&mirrored)
            && !hosts.iter().any(|h| h.eq_ignore_ascii_case(&mirror.host))
        {
            hosts.push(mirror.host);
            out = out.with_allowed_runner_image_hosts(hosts);
        }
        out = out.with_runner_image(mirrored);
    }
    out.with_pod(pod)
}

export_hook!(hook, Config);

#[cfg(test)]
mod tests {
    use serde_json::json;
    use workerpool_plugin_sdk::testing;

    use super::*;

    fn settings() -> serde_json::Value {
        json!({"mirrors": {"docker.io": "mirror.example.com/dockerhub", "public.ecr.aws": "mirror.example.com/ecr"}})
    }

    #[test]
    fn every_container_is_mirrored() {
        let input = testing::input()
            .settings(settings())
            .runner_image("ubuntu:24.04")
            .allowed_runner_image_hosts(&["docker.io"]);
        let out = testing::evaluate(hook, &input);
        assert!(out.allowed);
        assert_eq!(
            out.runner_image.as_deref(),
            Some("mirror.example.com/dockerhub/library/ubuntu:24.04")
        );
        assert_eq!(
            out.allowed_runner_image_hosts,
            Some(vec!["docker.io".into(), "mirror.example.com".into()])
        );
        let pod = out.pod.unwrap();
        let images: Vec<_> = pod
            .spec
            .unwrap()
            .containers
            .into_iter()
            .map(|c| c.image.unwrap())
            .collect();
        assert_eq!(
            images,
            [
                "mirror.example.com/ecr/spacelift/launcher:v1",
                "mirror.example.com/dockerhub/library/ubuntu:24.04"
            ]
        );
    }

    #[test]
    fn other_registries_are_left_alone() {
        let input = testing::input().settings(json!({"mirrors": {"quay.io": "m.example.com"}}));
        assert_eq!(testing::evaluate(hook, &input), Output::allow());
    }

    #[test]
    fn settings_need_mirrors_without_schemes() {
        assert_eq!(
            testing::validate::<Config>(json!({"mirrors": {"docker.io": "https://m.example.com"}})),
            Err("mirrors[\"docker.io\"]: \"https://m.example.com\" must be host[/path], without a scheme".into())
        );
        assert!(
            testing::validate::<Config>(json!({}))
                .unwrap_err()
                .starts_with("settings: missing field `mirrors`")
        );
    }
}
