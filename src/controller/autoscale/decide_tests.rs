use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use ulid::Ulid;

use super::*;
use crate::controller::demand::{Demand, Recommendations};

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_800_000_000 + seconds).expect("a time")
}

const NOW: i64 = 1_000;

fn settings(min: u32, max: u32, min_idle: u32) -> Settings {
    Settings {
        min_pool_size: min,
        max_pool_size: max,
        min_idle,
        scale_up_stabilization: Duration::ZERO,
        scale_down_delay: Duration::from_secs(60),
        windows: Vec::new(),
    }
}

fn demand(pending: u32, schedulable: u32) -> Option<Demand> {
    Some(Demand {
        pending,
        schedulable,
        dispatched: Default::default(),
        message: Ulid::nil(),
    })
}

/// `n` busy workers.
fn busy(n: usize) -> Vec<Slot> {
    (0..n)
        .map(|i| Slot {
            name: format!("busy-{i}"),
            busy: true,
            leaving: false,
            idle_since: at(0),
        })
        .collect()
}

/// An idle worker idle for `seconds`.
fn idle(name: &str, seconds: i64) -> Slot {
    Slot {
        name: name.into(),
        busy: false,
        leaving: false,
        idle_since: at(NOW - seconds),
    }
}

fn run(settings: &Settings, current: u32, demand: Option<Demand>, workers: &[Slot]) -> Decision {
    decide(&Inputs {
        settings,
        floor: Floor {
            size: settings.min_pool_size,
            window: None,
        },
        current,
        demand,
        workers,
        recent: &Recommendations::default(),
        now: at(NOW),
    })
}

