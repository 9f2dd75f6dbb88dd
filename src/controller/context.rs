//! What every reconciler and handler shares: the client, the configuration, the per-worker
//! locks, and the little this process remembers (never what the cluster must know).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::{Api, Client, ResourceExt};
use ulid::Ulid;

use super::cache::Caches;
use super::demand::AutoscaleMemory;
use super::error::{Error, Step};
use super::keys::KeySource;
use super::links::LinkManager;
use super::lock;
use super::metrics::ControllerMetrics;
use super::{ControllerConfig, REPORTER};
use crate::crd::{Worker, WorkerPool};
use crate::hooks::HookRegistry;

/// What every reconciler and handler shares.
pub struct Context {
    pub client: Client,
    pub config: ControllerConfig,
    pub metrics: ControllerMetrics,
    pub recorder: Recorder,
    pub links: LinkManager,
    pub keys: KeySource,
    pub hooks: Arc<HookRegistry>,
    /// Each pool's demand and the autoscaler's recent decisions.
    pub autoscale: AutoscaleMemory,
    /// This operator process, as the `creator` of the runs it takes.
    pub instance: String,
    /// Run Pods whose start-up latency has been observed.
    pub started: StartedPods,
    /// The last state of run Pods this process saw ended, or saw deleted.
    pub vanished: VanishedPods,
    /// The watches' stores and this process's own writes: what is read without a request.
    pub caches: Caches,
    /// When this process last sent each worker's registration.
    pub registrations: Registrations,
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
        let keys = KeySource::new(config.key_reserve);
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
            autoscale: AutoscaleMemory::default(),
            instance: Ulid::generate().to_string(),
            started: StartedPods::default(),
            vanished: VanishedPods::default(),
            caches: Caches::default(),
            registrations: Registrations::default(),
            worker_locks: Mutex::default(),
        })
    }

    /// Serialises the handling of one worker (its run messages, its Pod's changes, its own
    /// reconciliation), so that one worker's state changes never interleave.
    pub async fn worker_lock(
        &self,
        namespace: &str,
        worker: &str,
    ) -> tokio::sync::OwnedMutexGuard<()> {
        let lock = {
            let mut locks = lock(&self.worker_locks);
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
    /// The copy is the cache's ([`Caches`]: never older than this process's own last write of
    /// it); every write made from it is conditional on its resourceVersion.
    pub async fn locked_worker(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<(tokio::sync::OwnedMutexGuard<()>, Option<Worker>), Error> {
        let guard = self.worker_lock(namespace, name).await;
        let worker = self.read_worker(namespace, name).await?;
        Ok((guard, worker))
    }

    /// Worker `namespace/name` from the cache, or from the API server when the cache does not
    /// have it.
    pub async fn read_worker(&self, namespace: &str, name: &str) -> Result<Option<Worker>, Error> {
        match self.caches.worker(namespace, name) {
            Some(worker) => Ok(Some((*worker).clone())),
            None => self.fresh_worker(namespace, name).await,
        }
    }

    /// WorkerPool `namespace/name` from the cache, or from the API server when the cache does
    /// not have it.
    pub async fn read_pool(
        &self,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<WorkerPool>>, Error> {
        if let Some(pool) = self.caches.pool(namespace, name) {
            return Ok(Some(pool));
        }
        Ok(
            Api::<WorkerPool>::namespaced(self.client.clone(), namespace)
                .get_opt(name)
                .await
                .map_err(Error::api(Step::ReadPool, format!("{namespace}/{name}")))?
                .map(Arc::new),
        )
    }

    /// Worker `namespace/name` from the API server: for decisions that no conditional write
    /// guards (refusing a run, deleting a Pod no record stands for).
    pub async fn fresh_worker(&self, namespace: &str, name: &str) -> Result<Option<Worker>, Error> {
        let worker = Api::<Worker>::namespaced(self.client.clone(), namespace)
            .get_opt(name)
            .await
            .map_err(Error::api(Step::ReadWorker, format!("{namespace}/{name}")))?;
        if let Some(worker) = &worker {
            self.caches.wrote_worker(worker);
        }
        Ok(worker)
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

/// When this process last sent each worker's registration: a worker the backend has not
/// confirmed yet is sent it again only after [`REGISTRATION_PATIENCE`], so that a new worker
/// registers once (its reconciler sees it unregistered a moment after its creation).
#[derive(Default)]
pub struct Registrations(Mutex<HashMap<String, Instant>>);

/// How long a sent registration is waited for before it is sent again.
pub const REGISTRATION_PATIENCE: Duration = Duration::from_secs(30);

impl Registrations {
    /// Notes that the registration of `namespace/name` was sent now.
    pub fn sent(&self, namespace: &str, name: &str) {
        let mut sent = lock(&self.0);
        if sent.len() > 10_000 {
            sent.retain(|_, at| at.elapsed() < REGISTRATION_PATIENCE);
        }
        sent.insert(format!("{namespace}/{name}"), Instant::now());
    }

    /// How long to wait before sending the registration of `namespace/name` again (None: send
    /// it now).
    pub fn wait_before_resending(&self, namespace: &str, name: &str) -> Option<Duration> {
        let sent = lock(&self.0);
        let at = sent.get(&format!("{namespace}/{name}"))?;
        REGISTRATION_PATIENCE.checked_sub(at.elapsed())
    }
}

/// Run Pods whose start-up latency has been observed (bounded; a restart may count one twice).
#[derive(Default)]
pub struct StartedPods(Mutex<HashSet<String>>);

impl StartedPods {
    pub fn first_time(&self, uid: &str) -> bool {
        let mut seen = lock(&self.0);
        if seen.len() > 50_000 {
            seen.clear();
        }
        seen.insert(uid.to_string())
    }
}

/// The last state of the run Pods this process saw ended or deleted, for a while: a Pod
/// removed at once (the pod garbage collector removes those of a deleted node) is gone before
/// anyone reads it, and its last state says how its run ended. Bounded; forgotten on restart,
/// after which such a run is reported as deleted.
#[derive(Default)]
pub struct VanishedPods(Mutex<HashMap<String, (Instant, Pod)>>);

/// How long a vanished Pod's last state is kept.
const VANISHED_KEPT: Duration = Duration::from_secs(600);

impl VanishedPods {
    pub fn remember(&self, pod: &Pod) {
        let mut pods = lock(&self.0);
        if pods.len() > 10_000 {
            pods.retain(|_, (at, _)| at.elapsed() < VANISHED_KEPT);
        }
        pods.insert(key(pod), (Instant::now(), pod.clone()));
    }

    /// The last state of Pod `namespace/name`, if it was seen ended or deleted.
    pub fn last(&self, namespace: &str, name: &str) -> Option<Pod> {
        lock(&self.0)
            .get(&format!("{namespace}/{name}"))
            .filter(|(at, _)| at.elapsed() < VANISHED_KEPT)
            .map(|(_, pod)| pod.clone())
    }
}

fn key(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
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
