//! Connecting: the first-connection retry cap, and plain MQTT only when allowed.

use std::time::Duration;

use workerpool_operator::backend::pool::{PoolRequest, create_pool};
use workerpool_operator::backend::state::StateDir;
use workerpool_operator::credentials::decode_credentials;
use workerpool_operator::link::{LinkError, LinkOptions, LinkState, PoolLink};

use crate::broker::Broker;
use crate::{fast_options, new_pool};

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_connection_gives_up_after_the_retry_count() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = StateDir::new(dir.path());
    let nobody = format!("mqtts://127.0.0.1:{}", free_port());
    let pool = create_pool(
        &state,
        &PoolRequest {
            name: "unreachable",
            csr_pem: None,
            key_bits: 2048,
            broker_url: Some(&nobody),
        },
    )
    .expect("pool");
    let key = pool.private_key_value().expect("key");
    let credentials = decode_credentials(pool.token.as_bytes(), key.as_bytes()).expect("creds");
    let options = LinkOptions {
        first_connect_retries: Some(2),
        ..fast_options()
    };
    let (link, mut inbound) = PoolLink::connect(&credentials, options).expect("start");
    let err = link
        .wait_connected(Duration::from_secs(20))
        .await
        .expect_err("cannot connect");
    assert!(matches!(err, LinkError::Failed(_)), "{err}");
    assert!(matches!(*link.state().borrow(), LinkState::Failed { .. }));
    assert!(inbound.recv().await.is_none(), "the inbound channel closes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_state_reports_connection_errors_while_retrying() {
    let broker = Broker::start();
    let mut credentials = new_pool(&broker, "pool-a");
    // Point the pool at a port where nothing listens.
    credentials.broker.port = free_port();
    let options = LinkOptions {
        first_connect_retries: None,
        ..fast_options()
    };
    let (link, _inbound) = PoolLink::connect(&credentials, options).expect("start");
    let mut state = link.state();
    let seen = tokio::time::timeout(
        Duration::from_secs(10),
        state.wait_for(|s| matches!(s, LinkState::Connecting { attempt, last_error: Some(_) } if *attempt >= 3)),
    )
    .await
    .is_ok();
    assert!(
        seen,
        "still retrying with the error exposed: {}",
        *link.state().borrow()
    );
    link.shutdown().await;
    assert_eq!(*state.borrow_and_update(), LinkState::Closed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_mqtt_is_refused_unless_allowed() {
    let broker = Broker::start();
    let mut credentials = new_pool(&broker, "pool-a");
    credentials.broker =
        workerpool_operator::credentials::BrokerUrl::parse("mqtt://127.0.0.1:1").expect("url");
    let refused = PoolLink::connect(&credentials, fast_options());
    assert!(
        matches!(refused, Err(LinkError::InsecureRefused(_))),
        "plain mqtt must need the flag"
    );
    let allowed = PoolLink::connect(
        &credentials,
        LinkOptions {
            allow_insecure: true,
            first_connect_retries: Some(0),
            ..fast_options()
        },
    );
    let (link, _inbound) = allowed.expect("allowed with the flag");
    // Nothing listens there; the point is that it tried.
    let err = link
        .wait_connected(Duration::from_secs(10))
        .await
        .expect_err("no broker");
    assert!(matches!(err, LinkError::Failed(_)), "{err}");
}
