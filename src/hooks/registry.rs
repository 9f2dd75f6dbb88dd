//! The live set of hooks: cluster-wide ones from the operator's configuration and each pool's
//! own, loaded from ConfigMaps and hot-reloaded when those change.
//!
//! A plugin version that fails to load (bad module, rejected settings, missing ConfigMap)
//! leaves the previous good version in service; the [`LoadReport`] says why, for an event, a
//! WorkerPool condition and a metric. A policy that fails to compile is not replaced by its
//! previous version (the launcher would read the new file from the mounted ConfigMap anyway):
//! it denies the pool's runs, with the compile error as the reason, until it is fixed.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;

use super::config::HookConfig;
use super::host::{Digest, WasmHost};
use super::metrics::HookMetrics;
use super::pipeline::{Pipeline, PluginEntry, PolicyEntry};
use super::plugin::Plugin;
use super::rego::{Policy, RegoVersion};
use super::source::{self, SourceError};
use super::spec::{FailurePolicy, PluginSpec};

/// The `scope` of cluster-wide hooks.
pub const CLUSTER_SCOPE: &str = "cluster";

/// Event reason and condition reason for a hook that failed to load.
pub const REASON_LOAD_FAILED: &str = "HookLoadFailed";
/// Condition reason when every hook loaded.
pub const REASON_LOADED: &str = "HooksLoaded";
/// The WorkerPool condition type that reports the pool's hooks.
pub const CONDITION_TYPE: &str = "HooksReady";

/// A plugin or a policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookKind {
    Plugin,
    Policy,
}

impl fmt::Display for HookKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            HookKind::Plugin => "plugin",
            HookKind::Policy => "policy",
        })
    }
}

/// What happened to one hook in a load.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LoadStatus {
    /// A new version is in service.
    Loaded { digest: String },
    /// Nothing changed.
    Unchanged,
    /// The new version failed; the previous one stays in service.
    KeptPrevious { digest: String, error: String },
    /// The plugin has never loaded; its failure policy decides what runs do.
    Unavailable {
        error: String,
        failure_policy: FailurePolicy,
    },
    /// The policy does not compile or cannot be read: the scope's runs are denied.
    Broken { error: String },
}

/// One hook's line in a [`LoadReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadResult {
    pub kind: HookKind,
    pub name: String,
    /// Where it came from, e.g. `ConfigMap ops/mirror key plugin.wasm`.
    pub source: String,
    pub status: LoadStatus,
}

impl LoadResult {
    pub fn is_problem(&self) -> bool {
        !matches!(
            self.status,
            LoadStatus::Loaded { .. } | LoadStatus::Unchanged
        )
    }

    /// A sentence for an event or a condition message.
    pub fn message(&self) -> String {
        let what = format!("{} {:?} ({})", self.kind, self.name, self.source);
        match &self.status {
            LoadStatus::Loaded { digest } => format!("{what}: loaded {digest}"),
            LoadStatus::Unchanged => format!("{what}: unchanged"),
            LoadStatus::KeptPrevious { digest, error } => {
                format!("{what}: {error}; the previous version {digest} stays in service")
            }
            LoadStatus::Unavailable {
                error,
                failure_policy: FailurePolicy::Fail,
            } => format!("{what}: {error}; runs are denied until it loads (failurePolicy: Fail)"),
            LoadStatus::Unavailable {
                error,
                failure_policy: FailurePolicy::Ignore,
            } => format!("{what}: {error}; runs go on without it (failurePolicy: Ignore)"),
            LoadStatus::Broken { error } => {
                format!("{what}: {error}; runs are denied until it is fixed")
            }
        }
    }
}

/// The outcome of loading one scope's hooks.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadReport {
    /// `cluster` or `<namespace>/<pool>`.
    pub scope: String,
    pub results: Vec<LoadResult>,
}

/// A condition for the WorkerPool's status, from a [`LoadReport`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HooksCondition {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl LoadReport {
    pub fn problems(&self) -> impl Iterator<Item = &LoadResult> {
        self.results.iter().filter(|r| r.is_problem())
    }

    pub fn is_healthy(&self) -> bool {
        self.problems().next().is_none()
    }

    /// `HooksReady`: true when every hook loaded, else false with every problem.
    pub fn condition(&self) -> HooksCondition {
        let problems: Vec<String> = self.problems().map(LoadResult::message).collect();
        if problems.is_empty() {
            HooksCondition {
                type_: CONDITION_TYPE,
                status: true,
                reason: REASON_LOADED,
                message: format!("{} hooks loaded", self.results.len()),
            }
        } else {
            HooksCondition {
                type_: CONDITION_TYPE,
                status: false,
                reason: REASON_LOAD_FAILED,
                message: problems.join("; "),
            }
        }
    }
}

