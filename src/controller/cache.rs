//! What the controller reads without asking the API server: the watches' stores of Workers,
//! run Pods and WorkerPools (and the metadata of Secrets and ConfigMaps, for their
//! resourceVersions), plus the objects this process wrote itself, until the watches catch up.
//!
//! A run's reads come from here, so that what a run costs the API server does not grow with
//! the pool (issue 14). Two rules keep that safe:
//! - **read your own writes**: every Worker and run Pod this process writes is kept here as
//!   the write returned it, and a read takes the newer of it and the store's copy, so a
//!   decision taken under the worker's lock never sees a state older than this process's own
//!   last write (a heartbeat never reports IDLE after `run.accepted`);
//! - **writes are conditional**: every status write names the resourceVersion it was computed
//!   from, so a copy that someone else changed meanwhile fails with a conflict and is read
//!   again from the API server. What the cache does not have (not watched yet, just created,
//!   or gone) is read from the API server too.
//!
//! Without a registered scope (the mocked-apiserver tier) every read goes to the API server,
//! exactly as before the cache existed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use futures::FutureExt;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use kube::Resource;
use kube::ResourceExt;
use kube::api::PartialObjectMeta;
use kube::runtime::reflector::{ObjectRef, Store};

use crate::crd::{LABEL_WORKERPOOL, Worker, WorkerPool};

/// The stores of one watched scope (a namespace, or all of them).
#[derive(Clone)]
pub struct Scope {
    /// `None`: every namespace.
    pub namespace: Option<String>,
    pub workers: Store<Worker>,
    pub pods: Store<Pod>,
    pub pools: Store<WorkerPool>,
    pub secrets: Store<PartialObjectMeta<Secret>>,
    pub config_maps: Store<PartialObjectMeta<ConfigMap>>,
}

/// The watched scopes and this process's own recent writes.
#[derive(Default)]
pub struct Caches {
    scopes: RwLock<Vec<Scope>>,
    workers: Written<Worker>,
    pods: Written<Pod>,
    secrets: Versioned<Secret>,
    config_maps: Versioned<ConfigMap>,
}

/// Objects read in full, kept with the resourceVersion they were read at: read again only
/// when the metadata watch shows another version.
struct Versioned<K> {
    objects: Mutex<HashMap<String, Arc<K>>>,
}

impl<K> Default for Versioned<K> {
    fn default() -> Self {
        Self {
            objects: Mutex::default(),
        }
    }
}

impl<K: Resource> Versioned<K> {
    fn get(&self, entry: &str, version: &str) -> Option<Arc<K>> {
        let objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        objects
            .get(entry)
            .filter(|o| o.meta().resource_version.as_deref() == Some(version))
            .cloned()
    }

    fn insert(&self, object: K) {
        let entry = key(
            object.meta().namespace.as_deref().unwrap_or_default(),
            object.meta().name.as_deref().unwrap_or_default(),
        );
        let mut objects = self.objects.lock().unwrap_or_else(|p| p.into_inner());
        if objects.len() > 10_000 {
            objects.clear();
        }
        objects.insert(entry, Arc::new(object));
    }
}

/// How long an object this process wrote is preferred to a store that has not caught up. The
/// watch normally delivers the write within milliseconds; a store that is further behind is
/// corrected by the conflict of the next write.
const WRITTEN_KEPT: Duration = Duration::from_secs(60);

impl Caches {
    /// Serves reads of `scope` from its stores from now on.
    pub fn register(&self, scope: Scope) {
        self.scopes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .push(scope);
    }

    fn scope(&self, namespace: &str) -> Option<Scope> {
        self.scopes
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .find(|s| s.namespace.as_deref().is_none_or(|ns| ns == namespace))
            .cloned()
    }

    /// Whether reads of `namespace` are served from stores at all.
    pub fn serves(&self, namespace: &str) -> bool {
        self.scope(namespace).is_some()
    }

    /// Worker `namespace/name` as last seen, or None: not cached (read it from the API server).
    pub fn worker(&self, namespace: &str, name: &str) -> Option<Arc<Worker>> {
        let scope = self.scope(namespace)?;
        let stored = stored(&scope.workers, namespace, name).flatten();
        self.workers.newer(&key(namespace, name), stored)
    }

