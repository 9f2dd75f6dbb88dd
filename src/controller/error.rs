//! Why a reconciliation or a message handler failed: one variant per kind of step, the API
//! step named by [`Step`] (its label is the `error` label of
//! `workerpool_reconcile_errors_total`), and the one rule for what happens next ([`Error::retry`]).

use thiserror::Error;

use super::keys::KeyError;
use crate::link::LinkError;

/// A call to the Kubernetes API, by what it was for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Step {
    ReadWorker,
    ListWorkers,
    CreateWorker,
    WriteWorkerStatus,
    DeleteWorker,
    RemoveFinalizer,
    ReadPod,
    ListPods,
    CreatePod,
    DeletePod,
    MarkPod,
    ReadPool,
    LabelPool,
    WritePoolStatus,
    ScalePool,
    ReadSecret,
    WriteKeySecret,
}

impl Step {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Step::ReadWorker => "read_worker",
            Step::ListWorkers => "list_workers",
            Step::CreateWorker => "create_worker",
            Step::WriteWorkerStatus => "write_worker_status",
            Step::DeleteWorker => "delete_worker",
            Step::RemoveFinalizer => "remove_finalizer",
            Step::ReadPod => "read_pod",
            Step::ListPods => "list_pods",
            Step::CreatePod => "create_pod",
            Step::DeletePod => "delete_pod",
            Step::MarkPod => "mark_pod",
            Step::ReadPool => "read_pool",
            Step::LabelPool => "label_pool",
            Step::WritePoolStatus => "write_pool_status",
            Step::ScalePool => "scale_pool",
            Step::ReadSecret => "read_secret",
            Step::WriteKeySecret => "write_key_secret",
        }
    }

    fn doing(self) -> &'static str {
        match self {
            Step::ReadWorker => "reading Worker",
            Step::ListWorkers => "listing the Workers of",
            Step::CreateWorker => "creating Worker",
            Step::WriteWorkerStatus => "writing the status of Worker",
            Step::DeleteWorker => "deleting Worker",
            Step::RemoveFinalizer => "removing the finalizer of Worker",
            Step::ReadPod => "reading run Pod",
            Step::ListPods => "listing the run Pods of",
            Step::CreatePod => "creating run Pod",
            Step::DeletePod => "deleting run Pod",
            Step::MarkPod => "marking run Pod",
            Step::ReadPool => "reading WorkerPool",
            Step::LabelPool => "labelling WorkerPool",
            Step::WritePoolStatus => "writing the status of WorkerPool",
            Step::ScalePool => "setting spec.poolSize (scale subresource) of WorkerPool",
            Step::ReadSecret => "reading Secret",
            Step::WriteKeySecret => "writing the key Secret of Worker",
        }
    }
}

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.doing())
    }
}

/// Why a reconciliation or a message handler failed.
#[derive(Debug, Error)]
pub enum Error {
    /// A Kubernetes API call failed; `object` is `namespace/name` (or the namespace of a list).
    #[error("{step} {object}: {source}")]
    Api {
        step: Step,
        object: String,
        #[source]
        source: kube::Error,
    },
    /// A message could not be handed to the pool's backend link.
    #[error("sending {kind} to the backend of pool {pool}: {source}")]
    Publish {
        kind: &'static str,
        pool: String,
        #[source]
        source: LinkError,
    },
    #[error(
        "pool {pool} has no backend link: its credentials have not been accepted (see its Registered condition)"
    )]
    NoLink { pool: String },
    #[error("generating a key pair for a new worker of pool {pool}: {source}")]
    Key {
        pool: String,
        #[source]
        source: KeyError,
    },
    #[error("{object} kept changing while being updated")]
    Conflict { object: String },
    #[error(
        "{object} has no valid {label} label: it was not made by this operator, or someone changed its labels"
    )]
    Unlabelled { object: String, label: &'static str },
}

/// What to do about a failed step.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// It may pass (the API server or the broker briefly away, a write conflict, a write an
    /// admission policy refuses for now): try again, with backoff, until it is done.
    Later,
    /// Asking again can only get the same answer (the object is not ours, the message cannot
    /// be sent on that topic, the link was closed for good): give up on it.
    Never,
}

