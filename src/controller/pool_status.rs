//! A pool's status, computed from what the reconciler observed: pure.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::jiff::Timestamp;

use super::plan::WorkerView;
use crate::crd::{LABEL_WORKERPOOL, WorkerPoolStatus, WorkerState};
use crate::hooks::registry::HooksCondition;
use crate::link::LinkState;

/// What became of the pool's credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CredentialState {
    /// `spec.token`/`spec.privateKey` are not set.
    Missing,
    /// Set, but unusable; the message says why and what to fix.
    Invalid(String),
    /// Decoded; the pool's ULID.
    Valid { pool_ulid: String },
}

/// Everything the status is computed from.
#[derive(Clone, Debug)]
pub struct Observation {
    pub generation: Option<i64>,
    pub desired: i32,
    pub credentials: CredentialState,
    pub link: Option<LinkState>,
    pub workers: Vec<WorkerView>,
    /// Why the pool is degraded (worker creation failing ...), if it is.
    pub degraded: Option<(String, String)>,
    /// The state of the pool's plugins and initialization policy.
    pub hooks: Option<HooksCondition>,
}

/// The status to write. Conditions keep their `lastTransitionTime` when their status is
/// unchanged.
pub fn pool_status(
    observed: &Observation,
    previous: Option<&WorkerPoolStatus>,
    now: Timestamp,
) -> WorkerPoolStatus {
    let live = observed.workers.iter().filter(|w| !w.deleting);
    let registered = live.clone().filter(|w| w.registered).count();
    let (registered_status, registered_reason, registered_message) = match (&observed.credentials, &observed.link) {
        (CredentialState::Missing, _) => (
            false,
            "NoCredentials",
            "spec.token and spec.privateKey are not set: create a Secret with the pool's token and privateKey and reference both".to_string(),
        ),
        (CredentialState::Invalid(message), _) => (false, "InvalidCredentials", message.clone()),
        (CredentialState::Valid { .. }, Some(LinkState::Connected { .. })) => {
            (true, "Connected", "connected to the backend".to_string())
        }
        (CredentialState::Valid { .. }, Some(state)) => (
            false,
            "BrokerUnreachable",
            format!("the backend broker is not connected: {state}"),
        ),
        (CredentialState::Valid { .. }, None) => {
            (false, "Connecting", "connecting to the backend".to_string())
        }
    };
    let desired = usize::try_from(observed.desired).unwrap_or(0);
    let ready = registered_status && registered >= desired;
    let ready_message = format!("{registered} of {desired} workers registered");
    let (degraded, degraded_reason, degraded_message) = match &observed.degraded {
        Some((reason, message)) => (true, reason.as_str(), message.clone()),
        None => (false, "AsExpected", String::new()),
    };

    let pool_ulid = match &observed.credentials {
        CredentialState::Valid { pool_ulid } => Some(pool_ulid.clone()),
        _ => previous.and_then(|p| p.pool_ulid.clone()),
    };
    let previous_conditions = previous
        .map(|p| p.conditions.as_slice())
        .unwrap_or_default();
    let condition = |type_: &str, status: bool, reason: &str, message: String| {
        let status = if status { "True" } else { "False" };
        let since = previous_conditions
            .iter()
            .find(|c| c.type_ == type_ && c.status == status)
            .map(|c| c.last_transition_time.clone())
            .unwrap_or(Time(now));
        Condition {
            type_: type_.into(),
            status: status.into(),
            reason: reason.into(),
            message,
            last_transition_time: since,
            observed_generation: observed.generation,
        }
    };
    WorkerPoolStatus {
        desired_pool_size: Some(observed.desired),
        // Empty until the credentials are accepted, as the seed's troubleshooting shows.
        actual_pool_size: matches!(observed.credentials, CredentialState::Valid { .. })
            .then(|| i32::try_from(registered).unwrap_or(i32::MAX)),
        selector: pool_ulid
            .as_ref()
            .map(|ulid| format!("{LABEL_WORKERPOOL}={ulid}")),
        pool_ulid,
        observed_generation: observed.generation,
        conditions: [
            condition(
                "Ready",
                ready,
                if ready {
                    "WorkersRegistered"
                } else {
                    "WorkersPending"
                },
                ready_message,
            ),
            condition(
                "Registered",
                registered_status,
                registered_reason,
                registered_message,
            ),
            condition("Degraded", degraded, degraded_reason, degraded_message),
        ]
        .into_iter()
        .chain(
            observed
                .hooks
                .as_ref()
                .map(|h| condition(h.type_, h.status, h.reason, h.message.clone())),
        )
        .collect(),
        // Written by the autoscaler (`autoscale::annotate_status`), when the pool has one.
        autoscaling: None,
    }
}