    /// The Workers of `namespace` that `keep` keeps, as last seen (waiting a while for the
    /// store's first list); None when not cached.
    pub async fn workers(
        &self,
        namespace: &str,
        keep: impl Fn(&Worker) -> bool,
    ) -> Option<Vec<Arc<Worker>>> {
        let scope = self.scope(namespace)?;
        wait_ready(&scope.workers).await?;
        let stored = scope
            .workers
            .state_filter(|w| w.namespace().as_deref() == Some(namespace) && keep(w));
        Some(
            self.workers
                .merged(namespace, stored, |w| keep(w))
                .into_iter()
                .collect(),
        )
    }

    /// Run Pod `namespace/name` as last seen, or None: not cached, or not there (read it from
    /// the API server: a Pod missing from the store may be one just created).
    pub fn pod(&self, namespace: &str, name: &str) -> Option<Arc<Pod>> {
        let scope = self.scope(namespace)?;
        let stored = stored(&scope.pods, namespace, name).flatten();
        self.pods.newer(&key(namespace, name), stored)
    }

    /// The run Pods of `namespace` that `keep` keeps, as last seen; None when not cached.
    pub async fn pods(
        &self,
        namespace: &str,
        keep: impl Fn(&Pod) -> bool,
    ) -> Option<Vec<Arc<Pod>>> {
        let scope = self.scope(namespace)?;
        wait_ready(&scope.pods).await?;
        let stored = scope
            .pods
            .state_filter(|p| p.namespace().as_deref() == Some(namespace) && keep(p));
        Some(self.pods.merged(namespace, stored, |p| keep(p)))
    }

    /// WorkerPool `namespace/name` as last seen, or None: not cached or not there.
    pub fn pool(&self, namespace: &str, name: &str) -> Option<Arc<WorkerPool>> {
        stored(&self.scope(namespace)?.pools, namespace, name).flatten()
    }

    /// The resourceVersion of Secret `namespace/name`: `Some(None)` when the store has no such
    /// Secret, None when not cached.
    pub fn secret_version(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        stored(&self.scope(namespace)?.secrets, namespace, name)
            .map(|s| s.and_then(|s| s.resource_version()))
    }

    /// The resourceVersion of ConfigMap `namespace/name`, as [`Caches::secret_version`].
    pub fn config_map_version(&self, namespace: &str, name: &str) -> Option<Option<String>> {
        stored(&self.scope(namespace)?.config_maps, namespace, name)
            .map(|c| c.and_then(|c| c.resource_version()))
    }

    /// Secret `namespace/name` as last read, if the watch shows it unchanged since.
    pub fn known_secret(&self, namespace: &str, name: &str) -> Option<Arc<Secret>> {
        let version = self.secret_version(namespace, name)??;
        self.secrets.get(&key(namespace, name), &version)
    }

    /// Secret `secret` was just read in full.
    pub fn read_secret(&self, secret: Secret) {
        if self.serves(&secret.namespace().unwrap_or_default()) {
            self.secrets.insert(secret);
        }
    }

    /// ConfigMap `namespace/name` as last read, if the watch shows it unchanged since.
    pub fn known_config_map(&self, namespace: &str, name: &str) -> Option<Arc<ConfigMap>> {
        let version = self.config_map_version(namespace, name)??;
        self.config_maps.get(&key(namespace, name), &version)
    }

    /// ConfigMap `config_map` was just read in full.
    pub fn read_config_map(&self, config_map: ConfigMap) {
        if self.serves(&config_map.namespace().unwrap_or_default()) {
            self.config_maps.insert(config_map);
        }
    }

    /// This process wrote, created or freshly read `worker`: reads prefer it until the store
    /// catches up.
    pub fn wrote_worker(&self, worker: &Worker) {
        if self.serves(&worker.namespace().unwrap_or_default()) {
            self.workers.insert(worker);
        }
    }

    /// Worker `namespace/name` is gone (a write found it missing): forget what this process
    /// wrote of it.
    pub fn forget_worker(&self, namespace: &str, name: &str) {
        self.workers.remove(&key(namespace, name));
    }

    /// The watch saw `worker` deleted.
    pub fn worker_deleted(&self, worker: &Worker) {
        self.workers.deleted(worker);
    }

    /// This process wrote (or created) run Pod `pod`.
    pub fn wrote_pod(&self, pod: &Pod) {
        if self.serves(&pod.namespace().unwrap_or_default()) {
            self.pods.insert(pod);
        }
    }

