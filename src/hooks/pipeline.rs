//! The hook pipeline: `build_pod`'s Pod -> cluster plugins -> pool plugins -> the pool's
//! initialization policy -> cluster policies -> invariants, recording a trail on the way.
//!
//! Pure apart from running the hooks: no I/O, no cluster. The controller runs it on a
//! blocking thread ([`Pipeline::evaluate_blocking`]); `render` calls [`Pipeline::evaluate`].

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::guard_step::{self, GUARD_HOOK};
use super::input::{ContextRef, HookInput, PodState, PolicyInput};
use super::invariants::{self, set_worker_image, worker_image};
use super::metrics::HookMetrics;
use super::plugin::{EvalError, Plugin, Verdict};
use super::registry::PendingHooks;
use super::rego::Policy;
use super::slots::{EvaluationSlots, SlotTimeout};
use super::spec::FailurePolicy;
use super::trail::{self, HookRecord, Outcome, Stage, TRAIL_ANNOTATION};
use crate::guard::RunPodGuard;

/// A plugin as the pipeline sees it: ready, or unavailable (never loaded successfully).
#[derive(Clone, Debug)]
pub enum PluginEntry {
    Ready(Arc<Plugin>),
    Unavailable {
        name: String,
        failure_policy: FailurePolicy,
        reason: String,
    },
}

impl PluginEntry {
    pub fn name(&self) -> &str {
        match self {
            PluginEntry::Ready(plugin) => plugin.name(),
            PluginEntry::Unavailable { name, .. } => name,
        }
    }
}

/// A policy as the pipeline sees it: compiled, or broken (which denies every run: fail closed).
#[derive(Clone, Debug)]
pub enum PolicyEntry {
    Ready(Policy),
    Broken { name: String, reason: String },
}

impl PolicyEntry {
    pub fn name(&self) -> &str {
        match self {
            PolicyEntry::Ready(policy) => policy.name(),
            PolicyEntry::Broken { name, .. } => name,
        }
    }
}

/// The hooks that apply to one pool's runs, in pipeline order. Cheap to clone.
#[derive(Clone, Debug, Default)]
pub struct Pipeline {
    pub cluster_plugins: Vec<PluginEntry>,
    pub pool_plugins: Vec<PluginEntry>,
    pub pool_policy: Option<PolicyEntry>,
    pub cluster_policies: Vec<PolicyEntry>,
    /// `cluster` or `<namespace>/<pool>`: the `scope` label of the metrics.
    pub scope: String,
    pub metrics: Option<Arc<HookMetrics>>,
    /// Set when the hooks had not loaded when this pipeline was asked for: it then holds no
    /// hooks, and never allows a run by itself (fail closed).
    pub pending: Option<PendingHooks>,
    /// The cluster admin's run-Pod guard, checked on the final Pod.
    pub guard: Arc<RunPodGuard>,
    /// The evaluation slots this pipeline takes one of ([`EvaluationSlots::process_default`]
    /// when `None`).
    pub slots: Option<Arc<EvaluationSlots>>,
}

/// The pipeline's answer.
#[derive(Clone, Debug, PartialEq)]
pub enum Decision {
    Allowed(Box<Allowed>),
    Denied(Denial),
}

impl Decision {
    pub fn trail(&self) -> &[HookRecord] {
        match self {
            Decision::Allowed(allowed) => &allowed.trail,
            Decision::Denied(denial) => &denial.trail,
        }
    }
}

/// The Pod to create, carrying the [`TRAIL_ANNOTATION`].
#[derive(Clone, Debug, PartialEq)]
pub struct Allowed {
    pub pod: Pod,
    pub runner_image: String,
    pub allowed_runner_image_hosts: Vec<String>,
    pub trail: Vec<HookRecord>,
}

/// Why the run may not start: the stage and hook that refused it, with every reason it gave.
#[derive(Clone, Debug, PartialEq)]
pub struct Denial {
    pub stage: Stage,
    pub hook: String,
    pub reasons: Vec<String>,
    pub trail: Vec<HookRecord>,
}

impl fmt::Display for Denial {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "run denied by {} {:?}: {}",
            self.stage,
            self.hook,
            self.reasons.join("; ")
        )
    }
}

/// Hook name used for the final checks.
pub const INVARIANTS_HOOK: &str = "invariants";
/// Hook name under which a run is denied because its hooks have not loaded.
pub const NOT_LOADED_HOOK: &str = "hooks-not-loaded";
/// Hook name under which a run is denied because it waited too long for an evaluation slot.
pub const BUSY_HOOK: &str = "hooks-busy";

