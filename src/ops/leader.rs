//! Leader election on a `coordination.k8s.io/v1` Lease, with client-go's algorithm and
//! controller-runtime's defaults (lease 15 s, renew deadline 10 s, retry 2 s).
//!
//! - A candidate reads the Lease every retry period. It takes the Lease when nobody holds it,
//!   or when the holder's record has not changed for `leaseDurationSeconds` *as measured on the
//!   candidate's own monotonic clock* since the candidate first saw that record (client-go's
//!   "observed time": clock skew between replicas does not matter).
//! - Every write is a `replace` carrying the resourceVersion that was read, so of two
//!   candidates racing for an expired Lease exactly one wins (the other gets 409 Conflict).
//! - The leader renews every retry period. If it cannot renew within the renew deadline
//!   (counted from the start of its last successful renewal), or it sees another holder, it
//!   has lost: [`Leadership::lost`] resolves and the caller must stop at once. Because the
//!   renew deadline is shorter than the lease duration, a leader that cannot reach the API
//!   server gives up before anyone else can take over.
//! - [`Leadership::release`] (also run, best effort, when the [`Leadership`] is dropped)
//!   clears the holder, so a restarted replica takes over at once instead of after 15 s.

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, OwnerReference};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// Default Lease name.
pub const DEFAULT_LEASE_NAME: &str = "workerpool-operator-leader";
/// Where a Pod finds its own namespace when `POD_NAMESPACE` is not set.
const SERVICE_ACCOUNT_NAMESPACE: &str = "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error(
        "leader election needs the namespace of its Lease: pass --leader-election-namespace or set POD_NAMESPACE"
    )]
    NoNamespace,
    #[error("invalid leader election timing: {0}")]
    Timing(String),
    #[error("releasing Lease {lease}: {source}")]
    Release {
        lease: String,
        #[source]
        source: kube::Error,
    },
    #[error("releasing Lease {lease}: no answer within {timeout:?}")]
    ReleaseTimeout { lease: String, timeout: Duration },
    #[error("the lease renewal task failed: {0}")]
    Task(String),
}

/// This process's Pod as an owner reference, when the downward API says which it is.
pub fn pod_owner() -> Option<OwnerReference> {
    let name = std::env::var("POD_NAME").ok().filter(|v| !v.is_empty())?;
    let uid = std::env::var("POD_UID").ok().filter(|v| !v.is_empty())?;
    Some(OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name,
        uid,
        controller: None,
        block_owner_deletion: None,
    })
}

/// Which Lease, who we are, and the timing.
#[derive(Clone, Debug, PartialEq)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per process: two replicas with one identity would both think they lead.
    pub identity: String,
    /// How long others wait, after the holder last renewed, before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps trying to renew before it gives up.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
    /// The Pod this process runs in, written as the Lease's owner by whoever holds it, so the
    /// garbage collector removes the Lease with the last leader's Pod (`helm uninstall` leaves
    /// nothing behind). From `POD_NAME` and `POD_UID` (downward API); none outside a Pod.
    pub owner: Option<OwnerReference>,
}

impl LeaseConfig {
    /// The Lease [`DEFAULT_LEASE_NAME`] in `namespace`, a fresh [`default_identity`] and
    /// controller-runtime's timing.
    pub fn new(namespace: impl Into<String>) -> Self {
        LeaseConfig {
            namespace: namespace.into(),
            name: DEFAULT_LEASE_NAME.to_owned(),
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
            owner: pod_owner(),
        }
    }

