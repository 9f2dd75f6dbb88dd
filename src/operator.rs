//! `workerpool-operator run`: puts the controller, the hook registry, the probes, the metrics
//! endpoint and leader election together, and takes them down in order on SIGTERM.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Client;
use kube::api::Api;
use thiserror::Error;

use crate::controller::{self, Context, ControllerConfig, ControllerMetrics};
use crate::guard::RunPodGuard;
use crate::hooks::host::CompileCache;
use crate::hooks::registry::{FetchedConfigMaps, cluster_config_maps};
use crate::hooks::{HookConfig, HookMetrics, HookRegistry, PolicyEvaluator, WasmHost};
use crate::link::LinkMetrics;
use crate::ops::health::Health;
use crate::ops::http::{MetricsServer, MetricsServing, ProbeServer};
use crate::ops::leader::{LeaderElector, LeaseConfig};
use crate::ops::shutdown::Shutdown;

/// Everything `run` is told by its flags.
#[derive(Clone, Debug)]
pub struct OperatorOptions {
    /// Namespaces to watch; empty watches all.
    pub namespaces: Vec<String>,
    pub probe_address: Option<SocketAddr>,
    pub metrics_address: Option<SocketAddr>,
    pub metrics: MetricsServing,
    /// Leader election on this Lease, or none.
    pub leader_election: Option<LeaseConfig>,
    /// The cluster-wide hook configuration file.
    pub hook_config: Option<PathBuf>,
    /// What run Pods may be, enforced after every hook.
    pub run_pod_guard: RunPodGuard,
    /// Where compiled plugins are kept across restarts, and how large they may grow.
    pub plugin_cache: Option<CompileCache>,
    /// Where the cluster-wide hooks' ConfigMaps live (the operator's namespace).
    pub hook_namespace: Option<String>,
    /// How often the cluster-wide hook configuration and its ConfigMaps are re-read.
    pub hook_reload: Duration,
    pub controller: ControllerConfig,
}