enum Step {
    Continue,
    Deny(Vec<String>),
}

impl Pipeline {
    /// Runs every hook over `input` and returns the Pod to create or the reasons not to. A
    /// pipeline whose hooks have not loaded denies at once (the async entry waits for them).
    pub fn evaluate(&self, input: HookInput) -> Decision {
        if let Some(pending) = &self.pending {
            return self.not_loaded(pending.reason());
        }
        let HookInput {
            pool,
            worker,
            run,
            pod,
            runner_image,
            allowed_runner_image_hosts,
        } = input;
        let context = ContextRef {
            pool: &pool,
            worker: &worker,
            run: &run,
        };
        let original = pod.clone();
        let mut state = PodState {
            pod,
            runner_image,
            allowed_runner_image_hosts,
        };
        let mut trail = Vec::new();

        let plugin_stages = [
            (Stage::ClusterPlugin, &self.cluster_plugins),
            (Stage::PoolPlugin, &self.pool_plugins),
        ];
        for (stage, plugins) in plugin_stages {
            for entry in plugins {
                let step = self.run_plugin(stage, entry, &context, &mut state, &mut trail);
                if let Step::Deny(reasons) = step {
                    return deny(stage, entry.name(), reasons, trail);
                }
                let broken = invariants::violations(&original, &state.pod);
                if !broken.is_empty() {
                    let reasons = broken
                        .into_iter()
                        .map(|v| format!("{stage} {:?} {v}, which hooks may not do", entry.name()))
                        .collect();
                    self.count_denial(Stage::Invariants, entry.name());
                    return deny(Stage::Invariants, entry.name(), reasons, trail);
                }
            }
        }

        let policy_stages = [
            (Stage::PoolPolicy, self.pool_policy.as_slice()),
            (Stage::ClusterPolicy, self.cluster_policies.as_slice()),
        ];
        if policy_stages.iter().any(|(_, p)| !p.is_empty()) {
            let input = serde_json::to_string(&PolicyInput {
                pool: &pool,
                worker: &worker,
                run: &run,
                pod: &state.pod,
                runner_image: &state.runner_image,
                allowed_runner_image_hosts: &state.allowed_runner_image_hosts,
            })
            .unwrap_or_default();
            for (stage, policies) in policy_stages {
                for entry in policies {
                    if let Step::Deny(reasons) = self.run_policy(stage, entry, &input, &mut trail) {
                        return deny(stage, entry.name(), reasons, trail);
                    }
                }
            }
        }

        // Final checks, which no hook can skip.
        let mut reasons = invariants::violations(&original, &state.pod);
        if worker_image(&state.pod) != Some(state.runner_image.as_str()) && reasons.is_empty() {
            reasons.push(format!(
                "the worker container's image is not the runner image {:?}",
                state.runner_image
            ));
        }
        if let Err(e) =
            invariants::runner_image_allowed(&state.runner_image, &state.allowed_runner_image_hosts)
        {
            reasons.push(e);
        }
        if !reasons.is_empty() {
            self.count_denial(Stage::Invariants, INVARIANTS_HOOK);
            return deny(Stage::Invariants, INVARIANTS_HOOK, reasons, trail);
        }
        let refusals = guard_step::refusals(
            &self.guard,
            &pool,
            &run,
            &original,
            &state.pod,
            &trail,
            &state.allowed_runner_image_hosts,
        );
        if !refusals.is_empty() {
            self.count_denial(Stage::Guard, GUARD_HOOK);
            return deny(Stage::Guard, GUARD_HOOK, refusals, trail);
        }
        trail.push(HookRecord {
            stage: Stage::Invariants,
            hook: INVARIANTS_HOOK.to_string(),
            outcome: Outcome::Allowed,
            changes: Vec::new(),
            message: None,
            micros: 0,
        });
        state
            .pod
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(TRAIL_ANNOTATION.to_string(), trail::annotation(&trail));
        Decision::Allowed(Box::new(Allowed {
            pod: state.pod,
            runner_image: state.runner_image,
            allowed_runner_image_hosts: state.allowed_runner_image_hosts,
            trail,
        }))
    }

