//! The backend link and the reference backend against a real Mosquitto with mutual TLS
//! (issue 4, item 5), and the reference backend's stack runs and launcher API (issue 11).
//! Each test starts its own broker on a free port.

mod broker;

#[path = "backend_link/acl.rs"]
mod acl;
#[path = "backend_link/backend.rs"]
mod backend;
#[path = "backend_link/connect.rs"]
mod connect;
#[path = "backend_link/delivery.rs"]
mod delivery;
#[path = "backend_link/harness.rs"]
mod harness;
#[path = "backend_link/identity.rs"]
mod identity;
#[path = "backend_link/launcher_auth.rs"]
mod launcher_auth;
#[path = "backend_link/launcher_client.rs"]
mod launcher_client;
#[path = "backend_link/reports.rs"]
mod reports;
#[path = "backend_link/stack_runs.rs"]
mod stack_runs;

use std::sync::Arc;
use std::time::Duration;

use rumqttc::v5::mqttbytes::v5::{ConnAck, Packet};
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::mpsc;
use ulid::Ulid;
use workerpool_operator::backend::state::StateDir;
use workerpool_operator::credentials::Credentials;
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
    harness::new_pool_with_token(broker, name).0
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
        Self::connect_as(port, tls, client_id, true).await.0
    }

    /// Connects with `client_id` and `clean_start` as given, and returns the broker's CONNACK
    /// too (whether it found a session to resume).
    pub async fn connect_as(
        port: u16,
        tls: Arc<rustls::ClientConfig>,
        client_id: &str,
        clean_start: bool,
    ) -> (Self, ConnAck) {
        let mut options = MqttOptions::new(client_id, "127.0.0.1", port);
        options.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
        options.set_clean_start(clean_start);
        if !clean_start {
            // A session that outlives the connection, as the operator's and the backend's do.
            options.set_session_expiry_interval(Some(3600));
        }
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
                    // After our DISCONNECT the loop ends, so the client does not reconnect.
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => {
                        let _ = eventloop.poll().await;
                        return;
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        let connack = tokio::time::timeout(Duration::from_secs(10), async {
            while let Some(packet) = packets.recv().await {
                if let Packet::ConnAck(connack) = packet {
                    return Some(connack);
                }
            }
            None
        })
        .await
        .ok()
        .flatten();
        let Some(connack) = connack else {
            panic!("raw client {client_id} did not connect");
        };
        let client = Self {
            client,
            packets,
            task,
        };
        (client, connack)
    }

    /// Disconnects cleanly (a DISCONNECT, so the broker keeps any session) and waits until
    /// the client has stopped.
    pub async fn disconnect(mut self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.task).await;
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
