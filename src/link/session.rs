//! The task that owns the rumqttc event loop: connects, subscribes, reconnects with backoff,
//! decodes and filters inbound publishes, and publishes the connection state.

use std::sync::{Arc, Mutex};

use rumqttc::Outgoing;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{
    Filter, Packet, PubAck, PubAckReason, Publish, Subscribe, SubscribeReasonCode,
};
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, Request};
use tokio::sync::{mpsc, oneshot, watch};

use super::dedup::{Dedup, Verdict};
use super::inbound::lock;
use super::{AckHandle, Backoff, Inbound, LinkMetrics, LinkState, Role};
use crate::protocol::{self, DropReason, Topic};

pub(super) struct Session {
    pub eventloop: EventLoop,
    pub client: AsyncClient,
    pub namespace: String,
    pub label: String,
    pub subscriptions: Vec<String>,
    pub role: Role,
    pub max_payload: usize,
    pub first_connect_retries: Option<u32>,
    pub backoff: Backoff,
    pub metrics: LinkMetrics,
    pub dedup: Arc<Mutex<Dedup<Publish>>>,
    pub inbound: mpsc::Sender<Inbound>,
    pub state: watch::Sender<LinkState>,
    /// Acknowledgements that did not fit into rumqttc's request queue.
    pub overflow: mpsc::UnboundedReceiver<Publish>,
    pub overflow_tx: mpsc::UnboundedSender<Publish>,
}

