//! The held run, its end, the Pods no run holds, and a Worker leaving.

use super::*;

#[test]
fn a_held_run_moves_on_from_what_its_pod_says() {
    let with_ending = CurrentRun {
        ending: Some(record(POD, Outcome::Stopped)),
        ..held(ME, true)
    };
    let failed = |cause| PodProgress::Ended(ended(Outcome::Failed, Some(cause), false));
    let cases: Vec<(&str, CurrentRun, PodSeen, i64, &str)> = vec![
        ("running", held(ME, true), running(), 10, "wait None"),
        (
            "ended by itself",
            held(ME, true),
            present(
                PodProgress::Ended(ended(Outcome::Succeeded, None, false)),
                None,
            ),
            10,
            "release Succeeded None",
        ),
        (
            "stuck on its image: it must go before the worker is free",
            held(ME, true),
            present(
                PodProgress::Ended(ended(
                    Outcome::Failed,
                    Some(FailureCause::ImagePullBackOff),
                    true,
                )),
                None,
            ),
            10,
            "record Failed Some(\"ImagePullBackOff\")",
        ),
        (
            "deleted by someone else: gone first, then reported",
            held(ME, true),
            present(failed(FailureCause::PodDeleted), Some(at(8))),
            10,
            "record Failed Some(\"PodDeleted\")",
        ),
        (
            "stopping, Pod still there",
            with_ending.clone(),
            running(),
            10,
            "delete force=false",
        ),
        (
            "stopping, Pod within its grace period",
            with_ending.clone(),
            present(failed(FailureCause::PodDeleted), Some(at(5))),
            10,
            "wait Some(56)",
        ),
        (
            "stopping, Pod outlived its grace period (node does not answer)",
            with_ending.clone(),
            present(failed(FailureCause::PodDeleted), Some(at(5))),
            70,
            "delete force=true",
        ),
        (
            "stopping, Pod gone: only now stopped",
            with_ending,
            gone(),
            10,
            "release Stopped None",
        ),
        (
            "vanished, its end watched (node deleted)",
            held(ME, true),
            PodSeen::Gone {
                last: Some(ended(Outcome::Failed, Some(FailureCause::NodeLost), false)),
            },
            10,
            "release Failed Some(\"NodeLost\")",
        ),
        (
            "vanished unseen after it was created",
            held(ME, true),
            gone(),
            10,
            "release Failed Some(\"PodDeleted\")",
        ),
        (
            "not created yet by this process: its handler retries",
            held(ME, false),
            gone(),
            10,
            "wait Some(591)",
        ),
        (
            "never created by this process",
            held(ME, false),
            gone(),
            601,
            "release Failed Some(\"Unknown\")",
        ),
        (
            "taken by a process that died before it saw the Pod: never created twice",
            held(OTHER, false),
            gone(),
            10,
            "release Failed Some(\"Unknown\")",
        ),
        (
            "taken by a process that died after creating it",
            held(OTHER, false),
            running(),
            10,
            "wait None",
        ),
    ];
    for (case, current, pod, now, expected) in cases {
        assert_eq!(what(&step(&current, &pod, at(now), ME)), expected, "{case}");
    }
}

#[test]
fn a_run_released_reports_what_it_recorded_and_frees_the_worker() {
    let stop = record(POD, Outcome::Stopped);
    let current = CurrentRun {
        ending: Some(stop.clone()),
        ..held(ME, true)
    };
    assert_eq!(
        step(&current, &gone(), at(9), ME),
        Step::Release(Box::new(stop.clone()))
    );
    let freed = release(&busy(current), &stop).unwrap();
    assert_eq!(freed.state, Some(WorkerState::Idle));
    assert_eq!((freed.current_run, freed.current_run_id), (None, None));
    assert_eq!(freed.replicas, Some(0));
    assert_eq!(freed.finished_runs, vec![stop]);
}

#[test]
fn a_draining_worker_stays_draining_when_released() {
    let status = WorkerStatus {
        state: Some(WorkerState::Draining),
        ..busy(held(ME, true))
    };
    let released = release(&status, &record(POD, Outcome::Succeeded)).unwrap();
    assert_eq!(released.state, Some(WorkerState::Draining));
}

#[test]
fn only_the_run_the_worker_holds_releases_it_or_records_its_end() {
    let status = busy(held(ME, true));
    assert_eq!(release(&status, &record("other", Outcome::Succeeded)), None);
    assert_eq!(
        release(&WorkerStatus::default(), &record(POD, Outcome::Succeeded)),
        None
    );
    assert_eq!(
        record_ending(&status, "other", record("other", Outcome::Stopped)),
        None
    );
    let stopping = record_ending(&status, POD, record(POD, Outcome::Stopped)).unwrap();
    assert_eq!(
        record_ending(&stopping, POD, record(POD, Outcome::Failed)),
        None,
        "an end once decided stays"
    );
}

#[test]
fn finished_runs_are_bounded_oldest_forgotten_first() {
    let mut status = busy(held(ME, true));
    status.finished_runs = (0..FINISHED_RUNS_KEPT)
        .map(|i| record(&format!("old-{i}"), Outcome::Succeeded))
        .collect();
    let released = release(&status, &record(POD, Outcome::Succeeded)).unwrap();
    let names: Vec<&str> = released
        .finished_runs
        .iter()
        .map(|r| r.pod_name.as_str())
        .collect();
    assert_eq!(names.len(), FINISHED_RUNS_KEPT);
    assert_eq!(names.first(), Some(&"old-1"), "old-0 is forgotten");
    assert_eq!(names.last(), Some(&POD));
}

#[test]
fn a_pod_no_record_stands_for_is_removed_and_a_released_one_is_marked() {
    let done = record("done-1", Outcome::Failed);
    let status = WorkerStatus {
        finished_runs: vec![done.clone()],
        ..busy(held(ME, true))
    };
    assert_eq!(leftover(&status, POD, false), None, "held: see step");
    assert_eq!(leftover(&status, "done-1", true), Some(Leftover::Reported));
    assert_eq!(
        leftover(&status, "done-1", false),
        Some(Leftover::Mark(Box::new(done)))
    );
    assert_eq!(leftover(&status, "late-1", false), Some(Leftover::Orphan));
}

#[test]
fn a_deleted_worker_finishes_its_run_before_it_deregisters() {
    let timeout = Duration::from_secs(30);
    assert_eq!(
        leave(&busy(held(ME, true)), at(0), at(500), timeout),
        Leave::WaitForRun { drain: true }
    );
    let draining = WorkerStatus {
        state: Some(WorkerState::Draining),
        ..busy(held(ME, true))
    };
    assert_eq!(
        leave(&draining, at(0), at(1), timeout),
        Leave::WaitForRun { drain: false }
    );
    // Its run ended at 400: the deadline counts from then, not from the deletion.
    let mut freed = WorkerStatus::default();
    let mut last = record(POD, Outcome::Succeeded);
    last.finished_at = Time(at(400));
    freed.finished_runs = vec![last];
    assert_eq!(
        leave(&freed, at(0), at(410), timeout),
        Leave::Deregister {
            retry_in: Duration::from_millis(5100)
        }
    );
    assert_eq!(leave(&freed, at(0), at(431), timeout), Leave::DropFinalizer);
    assert_eq!(
        leave(&WorkerStatus::default(), at(0), at(31), timeout),
        Leave::DropFinalizer
    );
}
