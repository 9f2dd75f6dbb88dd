//! The controller's metrics: the four of the seed, with their exact names and buckets, plus run
//! start-up latency, run outcomes, reconcile errors and the autoscaler's decisions.

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

#[derive(Clone)]
pub struct ControllerMetrics {
    pub worker_creation_duration: Histogram,
    pub worker_creation_errors: IntCounter,
    pub worker_idle: IntGaugeVec,
    pub worker_total: IntGaugeVec,
    pub run_startup_duration: HistogramVec,
    pub run_outcomes: IntCounterVec,
    pub reconcile_errors: IntCounterVec,
    /// The poolSize the autoscaler set, per autoscaled pool.
    pub autoscaling_desired: IntGaugeVec,
    /// Runs the backend has queued for an autoscaled pool (those waiting on a person too).
    pub autoscaling_pending: IntGaugeVec,
    /// Of them, those that can start now.
    pub autoscaling_schedulable: IntGaugeVec,
    /// Autoscaling decisions that changed poolSize, by direction (up, down).
    pub autoscaling_decisions: IntCounterVec,
}

impl ControllerMetrics {
    pub fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = Self::unregistered()?;
        registry.register(Box::new(metrics.worker_creation_duration.clone()))?;
        registry.register(Box::new(metrics.worker_creation_errors.clone()))?;
        registry.register(Box::new(metrics.worker_idle.clone()))?;
        registry.register(Box::new(metrics.worker_total.clone()))?;
        registry.register(Box::new(metrics.run_startup_duration.clone()))?;
        registry.register(Box::new(metrics.run_outcomes.clone()))?;
        registry.register(Box::new(metrics.reconcile_errors.clone()))?;
        registry.register(Box::new(metrics.autoscaling_desired.clone()))?;
        registry.register(Box::new(metrics.autoscaling_pending.clone()))?;
        registry.register(Box::new(metrics.autoscaling_schedulable.clone()))?;
        registry.register(Box::new(metrics.autoscaling_decisions.clone()))?;
        Ok(metrics)
    }

    /// The metrics without a registry (tests, `render`).
    pub fn unregistered() -> Result<Self, prometheus::Error> {
        Ok(Self {
            worker_creation_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "spacelift_workerpool_controller_worker_creation_duration_seconds",
                    "Time in seconds needed to create a new worker",
                )
                .buckets(vec![0.5, 1.0, 2.0, 4.0, 10.0]),
            )?,
            worker_creation_errors: IntCounter::new(
                "spacelift_workerpool_controller_worker_creation_errors_total",
                "Total number of worker creation errors",
            )?,
            worker_idle: IntGaugeVec::new(
                Opts::new(
                    "spacelift_workerpool_controller_worker_idle_total",
                    "Number of idle worker",
                ),
                &["pool_ulid"],
            )?,
            worker_total: IntGaugeVec::new(
                Opts::new(
                    "spacelift_workerpool_controller_worker_total",
                    "Total number of workers",
                ),
                &["pool_ulid"],
            )?,
            run_startup_duration: HistogramVec::new(
                HistogramOpts::new(
                    "workerpool_run_startup_duration_seconds",
                    "Time from receiving a run schedule to its Pod running",
                )
                .buckets(vec![
                    0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
                ]),
                &["pool_ulid"],
            )?,
            run_outcomes: IntCounterVec::new(
                Opts::new(
                    "workerpool_run_outcomes_total",
                    "Run stage attempts that ended, by outcome and failure cause",
                ),
                &["pool_ulid", "outcome", "cause"],
            )?,
            reconcile_errors: IntCounterVec::new(
                Opts::new(
                    "workerpool_reconcile_errors_total",
                    "Reconciliations that failed, by controller and error",
                ),
                &["controller", "error"],
            )?,
            autoscaling_desired: IntGaugeVec::new(
                Opts::new(
                    "workerpool_autoscaling_desired_pool_size",
                    "The poolSize the autoscaler set",
                ),
                &["pool_ulid"],
            )?,
            autoscaling_pending: IntGaugeVec::new(
                Opts::new(
                    "workerpool_autoscaling_pending_runs",
                    "Runs queued for the pool, as the backend last said (those waiting on a person too)",
                ),
                &["pool_ulid"],
            )?,
            autoscaling_schedulable: IntGaugeVec::new(
                Opts::new(
                    "workerpool_autoscaling_schedulable_runs",
                    "Of the pending runs, those that can start now",
                ),
                &["pool_ulid"],
            )?,
            autoscaling_decisions: IntCounterVec::new(
                Opts::new(
                    "workerpool_autoscaling_decisions_total",
                    "Autoscaling decisions that changed poolSize, by direction",
                ),
                &["pool_ulid", "direction"],
            )?,
        })
    }

    /// Forgets the per-pool series of a pool that is gone.
    pub fn forget_pool(&self, pool_ulid: &str) {
        let _ = self.worker_idle.remove_label_values(&[pool_ulid]);
        let _ = self.worker_total.remove_label_values(&[pool_ulid]);
        self.forget_autoscaling(pool_ulid);
    }

    /// Forgets the autoscaling series of a pool (gone, or no longer autoscaled).
    pub fn forget_autoscaling(&self, pool_ulid: &str) {
        let _ = self.autoscaling_desired.remove_label_values(&[pool_ulid]);
        let _ = self.autoscaling_pending.remove_label_values(&[pool_ulid]);
        let _ = self
            .autoscaling_schedulable
            .remove_label_values(&[pool_ulid]);
        for direction in ["up", "down"] {
            let _ = self
                .autoscaling_decisions
                .remove_label_values(&[pool_ulid, direction]);
        }
    }
}
