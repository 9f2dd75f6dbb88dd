//! The backend link: one MQTT 5 connection per pool (rumqttc `v5`), mutual TLS with the pool
//! certificate, a persistent session, QoS 1 with manual acknowledgements.
//!
//! ```no_run
//! # async fn demo(credentials: workerpool_operator::credentials::Credentials) -> Result<(), Box<dyn std::error::Error>> {
//! use workerpool_operator::link::{LinkOptions, PoolLink};
//! use workerpool_operator::protocol::{Body, Message, RunRef};
//!
//! let (link, mut inbound) = PoolLink::connect(&credentials, LinkOptions::default())?;
//! link.wait_connected(std::time::Duration::from_secs(30)).await?;
//! while let Some(delivery) = inbound.recv().await {
//!     if let (Body::RunSchedule(schedule), Some(worker)) =
//!         (&delivery.message.body, delivery.message.worker)
//!     {
//!         // ... mark the Worker BUSY, create the Pod (idempotent by its name) ...
//!         let run = RunRef::new(&schedule.run_id, &schedule.stage, schedule.attempt);
//!         link.publish(&Message::for_worker(worker, Body::RunAccepted(run))).await?;
//!     }
//!     delivery.ack().await?; // only now may the broker forget it
//! }
//! # Ok(()) }
//! ```
//!
//! Delivery guarantees:
//! - **Inbound, at least once.** A message is acknowledged to the broker only when the handler
//!   calls [`Inbound::ack`]. If the process dies first, the broker redelivers it to the next
//!   connection with the same client id (persistent session: clean start off, session
//!   expiry). Messages published while the link is down are queued by the broker for the
//!   session and delivered on reconnect.
//! - **Duplicates** (a redelivery, or a backend re-sending a schedule) reach the handler once
//!   per [`Message::dedup_key`] while the process lives (bounded memory). Across restarts the
//!   controller's deterministic Pod names are the guarantee.
//! - **Outbound.** [`PoolLink::publish`] queues a QoS 1 publish; rumqttc retransmits it after a
//!   reconnect. Publishes still queued when the process dies are lost, which is why the
//!   controller keeps every run report in the Worker's status and re-sends the reports and
//!   every worker's state on each (re)connection.
//! - **Bad payloads** (oversized, malformed, unknown version or type, wrong topic) are
//!   acknowledged and dropped with a log line naming the topic and the reason, and counted in
//!   `workerpool_link_messages_dropped_total{reason}`. The link keeps working.

mod backoff;
mod dedup;
mod inbound;
mod metrics;
mod options;
mod session;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, MqttOptions};
use rumqttc::{TlsConfiguration, Transport};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use ulid::Ulid;

pub use backoff::Backoff;
pub use inbound::{AckHandle, Inbound};
pub use metrics::LinkMetrics;
pub use options::{LinkError, LinkOptions, LinkState};

use crate::credentials::{BrokerScheme, BrokerUrl, Credentials};
use crate::protocol::{self, Direction, Message, Topic};
use dedup::Dedup;

/// Which side of the protocol a link speaks for.
#[derive(Clone, Debug)]
enum Role {
    /// A pool: reads `readonly/<pool>/...`, writes `writeonly/<pool>/...`.
    Pool(Ulid),
    /// The backend: reads `writeonly/#`, writes `readonly/<any pool>/...`.
    Backend,
}

impl Role {
    fn label(&self) -> String {
        match self {
            Role::Pool(pool) => pool.to_string(),
            Role::Backend => "backend".to_string(),
        }
    }

    fn subscriptions(&self, namespace: &str) -> Vec<String> {
        match self {
            Role::Pool(pool) => protocol::pool_subscriptions(namespace, *pool).to_vec(),
            Role::Backend => vec![protocol::backend_subscription(namespace)],
        }
    }

    /// Whether an inbound topic is one this side should receive.
    fn accepts(&self, namespace: &str, topic: &Topic) -> bool {
        topic.namespace == namespace
            && match self {
                Role::Pool(pool) => topic.pool == *pool && topic.direction == Direction::ToPool,
                Role::Backend => topic.direction == Direction::ToBackend,
            }
    }
}