    /// [`Pipeline::evaluate`] on Tokio's blocking pool, for async callers. When the hooks had
    /// not loaded, it first waits for them (bounded) and runs them once they have; if they do
    /// not load in time, the run is denied.
    pub async fn evaluate_blocking(&self, input: HookInput) -> Decision {
        let pipeline = match &self.pending {
            None => self.clone(),
            Some(pending) => match pending.wait().await {
                Ok(loaded) => loaded,
                Err(reason) => return self.not_loaded(&reason),
            },
        };
        // Hooks are CPU-bound and each call may hold a plugin's memory cap, so evaluations
        // at once are bounded, and a pool's share of them too (see `slots`).
        let slots = pipeline
            .slots
            .clone()
            .unwrap_or_else(EvaluationSlots::process_default);
        let _slot = match slots.acquire(&pipeline.scope).await {
            Ok(slot) => slot,
            Err(timeout) => return pipeline.busy(&timeout),
        };
        match tokio::task::spawn_blocking(move || pipeline.evaluate(input)).await {
            Ok(decision) => decision,
            Err(e) => deny(
                Stage::Invariants,
                INVARIANTS_HOOK,
                vec![format!("the hook pipeline stopped unexpectedly: {e}")],
                Vec::new(),
            ),
        }
    }

    fn run_plugin(
        &self,
        stage: Stage,
        entry: &PluginEntry,
        context: &ContextRef<'_>,
        state: &mut PodState,
        trail: &mut Vec<HookRecord>,
    ) -> Step {
        let started = Instant::now();
        let (plugin, result) = match entry {
            PluginEntry::Ready(plugin) => (
                plugin.name(),
                plugin
                    .evaluate(
                        context,
                        &state.pod,
                        &state.runner_image,
                        &state.allowed_runner_image_hosts,
                    )
                    .map(|(verdict, _)| verdict)
                    .map_err(|e| {
                        (
                            e.kind(),
                            e.to_string(),
                            plugin.failure_policy(),
                            is_timeout(&e),
                        )
                    }),
            ),
            PluginEntry::Unavailable {
                name,
                failure_policy,
                reason,
            } => (
                name.as_str(),
                Err((
                    "unavailable",
                    format!("is not loaded: {reason}"),
                    *failure_policy,
                    false,
                )),
            ),
        };
        let elapsed = started.elapsed();
        if let Some(metrics) = &self.metrics {
            metrics.observe_call(&self.scope, stage.as_str(), plugin, elapsed);
        }
        let mut record = HookRecord {
            stage,
            hook: plugin.to_string(),
            outcome: Outcome::Allowed,
            changes: Vec::new(),
            message: None,
            micros: micros(elapsed),
        };
        match result {
            Ok(Verdict::Deny { message }) => {
                self.count_denial(stage, plugin);
                record.outcome = Outcome::Denied;
                record.message = Some(message.clone());
                trail.push(record);
                Step::Deny(vec![message])
            }
            Ok(Verdict::Allow {
                pod,
                runner_image,
                allowed_runner_image_hosts,
                message,
            }) => {
                record.changes = apply(state, pod, runner_image, allowed_runner_image_hosts);
                if !record.changes.is_empty() {
                    record.outcome = Outcome::Changed;
                }
                record.message = message;
                trail.push(record);
                Step::Continue
            }
            Err((kind, error, failure_policy, timeout)) => {
                if let Some(metrics) = &self.metrics {
                    metrics.count_error(&self.scope, stage.as_str(), plugin, kind, timeout);
                }
                let message = format!("{stage} {plugin:?} failed: {error}");
                match failure_policy {
                    FailurePolicy::Ignore => {
                        record.outcome = Outcome::Skipped;
                        record.message = Some(format!("{message} (failurePolicy: Ignore)"));
                        trail.push(record);
                        Step::Continue
                    }
                    FailurePolicy::Fail => {
                        self.count_denial(stage, plugin);
                        record.outcome = Outcome::Denied;
                        record.message = Some(message.clone());
                        trail.push(record);
                        Step::Deny(vec![message])
                    }
                }
            }
        }
    }

