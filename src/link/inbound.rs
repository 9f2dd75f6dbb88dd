//! Delivered messages and their acknowledgement.

use std::sync::{Arc, Mutex};

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::v5::Publish;
use tokio::sync::mpsc;

use super::LinkError;
use super::dedup::Dedup;
use crate::protocol::{Message, Topic};

/// A delivered message, with the handle that acknowledges it.
pub struct Inbound {
    /// Where it arrived.
    pub topic: Topic,
    /// The decoded message.
    pub message: Message,
    /// Acknowledges it to the broker; dropping it without acknowledging leaves the message to
    /// be redelivered after the next reconnect.
    pub handle: AckHandle,
}

impl Inbound {
    /// Acknowledges the message: the broker forgets it, and duplicates are acknowledged
    /// without reaching the handler.
    pub async fn ack(self) -> Result<(), LinkError> {
        self.handle.ack().await
    }
}

/// Acknowledges one inbound message (see [`Inbound::handle`]).
pub struct AckHandle {
    pub(super) client: AsyncClient,
    /// Where acknowledgements go when rumqttc's request queue is full; the session task
    /// moves them onto the event loop. Unbounded, so acknowledging never waits: a handler
    /// blocked on a full request queue while the session waits for the handler to take the
    /// next message would be a deadlock.
    pub(super) overflow: mpsc::UnboundedSender<Publish>,
    pub(super) publish: Option<Publish>,
    pub(super) key: String,
    pub(super) dedup: Arc<Mutex<Dedup<Publish>>>,
}

impl AckHandle {
    /// Acknowledges the message (and any parked duplicates of it). Never waits.
    pub async fn ack(mut self) -> Result<(), LinkError> {
        let Some(publish) = self.publish.take() else {
            return Ok(());
        };
        let parked = lock(&self.dedup).complete(&self.key);
        self.send_ack(publish)?;
        for copy in parked {
            self.send_ack(copy)?;
        }
        Ok(())
    }

    fn send_ack(&self, publish: Publish) -> Result<(), LinkError> {
        // The request queue wakes the event loop at once; the overflow is drained on its
        // next turn, which comes soon because a full queue keeps it busy.
        if self.client.try_ack(&publish).is_ok() {
            return Ok(());
        }
        self.overflow.send(publish).map_err(|_| LinkError::Closed)
    }
}

impl Drop for AckHandle {
    fn drop(&mut self) {
        if self.publish.is_some() {
            lock(&self.dedup).abandon(&self.key);
        }
    }
}

pub(super) fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}
