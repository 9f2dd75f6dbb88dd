//! The live set of hooks: cluster-wide ones from the operator's configuration and each pool's
//! own, loaded from ConfigMaps and hot-reloaded when those change.
//!
//! A plugin version that fails to load (bad module, rejected settings, missing ConfigMap)
//! leaves the previous good version in service; the [`LoadReport`] says why, for an event, a
//! WorkerPool condition and a metric. A policy that fails to compile is not replaced by its
//! previous version (the launcher would read the new file from the mounted ConfigMap anyway):
//! it denies the pool's runs, with the compile error as the reason, until it is fixed.
//!
//! Fail closed: until the cluster-wide hooks and a pool's own hooks have loaded once (a load
//! that completed, whatever became of each hook), no pipeline is built for that pool's runs.
//! [`HookRegistry::pipeline`] then returns one that waits a bounded time for the load
//! ([`Pipeline::evaluate_blocking`]) and denies the run if it does not come.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use tokio::sync::watch;

use super::config::{HookConfig, PoolPluginCaps};
use super::host::{Digest, WasmHost};
use super::metrics::HookMetrics;
use super::pipeline::{Pipeline, PluginEntry, PolicyEntry};
use super::plugin::Plugin;
use super::rego::{PolicyEvaluator, RegoVersion};
pub use super::report::{
    CONDITION_TYPE, HookKind, HooksCondition, LoadReport, LoadResult, LoadStatus,
    REASON_LOAD_FAILED, REASON_LOADED,
};
use super::slots::{EvaluationSlots, SlotLimits};
pub use super::source::FetchedConfigMaps;
use super::source::{self, SourceError};
use super::spec::PluginSpec;
use crate::guard::RunPodGuard;

/// The `scope` of cluster-wide hooks.
pub const CLUSTER_SCOPE: &str = "cluster";

/// How long a run waits for its pool's hooks to load before it is denied.
pub const DEFAULT_LOAD_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug)]
struct PluginSlot {
    name: String,
    spec: PluginSpec,
    active: Option<Arc<Plugin>>,
    /// Digest of the module bytes and the spec the active plugin was loaded from.
    loaded_from: Option<(Digest, PluginSpec)>,
    error: Option<String>,
    /// Digest of the module bytes and the spec whose load failed for a reason that does not
    /// go away by itself (too large, not WebAssembly, a bad ABI, settings rejected): a reload
    /// of the same bytes reports `error` again without decompressing or compiling anything.
    failed_from: Option<(Digest, PluginSpec)>,
}

/// Why a plugin's load failed; `remember` is the digest of its bytes when trying them again
/// would fail the same way.
struct LoadFailure {
    error: String,
    remember: Option<Digest>,
}

impl From<String> for LoadFailure {
    fn from(error: String) -> Self {
        Self {
            error,
            remember: None,
        }
    }
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

/// A pool's loaded hooks, and the pool's `metadata.uid` (a pool deleted and created again
/// under the same name is another pool).
#[derive(Clone, Debug)]
struct PoolHooks {
    uid: Option<String>,
    hooks: HookSet,
}

/// What the registry shares with the pipelines that wait for a load.
#[derive(Debug)]
struct Loaded {
    metrics: Arc<HookMetrics>,
    /// The evaluation slots every pipeline of this registry shares.
    slots: Arc<EvaluationSlots>,
    /// `None` until a load of the cluster-wide hooks has completed.
    cluster: RwLock<Option<HookSet>>,
    /// The last cluster-wide load's report, for every pool's HooksReady condition.
    cluster_report: RwLock<Option<LoadReport>>,
    /// Why the cluster-wide configuration could not be read at the last reload, if it could not.
    cluster_config_error: RwLock<Option<String>>,
    /// Pools whose hooks have loaded, by scope.
    pools: RwLock<HashMap<String, PoolHooks>>,
    /// Bumped after every load, so that waiting pipelines look again.
    loads: watch::Sender<u64>,
    /// The cluster admin's run-Pod guard, given to every pipeline.
    guard: RwLock<Arc<RunPodGuard>>,
}

impl Loaded {
    /// The pipeline of `scope`'s runs, or why it cannot be built yet.
    fn pipeline(&self, scope: &str, uid: Option<&str>) -> Result<Pipeline, String> {
        let cluster = read(&self.cluster);
        let Some(cluster) = cluster.as_ref() else {
            return Err(self.cluster_not_loaded());
        };
        let pools = read(&self.pools);
        let Some(own) = pools.get(scope).filter(|own| own.uid.as_deref() == uid) else {
            return Err(format!(
                "the hooks of WorkerPool {scope} have not loaded yet"
            ));
        };
        Ok(Pipeline {
            cluster_plugins: cluster.plugins.iter().map(PluginSlot::entry).collect(),
            pool_plugins: own.hooks.plugins.iter().map(PluginSlot::entry).collect(),
            pool_policy: own.hooks.policies.first().map(|p| p.entry.clone()),
            cluster_policies: cluster.policies.iter().map(|p| p.entry.clone()).collect(),
            scope: scope.to_string(),
            metrics: Some(self.metrics.clone()),
            pending: None,
            guard: read(&self.guard).clone(),
            slots: Some(self.slots.clone()),
        })
    }

