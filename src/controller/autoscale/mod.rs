//! Queue-driven autoscaling (`spec.autoscaling`, docs/autoscaling.md): the pool's reconcile
//! asks [`autoscale`] for the poolSize to plan for, before it plans its Workers.
//!
//! The signal is pushed by the backend (`pool.demand`, kept in [`super::demand`]): the runs
//! pending for the pool and, of them, those that can start now. The decision is pure
//! ([`decide`]); this module reads the settings, writes `spec.poolSize` through the scale
//! subresource (the path `kubectl scale`, an HPA or KEDA would take), and says why: an event
//! per change, `status.autoscaling`, the `Autoscaling` condition and metrics.
//!
//! When `spec.autoscaling` is set the operator owns `spec.poolSize`: a change by anyone else
//! is undone, with a warning event. When it is unset, nothing here runs.

pub mod decide;
pub mod settings;
pub mod windows;

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::MANAGER;
use super::context::Context;
use super::error::{Error, Step};
use super::links::PoolKey;
use crate::crd::{AutoscalingStatus, Worker, WorkerPool, WorkerPoolStatus, WorkerState};
use decide::{Decision, Direction, Floor, Inputs, Slot};

/// The type of the pool condition this module writes.
pub const CONDITION_TYPE: &str = "Autoscaling";