/// Idle and total worker counts, for the seed's gauges.
pub fn worker_counts(workers: &[WorkerView]) -> (i64, i64) {
    let live: Vec<_> = workers.iter().filter(|w| !w.deleting).collect();
    let idle = live
        .iter()
        .filter(|w| w.state == WorkerState::Idle && !w.has_run)
        .count();
    (idle as i64, live.len() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn worker(registered: bool) -> WorkerView {
        WorkerView {
            name: "w".into(),
            state: WorkerState::Idle,
            has_run: false,
            registered,
            deleting: false,
            created: 0,
            leave_first: false,
        }
    }

    fn observation(credentials: CredentialState) -> Observation {
        Observation {
            generation: Some(3),
            desired: 2,
            credentials,
            link: Some(LinkState::Connected {
                session_present: false,
            }),
            workers: vec![worker(true), worker(false)],
            degraded: None,
            hooks: None,
        }
    }

    fn condition<'a>(status: &'a WorkerPoolStatus, type_: &str) -> &'a Condition {
        status.conditions.iter().find(|c| c.type_ == type_).unwrap()
    }

    #[test]
    fn bad_credentials_leave_the_actual_size_empty_and_say_why() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let status = pool_status(
            &observation(CredentialState::Invalid(
                "unable to base64 decode privateKey: illegal base64 data at input byte 4364".into(),
            )),
            None,
            now,
        );
        assert_eq!(status.actual_pool_size, None);
        assert_eq!(status.desired_pool_size, Some(2));
        let registered = condition(&status, "Registered");
        assert_eq!(
            (registered.status.as_str(), registered.reason.as_str()),
            ("False", "InvalidCredentials")
        );
        assert!(registered.message.contains("input byte 4364"));
        assert_eq!(condition(&status, "Ready").status, "False");
    }

    #[test]
    fn a_connected_pool_counts_registered_workers_and_publishes_its_selector() {
        let now = Timestamp::from_second(1_700_000_000).unwrap();
        let valid = CredentialState::Valid {
            pool_ulid: "01HPS9HDSWCQ73RPDTVAK0KK0A".into(),
        };
        let status = pool_status(&observation(valid.clone()), None, now);
        assert_eq!(status.actual_pool_size, Some(1));
        assert_eq!(
            status.selector.as_deref(),
            Some("workers.spacelift.io/workerpool=01HPS9HDSWCQ73RPDTVAK0KK0A")
        );
        assert_eq!(condition(&status, "Registered").status, "True");
        let ready = condition(&status, "Ready");
        assert_eq!(
            (ready.status.as_str(), ready.message.as_str()),
            ("False", "1 of 2 workers registered")
        );

        // Once both are registered the pool is Ready; an unchanged condition keeps its time.
        let mut all = observation(valid);
        all.workers = vec![worker(true), worker(true)];
        let later = Timestamp::from_second(1_700_000_600).unwrap();
        let next = pool_status(&all, Some(&status), later);
        assert_eq!(condition(&next, "Ready").status, "True");
        assert_eq!(condition(&next, "Ready").last_transition_time, Time(later));
        assert_eq!(
            condition(&next, "Registered").last_transition_time,
            Time(now)
        );
    }
}