    fn cluster_not_loaded(&self) -> String {
        match read(&self.cluster_config_error).as_deref() {
            Some(error) => format!("the cluster-wide hooks have not loaded: {error}"),
            None => "the cluster-wide hooks have not loaded yet".to_string(),
        }
    }

    fn loaded(&self) {
        self.loads.send_modify(|n| *n = n.wrapping_add(1));
    }
}

/// A pipeline whose hooks have not loaded: [`PendingHooks::wait`] waits for them, bounded.
#[derive(Clone, Debug)]
pub struct PendingHooks {
    loaded: Arc<Loaded>,
    scope: String,
    uid: Option<String>,
    wait: Duration,
    reason: String,
}

impl PendingHooks {
    /// Why the pipeline could not be built when it was asked for.
    pub fn reason(&self) -> &str {
        &self.reason
    }

    /// Waits until the hooks have loaded (at most the registry's load wait) and returns the
    /// pipeline, or why there is none.
    pub async fn wait(&self) -> Result<Pipeline, String> {
        // Subscribe before looking, so that a load in between is not missed.
        let mut loads = self.loaded.loads.subscribe();
        let deadline = tokio::time::Instant::now() + self.wait;
        loop {
            let reason = match self.loaded.pipeline(&self.scope, self.uid.as_deref()) {
                Ok(pipeline) => return Ok(pipeline),
                Err(reason) => reason,
            };
            match tokio::time::timeout_at(deadline, loads.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => {
                    return Err(format!("{reason} (waited {:?} for them)", self.wait));
                }
            }
        }
    }
}

/// The registry. One per operator process; share behind an `Arc`.
#[derive(Debug)]
pub struct HookRegistry {
    host: Arc<WasmHost>,
    policies: Arc<PolicyEvaluator>,
    pool_plugin_caps: PoolPluginCaps,
    load_wait: Duration,
    loaded: Arc<Loaded>,
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
    pub fn new(
        host: Arc<WasmHost>,
        policies: Arc<PolicyEvaluator>,
        metrics: Arc<HookMetrics>,
    ) -> Self {
        Self {
            host,
            policies,
            pool_plugin_caps: PoolPluginCaps::default(),
            load_wait: DEFAULT_LOAD_WAIT,
            loaded: Arc::new(Loaded {
                metrics,
                slots: EvaluationSlots::new(SlotLimits::default()),
                cluster: RwLock::new(None),
                cluster_report: RwLock::new(None),
                cluster_config_error: RwLock::new(None),
                pools: RwLock::new(HashMap::new()),
                loads: watch::Sender::new(0),
                guard: RwLock::new(Arc::default()),
            }),
        }
    }

    /// How long a run waits for its hooks to load before it is denied
    /// ([`DEFAULT_LOAD_WAIT`] unless set).
    pub fn with_load_wait(mut self, wait: Duration) -> Self {
        self.load_wait = wait;
        self
    }

    /// How many pipelines evaluate at once, in all and per pool, and how long a run waits for
    /// its turn ([`SlotLimits::default`] unless set). Call before the registry is shared.
    pub fn with_slots(mut self, limits: SlotLimits) -> Self {
        if let Some(loaded) = Arc::get_mut(&mut self.loaded) {
            loaded.slots = EvaluationSlots::new(limits);
        }
        self
    }