/// What the autoscaler decided for this reconcile.
#[derive(Clone, Debug)]
pub struct Scaling {
    /// The poolSize to plan the Workers for.
    pub size: i32,
    /// Idle Workers to remove before any other, idle longest first.
    pub remove_first: Vec<String>,
    /// `status.autoscaling`.
    pub status: Option<AutoscalingStatus>,
    /// The `Autoscaling` condition: status, reason, message.
    pub condition: (bool, &'static str, String),
    /// When to decide again although nothing else changes.
    pub recheck: Option<Duration>,
}

/// Decides the pool's size and writes it, when `spec.autoscaling` is set.
pub async fn autoscale(
    ctx: &Context,
    pool: &WorkerPool,
    pool_ulid: &str,
    workers: &[Worker],
) -> Result<Option<Scaling>, Error> {
    let key = PoolKey {
        namespace: pool.namespace().unwrap_or_default(),
        name: pool.name_any(),
    };
    let Some(spec) = &pool.spec.autoscaling else {
        ctx.autoscale.forget_decisions(&key);
        ctx.metrics.forget_autoscaling(pool_ulid);
        return Ok(None);
    };
    let previous = pool.status.as_ref().and_then(|s| s.autoscaling.as_ref());
    let settings = match settings::settings(spec) {
        Ok(settings) => settings,
        Err(problem) => {
            let message = problem.to_string();
            if !condition_says(pool, false, &message) {
                tracing::warn!(pool = %key, "{message}");
                ctx.event(
                    pool,
                    EventType::Warning,
                    "AutoscalingInvalid",
                    "Autoscale",
                    format!("spec.poolSize is left as it is until this is fixed: {message}"),
                )
                .await;
            }
            return Ok(Some(Scaling {
                size: pool.spec.pool_size,
                remove_first: Vec::new(),
                status: previous.cloned(),
                condition: (false, "InvalidSpec", message),
                recheck: None,
            }));
        }
    };
    let now = Timestamp::now();
    let (floor, window, window_change) =
        windows::floor(settings.min_pool_size, &settings.windows, now);

    // The operator owns poolSize: another writer's value is undone.
    // What this process last set, else what the status recorded.
    let ours = [
        ctx.autoscale.size_set(&key),
        previous.map(|p| p.desired_pool_size),
    ];
    let spec_size = pool.spec.pool_size;
    let owned = ours.iter().flatten().any(|&size| size == spec_size);
    let current = match (owned, ours.iter().flatten().next()) {
        (false, Some(&last)) => {
            let message = format!(
                "spec.poolSize was set to {spec_size} by someone else, but spec.autoscaling is set, so the operator owns it and set it back to {last}: remove spec.autoscaling to size the pool by hand, with kubectl scale, an HPA or KEDA"
            );
            tracing::warn!(pool = %key, "{message}");
            ctx.event(
                pool,
                EventType::Warning,
                "PoolSizeOverridden",
                "Autoscale",
                message,
            )
            .await;
            last
        }
        _ => spec_size,
    };

    let recent = ctx.autoscale.recommendations(&key);
    let demand = ctx.autoscale.demand(&key);
    let slots = slots(workers, demand.as_ref().map(|d| &d.dispatched));
    let decision = decide::decide(&Inputs {
        settings: &settings,
        floor: Floor {
            size: floor,
            window: window.clone(),
        },
        current: u32::try_from(current).unwrap_or(0),
        demand: demand.clone(),
        workers: &slots,
        recent: &recent,
        now,
    });
    ctx.autoscale.record(
        &key,
        now,
        decision.recommended,
        settings.scale_up_stabilization,
    );
    let size = i32::try_from(decision.size).unwrap_or(i32::MAX);
    if size != spec_size {
        write_pool_size(ctx, pool, size).await?;
        ctx.autoscale.set_size(&key, size);
    }
    if decision.direction != Direction::Hold {
        tracing::info!(pool = %key, "{}", decision.message);
        ctx.metrics
            .autoscaling_decisions
            .with_label_values(&[pool_ulid, decision.direction.label()])
            .inc();
        // The recorder folds events of the same reason and action into one series that keeps
        // the first note: the target size in the action gives each new size its own event.
        let reason = match decision.direction {
            Direction::Up => "ScaledUp",
            _ => "ScaledDown",
        };
        ctx.event(
            pool,
            EventType::Normal,
            reason,
            &format!("ScaleTo{size}"),
            decision.message.clone(),
        )
        .await;
    }
    ctx.metrics
        .autoscaling_desired
        .with_label_values(&[pool_ulid])
        .set(i64::from(size));
    if let Some(demand) = &demand {
        ctx.metrics
            .autoscaling_pending
            .with_label_values(&[pool_ulid])
            .set(i64::from(demand.pending));
        ctx.metrics
            .autoscaling_schedulable
            .with_label_values(&[pool_ulid])
            .set(i64::from(demand.schedulable));
    }
    let status = status_of(
        &decision,
        current,
        demand.as_ref(),
        floor,
        window,
        previous,
        now,
    );
    let recheck = [decision.recheck, window_change]
        .into_iter()
        .flatten()
        .min();
    Ok(Some(Scaling {
        size,
        remove_first: decision.remove,
        status: Some(status),
        condition: (
            true,
            "OwnsPoolSize",
            format!(
                "spec.autoscaling is set: the operator sets spec.poolSize between {} and {} from the runs the backend has queued, and undoes changes by kubectl scale, an HPA or KEDA",
                settings.min_pool_size, settings.max_pool_size
            ),
        ),
        recheck,
    }))
}

/// Writes `spec.poolSize` through the scale subresource, as `kubectl scale` does.
async fn write_pool_size(ctx: &Context, pool: &WorkerPool, size: i32) -> Result<(), Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let api: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &namespace);
    let params = PatchParams {
        field_manager: Some(MANAGER.into()),
        ..PatchParams::default()
    };
    api.patch_scale(
        &pool.name_any(),
        &params,
        &Patch::Merge(&json!({"spec": {"replicas": size}})),
    )
    .await
    .map_err(Error::api(
        Step::ScalePool,
        format!("{namespace}/{}", pool.name_any()),
    ))?;
    Ok(())
}

