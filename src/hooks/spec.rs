use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A WASM plugin taken from a ConfigMap, as listed in a WorkerPool's `spec.plugins` or in the
/// operator's cluster-wide configuration.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PluginSpec {
    /// Name of the ConfigMap holding the module in `binaryData` (plain or gzip-compressed
    /// `.wasm`). For pool plugins the ConfigMap lives in the pool's namespace.
    #[schemars(length(min = 1, max = 63), regex(pattern = DNS_SUBDOMAIN))]
    pub config_map: String,
    /// Key inside the ConfigMap's `binaryData`. Optional when the ConfigMap has a single key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Name shown in events, metrics and the Pod's hook annotation. Defaults to the ConfigMap name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63))]
    pub name: Option<String>,
    /// Plugin settings, passed to the plugin's `validate_settings` at load and to every call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form_object")]
    pub settings: Option<serde_json::Value>,
    /// What happens when the plugin fails (trap, timeout, bad output): `Fail` denies the run,
    /// `Ignore` skips the plugin and records why. Defaults to `Fail`.
    #[serde(default)]
    pub failure_policy: FailurePolicy,
    /// Deadline for one call, in milliseconds. Defaults to the operator's
    /// `limits.pluginTimeoutMillis` (100). A pool plugin asking for more than the operator's
    /// `limits.maxPluginTimeoutMillis` (1000) is refused at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000), extend("format" = "int32"))]
    pub timeout_millis: Option<u32>,
    /// Memory cap for one call, in MiB. Defaults to the operator's `limits.pluginMemoryLimitMib`
    /// (64). A pool plugin asking for more than the operator's `limits.maxPluginMemoryLimitMib`
    /// (64) is refused at load.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1024), extend("format" = "int32"))]
    pub memory_limit_mib: Option<u32>,
}

/// A Kubernetes object name (RFC 1123 subdomain), as a ConfigMap's name must be.
const DNS_SUBDOMAIN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// What a plugin failure means for the run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum FailurePolicy {
    /// Deny the run with the plugin's error.
    #[default]
    Fail,
    /// Skip the plugin; the Pod's hook annotation records that it was skipped and why.
    Ignore,
}

fn free_form_object(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
    })
}

/// A cluster-wide Rego initialization policy from the operator's hook configuration: either
/// a key of a ConfigMap in the operator's namespace, or inline Rego.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PolicySpec {
    /// Name shown in events, metrics and the Pod's hook annotation. Defaults to the ConfigMap
    /// name and key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// ConfigMap holding the policy in `data` (or `binaryData`, UTF-8).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,
    /// Key inside the ConfigMap. Optional when the ConfigMap has a single key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The policy itself, instead of a ConfigMap.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rego: Option<String>,
    /// `v0`, `v1` or `auto` (the default: v1, else v0).
    #[serde(default)]
    #[schemars(with = "Option<String>")]
    pub rego_version: super::rego::RegoVersion,
}
