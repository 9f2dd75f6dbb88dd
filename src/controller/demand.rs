//! What the autoscaler remembers between reconciles, in memory only: each pool's latest
//! demand as the backend pushed it (`pool.demand`), the recent recommendations that the
//! scale-up stabilization looks back over, and how to wake a pool's reconcile when its demand
//! changes. A restarted operator starts empty: the broker hands it the retained demand as it
//! subscribes, and until then the autoscaler does not scale down (see
//! [`super::autoscale`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use futures::channel::mpsc;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use ulid::Ulid;

use super::links::PoolKey;
use super::lock;
use crate::crd::WorkerPool;
use crate::protocol::PoolDemand;

/// The demand of one pool, as last received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    /// Runs waiting for the pool, those waiting on a person included.
    pub pending: u32,
    /// Of them, those that can start now.
    pub schedulable: u32,
    /// Workers (ULIDs) holding a run the backend dispatched that they have not accepted yet.
    pub dispatched: BTreeSet<String>,
    /// The message it came in (newer messages have larger ids).
    pub message: Ulid,
}

/// The recommendations (the size the demand asks for, before any damping) made for a pool,
/// as steps: each entry holds from its time until the next one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Recommendations {
    steps: Vec<(Timestamp, u32)>,
}

/// Steps kept at most per pool; older ones are forgotten first.
const MAX_STEPS: usize = 256;

impl Recommendations {
    /// Records the recommendation made at `at`, forgetting the steps that ended before the
    /// last `window`.
    pub fn record(&mut self, at: Timestamp, value: u32, window: Duration) {
        if self.steps.last().map(|(_, v)| *v) != Some(value) {
            self.steps.push((at, value));
        }
        let window_start = at - jiff_span(window);
        // Step i ends where step i+1 starts; it is still needed if it ends after the start.
        while self.steps.len() > 1 && self.steps[1].0 <= window_start {
            self.steps.remove(0);
        }
        if self.steps.len() > MAX_STEPS {
            let extra = self.steps.len() - MAX_STEPS;
            self.steps.drain(..extra);
        }
    }

    /// The smallest recommendation in force during the last `window` before `now`, counting
    /// `now_value` as the one in force now and `before` as the one in force before the first
    /// recorded step (the pool's size, when nothing was recorded that long ago); and how soon
    /// that smallest value may rise (when the lowest step leaves the window).
    pub fn lowest(
        &self,
        now: Timestamp,
        window: Duration,
        now_value: u32,
        before: u32,
    ) -> (u32, Option<Duration>) {
        if window.is_zero() {
            return (now_value, None);
        }
        let window_start = now - jiff_span(window);
        // (value, end of the step); `None` ends at +infinity (the value now).
        let mut segments: Vec<(u32, Option<Timestamp>)> = Vec::new();
        segments.push((before, Some(self.steps.first().map_or(now, |(t, _)| *t))));
        for (i, (_, value)) in self.steps.iter().enumerate() {
            let end = self.steps.get(i + 1).map_or(now, |(t, _)| *t);
            segments.push((*value, Some(end)));
        }
        segments.push((now_value, None));
        let included = segments
            .iter()
            .filter(|(_, end)| end.is_none_or(|end| end > window_start));
        let lowest = included.clone().map(|(v, _)| *v).min().unwrap_or(now_value);
        // The smallest value holds until the last step of that value has left the window.
        let rises_in = included
            .filter(|(v, _)| *v == lowest && lowest < now_value)
            .filter_map(|(_, end)| *end)
            .map(|end| end + jiff_span(window))
            .filter_map(|leaves| Duration::try_from(leaves.duration_since(now)).ok())
            .max();
        (lowest, rises_in)
    }
}

fn jiff_span(d: Duration) -> k8s_openapi::jiff::SignedDuration {
    k8s_openapi::jiff::SignedDuration::try_from(d).unwrap_or(k8s_openapi::jiff::SignedDuration::MAX)
}

/// A pool controller's way to be told to reconcile a pool, and the namespace it watches
/// (`None`: all).
type Nudge = (Option<String>, mpsc::UnboundedSender<ObjectRef<WorkerPool>>);

