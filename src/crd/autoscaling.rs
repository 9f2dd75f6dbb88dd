//! `spec.autoscaling` and `status.autoscaling` of a WorkerPool: queue-driven autoscaling built
//! into the operator (docs/autoscaling.md). The types only; the decision is
//! `controller::autoscale`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::KubeSchema;
use serde::{Deserialize, Serialize};

/// The longest list of `windows`.
pub const MAX_WINDOWS: usize = 16;

/// Queue-driven autoscaling. When set, the operator owns `spec.poolSize`: it sets it through
/// the scale subresource from the runs the backend has queued for the pool, between
/// minPoolSize and maxPoolSize, and undoes changes made by anyone else (`kubectl scale`, an
/// HPA, KEDA). When unset, `spec.poolSize` is left to the user and to the scale subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
#[x_kube(
    validation = Rule::new("self.minPoolSize <= self.maxPoolSize")
        .message("minPoolSize must not exceed maxPoolSize: lower spec.autoscaling.minPoolSize or raise spec.autoscaling.maxPoolSize")
        .field_path(".minPoolSize"),
    validation = Rule::new("self.minIdle <= self.maxPoolSize")
        .message("minIdle must not exceed maxPoolSize: the pool never has more than maxPoolSize workers, idle or busy")
        .field_path(".minIdle"),
    validation = Rule::new("!has(self.windows) || self.windows.all(w, w.minPoolSize <= self.maxPoolSize)")
        .message("a window's minPoolSize must not exceed maxPoolSize: lower spec.autoscaling.windows[].minPoolSize or raise maxPoolSize")
        .field_path(".windows")
)]
pub struct Autoscaling {
    /// minPoolSize is the fewest Workers the pool keeps, busy or idle. Defaults to 0: an idle
    /// pool costs nothing, and the first queued run scales it up.
    #[serde(default, deserialize_with = "null_as_zero")]
    #[schemars(range(min = 0), extend("default" = 0))]
    pub min_pool_size: i32,

    /// maxPoolSize is the most Workers the pool ever has, whatever is queued.
    #[schemars(range(min = 1))]
    pub max_pool_size: i32,

    /// minIdle is how many idle (warm) Workers the pool keeps beyond the busy ones and the
    /// runs that wait, so that a new run starts at once. Defaults to 0.
    #[serde(default, deserialize_with = "null_as_zero")]
    #[schemars(range(min = 0), extend("default" = 0))]
    pub min_idle: i32,

    /// scaleUpStabilization is how long the demand must call for more Workers before the pool
    /// grows: the pool grows to the smallest size asked for during this window. A Go duration
    /// such as "0s", "30s" or "2m"; unset is "0s" (grow at once).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(GO_DURATION_RULE).message(GO_DURATION_MESSAGE))]
    pub scale_up_stabilization: Option<kube::core::Duration>,

    /// scaleDownDelay is how long a Worker must have been idle before a scale-down may remove
    /// it (those idle longest go first; a busy Worker is never removed). A Go duration such
    /// as "30s" or "5m"; unset is "5m".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(GO_DURATION_RULE).message(GO_DURATION_MESSAGE))]
    pub scale_down_delay: Option<kube::core::Duration>,

    /// windows raise minPoolSize while they are open, e.g. working hours. The largest
    /// minPoolSize of the open windows applies.
    #[serde(
        default,
        deserialize_with = "null_as_empty",
        skip_serializing_if = "Vec::is_empty"
    )]
    #[schemars(length(max = 16))]
    pub windows: Vec<AutoscalingWindow>,
}

/// A time window with a minimum pool size, opened and closed by cron expressions in a time
/// zone (as KEDA's cron scaler): the window is open from an occurrence of `start` until the
/// next occurrence of `end`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct AutoscalingWindow {
    /// name of the window, for status and events (e.g. "working-hours"). Defaults to its
    /// position, "windows[0]".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,

    /// start opens the window: a five-field cron expression (minute hour day-of-month month
    /// day-of-week), e.g. "0 8 * * 1-5" for 08:00 on weekdays.
    #[schemars(length(min = 1, max = 128))]
    pub start: String,

    /// end closes the window: a five-field cron expression, e.g. "0 18 * * 1-5".
    #[schemars(length(min = 1, max = 128))]
    pub end: String,

    /// timeZone of start and end: an IANA time zone such as "Europe/Berlin". Defaults to
    /// "UTC".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,

    /// minPoolSize while the window is open.
    #[schemars(range(min = 0))]
    pub min_pool_size: i32,
}

/// The autoscaler's last decision and what it was made from.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AutoscalingStatus {
    /// The poolSize the last decision set (or kept).
    pub desired_pool_size: i32,
    /// The poolSize before the last decision.
    pub previous_pool_size: i32,
    /// Runs the backend has queued for the pool, including those waiting on a person;
    /// unset until the backend has sent its first `pool.demand`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_runs: Option<i32>,
    /// Of the pending runs, those that can start now (not waiting on a person).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedulable_runs: Option<i32>,
    /// Workers with a run.
    pub busy_workers: i32,
    /// Idle Workers.
    pub idle_workers: i32,
    /// The minimum in force: minPoolSize, or an open window's when larger.
    pub min_pool_size: i32,
    /// The open window that set the minimum, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<String>,
    /// Why, in a sentence: "scaled 2 -> 7: 5 runs pending, 0 busy, minIdle 2".
    pub message: String,
    /// When the decision was made.
    pub last_decision_time: Time,
    /// When the autoscaler last changed poolSize.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_scale_time: Option<Time>,
}

/// A Go duration as `kube::core::Duration` reads it, without a sign.
const GO_DURATION_RULE: &str = r"self.matches('^(0|([0-9]+(\\.[0-9]+)?(ns|us|ms|s|m|h))+)$')";
const GO_DURATION_MESSAGE: &str =
    r#"must be a Go duration such as "30s", "5m" or "1h30m" (units h, m, s, ms, us, ns; no days)"#;

/// `minIdle: null` reads as 0, as the apiserver (which applies the default) treats it.
fn null_as_zero<'de, D: serde::Deserializer<'de>>(d: D) -> Result<i32, D::Error> {
    Ok(Option::deserialize(d)?.unwrap_or(0))
}

fn null_as_empty<'de, D, T>(d: D) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    Ok(Option::deserialize(d)?.unwrap_or_default())
}
