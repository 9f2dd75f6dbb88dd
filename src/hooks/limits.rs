//! The limits of the hook configuration (`limits:`): defaults for every hook, the most a pool
//! plugin may ask for, and the bounds of what tenants make the operator do (policy memory,
//! module size, compiles, evaluation slots). See docs/plugins.md.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::host::HostLimits;
use super::rego::PolicyLimits;
use super::slots::SlotLimits;
use super::spec::PluginSpec;

/// Defaults for every hook, and the most a pool plugin may ask for.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConfigLimits {
    /// Default deadline of a plugin call; a plugin's `timeoutMillis` overrides it.
    #[serde(default = "default_timeout")]
    pub plugin_timeout_millis: u32,
    /// Default memory cap of a plugin call; a plugin's `memoryLimitMib` overrides it.
    #[serde(default = "default_memory")]
    pub plugin_memory_limit_mib: u32,
    /// The longest `timeoutMillis` a pool plugin may ask for. Cluster plugins are not capped:
    /// the administrator who sets this also writes them.
    #[serde(default = "default_max_timeout")]
    pub max_plugin_timeout_millis: u32,
    /// The largest `memoryLimitMib` a pool plugin may ask for. A call's memory is the
    /// operator's own: the chart's operator Pod has 128 MiB in all, so one 64 MiB call leaves
    /// the operator about half of it, and a pool author cannot ask for the rest.
    #[serde(default = "default_memory")]
    pub max_plugin_memory_limit_mib: u32,
    /// Largest output a plugin may return.
    #[serde(default = "default_output")]
    pub max_output_bytes: u32,
    /// Time limit of one Rego evaluation.
    #[serde(default = "default_timeout")]
    pub policy_timeout_millis: u32,
    /// Memory one Rego evaluation (or compile) may allocate, in MiB: its evaluator child ends
    /// before an allocation past it, and the run is denied.
    #[serde(default = "default_policy_memory")]
    pub max_policy_memory_mib: u32,
    /// Largest plugin module, after gunzip, in MiB. Compiling takes memory and time in
    /// proportion to it (see docs/plugins.md).
    #[serde(default = "default_module_mib")]
    pub max_module_mib: u32,
    /// How long one plugin compile may take before the plugin is reported too slow to compile.
    #[serde(default = "default_compile_seconds")]
    pub plugin_compile_timeout_seconds: u32,
    /// Plugin compiles at once in the process (each takes one core). A pool compiles one at a
    /// time, so one pool's slow module never takes every compile slot.
    #[serde(default = "default_compiles")]
    pub max_concurrent_compiles: u32,
    /// Hook pipelines evaluated at once in the process; 0: one per core, at least 2.
    #[serde(default)]
    pub max_concurrent_evaluations: u32,
    /// Of those, how many one pool may use; 0: half of them, at least 1.
    #[serde(default)]
    pub max_concurrent_evaluations_per_pool: u32,
    /// How long a run waits for an evaluation slot before it is denied.
    #[serde(default = "default_slot_wait_seconds")]
    pub evaluation_slot_wait_seconds: u32,
}

fn default_timeout() -> u32 {
    100
}
fn default_memory() -> u32 {
    64
}
/// Ten times the default: room for a slow plugin, while a pool of 16 plugins still cannot hold
/// a run for more than 16 s.
fn default_max_timeout() -> u32 {
    1000
}
fn default_output() -> u32 {
    1 << 20
}
/// A quarter of the chart's 128 MiB operator Pod (see docs/plugins.md, "What it costs").
fn default_policy_memory() -> u32 {
    32
}
/// Four times the largest example (the Go one, 3.3 MB).
fn default_module_mib() -> u32 {
    16
}
fn default_compile_seconds() -> u32 {
    60
}
fn default_compiles() -> u32 {
    2
}
fn default_slot_wait_seconds() -> u32 {
    30
}

impl Default for ConfigLimits {
    fn default() -> Self {
        Self {
            plugin_timeout_millis: default_timeout(),
            plugin_memory_limit_mib: default_memory(),
            max_plugin_timeout_millis: default_max_timeout(),
            max_plugin_memory_limit_mib: default_memory(),
            max_output_bytes: default_output(),
            policy_timeout_millis: default_timeout(),
            max_policy_memory_mib: default_policy_memory(),
            max_module_mib: default_module_mib(),
            plugin_compile_timeout_seconds: default_compile_seconds(),
            max_concurrent_compiles: default_compiles(),
            max_concurrent_evaluations: 0,
            max_concurrent_evaluations_per_pool: 0,
            evaluation_slot_wait_seconds: default_slot_wait_seconds(),
        }
    }
}

impl ConfigLimits {
    /// The WASM host's limits for this configuration.
    pub fn host_limits(&self) -> HostLimits {
        HostLimits {
            timeout: Duration::from_millis(u64::from(self.plugin_timeout_millis)),
            memory_limit_bytes: (self.plugin_memory_limit_mib as usize) << 20,
            max_output_bytes: self.max_output_bytes as usize,
            max_module_bytes: (self.max_module_mib as usize) << 20,
            compile_timeout: Duration::from_secs(u64::from(self.plugin_compile_timeout_seconds)),
            max_concurrent_compiles: self.max_concurrent_compiles as usize,
            ..HostLimits::default()
        }
    }

