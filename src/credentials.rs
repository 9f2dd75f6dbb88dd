//! Pool credentials: the `token` and `privateKey` values of the seed's Secret.
//!
//! `token` is base64 of a JSON document ([`Token`]) issued by the backend; `privateKey` is
//! base64 of the pool's PEM RSA private key (PKCS#1 or PKCS#8). [`decode_credentials`] turns
//! both into [`Credentials`]: everything the MQTT link needs (broker address, CA, client
//! certificate and key) and the pool ULID. It is pure and its errors are meant for the user:
//! they name the value, the field and the position, with the wording of the Go controller where
//! it has one (`unable to base64 decode privateKey: illegal base64 data at input byte 4364`).

mod go_base64;

use std::fmt;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use ulid::Ulid;

/// The token versions this build understands.
pub const SUPPORTED_TOKEN_VERSIONS: &[u32] = &[1];

/// The JSON document inside `token` (version 1).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Token {
    /// Token format version; see [`SUPPORTED_TOKEN_VERSIONS`].
    pub version: u32,
    /// The pool's ULID. The client certificate's CN is this ULID, and the broker confines the
    /// pool to topics under it.
    pub pool_id: String,
    /// `mqtts://host:port` (or `mqtt://host:port`, refused by the link unless allowed).
    pub broker_url: String,
    /// First level of every topic, e.g. `spacelift`.
    pub topic_namespace: String,
    /// PEM of the CA(s) that signed the broker's server certificate.
    pub ca_cert: String,
    /// PEM of the pool's client certificate (and any intermediates), issued by the backend.
    pub client_cert: String,
}

impl Token {
    /// The `token` value as it goes into the Secret: base64 (standard, padded) of the JSON.
    pub fn encode(&self) -> String {
        use base64::Engine as _;
        // Serialising a struct of strings and integers cannot fail.
        let json = serde_json::to_vec(self).unwrap_or_default();
        base64::engine::general_purpose::STANDARD.encode(json)
    }
}

/// Whether the broker connection is TLS (`mqtts://`) or plain TCP (`mqtt://`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BrokerScheme {
    /// `mqtts://`: TLS with mutual authentication.
    Tls,
    /// `mqtt://`: plain TCP, for local experiments only.
    Plain,
}

/// A parsed `broker_url`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BrokerUrl {
    /// TLS or plain.
    pub scheme: BrokerScheme,
    /// Host name or IP address (without brackets for IPv6).
    pub host: String,
    /// TCP port; defaults to 8883 for `mqtts` and 1883 for `mqtt`.
    pub port: u16,
}

impl BrokerUrl {
    /// Parses `mqtts://host[:port]` or `mqtt://host[:port]`.
    pub fn parse(url: &str) -> Result<Self, String> {
        let (scheme, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
            (BrokerScheme::Tls, rest)
        } else if let Some(rest) = url.strip_prefix("mqtt://") {
            (BrokerScheme::Plain, rest)
        } else {
            return Err(format!("{url:?} does not start with mqtts:// (or mqtt://)"));
        };
        let default_port = match scheme {
            BrokerScheme::Tls => 8883,
            BrokerScheme::Plain => 1883,
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        if rest.contains(['/', '?', '#', '@']) {
            return Err(format!("{url:?} must be only scheme://host:port"));
        }
        let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
            let Some((host, after)) = v6.split_once(']') else {
                return Err(format!("{url:?} has an unclosed IPv6 bracket"));
            };
            match after.strip_prefix(':') {
                Some(port) => (host, Some(port)),
                None if after.is_empty() => (host, None),
                None => return Err(format!("{url:?} has junk after the IPv6 address")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (rest, None),
            }
        };
        if host.is_empty() {
            return Err(format!("{url:?} has no host"));
        }
        let port = match port {
            Some(port) => port
                .parse::<u16>()
                .ok()
                .filter(|port| *port != 0)
                .ok_or_else(|| format!("{url:?} has an invalid port {port:?}"))?,
            None => default_port,
        };
        Ok(Self {
            scheme,
            host: host.to_string(),
            port,
        })
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let scheme = match self.scheme {
            BrokerScheme::Tls => "mqtts",
            BrokerScheme::Plain => "mqtt",
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}", self.host, self.port)
        }
    }
}

