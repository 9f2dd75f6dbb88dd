//! The envelope and its codec. `decode` never panics: every way a payload can be wrong is a
//! [`ProtocolError`] naming the topic and the reason, with a [`DropReason`] for metrics.

use serde::{Deserialize, Serialize};
use ulid::Ulid;

use super::messages::{Body, Scope};
use super::serde_ids::{option_ulid_string, timestamp_string, ulid_string};
use super::topic::{Direction, Topic};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u32 = 1;

/// Payloads larger than this are refused unless configured otherwise.
pub const DEFAULT_MAX_PAYLOAD: usize = 256 * 1024;

/// One message: a versioned envelope around a [`Body`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Message {
    /// Protocol version; [`PROTOCOL_VERSION`] for everything this build sends.
    pub version: u32,
    /// Unique id of this message; a redelivery carries the same id.
    #[serde(with = "ulid_string")]
    pub id: Ulid,
    /// When the sender created the message.
    #[serde(with = "timestamp_string")]
    pub sent_at: jiff::Timestamp,
    /// The worker the message is from or for; absent for pool-level messages. Must match the
    /// topic's worker level.
    #[serde(
        default,
        with = "option_ulid_string",
        skip_serializing_if = "Option::is_none"
    )]
    pub worker: Option<Ulid>,
    /// `type` and `body`.
    #[serde(flatten)]
    pub body: Body,
}

impl Message {
    /// A new message about one worker, with a fresh id.
    pub fn for_worker(worker: Ulid, body: Body) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            id: Ulid::generate(),
            sent_at: jiff::Timestamp::now(),
            worker: Some(worker),
            body,
        }
    }

    /// A new pool-level message, with a fresh id.
    pub fn for_pool(body: Body) -> Self {
        Self {
            version: PROTOCOL_VERSION,
            id: Ulid::generate(),
            sent_at: jiff::Timestamp::now(),
            worker: None,
            body,
        }
    }

    /// The topic this message is published on, going `direction` within `pool`.
    pub fn topic(
        &self,
        namespace: &str,
        pool: Ulid,
        direction: Direction,
    ) -> Result<Topic, ProtocolError> {
        let topic = match self.worker {
            Some(worker) => Topic::worker(namespace, direction, pool, worker),
            None => Topic::pool(namespace, direction, pool),
        };
        check_route(&topic, self).map_err(|reason| ProtocolError {
            topic: topic.to_string(),
            reason,
        })?;
        Ok(topic)
    }

    /// The key under which a redelivery of this message is recognised: a run schedule by its
    /// run stage attempt on its worker (the backend may re-send it under a new id, and may
    /// give a run another worker's schedule when one refused it), anything else by id.
    pub fn dedup_key(&self) -> String {
        match &self.body {
            Body::RunSchedule(s) => format!(
                "run/{}/{}/{}/{}",
                self.worker.map(|w| w.to_string()).unwrap_or_default(),
                s.run_id,
                s.stage,
                s.attempt
            ),
            _ => format!("id/{}", self.id),
        }
    }
}

/// Why a payload was refused, as a metric label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// Larger than the cap.
    Oversized,
    /// Not JSON, not an envelope, a body that does not fit its type, or an invalid field.
    Malformed,
    /// A protocol version this build does not speak.
    UnknownVersion,
    /// A `type` this build does not know.
    UnknownType,
    /// A topic that is not ours, or a message that may not travel on it.
    WrongTopic,
}

impl DropReason {
    /// The metric label value.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Oversized => "oversized",
            DropReason::Malformed => "malformed",
            DropReason::UnknownVersion => "unknown_version",
            DropReason::UnknownType => "unknown_type",
            DropReason::WrongTopic => "wrong_topic",
        }
    }
}

