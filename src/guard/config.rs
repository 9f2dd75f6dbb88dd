//! The guard's configuration file, written by the cluster admin (the Helm chart renders it
//! from the `runPodGuard` values): a cluster-wide rule set and per-namespace overrides.
//!
//! ```yaml
//! level: baseline                       # privileged | baseline | restricted
//! allowedImageHosts: [docker.io, public.ecr.aws]   # "*" (the default) allows any registry
//! serviceAccounts: ["*"]                # names a run Pod may use; "*" is any
//! allowNodeName: false                  # spec.nodeName skips the scheduler and taints
//! namespaces:
//!   ci-docker:                          # each key set here replaces the cluster-wide one
//!     level: privileged
//! ```

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::pss::Level;
use crate::manifest::{self, ManifestError};

/// The cluster admin's run-Pod guard. `Default` is what the operator enforces without a
/// configuration: `baseline`, any registry, any ServiceAccount, no `nodeName`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunPodGuard {
    /// The Pod Security Standards level every run Pod must meet.
    #[serde(default = "default_level")]
    pub level: Level,
    /// Registries every container's image must come from (init, custom init, sidecars,
    /// launcher, runner); `*` allows any. A pool's `allowedRunnerImageHosts` can only narrow
    /// this.
    #[serde(default = "any")]
    pub allowed_image_hosts: Vec<String>,
    /// The ServiceAccounts a run Pod may run as (`*`: any of its namespace).
    #[serde(default = "any")]
    pub service_accounts: Vec<String>,
    /// Whether a run Pod may name its node (`spec.nodeName`), which skips the scheduler and
    /// the node's taints.
    #[serde(default)]
    pub allow_node_name: bool,
    /// Overrides for single namespaces.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub namespaces: BTreeMap<String, NamespaceRules>,
}

/// What one namespace does differently; every key left out is the cluster-wide one.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NamespaceRules {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub level: Option<Level>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowed_image_hosts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_accounts: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_node_name: Option<bool>,
}

/// The rules of one namespace, overrides applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rules {
    pub level: Level,
    pub allowed_image_hosts: Vec<String>,
    pub service_accounts: Vec<String>,
    pub allow_node_name: bool,
}

fn default_level() -> Level {
    Level::Baseline
}

/// `["*"]`: anything.
fn any() -> Vec<String> {
    vec!["*".to_string()]
}

impl Default for RunPodGuard {
    fn default() -> Self {
        Self {
            level: default_level(),
            allowed_image_hosts: any(),
            service_accounts: any(),
            allow_node_name: false,
            namespaces: BTreeMap::new(),
        }
    }
}

/// Why a guard configuration cannot be used.
#[derive(Debug, Error)]
pub enum GuardConfigError {
    #[error("{origin}: cannot read the run-Pod guard configuration: {source}")]
    Read {
        origin: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Yaml(#[from] ManifestError),
    #[error("{origin}: {path}: {message}")]
    Field {
        origin: String,
        path: String,
        message: String,
    },
}

impl RunPodGuard {
    /// Reads and checks the file at `path`.
    pub fn load(path: &Path) -> Result<Self, GuardConfigError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| GuardConfigError::Read {
            origin: origin.clone(),
            source,
        })?;
        Self::parse(&text, &origin)
    }

    /// Parses and checks a configuration (YAML or JSON); `origin` names it in errors. An empty
    /// document is the default guard.
    pub fn parse(text: &str, origin: &str) -> Result<Self, GuardConfigError> {
        let Some(document) = manifest::parse_documents(origin, text)?.into_iter().next() else {
            return Ok(Self::default());
        };
        let guard: Self = manifest::deserialize_at_path(document).map_err(|(path, message)| {
            GuardConfigError::Field {
                origin: origin.to_string(),
                path: manifest::named_path(path),
                message,
            }
        })?;
        guard.validate(origin)?;
        Ok(guard)
    }

    /// The same guard with every namespace at `level` unless it overrides the level itself.
    pub fn with_level(mut self, level: Level) -> Self {
        self.level = level;
        self
    }

    /// The rules for run Pods in `namespace`.
    pub fn rules(&self, namespace: &str) -> Rules {
        let own = self.namespaces.get(namespace).cloned().unwrap_or_default();
        Rules {
            level: own.level.unwrap_or(self.level),
            allowed_image_hosts: own
                .allowed_image_hosts
                .unwrap_or_else(|| self.allowed_image_hosts.clone()),
            service_accounts: own
                .service_accounts
                .unwrap_or_else(|| self.service_accounts.clone()),
            allow_node_name: own.allow_node_name.unwrap_or(self.allow_node_name),
        }
    }

