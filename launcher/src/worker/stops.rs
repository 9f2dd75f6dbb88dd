//! Why the worker stops its command: a stop (from `WatchStop`, or its own SIGTERM) or a
//! timeout. The first cause wins and is kept; SIGKILL follows it after the same grace.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

use super::ending::Interruption;

/// A cause and when it came.
#[derive(Clone, Debug)]
pub struct StopCause {
    pub interruption: Interruption,
    pub at: Instant,
}

impl StopCause {
    /// For the worker's system line.
    pub fn describe(&self) -> String {
        match &self.interruption {
            Interruption::Stopped { reason } => format!("stop: {reason}"),
            Interruption::RunTimeout { after } => {
                format!("SPACELIFT_LAUNCHER_RUN_TIMEOUT ({after:?}) passed")
            }
            Interruption::LogsTimeout { after } => {
                format!("no output for SPACELIFT_LAUNCHER_LOGS_TIMEOUT ({after:?})")
            }
        }
    }
}

/// The stage's one stop cause.
#[derive(Clone)]
pub struct Stops {
    cause: Arc<watch::Sender<Option<StopCause>>>,
}

impl Default for Stops {
    fn default() -> Self {
        Self {
            cause: Arc::new(watch::channel(None).0),
        }
    }
}

impl Stops {
    pub fn subscribe(&self) -> watch::Receiver<Option<StopCause>> {
        self.cause.subscribe()
    }

    pub fn current(&self) -> Option<StopCause> {
        self.cause.borrow().clone()
    }

    fn record(&self, interruption: Interruption) {
        self.cause.send_if_modified(|cause| {
            if cause.is_some() {
                return false;
            }
            *cause = Some(StopCause {
                interruption,
                at: Instant::now(),
            });
            true
        });
    }

    pub fn stop(&self, reason: String) {
        self.record(Interruption::Stopped { reason });
    }

    pub fn run_timed_out(&self, after: Duration) {
        self.record(Interruption::RunTimeout { after });
    }

    pub fn logs_timed_out(&self, after: Duration) {
        self.record(Interruption::LogsTimeout { after });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_first_cause_is_kept() {
        let stops = Stops::default();
        let mut seen = stops.subscribe();
        stops.logs_timed_out(Duration::from_secs(5));
        stops.stop("later".into());
        seen.changed().await.unwrap();
        let cause = stops.current().unwrap();
        assert_eq!(
            cause.interruption,
            Interruption::LogsTimeout {
                after: Duration::from_secs(5)
            }
        );
    }
}