/// What is wrong with a payload.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reason {
    /// Larger than the cap.
    #[error("payload of {size} bytes exceeds the {max}-byte limit")]
    Oversized {
        /// Payload size.
        size: usize,
        /// The cap.
        max: usize,
    },
    /// Not valid JSON.
    #[error("payload is not valid JSON at line {line} column {column}: {message}")]
    Json {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// The parser's complaint.
        message: String,
    },
    /// A protocol version this build does not speak.
    #[error("unsupported protocol version {0} (this build speaks {PROTOCOL_VERSION})")]
    UnknownVersion(String),
    /// An unknown `type`.
    #[error("unknown message type {0:?}")]
    UnknownType(String),
    /// A field is missing, of the wrong type or invalid.
    #[error("field {field}: {message}")]
    Field {
        /// JSON path, e.g. `body.runId`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The topic is not a protocol topic.
    #[error("topic not understood: {0}")]
    Topic(#[from] super::topic::TopicError),
    /// The message may not travel on this topic.
    #[error("{0}")]
    Route(String),
}

/// A payload that was refused, with its topic.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("message on topic {topic} refused: {reason}")]
pub struct ProtocolError {
    /// The topic it arrived on (or would have been sent to).
    pub topic: String,
    /// Why.
    pub reason: Reason,
}

impl ProtocolError {
    /// The metric label for this refusal.
    pub fn drop_reason(&self) -> DropReason {
        match &self.reason {
            Reason::Oversized { .. } => DropReason::Oversized,
            Reason::Json { .. } | Reason::Field { .. } => DropReason::Malformed,
            Reason::UnknownVersion(_) => DropReason::UnknownVersion,
            Reason::UnknownType(_) => DropReason::UnknownType,
            Reason::Topic(_) | Reason::Route(_) => DropReason::WrongTopic,
        }
    }
}

/// Serialises a message to its JSON payload.
pub fn encode(message: &Message) -> Vec<u8> {
    // Every field is a string, integer, bool, list or string-keyed map: serialisation of
    // these types cannot fail.
    serde_json::to_vec(message).unwrap_or_default()
}

/// Decodes a payload received on `topic`, refusing anything larger than `max_payload` bytes,
/// any version but [`PROTOCOL_VERSION`], unknown types, invalid fields, and messages that may
/// not travel on `topic`.
pub fn decode(topic: &str, payload: &[u8], max_payload: usize) -> Result<Message, ProtocolError> {
    let fail = |reason: Reason| ProtocolError {
        topic: topic.to_string(),
        reason,
    };
    if payload.len() > max_payload {
        return Err(fail(Reason::Oversized {
            size: payload.len(),
            max: max_payload,
        }));
    }
    let parsed_topic = Topic::parse(topic).map_err(|err| fail(err.into()))?;
    let message = decode_payload(payload).map_err(fail)?;
    check_route(&parsed_topic, &message).map_err(fail)?;
    Ok(message)
}

fn decode_payload(payload: &[u8]) -> Result<Message, Reason> {
    // The version first, so that a future envelope is refused as such and not as a list of
    // odd fields.
    let envelope: serde_json::Value =
        serde_json::from_slice(payload).map_err(|err| Reason::Json {
            line: err.line(),
            column: err.column(),
            message: strip_position(&err.to_string()),
        })?;
    let Some(object) = envelope.as_object() else {
        return Err(Reason::Field {
            field: "(envelope)".into(),
            message: "must be a JSON object".into(),
        });
    };
    match object.get("version") {
        None => {
            return Err(Reason::Field {
                field: "version".into(),
                message: "missing".into(),
            });
        }
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(u64::from(PROTOCOL_VERSION)) => {}
        Some(other) => return Err(Reason::UnknownVersion(other.to_string())),
    }
    if let Some(kind) = object.get("type").and_then(|t| t.as_str())
        && !KNOWN_TYPES.contains(&kind)
    {
        return Err(Reason::UnknownType(kind.to_string()));
    }
    for key in object.keys() {
        if !ENVELOPE_FIELDS.contains(&key.as_str()) {
            return Err(Reason::Field {
                field: key.clone(),
                message: "unknown envelope field".into(),
            });
        }
    }
    // The envelope, then the body on its own, so that field paths read `body.runId`.
    let raw: RawEnvelope = serde_path_to_error::deserialize(&envelope).map_err(field_error)?;
    let body = decode_body(&raw.kind, &raw.body)?;
    let message = Message {
        version: raw.version,
        id: raw.id,
        sent_at: raw.sent_at,
        worker: raw.worker,
        body,
    };
    message
        .body
        .validate()
        .map_err(|(field, message)| Reason::Field { field, message })?;
    Ok(message)
}

/// The envelope as received, before its body is interpreted.
#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct RawEnvelope {
    version: u32,
    #[serde(with = "ulid_string")]
    id: Ulid,
    #[serde(with = "timestamp_string")]
    sent_at: jiff::Timestamp,
    #[serde(default, with = "option_ulid_string")]
    worker: Option<Ulid>,
    #[serde(rename = "type")]
    kind: String,
    body: serde_json::Value,
}

