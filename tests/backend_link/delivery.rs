//! Delivery: persistent sessions, redelivery, de-duplication, and bad payloads.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use ulid::Ulid;
use workerpool_operator::link::PoolLink;
use workerpool_operator::protocol::{Body, DEFAULT_MAX_PAYLOAD};

use crate::broker::Broker;
use crate::{RawClient, backend_link, new_pool, next, options_with_metrics, schedule};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(1500);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_scheduled_while_the_link_is_down_is_delivered_once_after_reconnect() {
    let broker = Broker::start();
    let pool = new_pool(&broker, "pool-a");
    let (backend, _backend_inbound) = backend_link(&broker).await;
    let worker = Ulid::generate();

    // The first connection creates the session and its subscriptions, then goes away.
    let (options, metrics) = options_with_metrics();
    let (link, _inbound) = PoolLink::connect(&pool, options.clone()).expect("connect");
    link.wait_connected(WAIT).await.expect("connected");
    link.shutdown().await;

    // While it is down, the backend schedules a run.
    let run = schedule(worker, Ulid::generate(), 1);
    backend.publish(pool.pool_id, &run).await.expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // The next connection with the same client id gets it, once.
    let (link, mut inbound) = PoolLink::connect(&pool, options).expect("reconnect");
    link.wait_connected(WAIT).await.expect("reconnected");
    let delivery = next(&mut inbound, WAIT)
        .await
        .expect("queued schedule delivered");
    assert_eq!(delivery.message, run);
    assert_eq!(delivery.topic.worker, Some(worker));
    delivery.ack().await.expect("ack");
    assert!(
        next(&mut inbound, QUIET).await.is_none(),
        "delivered exactly once"
    );
    assert_eq!(
        metrics.received_count(&pool.pool_id.to_string(), "run.schedule"),
        1
    );
    link.shutdown().await;
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unacknowledged_message_is_redelivered_after_a_crash() {
    let broker = Broker::start();
    let pool = new_pool(&broker, "pool-a");
    let (backend, _backend_inbound) = backend_link(&broker).await;
    let (options, _metrics) = options_with_metrics();
    let (link, mut inbound) = PoolLink::connect(&pool, options.clone()).expect("connect");
    link.wait_connected(WAIT).await.expect("connected");

    let run = schedule(Ulid::generate(), Ulid::generate(), 1);
    backend.publish(pool.pool_id, &run).await.expect("publish");
    let delivery = next(&mut inbound, WAIT).await.expect("delivered");
    assert_eq!(delivery.message, run);
    // The process dies before the handler finishes: no ack, no DISCONNECT.
    drop(delivery);
    link.abort();
    drop(inbound);

    let (link, mut inbound) = PoolLink::connect(&pool, options).expect("reconnect");
    link.wait_connected(WAIT).await.expect("reconnected");
    let again = next(&mut inbound, WAIT)
        .await
        .expect("redelivered after the crash");
    assert_eq!(again.message, run);
    again.ack().await.expect("ack");
    assert!(next(&mut inbound, QUIET).await.is_none());
    link.shutdown().await;

    // Acknowledged now: a third connection gets nothing.
    let (options, _) = options_with_metrics();
    let (link, mut inbound) = PoolLink::connect(&pool, options).expect("third connection");
    link.wait_connected(WAIT).await.expect("connected");
    assert!(
        next(&mut inbound, QUIET).await.is_none(),
        "nothing left after the ack"
    );
    link.shutdown().await;
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_scheduled_twice_is_handled_once() {
    let broker = Broker::start();
    let pool = new_pool(&broker, "pool-a");
    let (backend, _backend_inbound) = backend_link(&broker).await;
    let (options, metrics) = options_with_metrics();
    let (link, mut inbound) = PoolLink::connect(&pool, options).expect("connect");
    link.wait_connected(WAIT).await.expect("connected");
    let worker = Ulid::generate();
    let run_id = Ulid::generate();

    // The same run stage attempt, sent twice under different message ids, and the very same
    // message sent again, while the handler still holds the first copy.
    let first = schedule(worker, run_id, 1);
    let resent = schedule(worker, run_id, 1);
    backend
        .publish(pool.pool_id, &first)
        .await
        .expect("publish");
    backend
        .publish(pool.pool_id, &resent)
        .await
        .expect("publish");
    backend
        .publish(pool.pool_id, &first)
        .await
        .expect("publish");
    let delivery = next(&mut inbound, WAIT).await.expect("delivered");
    assert_eq!(delivery.message, first);
    assert!(
        next(&mut inbound, QUIET).await.is_none(),
        "parked duplicates wait"
    );
    delivery.ack().await.expect("ack");

    // After the ack, yet another copy is acknowledged without reaching the handler...
    backend
        .publish(pool.pool_id, &resent)
        .await
        .expect("publish");
    // ...while the next attempt of the same stage is a different run Pod.
    let retry = schedule(worker, run_id, 2);
    backend
        .publish(pool.pool_id, &retry)
        .await
        .expect("publish");
    let delivery = next(&mut inbound, WAIT).await.expect("attempt 2 delivered");
    assert_eq!(delivery.message, retry);
    delivery.ack().await.expect("ack");
    assert!(next(&mut inbound, QUIET).await.is_none(), "handled once");
    let label = pool.pool_id.to_string();
    assert_eq!(metrics.duplicate_count(&label), 3);
    assert_eq!(metrics.received_count(&label, "run.schedule"), 2);

    // The duplicates were acknowledged too: a new connection gets nothing.
    link.shutdown().await;
    let (options, _) = options_with_metrics();
    let (link, mut inbound) = PoolLink::connect(&pool, options).expect("reconnect");
    link.wait_connected(WAIT).await.expect("connected");
    assert!(
        next(&mut inbound, QUIET).await.is_none(),
        "no unacknowledged copies left"
    );
    link.shutdown().await;
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_payloads_are_counted_and_dropped() {
    let broker = Broker::start();
    let pool = new_pool(&broker, "pool-a");
    let state = workerpool_operator::backend::state::StateDir::new(&broker.state_dir);
    let backend = RawClient::connect(
        broker.port,
        state.backend_tls().expect("backend TLS"),
        "raw-backend",
    )
    .await;
    let (options, metrics) = options_with_metrics();
    let (link, mut inbound) = PoolLink::connect(&pool, options).expect("connect");
    link.wait_connected(WAIT).await.expect("connected");
    let worker = Ulid::generate();
    let topic = format!("spacelift/readonly/{}/{worker}", pool.pool_id);
    let pool_topic = format!("spacelift/readonly/{}", pool.pool_id);
    let valid = schedule(worker, Ulid::generate(), 1);
    let valid_json = serde_json::to_value(&valid).expect("json");
    let with = |change: &dyn Fn(&mut serde_json::Value)| {
        let mut json = valid_json.clone();
        change(&mut json);
        json.to_string().into_bytes()
    };

    let bad: Vec<(&str, String, Vec<u8>)> = vec![
        ("malformed", topic.clone(), b"{not json".to_vec()),
        ("malformed", topic.clone(), Vec::new()),
        (
            "malformed",
            topic.clone(),
            with(&|j| j["body"]["attempt"] = "x".into()),
        ),
        (
            "oversized",
            topic.clone(),
            vec![b'{'; DEFAULT_MAX_PAYLOAD + 1],
        ),
        (
            "unknown_version",
            topic.clone(),
            with(&|j| j["version"] = 2.into()),
        ),
        (
            "unknown_type",
            topic.clone(),
            with(&|j| j["type"] = "run.teleport".into()),
        ),
        ("wrong_topic", pool_topic.clone(), with(&|_| {})),
        (
            "wrong_topic",
            format!("spacelift/readonly/{}/{}", pool.pool_id, Ulid::generate()),
            with(&|_| {}),
        ),
    ];
    for (_, topic, payload) in &bad {
        backend
            .client
            .publish(topic.clone(), QoS::AtLeastOnce, false, payload.clone())
            .await
            .expect("publish bad payload");
    }
    backend
        .client
        .publish(topic.clone(), QoS::AtLeastOnce, false, with(&|_| {}))
        .await
        .expect("publish valid payload");

    // Only the valid message reaches the handler, after all the bad ones.
    let delivery = next(&mut inbound, WAIT)
        .await
        .expect("valid message delivered");
    assert_eq!(delivery.message, valid);
    assert!(matches!(delivery.message.body, Body::RunSchedule(_)));
    delivery.ack().await.expect("ack");
    assert!(next(&mut inbound, QUIET).await.is_none());
    let label = pool.pool_id.to_string();
    for reason in [
        "malformed",
        "oversized",
        "unknown_version",
        "unknown_type",
        "wrong_topic",
    ] {
        let want = bad.iter().filter(|(r, _, _)| *r == reason).count() as u64;
        assert_eq!(
            metrics.dropped_count(&label, reason),
            want,
            "reason {reason}"
        );
    }
    assert!(
        link.state().borrow().is_connected(),
        "the link keeps working"
    );

    // The bad payloads were acknowledged: nothing comes back on a new connection.
    link.shutdown().await;
    let (options, _) = options_with_metrics();
    let (link, mut inbound) = PoolLink::connect(&pool, options).expect("reconnect");
    link.wait_connected(WAIT).await.expect("connected");
    assert!(next(&mut inbound, QUIET).await.is_none());
    link.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_link_reconnects_after_the_broker_restarts_and_keeps_its_session() {
    let mut broker = Broker::start();
    let pool = new_pool(&broker, "pool-a");
    let (options, _metrics) = options_with_metrics();
    let (link, mut inbound) = PoolLink::connect(&pool, options).expect("connect");
    link.wait_connected(WAIT).await.expect("connected");

    broker.restart();
    let mut state = link.state();
    state
        .wait_for(|s| !s.is_connected())
        .await
        .expect("notices the broker went away");
    link.wait_connected(WAIT).await.expect("reconnected");

    let (backend, _backend_inbound) = backend_link(&broker).await;
    let run = schedule(Ulid::generate(), Ulid::generate(), 1);
    backend.publish(pool.pool_id, &run).await.expect("publish");
    let delivery = next(&mut inbound, WAIT)
        .await
        .expect("delivered after broker restart");
    assert_eq!(delivery.message, run);
    delivery.ack().await.expect("ack");
    link.shutdown().await;
    backend.shutdown().await;
}

/// A burst far larger than every queue (broker receive maximum, handler channel, rumqttc
/// request queue) flows through a handler that acknowledges each message. Guards against the
/// handler and the link waiting on each other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_flows_through_a_handler_that_acks_each_message() {
    let broker = Broker::start();
    let pool = new_pool(&broker, "pool-a");
    let (backend, _backend_inbound) = backend_link(&broker).await;
    let (options, metrics) = options_with_metrics();
    let (link, mut inbound) = PoolLink::connect(&pool, options).expect("connect");
    link.wait_connected(WAIT).await.expect("connected");
    let worker = Ulid::generate();
    let count = 3000;
    let messages: Vec<_> = (0..count)
        .map(|_| schedule(worker, Ulid::generate(), 1))
        .collect();
    let backend = std::sync::Arc::new(backend);
    let sender = {
        let backend = backend.clone();
        let pool_id = pool.pool_id;
        tokio::spawn(async move {
            for message in &messages {
                backend.publish(pool_id, message).await.expect("publish");
            }
        })
    };
    for received in 0..count {
        let delivery = next(&mut inbound, WAIT)
            .await
            .unwrap_or_else(|| panic!("stalled after {received} messages"));
        tokio::time::timeout(WAIT, delivery.ack())
            .await
            .unwrap_or_else(|_| panic!("acknowledging stalled after {received} messages"))
            .expect("ack");
    }
    sender.await.expect("sender");
    assert_eq!(
        metrics.received_count(&pool.pool_id.to_string(), "run.schedule"),
        count as u64
    );
    link.shutdown().await;
}
