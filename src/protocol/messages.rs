//! Message bodies. Every body travels inside an [`super::Message`] envelope; the envelope's
//! `type` names the body. JSON field names are camelCase; unknown fields are refused, so a
//! change to any body is a new protocol version (see docs/protocol.md, "Versioning").

use serde::{Deserialize, Serialize};

use super::RunSchedule;
use super::topic::Direction;

/// Every message body, tagged by its `type` in the envelope.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", content = "body")]
pub enum Body {
    /// worker -> backend: a new worker slot exists and can take runs.
    #[serde(rename = "worker.register")]
    WorkerRegister(WorkerRegister),
    /// backend -> worker: the registration is recorded.
    #[serde(rename = "worker.registered")]
    WorkerRegistered(WorkerRegistered),
    /// worker -> backend: the worker slot is going away; send it nothing more.
    #[serde(rename = "worker.deregister")]
    WorkerDeregister(WorkerDeregister),
    /// backend -> worker: the deregistration is recorded.
    #[serde(rename = "worker.deregistered")]
    WorkerDeregistered(WorkerDeregistered),
    /// worker -> backend: the worker's state (heartbeat, and after every controller start).
    #[serde(rename = "worker.state")]
    WorkerState(WorkerState),
    /// backend -> worker: process one stage of a run.
    #[serde(rename = "run.schedule")]
    RunSchedule(RunSchedule),
    /// backend -> worker: stop a run.
    #[serde(rename = "run.stop")]
    RunStop(RunStop),
    /// worker -> backend: the schedule was received and the worker is BUSY with it.
    #[serde(rename = "run.accepted")]
    RunAccepted(RunRef),
    /// worker -> backend: the run Pod exists.
    #[serde(rename = "run.podCreated")]
    PodCreated(PodCreated),
    /// worker -> backend: a hook refused the run Pod; the run did not start.
    #[serde(rename = "run.denied")]
    RunDenied(RunDenied),
    /// worker -> backend: the run Pod ended (once per run stage attempt).
    #[serde(rename = "run.finished")]
    RunFinished(RunFinished),
    /// Pool-level status, both ways: the pool reports its workers; the backend reports what is
    /// queued for the pool.
    #[serde(rename = "pool.status")]
    PoolStatus(PoolStatus),
    /// backend -> pool: the runs waiting for the pool, and how many of them can start now
    /// (the autoscaler's input). Sent when it changes, retained by the broker.
    #[serde(rename = "pool.demand")]
    PoolDemand(PoolDemand),
}

/// Whether a body is addressed to one worker or to the whole pool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// `<ns>/<dir>/<pool>/<worker>`; the envelope names the worker.
    Worker,
    /// `<ns>/<dir>/<pool>`; the envelope names no worker.
    Pool,
}