/// Decoded, validated pool credentials.
pub struct Credentials {
    /// The token version that was decoded.
    pub version: u32,
    /// The pool's ULID (also the CN of the client certificate).
    pub pool_id: Ulid,
    /// Where the broker is.
    pub broker: BrokerUrl,
    /// First level of every topic.
    pub topic_namespace: String,
    /// CA certificates trusted for the broker's server certificate.
    pub ca_certs: Vec<CertificateDer<'static>>,
    /// The client certificate chain, leaf first.
    pub client_chain: Vec<CertificateDer<'static>>,
    /// When the client certificate expires (seconds since the Unix epoch).
    pub client_cert_not_after: i64,
    client_key: PrivateKeyDer<'static>,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("version", &self.version)
            .field("pool_id", &self.pool_id)
            .field("broker", &self.broker)
            .field("topic_namespace", &self.topic_namespace)
            .field("ca_certs", &self.ca_certs.len())
            .field("client_chain", &self.client_chain.len())
            .field("client_cert_not_after", &self.client_cert_not_after)
            .field("client_key", &"[secret]")
            .finish()
    }
}

impl Clone for Credentials {
    fn clone(&self) -> Self {
        Self {
            version: self.version,
            pool_id: self.pool_id,
            broker: self.broker.clone(),
            topic_namespace: self.topic_namespace.clone(),
            ca_certs: self.ca_certs.clone(),
            client_chain: self.client_chain.clone(),
            client_cert_not_after: self.client_cert_not_after,
            client_key: self.client_key.clone_key(),
        }
    }
}

impl Credentials {
    /// The pool's private key (DER), for TLS client authentication.
    pub fn client_key(&self) -> PrivateKeyDer<'static> {
        self.client_key.clone_key()
    }

    /// A rustls client configuration for mutual TLS with the broker: trusts only the token's
    /// CA and presents the pool certificate. Uses the aws-lc-rs provider explicitly, so it does
    /// not depend on which process-wide provider is installed.
    pub fn tls_client_config(&self) -> Result<Arc<rustls::ClientConfig>, CredentialError> {
        let mut roots = rustls::RootCertStore::empty();
        for cert in &self.ca_certs {
            roots
                .add(cert.clone())
                .map_err(|err| CredentialError::Tls(format!("token field ca_cert: {err}")))?;
        }
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|err| CredentialError::Tls(err.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(self.client_chain.clone(), self.client_key())
            .map_err(|err| CredentialError::Tls(err.to_string()))?;
        Ok(Arc::new(config))
    }
}

/// Why credentials could not be decoded. Messages are shown to users as they are.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CredentialError {
    /// A value is not valid standard base64 (Go's `encoding/base64` semantics).
    #[error("unable to base64 decode {value}: illegal base64 data at input byte {offset}")]
    Base64 {
        /// `token` or `privateKey`.
        value: &'static str,
        /// Offset of the first bad byte in the value as stored (newlines included).
        offset: usize,
    },
    /// The token is empty.
    #[error("token is empty")]
    EmptyToken,
    /// The token's JSON is syntactically broken.
    #[error("token is not valid JSON at line {line} column {column}: {reason}")]
    TokenJson {
        /// 1-based line.
        line: usize,
        /// 1-based column.
        column: usize,
        /// What the JSON parser expected.
        reason: String,
    },
    /// The token's JSON is not an object.
    #[error("token is not a JSON object")]
    TokenNotObject,
    /// A token field is missing or has the wrong type.
    #[error("token field {field}: {reason}")]
    TokenField {
        /// The JSON path of the field, e.g. `broker_url`.
        field: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The token version is not one this build understands.
    #[error(
        "token version {0} is not supported (this controller understands version 1); upgrade the controller or issue a version 1 token"
    )]
    UnsupportedVersion(String),
    /// `pool_id` is not a ULID.
    #[error("token field pool_id is not a ULID: {value:?} ({reason})")]
    PoolId {
        /// The value found.
        value: String,
        /// Why it is not a ULID.
        reason: String,
    },
    /// A PEM certificate field could not be parsed.
    #[error("token field {field} is not a PEM certificate: {reason}")]
    Certificate {
        /// `ca_cert` or `client_cert`.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `privateKey` is not a PEM RSA private key.
    #[error("privateKey is not an RSA private key in PEM form{0}")]
    NotRsaPem(String),
    /// `privateKey` is RSA but cannot be used (e.g. too small).
    #[error("privateKey is an RSA key that cannot be used: {0}")]
    UnusableRsaKey(String),
    /// The certificate and the key do not belong together.
    #[error("the client certificate in token does not match privateKey")]
    KeyMismatch,
    /// The certificate is not for this pool.
    #[error(
        "the client certificate in token is for {common_name:?}, not for pool_id {pool_id}; the broker would refuse the pool's topics"
    )]
    WrongCommonName {
        /// CN of the certificate.
        common_name: String,
        /// The token's pool_id.
        pool_id: Ulid,
    },
    /// A rustls configuration could not be built from otherwise valid material.
    #[error("cannot build a TLS configuration from the credentials: {0}")]
    Tls(String),
}