/// What the decision needs of the pool's Workers: those being deleted are left out. A Worker
/// the backend has dispatched a run to (`dispatched`, by ULID) is busy before its status says
/// so: it is neither idle nor a candidate for removal.
pub fn slots(workers: &[Worker], dispatched: Option<&BTreeSet<String>>) -> Vec<Slot> {
    workers
        .iter()
        .filter(|w| w.meta().deletion_timestamp.is_none())
        .map(|w| {
            let status = w.status.clone().unwrap_or_default();
            let dispatched_to = dispatched.is_some_and(|d| {
                w.labels()
                    .get(crate::crd::LABEL_ULID)
                    .is_some_and(|ulid| d.contains(ulid))
            });
            let busy = status.current_run.is_some() || dispatched_to;
            let created = w
                .meta()
                .creation_timestamp
                .as_ref()
                .map_or(Timestamp::UNIX_EPOCH, |t| t.0);
            let last_run = status.finished_runs.iter().map(|f| f.finished_at.0).max();
            Slot {
                name: w.name_any(),
                busy,
                leaving: !busy && status.state == Some(WorkerState::Draining),
                idle_since: last_run.map_or(created, |at| at.max(created)),
            }
        })
        .collect()
}

/// `status.autoscaling` for a decision; the times of the previous one are kept when nothing
/// else changed, so that an unchanged decision writes no status (and wakes no reconcile).
fn status_of(
    decision: &Decision,
    current: i32,
    demand: Option<&super::demand::Demand>,
    floor: u32,
    window: Option<String>,
    previous: Option<&AutoscalingStatus>,
    now: Timestamp,
) -> AutoscalingStatus {
    let to_i32 = |n: u32| i32::try_from(n).unwrap_or(i32::MAX);
    let size = to_i32(decision.size);
    let mut status = AutoscalingStatus {
        desired_pool_size: size,
        previous_pool_size: current,
        pending_runs: demand.map(|d| to_i32(d.pending)),
        schedulable_runs: demand.map(|d| to_i32(d.schedulable)),
        busy_workers: to_i32(decision.busy),
        idle_workers: to_i32(decision.idle),
        min_pool_size: to_i32(floor),
        window,
        message: decision.message.clone(),
        last_decision_time: Time(now),
        last_scale_time: if size == current {
            previous.and_then(|p| p.last_scale_time.clone())
        } else {
            Some(Time(now))
        },
    };
    if let Some(previous) = previous {
        let mut same = status.clone();
        same.last_decision_time = previous.last_decision_time.clone();
        same.last_scale_time = previous.last_scale_time.clone();
        if size == current && same == *previous {
            status = same;
        }
    }
    status
}

/// Whether the pool's `Autoscaling` condition already says this.
fn condition_says(pool: &WorkerPool, status: bool, message: &str) -> bool {
    let status = if status { "True" } else { "False" };
    pool.status
        .iter()
        .flat_map(|s| &s.conditions)
        .any(|c| c.type_ == CONDITION_TYPE && c.status == status && c.message == message)
}

/// Puts the autoscaler's part into the status the pool's reconcile is about to write: its
/// decision and the `Autoscaling` condition (which keeps its transition time while its
/// status holds).
pub fn annotate_status(
    status: &mut WorkerPoolStatus,
    scaling: &Scaling,
    previous: Option<&WorkerPoolStatus>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let (ok, reason, message) = &scaling.condition;
    let value = if *ok { "True" } else { "False" };
    let since = previous
        .iter()
        .flat_map(|p| &p.conditions)
        .find(|c| c.type_ == CONDITION_TYPE && c.status == value)
        .map_or(Time(now), |c| c.last_transition_time.clone());
    status.conditions.push(Condition {
        type_: CONDITION_TYPE.into(),
        status: value.into(),
        reason: (*reason).into(),
        message: message.clone(),
        last_transition_time: since,
        observed_generation: generation,
    });
    status.autoscaling = scaling.status.clone();
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::fixtures;

    #[test]
    fn a_worker_the_backend_dispatched_to_is_busy_before_its_status_says_so() {
        let idle = fixtures::worker().build();
        let ulid = fixtures::worker_id().to_string();
        assert!(!slots(std::slice::from_ref(&idle), None)[0].busy);
        let other = BTreeSet::from(["01HPS6K4BNB7BPHCDHDWFAMJNW".to_string()]);
        assert!(!slots(std::slice::from_ref(&idle), Some(&other))[0].busy);
        let dispatched = BTreeSet::from([ulid]);
        let slot = &slots(std::slice::from_ref(&idle), Some(&dispatched))[0];
        assert!(slot.busy && !slot.leaving, "{slot:?}");
    }
}