impl Body {
    /// The `type` string of this body, e.g. `run.schedule`.
    pub fn kind(&self) -> &'static str {
        match self {
            Body::WorkerRegister(_) => "worker.register",
            Body::WorkerRegistered(_) => "worker.registered",
            Body::WorkerDeregister(_) => "worker.deregister",
            Body::WorkerDeregistered(_) => "worker.deregistered",
            Body::WorkerState(_) => "worker.state",
            Body::RunSchedule(_) => "run.schedule",
            Body::RunStop(_) => "run.stop",
            Body::RunAccepted(_) => "run.accepted",
            Body::PodCreated(_) => "run.podCreated",
            Body::RunDenied(_) => "run.denied",
            Body::RunFinished(_) => "run.finished",
            Body::PoolStatus(_) => "pool.status",
            Body::PoolDemand(_) => "pool.demand",
        }
    }

    /// Worker-level or pool-level.
    pub fn scope(&self) -> Scope {
        match self {
            Body::PoolStatus(_) | Body::PoolDemand(_) => Scope::Pool,
            _ => Scope::Worker,
        }
    }

    /// Whether this body may travel in `direction`.
    pub fn allowed(&self, direction: Direction) -> bool {
        match self {
            Body::WorkerRegistered(_)
            | Body::WorkerDeregistered(_)
            | Body::RunSchedule(_)
            | Body::RunStop(_)
            | Body::PoolDemand(_) => direction == Direction::ToPool,
            Body::WorkerRegister(_)
            | Body::WorkerDeregister(_)
            | Body::WorkerState(_)
            | Body::RunAccepted(_)
            | Body::PodCreated(_)
            | Body::RunDenied(_)
            | Body::RunFinished(_) => direction == Direction::ToBackend,
            Body::PoolStatus(_) => true,
        }
    }

    /// The run stage attempt this body is about, if any.
    pub fn run(&self) -> Option<RunRef> {
        match self {
            Body::RunSchedule(s) => Some(RunRef::new(&s.run_id, &s.stage, s.attempt)),
            Body::RunAccepted(r) => Some(r.clone()),
            Body::PodCreated(p) => Some(RunRef::new(&p.run_id, &p.stage, p.attempt)),
            Body::RunDenied(d) => Some(RunRef::new(&d.run_id, &d.stage, d.attempt)),
            Body::RunFinished(f) => Some(RunRef::new(&f.run_id, &f.stage, f.attempt)),
            Body::WorkerState(w) => w.current_run.clone(),
            _ => None,
        }
    }

    /// Checks what serde cannot: run ids are ULIDs, stages are Pod-name safe, attempts start at
    /// 1. Returns the JSON path of the bad field and the reason.
    pub fn validate(&self) -> Result<(), (String, String)> {
        match self {
            Body::RunSchedule(s) => {
                validate_run(&s.run_id, &s.stage, s.attempt)?;
                if s.launcher_image.trim().is_empty() {
                    return Err(("body.launcherImage".into(), "must not be empty".into()));
                }
                if let Some(endpoint) = &s.launcher_endpoint {
                    check_launcher_endpoint(endpoint)
                        .map_err(|reason| ("body.launcherEndpoint".into(), reason))?;
                }
                Ok(())
            }
            Body::RunStop(s) => {
                validate_run_id(&s.run_id)?;
                if let Some(stage) = &s.stage {
                    validate_stage(stage)?;
                }
                Ok(())
            }
            Body::WorkerState(w) => match &w.current_run {
                Some(r) => {
                    validate_run(&r.run_id, &r.stage, r.attempt).map_err(|(field, reason)| {
                        (field.replace("body.", "body.currentRun."), reason)
                    })
                }
                None => Ok(()),
            },
            Body::PoolDemand(d) => validate_demand(d),
            other => match other.run() {
                Some(r) => validate_run(&r.run_id, &r.stage, r.attempt),
                None => Ok(()),
            },
        }
    }
}

fn validate_demand(d: &PoolDemand) -> Result<(), (String, String)> {
    if d.schedulable_runs > d.pending_runs {
        return Err((
            "body.schedulableRuns".into(),
            format!(
                "{} must not exceed pendingRuns ({}): schedulable runs are some of the pending ones",
                d.schedulable_runs, d.pending_runs
            ),
        ));
    }
    if d.dispatched_workers.len() > MAX_DISPATCHED_WORKERS {
        return Err((
            "body.dispatchedWorkers".into(),
            format!(
                "{} workers, more than the {MAX_DISPATCHED_WORKERS} a demand may list",
                d.dispatched_workers.len()
            ),
        ));
    }
    for (i, worker) in d.dispatched_workers.iter().enumerate() {
        // Canonical spelling only: the operator matches it against its Workers' ULID labels.
        let canonical = ulid::Ulid::from_string(worker)
            .ok()
            .map(|id| id.to_string());
        if canonical.as_deref() != Some(worker.as_str()) {
            return Err((
                format!("body.dispatchedWorkers[{i}]"),
                format!("{worker:?} is not a canonical (uppercase) ULID"),
            ));
        }
    }
    Ok(())
}