/// The autoscaler's memory of every pool.
#[derive(Default)]
pub struct AutoscaleMemory {
    demands: Mutex<HashMap<PoolKey, Demand>>,
    recommendations: Mutex<HashMap<PoolKey, Recommendations>>,
    /// The poolSize this process last set per pool: its own write, even when the status
    /// that records it could not be written after it.
    set: Mutex<HashMap<PoolKey, i32>>,
    nudges: Mutex<Vec<Nudge>>,
}

impl AutoscaleMemory {
    /// Takes a demand pushed by the backend, unless a newer one was taken already (a
    /// redelivery, or the retained copy of one already handled), and wakes the pool's
    /// reconcile when it changed what is known.
    pub fn on_demand(&self, pool: &PoolKey, message: Ulid, demand: &PoolDemand) {
        let new = Demand {
            pending: demand.pending_runs,
            schedulable: demand.schedulable_runs,
            dispatched: demand.dispatched_workers.iter().cloned().collect(),
            message,
        };
        {
            let mut demands = lock(&self.demands);
            match demands.get(pool) {
                Some(known) if known.message >= message => return,
                // Only the dispatched workers changed: kept, but no reconcile. A run leaves
                // the queue for a worker with the numbers changing (a nudge then), and leaves
                // the list when its Worker turns BUSY, which wakes the pool by itself.
                Some(known)
                    if (known.pending, known.schedulable) == (new.pending, new.schedulable) =>
                {
                    demands.insert(pool.clone(), new);
                    return;
                }
                _ => {
                    demands.insert(pool.clone(), new);
                }
            }
        }
        tracing::debug!(%pool, pending = demand.pending_runs, schedulable = demand.schedulable_runs, "pool demand changed");
        self.nudge(pool);
    }

    /// The pool's latest demand, if the backend has sent one since this process started.
    pub fn demand(&self, pool: &PoolKey) -> Option<Demand> {
        lock(&self.demands).get(pool).cloned()
    }

    /// The pool's recent recommendations.
    pub fn recommendations(&self, pool: &PoolKey) -> Recommendations {
        lock(&self.recommendations)
            .get(pool)
            .cloned()
            .unwrap_or_default()
    }

    /// Records a recommendation for the pool.
    pub fn record(&self, pool: &PoolKey, at: Timestamp, value: u32, window: Duration) {
        lock(&self.recommendations)
            .entry(pool.clone())
            .or_default()
            .record(at, value, window);
    }

    /// Remembers the poolSize this process set.
    pub fn set_size(&self, pool: &PoolKey, size: i32) {
        lock(&self.set).insert(pool.clone(), size);
    }

    /// The poolSize this process last set, if any.
    pub fn size_set(&self, pool: &PoolKey) -> Option<i32> {
        lock(&self.set).get(pool).copied()
    }

    /// Forgets what the autoscaler decided for a pool (no longer autoscaled); its demand is
    /// kept, as the backend sends it again only when it changes.
    pub fn forget_decisions(&self, pool: &PoolKey) {
        lock(&self.recommendations).remove(pool);
        lock(&self.set).remove(pool);
    }

    /// Forgets a deleted pool.
    pub fn forget(&self, pool: &PoolKey) {
        lock(&self.demands).remove(pool);
        self.forget_decisions(pool);
    }

    /// A stream of pools to reconcile because their demand changed, for the pool controller
    /// of `namespace` (`None`: every namespace).
    pub fn nudges(
        &self,
        namespace: Option<String>,
    ) -> mpsc::UnboundedReceiver<ObjectRef<WorkerPool>> {
        let (tx, rx) = mpsc::unbounded();
        lock(&self.nudges).push((namespace, tx));
        rx
    }

