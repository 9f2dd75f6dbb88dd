//! The operator's cluster-wide hook configuration: a YAML (or JSON) file, normally rendered
//! from the Helm chart's values and mounted into the operator. See docs/plugins.md.
//!
//! ```yaml
//! plugins:                      # cluster plugins, run first, in this order
//!   - configMap: registry-mirror  # in the operator's namespace, `binaryData`
//!     key: plugin.wasm
//!     settings: {mirror: mirror.example.com}
//!     failurePolicy: Fail
//! policies:                     # cluster Rego policies, run after the pool's policy
//!   - name: no-root
//!     configMap: cluster-policies
//!     key: no-root.rego
//!   - name: inline
//!     rego: |
//!       package spacelift
//!       deny contains "no runs on Sundays" if false
//! limits:
//!   pluginTimeoutMillis: 100
//!   pluginMemoryLimitMib: 64
//!   maxPluginTimeoutMillis: 1000   # the most a pool plugin may ask for
//!   maxPluginMemoryLimitMib: 64
//!   maxOutputBytes: 1048576
//!   policyTimeoutMillis: 100
//! ```

use std::collections::BTreeSet;

use serde::{Deserialize, Serialize};

use super::spec::{PluginSpec, PolicySpec};
use crate::manifest;

/// The parsed configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HookConfig {
    #[serde(default)]
    pub plugins: Vec<PluginSpec>,
    #[serde(default)]
    pub policies: Vec<PolicySpec>,
    #[serde(default)]
    pub limits: ConfigLimits,
}

pub use super::limits::{ConfigLimits, PoolPluginCaps};

/// Why the configuration file cannot be used. Names the file, the field and the fix.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{origin}: {path}: {message}")]
    Parse {
        origin: String,
        path: String,
        message: String,
    },
    #[error("{origin}: {field}: {message}")]
    Invalid {
        origin: String,
        field: String,
        message: String,
    },
}

impl HookConfig {
    /// Parses and checks the configuration. `origin` names the file in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        let de = yaml_serde::Deserializer::from_str(text);
        let config: Self = serde_path_to_error::deserialize(de).map_err(|e| {
            let mut path = e.path().to_string();
            let message = e.into_inner().to_string();
            // For an unknown field the path ends with the field, which the message names.
            if message.starts_with("unknown field") {
                path = path
                    .rsplit_once('.')
                    .map_or(".", |(parent, _)| parent)
                    .to_string();
            }
            // yaml_serde starts some messages with the path already.
            let message = match message.strip_prefix(&format!("{path}: ")) {
                Some(rest) => rest.to_string(),
                None => message,
            };
            ConfigError::Parse {
                origin: origin.to_string(),
                path: manifest::named_path(path),
                message,
            }
        })?;
        config.check(origin)?;
        Ok(config)
    }

    fn check(&self, origin: &str) -> Result<(), ConfigError> {
        let invalid = |field: String, message: String| ConfigError::Invalid {
            origin: origin.to_string(),
            field,
            message,
        };
        let mut names = BTreeSet::new();
        for (i, plugin) in self.plugins.iter().enumerate() {
            if plugin.config_map.trim().is_empty() {
                return Err(invalid(
                    format!("plugins[{i}].configMap"),
                    "must name the ConfigMap that holds the plugin's .wasm".into(),
                ));
            }
            let name = plugin.display_name();
            if !names.insert(name.to_string()) {
                return Err(invalid(
                    format!("plugins[{i}].name"),
                    format!("{name:?} is used twice: give each plugin its own name"),
                ));
            }
        }
        names.clear();
        for (i, policy) in self.policies.iter().enumerate() {
            match (&policy.config_map, &policy.rego) {
                (Some(_), Some(_)) | (None, None) => {
                    return Err(invalid(
                        format!("policies[{i}]"),
                        "set exactly one of configMap (with key) or rego".into(),
                    ));
                }
                (None, Some(_)) if policy.name.is_none() => {
                    return Err(invalid(
                        format!("policies[{i}].name"),
                        "an inline policy needs a name".into(),
                    ));
                }
                _ => {}
            }
            let name = policy.display_name();
            if !names.insert(name.clone()) {
                return Err(invalid(
                    format!("policies[{i}].name"),
                    format!("{name:?} is used twice: give each policy its own name"),
                ));
            }
        }
        self.limits
            .check()
            .map_err(|(field, message)| invalid(field, message))?;
        Ok(())
    }
}

impl PluginSpec {
    /// The name used in events, metrics and the trail: `name`, else the ConfigMap's name.
    pub fn display_name(&self) -> &str {
        self.name.as_deref().unwrap_or(&self.config_map)
    }
}

