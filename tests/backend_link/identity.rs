//! A certificate is an identity on the broker: the client id a pool presents is replaced by
//! its certificate's CN, so pool A's certificate cannot pose as the backend or as pool B
//! (issue 12, item 2). Without that binding, Mosquitto closes the real client's connection
//! ("already connected, closing old connection") and hands its session to the impostor.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason};
use ulid::Ulid;
use workerpool_operator::credentials::Credentials;
use workerpool_operator::link::{LinkState, PoolLink};
use workerpool_operator::protocol::{Body, Message, RunRef};

use crate::broker::Broker;
use crate::{RawClient, backend_link, fast_options, new_pool, next, schedule};

const WAIT: Duration = Duration::from_secs(10);
const QUIET: Duration = Duration::from_millis(1500);

fn accepted(worker: Ulid) -> Message {
    Message::for_worker(
        worker,
        Body::RunAccepted(RunRef::new(&Ulid::generate().to_string(), "preparing", 1)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_certificate_cannot_take_the_backends_client_id_or_session() {
    let broker = Broker::start();
    let pool_a = new_pool(&broker, "pool-a");
    let pool_b = new_pool(&broker, "pool-b");
    let (backend, mut backend_inbound) = backend_link(&broker).await;
    let mut backend_state = backend.state();
    backend_state.mark_unchanged();

    // Pool A connects with the backend's client id, asking for a clean start, while the
    // backend is connected: the backend stays connected and keeps receiving.
    let (impostor, _) = RawClient::connect_as(
        broker.port,
        pool_a.tls_client_config().expect("tls A"),
        "workerpool-backend",
        true,
    )
    .await;
    let (b, _b_inbound) = PoolLink::connect(&pool_b, fast_options()).expect("pool B");
    b.wait_connected(WAIT).await.expect("pool B connected");
    let first = accepted(Ulid::generate());
    b.publish(&first).await.expect("B publishes");
    let received = next(&mut backend_inbound, WAIT)
        .await
        .expect("the backend still receives pool B's messages");
    assert_eq!(received.message, first);
    received.ack().await.expect("ack");
    assert!(
        !backend_state.has_changed().unwrap_or(true),
        "the backend's connection was never interrupted: {}",
        *backend_state.borrow()
    );
    assert!(
        !broker.log().contains("already connected"),
        "no client was disconnected for its client id:\n{}",
        broker.log()
    );
    impostor.disconnect().await;

    // While the backend is away, pool B reports; the message waits in the backend's session.
    backend.shutdown().await;
    let queued = accepted(Ulid::generate());
    b.publish(&queued)
        .await
        .expect("B publishes while the backend is away");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Pool A tries to resume that session, then to wipe it with a clean start.
    let resumed = cannot_resume(&broker, &pool_a, "workerpool-backend", "the backend").await;
    resumed.disconnect().await;
    let (wiper, _) = RawClient::connect_as(
        broker.port,
        pool_a.tls_client_config().expect("tls A"),
        "workerpool-backend",
        true,
    )
    .await;
    wiper.disconnect().await;

    // The backend comes back to its own session, with the message queued for it.
    let (backend, mut backend_inbound) = backend_link(&broker).await;
    let received = next(&mut backend_inbound, WAIT)
        .await
        .expect("the backend's queued message survived pool A's attempts");
    assert_eq!(received.message, queued);
    received.ack().await.expect("ack");
    b.shutdown().await;
    backend.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_certificate_cannot_take_another_pools_client_id_or_session() {
    let broker = Broker::start();
    let pool_a = new_pool(&broker, "pool-a");
    let pool_b = new_pool(&broker, "pool-b");
    let (backend, _backend_inbound) = backend_link(&broker).await;
    let b_id = pool_b.pool_id.to_string();
    let worker_b = Ulid::generate();

    // Pool B is connected (its session and subscriptions exist); pool A connects with B's
    // ULID as its client id: B is not disconnected.
    let (b, _b_inbound) = PoolLink::connect(&pool_b, fast_options()).expect("pool B");
    b.wait_connected(WAIT).await.expect("pool B connected");
    let mut b_state = b.state();
    b_state.mark_unchanged();
    let (impostor, _) = RawClient::connect_as(
        broker.port,
        pool_a.tls_client_config().expect("tls A"),
        &b_id,
        true,
    )
    .await;
    tokio::time::sleep(QUIET).await;
    assert!(
        !b_state.has_changed().unwrap_or(true),
        "pool B's connection was never interrupted: {}",
        *b_state.borrow()
    );
    assert!(matches!(*b_state.borrow(), LinkState::Connected { .. }));
    assert!(
        !broker.log().contains("already connected"),
        "no client was disconnected for its client id:\n{}",
        broker.log()
    );
    impostor.disconnect().await;

    // B goes away; the backend schedules a run for it, queued in B's session.
    b.shutdown().await;
    let run = schedule(worker_b, Ulid::generate(), 1);
    backend
        .publish(pool_b.pool_id, &run)
        .await
        .expect("publish");
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Pool A, as B's client id, tries to resume B's session: nothing of B's reaches it, and
    // it may not write on B's topics either.
    let mut resumed = cannot_resume(&broker, &pool_a, &b_id, "pool B").await;
    resumed
        .client
        .publish(
            format!("spacelift/writeonly/{b_id}/{worker_b}"),
            QoS::AtLeastOnce,
            false,
            workerpool_operator::protocol::encode(&accepted(worker_b)),
        )
        .await
        .expect("queue forged publish");
    let puback = resumed
        .expect(WAIT, |p| matches!(p, Packet::PubAck(_)))
        .await;
    assert!(
        matches!(puback, Some(Packet::PubAck(ref ack)) if ack.reason == PubAckReason::NotAuthorized),
        "{puback:?}"
    );
    resumed.disconnect().await;
    // ... and a clean start under B's id does not wipe B's session.
    let (wiper, _) = RawClient::connect_as(
        broker.port,
        pool_a.tls_client_config().expect("tls A"),
        &b_id,
        true,
    )
    .await;
    wiper.disconnect().await;

    // B reconnects to its own session and gets the run, once.
    let (b, mut b_inbound) = PoolLink::connect(&pool_b, fast_options()).expect("pool B again");
    b.wait_connected(WAIT).await.expect("pool B reconnected");
    let delivery = next(&mut b_inbound, WAIT)
        .await
        .expect("pool B's queued schedule is delivered to pool B");
    assert_eq!(delivery.message, run);
    delivery.ack().await.expect("ack");
    assert!(
        next(&mut b_inbound, QUIET).await.is_none(),
        "delivered once"
    );
    b.shutdown().await;
    backend.shutdown().await;
}

/// Connects with `pool`'s certificate as `client_id`, asking to resume its session, and
/// checks that the broker found none and delivers none of `owner`'s queued messages.
async fn cannot_resume(
    broker: &Broker,
    pool: &Credentials,
    client_id: &str,
    owner: &str,
) -> RawClient {
    let tls = pool
        .tls_client_config()
        .expect("the pool's TLS configuration");
    let (mut resumed, connack) = RawClient::connect_as(broker.port, tls, client_id, false).await;
    assert!(
        !connack.session_present,
        "a pool certificate must not find {owner}'s session"
    );
    let leaked = resumed
        .expect(QUIET, |p| matches!(p, Packet::Publish(_)))
        .await;
    assert!(
        leaked.is_none(),
        "a pool certificate received {owner}'s queued message: {leaked:?}"
    );
    resumed
}