    /// Run Pod `namespace/name` is gone (a delete removed it at once, or found it missing):
    /// forget what this process wrote of it.
    pub fn forget_pod(&self, namespace: &str, name: &str) {
        self.pods.remove(&key(namespace, name));
    }

    /// The watch saw `pod` deleted.
    pub fn pod_deleted(&self, pod: &Pod) {
        self.pods.deleted(pod);
    }
}

/// The Workers registered under pool ULID `pool_ulid` (their label), as a filter for
/// [`Caches::workers`].
pub fn of_pool(pool_ulid: &str) -> impl Fn(&Worker) -> bool + '_ {
    move |w| w.labels().get(LABEL_WORKERPOOL).map(String::as_str) == Some(pool_ulid)
}

fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// `namespace/name` from `store`: None when the store has not had its first list (it knows
/// nothing yet), `Some(None)` when it has and the object is not there.
fn stored<K: Resource + Clone + 'static>(
    store: &Store<K>,
    namespace: &str,
    name: &str,
) -> Option<Option<Arc<K>>>
where
    K::DynamicType: Default + std::hash::Hash + Eq + Clone,
{
    ready(store).then(|| store.get(&ObjectRef::new(name).within(namespace)))
}

/// Whether a store has had its first list (a store that is not ready is empty, and its
/// emptiness means nothing).
fn ready<K: Resource + Clone + 'static>(store: &Store<K>) -> bool
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// Waits (a while) for a store's first list: None if it does not come.
async fn wait_ready<K: Resource + Clone + 'static>(store: &Store<K>) -> Option<()>
where
    K::DynamicType: std::hash::Hash + Eq + Clone,
{
    match tokio::time::timeout(Duration::from_secs(30), store.wait_until_ready()).await {
        Ok(Ok(())) => Some(()),
        _ => None,
    }
}

/// Objects this process wrote, by `namespace/name`, each with when it was written; and the
/// uids the watch saw deleted, so that a write's response that arrives after the watch's
/// delete event does not bring the object back (it would be read as "not in the store yet").
struct Written<K> {
    objects: Mutex<HashMap<String, (Instant, Arc<K>)>>,
    deleted: Mutex<HashMap<String, Instant>>,
}

impl<K> Default for Written<K> {
    fn default() -> Self {
        Self {
            objects: Mutex::default(),
            deleted: Mutex::default(),
        }
    }
}

impl<K: Resource + Clone> Written<K> {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (Instant, Arc<K>)>> {
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, object: &K) {
        let name = object.meta().name.clone().unwrap_or_default();
        let namespace = object.meta().namespace.clone().unwrap_or_default();
        if let Some(uid) = &object.meta().uid
            && self.lock_deleted().contains_key(uid)
        {
            return;
        }
        let mut objects = self.lock();
        if objects.len() > 10_000 {
            objects.retain(|_, (at, _)| at.elapsed() < WRITTEN_KEPT);
        }
        let entry = key(&namespace, &name);
        // An older write (a response that arrived late) never replaces a newer one.
        if let Some((_, known)) = objects.get(&entry)
            && newer_version(known.meta(), object.meta())
        {
            return;
        }
        objects.insert(entry, (Instant::now(), Arc::new(object.clone())));
    }

    fn lock_deleted(&self) -> std::sync::MutexGuard<'_, HashMap<String, Instant>> {
        self.deleted.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remove(&self, entry: &str) {
        self.lock().remove(entry);
    }

    /// The watch saw `object` deleted: what this process wrote of it is forgotten, and a
    /// response about it that arrives later is ignored.
    fn deleted(&self, object: &K) {
        let entry = key(
            object.meta().namespace.as_deref().unwrap_or_default(),
            object.meta().name.as_deref().unwrap_or_default(),
        );
        if let Some(uid) = object.meta().uid.clone() {
            let mut deleted = self.lock_deleted();
            if deleted.len() > 10_000 {
                deleted.retain(|_, at| at.elapsed() < WRITTEN_KEPT);
            }
            deleted.insert(uid, Instant::now());
        }
        self.remove(&entry);
    }