impl Error {
    /// An API error of `step` on `object`.
    pub fn api(step: Step, object: impl Into<String>) -> impl FnOnce(kube::Error) -> Error {
        let object = object.into();
        move |source| Error::Api {
            step,
            object,
            source,
        }
    }

    /// The `error` label of the reconcile error metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Api { step, .. } => step.label(),
            Error::Publish { .. } => "publish",
            Error::NoLink { .. } => "no_link",
            Error::Key { .. } => "key",
            Error::Conflict { .. } => "conflict",
            Error::Unlabelled { .. } => "unlabelled",
        }
    }

    /// The one rule for retry or refuse. The operator's own records must be written for a run
    /// to move on, so every API failure is retried, refusals included: an admission policy or
    /// missing RBAC may be fixed, and meanwhile nothing is decided on a half-written record.
    /// Only the run Pod's creation turns a refusal into an answer (see [`refused_for_good`]),
    /// and that is decided where the Pod is created, not here.
    pub fn retry(&self) -> Retry {
        match self {
            Error::Api { .. }
            | Error::NoLink { .. }
            | Error::Key { .. }
            | Error::Conflict { .. } => Retry::Later,
            Error::Publish { source, .. } => match source {
                LinkError::Closed | LinkError::Oversized { .. } | LinkError::Protocol(_) => {
                    Retry::Never
                }
                _ => Retry::Later,
            },
            Error::Unlabelled { .. } => Retry::Never,
        }
    }
}

/// Whether the API server's refusal of a request would only repeat: a 4xx other than 409
/// (exists, or a stale resourceVersion), 429 (throttled), 408 (timeout) and 401 (our own
/// credentials, which the client refreshes). For the run Pod's creation this is the run's
/// answer (denied, hook `kubernetes`).
pub fn refused_for_good(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status)
        if (400..500).contains(&status.code) && !matches!(status.code, 401 | 408 | 409 | 429))
}

/// Whether a Kubernetes error is a 404.
pub fn is_not_found(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 404)
}

/// Whether a Kubernetes error is a 409 (already exists, or a stale resourceVersion).
pub fn is_conflict(err: &kube::Error) -> bool {
    matches!(err, kube::Error::Api(status) if status.code == 409)
}

/// A write whose object may already be gone: NotFound counts as done.
pub fn ignore_not_found<T>(result: Result<T, kube::Error>) -> Result<(), kube::Error> {
    match result {
        Ok(_) => Ok(()),
        Err(err) if is_not_found(&err) => Ok(()),
        Err(err) => Err(err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> kube::Error {
        kube::Error::Api(Box::new(kube::core::Status {
            code,
            ..kube::core::Status::default()
        }))
    }

    #[test]
    fn only_pod_creations_refused_for_good_refuse_the_run() {
        for code in [400, 403, 404, 422] {
            assert!(refused_for_good(&api(code)), "{code}");
        }
        for code in [401, 408, 409, 429, 500, 503] {
            assert!(!refused_for_good(&api(code)), "{code}");
        }
    }

    #[test]
    fn api_failures_are_retried_even_refusals_and_what_cannot_pass_is_not() {
        for code in [403, 409, 422, 500] {
            let err = Error::api(Step::WriteWorkerStatus, "ns/w")(api(code));
            assert_eq!(err.retry(), Retry::Later, "{code}");
        }
        let conflict = Error::Conflict {
            object: "Worker a/b".into(),
        };
        assert_eq!(conflict.retry(), Retry::Later);
        let closed = Error::Publish {
            kind: "run.accepted",
            pool: "a/b".into(),
            source: LinkError::Closed,
        };
        assert_eq!(closed.retry(), Retry::Never);
        let foreign = Error::Unlabelled {
            object: "Pod a/p".into(),
            label: "workers.spacelift.io/worker",
        };
        assert_eq!(foreign.retry(), Retry::Never);
    }

    #[test]
    fn errors_name_the_step_the_object_and_their_metric_label() {
        let err = Error::api(Step::CreatePod, "team-a/01hn-preparing-1")(api(500));
        assert!(
            err.to_string()
                .starts_with("creating run Pod team-a/01hn-preparing-1: "),
            "{err}"
        );
        assert_eq!(err.metric_label(), "create_pod");
        assert!(std::error::Error::source(&err).is_some());
    }
}