    fn nudge(&self, pool: &PoolKey) {
        let target = ObjectRef::<WorkerPool>::new(&pool.name).within(&pool.namespace);
        lock(&self.nudges).retain(|(namespace, tx)| {
            if namespace.as_ref().is_some_and(|ns| *ns != pool.namespace) {
                return !tx.is_closed();
            }
            tx.unbounded_send(target.clone()).is_ok()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + seconds).expect("a time")
    }

    const WINDOW: Duration = Duration::from_secs(60);

    #[test]
    fn without_a_window_the_recommendation_now_holds() {
        let mut recent = Recommendations::default();
        recent.record(at(0), 2, Duration::ZERO);
        assert_eq!(recent.lowest(at(1), Duration::ZERO, 9, 2), (9, None));
    }

    #[test]
    fn a_rise_holds_only_once_it_lasted_the_whole_window() {
        let mut recent = Recommendations::default();
        recent.record(at(0), 2, WINDOW);
        recent.record(at(10), 9, WINDOW);
        // At 30 s the 2 of 0..10 s is inside the window: the pool stays at 2 for 40 s more.
        assert_eq!(
            recent.lowest(at(30), WINDOW, 9, 2),
            (2, Some(Duration::from_secs(40)))
        );
        // At 70 s the window starts at 10 s: only 9s are left.
        assert_eq!(recent.lowest(at(70), WINDOW, 9, 2).0, 9);
    }

    #[test]
    fn a_short_dip_inside_the_window_keeps_the_smallest_value() {
        let mut recent = Recommendations::default();
        recent.record(at(0), 5, WINDOW);
        recent.record(at(20), 3, WINDOW);
        recent.record(at(25), 8, WINDOW);
        assert_eq!(
            recent.lowest(at(40), WINDOW, 8, 5),
            (3, Some(Duration::from_secs(45)))
        );
    }

    #[test]
    fn before_the_first_record_the_pool_size_is_what_was_in_force() {
        let mut recent = Recommendations::default();
        recent.record(at(0), 7, WINDOW);
        assert_eq!(
            recent.lowest(at(5), WINDOW, 7, 1),
            (1, Some(Duration::from_secs(55)))
        );
        assert_eq!(recent.lowest(at(61), WINDOW, 7, 1).0, 7);
    }

    #[test]
    fn steps_older_than_the_window_are_forgotten() {
        let mut recent = Recommendations::default();
        for (i, value) in [1, 2, 3, 4].into_iter().enumerate() {
            recent.record(at(i as i64 * 100), value, WINDOW);
        }
        // 3 held until 300 s, inside the window that starts at 240 s.
        assert_eq!(recent.steps, [(at(200), 3), (at(300), 4)]);
    }

    #[test]
    fn an_older_or_repeated_demand_is_not_taken() {
        let memory = AutoscaleMemory::default();
        let pool = PoolKey {
            namespace: "ns".into(),
            name: "p".into(),
        };
        let mut wake = memory.nudges(Some("ns".into()));
        let old = Ulid::from_parts(1, 0);
        let new = Ulid::from_parts(2, 0);
        let demand = |pending, schedulable| PoolDemand {
            pending_runs: pending,
            schedulable_runs: schedulable,
            ..PoolDemand::default()
        };
        memory.on_demand(&pool, new, &demand(5, 3));
        memory.on_demand(&pool, old, &demand(9, 9));
        memory.on_demand(&pool, new, &demand(9, 9));
        let known = memory.demand(&pool).expect("a demand");
        assert_eq!((known.pending, known.schedulable), (5, 3));
        assert!(wake.try_recv().is_ok(), "a nudge");
        assert!(wake.try_recv().is_err(), "one nudge, for the one change");

        // Only the dispatched workers changed: taken (the next decision sees them), no nudge.
        let worker = "01HPS6K4BNB7BPHCDHDWFAMJNV".to_string();
        let dispatched = PoolDemand {
            dispatched_workers: vec![worker.clone()],
            ..demand(5, 3)
        };
        memory.on_demand(&pool, Ulid::from_parts(3, 0), &dispatched);
        let known = memory.demand(&pool).expect("a demand");
        assert_eq!(known.dispatched, BTreeSet::from([worker]));
        assert!(
            wake.try_recv().is_err(),
            "no nudge for the dispatched list alone"
        );
    }
}