/// The shared machinery of [`PoolLink`] and [`BackendLink`].
struct Link {
    client: AsyncClient,
    namespace: String,
    label: String,
    max_payload: usize,
    metrics: LinkMetrics,
    state: watch::Receiver<LinkState>,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

struct Endpoint<'a> {
    broker: &'a BrokerUrl,
    tls: Option<Arc<rustls::ClientConfig>>,
    namespace: &'a str,
    client_id: String,
    /// Username for plain `mqtt://` only (TLS identities come from the certificate).
    plain_username: String,
}

impl Link {
    fn start(
        endpoint: Endpoint<'_>,
        role: Role,
        options: LinkOptions,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), LinkError> {
        let label = role.label();
        let metrics = match options.metrics.clone() {
            Some(metrics) => metrics,
            None => {
                LinkMetrics::unregistered().map_err(|err| LinkError::Failed(err.to_string()))?
            }
        };
        let broker = endpoint.broker;
        // Always the certificate's identity (the pool ULID, or `workerpool-backend`): the
        // broker binds the client id to it (docs/protocol.md), and it must be stable across
        // restarts for the broker to keep the session.
        let client_id = endpoint.client_id;
        let mut mqtt = MqttOptions::new(client_id.clone(), broker.host.clone(), broker.port);
        match (broker.scheme, endpoint.tls) {
            (BrokerScheme::Tls, Some(tls)) => {
                mqtt.set_transport(Transport::Tls(TlsConfiguration::Rustls(tls)));
            }
            (BrokerScheme::Tls, None) => {
                return Err(LinkError::Failed(
                    "an mqtts:// broker needs a TLS configuration".to_string(),
                ));
            }
            (BrokerScheme::Plain, _) if !options.allow_insecure => {
                return Err(LinkError::InsecureRefused(broker.to_string()));
            }
            (BrokerScheme::Plain, _) => {
                tracing::warn!(
                    link = %label, broker = %broker,
                    "connecting to the broker WITHOUT TLS: traffic and identity are unprotected; use mqtts:// outside local experiments"
                );
                mqtt.set_credentials(endpoint.plain_username, "");
            }
        }
        mqtt.set_keep_alive(options.keep_alive.max(Duration::from_secs(5)));
        mqtt.set_clean_start(false);
        let expiry = u32::try_from(options.session_expiry.as_secs()).unwrap_or(u32::MAX);
        mqtt.set_session_expiry_interval(Some(expiry));
        mqtt.set_manual_acks(true);
        mqtt.set_receive_maximum(Some(options.receive_maximum.max(1)));
        mqtt.set_outgoing_inflight_upper_limit(options.outgoing_inflight.max(1));
        // The broker never sends us a packet above this. It is well above `max_payload`, so
        // an oversized payload still arrives, is counted and dropped, instead of breaking the
        // connection (rumqttc treats a too-large packet as a fatal error).
        let hard_limit = options.max_payload.saturating_mul(4).max(1024 * 1024);
        mqtt.set_max_packet_size(Some(u32::try_from(hard_limit).unwrap_or(u32::MAX)));
        mqtt.set_connection_timeout(10);

        let (client, eventloop) = AsyncClient::new(mqtt, 256);
        let (state_tx, state_rx) = watch::channel(LinkState::Connecting {
            attempt: 1,
            last_error: None,
        });
        let (inbound_tx, inbound_rx) = mpsc::channel(usize::from(options.receive_maximum) * 2);
        let (stop_tx, stop_rx) = oneshot::channel();
        let (overflow_tx, overflow) = mpsc::unbounded_channel();
        let session = session::Session {
            eventloop,
            client: client.clone(),
            namespace: endpoint.namespace.to_string(),
            label: label.clone(),
            subscriptions: role.subscriptions(endpoint.namespace),
            role,
            max_payload: options.max_payload,
            first_connect_retries: options.first_connect_retries,
            backoff: options.backoff,
            metrics: metrics.clone(),
            dedup: Arc::new(Mutex::new(Dedup::new(options.dedup_capacity))),
            inbound: inbound_tx,
            state: state_tx,
            overflow,
            overflow_tx,
        };
        tracing::info!(link = %label, broker = %broker, client_id = %client_id, "starting the MQTT link");
        let task = tokio::spawn(session.run(stop_rx));
        Ok((
            Self {
                client,
                namespace: endpoint.namespace.to_string(),
                label,
                max_payload: options.max_payload,
                metrics,
                state: state_rx,
                stop: Some(stop_tx),
                task: Some(task),
            },
            inbound_rx,
        ))
    }

