//! Which finished run Pods to remove: the seed's `keepSuccessfulPods` plus the history limits
//! and TTLs, applied per worker, oldest first. Pure.

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;

use crate::crd::WorkerPoolSpec;

/// A run Pod whose outcome has been reported.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FinishedPod {
    pub name: String,
    pub succeeded: bool,
    /// When the outcome was recorded. The Worker's status keeps it to the second, so runs that
    /// end within one second tie on it.
    pub finished_at: Timestamp,
    /// When the schedule for this Pod arrived, to the nanosecond: a worker takes one run at a
    /// time, so it orders the Pods of a worker where `finished_at` ties.
    pub scheduled_at: Option<Timestamp>,
}

/// The retention settings of a pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Retention {
    pub keep_successful: bool,
    pub successful_limit: Option<usize>,
    pub failed_limit: Option<usize>,
    pub successful_ttl: Option<Duration>,
    pub failed_ttl: Option<Duration>,
}

impl Retention {
    pub fn of(spec: &WorkerPoolSpec) -> Self {
        let limit = |v: Option<i32>| v.map(|n| usize::try_from(n).unwrap_or(0));
        let ttl = |d: &Option<kube::core::Duration>| {
            d.as_ref()
                .filter(|d| !d.is_negative())
                .map(|d| Duration::from(*d))
        };
        Self {
            keep_successful: spec.keep_successful_pods.unwrap_or(false),
            successful_limit: limit(spec.successful_pods_history_limit),
            failed_limit: limit(spec.failed_pods_history_limit),
            successful_ttl: ttl(&spec.successful_pods_history_ttl),
            failed_ttl: ttl(&spec.failed_pods_history_ttl),
        }
    }

    /// Successful Pods are deleted as soon as they finish unless `keepSuccessfulPods` or a
    /// successful history limit asks to keep some.
    fn keeps_successful(&self) -> bool {
        self.keep_successful || self.successful_limit.is_some_and(|n| n > 0)
    }
}

/// The Pods of one worker to delete now, oldest first; and when to look again for a TTL.
pub fn pods_to_delete(
    pods: &[FinishedPod],
    retention: &Retention,
    now: Timestamp,
) -> (Vec<String>, Option<Duration>) {
    let mut delete = Vec::new();
    let mut recheck: Option<Duration> = None;
    for succeeded in [true, false] {
        let mut group: Vec<&FinishedPod> =
            pods.iter().filter(|p| p.succeeded == succeeded).collect();
        group.sort_by_key(|p| (p.finished_at, p.scheduled_at));
        let (limit, ttl) = if succeeded {
            if !retention.keeps_successful() {
                delete.extend(group.iter().map(|p| p.name.clone()));
                continue;
            }
            (retention.successful_limit, retention.successful_ttl)
        } else {
            (retention.failed_limit, retention.failed_ttl)
        };
        let over_limit = limit.map_or(0, |n| group.len().saturating_sub(n));
        for (i, pod) in group.iter().enumerate() {
            let age = now.duration_since(pod.finished_at).unsigned_abs();
            let expired = ttl.is_some_and(|ttl| age >= ttl);
            if i < over_limit || expired {
                delete.push(pod.name.clone());
            } else if let Some(ttl) = ttl {
                let left = ttl - age;
                recheck = Some(recheck.map_or(left, |r| r.min(left)));
            }
        }
    }
    (delete, recheck)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(minute: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + minute * 60).unwrap()
    }

    fn pod(name: &str, succeeded: bool, minute: i64) -> FinishedPod {
        FinishedPod {
            name: name.into(),
            succeeded,
            finished_at: at(minute),
            scheduled_at: None,
        }
    }

    fn pods() -> Vec<FinishedPod> {
        vec![
            pod("ok-1", true, 1),
            pod("ok-2", true, 2),
            pod("ok-3", true, 3),
            pod("bad-1", false, 1),
            pod("bad-2", false, 2),
        ]
    }

    #[test]
    fn by_default_successful_pods_go_and_failed_pods_stay() {
        let (delete, recheck) = pods_to_delete(&pods(), &Retention::default(), at(10));
        assert_eq!(delete, ["ok-1", "ok-2", "ok-3"]);
        assert_eq!(recheck, None);
    }

    #[test]
    fn keep_successful_pods_keeps_them_all() {
        let retention = Retention {
            keep_successful: true,
            ..Retention::default()
        };
        assert!(pods_to_delete(&pods(), &retention, at(10)).0.is_empty());
    }

    #[test]
    fn history_limits_remove_the_oldest_first() {
        let retention = Retention {
            successful_limit: Some(1),
            failed_limit: Some(1),
            ..Retention::default()
        };
        let (delete, _) = pods_to_delete(&pods(), &retention, at(10));
        assert_eq!(delete, ["ok-1", "ok-2", "bad-1"]);
    }

    #[test]
    fn runs_that_end_in_the_same_second_are_ordered_by_their_schedule() {
        let scheduled = |nanos| Some(Timestamp::from_nanosecond(nanos).unwrap());
        // Listed newest first, as a List in name order may give them.
        let pods = [
            FinishedPod {
                scheduled_at: scheduled(1_700_000_000_900_000_000),
                ..pod("a-newer", false, 1)
            },
            FinishedPod {
                scheduled_at: scheduled(1_700_000_000_100_000_000),
                ..pod("b-older", false, 1)
            },
        ];
        let retention = Retention {
            failed_limit: Some(1),
            ..Retention::default()
        };
        assert_eq!(pods_to_delete(&pods, &retention, at(10)).0, ["b-older"]);
    }

    #[test]
    fn ttls_remove_expired_pods_and_say_when_to_look_again() {
        let retention = Retention {
            keep_successful: true,
            successful_ttl: Some(Duration::from_secs(8 * 60)),
            failed_ttl: Some(Duration::from_secs(60 * 60)),
            ..Retention::default()
        };
        let (delete, recheck) = pods_to_delete(&pods(), &retention, at(10));
        assert_eq!(delete, ["ok-1", "ok-2"]);
        assert_eq!(recheck, Some(Duration::from_secs(60)));
    }

    #[test]
    fn a_zero_successful_limit_keeps_none() {
        let retention = Retention {
            successful_limit: Some(0),
            ..Retention::default()
        };
        assert_eq!(pods_to_delete(&pods(), &retention, at(10)).0.len(), 3);
    }

    #[test]
    fn retention_reads_the_pool_spec() {
        let spec: WorkerPoolSpec = serde_json::from_value(serde_json::json!({
            "keepSuccessfulPods": true,
            "successfulPodsHistoryLimit": 3,
            "failedPodsHistoryTTL": "168h",
        }))
        .unwrap();
        assert_eq!(
            Retention::of(&spec),
            Retention {
                keep_successful: true,
                successful_limit: Some(3),
                failed_ttl: Some(Duration::from_secs(168 * 3600)),
                ..Retention::default()
            }
        );
    }
}
