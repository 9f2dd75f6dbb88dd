//! Options, connection state and errors of the link.

use std::time::Duration;

use super::{Backoff, LinkMetrics};
use crate::credentials::CredentialError;
use crate::protocol::{DEFAULT_MAX_PAYLOAD, ProtocolError};

/// How the link behaves. `Default` is what the controller should use.
#[derive(Clone, Debug)]
pub struct LinkOptions {
    /// Allow `mqtt://` (no TLS, no client certificate). Off by default; logs a warning.
    pub allow_insecure: bool,
    /// MQTT keep-alive (at least 5 s).
    pub keep_alive: Duration,
    /// How long the broker keeps the session (subscriptions and queued messages) while the
    /// link is down.
    pub session_expiry: Duration,
    /// Larger inbound payloads are dropped and counted; larger outbound ones are refused.
    pub max_payload: usize,
    /// How many unacknowledged messages the broker may have in flight to us.
    pub receive_maximum: u16,
    /// How many of our own publishes may wait for the broker's acknowledgement at once (the
    /// broker's receive maximum lowers it further; Mosquitto's default is 20). It also sizes
    /// the MQTT client's table of unacknowledged publishes, which it allocates in full for
    /// every connection: unbounded, that table is 14 MB per pool.
    pub outgoing_inflight: u16,
    /// Like the Go controller's `mqttReconnectRetryCount`: how many times to retry the
    /// *first* connection before giving up ([`LinkState::Failed`]). `None` retries forever.
    /// Once connected, the link reconnects forever. (The controller replaces a failed pool
    /// link with a fresh one after a pause.)
    pub first_connect_retries: Option<u32>,
    /// Delays between connection attempts.
    pub backoff: Backoff,
    /// How many handled message keys to remember for de-duplication.
    pub dedup_capacity: usize,
    /// Where to count; a private, unregistered set when `None`. Register one
    /// [`LinkMetrics`] per registry and give every link a clone: the `link` label tells them
    /// apart.
    pub metrics: Option<LinkMetrics>,
}

impl Default for LinkOptions {
    fn default() -> Self {
        Self {
            allow_insecure: false,
            keep_alive: Duration::from_secs(30),
            session_expiry: Duration::from_secs(7 * 24 * 3600),
            max_payload: DEFAULT_MAX_PAYLOAD,
            receive_maximum: 64,
            outgoing_inflight: 64,
            first_connect_retries: Some(10),
            backoff: Backoff::default(),
            dedup_capacity: 10_000,
            metrics: None,
        }
    }
}

/// The link's connection state, for readiness probes and pool status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LinkState {
    /// Not connected yet; `attempt` counts from 1.
    Connecting {
        /// The attempt in progress.
        attempt: u32,
        /// Why the previous attempt failed.
        last_error: Option<String>,
    },
    /// Connected and subscribed: messages flow.
    Connected {
        /// The broker still had our session (queued messages are being delivered).
        session_present: bool,
    },
    /// Was connected, lost the connection, retrying.
    Reconnecting {
        /// Consecutive failed attempts.
        attempt: u32,
        /// Why.
        last_error: String,
    },
    /// The first connection failed more than `first_connect_retries` times; the link stopped.
    Failed {
        /// The last error.
        error: String,
    },
    /// Shut down.
    Closed,
}

impl LinkState {
    /// Connected and subscribed.
    pub fn is_connected(&self) -> bool {
        matches!(self, LinkState::Connected { .. })
    }
}

impl std::fmt::Display for LinkState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LinkState::Connecting {
                attempt,
                last_error: None,
            } => write!(f, "connecting (attempt {attempt})"),
            LinkState::Connecting {
                attempt,
                last_error: Some(err),
            } => write!(f, "connecting (attempt {attempt}, last error: {err})"),
            LinkState::Connected { .. } => write!(f, "connected"),
            LinkState::Reconnecting {
                attempt,
                last_error,
            } => write!(
                f,
                "reconnecting (attempt {attempt}, last error: {last_error})"
            ),
            LinkState::Failed { error } => write!(f, "failed: {error}"),
            LinkState::Closed => write!(f, "closed"),
        }
    }
}

/// What can go wrong using the link.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// `mqtt://` without `allow_insecure`.
    #[error(
        "refusing plain {0}: use mqtts://, or for local experiments only start the operator with --allow-insecure-mqtt"
    )]
    InsecureRefused(String),
    /// The credentials do not make a TLS configuration.
    #[error(transparent)]
    Credentials(#[from] CredentialError),
    /// The message cannot be sent on that topic.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
    /// The message is larger than `max_payload`.
    #[error("outbound {kind} message of {size} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Message type.
        kind: &'static str,
        /// Encoded size.
        size: usize,
        /// The limit.
        max: usize,
    },
    /// The link was shut down or failed.
    #[error("the link is closed")]
    Closed,
    /// The first connection failed too often.
    #[error("the link could not connect: {0}")]
    Failed(String),
    /// [`PoolLink::wait_connected`] ran out of time.
    #[error("not connected after {waited:?} ({state})")]
    Timeout {
        /// How long we waited.
        waited: Duration,
        /// The state at the end.
        state: LinkState,
    },
}
