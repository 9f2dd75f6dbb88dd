//! Evaluation slots: how the hook pipelines of many pools share the process.
//!
//! Hooks are CPU-bound and each call may hold a plugin's memory cap, so the process evaluates
//! at most `total` pipelines at once. So that one pool's slow hooks cannot hold all of them,
//! a pool may use at most `per_pool` (by default half): its other runs wait on the pool's own
//! queue, not the process's, and another pool's run takes the free slot. A run waits at most
//! `wait` in all; then it is denied, saying so, rather than left waiting.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// How many evaluations at once, per pool, and how long a run waits for its slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotLimits {
    pub total: usize,
    pub per_pool: usize,
    pub wait: Duration,
}

impl SlotLimits {
    /// `total` 0 means one per core (at least 2, so that one pool never has them all);
    /// `per_pool` 0 means half of `total` (at least 1).
    pub fn new(total: usize, per_pool: usize, wait: Duration) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let total = if total == 0 { cores.max(2) } else { total };
        let per_pool = match per_pool {
            0 => (total / 2).max(1),
            n => n.min(total),
        };
        Self {
            total,
            per_pool,
            wait,
        }
    }
}

impl Default for SlotLimits {
    fn default() -> Self {
        Self::new(0, 0, Duration::from_secs(30))
    }
}

/// A run waited longer than the limit for its evaluation slot.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
#[error(
    "waited {}s for a hook evaluation slot (this pool may evaluate {per_pool} run(s) at once, the operator {total}: limits.maxConcurrentEvaluationsPerPool and limits.maxConcurrentEvaluations; its slow hooks hold them); the run is denied rather than left waiting",
    waited.as_secs()
)]
pub struct SlotTimeout {
    pub waited: Duration,
    pub per_pool: usize,
    pub total: usize,
}

/// The process's slots and each pool's share of them.
#[derive(Debug)]
pub struct EvaluationSlots {
    limits: SlotLimits,
    total: Arc<Semaphore>,
    /// By scope; a pool with no run waiting or evaluating has no entry alive.
    pools: Mutex<HashMap<String, Weak<Semaphore>>>,
}

/// A slot, held while a pipeline evaluates.
#[derive(Debug)]
pub struct Slot {
    _total: OwnedSemaphorePermit,
    _pool: OwnedSemaphorePermit,
}

impl EvaluationSlots {
    pub fn new(limits: SlotLimits) -> Arc<Self> {
        Arc::new(Self {
            limits,
            total: Arc::new(Semaphore::new(limits.total.max(1))),
            pools: Mutex::default(),
        })
    }

    /// The slots of pipelines that were given none (`render`, tests): the defaults.
    pub fn process_default() -> Arc<Self> {
        static DEFAULT: LazyLock<Arc<EvaluationSlots>> =
            LazyLock::new(|| EvaluationSlots::new(SlotLimits::default()));
        DEFAULT.clone()
    }

    pub fn limits(&self) -> SlotLimits {
        self.limits
    }

    /// Waits (at most the limit) for a slot of `scope`'s share, then of the process.
    pub async fn acquire(&self, scope: &str) -> Result<Slot, SlotTimeout> {
        let pool = self.pool(scope);
        let timeout = SlotTimeout {
            waited: self.limits.wait,
            per_pool: self.limits.per_pool,
            total: self.limits.total,
        };
        let slot = async {
            // The pool's share first: a pool's excess runs wait here, holding nothing.
            let pool = pool.acquire_owned().await.ok()?;
            let total = self.total.clone().acquire_owned().await.ok()?;
            Some(Slot {
                _total: total,
                _pool: pool,
            })
        };
        match tokio::time::timeout(self.limits.wait, slot).await {
            Ok(Some(slot)) => Ok(slot),
            Ok(None) | Err(_) => Err(timeout),
        }
    }

    fn pool(&self, scope: &str) -> Arc<Semaphore> {
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(pool) = pools.get(scope).and_then(Weak::upgrade) {
            return pool;
        }
        pools.retain(|_, weak| weak.strong_count() > 0);
        let pool = Arc::new(Semaphore::new(self.limits.per_pool.max(1)));
        pools.insert(scope.to_string(), Arc::downgrade(&pool));
        pool
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn by_default_a_pool_gets_half_of_the_slots_and_never_all() {
        let limits = SlotLimits::new(2, 0, Duration::from_secs(1));
        assert_eq!((limits.total, limits.per_pool), (2, 1));
        let limits = SlotLimits::new(8, 0, Duration::from_secs(1));
        assert_eq!((limits.total, limits.per_pool), (8, 4));
        assert!(SlotLimits::new(0, 0, Duration::from_secs(1)).total >= 2);
        assert_eq!(SlotLimits::new(4, 9, Duration::from_secs(1)).per_pool, 4);
    }

    #[tokio::test]
    async fn a_busy_pool_waits_on_its_own_share_and_another_pool_goes_on() {
        let slots = EvaluationSlots::new(SlotLimits::new(2, 1, Duration::from_millis(200)));
        let held = slots.acquire("team-a/a").await.unwrap();
        let err = slots.acquire("team-a/a").await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "waited 0s for a hook evaluation slot (this pool may evaluate 1 run(s) at once, the operator 2: limits.maxConcurrentEvaluationsPerPool and limits.maxConcurrentEvaluations; its slow hooks hold them); the run is denied rather than left waiting"
        );
        let other = slots.acquire("team-b/b").await.unwrap();
        drop((held, other));
        slots.acquire("team-a/a").await.unwrap();
    }
}