    fn validate(&self, origin: &str) -> Result<(), GuardConfigError> {
        let problem = |path: String, message: String| GuardConfigError::Field {
            origin: origin.to_string(),
            path,
            message,
        };
        let namespaces = self.namespaces.iter().map(|(name, rules)| {
            (
                format!("namespaces.{name}."),
                rules.allowed_image_hosts.as_ref(),
                rules.service_accounts.as_ref(),
            )
        });
        let top = (
            String::new(),
            Some(&self.allowed_image_hosts),
            Some(&self.service_accounts),
        );
        for (prefix, hosts, accounts) in std::iter::once(top).chain(namespaces) {
            if let Some(hosts) = hosts {
                check_hosts(hosts).map_err(|m| problem(format!("{prefix}allowedImageHosts"), m))?;
            }
            if let Some(accounts) = accounts {
                check_accounts(accounts)
                    .map_err(|m| problem(format!("{prefix}serviceAccounts"), m))?;
            }
        }
        if let Some(name) = self.namespaces.keys().find(|n| !is_dns_label(n)) {
            return Err(problem(
                format!("namespaces.{name}"),
                "is not a namespace name (a DNS label: lowercase letters, digits and '-')".into(),
            ));
        }
        Ok(())
    }
}

fn check_hosts(hosts: &[String]) -> Result<(), String> {
    if hosts.is_empty() {
        return Err(
            "is empty, which would refuse every image: list the registries, or \"*\" for any"
                .into(),
        );
    }
    for host in hosts.iter().filter(|h| *h != "*") {
        let plain = !host.is_empty()
            && !host.contains(['/', ' '])
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'));
        if !plain {
            return Err(format!(
                "{host:?} is not a registry host: write it as in an image reference, e.g. docker.io, ghcr.io or registry.example.com:5000, or \"*\" for any"
            ));
        }
    }
    Ok(())
}

fn check_accounts(accounts: &[String]) -> Result<(), String> {
    if accounts.is_empty() {
        return Err(
            "is empty, which would refuse every run Pod (a Pod always runs as a ServiceAccount, \"default\" unless it names one): list the names, or \"*\" for any".into(),
        );
    }
    match accounts.iter().find(|a| *a != "*" && !is_dns_subdomain(a)) {
        Some(bad) => Err(format!(
            "{bad:?} is not a ServiceAccount name (lowercase letters, digits, '-' and '.') or \"*\""
        )),
        None => Ok(()),
    }
}

fn is_dns_label(name: &str) -> bool {
    (1..=63).contains(&name.len())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn is_dns_subdomain(name: &str) -> bool {
    name.len() <= 253 && name.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_file_is_the_default_guard() {
        let guard = RunPodGuard::parse("", "guard.yaml").unwrap();
        assert_eq!(guard, RunPodGuard::default());
        let rules = guard.rules("any");
        assert_eq!(rules.level, Level::Baseline);
        assert_eq!(rules.allowed_image_hosts, ["*"]);
        assert_eq!(rules.service_accounts, ["*"]);
        assert!(!rules.allow_node_name);
    }

    #[test]
    fn a_namespace_overrides_only_what_it_sets() {
        let guard = RunPodGuard::parse(
            "level: restricted\nallowedImageHosts: [docker.io]\nserviceAccounts: [default]\nnamespaces:\n  ci-docker:\n    level: privileged\n    allowNodeName: true\n",
            "guard.yaml",
        )
        .unwrap();
        let ci = guard.rules("ci-docker");
        assert_eq!(ci.level, Level::Privileged);
        assert!(ci.allow_node_name);
        assert_eq!(ci.allowed_image_hosts, ["docker.io"]);
        assert_eq!(ci.service_accounts, ["default"]);
        assert_eq!(guard.rules("other").level, Level::Restricted);
        assert_eq!(
            guard
                .clone()
                .with_level(Level::Baseline)
                .rules("other")
                .level,
            Level::Baseline
        );
        assert_eq!(
            guard.with_level(Level::Baseline).rules("ci-docker").level,
            Level::Privileged
        );
    }

    #[test]
    fn mistakes_name_the_file_and_the_field() {
        for (text, want) in [
            (
                "level: strict\n",
                "guard.yaml: level: unknown variant `strict`, expected one of `privileged`, `baseline`, `restricted`",
            ),
            (
                "levle: baseline\n",
                "guard.yaml: levle: unknown field `levle`, expected one of `level`",
            ),
            (
                "allowedImageHosts: []\n",
                "guard.yaml: allowedImageHosts: is empty, which would refuse every image: list the registries, or \"*\" for any",
            ),
            (
                "allowedImageHosts: [https://docker.io]\n",
                "guard.yaml: allowedImageHosts: \"https://docker.io\" is not a registry host",
            ),
            (
                "namespaces:\n  ci:\n    serviceAccounts: []\n",
                "guard.yaml: namespaces.ci.serviceAccounts: is empty",
            ),
            (
                "serviceAccounts: [Admin]\n",
                "guard.yaml: serviceAccounts: \"Admin\" is not a ServiceAccount name",
            ),
            (
                "namespaces:\n  Team_A: {}\n",
                "guard.yaml: namespaces.Team_A: is not a namespace name",
            ),
            (
                "namespaces:\n  ci:\n    privileged: true\n",
                "guard.yaml: namespaces.ci.privileged: unknown field `privileged`",
            ),
        ] {
            let err = RunPodGuard::parse(text, "guard.yaml")
                .unwrap_err()
                .to_string();
            assert!(err.starts_with(want), "{text:?}: {err}");
        }
    }
}