#[derive(Debug, Error)]
pub enum OperatorError {
    #[error("cannot reach the Kubernetes API: {0}")]
    Client(#[source] kube::Error),
    #[error("cannot set up metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot start the WebAssembly host: {0}")]
    WasmHost(String),
    #[error("cannot start the policy evaluator: {0}")]
    PolicyEvaluator(#[source] crate::hooks::rego::PolicyEvalError),
    #[error("{0}")]
    HookConfig(String),
    #[error(transparent)]
    Http(#[from] crate::ops::http::HttpError),
    #[error(transparent)]
    Leader(#[from] crate::ops::leader::LeaderError),
    #[error("lost the leader election ({0}): stopping so that only the new leader acts")]
    LostLeadership(String),
}

/// Runs the operator until SIGTERM/SIGINT (or the loss of leadership, which is an error: the
/// process exits non-zero and its Deployment restarts it as a candidate).
pub async fn run(options: OperatorOptions) -> Result<(), OperatorError> {
    crate::ops::install_crypto_provider();
    let client = Client::try_default().await.map_err(OperatorError::Client)?;
    let shutdown = Shutdown::on_signal();
    let health = Health::new();
    let registry = prometheus::Registry::new();
    let metrics = ControllerMetrics::register(&registry)?;
    let link_metrics = LinkMetrics::register(&registry)?;
    let hook_metrics = Arc::new(HookMetrics::register(&registry)?);
    let leader = prometheus::IntGauge::new(
        "workerpool_leader",
        "1 on the replica that acts (it holds the leader Lease, or runs without leader election), 0 on a standby.",
    )?;
    registry.register(Box::new(leader.clone()))?;

    let hook_config = read_hook_config(&options)?;
    let host = WasmHost::with_compile_cache(
        hook_config.limits.host_limits(),
        options.plugin_cache.as_ref(),
    )
    .map_err(|e| OperatorError::WasmHost(e.to_string()))?;
    // Rego runs in children of this very binary (`policy-evaluator`), bounded in memory.
    let policies = PolicyEvaluator::of_this_program(hook_config.limits.policy_limits())
        .map_err(OperatorError::PolicyEvaluator)?;
    let hooks = Arc::new(
        HookRegistry::new(host, policies, hook_metrics)
            .with_pool_plugin_caps(hook_config.limits.pool_plugin_caps())
            .with_slots(hook_config.limits.slot_limits())
            .with_run_pod_guard(options.run_pod_guard.clone()),
    );
    tracing::info!(
        level = %options.run_pod_guard.level,
        allowed_image_hosts = ?options.run_pod_guard.allowed_image_hosts,
        service_accounts = ?options.run_pod_guard.service_accounts,
        allow_node_name = options.run_pod_guard.allow_node_name,
        namespaces = ?options.run_pod_guard.namespaces.keys().collect::<Vec<_>>(),
        "run-Pod guard"
    );

    let mut servers = Vec::new();
    if let Some(address) = options.probe_address {
        let server = ProbeServer::bind(address, health.clone()).await?;
        servers.push(tokio::spawn(server.serve(shutdown.clone().wait())));
    }
    if let Some(address) = options.metrics_address {
        let server = MetricsServer::bind(
            address,
            options.metrics.clone(),
            registry.clone(),
            client.clone(),
        )
        .await?;
        servers.push(tokio::spawn(server.serve(shutdown.clone().wait())));
    }

    // Ready means able to serve (controller-runtime's convention): a standby that can reach
    // the API server is ready, so a rolling update's new Pod becomes Ready while the old one
    // still holds the Lease. Leadership is the `workerpool_leader` gauge and a log line.
    health.set_not_ready("kube-api", "not checked yet");
    let api_readiness = tokio::spawn(report_api_readiness(
        client.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let leadership = match &options.leader_election {
        Some(lease) => {
            let elector = LeaderElector::new(client.clone(), lease.clone());
            let acquired = tokio::select! {
                acquired = elector.acquire() => Some(acquired?),
                () = shutdown.clone().wait() => None,
            };
            let Some(leadership) = acquired else {
                api_readiness.abort();
                return Ok(());
            };
            Some(leadership)
        }
        None => None,
    };
    leader.set(1);

    let mut controller_config = options.controller.clone();
    controller_config.link.metrics = Some(link_metrics);
    let ctx = Context::new(client.clone(), controller_config, metrics, hooks.clone());
    let readiness = tokio::spawn(report_link_readiness(
        ctx.clone(),
        health.clone(),
        shutdown.clone(),
    ));
    let cluster_hooks = tokio::spawn(reload_cluster_hooks(
        client.clone(),
        hooks,
        options.clone(),
        shutdown.clone(),
    ));

    let (stop_controllers, controllers_shutdown) = Shutdown::channel();
    let mut controllers = tokio::spawn({
        let ctx = ctx.clone();
        let namespaces = options.namespaces.clone();
        async move { controller::run(ctx, &namespaces, controllers_shutdown).await }
    });
    let lost = async {
        match &leadership {
            Some(leadership) => leadership.lost().await,
            None => std::future::pending().await,
        }
    };
    let outcome = tokio::select! {
        () = shutdown.clone().wait() => Ok(()),
        reason = lost => Err(OperatorError::LostLeadership(reason.to_string())),
        _ = &mut controllers => Ok(()),
    };
    if let Err(err) = &outcome {
        // Stop at once: another replica leads now. Nothing is lost: unacknowledged messages
        // stay with the broker and the new leader rebuilds from the cluster.
        leader.set(0);
        tracing::error!("{err}");
        return outcome;
    }
    stop_controllers.trigger();
    if tokio::time::timeout(Duration::from_secs(20), &mut controllers)
        .await
        .is_err()
    {
        // Nothing may still act once the Lease is released: the next leader acts then.
        tracing::warn!("the controllers did not stop in time; aborting what they still do");
        controllers.abort();
        ctx.links.abort_dispatchers();
        let _ = controllers.await;
    }
    leader.set(0);
    readiness.abort();
    api_readiness.abort();
    cluster_hooks.abort();
    if let Some(leadership) = leadership
        && let Err(err) = leadership.release().await
    {
        tracing::warn!(error = %err, "could not release the leader Lease; the next leader waits for it to expire");
    }
    for server in servers {
        let _ = tokio::time::timeout(Duration::from_secs(5), server).await;
    }
    tracing::info!("stopped");
    outcome
}

fn read_hook_config(options: &OperatorOptions) -> Result<HookConfig, OperatorError> {
    let Some(path) = &options.hook_config else {
        return Ok(HookConfig::default());
    };
    let origin = path.display().to_string();
    let text = std::fs::read_to_string(path)
        .map_err(|e| OperatorError::HookConfig(format!("{origin}: cannot read: {e}")))?;
    HookConfig::parse(&text, &origin).map_err(|e| OperatorError::HookConfig(e.to_string()))
}

/// Loads the cluster-wide hooks now and again every `hook_reload`: a changed configuration
/// file (a mounted ConfigMap) or plugin ConfigMap is picked up without a restart, and a broken
/// new version leaves the previous one in service. Problems are logged at every reload, and the
/// registry keeps the last report, which every pool's HooksReady condition includes. Until the
/// first load completes, runs wait for it (see `HookRegistry::pipeline`).
async fn reload_cluster_hooks(
    client: Client,
    hooks: Arc<HookRegistry>,
    options: OperatorOptions,
    shutdown: Shutdown,
) {
    let namespace = options
        .hook_namespace
        .clone()
        .unwrap_or_else(|| "default".into());
    let config_maps: Api<ConfigMap> = Api::namespaced(client, &namespace);
    let mut every = tokio::time::interval(options.hook_reload);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.clone().wait() => return,
        }
        let config = match read_hook_config(&options) {
            Ok(config) => config,
            Err(err) => {
                tracing::error!(error = %err, "the cluster-wide hook configuration is invalid; the hooks loaded before stay in service");
                hooks.cluster_config_failed(err.to_string());
                continue;
            }
        };
        let mut fetched = FetchedConfigMaps {
            namespace: namespace.clone(),
            ..FetchedConfigMaps::default()
        };
        for name in cluster_config_maps(&config) {
            match config_maps.get_opt(&name).await {
                Ok(Some(config_map)) => {
                    fetched.found.insert(name, config_map);
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::warn!(config_map = %name, error = %err, "cannot read a cluster-wide hook ConfigMap");
                    fetched.unreadable.insert(name, err.to_string());
                }
            }
        }
        let registry = hooks.clone();
        let report =
            tokio::task::spawn_blocking(move || registry.load_cluster_from(&config, &fetched))
                .await;
        match report {
            Ok(report) => {
                for problem in report.problems() {
                    tracing::error!(scope = "cluster", "{}", problem.message());
                }
            }
            Err(err) => {
                tracing::error!(error = %err, "loading the cluster-wide hooks stopped unexpectedly; retrying at the next reload");
            }
        }
    }
}

/// How often readiness asks the API server whether it answers.
const API_CHECK_EVERY: Duration = Duration::from_secs(10);
/// How long one such question may take.
const API_CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// The `kube-api` check: the API server answers (asked at once, then every 10 s). It runs on
/// every replica, leader or standby.
async fn report_api_readiness(client: Client, health: Health, shutdown: Shutdown) {
    let mut every = tokio::time::interval(API_CHECK_EVERY);
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.clone().wait() => return,
        }
        match tokio::time::timeout(API_CHECK_TIMEOUT, client.apiserver_version()).await {
            Ok(Ok(_)) => health.set_ready("kube-api"),
            Ok(Err(err)) => health.set_not_ready("kube-api", err.to_string()),
            Err(_) => health.set_not_ready(
                "kube-api",
                format!("no answer within {API_CHECK_TIMEOUT:?}"),
            ),
        }
    }
}

/// One `broker/<pool>` check per pool link, while this replica acts: a leader whose links are
/// down cannot serve those pools.
async fn report_link_readiness(ctx: Arc<Context>, health: Health, shutdown: Shutdown) {
    let mut every = tokio::time::interval(Duration::from_secs(2));
    let mut known: Vec<String> = Vec::new();
    loop {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.clone().wait() => return,
        }
        let states = ctx.links.states();
        let names: Vec<String> = states
            .iter()
            .map(|(key, _)| format!("broker/{key}"))
            .collect();
        for stale in known.iter().filter(|n| !names.contains(n)) {
            health.remove(stale);
        }
        for ((_, state), name) in states.iter().zip(&names) {
            if state.is_connected() {
                health.set_ready(name.clone());
            } else {
                health.set_not_ready(name.clone(), state.to_string());
            }
        }
        known = names;
    }
}