/// A launcher endpoint is `https://host[:port]`: TLS always (the launcher signs its requests
/// with the worker's key and checks the backend with the pool token's CA), nothing after the
/// authority, at most 256 characters.
pub fn check_launcher_endpoint(endpoint: &str) -> Result<(), String> {
    let authority = endpoint
        .strip_prefix("https://")
        .ok_or_else(|| format!("{endpoint:?} must start with https://"))?;
    if endpoint.len() > 256 {
        return Err("must be at most 256 characters".into());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']');
    if authority.is_empty() || !authority.chars().all(allowed) {
        return Err(format!(
            "{endpoint:?} must be https://host[:port], with no path, query or user"
        ));
    }
    Ok(())
}

fn validate_run(run_id: &str, stage: &str, attempt: u32) -> Result<(), (String, String)> {
    validate_run_id(run_id)?;
    validate_stage(stage)?;
    if attempt == 0 {
        return Err(("body.attempt".into(), "must be 1 or more".into()));
    }
    Ok(())
}

fn validate_run_id(run_id: &str) -> Result<(), (String, String)> {
    ulid::Ulid::from_string(run_id).map(|_| ()).map_err(|err| {
        (
            "body.runId".into(),
            format!("{run_id:?} is not a ULID ({err})"),
        )
    })
}

fn validate_stage(stage: &str) -> Result<(), (String, String)> {
    check_stage(stage).map_err(|problem| ("body.stage".into(), problem))
}

/// A stage becomes part of the Pod name `<run>-<stage>-<attempt>`: a DNS label fragment.
/// Shared by the decoder and the Pod builder, so `render` refuses what the link refuses.
pub fn check_stage(stage: &str) -> Result<(), String> {
    let ok = !stage.is_empty()
        && stage.len() <= 30
        && stage
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !stage.starts_with('-')
        && !stage.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err(format!(
            "{stage:?} must be 1-30 lowercase letters, digits or '-'"
        ))
    }
}

/// One stage attempt of a run: the identity of a run Pod (`<lowercase runId>-<stage>-<attempt>`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunRef {
    /// The run's ULID.
    pub run_id: String,
    /// The stage, e.g. `preparing`.
    pub stage: String,
    /// The attempt of this stage, from 1.
    pub attempt: u32,
}

impl RunRef {
    /// A run stage attempt.
    pub fn new(run_id: &str, stage: &str, attempt: u32) -> Self {
        Self {
            run_id: run_id.to_string(),
            stage: stage.to_string(),
            attempt,
        }
    }

    /// The run Pod's name: `<lowercase run ULID>-<stage>-<attempt>`.
    pub fn pod_name(&self) -> String {
        format!(
            "{}-{}-{}",
            self.run_id.to_lowercase(),
            self.stage,
            self.attempt
        )
    }
}

/// A worker slot announces itself.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerRegister {
    /// The Kubernetes Worker name, `<pool>-<lowercase worker ULID>`.
    pub name: String,
    /// The worker's RSA public key (PEM, SubjectPublicKeyInfo); its private key stays in the
    /// Worker's Secret. A backend may use it to encrypt run secrets for this worker.
    pub public_key: String,
    /// Free-form facts about the worker (controller version, namespace, ...).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub metadata: std::collections::BTreeMap<String, String>,
}

/// The backend recorded a registration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerRegistered {}

/// A worker slot goes away.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerDeregister {
    /// Why, for the backend's records, e.g. `scaled down`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The backend recorded a deregistration.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerDeregistered {}

/// A worker's state, as the Worker resource's `status.state`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum WorkerStatus {
    /// Can take a run.
    Idle,
    /// Processing `currentRun`.
    Busy,
    /// Finishing `currentRun`, then going away; takes no new run.
    Draining,
}

impl WorkerStatus {
    /// `IDLE`, `BUSY` or `DRAINING`.
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerStatus::Idle => "IDLE",
            WorkerStatus::Busy => "BUSY",
            WorkerStatus::Draining => "DRAINING",
        }
    }
}

/// A worker's state report.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WorkerState {
    /// IDLE, BUSY or DRAINING.
    pub state: WorkerStatus,
    /// The run stage attempt the worker is processing, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_run: Option<RunRef>,
}

