//! `spacelift-launcher grpc-server`, the `launcher-grpc` container: the worker's gRPC service
//! on 127.0.0.1:7946 ([`service`]) and the state proxy on 127.0.0.1:7947 ([`state_proxy`]).
//!
//! It ends when the stage is concluded: the worker called `Finish` (the usual way), the
//! worker went away without calling it, or the grace period after SIGTERM is nearly over. In
//! every case the result is reported to the backend once, after the logs were flushed, and
//! the server exits: 0 when the backend has the result, 1 (with the reason in the termination
//! message) when it could not be told.

mod service;
pub mod state_proxy;
pub mod stop;

use std::sync::Arc;
use std::time::Duration;

use launcher_api::{Artifact, LogPart, StageOutcome, StageResult};
use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::{Mutex, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::backend::{API_TIMEOUT, Backend, BackendError, Retry};
use crate::identity::{IdentityError, read_identity};
use crate::init::InitReport;
use crate::logs::Forwarder;
use crate::proto::launcher_server::LauncherServer;
use crate::proto::stop_notice::Cause;
use crate::settings::{self, Addresses, Paths, SettingsError};

/// Cap on the packed workspace, in MiB: `SPACELIFT_LAUNCHER_MAX_WORKSPACE_MIB`, default 512
/// (the reference backend's own cap).
pub const ENV_MAX_WORKSPACE_MIB: &str = "SPACELIFT_LAUNCHER_MAX_WORKSPACE_MIB";
const DEFAULT_MAX_WORKSPACE_MIB: u64 = 512;
/// How long `Finish` waits for the logs to reach the backend, when not terminating.
const FINISH_FLUSH: Duration = Duration::from_secs(60);
/// How long the worker's `WatchStop` may be gone before the server concludes without it.
const WORKER_GONE_AFTER: Duration = Duration::from_secs(5);
/// How long the servers get to close their connections once the stage is concluded.
const SHUTDOWN_WITHIN: Duration = Duration::from_secs(5);

#[derive(Debug, Error)]
pub enum ServerError {
    #[error(transparent)]
    Settings(#[from] SettingsError),
    #[error(transparent)]
    Identity(#[from] IdentityError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("{ENV_MAX_WORKSPACE_MIB}={0:?} is not a whole number of MiB")]
    WorkspaceLimit(String),
    #[error("cannot listen on {address}")]
    Listen {
        address: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot watch for SIGTERM")]
    Signal(#[source] std::io::Error),
}

/// The open `WatchStop` streams.
#[derive(Clone, Copy, Debug, Default)]
pub struct Watchers {
    pub open: usize,
    /// Whether the worker ever connected.
    pub ever: bool,
}

/// How the stage was concluded.
#[derive(Clone, Debug)]
pub struct Concluded {
    pub reported: bool,
    /// Why the backend does not have the result, or lost lines.
    pub problem: Option<String>,
}

/// What the service and the server's own lifecycle share.
pub struct Shared {
    backend: Backend,
    logs: Forwarder,
    paths: Paths,
    stop: stop::StopSender,
    watchers: watch::Sender<Watchers>,
    uploaded: Mutex<Option<Artifact>>,
    upload_lock: Mutex<()>,
    concluded: Mutex<Option<Concluded>>,
    concluded_tx: watch::Sender<bool>,
    /// When the grace period after SIGTERM is over.
    deadline: Mutex<Option<Instant>>,
    shutdown: CancellationToken,
    workspace_limit: u64,
}

impl Shared {
    /// How long a flush may take now.
    async fn flush_within(&self) -> Duration {
        match *self.deadline.lock().await {
            Some(deadline) => deadline
                .saturating_duration_since(Instant::now())
                .clamp(Duration::from_secs(1), FINISH_FLUSH),
            None => FINISH_FLUSH,
        }
    }

    /// Flushes the logs and reports `result`, once: later calls get the first conclusion.
    async fn conclude(&self, mut result: StageResult, flush_within: Duration) -> Concluded {
        let mut concluded = self.concluded.lock().await;
        if let Some(done) = &*concluded {
            return done.clone();
        }
        let delivery = self.logs.flush(flush_within).await;
        result.tool_cache = InitReport::read(&self.paths).map(|r| r.tool_cache);
        result.workspace = self.uploaded.lock().await.clone();
        let posted = self
            .backend
            .post_json("result", &result, Retry::STANDARD, API_TIMEOUT)
            .await;
        let mut problems = Vec::new();
        if let Err(err) = &posted {
            problems.push(format!(
                "the stage result did not reach the backend: {}",
                crate::chain(err)
            ));
        }
        if let Some(why) = delivery.refused {
            problems.push(format!(
                "{} log line(s) did not reach the backend: {why}",
                delivery.lost
            ));
        }
        for problem in &problems {
            crate::note(problem);
        }
        let done = Concluded {
            reported: posted.is_ok(),
            problem: (!problems.is_empty()).then(|| problems.join("; ")),
        };
        *concluded = Some(done.clone());
        let _ = self.concluded_tx.send(true);
        done
    }
}

/// Runs `grpc-server`; returns the process exit code.
pub async fn main() -> u8 {
    let env = settings::process_env;
    let paths = Paths::from_env(&env);
    match run(&env, &paths).await {
        Ok(concluded) if concluded.reported => 0,
        Ok(concluded) => {
            let problem = concluded.problem.unwrap_or_default();
            crate::termination::write(&paths.termination_log, &problem);
            1
        }
        Err(err) => {
            let reason = format!("grpc-server failed: {}", crate::chain(&err));
            eprintln!("{reason}");
            crate::termination::write(&paths.termination_log, &reason);
            1
        }
    }
}

async fn run(
    env: &dyn Fn(&str) -> Option<String>,
    paths: &Paths,
) -> Result<Concluded, ServerError> {
    let claims = settings::claims(env)?;
    let endpoint = settings::endpoint(env)?;
    let addresses = Addresses::from_env(env)?;
    let grace = settings::grace(env)?;
    let workspace_limit = match env(ENV_MAX_WORKSPACE_MIB).filter(|v| !v.is_empty()) {
        None => DEFAULT_MAX_WORKSPACE_MIB,
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| ServerError::WorkspaceLimit(v))?,
    } * 1024
        * 1024;
    let identity = read_identity(&paths.identity, claims)?;
    let backend = Backend::new(identity, endpoint)?;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .map_err(ServerError::Signal)?;

    let listen = |address| async move {
        TcpListener::bind(address)
            .await
            .map_err(|source| ServerError::Listen { address, source })
    };
    let grpc_listener = listen(addresses.grpc).await?;
    let proxy_listener = listen(addresses.state_proxy).await?;

    let (concluded_tx, mut concluded_rx) = watch::channel(false);
    let shared = Arc::new(Shared {
        logs: Forwarder::start(backend.clone(), LogPart::Worker),
        backend: backend.clone(),
        paths: paths.clone(),
        stop: watch::channel(None).0,
        watchers: watch::channel(Watchers::default()).0,
        uploaded: Mutex::new(None),
        upload_lock: Mutex::new(()),
        concluded: Mutex::new(None),
        concluded_tx,
        deadline: Mutex::new(None),
        shutdown: CancellationToken::new(),
        workspace_limit,
    });
    let shutdown = shared.shutdown.clone();
    tokio::spawn(stop::poll_backend(
        backend.clone(),
        shared.stop.clone(),
        shutdown.clone(),
    ));
    let grpc = tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(LauncherServer::new(service::Service {
                shared: shared.clone(),
            }))
            .serve_with_incoming_shutdown(
                tokio_stream::wrappers::TcpListenerStream::new(grpc_listener),
                shutdown.clone().cancelled_owned(),
            ),
    );
    let proxy = tokio::spawn(state_proxy::serve(
        proxy_listener,
        backend,
        shutdown.clone(),
    ));
    crate::note(&format!(
        "serving the worker on {} and the state proxy on {}",
        addresses.grpc, addresses.state_proxy
    ));

    let mut watchers = shared.watchers.subscribe();
    let mut gone_since: Option<Instant> = None;
    let mut deadline: Option<Instant> = None;
    let concluded = loop {
        let far = Instant::now() + Duration::from_secs(3600);
        tokio::select! {
            _ = concluded_rx.changed() => {
                if let Some(done) = shared.concluded.lock().await.clone() {
                    break done;
                }
            }
            _ = sigterm.recv(), if deadline.is_none() => {
                let at = Instant::now() + grace;
                deadline = Some(at);
                *shared.deadline.lock().await = Some(at);
                crate::note(&format!("SIGTERM: telling the worker to stop; {grace:?} to finish"));
                stop::request_stop(
                    &shared.stop,
                    Cause::Terminating,
                    "the run Pod is being deleted (SIGTERM)".into(),
                );
            }
            () = tokio::time::sleep_until(deadline.unwrap_or(far)), if deadline.is_some() => {
                let message = if watchers.borrow().ever {
                    "the worker did not finish within the grace period after SIGTERM"
                } else {
                    "the run Pod was deleted before the worker started"
                };
                let outcome = if watchers.borrow().ever { StageOutcome::Stopped } else { StageOutcome::Failed };
                break shared.conclude(result(outcome, message), Duration::from_secs(2)).await;
            }
            _ = watchers.changed() => {
                let now = *watchers.borrow();
                gone_since = (now.ever && now.open == 0).then(Instant::now);
            }
            () = tokio::time::sleep_until(gone_since.map_or(far, |t| t + WORKER_GONE_AFTER)), if gone_since.is_some() => {
                let message = "the worker went away without reporting a result (its container ended or was killed)";
                break shared.conclude(result(StageOutcome::Failed, message), Duration::from_secs(10)).await;
            }
        }
    };
    shutdown.cancel();
    let _ = tokio::time::timeout(SHUTDOWN_WITHIN, async {
        let _ = grpc.await;
        let _ = proxy.await;
    })
    .await;
    Ok(concluded)
}

fn result(outcome: StageOutcome, message: &str) -> StageResult {
    StageResult {
        outcome,
        failed_command: None,
        exit_code: None,
        message: message.to_string(),
        tool_cache: None,
        workspace: None,
    }
}
