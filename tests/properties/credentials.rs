//! Credential decoding: any bytes in the Secret never panic the decoder, a token round-trips
//! through its Secret value (with the line breaks `base64` tools add), and a bad byte is
//! reported at its offset in the value as stored, as Go's `encoding/base64` reports it.

use std::sync::OnceLock;

use base64::Engine as _;
use proptest::collection::vec;
use proptest::prelude::*;
use workerpool_operator::backend::ca::Authority;
use workerpool_operator::credentials::{CredentialError, Token, decode_credentials, decode_token};

use crate::config;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Real credentials, as `workerpool-backend pool create` issues them: (pool ULID, token JSON
/// fields, private key PEM).
struct Issued {
    pool_id: String,
    ca_pem: String,
    cert_pem: String,
    key_pem: String,
}

fn issued() -> &'static Issued {
    static ISSUED: OnceLock<Issued> = OnceLock::new();
    ISSUED.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let authority = Authority::load_or_create(dir.path()).expect("CA");
        let pool_id = ulid::Ulid::generate().to_string();
        let issued = authority.issue_pool(&pool_id, None, 2048).expect("issue");
        Issued {
            ca_pem: authority.cert_pem().to_string(),
            cert_pem: issued.cert_pem,
            key_pem: issued.key_pem.expect("a generated key"),
            pool_id,
        }
    })
}

fn valid_token(broker_url: String, topic_namespace: String) -> Token {
    let issued = issued();
    Token {
        version: 1,
        pool_id: issued.pool_id.clone(),
        broker_url,
        topic_namespace,
        ca_cert: issued.ca_pem.clone(),
        client_cert: issued.cert_pem.clone(),
    }
}

/// Any token document of version 1: the fields `decode_token` reads, with any text in them.
fn any_token() -> impl Strategy<Value = Token> {
    (
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
        any::<String>(),
    )
        .prop_map(
            |(pool_id, broker_url, topic_namespace, ca_cert, client_cert)| Token {
                version: 1,
                pool_id,
                broker_url,
                topic_namespace,
                ca_cert,
                client_cert,
            },
        )
}

/// `text` with `\n` or `\r\n` inserted before the given positions (as `base64` wraps lines).
fn with_line_breaks(text: &str, breaks: &[(usize, bool)]) -> Vec<u8> {
    let mut at: Vec<(usize, bool)> = breaks
        .iter()
        .map(|(p, crlf)| (p % (text.len() + 1), *crlf))
        .collect();
    at.sort();
    let mut out = Vec::with_capacity(text.len() + 2 * at.len());
    let mut next = at.iter().peekable();
    for (i, byte) in text.bytes().enumerate() {
        while let Some((_, crlf)) = next.next_if(|(p, _)| *p == i) {
            out.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
        }
        out.push(byte);
    }
    for (_, crlf) in next {
        out.extend_from_slice(if *crlf { b"\r\n" } else { b"\n" });
    }
    out
}

/// A byte Go's standard base64 decoder refuses where it stands: not in the alphabet, not a
/// line break (skipped) and not padding.
fn illegal_byte() -> impl Strategy<Value = u8> {
    any::<u8>().prop_filter("a byte base64 refuses", |b| {
        !(b.is_ascii_alphanumeric() || matches!(b, b'+' | b'/' | b'=' | b'\n' | b'\r'))
    })
}

/// Replaces the byte at (`position` modulo the part before any padding) with `bad`; returns
/// the corrupted value and the offset where Go reports it.
fn corrupt(mut value: Vec<u8>, position: usize, bad: u8) -> (Vec<u8>, usize) {
    let unpadded = value.iter().position(|b| *b == b'=').unwrap_or(value.len());
    let offset = position % unpadded.max(1);
    value[offset] = bad;
    (value, offset)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn any_bytes_in_the_secret_never_panic_the_decoder(
        token in vec(any::<u8>(), 0..1024),
        private_key in vec(any::<u8>(), 0..1024),
    ) {
        let _ = decode_credentials(&token, &private_key);
    }

    #[test]
    fn any_base64_of_any_bytes_as_a_token_never_panics(json in vec(any::<u8>(), 0..1024)) {
        let _ = decode_token(b64(&json).as_bytes());
    }

    #[test]
    fn any_json_document_as_a_token_never_panics(
        document in proptest::arbitrary::any::<(Option<u32>, String, Vec<(String, String)>)>(),
    ) {
        let (version, text, fields) = document;
        let mut object = serde_json::Map::new();
        if let Some(version) = version {
            object.insert("version".into(), version.into());
        }
        object.insert("pool_id".into(), text.into());
        for (key, value) in fields {
            object.insert(key, value.into());
        }
        let json = serde_json::to_vec(&object).unwrap_or_default();
        let _ = decode_token(b64(&json).as_bytes());
    }

    #[test]
    fn a_token_round_trips_through_its_secret_value_with_any_line_breaks(
        token in any_token(),
        breaks in vec((any::<usize>(), any::<bool>()), 0..8),
    ) {
        let stored = with_line_breaks(&token.encode(), &breaks);
        prop_assert_eq!(decode_token(&stored), Ok(token));
    }

    #[test]
    fn a_bad_byte_in_the_token_is_reported_at_its_offset_as_stored(
        token in any_token(),
        breaks in vec((any::<usize>(), any::<bool>()), 0..8),
        position in any::<usize>(),
        bad in illegal_byte(),
    ) {
        let stored = with_line_breaks(&token.encode(), &breaks);
        let (stored, offset) = corrupt(stored, position, bad);
        prop_assert_eq!(
            decode_token(&stored).map(|_| ()),
            Err(CredentialError::Base64 { value: "token", offset })
        );
    }

    #[test]
    fn a_bad_byte_in_the_private_key_is_reported_at_its_offset_as_stored(
        breaks in vec((any::<usize>(), any::<bool>()), 0..8),
        position in any::<usize>(),
        bad in illegal_byte(),
    ) {
        let token = valid_token("mqtts://broker.example.com:8883".into(), "spacelift".into());
        let stored = with_line_breaks(&b64(issued().key_pem.as_bytes()), &breaks);
        let (stored, offset) = corrupt(stored, position, bad);
        prop_assert_eq!(
            decode_credentials(token.encode().as_bytes(), &stored).map(|_| ()),
            Err(CredentialError::Base64 { value: "privateKey", offset })
        );
    }

    #[test]
    fn real_credentials_decode_to_the_broker_and_namespace_their_token_names(
        host in "[a-z][a-z0-9-]{0,20}(\\.[a-z][a-z0-9-]{0,20}){0,3}",
        port in 1u16..=u16::MAX,
        namespace in "[a-z][a-z0-9_-]{0,20}",
        breaks in vec((any::<usize>(), any::<bool>()), 0..8),
    ) {
        let token = valid_token(format!("mqtts://{host}:{port}"), namespace.clone());
        let key = with_line_breaks(&b64(issued().key_pem.as_bytes()), &breaks);
        let credentials = decode_credentials(token.encode().as_bytes(), &key);
        let credentials = credentials.map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(credentials.pool_id.to_string(), issued().pool_id.clone());
        prop_assert_eq!(credentials.broker.host, host);
        prop_assert_eq!(credentials.broker.port, port);
        prop_assert_eq!(credentials.topic_namespace, namespace);
    }
}