/// Decodes and validates the Secret's `token` and `privateKey` values.
pub fn decode_credentials(
    token: &[u8],
    private_key: &[u8],
) -> Result<Credentials, CredentialError> {
    let token = decode_token(token)?;
    let pool_id = Ulid::from_string(&token.pool_id).map_err(|err| CredentialError::PoolId {
        value: token.pool_id.clone(),
        reason: err.to_string(),
    })?;
    let broker =
        BrokerUrl::parse(&token.broker_url).map_err(|reason| CredentialError::TokenField {
            field: "broker_url".to_string(),
            reason,
        })?;
    validate_namespace(&token.topic_namespace)?;
    let ca_certs = parse_certificates("ca_cert", &token.ca_cert)?;
    let client_chain = parse_certificates("client_cert", &token.client_cert)?;

    let pem = go_base64::decode(private_key).map_err(|err| CredentialError::Base64 {
        value: "privateKey",
        offset: err.0,
    })?;
    let (client_key, rsa_public_key) = parse_rsa_private_key(&pem)?;

    let leaf = client_chain.first().ok_or(CredentialError::Certificate {
        field: "client_cert",
        reason: "no certificate found".to_string(),
    })?;
    let (_, cert) =
        x509_parser::parse_x509_certificate(leaf).map_err(|err| CredentialError::Certificate {
            field: "client_cert",
            reason: err.to_string(),
        })?;
    if cert.public_key().subject_public_key.data.as_ref() != rsa_public_key.as_slice() {
        return Err(CredentialError::KeyMismatch);
    }
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .unwrap_or_default()
        .to_string();
    if !common_name.eq_ignore_ascii_case(&pool_id.to_string()) {
        return Err(CredentialError::WrongCommonName {
            common_name,
            pool_id,
        });
    }
    let client_cert_not_after = cert.validity().not_after.timestamp();

    Ok(Credentials {
        version: token.version,
        pool_id,
        broker,
        topic_namespace: token.topic_namespace,
        ca_certs,
        client_chain,
        client_cert_not_after,
        client_key,
    })
}

/// Decodes the `token` value into its JSON document, checking the version first so that a
/// future token is refused as such rather than as a list of odd fields.
pub fn decode_token(token: &[u8]) -> Result<Token, CredentialError> {
    let json = go_base64::decode(token).map_err(|err| CredentialError::Base64 {
        value: "token",
        offset: err.0,
    })?;
    if json.iter().all(u8::is_ascii_whitespace) {
        return Err(CredentialError::EmptyToken);
    }

    // An object first (serde would also read a struct from a JSON array), then its version.
    let object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(&json).map_err(json_error)?;
    match object.get("version") {
        None => {
            return Err(CredentialError::TokenField {
                field: "version".to_string(),
                reason: "missing".to_string(),
            });
        }
        Some(serde_json::Value::Number(n))
            if n.as_u64().is_some_and(|v| {
                SUPPORTED_TOKEN_VERSIONS
                    .iter()
                    .any(|supported| u64::from(*supported) == v)
            }) => {}
        Some(other) => return Err(CredentialError::UnsupportedVersion(other.to_string())),
    }

    let deserializer = &mut serde_json::Deserializer::from_slice(&json);
    serde_path_to_error::deserialize(deserializer).map_err(|err| {
        let field = err.path().to_string();
        let inner = err.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            return json_error(inner);
        }
        // serde reports a missing field at the top level with path "."; name it instead.
        let message = inner.to_string();
        match missing_field_name(&message) {
            Some(name) => CredentialError::TokenField {
                field: name,
                reason: "missing".to_string(),
            },
            None => CredentialError::TokenField {
                field,
                reason: strip_position(&message),
            },
        }
    })
}

fn json_error(err: serde_json::Error) -> CredentialError {
    if err.is_data() {
        return CredentialError::TokenNotObject;
    }
    CredentialError::TokenJson {
        line: err.line(),
        column: err.column(),
        reason: strip_position(&err.to_string()),
    }
}