    fn run_policy(
        &self,
        stage: Stage,
        entry: &PolicyEntry,
        input: &str,
        trail: &mut Vec<HookRecord>,
    ) -> Step {
        let started = Instant::now();
        let result = match entry {
            PolicyEntry::Ready(policy) => policy.evaluate(input).map_err(|e| {
                if let Some(metrics) = &self.metrics {
                    let timeout = e.kind() == "timeout";
                    metrics.count_error(
                        &self.scope,
                        stage.as_str(),
                        policy.name(),
                        e.kind(),
                        timeout,
                    );
                }
                format!("{stage} {:?} failed: {e}", policy.name())
            }),
            PolicyEntry::Broken { name, reason } => {
                if let Some(metrics) = &self.metrics {
                    metrics.count_error(&self.scope, stage.as_str(), name, "unavailable", false);
                }
                Err(format!(
                    "{stage} {name:?} is broken, so every run is denied until it is fixed: {reason}"
                ))
            }
        };
        let elapsed = started.elapsed();
        if let Some(metrics) = &self.metrics {
            metrics.observe_call(&self.scope, stage.as_str(), entry.name(), elapsed);
        }
        let reasons = match result {
            Ok(reasons) if reasons.is_empty() => {
                trail.push(HookRecord {
                    stage,
                    hook: entry.name().to_string(),
                    outcome: Outcome::Allowed,
                    changes: Vec::new(),
                    message: None,
                    micros: micros(elapsed),
                });
                return Step::Continue;
            }
            Ok(reasons) => reasons,
            Err(error) => vec![error],
        };
        self.count_denial(stage, entry.name());
        trail.push(HookRecord {
            stage,
            hook: entry.name().to_string(),
            outcome: Outcome::Denied,
            changes: Vec::new(),
            message: Some(reasons.join("; ")),
            micros: micros(elapsed),
        });
        Step::Deny(reasons)
    }

    /// Denies a run whose hooks have not loaded, rather than run it without them.
    fn not_loaded(&self, reason: &str) -> Decision {
        self.count_denial(Stage::Invariants, NOT_LOADED_HOOK);
        deny(
            Stage::Invariants,
            NOT_LOADED_HOOK,
            vec![format!(
                "{reason}; the run is denied rather than started without them"
            )],
            Vec::new(),
        )
    }

    /// Denies a run that waited too long for an evaluation slot.
    fn busy(&self, timeout: &SlotTimeout) -> Decision {
        tracing::warn!(scope = %self.scope, error = %timeout, "a run waited too long for a hook evaluation slot");
        if let Some(metrics) = &self.metrics {
            metrics.count_slot_timeout(&self.scope);
        }
        self.count_denial(Stage::Invariants, BUSY_HOOK);
        deny(
            Stage::Invariants,
            BUSY_HOOK,
            vec![timeout.to_string()],
            Vec::new(),
        )
    }

    fn count_denial(&self, stage: Stage, hook: &str) {
        if let Some(metrics) = &self.metrics {
            metrics.count_denial(&self.scope, stage.as_str(), hook);
        }
    }
}

fn is_timeout(error: &EvalError) -> bool {
    matches!(
        error,
        EvalError::Call(super::abi::CallError::Timeout { .. })
    )
}

fn micros(elapsed: Duration) -> u64 {
    u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX)
}

/// A denial, its reasons capped in count and length (a hook's message may be a megabyte),
/// so that logs, events and reports built from it stay small.
fn deny(stage: Stage, hook: &str, reasons: Vec<String>, trail: Vec<HookRecord>) -> Decision {
    Decision::Denied(Denial {
        stage,
        hook: hook.to_string(),
        reasons: crate::protocol::limits::cap_messages(reasons),
        trail,
    })
}

/// Applies an allowing verdict to the state and returns what changed.
///
/// `runnerImage`, when given, is written into the `worker` container; otherwise a changed
/// `worker` image becomes the runner image. The two never disagree after this.
fn apply(
    state: &mut PodState,
    pod: Option<Box<Pod>>,
    runner_image: Option<String>,
    allowed_runner_image_hosts: Option<Vec<String>>,
) -> Vec<String> {
    let mut changes = Vec::new();
    let old_runner_image = state.runner_image.clone();
    if let Some(pod) = pod {
        let before = serde_json::to_value(&state.pod).unwrap_or_default();
        state.pod = *pod;
        if runner_image.is_none()
            && let Some(image) = worker_image(&state.pod)
        {
            state.runner_image = image.to_string();
        }
        if let Some(image) = &runner_image {
            set_worker_image(&mut state.pod, image);
        }
        let after = serde_json::to_value(&state.pod).unwrap_or_default();
        changes = trail::changed_paths(&before, &after, "");
    } else if let Some(image) = &runner_image
        && worker_image(&state.pod) != Some(image.as_str())
    {
        set_worker_image(&mut state.pod, image);
        changes.push("spec.containers[worker].image".to_string());
    }
    if let Some(image) = runner_image {
        state.runner_image = image;
    }
    if state.runner_image != old_runner_image {
        changes.push("runnerImage".to_string());
    }
    if let Some(hosts) = allowed_runner_image_hosts
        && hosts != state.allowed_runner_image_hosts
    {
        state.allowed_runner_image_hosts = hosts;
        changes.push("allowedRunnerImageHosts".to_string());
    }
    changes
}
