//! The launcher reads two things from the pool token mounted into its Pod: the pool it belongs
//! to and the CA that signed the backend's certificates (the same CA that signed the broker's:
//! the token's `ca_cert`). The operator validates the token in full (src/credentials.rs); this
//! only reads what the launcher needs, with errors that say which file and field.

use base64::Engine as _;
use serde::Deserialize;

/// What the launcher takes from the pool token.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PoolToken {
    pub pool_id: String,
    /// PEM of the CA(s) to trust for the launcher API.
    pub ca_cert: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("the pool token is not base64: {0}")]
    Base64(String),
    #[error("the pool token is not the token JSON: {0}")]
    Json(String),
    #[error("the pool token's ca_cert holds no PEM certificate")]
    NoCertificate,
}

#[derive(Deserialize)]
struct Fields {
    pool_id: String,
    ca_cert: String,
}

/// Reads the token as stored in the pool's Secret (base64 of the token JSON; newlines and
/// surrounding blanks ignored).
pub fn read_pool_token(stored: &str) -> Result<PoolToken, TokenError> {
    let compact: String = stored
        .chars()
        .filter(|c| !c.is_ascii_whitespace())
        .collect();
    let json = base64::engine::general_purpose::STANDARD
        .decode(compact.as_bytes())
        .map_err(|err| TokenError::Base64(err.to_string()))?;
    let fields: Fields =
        serde_json::from_slice(&json).map_err(|err| TokenError::Json(err.to_string()))?;
    if !fields.ca_cert.contains("-----BEGIN CERTIFICATE-----") {
        return Err(TokenError::NoCertificate);
    }
    Ok(PoolToken {
        pool_id: fields.pool_id,
        ca_cert: fields.ca_cert,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(json: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(json)
    }

    #[test]
    fn reads_the_pool_and_its_ca() {
        let pem = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
        let token = encode(
            &serde_json::json!({"version": 1, "pool_id": "01HPS9HDSWCQ73RPDTVAK0KK0A",
                "broker_url": "mqtts://b:8883", "topic_namespace": "spacelift",
                "ca_cert": pem, "client_cert": pem})
            .to_string(),
        );
        let wrapped = format!("{}\n{}\n", &token[..20], &token[20..]);
        assert_eq!(
            read_pool_token(&wrapped).unwrap(),
            PoolToken {
                pool_id: "01HPS9HDSWCQ73RPDTVAK0KK0A".into(),
                ca_cert: pem.into()
            }
        );
    }

    #[test]
    fn says_what_is_wrong() {
        assert!(matches!(read_pool_token("%%%"), Err(TokenError::Base64(_))));
        assert!(matches!(
            read_pool_token(&encode("{}")),
            Err(TokenError::Json(_))
        ));
        let no_pem = encode(r#"{"pool_id": "x", "ca_cert": "nope"}"#);
        assert_eq!(read_pool_token(&no_pem), Err(TokenError::NoCertificate));
    }
}
