//! Topic names: pure functions to build and parse them.
//!
//! ```text
//! <ns>/readonly/<pool>/<worker>    backend -> worker
//! <ns>/writeonly/<pool>/<worker>   worker  -> backend
//! <ns>/readonly/<pool>             backend -> pool
//! <ns>/writeonly/<pool>            pool    -> backend
//! ```
//!
//! `readonly` and `writeonly` are named from the pool's point of view, which is also how the
//! broker's ACL reads: a pool certificate may only read `readonly/<its pool>` and only write
//! `writeonly/<its pool>`. Pool and worker ids are canonical (uppercase) ULIDs, because the
//! broker substitutes the certificate's CN verbatim into the ACL patterns.

use std::fmt;

use ulid::Ulid;

/// Which way a message travels.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Direction {
    /// Backend to pool or worker: the `readonly` branch.
    ToPool,
    /// Pool or worker to backend: the `writeonly` branch.
    ToBackend,
}

impl Direction {
    /// The topic level for this direction.
    pub fn level(self) -> &'static str {
        match self {
            Direction::ToPool => "readonly",
            Direction::ToBackend => "writeonly",
        }
    }
}

/// A parsed topic name.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Topic {
    /// First level, from the token's `topic_namespace`.
    pub namespace: String,
    /// `readonly` or `writeonly`.
    pub direction: Direction,
    /// The pool.
    pub pool: Ulid,
    /// The worker, for worker-level topics; `None` for the pool-level topic.
    pub worker: Option<Ulid>,
}

/// Why a topic name was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopicError {
    /// Not 3 or 4 levels.
    #[error("expected <namespace>/<readonly|writeonly>/<pool>[/<worker>], got {0} levels")]
    Levels(usize),
    /// Second level is neither `readonly` nor `writeonly`.
    #[error("second level must be readonly or writeonly, not {0:?}")]
    Direction(String),
    /// A pool or worker level is not a canonical ULID.
    #[error("{what} level {value:?} is not an uppercase ULID")]
    Id {
        /// `pool` or `worker`.
        what: &'static str,
        /// The level found.
        value: String,
    },
    /// Empty namespace or wildcard characters.
    #[error("namespace level {0:?} is empty or contains a wildcard")]
    Namespace(String),
}

impl Topic {
    /// A worker-level topic.
    pub fn worker(namespace: &str, direction: Direction, pool: Ulid, worker: Ulid) -> Self {
        Self {
            namespace: namespace.to_string(),
            direction,
            pool,
            worker: Some(worker),
        }
    }

    /// A pool-level topic.
    pub fn pool(namespace: &str, direction: Direction, pool: Ulid) -> Self {
        Self {
            namespace: namespace.to_string(),
            direction,
            pool,
            worker: None,
        }
    }

    /// Parses a topic name.
    pub fn parse(topic: &str) -> Result<Self, TopicError> {
        let levels: Vec<&str> = topic.split('/').collect();
        if !(3..=4).contains(&levels.len()) {
            return Err(TopicError::Levels(levels.len()));
        }
        let namespace = levels[0];
        if namespace.is_empty() || namespace.contains(['+', '#']) {
            return Err(TopicError::Namespace(namespace.to_string()));
        }
        let direction = match levels[1] {
            "readonly" => Direction::ToPool,
            "writeonly" => Direction::ToBackend,
            other => return Err(TopicError::Direction(other.to_string())),
        };
        let pool = parse_id("pool", levels[2])?;
        let worker = levels.get(3).map(|w| parse_id("worker", w)).transpose()?;
        Ok(Self {
            namespace: namespace.to_string(),
            direction,
            pool,
            worker,
        })
    }
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}/{}",
            self.namespace,
            self.direction.level(),
            self.pool
        )?;
        if let Some(worker) = self.worker {
            write!(f, "/{worker}")?;
        }
        Ok(())
    }
}

