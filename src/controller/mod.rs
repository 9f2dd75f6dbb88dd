//! The controller: WorkerPools -> Workers -> run Pods, driven by the backend link.
//!
//! - [`pools`] keeps each pool's Workers and status (credentials, scaling, registration);
//! - [`workers`] creates Workers with their keys, registers and deregisters them;
//! - [`runs`] handles what the backend sends (schedules, stops, acknowledgements);
//! - [`pods`] watches run Pods and reports how they ended;
//! - [`links`] holds one backend link per pool.
//!
//! State lives in the cluster (Worker status, Pods and their annotations), never only in
//! memory: after a restart everything is rebuilt from there.

pub mod history;
pub mod keys;
pub mod links;
pub mod metrics;
pub mod outcome;
pub mod plan;
pub mod pods;
pub mod pools;
mod runner;
pub mod runs;
pub mod status;
pub mod workers;

pub use runner::run;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client};
use thiserror::Error;

pub use links::{LinkManager, PoolHandle, PoolKey};
pub use metrics::ControllerMetrics;

use crate::crd::Worker;
use crate::hooks::HookRegistry;
use crate::link::LinkOptions;

/// The field manager of every write.
pub const MANAGER: &str = "workerpool-operator";
/// The name events are reported under, as in the seed (`From workerpool-controller`).
pub const REPORTER: &str = "workerpool-controller";
/// Finalizer on Workers: deregister from the backend before the Worker goes.
pub const FINALIZER: &str = "workers.spacelift.io/deregister";
/// Annotation on run Pods: the outcome that was reported (presence = reported).
pub const ANNOTATION_OUTCOME: &str = "workers.spacelift.io/outcome";
/// Annotation on run Pods: when the outcome was reported (RFC 3339).
pub const ANNOTATION_FINISHED_AT: &str = "workers.spacelift.io/finished-at";
/// Annotation on run Pods: when the schedule was received (RFC 3339), for start-up latency.
pub const ANNOTATION_SCHEDULED_AT: &str = "workers.spacelift.io/scheduled-at";

/// Tunables of the controller. `Default` is production.
#[derive(Clone, Debug)]
pub struct ControllerConfig {
    /// Bounded waits before a stuck run Pod fails its run.
    pub waits: outcome::Waits,
    /// How long a deleted Worker waits for the backend to confirm deregistration.
    pub deregistration_timeout: Duration,
    /// How often every worker's state is re-sent to the backend.
    pub heartbeat: Duration,
    /// Worker keys kept ready for the next scale-out.
    pub key_reserve: usize,
    /// Backend messages handled at once per pool.
    pub run_concurrency: usize,
    /// How often a pool is reconciled without any change.
    pub resync: Duration,
    /// Options of every pool's backend link.
    pub link: LinkOptions,
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            waits: outcome::Waits::default(),
            deregistration_timeout: Duration::from_secs(30),
            heartbeat: Duration::from_secs(60),
            key_reserve: 4,
            run_concurrency: 32,
            resync: Duration::from_secs(300),
            link: LinkOptions::default(),
        }
    }
}

/// What every reconciler and handler shares.
pub struct Context {
    pub client: Client,
    pub config: ControllerConfig,
    pub metrics: ControllerMetrics,
    pub recorder: Recorder,
    pub links: LinkManager,
    pub keys: keys::KeySource,
    pub hooks: Arc<HookRegistry>,
    started: pods::StartedPods,
    worker_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Context {
    pub fn new(
        client: Client,
        config: ControllerConfig,
        metrics: ControllerMetrics,
        hooks: Arc<HookRegistry>,
    ) -> Arc<Self> {
        let reporter = Reporter {
            controller: REPORTER.into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let keys = keys::KeySource::new(config.key_reserve);
        // Ready keys make the first Workers of the first scale-out instant.
        keys.refill();
        let links = LinkManager::new(config.link.clone());
        Arc::new(Self {
            recorder: Recorder::new(client.clone(), reporter),
            client,
            config,
            metrics,
            links,
            keys,
            hooks,
            started: pods::StartedPods::default(),
            worker_locks: Mutex::default(),
        })
    }

    /// Serialises the handling of one worker (its run messages and its Pod's outcome), so that
    /// one worker's state changes never interleave.
    pub async fn worker_lock(
        &self,
        namespace: &str,
        worker: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = self.worker_locks.lock().unwrap_or_else(|p| p.into_inner());
            if locks.len() > 10_000 {
                locks.retain(|_, l| Arc::strong_count(l) > 1);
            }
            locks
                .entry(format!("{namespace}/{worker}"))
                .or_default()
                .clone()
        };
        lock.lock_owned().await
    }

    /// Takes the worker's lock and reads the Worker under it: what the caller decides from this
    /// copy cannot be overtaken by another handler of the same worker while the guard lives.
    pub async fn locked_worker(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(tokio::sync::OwnedMutexGuard<()>, Option<Worker>), Error> {
        let guard = self.worker_lock(namespace, name).await;
        let worker = Api::<Worker>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await?;
        Ok((guard, worker))
    }

    /// Records an event on an object; failures only log (events are best effort).
    pub async fn event<K: kube::Resource<DynamicType = ()>>(
        &self,
        object: &K,
        type_: EventType,
        reason: &str,
        action: &str,
        note: String,
    ) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(truncate(note, 1000)),
            action: action.into(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &object.object_ref(&())).await {
            tracing::warn!(reason, error = %err, "could not record an event");
        }
    }
}

fn truncate(mut text: String, max: usize) -> String {
    if text.len() > max {
        let mut cut = max;
        while !text.is_char_boundary(cut) {
            cut -= 1;
        }
        text.truncate(cut);
        text.push('…');
    }
    text
}

/// Why a reconciliation or a message handler failed. Each is retried.
#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),
    #[error("worker key: {0}")]
    Key(#[from] keys::KeyError),
    #[error("backend link: {0}")]
    Link(#[from] crate::link::LinkError),
    #[error("pool {0} has no backend link (its credentials have not been accepted)")]
    NoLink(String),
    #[error("{0} kept changing while being updated")]
    Conflict(String),
    #[error("{0}: it was not made by this operator, or someone changed its labels")]
    Unlabelled(String),
    #[error("hook pipeline task failed: {0}")]
    Hooks(String),
}

impl Error {
    /// A short label for the reconcile error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kube",
            Error::Key(_) => "key",
            Error::Link(_) => "link",
            Error::NoLink(_) => "no_link",
            Error::Conflict(_) => "conflict",
            Error::Unlabelled(_) => "unlabelled",
            Error::Hooks(_) => "hooks",
        }
    }
}

/// Whether a Kubernetes error is a 404.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// A write whose object may already be gone: NotFound counts as done.
pub fn ignore_not_found<T>(result: Result<T, kube::Error>) -> Result<(), Error> {
    match result {
        Ok(_) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(err) => Err(err.into()),
    }
}

/// Whether a Kubernetes error is a 409 (already exists, or a stale resourceVersion).
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}