    /// The newer of the store's copy and this process's write; a write the store has caught
    /// up with (or an old one) is forgotten.
    fn newer(&self, entry: &str, stored: Option<Arc<K>>) -> Option<Arc<K>> {
        let mut objects = self.lock();
        let Some((at, written)) = objects.get(entry).cloned() else {
            return stored;
        };
        let caught_up = stored
            .as_ref()
            .is_some_and(|s| !newer_version(written.meta(), s.meta()));
        if caught_up || at.elapsed() >= WRITTEN_KEPT {
            objects.remove(entry);
            return stored;
        }
        Some(written)
    }

    /// `stored` (the store's objects of `namespace`) with this process's newer writes in
    /// place, plus the written objects the store does not have yet that `keep` keeps.
    fn merged(
        &self,
        namespace: &str,
        stored: Vec<Arc<K>>,
        keep: impl Fn(&K) -> bool,
    ) -> Vec<Arc<K>> {
        let mut seen = std::collections::HashSet::new();
        let mut merged: Vec<Arc<K>> = stored
            .into_iter()
            .filter_map(|s| {
                let entry = key(namespace, s.meta().name.as_deref().unwrap_or_default());
                seen.insert(entry.clone());
                self.newer(&entry, Some(s))
            })
            .collect();
        let prefix = format!("{namespace}/");
        let unseen: Vec<(String, Arc<K>)> = self
            .lock()
            .iter()
            .filter(|(entry, (at, written))| {
                entry.starts_with(&prefix)
                    && !seen.contains(*entry)
                    && at.elapsed() < WRITTEN_KEPT
                    && keep(written)
            })
            .map(|(entry, (_, written))| (entry.clone(), written.clone()))
            .collect();
        merged.extend(unseen.into_iter().map(|(_, w)| w));
        merged
    }
}

/// Whether `a` is a later version of the object than `b`. resourceVersions are etcd
/// revisions here; one that does not parse is taken as newer (the write is what this process
/// knows last).
fn newer_version(
    a: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    b: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> bool {
    let version = |m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
        m.resource_version
            .as_deref()
            .and_then(|v| v.parse::<u64>().ok())
    };
    match (version(a), version(b)) {
        (Some(a), Some(b)) => a > b,
        _ => true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    fn pod(version: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some("p".into()),
                namespace: Some("ns".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    #[test]
    fn a_write_is_read_until_the_store_has_caught_up_with_it() {
        let written = Written::<Pod>::default();
        written.insert(&pod("12"));
        let stale = Arc::new(pod("10"));
        let read = written.newer("ns/p", Some(stale.clone())).unwrap();
        assert_eq!(read.metadata.resource_version.as_deref(), Some("12"));
        // Not in the store yet at all (just created): the write.
        assert!(written.newer("ns/p", None).is_some());
        let caught_up = Arc::new(pod("13"));
        let read = written.newer("ns/p", Some(caught_up)).unwrap();
        assert_eq!(read.metadata.resource_version.as_deref(), Some("13"));
        // Forgotten once caught up: the store's word from then on.
        assert!(written.newer("ns/p", None).is_none());
    }

    #[test]
    fn a_late_response_never_replaces_a_newer_write() {
        let written = Written::<Pod>::default();
        written.insert(&pod("12"));
        written.insert(&pod("11"));
        let read = written.newer("ns/p", None).unwrap();
        assert_eq!(read.metadata.resource_version.as_deref(), Some("12"));
    }

    #[test]
    fn a_response_that_arrives_after_the_delete_event_does_not_bring_the_object_back() {
        let written = Written::<Pod>::default();
        let mut deleting = pod("12");
        deleting.metadata.uid = Some("u1".into());
        // The watch delivered the deletion before the delete's own response came back.
        written.deleted(&deleting);
        written.insert(&deleting);
        assert!(written.newer("ns/p", None).is_none(), "the Pod is gone");
        // Another object of the same name (a new uid) is written as usual.
        let mut again = pod("20");
        again.metadata.uid = Some("u2".into());
        written.insert(&again);
        assert!(written.newer("ns/p", None).is_some());
    }

    #[test]
    fn listing_merges_writes_the_store_has_not_seen() {
        let written = Written::<Pod>::default();
        let mut other = pod("20");
        other.metadata.name = Some("q".into());
        written.insert(&other);
        written.insert(&pod("12"));
        let merged = written.merged("ns", vec![Arc::new(pod("10"))], |_| true);
        let mut versions: Vec<_> = merged
            .iter()
            .map(|p| p.metadata.resource_version.clone().unwrap())
            .collect();
        versions.sort();
        assert_eq!(versions, ["12", "20"]);
    }
}