#[derive(Clone, Debug)]
struct PluginSlot {
    name: String,
    spec: PluginSpec,
    active: Option<Arc<Plugin>>,
    /// Digest of the module bytes and the spec the active plugin was loaded from.
    loaded_from: Option<(Digest, PluginSpec)>,
    error: Option<String>,
}

#[derive(Clone, Debug)]
struct PolicySlot {
    entry: PolicyEntry,
    /// The text and syntax it was compiled from, to skip recompiling unchanged policies.
    compiled_from: Option<(Digest, RegoVersion)>,
}

#[derive(Clone, Debug, Default)]
struct HookSet {
    plugins: Vec<PluginSlot>,
    policies: Vec<PolicySlot>,
}

/// The registry. One per operator process; share behind an `Arc`.
#[derive(Debug)]
pub struct HookRegistry {
    host: Arc<WasmHost>,
    metrics: Arc<HookMetrics>,
    policy_timeout: Duration,
    cluster: RwLock<HookSet>,
    pools: RwLock<HashMap<String, HookSet>>,
}

/// `namespace/name` of a pool: the scope of its hooks.
pub fn pool_scope(pool: &crate::crd::WorkerPool) -> String {
    format!(
        "{}/{}",
        pool.metadata.namespace.as_deref().unwrap_or_default(),
        pool.metadata.name.as_deref().unwrap_or_default()
    )
}

/// Names of the ConfigMaps (in the operator's namespace) the cluster configuration uses.
pub fn cluster_config_maps(config: &HookConfig) -> BTreeSet<String> {
    let plugins = config.plugins.iter().map(|p| p.config_map.clone());
    let policies = config.policies.iter().filter_map(|p| p.config_map.clone());
    plugins.chain(policies).collect()
}

/// Names of the ConfigMaps (in the pool's namespace) the pool's hooks use: its plugins and
/// its initialization policy. Watch these to hot-reload.
pub fn pool_config_maps(pool: &crate::crd::WorkerPool) -> BTreeSet<String> {
    let mut names: BTreeSet<String> = pool
        .spec
        .plugins
        .iter()
        .map(|p| p.config_map.clone())
        .collect();
    if let Ok(Some(policy)) = source::initialization_policy(pool) {
        names.insert(policy.config_map);
    }
    names
}

impl HookRegistry {
    pub fn new(host: Arc<WasmHost>, metrics: Arc<HookMetrics>, policy_timeout: Duration) -> Self {
        Self {
            host,
            metrics,
            policy_timeout,
            cluster: RwLock::new(HookSet::default()),
            pools: RwLock::new(HashMap::new()),
        }
    }

    pub fn host(&self) -> &Arc<WasmHost> {
        &self.host
    }

    /// Loads (or reloads) the cluster-wide hooks. `config_maps` holds the ConfigMaps named by
    /// [`cluster_config_maps`] that exist, by name.
    pub fn load_cluster(
        &self,
        config: &HookConfig,
        config_maps: &BTreeMap<String, ConfigMap>,
    ) -> LoadReport {
        let mut report = LoadReport {
            scope: CLUSTER_SCOPE.to_string(),
            results: Vec::new(),
        };
        let previous = read(&self.cluster).clone();
        let plugins =
            self.load_plugins(&previous.plugins, &config.plugins, config_maps, &mut report);
        let policies = config
            .policies
            .iter()
            .map(|spec| {
                let name = spec.display_name();
                let (origin, text) = match (&spec.rego, &spec.config_map) {
                    (Some(rego), _) => ("inline".to_string(), Ok(rego.clone())),
                    (None, Some(cm)) => (
                        describe(cm, spec.key.as_deref()),
                        config_maps
                            .get(cm)
                            .ok_or(SourceError::NotFound {
                                config_map: cm.clone(),
                            })
                            .and_then(|c| source::policy_text(c, spec.key.as_deref())),
                    ),
                    (None, None) => (
                        "nowhere".to_string(),
                        Err(SourceError::NotFound {
                            config_map: "(none)".into(),
                        }),
                    ),
                };
                let file = spec.key.clone().unwrap_or_else(|| format!("{name}.rego"));
                self.load_policy(
                    &previous.policies,
                    &name,
                    &file,
                    &origin,
                    text,
                    spec.rego_version,
                    &mut report,
                )
            })
            .collect();
        *write(&self.cluster) = HookSet { plugins, policies };
        report
    }