/// poolSize now, the demand, the Workers, the size decided and the message.
type GrowCase = (u32, Option<Demand>, Vec<Slot>, u32, &'static str);

#[test]
fn the_pool_grows_to_busy_plus_schedulable_plus_min_idle() {
    let s = settings(0, 20, 2);
    let cases: Vec<GrowCase> = vec![
        (
            2,
            demand(5, 5),
            vec![idle("a", 1), idle("b", 1)],
            7,
            "scaled 2 -> 7: 5 runs pending, 0 busy, minIdle 2",
        ),
        (
            3,
            demand(4, 4),
            busy(3),
            9,
            "scaled 3 -> 9: 4 runs pending, 3 busy, minIdle 2",
        ),
        (
            0,
            demand(30, 30),
            vec![],
            20,
            "scaled 0 -> 20: 30 runs pending, 0 busy, minIdle 2, maxPoolSize 20",
        ),
        (
            20,
            demand(10, 10),
            busy(20),
            20,
            "kept 20: 10 runs pending, 20 busy, minIdle 2, maxPoolSize 20",
        ),
    ];
    for (current, demand, workers, size, message) in cases {
        let decision = run(&s, current, demand, &workers);
        assert_eq!((decision.size, decision.message.as_str()), (size, message));
        assert!(decision.remove.is_empty());
    }
}

#[test]
fn runs_waiting_on_a_person_do_not_hold_workers() {
    let s = settings(0, 20, 0);
    let decision = run(&s, 0, demand(6, 0), &[]);
    assert_eq!(decision.size, 0);
    assert_eq!(
        decision.message,
        "kept 0: 0 runs pending (6 more wait on a person), 0 busy, minIdle 0"
    );
    let decision = run(&s, 4, demand(6, 1), &[idle("a", 600), idle("b", 600)]);
    assert_eq!(decision.size, 1, "only the schedulable run is counted");
    assert_eq!(
        decision.remove,
        ["a"],
        "two of the three slots given up have no worker"
    );
}

#[test]
fn scale_down_takes_only_workers_idle_for_the_delay_longest_first() {
    let s = settings(0, 20, 0);
    let workers = [
        idle("fresh", 10),
        idle("oldest", 500),
        idle("old", 120),
        busy(1).remove(0),
    ];
    let decision = run(&s, 4, demand(0, 0), &workers);
    assert_eq!(decision.size, 2);
    assert_eq!(decision.direction, Direction::Down);
    assert_eq!(decision.remove, ["oldest", "old"]);
    assert_eq!(
        decision.recheck,
        Some(Duration::from_secs(50)),
        "when the fresh one may go"
    );
    assert_eq!(
        decision.message,
        "scaled 4 -> 2: 0 runs pending, 1 busy, minIdle 0; 1 more once idle for scaleDownDelay 1m"
    );
}

#[test]
fn a_busy_worker_is_never_chosen() {
    let s = settings(0, 20, 0);
    let decision = run(&s, 3, demand(0, 0), &busy(3));
    assert_eq!((decision.size, decision.remove.len()), (3, 0));
    assert_eq!(decision.direction, Direction::Hold);
}

#[test]
fn min_idle_keeps_warm_workers_and_min_pool_size_a_floor() {
    let s = settings(1, 10, 2);
    let workers = [idle("a", 900), idle("b", 900), idle("c", 900)];
    let decision = run(&s, 3, demand(0, 0), &workers);
    assert_eq!(decision.size, 2, "two warm workers, the third may go");
    assert_eq!(decision.remove, ["a"]);
    let s = settings(3, 10, 0);
    let decision = run(&s, 5, demand(0, 0), &workers);
    assert_eq!(decision.size, 3);
    assert!(
        decision.message.ends_with(", minPoolSize 3"),
        "{}",
        decision.message
    );
    let decision = run(&s, 0, demand(0, 0), &[]);
    assert_eq!((decision.size, decision.direction), (3, Direction::Up));
}

#[test]
fn an_open_window_raises_the_floor() {
    let s = settings(0, 10, 0);
    let decision = decide(&Inputs {
        settings: &s,
        floor: Floor {
            size: 4,
            window: Some("working-hours".into()),
        },
        current: 0,
        demand: demand(0, 0),
        workers: &[],
        recent: &Recommendations::default(),
        now: at(NOW),
    });
    assert_eq!(decision.size, 4);
    assert_eq!(
        decision.message,
        "scaled 0 -> 4: 0 runs pending, 0 busy, minIdle 0, window working-hours keeps at least 4"
    );
}

#[test]
fn above_max_the_pool_goes_down_to_max_at_once() {
    let s = settings(0, 5, 0);
    let decision = run(&s, 9, None, &busy(9));
    assert_eq!((decision.size, decision.direction), (5, Direction::Down));
    assert!(
        decision.remove.is_empty(),
        "busy workers are drained by the plan, never chosen"
    );
    assert!(
        decision.message.ends_with("maxPoolSize 5"),
        "{}",
        decision.message
    );
}

#[test]
fn without_a_demand_the_pool_does_not_shrink() {
    let s = settings(0, 10, 0);
    let decision = run(
        &s,
        3,
        None,
        &[idle("a", 900), idle("b", 900), idle("c", 900)],
    );
    assert_eq!(decision.size, 3);
    assert_eq!(
        decision.message,
        "kept 3: no demand from the backend yet, 0 busy, minIdle 0; not shrinking before the backend's first pool.demand"
    );
    // It still grows for what it sees itself: busy workers and minIdle.
    let s = settings(0, 10, 1);
    assert_eq!(run(&s, 2, None, &busy(2)).size, 3);
}

#[test]
fn scale_up_waits_for_the_stabilization_window() {
    let mut s = settings(0, 20, 0);
    s.scale_up_stabilization = Duration::from_secs(30);
    let mut recent = Recommendations::default();
    recent.record(at(NOW - 100), 2, s.scale_up_stabilization);
    recent.record(at(NOW - 10), 8, s.scale_up_stabilization);
    let inputs = |now| Inputs {
        settings: &s,
        floor: Floor::default(),
        current: 2,
        demand: demand(8, 8),
        workers: &[],
        recent: &recent,
        now: at(now),
    };
    let early = decide(&inputs(NOW));
    assert_eq!((early.size, early.recommended), (2, 8));
    assert_eq!(early.recheck, Some(Duration::from_secs(20)));
    assert!(
        early
            .message
            .ends_with("; growing to 8 once asked for during scaleUpStabilization 30s"),
        "{}",
        early.message
    );
    let later = decide(&inputs(NOW + 20));
    assert_eq!((later.size, later.direction), (8, Direction::Up));
}

#[test]
fn leaving_workers_count_neither_busy_nor_idle() {
    let s = settings(0, 10, 0);
    let mut gone = idle("gone", 900);
    gone.leaving = true;
    let decision = run(&s, 1, demand(0, 0), &[gone]);
    assert_eq!((decision.busy, decision.idle, decision.size), (0, 0, 0));
    assert!(decision.remove.is_empty());
}