/// Deserialises `body` as the body of a `kind` message, reporting paths as `body.<field>`.
fn decode_body(kind: &str, body: &serde_json::Value) -> Result<Body, Reason> {
    fn de<T: serde::de::DeserializeOwned>(body: &serde_json::Value) -> Result<T, Reason> {
        serde_path_to_error::deserialize(body).map_err(|err| {
            let reason = field_error(err);
            match reason {
                Reason::Field { field, message } if field == "." || field.is_empty() => {
                    Reason::Field {
                        field: "body".into(),
                        message,
                    }
                }
                Reason::Field { field, message } => Reason::Field {
                    field: format!("body.{field}"),
                    message,
                },
                other => other,
            }
        })
    }
    Ok(match kind {
        "worker.register" => Body::WorkerRegister(de(body)?),
        "worker.registered" => Body::WorkerRegistered(de(body)?),
        "worker.deregister" => Body::WorkerDeregister(de(body)?),
        "worker.deregistered" => Body::WorkerDeregistered(de(body)?),
        "worker.state" => Body::WorkerState(de(body)?),
        "run.schedule" => Body::RunSchedule(de(body)?),
        "run.stop" => Body::RunStop(de(body)?),
        "run.accepted" => Body::RunAccepted(de(body)?),
        "run.podCreated" => Body::PodCreated(de(body)?),
        "run.denied" => Body::RunDenied(de(body)?),
        "run.finished" => Body::RunFinished(de(body)?),
        "pool.status" => Body::PoolStatus(de(body)?),
        "pool.demand" => Body::PoolDemand(de(body)?),
        other => return Err(Reason::UnknownType(other.to_string())),
    })
}

fn field_error(err: serde_path_to_error::Error<serde_json::Error>) -> Reason {
    let path = err.path().to_string();
    let message = strip_position(&err.inner().to_string());
    if let Some(rest) = message.strip_prefix("missing field `") {
        let name = rest.split('`').next().unwrap_or_default();
        let field = if path == "." || path.is_empty() {
            name.to_string()
        } else {
            format!("{path}.{name}")
        };
        return Reason::Field {
            field,
            message: "missing".into(),
        };
    }
    Reason::Field {
        field: path,
        message,
    }
}

const ENVELOPE_FIELDS: &[&str] = &["version", "id", "sentAt", "worker", "type", "body"];

/// Every `type` of protocol version 1.
pub const KNOWN_TYPES: &[&str] = &[
    "worker.register",
    "worker.registered",
    "worker.deregister",
    "worker.deregistered",
    "worker.state",
    "run.schedule",
    "run.stop",
    "run.accepted",
    "run.podCreated",
    "run.denied",
    "run.finished",
    "pool.status",
    "pool.demand",
];

fn check_route(topic: &Topic, message: &Message) -> Result<(), Reason> {
    let kind = message.body.kind();
    if !message.body.allowed(topic.direction) {
        return Err(Reason::Route(format!(
            "{kind} may not be sent on a {} topic",
            topic.direction.level()
        )));
    }
    match (message.body.scope(), topic.worker, message.worker) {
        (Scope::Worker, Some(on_topic), Some(in_envelope)) if on_topic == in_envelope => Ok(()),
        (Scope::Worker, Some(on_topic), Some(in_envelope)) => Err(Reason::Route(format!(
            "envelope worker {in_envelope} does not match topic worker {on_topic}"
        ))),
        (Scope::Worker, None, _) => Err(Reason::Route(format!(
            "{kind} belongs on a worker topic, not the pool topic"
        ))),
        (Scope::Worker, Some(_), None) => Err(Reason::Field {
            field: "worker".into(),
            message: format!("missing (required for {kind})"),
        }),
        (Scope::Pool, None, None) => Ok(()),
        (Scope::Pool, _, _) => Err(Reason::Route(format!(
            "{kind} belongs on the pool topic and names no worker"
        ))),
    }
}

fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message.to_string(),
    }
}
