//! The open backend protocol: versioned JSON messages exchanged over MQTT. See docs/protocol.md.
//!
//! Pure code only: message types ([`Body`] inside a [`Message`] envelope), the codec
//! ([`encode`], [`decode`]) and topic names ([`Topic`]). The MQTT connection is in
//! [`crate::link`].

mod codec;
pub mod limits;
mod messages;
mod run;
mod serde_ids;
mod topic;

pub use codec::{
    DEFAULT_MAX_PAYLOAD, DropReason, KNOWN_TYPES, Message, PROTOCOL_VERSION, ProtocolError, Reason,
    decode, encode,
};
pub use messages::{
    Body, DenyReason, FailureCause, MAX_DISPATCHED_WORKERS, Outcome, PodCreated, PoolDemand,
    PoolStatus, RunDenied, RunFinished, RunRef, RunStop, Scope, WorkerDeregister,
    WorkerDeregistered, WorkerRegister, WorkerRegistered, WorkerState, WorkerStatus,
    check_launcher_endpoint, check_stage,
};
pub use run::RunSchedule;
pub use topic::{Direction, Topic, TopicError, backend_subscription, pool_subscriptions};

#[cfg(test)]
mod tests;