    /// Loads (or reloads) one pool's plugins and initialization policy. `config_maps` holds the
    /// ConfigMaps named by [`pool_config_maps`] that exist in the pool's namespace, by name.
    pub fn load_pool(
        &self,
        pool: &crate::crd::WorkerPool,
        config_maps: &BTreeMap<String, ConfigMap>,
    ) -> LoadReport {
        let scope = pool_scope(pool);
        let mut report = LoadReport {
            scope: scope.clone(),
            results: Vec::new(),
        };
        let previous = read(&self.pools).get(&scope).cloned().unwrap_or_default();
        let plugins = self.load_plugins(
            &previous.plugins,
            &pool.spec.plugins,
            config_maps,
            &mut report,
        );
        let mut policies = Vec::new();
        match source::initialization_policy(pool) {
            Ok(None) => {}
            Ok(Some(policy)) => {
                let name = format!("{}/{}", policy.config_map, policy.key);
                let origin = describe(&policy.config_map, Some(&policy.key));
                let text = match config_maps.get(&policy.config_map) {
                    None if policy.optional => None,
                    None => Some(Err(SourceError::NotFound {
                        config_map: policy.config_map.clone(),
                    })),
                    Some(cm) => Some(source::policy_text(cm, Some(&policy.key))),
                };
                if let Some(text) = text {
                    policies.push(self.load_policy(
                        &previous.policies,
                        &name,
                        &policy.key,
                        &origin,
                        text,
                        RegoVersion::Auto,
                        &mut report,
                    ));
                }
            }
            Err(error) => {
                let name = "initialization-policy".to_string();
                let error = error.to_string();
                self.metrics.count_load_failure(&scope, &name);
                report.results.push(LoadResult {
                    kind: HookKind::Policy,
                    name: name.clone(),
                    source: format!(
                        "spec.pod.initContainer.env[{}]",
                        source::INITIALIZATION_POLICY_ENV
                    ),
                    status: LoadStatus::Broken {
                        error: error.clone(),
                    },
                });
                policies.push(PolicySlot {
                    entry: PolicyEntry::Broken {
                        name,
                        reason: error,
                    },
                    compiled_from: None,
                });
            }
        }
        write(&self.pools).insert(scope, HookSet { plugins, policies });
        report
    }

    /// Forgets a deleted pool's hooks.
    pub fn forget_pool(&self, pool: &crate::crd::WorkerPool) {
        write(&self.pools).remove(&pool_scope(pool));
    }

    /// The pipeline for a run of `pool`, as the hooks stand now.
    pub fn pipeline(&self, pool: &crate::crd::WorkerPool) -> Pipeline {
        let scope = pool_scope(pool);
        let cluster = read(&self.cluster);
        let pools = read(&self.pools);
        let own = pools.get(&scope);
        Pipeline {
            cluster_plugins: cluster.plugins.iter().map(PluginSlot::entry).collect(),
            pool_plugins: own
                .map(|s| s.plugins.iter().map(PluginSlot::entry).collect())
                .unwrap_or_default(),
            pool_policy: own
                .and_then(|s| s.policies.first())
                .map(|p| p.entry.clone()),
            cluster_policies: cluster.policies.iter().map(|p| p.entry.clone()).collect(),
            scope,
            metrics: Some(self.metrics.clone()),
        }
    }

