//! Serde helpers: ULIDs as their canonical 26-character string, timestamps as RFC 3339.
//! (The `ulid` and `jiff` crates are built without their serde features here.)

use serde::{Deserialize, Deserializer, Serializer};
use ulid::Ulid;

/// `#[serde(with = "ulid_string")]`
pub mod ulid_string {
    use super::*;

    pub fn serialize<S: Serializer>(id: &Ulid, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(id)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Ulid, D::Error> {
        let text = String::deserialize(deserializer)?;
        Ulid::from_string(&text)
            .map_err(|err| serde::de::Error::custom(format!("{text:?} is not a ULID ({err})")))
    }
}

/// `#[serde(with = "option_ulid_string")]`
pub mod option_ulid_string {
    use super::*;

    pub fn serialize<S: Serializer>(id: &Option<Ulid>, serializer: S) -> Result<S::Ok, S::Error> {
        match id {
            Some(id) => serializer.collect_str(id),
            None => serializer.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<Option<Ulid>, D::Error> {
        let text = Option::<String>::deserialize(deserializer)?;
        text.map(|text| {
            Ulid::from_string(&text)
                .map_err(|err| serde::de::Error::custom(format!("{text:?} is not a ULID ({err})")))
        })
        .transpose()
    }
}

/// `#[serde(with = "timestamp_string")]`
pub mod timestamp_string {
    use super::*;

    pub fn serialize<S: Serializer>(
        at: &jiff::Timestamp,
        serializer: S,
    ) -> Result<S::Ok, S::Error> {
        serializer.collect_str(at)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(
        deserializer: D,
    ) -> Result<jiff::Timestamp, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(|err| {
            serde::de::Error::custom(format!("{text:?} is not an RFC 3339 timestamp ({err})"))
        })
    }
}