    /// The Lease namespace: the flag if given, else `POD_NAMESPACE`, else the namespace of
    /// the Pod's ServiceAccount (as controller-runtime does).
    pub fn namespace_from(flag: Option<&str>) -> Result<String, LeaderError> {
        let env = std::env::var("POD_NAMESPACE").ok();
        let mounted = std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE).ok();
        [flag.map(str::to_owned), env, mounted]
            .into_iter()
            .flatten()
            .map(|ns| ns.trim().to_owned())
            .find(|ns| !ns.is_empty())
            .ok_or(LeaderError::NoNamespace)
    }

    /// client-go's rules: lease duration > renew deadline > 1.2 × retry period > 0.
    pub fn validate(&self) -> Result<(), LeaderError> {
        let bad = |msg: String| Err(LeaderError::Timing(msg));
        if self.retry_period.is_zero() {
            return bad("the retry period must be positive".to_owned());
        }
        if self.lease_duration <= self.renew_deadline {
            return bad(format!(
                "the lease duration ({:?}) must be longer than the renew deadline ({:?})",
                self.lease_duration, self.renew_deadline
            ));
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return bad(format!(
                "the renew deadline ({:?}) must be longer than 1.2 x the retry period ({:?})",
                self.renew_deadline, self.retry_period
            ));
        }
        if self.lease_duration.as_secs() < 1
            || self.lease_duration.subsec_nanos() != 0
            || i32::try_from(self.lease_duration.as_secs()).is_err()
        {
            // Others read the duration from the Lease, in whole seconds: a rounded-down value
            // could let them take over while we still lead.
            return bad(format!(
                "the lease duration ({:?}) must be a whole number of seconds (the Lease stores seconds)",
                self.lease_duration
            ));
        }
        if self.identity.is_empty() {
            return bad("the identity must not be empty".to_owned());
        }
        Ok(())
    }

    fn lease_ref(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// This host's name (the Pod name in Kubernetes), if it can be found.
pub fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
}

/// `<hostname>_<random>`, like controller-runtime's `<hostname>_<uuid>`: readable in
/// `kubectl get lease`, and unique even for two processes on one host.
pub fn default_identity() -> String {
    let host = hostname().unwrap_or_else(|| "workerpool-operator".to_owned());
    format!("{host}_{:016x}", rand::random::<u64>())
}

/// Why leadership ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LostReason {
    /// Another identity holds the Lease now.
    TakenOver { by: String },
    /// No successful renewal within the renew deadline.
    RenewDeadline { last_error: Option<String> },
    /// Released on purpose.
    Released,
    /// The renewal task is gone (it panicked, or its runtime stopped).
    TaskEnded,
}

impl std::fmt::Display for LostReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LostReason::TakenOver { by } => write!(f, "the Lease is now held by {by}"),
            LostReason::RenewDeadline { last_error: None } => {
                f.write_str("the Lease could not be renewed within the renew deadline")
            }
            LostReason::RenewDeadline {
                last_error: Some(e),
            } => write!(
                f,
                "the Lease could not be renewed within the renew deadline (last error: {e})"
            ),
            LostReason::Released => f.write_str("the Lease was released"),
            LostReason::TaskEnded => f.write_str("the lease renewal task ended"),
        }
    }
}

/// Campaigns for a Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    config: LeaseConfig,
}

impl LeaderElector {
    pub fn new(client: kube::Client, config: LeaseConfig) -> Self {
        LeaderElector {
            api: Api::namespaced(client, &config.namespace),
            config,
        }
    }

    pub fn config(&self) -> &LeaseConfig {
        &self.config
    }

