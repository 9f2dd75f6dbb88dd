//! The autoscaling decision: pure, so every rule is table-tested.
//!
//! - recommended = clamp(busy + schedulable pending + minIdle, floor, maxPoolSize), where the
//!   floor is minPoolSize or an open window's minimum, whichever is larger;
//! - growing: to the smallest recommendation of the last `scaleUpStabilization` (at once when
//!   it is 0), and at once to the floor;
//! - shrinking: by the slots that have no Worker, and by at most the number of idle Workers
//!   that have been idle for `scaleDownDelay`, naming them, idle longest first; a busy
//!   Worker is never chosen;
//! - above maxPoolSize (lowered, or set by someone else): down to it at once (busy Workers
//!   beyond it are drained by the pool's plan, never killed);
//! - until the backend's first demand since this process started, nothing is removed.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use super::super::demand::{Demand, Recommendations};
use super::settings::Settings;

/// What the decision needs to know of one Worker of the pool (not one being deleted).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Slot {
    pub name: String,
    /// It has a run (BUSY, or DRAINING until its run ends).
    pub busy: bool,
    /// DRAINING with no run left: about to go, counted neither busy nor idle.
    pub leaving: bool,
    /// Since when it has been idle: its last run's end, or its creation.
    pub idle_since: Timestamp,
}

/// The minimum in force now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Floor {
    pub size: u32,
    /// The open window that set it, if one did.
    pub window: Option<String>,
}

/// Everything a decision is made from.
#[derive(Clone, Debug)]
pub struct Inputs<'a> {
    pub settings: &'a Settings,
    pub floor: Floor,
    /// `spec.poolSize` as the autoscaler last left it.
    pub current: u32,
    pub demand: Option<Demand>,
    pub workers: &'a [Slot],
    pub recent: &'a Recommendations,
    pub now: Timestamp,
}

/// Which way a decision went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    Up,
    Down,
    Hold,
}

impl Direction {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::Hold => "hold",
        }
    }
}

/// A decision.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// The poolSize to set.
    pub size: u32,
    pub direction: Direction,
    /// What the demand asks for now, before stabilization and the scale-down delay.
    pub recommended: u32,
    /// Idle Workers to remove first, idle longest first.
    pub remove: Vec<String>,
    pub busy: u32,
    pub idle: u32,
    /// When to decide again although nothing else changes (a delay or a window ends).
    pub recheck: Option<Duration>,
    /// Why, in a sentence.
    pub message: String,
}

/// Decides the pool's size.
pub fn decide(inputs: &Inputs) -> Decision {
    let settings = inputs.settings;
    let max = settings.max_pool_size;
    let live = inputs.workers.iter().filter(|w| !w.leaving);
    let busy = count(live.clone().filter(|w| w.busy).count());
    let idle: Vec<&Slot> = live.filter(|w| !w.busy).collect();
    let schedulable = inputs.demand.as_ref().map_or(0, |d| d.schedulable);
    let floor = inputs.floor.size.min(max);
    let wanted = busy
        .saturating_add(schedulable)
        .saturating_add(settings.min_idle);
    let recommended = wanted.clamp(floor, max);
    let current = inputs.current;

    let mut remove = Vec::new();
    let mut recheck = None;
    let mut held_back = String::new();
    let size = if current > max {
        max
    } else if recommended > current {
        let (stable, rises_in) = inputs.recent.lowest(
            inputs.now,
            settings.scale_up_stabilization,
            recommended,
            current,
        );
        recheck = rises_in;
        if stable < recommended {
            held_back = format!(
                "; growing to {recommended} once asked for during scaleUpStabilization {}",
                human(settings.scale_up_stabilization)
            );
        }
        stable.max(floor).max(current)
    } else if recommended < current && inputs.demand.is_none() {
        held_back = "; not shrinking before the backend's first pool.demand".into();
        current
    } else if recommended < current {
        let delay = settings.scale_down_delay;
        let mut candidates = idle.clone();
        candidates.sort_by_key(|w| (w.idle_since, w.name.clone()));
        let (ready, waiting): (Vec<&&Slot>, Vec<&&Slot>) = candidates
            .iter()
            .partition(|w| idle_for(w, inputs.now) >= delay);
        // Slots of poolSize without a Worker (not created yet, or leaving) go first: they
        // cost nothing to give up.
        let missing = current.saturating_sub(busy + count(idle.len()));
        let size = recommended.max(
            current
                .saturating_sub(missing)
                .saturating_sub(count(ready.len())),
        );
        remove = ready
            .iter()
            .take(usize::try_from((current - size).saturating_sub(missing)).unwrap_or(0))
            .map(|w| w.name.clone())
            .collect();
        if size > recommended {
            recheck = waiting
                .iter()
                .map(|w| delay.saturating_sub(idle_for(w, inputs.now)))
                .min();
            held_back = format!(
                "; {} more once idle for scaleDownDelay {}",
                size - recommended,
                human(delay)
            );
        }
        size
    } else {
        current
    };
    let direction = match size.cmp(&current) {
        std::cmp::Ordering::Greater => Direction::Up,
        std::cmp::Ordering::Less => Direction::Down,
        std::cmp::Ordering::Equal => Direction::Hold,
    };
    let message = message(inputs, direction, size, busy, floor, (wanted, recommended)) + &held_back;
    Decision {
        size,
        direction,
        recommended,
        remove,
        busy,
        idle: count(idle.len()),
        recheck,
        message,
    }
}

fn message(
    inputs: &Inputs,
    direction: Direction,
    size: u32,
    busy: u32,
    floor: u32,
    (wanted, recommended): (u32, u32),
) -> String {
    let head = match direction {
        Direction::Hold => format!("kept {size}"),
        _ => format!("scaled {} -> {size}", inputs.current),
    };
    let pending = match &inputs.demand {
        None => "no demand from the backend yet".to_string(),
        Some(d) => {
            let waiting = d.pending.saturating_sub(d.schedulable);
            let runs = if d.schedulable == 1 { "run" } else { "runs" };
            if waiting > 0 {
                format!(
                    "{} {runs} pending ({waiting} more wait on a person)",
                    d.schedulable
                )
            } else {
                format!("{} {runs} pending", d.schedulable)
            }
        }
    };
    let mut text = format!(
        "{head}: {pending}, {busy} busy, minIdle {}",
        inputs.settings.min_idle
    );
    if recommended == floor && floor > 0 {
        match &inputs.floor.window {
            Some(window) => text += &format!(", window {window} keeps at least {floor}"),
            None => text += &format!(", minPoolSize {floor}"),
        }
    }
    let max = inputs.settings.max_pool_size;
    if size == max && (wanted > max || inputs.current > max) {
        text += &format!(", maxPoolSize {max}");
    }
    text
}

fn idle_for(worker: &Slot, now: Timestamp) -> Duration {
    Duration::try_from(now.duration_since(worker.idle_since)).unwrap_or(Duration::ZERO)
}

fn count(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

/// A duration as a user wrote it: "30s", "5m", "1h30m".
fn human(d: Duration) -> String {
    let secs = d.as_secs();
    match (secs / 3600, secs % 3600 / 60, secs % 60) {
        (0, 0, s) => format!("{s}s"),
        (0, m, 0) => format!("{m}m"),
        (0, m, s) => format!("{m}m{s}s"),
        (h, 0, 0) => format!("{h}h"),
        (h, m, s) => format!("{h}h{m}m{s}s"),
    }
}

#[cfg(test)]
#[path = "decide_tests.rs"]
mod tests;