impl Session {
    pub async fn run(mut self, mut stop: oneshot::Receiver<()>) {
        let mut ever_connected = false;
        // Consecutive failed attempts since the last successful connection.
        let mut failures: u32 = 0;
        let mut session_present = false;
        let mut awaiting_suback = false;
        let mut receiver_gone_logged = false;
        loop {
            self.drain_overflow();
            let event = tokio::select! {
                _ = &mut stop => {
                    self.disconnect().await;
                    break;
                }
                event = self.eventloop.poll() => event,
            };
            let error = match event {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    self.metrics.connection_attempt(&self.label, true);
                    failures = 0;
                    ever_connected = true;
                    session_present = ack.session_present;
                    // Subscribe before anything queued goes out, so the first registration's
                    // answer has somewhere to arrive. Resubscribing a kept session is harmless.
                    let filters = self
                        .subscriptions
                        .iter()
                        .map(|path| Filter::new(path.clone(), QoS::AtLeastOnce));
                    self.eventloop
                        .pending
                        .push_front(Request::Subscribe(Subscribe::new_many(filters, None)));
                    awaiting_suback = true;
                    continue;
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) if awaiting_suback => {
                    awaiting_suback = false;
                    let refused: Vec<String> = ack
                        .return_codes
                        .iter()
                        .zip(&self.subscriptions)
                        .filter(|(code, _)| !matches!(code, SubscribeReasonCode::Success(_)))
                        .map(|(code, filter)| format!("{filter}: {code:?}"))
                        .collect();
                    if refused.is_empty() {
                        tracing::info!(link = %self.label, session_present, "connected to the broker");
                        self.metrics.set_connected(&self.label, true);
                        self.state
                            .send_replace(LinkState::Connected { session_present });
                        continue;
                    }
                    // Treat a refused subscription as a failed connection: nothing would
                    // arrive, and readiness must say so.
                    self.eventloop.clean();
                    format!("the broker refused subscriptions: {}", refused.join(", "))
                }
                Ok(Event::Incoming(Packet::Publish(publish))) => {
                    if !self.on_publish(publish).await && !receiver_gone_logged {
                        receiver_gone_logged = true;
                        tracing::warn!(link = %self.label, "inbound receiver dropped; messages stay unacknowledged for redelivery");
                    }
                    continue;
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    if !matches!(
                        ack.reason,
                        PubAckReason::Success | PubAckReason::NoMatchingSubscribers
                    ) {
                        self.metrics.publish_refused(&self.label);
                        tracing::warn!(link = %self.label, reason = ?ack.reason, "the broker refused a publish");
                    }
                    continue;
                }
                Ok(Event::Incoming(Packet::Disconnect(disconnect))) => {
                    tracing::warn!(link = %self.label, reason = ?disconnect.reason_code, "the broker closed the connection");
                    continue;
                }
                Ok(_) => continue,
                Err(err) => describe(&err),
            };

            // The connection failed or dropped.
            self.metrics.set_connected(&self.label, false);
            if !matches!(*self.state.borrow(), LinkState::Connected { .. }) {
                self.metrics.connection_attempt(&self.label, false);
            }
            failures = failures.saturating_add(1);
            if !ever_connected
                && let Some(max) = self.first_connect_retries
                && failures > max
            {
                tracing::error!(link = %self.label, error = %error, retries = max, "giving up on the first connection to the broker");
                self.state.send_replace(LinkState::Failed { error });
                return;
            }
            let delay = self.backoff.next_delay(failures);
            tracing::warn!(link = %self.label, error = %error, retry_in = ?delay, attempt = failures, "broker connection failed");
            self.state.send_replace(if ever_connected {
                LinkState::Reconnecting {
                    attempt: failures,
                    last_error: error,
                }
            } else {
                LinkState::Connecting {
                    attempt: failures + 1,
                    last_error: Some(error),
                }
            });
            tokio::select! {
                _ = &mut stop => break,
                _ = tokio::time::sleep(delay) => {}
            }
        }
        self.metrics.set_connected(&self.label, false);
        self.state.send_replace(LinkState::Closed);
    }

    /// Handles one inbound publish; returns false if the handler's receiver is gone.
    async fn on_publish(&mut self, publish: Publish) -> bool {
        let topic_name = String::from_utf8_lossy(&publish.topic).into_owned();
        let decoded =
            protocol::decode(&topic_name, &publish.payload, self.max_payload).and_then(|message| {
                Topic::parse(&topic_name)
                    .map(|topic| (topic, message))
                    .map_err(|err| protocol::ProtocolError {
                        topic: topic_name.clone(),
                        reason: err.into(),
                    })
            });
        let (topic, message) = match decoded {
            Ok(decoded) => decoded,
            Err(err) => {
                self.drop_message(
                    &publish,
                    &topic_name,
                    err.drop_reason(),
                    &err.reason.to_string(),
                );
                return true;
            }
        };
        if !self.role.accepts(&self.namespace, &topic) {
            self.drop_message(
                &publish,
                &topic_name,
                DropReason::WrongTopic,
                "not a topic this link reads",
            );
            return true;
        }
        let key = message.dedup_key();
        let verdict = lock(&self.dedup).arrive(&key, publish.clone());
        match verdict {
            Verdict::AlreadyDone => {
                self.metrics.duplicate(&self.label);
                tracing::debug!(link = %self.label, topic = %topic_name, key = %key, "duplicate of a handled message; acknowledged");
                self.ack_now(&publish);
                true
            }
            Verdict::Parked => {
                self.metrics.duplicate(&self.label);
                tracing::debug!(link = %self.label, topic = %topic_name, key = %key, "duplicate of a message being handled; acknowledged with it");
                true
            }
            Verdict::New => {
                self.metrics.received(&self.label, message.body.kind());
                let inbound = Inbound {
                    topic,
                    message,
                    handle: AckHandle {
                        client: self.client.clone(),
                        overflow: self.overflow_tx.clone(),
                        publish: Some(publish),
                        key,
                        dedup: self.dedup.clone(),
                    },
                };
                // Dropping an unsent Inbound abandons its key, so a redelivery is handled.
                self.deliver(inbound).await
            }
        }
    }

    /// Hands a message to the handler. While the handler's queue is full the event loop is
    /// not polled (the broker's receive maximum bounds what is in flight), but the handler's
    /// acknowledgements keep being collected, so the handler can always make progress.
    async fn deliver(&mut self, inbound: Inbound) -> bool {
        let inbound = match self.inbound.try_send(inbound) {
            Ok(()) => return true,
            Err(mpsc::error::TrySendError::Closed(_)) => return false,
            Err(mpsc::error::TrySendError::Full(inbound)) => inbound,
        };
        let sender = self.inbound.clone();
        loop {
            tokio::select! {
                permit = sender.reserve() => {
                    return match permit {
                        Ok(permit) => {
                            permit.send(inbound);
                            true
                        }
                        Err(_) => false,
                    };
                }
                Some(publish) = self.overflow.recv() => {
                    self.eventloop
                        .pending
                        .push_back(Request::PubAck(PubAck::new(publish.pkid, None)));
                }
            }
        }
    }

    fn drain_overflow(&mut self) {
        while let Ok(publish) = self.overflow.try_recv() {
            self.queue_ack(publish.pkid);
        }
    }

    fn queue_ack(&mut self, pkid: u16) {
        self.eventloop
            .pending
            .push_back(Request::PubAck(PubAck::new(pkid, None)));
    }

    fn drop_message(&mut self, publish: &Publish, topic: &str, reason: DropReason, detail: &str) {
        self.metrics.dropped(&self.label, reason.as_str());
        tracing::warn!(
            link = %self.label, topic = %topic, reason = reason.as_str(), detail = %detail,
            bytes = publish.payload.len(), "dropping an inbound message"
        );
        // Acknowledge it: a bad payload does not get better by redelivery.
        self.ack_now(publish);
    }

    /// Acknowledges from inside the event loop task: straight onto the event loop's queue,
    /// never through the (possibly full) request channel this task itself drains.
    fn ack_now(&mut self, publish: &Publish) {
        if publish.qos == QoS::AtLeastOnce {
            self.queue_ack(publish.pkid);
        }
    }

    async fn disconnect(&mut self) {
        if self.client.try_disconnect().is_err() {
            return;
        }
        // Let the DISCONNECT go out; give up after a short while.
        let flush = async {
            loop {
                match self.eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => break,
                    Ok(_) => {}
                }
            }
        };
        let _ = tokio::time::timeout(std::time::Duration::from_secs(2), flush).await;
        tracing::info!(link = %self.label, "disconnected from the broker");
    }
}

fn describe(err: &ConnectionError) -> String {
    match err {
        ConnectionError::ConnectionRefused(code) => {
            format!("the broker refused the connection: {code:?}")
        }
        other => other.to_string(),
    }
}