    /// Wait until this identity holds the Lease, then keep renewing it in a background task.
    /// API errors while waiting are logged and retried; cancel by dropping the future.
    pub async fn acquire(&self) -> Result<Leadership, LeaderError> {
        let config = &self.config;
        config.validate()?;
        let mut lease = LeaseClient {
            api: self.api.clone(),
            config: config.clone(),
            observed: None,
        };
        let lease_ref = config.lease_ref();
        tracing::info!(lease = %lease_ref, identity = %config.identity, "waiting to become leader");
        let mut last_holder: Option<String> = None;
        loop {
            let started = Instant::now();
            match tokio::time::timeout(config.renew_deadline, lease.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leader)) => {
                    tracing::info!(lease = %lease_ref, identity = %config.identity, "became leader");
                    return Ok(Leadership::start(lease, started));
                }
                Ok(Ok(Attempt::Follower { holder })) => {
                    if holder.is_some() && holder != last_holder {
                        tracing::info!(lease = %lease_ref, leader = holder.as_deref().unwrap_or_default(), "another replica is leader");
                    }
                    last_holder = holder;
                }
                Ok(Err(err)) => {
                    tracing::warn!(lease = %lease_ref, error = %err, "cannot acquire the Lease; retrying")
                }
                Err(_) => {
                    tracing::warn!(lease = %lease_ref, "acquiring the Lease timed out; retrying")
                }
            }
            tokio::time::sleep(jittered(config.retry_period)).await;
        }
    }
}

/// Up to 20% more than `period`, so candidates started together do not stay in lockstep.
fn jittered(period: Duration) -> Duration {
    period.mul_f64(1.0 + rand::random_range(0.0..0.2))
}

/// Held leadership. Keep it alive while acting as leader; stop acting at once when
/// [`Leadership::lost`] resolves.
pub struct Leadership {
    lost: watch::Receiver<Option<LostReason>>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<Result<(), LeaderError>>>,
    identity: String,
}

impl Leadership {
    fn start(lease: LeaseClient, renewed_at: Instant) -> Self {
        let identity = lease.config.identity.clone();
        let (lost_tx, lost) = watch::channel(None);
        let (stop_tx, stop_rx) = oneshot::channel();
        let task = tokio::spawn(keep_renewing(lease, renewed_at, stop_rx, lost_tx));
        Leadership {
            lost,
            stop: Some(stop_tx),
            task: Some(task),
            identity,
        }
    }

    /// This replica's identity in the Lease.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// False once leadership is lost.
    pub fn is_leader(&self) -> bool {
        self.lost.borrow().is_none() && self.task.as_ref().is_some_and(|t| !t.is_finished())
    }

    /// Resolves when leadership ends: the Lease could not be renewed within the renew deadline
    /// or another identity holds it. Any number of these futures may be taken.
    pub fn lost(&self) -> impl Future<Output = LostReason> + Send + 'static {
        let mut rx = self.lost.clone();
        async move {
            match rx.wait_for(Option::is_some).await.map(|r| r.clone()) {
                Ok(Some(reason)) => reason,
                // The sender is gone: the renewal task ended without saying why.
                Ok(None) | Err(_) => LostReason::TaskEnded,
            }
        }
    }

    /// Stop renewing and clear the holder, so another replica takes over at once.
    pub async fn release(mut self) -> Result<(), LeaderError> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.task.take() {
            Some(task) => task.await.map_err(|e| LeaderError::Task(e.to_string()))?,
            None => Ok(()),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        // Dropping `stop` makes the task release the Lease (if the runtime lives on).
        self.stop.take();
    }
}

