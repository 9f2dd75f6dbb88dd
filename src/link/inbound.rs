//! Delivered messages and their acknowledgement.

use std::sync::{Arc, Mutex};

use rumqttc::v5::AsyncClient;
use rumqttc::v5::mqttbytes::v5::Publish;

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
    pub(super) publish: Option<Publish>,
    pub(super) key: String,
    pub(super) dedup: Arc<Mutex<Dedup<Publish>>>,
}

impl AckHandle {
    /// Acknowledges the message (and any parked duplicates of it).
    pub async fn ack(mut self) -> Result<(), LinkError> {
        let Some(publish) = self.publish.take() else {
            return Ok(());
        };
        let parked = lock(&self.dedup).complete(&self.key);
        self.client
            .ack(&publish)
            .await
            .map_err(|_| LinkError::Closed)?;
        for copy in parked {
            self.client
                .ack(&copy)
                .await
                .map_err(|_| LinkError::Closed)?;
        }
        Ok(())
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
