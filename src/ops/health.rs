//! Named readiness checks shared between the parts of the controller and the `/readyz` probe.
//!
//! Each part reports its own check (`kube-api`, `broker/<pool>`, ...) when its state changes;
//! the probe only reads. Liveness (`/healthz`) deliberately has no checks: a process that can
//! answer is alive, and restarting it because the API server or a broker is down would not help.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::{Arc, PoisonError, RwLock};

/// The state of one check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CheckState {
    Ready,
    NotReady { reason: String },
}

/// Readiness checks by name. Cheap to clone; every clone sees the same checks.
#[derive(Clone, Debug, Default)]
pub struct Health {
    checks: Arc<RwLock<BTreeMap<String, CheckState>>>,
}

/// A snapshot of all checks, in name order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report {
    pub checks: Vec<(String, CheckState)>,
}

impl Health {
    /// No checks yet: ready until a check says otherwise.
    pub fn new() -> Self {
        Self::default()
    }

    /// Mark `name` ready (adding it if new).
    pub fn set_ready(&self, name: impl Into<String>) {
        self.set(name.into(), CheckState::Ready);
    }

    /// Mark `name` not ready, with a reason shown by `/readyz` (adding it if new).
    pub fn set_not_ready(&self, name: impl Into<String>, reason: impl Into<String>) {
        self.set(
            name.into(),
            CheckState::NotReady {
                reason: reason.into(),
            },
        );
    }

    /// Forget `name` (e.g. the broker check of a deleted pool).
    pub fn remove(&self, name: &str) {
        let mut checks = self.checks.write().unwrap_or_else(PoisonError::into_inner);
        if checks.remove(name).is_some() {
            tracing::debug!(check = name, "readiness check removed");
        }
    }

    /// True when every check is ready (or there are none).
    pub fn is_ready(&self) -> bool {
        let checks = self.checks.read().unwrap_or_else(PoisonError::into_inner);
        checks.values().all(|s| *s == CheckState::Ready)
    }

    /// All checks, in name order.
    pub fn report(&self) -> Report {
        let checks = self.checks.read().unwrap_or_else(PoisonError::into_inner);
        Report {
            checks: checks.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        }
    }

    fn set(&self, name: String, state: CheckState) {
        let mut checks = self.checks.write().unwrap_or_else(PoisonError::into_inner);
        // Log transitions only: checks are set on every reconcile and would flood the log.
        if checks.get(&name) != Some(&state) {
            match &state {
                CheckState::Ready => tracing::info!(check = %name, "readiness check ready"),
                CheckState::NotReady { reason } => {
                    tracing::warn!(check = %name, %reason, "readiness check not ready")
                }
            }
            checks.insert(name, state);
        }
    }
}

impl Report {
    pub fn is_ready(&self) -> bool {
        self.checks.iter().all(|(_, s)| *s == CheckState::Ready)
    }

    /// The failing checks and their reasons.
    pub fn failing(&self) -> impl Iterator<Item = (&str, &str)> {
        self.checks.iter().filter_map(|(name, state)| match state {
            CheckState::Ready => None,
            CheckState::NotReady { reason } => Some((name.as_str(), reason.as_str())),
        })
    }

    /// The `/readyz` body in the shape of Kubernetes' and controller-runtime's verbose probes:
    /// one `[+]name ok` / `[-]name failed: reason` line per check, then a verdict line.
    /// When ready and not `verbose`, just `ok`.
    pub fn render(&self, verbose: bool) -> String {
        let ready = self.is_ready();
        if ready && !verbose {
            return "ok".to_owned();
        }
        let mut body = String::new();
        for (name, state) in &self.checks {
            // Writing to a String cannot fail.
            let _ = match state {
                CheckState::Ready => writeln!(body, "[+]{name} ok"),
                CheckState::NotReady { reason } => {
                    writeln!(body, "[-]{name} failed: {}", one_line(reason))
                }
            };
        }
        body.push_str(if ready {
            "readyz check passed\n"
        } else {
            "readyz check failed\n"
        });
        body
    }
}

/// Keep one check on one line, whatever the reason (an error chain may hold newlines).
fn one_line(reason: &str) -> String {
    reason.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_checks_is_ready() {
        let health = Health::new();
        assert!(health.is_ready());
        assert_eq!(health.report().render(false), "ok");
        assert_eq!(health.report().render(true), "readyz check passed\n");
    }

    #[test]
    fn one_failing_check_makes_it_not_ready_and_is_listed_with_its_reason() {
        let health = Health::new();
        health.set_ready("kube-api");
        health.set_not_ready("broker/pool-a", "connection refused\n(retrying)");
        assert!(!health.is_ready());
        assert_eq!(
            health.report().render(false),
            "[-]broker/pool-a failed: connection refused (retrying)\n[+]kube-api ok\nreadyz check failed\n"
        );
        let report = health.report();
        assert_eq!(
            report.failing().collect::<Vec<_>>(),
            [("broker/pool-a", "connection refused\n(retrying)")]
        );
    }

    #[test]
    fn a_check_that_turns_ready_or_is_removed_no_longer_fails() {
        let health = Health::new();
        health.set_not_ready("a", "down");
        health.set_not_ready("b", "down");
        health.set_ready("a");
        assert!(!health.is_ready());
        health.remove("b");
        assert!(health.is_ready());
        assert_eq!(
            health.report().render(true),
            "[+]a ok\nreadyz check passed\n"
        );
    }

    #[test]
    fn clones_share_the_checks() {
        let health = Health::new();
        let clone = health.clone();
        clone.set_not_ready("kube-api", "no watch yet");
        assert!(!health.is_ready());
    }
}
