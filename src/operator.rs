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
use crate::hooks::host::CompileCache;
use crate::hooks::registry::{FetchedConfigMaps, cluster_config_maps};
use crate::hooks::{HookConfig, HookMetrics, HookRegistry, WasmHost};
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

    let hook_config = read_hook_config(&options)?;
    let host = WasmHost::with_compile_cache(
        hook_config.limits.host_limits(),
        options.plugin_cache.as_ref(),
    )
    .map_err(|e| OperatorError::WasmHost(e.to_string()))?;
    let hooks = Arc::new(
        HookRegistry::new(host, hook_metrics, hook_config.limits.policy_timeout())
            .with_pool_plugin_caps(hook_config.limits.pool_plugin_caps()),
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

    let leadership = match &options.leader_election {
        Some(lease) => {
            health.set_not_ready("leader-election", "waiting to become the leader");
            let elector = LeaderElector::new(client.clone(), lease.clone());
            let acquired = tokio::select! {
                acquired = elector.acquire() => Some(acquired?),
                () = shutdown.clone().wait() => None,
            };
            let Some(leadership) = acquired else {
                return Ok(());
            };
            health.set_ready("leader-election");
            Some(leadership)
        }
        None => None,
    };

    let mut controller_config = options.controller.clone();
    controller_config.link.metrics = Some(link_metrics);
    let ctx = Context::new(client.clone(), controller_config, metrics, hooks.clone());
    health.set_ready("kube-api");
    let readiness = tokio::spawn(report_readiness(
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
        tracing::error!("{err}");
        return outcome;
    }
    stop_controllers.trigger();
    let _ = tokio::time::timeout(Duration::from_secs(20), controllers).await;
    readiness.abort();
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
const API_CHECK_EVERY: u32 = 5;

/// Readiness follows the API server (asked every 10 s) and every pool's backend link.
async fn report_readiness(ctx: Arc<Context>, health: Health, shutdown: Shutdown) {
    let mut every = tokio::time::interval(Duration::from_secs(2));
    let mut known: Vec<String> = Vec::new();
    for tick in 1u32.. {
        tokio::select! {
            _ = every.tick() => {}
            () = shutdown.clone().wait() => return,
        }
        if tick % API_CHECK_EVERY == 0 {
            let answer =
                tokio::time::timeout(Duration::from_secs(5), ctx.client.apiserver_version()).await;
            match answer {
                Ok(Ok(_)) => health.set_ready("kube-api"),
                Ok(Err(err)) => health.set_not_ready("kube-api", err.to_string()),
                Err(_) => health.set_not_ready("kube-api", "no answer within 5s"),
            }
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