/// serde_json appends " at line L column C"; the error already says where.
fn strip_position(message: &str) -> String {
    match message.rfind(" at line ") {
        Some(index) => message[..index].to_string(),
        None => message.to_string(),
    }
}

fn missing_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("missing field `")?;
    let (name, _) = rest.split_once('`')?;
    Some(name.to_string())
}

fn validate_namespace(namespace: &str) -> Result<(), CredentialError> {
    let bad = namespace.is_empty()
        || namespace.contains(['/', '+', '#', '\0'])
        || namespace.starts_with('$');
    if bad {
        return Err(CredentialError::TokenField {
            field: "topic_namespace".to_string(),
            reason: format!(
                "{namespace:?} must be one non-empty MQTT topic level (no '/', '+', '#', leading '$')"
            ),
        });
    }
    Ok(())
}

fn parse_certificates(
    field: &'static str,
    pem: &str,
) -> Result<Vec<CertificateDer<'static>>, CredentialError> {
    let certs = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| CredentialError::Certificate {
            field,
            reason: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CredentialError::Certificate {
            field,
            reason: "no -----BEGIN CERTIFICATE----- block found".to_string(),
        });
    }
    for cert in &certs {
        x509_parser::parse_x509_certificate(cert).map_err(|err| CredentialError::Certificate {
            field,
            reason: err.to_string(),
        })?;
    }
    Ok(certs)
}

/// Parses a PEM RSA private key (PKCS#1 or PKCS#8); returns it with its public key as a DER
/// `RSAPublicKey`, the form found in a certificate's subjectPublicKey.
fn parse_rsa_private_key(pem: &[u8]) -> Result<(PrivateKeyDer<'static>, Vec<u8>), CredentialError> {
    use aws_lc_rs::signature::KeyPair as _;

    let hint = pem_hint(pem);
    let key =
        PrivateKeyDer::from_pem_slice(pem).map_err(|_| CredentialError::NotRsaPem(hint.clone()))?;
    let key_pair = match &key {
        PrivateKeyDer::Pkcs1(der) => aws_lc_rs::rsa::KeyPair::from_der(der.secret_pkcs1_der()),
        PrivateKeyDer::Pkcs8(der) => aws_lc_rs::rsa::KeyPair::from_pkcs8(der.secret_pkcs8_der()),
        _ => {
            return Err(CredentialError::NotRsaPem(
                " (found an EC private key)".to_string(),
            ));
        }
    };
    let key_pair = key_pair.map_err(|err| match err.to_string().as_str() {
        "TooSmall" => CredentialError::UnusableRsaKey("it is smaller than 2048 bits".to_string()),
        "TooLarge" => CredentialError::UnusableRsaKey("it is larger than 8192 bits".to_string()),
        "InconsistentComponents" => CredentialError::UnusableRsaKey(
            "its components are inconsistent (a corrupted key)".to_string(),
        ),
        "WrongAlgorithm" => {
            CredentialError::NotRsaPem(" (the PRIVATE KEY block holds a non-RSA key)".to_string())
        }
        other => {
            CredentialError::NotRsaPem(format!(" (the key block could not be parsed: {other})"))
        }
    })?;
    let public = key_pair.public_key().as_ref().to_vec();
    Ok((key, public))
}

/// A short hint about what the decoded privateKey looks like, without echoing secret bytes.
fn pem_hint(pem: &[u8]) -> String {
    let text = String::from_utf8_lossy(pem);
    if let Some(start) = text.find("-----BEGIN ") {
        let label: String = text[start + 11..]
            .chars()
            .take_while(|c| *c != '-')
            .take(40)
            .collect();
        if label.contains("ENCRYPTED") {
            return format!(" (found {label}; decrypt it first, e.g. openssl pkey -in key.pem)");
        }
        return format!(" (found {label}; expected RSA PRIVATE KEY or PRIVATE KEY)");
    }
    if pem.contains(&0) || std::str::from_utf8(pem).is_err() {
        return " (found binary data: was the PEM file base64-encoded twice, or is it DER?)"
            .to_string();
    }
    " (no -----BEGIN ... PRIVATE KEY----- block found)".to_string()
}

/// PEM-encodes DER with 64-column lines, e.g. `pem_encode("RSA PRIVATE KEY", der)`.
pub fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut out = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(line));
        out.push('\n');
    }
    out.push_str(&format!("-----END {label}-----\n"));
    out
}

#[cfg(test)]
mod tests;
