//! What a pool needs done to its Workers: pure, so the scaling rules are table-tested.
//!
//! The rules: a pool keeps exactly `poolSize` active Workers. Scaling up first takes back
//! Workers that are DRAINING (they are still registered and will be free soon), then creates
//! new ones. Scaling down removes IDLE Workers first (unregistered before registered, newest
//! first) and never deletes a BUSY one: a busy Worker is marked DRAINING and removed by the
//! worker controller when its run ends.

use crate::crd::WorkerState;

/// What the planner needs to know of one Worker.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WorkerView {
    pub name: String,
    pub state: WorkerState,
    /// The worker has a run (its Pod may still be starting or finishing).
    pub has_run: bool,
    pub registered: bool,
    /// Being deleted already (deletionTimestamp set): neither counted nor touched.
    pub deleting: bool,
    /// Creation time, seconds since the epoch; newer Workers go first on scale-down.
    pub created: i64,
    /// Chosen by the autoscaler to go first on scale-down (idle the longest).
    pub leave_first: bool,
}

/// The changes that bring a pool to its size.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Plan {
    /// How many new Workers to create.
    pub create: usize,
    /// Idle Workers to delete.
    pub delete: Vec<String>,
    /// Busy Workers to mark DRAINING.
    pub drain: Vec<String>,
    /// DRAINING Workers to take back (mark IDLE or BUSY again) instead of creating new ones.
    pub undrain: Vec<String>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self == &Plan::default()
    }
}

/// Plans the Workers of a pool of `desired` size.
pub fn plan_workers(desired: usize, workers: &[WorkerView]) -> Plan {
    let live: Vec<&WorkerView> = workers.iter().filter(|w| !w.deleting).collect();
    let (draining, mut active): (Vec<&WorkerView>, Vec<&WorkerView>) = live
        .into_iter()
        .partition(|w| w.state == WorkerState::Draining);
    let mut plan = Plan::default();

    if active.len() < desired {
        let mut reusable: Vec<&WorkerView> = draining.clone();
        reusable.sort_by_key(|w| w.has_run); // those whose run ended are free at once
        let missing = desired - active.len();
        plan.undrain = reusable
            .iter()
            .take(missing)
            .map(|w| w.name.clone())
            .collect();
        plan.create = missing - plan.undrain.len();
    } else if active.len() > desired {
        // Cheapest to remove first: idle before busy, the autoscaler's choice first,
        // unregistered before registered, newest first.
        active.sort_by_key(|w| {
            (
                w.has_run,
                !w.leave_first,
                w.registered,
                std::cmp::Reverse(w.created),
            )
        });
        for worker in active.iter().take(active.len() - desired) {
            if worker.has_run {
                plan.drain.push(worker.name.clone());
            } else {
                plan.delete.push(worker.name.clone());
            }
        }
    }
    // A DRAINING Worker whose run has ended and that is not being taken back is done.
    plan.delete.extend(
        draining
            .iter()
            .filter(|w| !w.has_run && !plan.undrain.contains(&w.name))
            .map(|w| w.name.clone()),
    );
    plan
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(name: &str, state: WorkerState, created: i64) -> WorkerView {
        WorkerView {
            name: name.into(),
            state,
            has_run: state != WorkerState::Idle,
            registered: true,
            deleting: false,
            created,
            leave_first: false,
        }
    }

    use WorkerState::{Busy, Draining, Idle};

    #[test]
    fn scale_up_from_nothing_creates_every_worker() {
        assert_eq!(
            plan_workers(3, &[]),
            Plan {
                create: 3,
                ..Plan::default()
            }
        );
    }

    #[test]
    fn a_pool_of_the_right_size_needs_nothing() {
        let workers = [worker("a", Idle, 1), worker("b", Busy, 2)];
        assert!(plan_workers(2, &workers).is_empty());
    }

    #[test]
    fn scale_down_removes_idle_workers_newest_first() {
        let workers = [
            worker("old-idle", Idle, 1),
            worker("new-idle", Idle, 3),
            worker("busy", Busy, 2),
        ];
        assert_eq!(
            plan_workers(2, &workers),
            Plan {
                delete: vec!["new-idle".into()],
                ..Plan::default()
            }
        );
    }

    #[test]
    fn scale_down_never_deletes_a_busy_worker() {
        let workers = [
            worker("idle", Idle, 1),
            worker("busy-1", Busy, 2),
            worker("busy-2", Busy, 3),
        ];
        let plan = plan_workers(0, &workers);
        assert_eq!(plan.delete, ["idle"]);
        assert_eq!(plan.drain, ["busy-2", "busy-1"]);
        assert_eq!(plan.create, 0);
    }

    #[test]
    fn unregistered_idle_workers_go_before_registered_ones() {
        let mut unregistered = worker("unregistered", Idle, 1);
        unregistered.registered = false;
        let workers = [worker("registered", Idle, 2), unregistered];
        assert_eq!(plan_workers(1, &workers).delete, ["unregistered"]);
    }

    #[test]
    fn scale_up_takes_back_draining_workers_before_creating() {
        let workers = [worker("busy", Busy, 1), worker("draining", Draining, 2)];
        assert_eq!(
            plan_workers(3, &workers),
            Plan {
                create: 1,
                undrain: vec!["draining".into()],
                ..Plan::default()
            }
        );
    }

    #[test]
    fn a_draining_worker_whose_run_ended_is_deleted() {
        let mut finished = worker("finished", Draining, 1);
        finished.has_run = false;
        let workers = [
            worker("idle", Idle, 2),
            finished,
            worker("still-busy", Draining, 3),
        ];
        let plan = plan_workers(1, &workers);
        assert_eq!(plan.delete, ["finished"]);
        assert!(plan.undrain.is_empty() && plan.drain.is_empty() && plan.create == 0);
    }

    #[test]
    fn workers_being_deleted_are_replaced_and_left_alone() {
        let mut leaving = worker("leaving", Idle, 1);
        leaving.deleting = true;
        let plan = plan_workers(1, &[leaving]);
        assert_eq!(plan.create, 1);
        assert!(plan.delete.is_empty());
    }

    #[test]
    fn the_autoscalers_choice_goes_first_on_scale_down() {
        let mut longest_idle = worker("longest-idle", Idle, 1);
        longest_idle.leave_first = true;
        let workers = [
            longest_idle,
            worker("newest", Idle, 3),
            worker("busy", Busy, 2),
        ];
        assert_eq!(plan_workers(2, &workers).delete, ["longest-idle"]);
    }
}