    /// The most a pool plugin may ask for (the configuration's defaults unless set). A pool
    /// plugin that asks for more is refused at load; cluster plugins are not capped.
    pub fn with_pool_plugin_caps(mut self, caps: PoolPluginCaps) -> Self {
        self.pool_plugin_caps = caps;
        self
    }

    /// The run-Pod guard every pipeline enforces last ([`RunPodGuard::default`] unless set).
    pub fn with_run_pod_guard(self, guard: RunPodGuard) -> Self {
        *write(&self.loaded.guard) = Arc::new(guard);
        self
    }

    pub fn host(&self) -> &Arc<WasmHost> {
        &self.host
    }

    fn metrics(&self) -> &HookMetrics {
        &self.loaded.metrics
    }

    /// Loads (or reloads) the cluster-wide hooks. `config_maps` holds the ConfigMaps named by
    /// [`cluster_config_maps`] that exist, by name.
    pub fn load_cluster(
        &self,
        config: &HookConfig,
        config_maps: &BTreeMap<String, ConfigMap>,
    ) -> LoadReport {
        self.load_cluster_from(config, &FetchedConfigMaps::found(config_maps))
    }

    /// Loads (or reloads) the cluster-wide hooks from the ConfigMaps named by
    /// [`cluster_config_maps`], as read. The report is kept for [`HookRegistry::pool_condition`].
    pub fn load_cluster_from(
        &self,
        config: &HookConfig,
        config_maps: &FetchedConfigMaps,
    ) -> LoadReport {
        let mut report = LoadReport {
            scope: CLUSTER_SCOPE.to_string(),
            results: Vec::new(),
        };
        let previous = read(&self.loaded.cluster).clone().unwrap_or_default();
        let plugins = self.load_plugins(
            &previous.plugins,
            &config.plugins,
            "plugins",
            None,
            config_maps,
            &mut report,
        );
        let policies = config
            .policies
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let name = spec.display_name();
                let (origin, text) = match (&spec.rego, &spec.config_map) {
                    (Some(rego), _) => ("inline".to_string(), Ok(rego.clone())),
                    (None, Some(cm)) => (
                        describe(cm, spec.key.as_deref()),
                        config_maps
                            .get(cm, &format!("policies[{i}].configMap"))
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
        *write(&self.loaded.cluster) = Some(HookSet { plugins, policies });
        *write(&self.loaded.cluster_report) = Some(report.clone());
        *write(&self.loaded.cluster_config_error) = None;
        self.loaded.loaded();
        report
    }

    /// The cluster-wide configuration could not be read or parsed: the hooks loaded before (if
    /// any) stay in service, and every pool's HooksReady condition says why.
    pub fn cluster_config_failed(&self, error: String) {
        *write(&self.loaded.cluster_config_error) = Some(error);
        self.loaded.loaded();
    }

    /// Whether a load of the cluster-wide hooks has completed.
    pub fn cluster_loaded(&self) -> bool {
        read(&self.loaded.cluster).is_some()
    }

    /// Waits at most `wait` for the first load of the cluster-wide hooks; whether it came.
    pub async fn wait_for_cluster(&self, wait: Duration) -> bool {
        let mut loads = self.loaded.loads.subscribe();
        tokio::time::timeout(wait, async {
            while !self.cluster_loaded() {
                if loads.changed().await.is_err() {
                    break;
                }
            }
        })
        .await
        .is_ok()
            && self.cluster_loaded()
    }

    /// Loads (or hot-reloads) one pool's plugins and initialization policy. `config_maps` holds
    /// the ConfigMaps named by [`pool_config_maps`] that exist in the pool's namespace, by name.
    pub fn load_pool(
        &self,
        pool: &crate::crd::WorkerPool,
        config_maps: &BTreeMap<String, ConfigMap>,
    ) -> LoadReport {
        let mut fetched = FetchedConfigMaps::found(config_maps);
        fetched.namespace = pool.metadata.namespace.clone().unwrap_or_default();
        self.load_pool_from(pool, &fetched)
    }

    /// Loads (or hot-reloads) one pool's plugins and initialization policy from the ConfigMaps
    /// named by [`pool_config_maps`], as read from the pool's namespace. A ConfigMap that could
    /// not be read is one more load failure of the hooks that use it (the previous version
    /// stays in service, or the failure policy decides); the load still completes, and the
    /// pool's runs may be built from then on.
    pub fn load_pool_from(
        &self,
        pool: &crate::crd::WorkerPool,
        config_maps: &FetchedConfigMaps,
    ) -> LoadReport {
        let scope = pool_scope(pool);
        let uid = pool.metadata.uid.clone();
        let mut report = LoadReport {
            scope: scope.clone(),
            results: Vec::new(),
        };
        let previous = read(&self.loaded.pools)
            .get(&scope)
            .filter(|p| p.uid == uid)
            .map(|p| p.hooks.clone())
            .unwrap_or_default();
        let plugins = self.load_plugins(
            &previous.plugins,
            &pool.spec.plugins,
            "spec.plugins",
            Some(&self.pool_plugin_caps),
            config_maps,
            &mut report,
        );
        let mut policies = Vec::new();
        match source::initialization_policy(pool) {
            Ok(None) => {}
            Ok(Some(policy)) => {
                let name = format!("{}/{}", policy.config_map, policy.key);
                let origin = describe(&policy.config_map, Some(&policy.key));
                let text = match config_maps.get(&policy.config_map, &policy.field) {
                    Err(SourceError::NotFound { .. }) if policy.optional => None,
                    Err(error) => Some(Err(error)),
                    Ok(cm) => Some(source::policy_text(cm, Some(&policy.key))),
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
                self.metrics().count_load_failure(&scope, &name);
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
        let hooks = HookSet { plugins, policies };
        write(&self.loaded.pools).insert(scope, PoolHooks { uid, hooks });
        self.loaded.loaded();
        report
    }

    /// `HooksReady` for a pool: its own hooks' problems (from `pool_report`, its latest load)
    /// and those of the cluster-wide hooks, which run on its Pods too.
    pub fn pool_condition(&self, pool_report: &LoadReport) -> HooksCondition {
        let mut problems: Vec<String> = pool_report.problems().map(LoadResult::message).collect();
        let cluster_report = read(&self.loaded.cluster_report);
        match cluster_report.as_ref() {
            None => problems.push(format!(
                "{}: the pool's runs wait for them, and are denied if they do not load",
                self.loaded.cluster_not_loaded()
            )),
            Some(cluster) => {
                problems.extend(
                    cluster
                        .problems()
                        .map(|p| format!("cluster-wide {}", p.message())),
                );
                if let Some(error) = read(&self.loaded.cluster_config_error).as_deref() {
                    problems.push(format!(
                        "the cluster-wide hook configuration cannot be loaded: {error}; the cluster-wide hooks loaded before stay in service"
                    ));
                }
            }
        }
        HooksCondition::from_problems(problems, || {
            let cluster = cluster_report.as_ref().map_or(0, |r| r.results.len());
            format!(
                "{} hooks loaded ({} of the pool, {cluster} cluster-wide)",
                pool_report.results.len() + cluster,
                pool_report.results.len()
            )
        })
    }

    /// The pools whose hooks are loaded: scope and `metadata.uid`.
    pub fn pools(&self) -> Vec<(String, Option<String>)> {
        read(&self.loaded.pools)
            .iter()
            .map(|(scope, own)| (scope.clone(), own.uid.clone()))
            .collect()
    }

    /// Forgets the hooks and the hook metrics of a deleted pool (`scope`, `uid` as from
    /// [`HookRegistry::pools`]). Hooks loaded since for another pool of the same name stay.
    pub fn forget_pool(&self, scope: &str, uid: Option<&str>) {
        let mut pools = write(&self.loaded.pools);
        if pools
            .get(scope)
            .is_some_and(|own| own.uid.as_deref() == uid)
        {
            pools.remove(scope);
            drop(pools);
            self.metrics().forget_scope(scope);
            self.loaded.loaded();
        }
    }

    /// The pipeline for a run of `pool`, as the hooks stand now. Until both the cluster-wide
    /// hooks and the pool's have loaded, it holds no hooks: [`Pipeline::evaluate_blocking`]
    /// waits for them (at most the load wait) and [`Pipeline::evaluate`] denies.
    pub fn pipeline(&self, pool: &crate::crd::WorkerPool) -> Pipeline {
        let scope = pool_scope(pool);
        let uid = pool.metadata.uid.clone();
        match self.loaded.pipeline(&scope, uid.as_deref()) {
            Ok(pipeline) => pipeline,
            Err(reason) => Pipeline {
                scope: scope.clone(),
                metrics: Some(self.loaded.metrics.clone()),
                slots: Some(self.loaded.slots.clone()),
                guard: read(&self.loaded.guard).clone(),
                pending: Some(PendingHooks {
                    loaded: self.loaded.clone(),
                    scope,
                    uid,
                    wait: self.load_wait,
                    reason,
                }),
                ..Pipeline::default()
            },
        }
    }

    /// `field` is where `specs` are, e.g. `spec.plugins`; `caps` bound what they may ask for
    /// (pool plugins), checked before anything is read or compiled.
    fn load_plugins(
        &self,
        previous: &[PluginSlot],
        specs: &[PluginSpec],
        field: &str,
        caps: Option<&PoolPluginCaps>,
        config_maps: &FetchedConfigMaps,
        report: &mut LoadReport,
    ) -> Vec<PluginSlot> {
        let scope = report.scope.clone();
        specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let name = spec.display_name().to_string();
                let old = previous.iter().find(|slot| slot.name == name);
                let origin = describe(&spec.config_map, spec.key.as_deref());
                let allowed =
                    caps.map_or(Ok(()), |caps| caps.check(&format!("{field}[{i}]"), spec));
                // The bytes as stored are digested before anything is decompressed: an
                // unchanged plugin costs a hash of its ConfigMap key, nothing more.
                let result = allowed.map_err(LoadFailure::from).and_then(|()| {
                    let config_map = config_maps
                        .get(&spec.config_map, &format!("{field}[{i}].configMap"))
                        .map_err(|e| e.to_string())?;
                    let (key, stored) = source::plugin_source(config_map, spec.key.as_deref())
                        .map_err(|e| e.to_string())?;
                    let digest = Digest::of(stored);
                    let from = Some((digest, spec.clone()));
                    if let Some(old) = old {
                        if old.active.is_some() && old.loaded_from == from {
                            return Ok(None);
                        }
                        if let Some(error) = &old.error
                            && old.failed_from == from
                        {
                            return Err(LoadFailure {
                                error: error.clone(),
                                remember: Some(digest),
                            });
                        }
                    }
                    let failed = |error: String, lasting: bool| LoadFailure {
                        error,
                        remember: lasting.then_some(digest),
                    };
                    let max = self.host.limits().max_module_bytes;
                    let bytes = source::decompress(config_map, &key, stored, max)
                        .map_err(|e| failed(e.to_string(), true))?;
                    Plugin::load_for(&self.host, &scope, &name, bytes, spec)
                        .map(|plugin| Some((Arc::new(plugin), digest)))
                        .map_err(|e| {
                            let lasting = e.is_lasting();
                            failed(e.to_string(), lasting)
                        })
                });
                let failed_from =
                    |failure: &LoadFailure| failure.remember.map(|digest| (digest, spec.clone()));
                let unavailable = |failure: LoadFailure| {
                    let error = failure.error.clone();
                    let slot = PluginSlot {
                        name: name.clone(),
                        spec: spec.clone(),
                        active: None,
                        loaded_from: None,
                        error: Some(error.clone()),
                        failed_from: failed_from(&failure),
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
                            failed_from: None,
                        };
                        (slot, status)
                    }
                    (Err(failure), Some(old)) if old.active.is_some() => {
                        let digest = old
                            .active
                            .as_ref()
                            .map(|p| short(p.digest()))
                            .unwrap_or_default();
                        let slot = PluginSlot {
                            error: Some(failure.error.clone()),
                            failed_from: failed_from(&failure),
                            ..old.clone()
                        };
                        let error = failure.error;
                        (slot, LoadStatus::KeptPrevious { digest, error })
                    }
                    (Err(failure), _) => unavailable(failure),
                    (Ok(None), None) => unavailable("it has not been loaded".to_string().into()),
                };
                if !matches!(status, LoadStatus::Loaded { .. } | LoadStatus::Unchanged) {
                    self.metrics().count_load_failure(&report.scope, &name);
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
            self.policies
                .compile(name, file, &text, version)
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
                self.metrics().count_load_failure(&report.scope, name);
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