async fn keep_renewing(
    mut lease: LeaseClient,
    renewed_at: Instant,
    mut stop: oneshot::Receiver<()>,
    lost: watch::Sender<Option<LostReason>>,
) -> Result<(), LeaderError> {
    let config = lease.config.clone();
    let lease_ref = config.lease_ref();
    let mut deadline = renewed_at + config.renew_deadline;
    let mut last_error: Option<String> = None;
    let lose = |reason: LostReason| {
        tracing::error!(lease = %lease_ref, identity = %config.identity, %reason, "lost leadership");
        lost.send_replace(Some(reason));
    };
    loop {
        // A message or a dropped sender both mean: stop and release.
        tokio::select! {
            biased;
            _ = &mut stop => return release(&mut lease, &lost).await,
            () = tokio::time::sleep(config.retry_period) => {}
        }
        let started = Instant::now();
        let attempt = tokio::select! {
            biased;
            _ = &mut stop => return release(&mut lease, &lost).await,
            attempt = tokio::time::timeout_at(deadline, lease.try_acquire_or_renew()) => attempt,
        };
        match attempt {
            Ok(Ok(Attempt::Leader)) => {
                deadline = started + config.renew_deadline;
                if last_error.take().is_some() {
                    tracing::info!(lease = %lease_ref, "renewed the Lease again");
                }
            }
            Ok(Ok(Attempt::Follower { holder: Some(by) })) => {
                lose(LostReason::TakenOver { by });
                return Ok(());
            }
            // A write conflict: somebody changed the Lease meanwhile. Re-read and retry
            // until the deadline; if they took it, the next read shows it.
            Ok(Ok(Attempt::Follower { holder: None })) => {
                last_error = Some("the Lease changed during the renewal (conflict)".to_owned());
            }
            Ok(Err(err)) => {
                tracing::warn!(lease = %lease_ref, error = %err, "cannot renew the Lease; retrying until the renew deadline");
                last_error = Some(err.to_string());
            }
            Err(_) => {
                lose(LostReason::RenewDeadline { last_error });
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            lose(LostReason::RenewDeadline { last_error });
            return Ok(());
        }
    }
}

async fn release(
    lease: &mut LeaseClient,
    lost: &watch::Sender<Option<LostReason>>,
) -> Result<(), LeaderError> {
    // From here on the caller must not act as leader, whatever happens to the write.
    lost.send_replace(Some(LostReason::Released));
    let lease_ref = lease.config.lease_ref();
    let timeout = lease.config.renew_deadline;
    match tokio::time::timeout(timeout, lease.release()).await {
        Ok(Ok(true)) => {
            tracing::info!(lease = %lease_ref, identity = %lease.config.identity, "released leadership");
            Ok(())
        }
        Ok(Ok(false)) => Ok(()),
        Ok(Err(source)) => Err(LeaderError::Release {
            lease: lease_ref,
            source,
        }),
        Err(_) => Err(LeaderError::ReleaseTimeout {
            lease: lease_ref,
            timeout,
        }),
    }
}

// ------------------------------------------------------------------------------------------
// One attempt against the API server, and the pure decision behind it
// ------------------------------------------------------------------------------------------

enum Attempt {
    Leader,
    /// Somebody else holds the Lease (`Some`), or a concurrent write won (`None`).
    Follower {
        holder: Option<String>,
    },
}

struct LeaseClient {
    api: Api<Lease>,
    config: LeaseConfig,
    /// The last record read and when (monotonic) it was first seen with that content.
    observed: Option<(LeaseSpec, Instant)>,
}

impl LeaseClient {
    async fn try_acquire_or_renew(&mut self) -> Result<Attempt, kube::Error> {
        let now = Instant::now();
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            return self.create(now).await;
        };
        let spec = current.spec.clone().unwrap_or_default();
        let observed_at = match &self.observed {
            Some((seen, at)) if *seen == spec => *at,
            _ => {
                self.observed = Some((spec.clone(), now));
                now
            }
        };
        let plan = plan(
            &spec,
            now.saturating_duration_since(observed_at),
            &self.config,
            MicroTime(k8s_openapi::jiff::Timestamp::now()),
        );
        let next = match plan {
            Plan::Wait { holder } => {
                return Ok(Attempt::Follower {
                    holder: Some(holder),
                });
            }
            Plan::Write(next) => next,
        };
        let lease = Lease {
            metadata: ObjectMeta {
                // The resourceVersion read above: the write fails if anybody wrote since.
                resource_version: current.metadata.resource_version.clone(),
                owner_references: match &self.config.owner {
                    Some(owner) => Some(vec![owner.clone()]),
                    None => current.metadata.owner_references.clone(),
                },
                ..current.metadata.clone()
            },
            spec: Some(next.clone()),
        };
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                self.observed = Some((next, Instant::now()));
                Ok(Attempt::Leader)
            }
            Err(kube::Error::Api(status)) if status.is_conflict() => {
                Ok(Attempt::Follower { holder: None })
            }
            Err(err) => Err(err),
        }
    }

    async fn create(&mut self, now: Instant) -> Result<Attempt, kube::Error> {
        let wall = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let spec = LeaseSpec {
            holder_identity: Some(self.config.identity.clone()),
            lease_duration_seconds: Some(lease_seconds(&self.config)),
            acquire_time: Some(wall.clone()),
            renew_time: Some(wall),
            lease_transitions: Some(0),
            ..Default::default()
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(self.config.name.clone()),
                namespace: Some(self.config.namespace.clone()),
                owner_references: self.config.owner.clone().map(|o| vec![o]),
                ..Default::default()
            },
            spec: Some(spec.clone()),
        };
        match self.api.create(&PostParams::default(), &lease).await {
            Ok(_) => {
                self.observed = Some((spec, now));
                Ok(Attempt::Leader)
            }
            Err(kube::Error::Api(status)) if status.is_already_exists() => {
                Ok(Attempt::Follower { holder: None })
            }
            Err(err) => Err(err),
        }
    }

    /// Clear the holder if it is still us (client-go: holder "", duration 1 s). Returns
    /// whether anything was written.
    async fn release(&mut self) -> Result<bool, kube::Error> {
        let Some(current) = self.api.get_opt(&self.config.name).await? else {
            return Ok(false);
        };
        let spec = current.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
            return Ok(false);
        }
        let wall = MicroTime(k8s_openapi::jiff::Timestamp::now());
        let lease = Lease {
            metadata: current.metadata.clone(),
            spec: Some(LeaseSpec {
                holder_identity: None,
                lease_duration_seconds: Some(1),
                acquire_time: Some(wall.clone()),
                renew_time: Some(wall),
                ..spec
            }),
        };
        match self
            .api
            .replace(&self.config.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            // Someone wrote meanwhile: then it is not ours to release any more.
            Err(kube::Error::Api(status)) if status.is_conflict() => Ok(false),
            Err(err) => Err(err),
        }
    }
}

