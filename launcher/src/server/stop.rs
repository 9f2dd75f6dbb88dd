//! Where a stop comes from: the backend (`GET .../stop`, polled every 2 s) or SIGTERM (the
//! operator deletes the Pod on `run.stop`, and the kubelet signals every container at once).
//! The first one wins; the worker hears it once, through `WatchStop`.

use std::time::Duration;

use launcher_api::StopStatus;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use crate::backend::Backend;
use crate::proto::StopNotice;
use crate::proto::stop_notice::Cause;

/// How often the backend is asked.
pub const POLL_EVERY: Duration = Duration::from_secs(2);

/// The stop, once there is one.
pub type StopSender = watch::Sender<Option<StopNotice>>;

/// Records a stop unless one was recorded already; returns whether this one was first.
pub fn request_stop(stop: &StopSender, cause: Cause, reason: String) -> bool {
    stop.send_if_modified(|current| {
        if current.is_some() {
            return false;
        }
        *current = Some(StopNotice {
            cause: cause as i32,
            reason,
        });
        true
    })
}

/// Asks the backend every [`POLL_EVERY`] whether the run is to stop, until `shutdown`.
pub async fn poll_backend(backend: Backend, stop: StopSender, shutdown: CancellationToken) {
    let mut last_error = String::new();
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
        if stop.borrow().is_some() {
            return;
        }
        match backend.get_json::<StopStatus>("stop").await {
            Ok(status) if status.stop_requested => {
                let reason = if status.reason.is_empty() {
                    "a stop was requested".to_string()
                } else {
                    status.reason
                };
                crate::note(&format!("stop requested by the backend: {reason}"));
                request_stop(&stop, Cause::StopRequested, reason);
                return;
            }
            Ok(_) => last_error.clear(),
            Err(err) => {
                // Said once per kind of failure, not every two seconds.
                let why = crate::chain(&err);
                if why != last_error {
                    crate::note(&format!("cannot ask the backend whether to stop: {why}"));
                    last_error = why;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_wins() {
        let (stop, seen) = watch::channel(None);
        assert!(request_stop(&stop, Cause::StopRequested, "user".into()));
        assert!(!request_stop(&stop, Cause::Terminating, "sigterm".into()));
        let notice = seen.borrow().clone().unwrap();
        assert_eq!(
            (notice.cause(), notice.reason.as_str()),
            (Cause::StopRequested, "user")
        );
    }
}