    fn load_plugins(
        &self,
        previous: &[PluginSlot],
        specs: &[PluginSpec],
        config_maps: &BTreeMap<String, ConfigMap>,
        report: &mut LoadReport,
    ) -> Vec<PluginSlot> {
        specs
            .iter()
            .map(|spec| {
                let name = spec.display_name().to_string();
                let old = previous.iter().find(|slot| slot.name == name);
                let origin = describe(&spec.config_map, spec.key.as_deref());
                let bytes = config_maps
                    .get(&spec.config_map)
                    .ok_or(SourceError::NotFound {
                        config_map: spec.config_map.clone(),
                    })
                    .and_then(|cm| {
                        source::plugin_module(
                            cm,
                            spec.key.as_deref(),
                            self.host.limits().max_module_bytes,
                        )
                    });
                let result = bytes.map_err(|e| e.to_string()).and_then(|bytes| {
                    let digest = Digest::of(&bytes);
                    if let Some(old) = old
                        && old.active.is_some()
                        && old.loaded_from.as_ref() == Some(&(digest, spec.clone()))
                    {
                        return Ok(None);
                    }
                    Plugin::load(&self.host, &name, &bytes, spec)
                        .map(|plugin| Some((Arc::new(plugin), digest)))
                        .map_err(|e| e.to_string())
                });
                let unavailable = |error: String| {
                    let slot = PluginSlot {
                        name: name.clone(),
                        spec: spec.clone(),
                        active: None,
                        loaded_from: None,
                        error: Some(error.clone()),
                    };
                    let status = LoadStatus::Unavailable {
                        error,
                        failure_policy: spec.failure_policy,
                    };
                    (slot, status)
                };
                let (slot, status) = match (result, old) {
                    (Ok(None), Some(old)) => (old.clone(), LoadStatus::Unchanged),
                    (Ok(Some((plugin, digest))), _) => {
                        let status = LoadStatus::Loaded {
                            digest: short(plugin.digest()),
                        };
                        let slot = PluginSlot {
                            name: name.clone(),
                            spec: spec.clone(),
                            active: Some(plugin),
                            loaded_from: Some((digest, spec.clone())),
                            error: None,
                        };
                        (slot, status)
                    }
                    (Err(error), Some(old)) if old.active.is_some() => {
                        let digest = old
                            .active
                            .as_ref()
                            .map(|p| short(p.digest()))
                            .unwrap_or_default();
                        let slot = PluginSlot {
                            error: Some(error.clone()),
                            ..old.clone()
                        };
                        (slot, LoadStatus::KeptPrevious { digest, error })
                    }
                    (Err(error), _) => unavailable(error),
                    (Ok(None), None) => unavailable("it has not been loaded".to_string()),
                };
                if !matches!(status, LoadStatus::Loaded { .. } | LoadStatus::Unchanged) {
                    self.metrics.count_load_failure(&report.scope, &name);
                }
                report.results.push(LoadResult {
                    kind: HookKind::Plugin,
                    name,
                    source: origin,
                    status,
                });
                slot
            })
            .collect()
    }

    #[allow(clippy::too_many_arguments)]
    fn load_policy(
        &self,
        previous: &[PolicySlot],
        name: &str,
        file: &str,
        origin: &str,
        text: Result<String, SourceError>,
        version: RegoVersion,
        report: &mut LoadReport,
    ) -> PolicySlot {
        let compiled = text.map_err(|e| e.to_string()).and_then(|text| {
            let digest = Digest::of(text.as_bytes());
            if let Some(old) = previous.iter().find(|p| p.entry.name() == name)
                && old.compiled_from == Some((digest, version))
                && matches!(old.entry, PolicyEntry::Ready(_))
            {
                return Ok((old.clone(), true));
            }
            Policy::compile(name, file, &text, version, self.policy_timeout)
                .map(|policy| {
                    let slot = PolicySlot {
                        entry: PolicyEntry::Ready(policy),
                        compiled_from: Some((digest, version)),
                    };
                    (slot, false)
                })
                .map_err(|e| format!("does not compile: {e}"))
        });
        let (slot, status) = match compiled {
            Ok((slot, true)) => (slot, LoadStatus::Unchanged),
            Ok((slot, false)) => {
                let digest = slot
                    .compiled_from
                    .map(|(d, _)| short(&d))
                    .unwrap_or_default();
                (slot, LoadStatus::Loaded { digest })
            }
            Err(error) => {
                self.metrics.count_load_failure(&report.scope, name);
                let slot = PolicySlot {
                    entry: PolicyEntry::Broken {
                        name: name.to_string(),
                        reason: error.clone(),
                    },
                    compiled_from: None,
                };
                (slot, LoadStatus::Broken { error })
            }
        };
        report.results.push(LoadResult {
            kind: HookKind::Policy,
            name: name.to_string(),
            source: origin.to_string(),
            status,
        });
        slot
    }
}

impl PluginSlot {
    fn entry(&self) -> PluginEntry {
        match &self.active {
            Some(plugin) => PluginEntry::Ready(plugin.clone()),
            None => PluginEntry::Unavailable {
                name: self.name.clone(),
                failure_policy: self.spec.failure_policy,
                reason: self
                    .error
                    .clone()
                    .unwrap_or_else(|| "it has not been loaded".into()),
            },
        }
    }
}

fn describe(config_map: &str, key: Option<&str>) -> String {
    match key {
        Some(key) => format!("ConfigMap {config_map} key {key}"),
        None => format!("ConfigMap {config_map}"),
    }
}

/// `sha256:` and the first 12 hex digits.
fn short(digest: &Digest) -> String {
    digest.to_string().chars().take(19).collect()
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|p| p.into_inner())
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|p| p.into_inner())
}