#[derive(Debug, PartialEq)]
enum Plan {
    /// Another identity holds an unexpired Lease.
    Wait { holder: String },
    /// Write this record (a renewal, a takeover or a first claim).
    Write(LeaseSpec),
}

/// What to do with the Lease record `current`, unchanged for `unchanged_for` on our clock.
fn plan(
    current: &LeaseSpec,
    unchanged_for: Duration,
    config: &LeaseConfig,
    now: MicroTime,
) -> Plan {
    let holder = current.holder_identity.as_deref().filter(|h| !h.is_empty());
    let ours = holder == Some(config.identity.as_str());
    if let Some(holder) = holder
        && !ours
    {
        // The holder's own duration counts, not ours: it renews on its own schedule.
        let duration = current
            .lease_duration_seconds
            .and_then(|s| u64::try_from(s).ok())
            .filter(|s| *s > 0)
            .map_or(config.lease_duration, Duration::from_secs);
        if unchanged_for < duration {
            return Plan::Wait {
                holder: holder.to_owned(),
            };
        }
    }
    let transitions = current.lease_transitions.unwrap_or(0);
    Plan::Write(LeaseSpec {
        holder_identity: Some(config.identity.clone()),
        lease_duration_seconds: Some(lease_seconds(config)),
        renew_time: Some(now.clone()),
        acquire_time: if ours {
            current.acquire_time.clone().or(Some(now))
        } else {
            Some(now)
        },
        lease_transitions: Some(if ours {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..current.clone()
    })
}

fn lease_seconds(config: &LeaseConfig) -> i32 {
    // validate() guarantees it fits.
    i32::try_from(config.lease_duration.as_secs()).unwrap_or(i32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(identity: &str) -> LeaseConfig {
        LeaseConfig {
            identity: identity.to_owned(),
            ..LeaseConfig::new("ns")
        }
    }

    fn time(secs: i64) -> MicroTime {
        MicroTime(
            k8s_openapi::jiff::Timestamp::from_second(secs)
                .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
        )
    }

    fn held_by(holder: &str, transitions: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(15),
            acquire_time: Some(time(100)),
            renew_time: Some(time(110)),
            lease_transitions: Some(transitions),
            ..Default::default()
        }
    }

    #[test]
    fn controller_runtime_defaults_are_valid() {
        let c = LeaseConfig::new("ns");
        assert_eq!(c.name, "workerpool-operator-leader");
        assert_eq!(
            (c.lease_duration, c.renew_deadline, c.retry_period),
            (
                Duration::from_secs(15),
                Duration::from_secs(10),
                Duration::from_secs(2)
            )
        );
        assert!(c.validate().is_ok());
    }

    #[test]
    fn timing_that_could_give_two_leaders_is_refused() {
        let mut c = config("a");
        c.renew_deadline = c.lease_duration;
        assert!(c.validate().is_err());
        let mut c = config("a");
        c.retry_period = Duration::from_secs(9);
        assert!(c.validate().is_err());
        let mut c = config("a");
        c.lease_duration = Duration::from_millis(500);
        c.renew_deadline = Duration::from_millis(300);
        c.retry_period = Duration::from_millis(100);
        assert!(c.validate().is_err(), "the Lease stores whole seconds");
    }

    #[test]
    fn identities_are_unique_per_process_and_start_with_the_host() {
        let a = default_identity();
        let b = default_identity();
        assert_ne!(a, b);
        if let Some(host) = hostname() {
            assert!(a.starts_with(&format!("{host}_")), "{a}");
        }
    }

    #[test]
    fn a_live_lease_of_another_holder_is_left_alone() {
        let plan = plan(
            &held_by("other", 3),
            Duration::from_secs(14),
            &config("me"),
            time(200),
        );
        assert_eq!(
            plan,
            Plan::Wait {
                holder: "other".to_owned()
            }
        );
    }

    #[test]
    fn an_expired_lease_is_taken_over_and_the_transition_counted() {
        let Plan::Write(next) = plan(
            &held_by("other", 3),
            Duration::from_secs(15),
            &config("me"),
            time(200),
        ) else {
            panic!("an expired lease must be taken");
        };
        assert_eq!(next.holder_identity.as_deref(), Some("me"));
        assert_eq!(next.lease_transitions, Some(4));
        assert_eq!(next.acquire_time, Some(time(200)));
        assert_eq!(next.renew_time, Some(time(200)));
    }

    #[test]
    fn the_holders_own_duration_decides_expiry() {
        let mut spec = held_by("other", 0);
        spec.lease_duration_seconds = Some(60);
        let plan = plan(&spec, Duration::from_secs(30), &config("me"), time(200));
        assert!(matches!(plan, Plan::Wait { .. }));
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions() {
        let Plan::Write(next) = plan(&held_by("me", 3), Duration::ZERO, &config("me"), time(200))
        else {
            panic!("the holder renews");
        };
        assert_eq!(next.acquire_time, Some(time(100)));
        assert_eq!(next.renew_time, Some(time(200)));
        assert_eq!(next.lease_transitions, Some(3));
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let mut spec = held_by("other", 2);
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        let Plan::Write(next) = plan(&spec, Duration::ZERO, &config("me"), time(200)) else {
            panic!("a released lease is free");
        };
        assert_eq!(next.holder_identity.as_deref(), Some("me"));
        assert_eq!(next.lease_transitions, Some(3));
        assert_eq!(next.lease_duration_seconds, Some(15));
    }

    #[test]
    fn lost_reasons_read_well() {
        let reason = LostReason::TakenOver {
            by: "pod-b_1".to_owned(),
        };
        assert_eq!(reason.to_string(), "the Lease is now held by pod-b_1");
    }
}