fn parse_id(what: &'static str, value: &str) -> Result<Ulid, TopicError> {
    let err = || TopicError::Id {
        what,
        value: value.to_string(),
    };
    let id = Ulid::from_string(value).map_err(|_| err())?;
    // Only the canonical spelling: the broker's ACL compares strings.
    if id.to_string() != value {
        return Err(err());
    }
    Ok(id)
}

/// The filters a pool subscribes to: its pool-level topic and all its workers' topics.
pub fn pool_subscriptions(namespace: &str, pool: Ulid) -> [String; 2] {
    [
        format!("{namespace}/readonly/{pool}"),
        format!("{namespace}/readonly/{pool}/+"),
    ]
}

/// The filter the backend subscribes to: everything every pool sends.
pub fn backend_subscription(namespace: &str) -> String {
    format!("{namespace}/writeonly/#")
}

#[cfg(test)]
mod tests {
    use super::*;

    const POOL: &str = "01HPS9HDSWCQ73RPDTVAK0KK0A";
    const WORKER: &str = "01HPS6K4BNB7BPHCDHDWFAMJNV";

    fn pool() -> Ulid {
        Ulid::from_string(POOL).expect("ulid")
    }

    fn worker() -> Ulid {
        Ulid::from_string(WORKER).expect("ulid")
    }

    #[test]
    fn topics_build_and_parse_back() {
        let cases = [
            (
                Topic::worker("spacelift", Direction::ToPool, pool(), worker()),
                format!("spacelift/readonly/{POOL}/{WORKER}"),
            ),
            (
                Topic::worker("spacelift", Direction::ToBackend, pool(), worker()),
                format!("spacelift/writeonly/{POOL}/{WORKER}"),
            ),
            (
                Topic::pool("spacelift", Direction::ToPool, pool()),
                format!("spacelift/readonly/{POOL}"),
            ),
            (
                Topic::pool("ns", Direction::ToBackend, pool()),
                format!("ns/writeonly/{POOL}"),
            ),
        ];
        for (topic, name) in cases {
            assert_eq!(topic.to_string(), name);
            assert_eq!(Topic::parse(&name), Ok(topic));
        }
    }

    #[test]
    fn malformed_topics_are_refused_with_a_reason() {
        let lower = POOL.to_lowercase();
        let levels = "expected <namespace>/<readonly|writeonly>/<pool>[/<worker>], got";
        let cases: Vec<(String, String)> = vec![
            ("spacelift/readonly".into(), format!("{levels} 2 levels")),
            (
                format!("spacelift/readonly/{POOL}/{WORKER}/x"),
                format!("{levels} 5 levels"),
            ),
            (
                format!("spacelift/readwrite/{POOL}"),
                "second level must be readonly or writeonly, not \"readwrite\"".into(),
            ),
            (
                "spacelift/readonly/pool-a".into(),
                "pool level \"pool-a\" is not an uppercase ULID".into(),
            ),
            (
                format!("spacelift/readonly/{lower}"),
                format!("pool level \"{lower}\" is not an uppercase ULID"),
            ),
            (
                format!("spacelift/readonly/{POOL}/+"),
                "worker level \"+\" is not an uppercase ULID".into(),
            ),
            (
                format!("/readonly/{POOL}"),
                "namespace level \"\" is empty or contains a wildcard".into(),
            ),
        ];
        for (topic, want) in cases {
            let err = Topic::parse(&topic).expect_err(&topic);
            assert_eq!(err.to_string(), want, "topic {topic}");
        }
    }

    #[test]
    fn subscriptions_cover_pool_and_worker_topics() {
        assert_eq!(
            pool_subscriptions("spacelift", pool()),
            [
                format!("spacelift/readonly/{POOL}"),
                format!("spacelift/readonly/{POOL}/+")
            ]
        );
        assert_eq!(backend_subscription("spacelift"), "spacelift/writeonly/#");
    }
}