    async fn publish(&self, topic: Topic, message: &Message) -> Result<(), LinkError> {
        self.publish_with(topic, message, false).await
    }

    /// [`Link::publish`], asking the broker to retain the message when `retain`: a client
    /// that subscribes later (a restarted operator) gets the latest one at once.
    async fn publish_with(
        &self,
        topic: Topic,
        message: &Message,
        retain: bool,
    ) -> Result<(), LinkError> {
        let mut payload = protocol::encode(message);
        if payload.len() > self.max_payload {
            // A report is always sendable: its texts are cut further until it fits.
            let mut smaller = message.clone();
            if !smaller.shrink_to_fit(self.max_payload) {
                return Err(LinkError::Oversized {
                    kind: message.body.kind(),
                    size: payload.len(),
                    max: self.max_payload,
                });
            }
            tracing::warn!(link = %self.label, kind = message.body.kind(), size = payload.len(), max = self.max_payload, "a report was over the payload cap; its texts were cut to fit");
            self.metrics.shrunk(&self.label, message.body.kind());
            payload = protocol::encode(&smaller);
        }
        if matches!(
            *self.state.borrow(),
            LinkState::Failed { .. } | LinkState::Closed
        ) {
            return Err(LinkError::Closed);
        }
        self.client
            .publish(topic.to_string(), QoS::AtLeastOnce, retain, payload)
            .await
            .map_err(|_| LinkError::Closed)?;
        self.metrics.published(&self.label, message.body.kind());
        Ok(())
    }

    async fn wait_connected(&self, timeout: Duration) -> Result<(), LinkError> {
        let mut state = self.state.clone();
        let wait = state.wait_for(|s| {
            s.is_connected() || matches!(s, LinkState::Failed { .. } | LinkState::Closed)
        });
        match tokio::time::timeout(timeout, wait).await {
            Ok(Ok(s)) => match &*s {
                LinkState::Connected { .. } => Ok(()),
                LinkState::Failed { error } => Err(LinkError::Failed(error.clone())),
                _ => Err(LinkError::Closed),
            },
            Ok(Err(_)) => Err(LinkError::Closed),
            Err(_) => Err(LinkError::Timeout {
                waited: timeout,
                state: self.state.borrow().clone(),
            }),
        }
    }

    async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(mut task) = self.task.take()
            && tokio::time::timeout(Duration::from_secs(5), &mut task)
                .await
                .is_err()
        {
            task.abort();
        }
    }

    fn abort(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// A pool's link to the backend. Cheap to share behind an `Arc`; all methods take `&self`.
pub struct PoolLink {
    pool_id: Ulid,
    link: Link,
}

impl PoolLink {
    /// Starts connecting with the pool's credentials and returns at once; watch
    /// [`PoolLink::state`] or await [`PoolLink::wait_connected`]. Inbound messages arrive on
    /// the receiver, which must be drained promptly (the link waits while it is full).
    /// Must be called within a Tokio runtime.
    pub fn connect(
        credentials: &Credentials,
        options: LinkOptions,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), LinkError> {
        let tls = match credentials.broker.scheme {
            BrokerScheme::Tls => Some(credentials.tls_client_config()?),
            BrokerScheme::Plain => None,
        };
        let endpoint = Endpoint {
            broker: &credentials.broker,
            tls,
            namespace: &credentials.topic_namespace,
            client_id: credentials.pool_id.to_string(),
            plain_username: credentials.pool_id.to_string(),
        };
        let (link, inbound) = Link::start(endpoint, Role::Pool(credentials.pool_id), options)?;
        Ok((
            Self {
                pool_id: credentials.pool_id,
                link,
            },
            inbound,
        ))
    }

    /// The pool this link serves.
    pub fn pool_id(&self) -> Ulid {
        self.pool_id
    }

    /// The topic namespace from the token.
    pub fn namespace(&self) -> &str {
        &self.link.namespace
    }

    /// Queues a message to the backend (QoS 1) on the worker topic named by
    /// `message.worker`, or the pool topic. Waits only if the outgoing queue is full; while
    /// disconnected, messages queue and go out after the reconnect.
    pub async fn publish(&self, message: &Message) -> Result<(), LinkError> {
        let topic = message.topic(&self.link.namespace, self.pool_id, Direction::ToBackend)?;
        self.link.publish(topic, message).await
    }

    /// The connection state, for readiness and pool status.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.link.state.clone()
    }

    /// Counts an inbound message of `kind` whose handling failed for good with `error` (a
    /// short label) and that was acknowledged anyway.
    pub fn count_abandoned(&self, kind: &str, error: &str) {
        self.link.metrics.abandoned(&self.link.label, kind, error);
    }

    /// Waits until connected and subscribed; fails early if the link failed or closed.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), LinkError> {
        self.link.wait_connected(timeout).await
    }

    /// Disconnects cleanly (the broker keeps the session for `session_expiry`) and stops.
    pub async fn shutdown(self) {
        self.link.shutdown().await;
    }

    /// Drops the connection at once, without a DISCONNECT (e.g. on losing leadership): the
    /// broker keeps the session, and unacknowledged messages are redelivered to the next
    /// connection.
    pub fn abort(self) {
        self.link.abort();
    }
}