    pub fn policy_timeout(&self) -> Duration {
        Duration::from_millis(u64::from(self.policy_timeout_millis))
    }

    /// The limits of every Rego evaluation.
    pub fn policy_limits(&self) -> PolicyLimits {
        PolicyLimits {
            timeout: self.policy_timeout(),
            memory_limit_bytes: u64::from(self.max_policy_memory_mib) << 20,
            ..PolicyLimits::default()
        }
    }

    /// How hook evaluations share the process.
    pub fn slot_limits(&self) -> SlotLimits {
        SlotLimits::new(
            self.max_concurrent_evaluations as usize,
            self.max_concurrent_evaluations_per_pool as usize,
            Duration::from_secs(u64::from(self.evaluation_slot_wait_seconds)),
        )
    }

    /// The most a pool plugin may ask for.
    pub fn pool_plugin_caps(&self) -> PoolPluginCaps {
        PoolPluginCaps {
            timeout_millis: self.max_plugin_timeout_millis,
            memory_limit_mib: self.max_plugin_memory_limit_mib,
        }
    }
}

/// The most a pool plugin (a WorkerPool's `spec.plugins`, written by whoever may edit the
/// pool) may ask for with `timeoutMillis` and `memoryLimitMib`: its calls run inside the
/// operator, so one greedy pool could otherwise take the operator down for every pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolPluginCaps {
    pub timeout_millis: u32,
    pub memory_limit_mib: u32,
}

impl Default for PoolPluginCaps {
    fn default() -> Self {
        ConfigLimits::default().pool_plugin_caps()
    }
}

impl PoolPluginCaps {
    /// Refuses `spec`, the pool plugin at `field` (e.g. `spec.plugins[0]`), when it asks for
    /// more than the caps: the message names the field, the cap and where the cap is set.
    pub fn check(&self, field: &str, spec: &PluginSpec) -> Result<(), String> {
        let over = |name: &str, asked: u32, cap: u32, unit: &str, setting: &str| {
            format!(
                "{field}.{name}: {asked} {unit} is more than a pool plugin may ask for (at most \
                 {cap} {unit}, set by the operator's administrator as {setting} in its hook \
                 configuration, Helm value hooks.{setting})"
            )
        };
        if let Some(asked) = spec.timeout_millis.filter(|&ms| ms > self.timeout_millis) {
            return Err(over(
                "timeoutMillis",
                asked,
                self.timeout_millis,
                "ms",
                "limits.maxPluginTimeoutMillis",
            ));
        }
        if let Some(asked) = spec
            .memory_limit_mib
            .filter(|&mib| mib > self.memory_limit_mib)
        {
            return Err(over(
                "memoryLimitMib",
                asked,
                self.memory_limit_mib,
                "MiB",
                "limits.maxPluginMemoryLimitMib",
            ));
        }
        Ok(())
    }
}

impl ConfigLimits {
    /// Every limit is positive, and a default is within its cap: the field and the problem.
    pub(super) fn check(&self) -> Result<(), (String, String)> {
        let limits = self;
        for (field, value) in [
            ("limits.pluginTimeoutMillis", limits.plugin_timeout_millis),
            (
                "limits.pluginMemoryLimitMib",
                limits.plugin_memory_limit_mib,
            ),
            (
                "limits.maxPluginTimeoutMillis",
                limits.max_plugin_timeout_millis,
            ),
            (
                "limits.maxPluginMemoryLimitMib",
                limits.max_plugin_memory_limit_mib,
            ),
            ("limits.maxOutputBytes", limits.max_output_bytes),
            ("limits.policyTimeoutMillis", limits.policy_timeout_millis),
            ("limits.maxPolicyMemoryMib", limits.max_policy_memory_mib),
            ("limits.maxModuleMib", limits.max_module_mib),
            (
                "limits.pluginCompileTimeoutSeconds",
                limits.plugin_compile_timeout_seconds,
            ),
            (
                "limits.maxConcurrentCompiles",
                limits.max_concurrent_compiles,
            ),
            (
                "limits.evaluationSlotWaitSeconds",
                limits.evaluation_slot_wait_seconds,
            ),
        ] {
            if value == 0 {
                return Err((field.into(), "must be greater than 0".into()));
            }
        }
        // The default applies to pool plugins that ask for nothing, so it must be within the cap.
        for (field, default, cap_field, cap) in [
            (
                "limits.pluginTimeoutMillis",
                limits.plugin_timeout_millis,
                "limits.maxPluginTimeoutMillis",
                limits.max_plugin_timeout_millis,
            ),
            (
                "limits.pluginMemoryLimitMib",
                limits.plugin_memory_limit_mib,
                "limits.maxPluginMemoryLimitMib",
                limits.max_plugin_memory_limit_mib,
            ),
        ] {
            if default > cap {
                return Err((
                    field.into(),
                    format!(
                        "{default} is more than {cap_field} ({cap}), the most a pool plugin may \
                         ask for, and pool plugins that ask for nothing get it: raise \
                         {cap_field} too, or lower {field}"
                    ),
                ));
            }
        }
        Ok(())
    }
}