impl PolicySpec {
    /// The name used in events, metrics and the trail: `name`, else `<configMap>/<key>`.
    pub fn display_name(&self) -> String {
        match (&self.name, &self.config_map, &self.key) {
            (Some(name), _, _) => name.clone(),
            (None, Some(cm), Some(key)) => format!("{cm}/{key}"),
            (None, Some(cm), None) => cm.clone(),
            (None, None, _) => "inline".into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::hooks::FailurePolicy;

    #[test]
    fn the_documented_example_parses() {
        let text = r#"
plugins:
  - configMap: registry-mirror
    key: plugin.wasm
    settings: {mirror: mirror.example.com}
    failurePolicy: Ignore
policies:
  - name: no-root
    configMap: cluster-policies
    key: no-root.rego
    regoVersion: v1
  - name: inline
    rego: |
      package spacelift
limits:
  policyTimeoutMillis: 20
"#;
        let config = HookConfig::parse(text, "hooks.yaml").unwrap();
        assert_eq!(config.plugins[0].failure_policy, FailurePolicy::Ignore);
        assert_eq!(config.plugins[0].display_name(), "registry-mirror");
        assert_eq!(config.policies[1].display_name(), "inline");
        assert_eq!(config.limits.policy_timeout(), Duration::from_millis(20));
        assert_eq!(config.limits.plugin_timeout_millis, 100);
        assert_eq!(
            config.limits.pool_plugin_caps(),
            PoolPluginCaps {
                timeout_millis: 1000,
                memory_limit_mib: 64
            }
        );
    }

    #[test]
    fn a_default_above_its_cap_is_refused_naming_both_settings() {
        let err =
            HookConfig::parse("limits:\n  pluginMemoryLimitMib: 128\n", "hooks.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "hooks.yaml: limits.pluginMemoryLimitMib: 128 is more than \
             limits.maxPluginMemoryLimitMib (64), the most a pool plugin may ask for, and pool \
             plugins that ask for nothing get it: raise limits.maxPluginMemoryLimitMib too, or \
             lower limits.pluginMemoryLimitMib"
        );
        let config = HookConfig::parse(
            "limits:\n  pluginMemoryLimitMib: 128\n  maxPluginMemoryLimitMib: 128\n",
            "hooks.yaml",
        )
        .unwrap();
        assert_eq!(config.limits.pool_plugin_caps().memory_limit_mib, 128);
    }

    #[test]
    fn a_pool_plugin_may_ask_for_up_to_the_caps_and_no_more() {
        let caps = PoolPluginCaps::default();
        let asking = |timeout_millis, memory_limit_mib| PluginSpec {
            config_map: "hog".into(),
            timeout_millis,
            memory_limit_mib,
            ..PluginSpec::default()
        };
        assert_eq!(caps.check("spec.plugins[0]", &asking(None, None)), Ok(()));
        assert_eq!(
            caps.check("spec.plugins[0]", &asking(Some(1000), Some(64))),
            Ok(())
        );
        assert_eq!(
            caps.check("spec.plugins[2]", &asking(Some(10000), None)),
            Err(
                "spec.plugins[2].timeoutMillis: 10000 ms is more than a pool plugin may ask for \
                 (at most 1000 ms, set by the operator's administrator as \
                 limits.maxPluginTimeoutMillis in its hook configuration, Helm value \
                 hooks.limits.maxPluginTimeoutMillis)"
                    .to_string()
            )
        );
        assert_eq!(
            caps.check("spec.plugins[1]", &asking(None, Some(1024))),
            Err(
                "spec.plugins[1].memoryLimitMib: 1024 MiB is more than a pool plugin may ask for \
                 (at most 64 MiB, set by the operator's administrator as \
                 limits.maxPluginMemoryLimitMib in its hook configuration, Helm value \
                 hooks.limits.maxPluginMemoryLimitMib)"
                    .to_string()
            )
        );
    }

    #[test]
    fn errors_name_the_file_and_the_field() {
        let err = HookConfig::parse(
            "plugins:\n  - configMap: a\n    failurePolicy: Sometimes\n",
            "hooks.yaml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hooks.yaml: plugins[0].failurePolicy: unknown variant `Sometimes`, expected `Fail` or `Ignore` at line 3 column 20"
        );
        let err = HookConfig::parse("plugin: []\n", "hooks.yaml").unwrap_err();
        assert!(
            err.to_string()
                .starts_with("hooks.yaml: (top level): unknown field `plugin`, expected one of"),
            "{err}"
        );
        let err = HookConfig::parse("policies:\n  - name: x\n", "hooks.yaml").unwrap_err();
        assert_eq!(
            err.to_string(),
            "hooks.yaml: policies[0]: set exactly one of configMap (with key) or rego"
        );
        let err = HookConfig::parse(
            "plugins:\n  - configMap: a\n  - configMap: a\n",
            "hooks.yaml",
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "hooks.yaml: plugins[1].name: \"a\" is used twice: give each plugin its own name"
        );
    }
}
