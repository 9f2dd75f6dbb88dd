//! Per-hook metrics. Labels: `scope` (`cluster` or `<namespace>/<pool>`), `stage`
//! (`clusterPlugin`, `poolPlugin`, `poolPolicy`, `clusterPolicy`, `invariants`) and `hook`.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, Opts, Registry};

const PREFIX: &str = "spacelift_workerpool_controller_hook";

/// The hook pipeline's metrics. Create once, [`HookMetrics::register`] into the operator's
/// registry, and share behind an `Arc`.
#[derive(Clone, Debug)]
pub struct HookMetrics {
    /// Duration of one hook call (plugin: instantiate + call; policy: evaluation).
    pub call_duration: HistogramVec,
    /// Runs denied, by the hook that denied them.
    pub denials: IntCounterVec,
    /// Hook failures (trap, memory, timeout, bad output, not loaded ...), by `kind`.
    pub errors: IntCounterVec,
    /// Hook calls that hit their deadline (also counted in `errors`).
    pub timeouts: IntCounterVec,
    /// Loads (compile, validate settings, parse) that failed, by hook.
    pub load_failures: IntCounterVec,
    /// Runs denied because they waited too long for an evaluation slot, by scope.
    pub slot_timeouts: IntCounterVec,
    /// The label values used so far, by scope, so that a deleted pool's series can be removed
    /// ([`HookMetrics::forget_scope`]): prometheus cannot remove by a partial match.
    series: Arc<Mutex<HashMap<String, BTreeSet<Series>>>>,
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Series {
    /// `scope`, `stage`, `hook`: call duration, denials, timeouts.
    Call(String, String),
    /// `scope`, `stage`, `hook`, `kind`.
    Error(String, String, String),
    /// `scope`, `hook`.
    Load(String),
    /// `scope` alone.
    Slot,
}

impl Default for HookMetrics {
    fn default() -> Self {
        Self::new()
    }
}

impl HookMetrics {
    /// Creates the metrics without registering them (for `render` and tests).
    pub fn new() -> Self {
        let counter = |name: &str, help: &str, labels: &[&str]| {
            IntCounterVec::new(Opts::new(format!("{PREFIX}_{name}"), help), labels)
                .unwrap_or_else(|e| unreachable!("static metric definition: {e}"))
        };
        Self {
            call_duration: HistogramVec::new(
                HistogramOpts::new(
                    format!("{PREFIX}_call_duration_seconds"),
                    "Time in seconds one hook call took",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    1.0,
                ]),
                &["scope", "stage", "hook"],
            )
            .unwrap_or_else(|e| unreachable!("static metric definition: {e}")),
            denials: counter(
                "denials_total",
                "Total number of runs denied by a hook",
                &["scope", "stage", "hook"],
            ),
            errors: counter(
                "errors_total",
                "Total number of hook failures",
                &["scope", "stage", "hook", "kind"],
            ),
            timeouts: counter(
                "timeouts_total",
                "Total number of hook calls that hit their deadline",
                &["scope", "stage", "hook"],
            ),
            load_failures: counter(
                "load_failures_total",
                "Total number of hook versions that failed to load",
                &["scope", "hook"],
            ),
            slot_timeouts: counter(
                "slot_timeouts_total",
                "Total number of runs denied because they waited too long for a hook evaluation slot",
                &["scope"],
            ),
            series: Arc::default(),
        }
    }

