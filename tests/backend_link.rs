//! The backend link and the reference backend against a real Mosquitto with mutual TLS
//! (issue 4, item 5). Each test starts its own broker on a free port.

mod broker;

#[path = "backend_link/acl.rs"]
mod acl;
#[path = "backend_link/backend.rs"]
mod backend;
#[path = "backend_link/connect.rs"]
mod connect;
#[path = "backend_link/delivery.rs"]
mod delivery;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;
use ulid::Ulid;
use workerpool_operator::backend::pool::{PoolRequest, create_pool};
use workerpool_operator::backend::state::StateDir;
use workerpool_operator::credentials::{Credentials, decode_credentials};
use workerpool_operator::link::{
    BackendEndpoint, BackendLink, Backoff, Inbound, LinkMetrics, LinkOptions,
};
use workerpool_operator::protocol::{Body, Message, RunSchedule};

use broker::Broker;

/// Link options that retry quickly, for tests.
pub fn fast_options() -> LinkOptions {
    LinkOptions {
        keep_alive: Duration::from_secs(5),
        backoff: Backoff {
            initial: Duration::from_millis(50),
            max: Duration::from_millis(500),
            jitter: 0.5,
        },
        first_connect_retries: Some(40),
        ..LinkOptions::default()
    }
}

/// Link options with their own metrics.
pub fn options_with_metrics() -> (LinkOptions, LinkMetrics) {
    let metrics = LinkMetrics::register(&prometheus::Registry::new()).expect("metrics");
    let options = LinkOptions {
        metrics: Some(metrics.clone()),
        ..fast_options()
    };
    (options, metrics)
}

/// Creates a pool in the broker's backend state and decodes its credentials.
pub fn new_pool(broker: &Broker, name: &str) -> Credentials {
    let state = StateDir::new(&broker.state_dir);
    let pool = create_pool(
        &state,
        &PoolRequest {
            name,
            csr_pem: None,
            key_bits: 2048,
            broker_url: Some(&broker.url),
        },
    )
    .expect("create pool");
    let key = pool.private_key_value().expect("generated key");
    decode_credentials(pool.token.as_bytes(), key.as_bytes()).expect("credentials decode")
}

/// The reference backend's link to `broker`.
pub async fn backend_link(broker: &Broker) -> (BackendLink, mpsc::Receiver<Inbound>) {
    workerpool_operator::backend::install_crypto_provider();
    let state = StateDir::new(&broker.state_dir);
    let endpoint = BackendEndpoint {
        broker: workerpool_operator::credentials::BrokerUrl::parse(&broker.url).expect("url"),
        tls: Some(state.backend_tls().expect("backend TLS")),
        namespace: "spacelift".to_string(),
    };
    let (link, inbound) = BackendLink::connect(&endpoint, fast_options()).expect("backend link");
    link.wait_connected(Duration::from_secs(10))
        .await
        .expect("backend connected");
    (link, inbound)
}

/// A run schedule for `worker`.
pub fn schedule(worker: Ulid, run_id: Ulid, attempt: u32) -> Message {
    Message::for_worker(
        worker,
        Body::RunSchedule(RunSchedule {
            run_id: run_id.to_string(),
            stage: "preparing".to_string(),
            attempt,
            runner_image: Some("public.ecr.aws/spacelift/runner-terraform:latest".to_string()),
            launcher_image: "public.ecr.aws/spacelift/launcher:test".to_string(),
            ..RunSchedule::default()
        }),
    )
}

/// The next inbound message, or `None` after `wait`.
pub async fn next(inbound: &mut mpsc::Receiver<Inbound>, wait: Duration) -> Option<Inbound> {
    tokio::time::timeout(wait, inbound.recv())
        .await
        .ok()
        .flatten()
}

/// A bare MQTT 5 client with a given TLS identity, for doing what the link never would.
pub struct RawClient {
    pub client: AsyncClient,
    pub packets: mpsc::UnboundedReceiver<Packet>,
    task: tokio::task::JoinHandle<()>,
}

impl RawClient {
    pub async fn connect(port: u16, tls: Arc<rustls::ClientConfig>, client_id: &str) -> Self {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        options.set_clean_start(true);
        options.set_max_packet_size(Some(4 * 1024 * 1024));
        let (client, mut eventloop) = AsyncClient::new(options, 64);
        let (tx, mut packets) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(packet)) => {
                        if tx.send(packet).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let connected = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(packet) = packets.recv().await {
                if matches!(packet, Packet::ConnAck(_)) {
                    return true;
                }
            }
            false
        })
        .await;
        assert_eq!(connected, Ok(true), "raw client {client_id} connected");
        Self {
            client,
            packets,
            task,
        }
    }

    /// Waits for a packet matching `want`, skipping others, for at most `wait`.
    pub async fn expect(
        &mut self,
        wait: Duration,
        want: impl Fn(&Packet) -> bool,
    ) -> Option<Packet> {
        tokio::time::timeout(wait, async {
            while let Some(packet) = self.packets.recv().await {
                if want(&packet) {
                    return Some(packet);
                }
            }
            None
        })
        .await
        .ok()
        .flatten()
    }
}

impl Drop for RawClient {
    fn drop(&mut self) {
        self.task.abort();
    }
}
