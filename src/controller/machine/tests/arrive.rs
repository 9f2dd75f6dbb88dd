//! Schedules and stops arriving.

use super::*;

#[test]
fn a_schedule_is_known_by_its_run_stage_attempt_on_its_worker() {
    let idle_after = |records: Vec<FinishedRun>| WorkerStatus {
        state: Some(WorkerState::Idle),
        finished_runs: records,
        latest_schedule_id: Some(schedule_id(100).to_string()),
        ..WorkerStatus::default()
    };
    let done = record(POD, Outcome::Succeeded);
    let cases: Vec<(&str, WorkerStatus, bool, &str, Ulid, ScheduleFit)> = vec![
        (
            "a fresh worker",
            WorkerStatus::default(),
            false,
            POD,
            schedule_id(1),
            ScheduleFit::Take,
        ),
        (
            "a newer schedule",
            idle_after(vec![]),
            false,
            "new-1",
            schedule_id(101),
            ScheduleFit::Take,
        ),
        (
            "its own run, redelivered",
            busy(held(ME, true)),
            false,
            POD,
            schedule_id(0),
            ScheduleFit::Held,
        ),
        (
            "a run it finished, redelivered (even under a new id)",
            idle_after(vec![done.clone()]),
            false,
            POD,
            schedule_id(500),
            ScheduleFit::Answered(Box::new(done)),
        ),
        (
            "a run that ended more than ten runs ago",
            idle_after(vec![]),
            false,
            POD,
            schedule_id(50),
            ScheduleFit::Stale,
        ),
        (
            "the same id as the newest, no longer remembered",
            idle_after(vec![]),
            false,
            POD,
            schedule_id(100),
            ScheduleFit::Stale,
        ),
        (
            "busy with another run",
            busy(held(ME, true)),
            false,
            "other-1",
            schedule_id(7),
            ScheduleFit::Refuse(Refusal::Busy {
                run_id: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
                pod_name: POD.into(),
            }),
        ),
        (
            "leaving the pool",
            idle_after(vec![]),
            true,
            "new-1",
            schedule_id(101),
            ScheduleFit::Refuse(Refusal::Leaving),
        ),
    ];
    for (case, status, leaving, pod, id, expected) in cases {
        assert_eq!(fit_schedule(&status, leaving, pod, id), expected, "{case}");
    }
}

#[test]
fn a_redelivered_schedule_of_the_held_run_carries_on_where_its_records_stand() {
    let stopping = CurrentRun {
        ending: Some(record(POD, Outcome::Stopped)),
        ..held(ME, true)
    };
    let watched = PodSeen::Gone {
        last: Some(ended(
            Outcome::Failed,
            Some(FailureCause::PodDeleted),
            false,
        )),
    };
    let cases = [
        ("created", held(ME, true), running(), Resume::ReportCreated),
        (
            "created, then deleted while nobody watched",
            held(ME, true),
            gone(),
            Resume::Settle,
        ),
        ("its end decided", stopping, running(), Resume::Settle),
        (
            "created, not recorded",
            held(OTHER, false),
            running(),
            Resume::RecordCreated,
        ),
        (
            "this process creates it",
            held(ME, false),
            gone(),
            Resume::CreatePod,
        ),
        (
            "created and deleted meanwhile",
            held(ME, false),
            watched,
            Resume::Settle,
        ),
        (
            "another process may have created it",
            held(OTHER, false),
            gone(),
            Resume::Settle,
        ),
    ];
    for (case, current, pod, expected) in cases {
        assert_eq!(resume(&current, &pod, ME), expected, "{case}");
    }
}

#[test]
fn taking_a_run_records_the_worker_busy_with_its_creator_and_the_newest_schedule() {
    let taken = accept(&WorkerStatus::default(), held(ME, false), schedule_id(3)).unwrap();
    assert_eq!(taken.state, Some(WorkerState::Busy));
    assert_eq!(
        taken.current_run_id.as_deref(),
        Some("01HN37WC3MCNE3CY9HAHWRF06K")
    );
    assert_eq!(taken.current_run.unwrap().creator.as_deref(), Some(ME));
    assert_eq!(taken.latest_schedule_id, Some(schedule_id(3).to_string()));
    assert_eq!(
        accept(&busy(held(ME, true)), held(ME, false), schedule_id(4)),
        None,
        "a worker holds one run"
    );
    let created = record_created(&busy(held(ME, false)), POD).unwrap();
    assert!(created.current_run.unwrap().pod_created);
    assert_eq!(
        record_created(&busy(held(ME, true)), POD),
        None,
        "recorded once"
    );
}

#[test]
fn a_denial_is_remembered_before_it_is_sent_and_leaves_a_held_run_alone() {
    let reasons = [DenyReason {
        hook: "operator".into(),
        message: "busy".into(),
    }];
    let run = RunRef::new("01HN37WC3MCNE3CY9HAHWRF07K", "preparing", 1);
    let denial = denied_record(&run, "other-1", &reasons, at(3));
    let status = record_denial(&busy(held(ME, true)), denial.clone(), schedule_id(9));
    assert_eq!(status.current_run, Some(held(ME, true)));
    assert_eq!(status.finished_runs, vec![denial.clone()]);
    assert_eq!(status.latest_schedule_id, Some(schedule_id(9).to_string()));
    assert_eq!(
        fit_schedule(&status, false, "other-1", schedule_id(9)),
        ScheduleFit::Answered(Box::new(denial)),
        "a copy gets the same answer, whatever the hooks say now"
    );
    // An older denial never moves the newest schedule back.
    let older = record_denial(&status, record("x", Outcome::Failed), schedule_id(2));
    assert_eq!(older.latest_schedule_id, Some(schedule_id(9).to_string()));
}

#[test]
fn a_stop_is_recorded_before_the_pod_goes_and_only_for_the_held_run() {
    let stop = RunStop {
        run_id: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
        stage: None,
        reason: "stopped by user".into(),
    };
    let status = busy(held(ME, true));
    let StopFit::Record(recorded) = fit_stop(&status, &stop, Some(&running()), at(4)) else {
        panic!("a running run is stopped")
    };
    assert_eq!(
        (recorded.outcome, recorded.message.as_str()),
        (crate::crd::FinishedOutcome::Stopped, "stopped by user")
    );
    let other_stage = RunStop {
        stage: Some("applying".into()),
        ..stop.clone()
    };
    assert_eq!(
        fit_stop(&status, &other_stage, None, at(4)),
        StopFit::NotHeld(None)
    );
    let succeeded = present(
        PodProgress::Ended(ended(Outcome::Succeeded, None, false)),
        None,
    );
    assert_eq!(
        fit_stop(&status, &stop, Some(&succeeded), at(4)),
        StopFit::Settling,
        "a run that ended by itself reports its own end"
    );
    let stopping = record_ending(&status, POD, *recorded).unwrap();
    assert_eq!(
        fit_stop(&stopping, &stop, Some(&running()), at(5)),
        StopFit::Settling
    );
    let done = record(POD, Outcome::Succeeded);
    let idle = WorkerStatus {
        finished_runs: vec![done.clone()],
        ..WorkerStatus::default()
    };
    assert_eq!(
        fit_stop(&idle, &stop, None, at(6)),
        StopFit::NotHeld(Some(Box::new(done))),
        "the backend has not heard the end: it hears it again"
    );
}