    /// Creates the metrics and registers them into `registry`.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let metrics = Self::new();
        registry.register(Box::new(metrics.call_duration.clone()))?;
        registry.register(Box::new(metrics.denials.clone()))?;
        registry.register(Box::new(metrics.errors.clone()))?;
        registry.register(Box::new(metrics.timeouts.clone()))?;
        registry.register(Box::new(metrics.load_failures.clone()))?;
        registry.register(Box::new(metrics.slot_timeouts.clone()))?;
        Ok(metrics)
    }

    pub(super) fn observe_call(&self, scope: &str, stage: &str, hook: &str, elapsed: Duration) {
        self.remember(scope, Series::Call(stage.into(), hook.into()));
        self.call_duration
            .with_label_values(&[scope, stage, hook])
            .observe(elapsed.as_secs_f64());
    }

    pub(super) fn count_denial(&self, scope: &str, stage: &str, hook: &str) {
        self.remember(scope, Series::Call(stage.into(), hook.into()));
        self.denials.with_label_values(&[scope, stage, hook]).inc();
    }

    pub(super) fn count_error(
        &self,
        scope: &str,
        stage: &str,
        hook: &str,
        kind: &str,
        timeout: bool,
    ) {
        self.remember(scope, Series::Error(stage.into(), hook.into(), kind.into()));
        self.errors
            .with_label_values(&[scope, stage, hook, kind])
            .inc();
        if timeout {
            self.remember(scope, Series::Call(stage.into(), hook.into()));
            self.timeouts.with_label_values(&[scope, stage, hook]).inc();
        }
    }

    pub(super) fn count_load_failure(&self, scope: &str, hook: &str) {
        self.remember(scope, Series::Load(hook.into()));
        self.load_failures.with_label_values(&[scope, hook]).inc();
    }

    pub(super) fn count_slot_timeout(&self, scope: &str) {
        self.remember(scope, Series::Slot);
        self.slot_timeouts.with_label_values(&[scope]).inc();
    }

    /// Removes every series of `scope` (a deleted pool), so its label values do not pile up.
    pub fn forget_scope(&self, scope: &str) {
        let Some(series) = self.lock().remove(scope) else {
            return;
        };
        for one in series {
            // A series that was never touched is not there: nothing to remove.
            match one {
                Series::Call(stage, hook) => {
                    let labels = [scope, stage.as_str(), hook.as_str()];
                    let _ = self.call_duration.remove_label_values(&labels);
                    let _ = self.denials.remove_label_values(&labels);
                    let _ = self.timeouts.remove_label_values(&labels);
                }
                Series::Error(stage, hook, kind) => {
                    let _ = self
                        .errors
                        .remove_label_values(&[scope, &stage, &hook, &kind]);
                }
                Series::Load(hook) => {
                    let _ = self.load_failures.remove_label_values(&[scope, &hook]);
                }
                Series::Slot => {
                    let _ = self.slot_timeouts.remove_label_values(&[scope]);
                }
            }
        }
    }

    fn remember(&self, scope: &str, series: Series) {
        let mut known = self.lock();
        match known.get_mut(scope) {
            Some(set) => {
                set.insert(series);
            }
            None => {
                known.insert(scope.to_string(), BTreeSet::from([series]));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, BTreeSet<Series>>> {
        self.series.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registers_under_the_controller_prefix() {
        let registry = Registry::new();
        let metrics = HookMetrics::register(&registry).unwrap();
        metrics.count_error("cluster", "clusterPlugin", "spin", "timeout", true);
        let names: Vec<String> = registry
            .gather()
            .iter()
            .map(|f| f.name().to_string())
            .collect();
        assert!(names.contains(&"spacelift_workerpool_controller_hook_timeouts_total".to_string()));
        assert!(names.contains(&"spacelift_workerpool_controller_hook_errors_total".to_string()));
    }

    #[test]
    fn a_forgotten_scope_leaves_no_series_behind() {
        let registry = Registry::new();
        let metrics = HookMetrics::register(&registry).unwrap();
        let series = |registry: &Registry| -> Vec<String> {
            let mut scopes: Vec<String> = registry
                .gather()
                .iter()
                .flat_map(|f| f.get_metric().iter())
                .flat_map(|m| m.get_label().iter())
                .filter(|l| l.name() == "scope")
                .map(|l| l.value().to_string())
                .collect();
            scopes.sort();
            scopes.dedup();
            scopes
        };
        for scope in ["team/a", "team/b"] {
            metrics.observe_call(scope, "poolPlugin", "x", Duration::from_millis(1));
            metrics.count_denial(scope, "poolPlugin", "x");
            metrics.count_error(scope, "poolPlugin", "x", "timeout", true);
            metrics.count_load_failure(scope, "y");
        }
        assert_eq!(series(&registry), ["team/a", "team/b"]);
        metrics.forget_scope("team/a");
        assert_eq!(series(&registry), ["team/b"]);
        metrics.forget_scope("team/a");
    }
}