/// The reference backend's link: one connection for all pools, with the backend identity.
pub struct BackendLink {
    link: Link,
}

/// Where and how the backend connects.
pub struct BackendEndpoint {
    /// The broker.
    pub broker: BrokerUrl,
    /// TLS with the backend's client certificate (required for `mqtts://`).
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Topic namespace shared with the pools.
    pub namespace: String,
}

/// The backend's identity: its certificate's CN, its client id and, for plain `mqtt://`, its
/// username.
pub const BACKEND_IDENTITY: &str = "workerpool-backend";

impl BackendLink {
    /// Starts connecting; see [`PoolLink::connect`].
    pub fn connect(
        endpoint: &BackendEndpoint,
        options: LinkOptions,
    ) -> Result<(Self, mpsc::Receiver<Inbound>), LinkError> {
        let inner = Endpoint {
            broker: &endpoint.broker,
            tls: endpoint.tls.clone(),
            namespace: &endpoint.namespace,
            client_id: BACKEND_IDENTITY.to_string(),
            plain_username: BACKEND_IDENTITY.to_string(),
        };
        let (link, inbound) = Link::start(inner, Role::Backend, options)?;
        Ok((Self { link }, inbound))
    }

    /// Queues a message to `pool` (its worker topic, or the pool topic).
    pub async fn publish(&self, pool: Ulid, message: &Message) -> Result<(), LinkError> {
        let topic = message.topic(&self.link.namespace, pool, Direction::ToPool)?;
        self.link.publish(topic, message).await
    }

    /// Queues a pool-level message to `pool` that the broker retains, so that the pool's
    /// operator gets the latest one whenever it (re)subscribes (`pool.demand`).
    pub async fn publish_retained(&self, pool: Ulid, message: &Message) -> Result<(), LinkError> {
        let topic = message.topic(&self.link.namespace, pool, Direction::ToPool)?;
        self.link.publish_with(topic, message, true).await
    }

    /// Queues `payload` as it is on `topic`, unchecked: what a faulty backend would send
    /// (see [`crate::backend::serve::Server::publish_payload_unrecorded`]).
    pub async fn publish_payload(&self, topic: &Topic, payload: Vec<u8>) -> Result<(), LinkError> {
        self.link
            .client
            .publish(topic.to_string(), QoS::AtLeastOnce, false, payload)
            .await
            .map_err(|_| LinkError::Closed)
    }

    /// The connection state.
    pub fn state(&self) -> watch::Receiver<LinkState> {
        self.link.state.clone()
    }

    /// Waits until connected and subscribed.
    pub async fn wait_connected(&self, timeout: Duration) -> Result<(), LinkError> {
        self.link.wait_connected(timeout).await
    }

    /// Disconnects cleanly and stops.
    pub async fn shutdown(self) {
        self.link.shutdown().await;
    }
}
