//! The broker confines a pool certificate to its own pool's topics.

use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PubAckReason, SubscribeReasonCode};
use ulid::Ulid;
use workerpool_operator::protocol::{Body, Message, RunRef};

use crate::broker::Broker;
use crate::{RawClient, backend_link, new_pool, next, schedule};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pool_reads_and_writes_only_its_own_topics() {
    let broker = Broker::start();
    let pool_a = new_pool(&broker, "pool-a");
    let pool_b = new_pool(&broker, "pool-b");
    let (backend, mut backend_inbound) = backend_link(&broker).await;
    let worker_b = Ulid::generate();
    let topic_b_read = format!("spacelift/readonly/{}/{worker_b}", pool_b.pool_id);
    let topic_b_write = format!("spacelift/writeonly/{}/{worker_b}", pool_b.pool_id);

    // Pool B listens on its own topic; pool A tries to listen on B's topic, and on everything.
    let mut b = RawClient::connect(
        broker.port,
        pool_b.tls_client_config().expect("tls B"),
        &pool_b.pool_id.to_string(),
    )
    .await;
    b.client
        .subscribe(topic_b_read.clone(), QoS::AtLeastOnce)
        .await
        .expect("subscribe B");
    let mut a = RawClient::connect(
        broker.port,
        pool_a.tls_client_config().expect("tls A"),
        &pool_a.pool_id.to_string(),
    )
    .await;
    for filter in [topic_b_read.clone(), "spacelift/#".to_string()] {
        a.client
            .subscribe(filter, QoS::AtLeastOnce)
            .await
            .expect("subscribe A");
        // Mosquitto 2 grants the subscription and enforces `read` at delivery time.
        let suback = a
            .expect(Duration::from_secs(5), |p| matches!(p, Packet::SubAck(_)))
            .await;
        let Some(Packet::SubAck(suback)) = suback else {
            panic!("no SUBACK for pool A");
        };
        assert!(
            suback.return_codes.iter().all(|c| matches!(
                c,
                SubscribeReasonCode::Success(_) | SubscribeReasonCode::NotAuthorized
            )),
            "{suback:?}"
        );
    }
    b.expect(Duration::from_secs(5), |p| matches!(p, Packet::SubAck(_)))
        .await
        .expect("SUBACK for pool B");

    // The backend schedules a run on B's worker: B gets it, A gets nothing.
    backend
        .publish(pool_b.pool_id, &schedule(worker_b, Ulid::generate(), 1))
        .await
        .expect("backend publish");
    let delivered = b
        .expect(Duration::from_secs(5), |p| matches!(p, Packet::Publish(_)))
        .await;
    assert!(delivered.is_some(), "pool B receives its own message");
    let leaked = a
        .expect(Duration::from_secs(2), |p| matches!(p, Packet::Publish(_)))
        .await;
    assert!(
        leaked.is_none(),
        "pool A must not receive pool B's message: {leaked:?}"
    );

    // A publishes on B's writeonly topic: refused, and the backend never sees it.
    let forged = Message::for_worker(
        worker_b,
        Body::RunAccepted(RunRef::new(&Ulid::generate().to_string(), "preparing", 1)),
    );
    a.client
        .publish(
            topic_b_write,
            QoS::AtLeastOnce,
            false,
            workerpool_operator::protocol::encode(&forged),
        )
        .await
        .expect("queue forged publish");
    let puback = a
        .expect(Duration::from_secs(5), |p| matches!(p, Packet::PubAck(_)))
        .await;
    let Some(Packet::PubAck(puback)) = puback else {
        panic!("no PUBACK for the forged publish");
    };
    assert_eq!(puback.reason, PubAckReason::NotAuthorized);
    assert!(
        next(&mut backend_inbound, Duration::from_secs(1))
            .await
            .is_none(),
        "the backend must not receive a publish to another pool's topic"
    );

    // Positive control: A's publish on its own topic reaches the backend.
    let worker_a = Ulid::generate();
    let own = Message::for_worker(
        worker_a,
        Body::RunAccepted(RunRef::new(&Ulid::generate().to_string(), "preparing", 1)),
    );
    a.client
        .publish(
            format!("spacelift/writeonly/{}/{worker_a}", pool_a.pool_id),
            QoS::AtLeastOnce,
            false,
            workerpool_operator::protocol::encode(&own),
        )
        .await
        .expect("queue own publish");
    let puback = a
        .expect(Duration::from_secs(5), |p| matches!(p, Packet::PubAck(_)))
        .await;
    assert!(
        matches!(puback, Some(Packet::PubAck(ref ack)) if ack.reason == PubAckReason::Success),
        "{puback:?}"
    );
    let received = next(&mut backend_inbound, Duration::from_secs(5))
        .await
        .expect("the backend receives pool A's own message");
    assert_eq!(received.topic.pool, pool_a.pool_id);
    assert_eq!(received.message, own);
    received.ack().await.expect("ack");

    // And A may not write on a readonly topic, not even its own (only the backend may).
    a.client
        .publish(
            format!("spacelift/readonly/{}/{worker_a}", pool_a.pool_id),
            QoS::AtLeastOnce,
            false,
            workerpool_operator::protocol::encode(&schedule(worker_a, Ulid::generate(), 1)),
        )
        .await
        .expect("queue");
    let puback = a
        .expect(Duration::from_secs(5), |p| matches!(p, Packet::PubAck(_)))
        .await;
    assert!(
        matches!(puback, Some(Packet::PubAck(ref ack)) if ack.reason == PubAckReason::NotAuthorized),
        "{puback:?}"
    );
    backend.shutdown().await;
}
