//! The controller: WorkerPools -> Workers -> run Pods, driven by the backend link.
//!
//! A run's life is one state machine ([`machine`], pure), walked by [`runs`]: a schedule
//! arrives ([`runs::schedule`]), a stop arrives ([`runs::stop`]), the run Pod or the Worker
//! changes ([`runs::drive`]). Each step writes its record on the Worker before its side
//! effect, so a crash anywhere resumes from the records. Imports go one way:
//!
//! ```text
//! runner ─▶ pools ─▶ dispatch ─▶ messages ─▶ runs ─▶ pods ─▶ workers ─▶ records, machine,
//!    └──▶ reconcile ─────────────────────────┘                         outcome, history, ...
//! ```
//!
//! - [`pools`] keeps each pool's Workers and status (credentials, scaling, registration);
//! - [`workers`] writes Worker status ([`workers::status`]) and creates, registers and
//!   retires Workers ([`workers::lifecycle`]);
//! - [`pods`] creates, marks, deletes and retains run Pods;
//! - [`dispatch`] hands each pool's inbound messages to [`messages`], in order per worker;
//! - [`reconcile`] is the Worker and run Pod reconcilers, thin calls into [`runs`];
//! - [`links`] holds one backend link per pool.
//!
//! State lives in the cluster (Worker status, Pods and their annotations), never only in
//! memory: after a restart everything is rebuilt from there.

pub mod autoscale;
pub mod cache;
pub mod context;
pub mod demand;
pub mod dispatch;
pub mod error;
pub mod history;
pub mod keys;
pub mod links;
pub mod machine;
pub mod messages;
pub mod metrics;
pub mod outcome;
pub mod plan;
pub mod pods;
pub mod pool_credentials;
pub mod pool_status;
pub mod pools;
pub mod reconcile;
pub mod records;
mod runner;
pub mod runs;
pub mod sweep;
pub mod workers;

#[cfg(test)]
mod fixtures;
#[cfg(test)]
mod layout;

use std::time::Duration;

pub use context::Context;
pub use error::{Error, Retry, Step};
pub use links::{LinkManager, PoolHandle, PoolKey};
pub use metrics::ControllerMetrics;
pub use runner::run;

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
    /// How long messages being handled may finish on shutdown before they are abandoned
    /// (unacknowledged, so redelivered to the next leader or process).
    pub shutdown_grace: Duration,
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
            shutdown_grace: Duration::from_secs(10),
            link: LinkOptions::default(),
        }
    }
}

/// The value behind `mutex`. A panic while holding one of the controller's locks leaves whole
/// values behind (each is replaced, never half-written): still usable.
fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
