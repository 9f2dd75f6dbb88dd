//! Reports however long the hooks' reasons: always sent (cut to fit), so that a handler that
//! acknowledges a schedule once its answer went out never leaves it holding an in-flight slot.

use std::time::Duration;

use ulid::Ulid;
use workerpool_operator::link::PoolLink;
use workerpool_operator::protocol::{
    Body, DEFAULT_MAX_PAYLOAD, DenyReason, Message, RunDenied, RunRef, encode,
};

use crate::broker::Broker;
use crate::{backend_link, new_pool, next, options_with_metrics, schedule};

const WAIT: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_denials_reach_the_backend_cut_and_never_pin_the_links_in_flight_slots() {
    let broker = Broker::start();
    let pool = new_pool(&broker, "pool-a");
    let (backend, mut backend_inbound) = backend_link(&broker).await;
    let (options, metrics) = options_with_metrics();
    let receive_maximum = usize::from(options.receive_maximum);
    let (link, mut inbound) = PoolLink::connect(&pool, options).expect("connect");
    link.wait_connected(WAIT).await.expect("connected");
    let worker = Ulid::generate();

    // As many schedules as the broker may have in flight to the pool, each denied by a policy
    // with three reasons of twice the payload cap.
    for attempt in 1..=receive_maximum {
        let run = schedule(worker, Ulid::generate(), u32::try_from(attempt).unwrap());
        backend.publish(pool.pool_id, &run).await.expect("publish");
    }
    for _ in 0..receive_maximum {
        let delivery = next(&mut inbound, WAIT).await.expect("a schedule");
        let Body::RunSchedule(scheduled) = &delivery.message.body else {
            panic!("{:?}", delivery.message.body)
        };
        let run = RunRef::new(&scheduled.run_id, &scheduled.stage, scheduled.attempt);
        let reasons = (0..3)
            .map(|i| DenyReason {
                hook: "pool initialization policy/huge".into(),
                message: format!("{i}{}", "x".repeat(2 * DEFAULT_MAX_PAYLOAD)),
            })
            .collect();
        // Built without the caps of `RunDenied::new`, as a careless caller would.
        let denied = RunDenied {
            reasons,
            ..RunDenied::new(&run, Vec::new())
        };
        let answer = Message::for_worker(worker, Body::RunDenied(denied));
        assert!(encode(&answer).len() > DEFAULT_MAX_PAYLOAD);
        // The controller acknowledges a schedule once its answer went out.
        link.publish(&answer).await.expect("the denial is sendable");
        delivery.ack().await.expect("ack");
    }

    // Every denial reached the backend, cut, with every reason still named.
    for _ in 0..receive_maximum {
        let report = next(&mut backend_inbound, WAIT).await.expect("a denial");
        let Body::RunDenied(denied) = &report.message.body else {
            panic!("{:?}", report.message.body)
        };
        assert_eq!(denied.reasons.len(), 3);
        assert!(
            denied.reasons[0].message.starts_with("0xxx")
                && denied.reasons[0].message.ends_with(" more bytes)"),
            "{}",
            &denied.reasons[0].message[..100]
        );
        report.ack().await.expect("ack");
    }
    assert_eq!(
        metrics.shrunk_count(&pool.pool_id.to_string(), "run.denied"),
        receive_maximum as u64
    );

    // The link kept its in-flight capacity: the next run is dispatched at once.
    let run = schedule(worker, Ulid::generate(), 1);
    backend.publish(pool.pool_id, &run).await.expect("publish");
    let delivery = next(&mut inbound, WAIT)
        .await
        .expect("a normal run still dispatches");
    assert_eq!(delivery.message, run);
    delivery.ack().await.expect("ack");
    link.shutdown().await;
    backend.shutdown().await;
}