/// Stop a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunStop {
    /// The run's ULID.
    pub run_id: String,
    /// Only this stage; any stage when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<String>,
    /// Why, e.g. `stopped by user`.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The run Pod exists.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodCreated {
    /// The run's ULID.
    pub run_id: String,
    /// The stage, e.g. `preparing`.
    pub stage: String,
    /// The attempt of this stage, from 1.
    pub attempt: u32,
    /// The Pod's namespace.
    pub namespace: String,
    /// The Pod's name, `<lowercase run ULID>-<stage>-<attempt>`.
    pub pod_name: String,
}

/// Why a hook refused a run Pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DenyReason {
    /// The hook: `plugin/<name>`, `policy/<name>` or `allowedRunnerImageHosts`.
    pub hook: String,
    /// What the hook said.
    pub message: String,
}

/// A hook refused the run Pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunDenied {
    /// The run's ULID.
    pub run_id: String,
    /// The stage, e.g. `preparing`.
    pub stage: String,
    /// The attempt of this stage, from 1.
    pub attempt: u32,
    /// One entry per refusing hook (policies may give several messages).
    pub reasons: Vec<DenyReason>,
}

/// How a run stage attempt ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum Outcome {
    /// Every container exited 0.
    Succeeded,
    /// The Pod failed; see `cause`.
    Failed,
    /// Stopped on request (`run.stop`).
    Stopped,
}

/// Why a run Pod failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FailureCause {
    /// A container exited non-zero.
    Error,
    /// A container was killed for exceeding its memory limit.
    #[serde(rename = "OOMKilled")]
    OomKilled,
    /// The kubelet evicted the Pod (node pressure).
    Evicted,
    /// `activeDeadlineSeconds` passed.
    DeadlineExceeded,
    /// An image could not be pulled (ErrImagePull / ImagePullBackOff) within the wait.
    ImagePullBackOff,
    /// The container could not be created (bad config, missing Secret/ConfigMap).
    CreateContainerError,
    /// The Pod's node disappeared.
    NodeLost,
    /// The Pod could not be scheduled within the wait.
    Unschedulable,
    /// Someone else deleted the Pod.
    PodDeleted,
    /// None of the above; see `message`.
    Unknown,
}

/// The run Pod ended.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RunFinished {
    /// The run's ULID.
    pub run_id: String,
    /// The stage, e.g. `preparing`.
    pub stage: String,
    /// The attempt of this stage, from 1.
    pub attempt: u32,
    /// succeeded, failed or stopped.
    pub outcome: Outcome,
    /// Set when `outcome` is failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cause: Option<FailureCause>,
    /// Human-readable detail (the container's termination message, the event text ...).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// The `worker` container's exit code, when it ran.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Pool-level status.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolStatus {
    /// Registered workers.
    pub workers: u32,
    /// Of which IDLE.
    pub idle: u32,
    /// Of which BUSY.
    pub busy: u32,
    /// Of which DRAINING.
    #[serde(default)]
    pub draining: u32,
    /// Runs queued for the pool, as the backend sees them (backend -> pool only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_runs: Option<u32>,
}

/// What waits for a pool, as the backend sees it: the autoscaler's input.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PoolDemand {
    /// Runs that wait for a worker of this pool and have none yet, including those that
    /// wait on a person (a tracked run's plan awaiting confirmation).
    pub pending_runs: u32,
    /// Of `pendingRuns`, those a worker could start now: not waiting on a person or on
    /// anything else outside the pool. At most `pendingRuns`.
    pub schedulable_runs: u32,
    /// The workers (ULIDs) the backend has dispatched a run to that have not accepted it yet:
    /// the operator counts them busy although their Worker does not say so yet. At most
    /// [`MAX_DISPATCHED_WORKERS`]; a longer list is refused.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dispatched_workers: Vec<String>,
}

/// The most workers a `pool.demand` lists as dispatched to (a pool this large is far beyond
/// what one operator runs; the bound keeps the payload far below the link's cap).
pub const MAX_DISPATCHED_WORKERS: usize = 1000;
