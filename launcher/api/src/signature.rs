//! How the launcher proves it is its worker: every request carries
//!
//! ```text
//! Authorization: SpaceliftWorker-v1 pool=<ULID>,worker=<ULID>,run=<ULID>,stage=<stage>,
//!     attempt=<n>,time=<unix seconds>,nonce=<16-64 letters or digits>,signature=<base64>
//! ```
//!
//! where the signature is RSASSA-PSS with SHA-256, made with the worker's private key, over
//! the [`canonical`] string: the scheme, the method, the path, the query, the SHA-256 of the
//! body and every claim, one per line. The backend checks it with the public key the worker
//! registered (`worker.register`), refuses a `time` more than a minute away from its clock and a
//! nonce it has seen, and lets the request through only for the run stage attempt the worker
//! holds, on that stage's own paths. The runner's container never holds the key.

use base64::Engine as _;
use rsa::pkcs1::DecodeRsaPrivateKey as _;
use rsa::pkcs8::{DecodePrivateKey as _, DecodePublicKey as _};
use rsa::sha2::{Digest as _, Sha256};

/// The scheme name, first in the header and in the signed string.
pub const SCHEME: &str = "SpaceliftWorker-v1";
/// How far a request's `time` may be from the backend's clock, in seconds.
pub const MAX_CLOCK_SKEW_SECONDS: u64 = 60;
/// The longest header the backend reads.
pub const MAX_HEADER_LEN: usize = 4096;

/// Who signs, for what: the worker and the one run stage attempt the request is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Claims {
    pub pool: String,
    pub worker: String,
    pub run: String,
    pub stage: String,
    pub attempt: u32,
}

/// A parsed (or freshly made) signature header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedRequest {
    pub claims: Claims,
    /// Unix seconds when it was signed.
    pub time: u64,
    /// Never used twice: the backend refuses a nonce it has seen.
    pub nonce: String,
    pub signature: Vec<u8>,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SignatureError {
    #[error("no Authorization header: launcher API requests must be signed ({SCHEME})")]
    Missing,
    #[error("the Authorization header is not {SCHEME}: {0}")]
    Malformed(String),
    #[error("the worker key cannot be read: {0}")]
    Key(String),
    #[error("signing failed: {0}")]
    Sign(String),
    #[error("the signature does not verify with the public key worker {worker} registered")]
    BadSignature { worker: String },
    #[error(
        "the request was signed at {time}, {skew} s away from the backend's clock (at most {MAX_CLOCK_SKEW_SECONDS} s): check the node's clock"
    )]
    Stale { time: u64, skew: u64 },
    #[error("nonce {0} was used before: a signed request is good for one use")]
    Replayed(String),
}

/// Hex SHA-256 of a request body.
pub fn body_digest(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

/// Hex of bytes, lowercase.
pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The string that is signed.
pub fn canonical(
    method: &str,
    path: &str,
    query: &str,
    body_sha256: &str,
    claims: &Claims,
    time: u64,
    nonce: &str,
) -> String {
    format!(
        "{SCHEME}\n{}\n{path}\n{query}\n{body_sha256}\npool={}\nworker={}\nrun={}\nstage={}\nattempt={}\ntime={time}\nnonce={nonce}",
        method.to_ascii_uppercase(),
        claims.pool,
        claims.worker,
        claims.run,
        claims.stage,
        claims.attempt,
    )
}

/// Reads a worker's private key: PKCS#8 (`PRIVATE KEY`, what the operator writes) or PKCS#1
/// (`RSA PRIVATE KEY`).
pub fn private_key_from_pem(pem: &str) -> Result<rsa::PrivateKey, SignatureError> {
    rsa::PrivateKey::from_pkcs8_pem(pem)
        .or_else(|_| rsa::PrivateKey::from_pkcs1_pem(pem))
        .map_err(|err| SignatureError::Key(err.to_string()))
}

/// Reads a worker's public key as it registered it (`PUBLIC KEY`, SubjectPublicKeyInfo).
pub fn public_key_from_pem(pem: &str) -> Result<rsa::PublicKey, SignatureError> {
    rsa::PublicKey::from_public_key_pem(pem).map_err(|err| SignatureError::Key(err.to_string()))
}

impl SignedRequest {
    /// Signs one request.
    #[allow(clippy::too_many_arguments)]
    pub fn sign(
        key: &rsa::PrivateKey,
        claims: Claims,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
        time: u64,
        nonce: String,
    ) -> Result<Self, SignatureError> {
        Self::sign_digest(
            key,
            claims,
            method,
            path,
            query,
            &body_digest(body),
            time,
            nonce,
        )
    }

    /// Signs one request whose body's hex SHA-256 is already known: a body streamed from a
    /// file (a workspace upload) need not be held in memory to be signed.
    #[allow(clippy::too_many_arguments)]
    pub fn sign_digest(
        key: &rsa::PrivateKey,
        claims: Claims,
        method: &str,
        path: &str,
        query: &str,
        body_sha256: &str,
        time: u64,
        nonce: String,
    ) -> Result<Self, SignatureError> {
        let text = canonical(method, path, query, body_sha256, &claims, time, &nonce);
        let signature = key
            .pss_sign::<Sha256>(text.as_bytes())
            .map_err(|err| SignatureError::Sign(err.to_string()))?;
        Ok(Self {
            claims,
            time,
            nonce,
            signature,
        })
    }

    /// The `Authorization` header value.
    pub fn header_value(&self) -> String {
        let c = &self.claims;
        format!(
            "{SCHEME} pool={},worker={},run={},stage={},attempt={},time={},nonce={},signature={}",
            c.pool,
            c.worker,
            c.run,
            c.stage,
            c.attempt,
            self.time,
            self.nonce,
            base64::engine::general_purpose::STANDARD.encode(&self.signature)
        )
    }

    /// Parses an `Authorization` header value. Checks the shape of every field, not the
    /// signature (see [`SignedRequest::verify`]).
    pub fn parse(header: &str) -> Result<Self, SignatureError> {
        let malformed = |why: String| SignatureError::Malformed(why);
        if header.len() > MAX_HEADER_LEN {
            return Err(malformed(format!("longer than {MAX_HEADER_LEN} bytes")));
        }
        let fields = header
            .strip_prefix(SCHEME)
            .and_then(|rest| rest.strip_prefix(' '))
            .ok_or_else(|| malformed(format!("it must start with \"{SCHEME} \"")))?;
        let mut values: [Option<&str>; 8] = [None; 8];
        const NAMES: [&str; 8] = [
            "pool",
            "worker",
            "run",
            "stage",
            "attempt",
            "time",
            "nonce",
            "signature",
        ];
        for field in fields.split(',') {
            let (name, value) = field
                .trim()
                .split_once('=')
                .ok_or_else(|| malformed(format!("field {field:?} is not name=value")))?;
            let slot = NAMES
                .iter()
                .position(|n| *n == name)
                .ok_or_else(|| malformed(format!("unknown field {name:?}")))?;
            if values[slot].replace(value).is_some() {
                return Err(malformed(format!("field {name} given twice")));
            }
        }
        let get =
            |i: usize| values[i].ok_or_else(|| malformed(format!("field {} missing", NAMES[i])));
        let ulid = |i: usize| -> Result<String, SignatureError> {
            let v = get(i)?;
            if v.len() == 26 && v.bytes().all(|b| b.is_ascii_alphanumeric()) {
                Ok(v.to_string())
            } else {
                Err(malformed(format!("{} {v:?} is not a ULID", NAMES[i])))
            }
        };
        let stage = get(3)?;
        if stage.is_empty()
            || stage.len() > 30
            || !stage
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        {
            return Err(malformed(format!("stage {stage:?} is not a run stage")));
        }
        let number = |i: usize| -> Result<u64, SignatureError> {
            get(i)?
                .parse()
                .map_err(|_| malformed(format!("{} is not a number", NAMES[i])))
        };
        let attempt = u32::try_from(number(4)?)
            .ok()
            .filter(|a| *a > 0)
            .ok_or_else(|| malformed("attempt must be 1 or more".into()))?;
        let nonce = get(6)?;
        if !(16..=64).contains(&nonce.len()) || !nonce.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(malformed("nonce must be 16-64 letters or digits".into()));
        }
        let signature = base64::engine::general_purpose::STANDARD
            .decode(get(7)?)
            .map_err(|err| malformed(format!("signature is not base64: {err}")))?;
        Ok(Self {
            claims: Claims {
                pool: ulid(0)?,
                worker: ulid(1)?,
                run: ulid(2)?,
                stage: stage.to_string(),
                attempt,
            },
            time: number(5)?,
            nonce: nonce.to_string(),
            signature,
        })
    }

    /// Checks the signature over this request with the worker's registered public key.
    pub fn verify(
        &self,
        key: &rsa::PublicKey,
        method: &str,
        path: &str,
        query: &str,
        body: &[u8],
    ) -> Result<(), SignatureError> {
        self.verify_digest(key, method, path, query, &body_digest(body))
    }

    /// [`SignedRequest::verify`] for a body already hashed (hex SHA-256), e.g. one streamed
    /// to disk as it arrived.
    pub fn verify_digest(
        &self,
        key: &rsa::PublicKey,
        method: &str,
        path: &str,
        query: &str,
        body_sha256: &str,
    ) -> Result<(), SignatureError> {
        let text = canonical(
            method,
            path,
            query,
            body_sha256,
            &self.claims,
            self.time,
            &self.nonce,
        );
        key.pss_verify::<Sha256>(text.as_bytes(), &self.signature)
            .map_err(|_| SignatureError::BadSignature {
                worker: self.claims.worker.clone(),
            })
    }

    /// Checks `time` against the verifier's clock.
    pub fn check_time(&self, now: u64) -> Result<(), SignatureError> {
        let skew = now.abs_diff(self.time);
        if skew > MAX_CLOCK_SKEW_SECONDS {
            return Err(SignatureError::Stale {
                time: self.time,
                skew,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::{EncodePrivateKey as _, EncodePublicKey as _, LineEnding};
    use std::sync::LazyLock;

    static KEY: LazyLock<rsa::PrivateKey> =
        LazyLock::new(<rsa::PrivateKey as rsa::Generate>::generate);

    fn claims() -> Claims {
        Claims {
            pool: "01HPS9HDSWCQ73RPDTVAK0KK0A".into(),
            worker: "01HPS6K4BNB7BPHCDHDWFAMJNV".into(),
            run: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
            stage: "planning".into(),
            attempt: 1,
        }
    }

    fn signed(body: &[u8]) -> SignedRequest {
        SignedRequest::sign(
            &KEY,
            claims(),
            "get",
            "/launcher/v1/runs/01HN37WC3MCNE3CY9HAHWRF06K/stages/planning/attempts/1/job",
            "",
            body,
            1_700_000_000,
            "0123456789abcdef".into(),
        )
        .unwrap()
    }

    #[test]
    fn a_signed_request_verifies_after_a_round_trip_through_its_header() {
        let pem = KEY.to_pkcs8_pem(LineEnding::LF).unwrap();
        let key = private_key_from_pem(&pem).unwrap();
        let public = public_key_from_pem(
            &key.to_public_key()
                .to_public_key_pem(LineEnding::LF)
                .unwrap(),
        )
        .unwrap();
        let request = signed(b"{}");
        let parsed = SignedRequest::parse(&request.header_value()).unwrap();
        assert_eq!(parsed, request);
        let path = "/launcher/v1/runs/01HN37WC3MCNE3CY9HAHWRF06K/stages/planning/attempts/1/job";
        parsed.verify(&public, "GET", path, "", b"{}").unwrap();
        // Any change to what was signed breaks it.
        for (method, path, query, body) in [
            ("PUT", path, "", &b"{}"[..]),
            (
                "GET",
                "/launcher/v1/runs/x/stages/planning/attempts/1/job",
                "",
                b"{}",
            ),
            ("GET", path, "ID=1", b"{}"),
            ("GET", path, "", b"{ }"),
        ] {
            assert_eq!(
                parsed.verify(&public, method, path, query, body),
                Err(SignatureError::BadSignature {
                    worker: "01HPS6K4BNB7BPHCDHDWFAMJNV".into()
                })
            );
        }
        let mut other_run = parsed.clone();
        other_run.claims.run = "01HN37WC3MCNE3CY9HAHWRF06M".into();
        assert!(other_run.verify(&public, "GET", path, "", b"{}").is_err());
    }

    #[test]
    fn time_is_bounded() {
        let request = signed(b"");
        assert!(request.check_time(1_700_000_000 + 60).is_ok());
        assert_eq!(
            request.check_time(1_700_000_000 + 61),
            Err(SignatureError::Stale {
                time: 1_700_000_000,
                skew: 61
            })
        );
    }

    #[test]
    fn malformed_headers_say_what_is_wrong() {
        let good = signed(b"").header_value();
        let cases = [
            ("Bearer abc".to_string(), "must start with"),
            (
                good.replace("attempt=1", "attempt=0"),
                "attempt must be 1 or more",
            ),
            (
                good.replace("stage=planning", "stage=Plan"),
                "is not a run stage",
            ),
            (
                good.replace(",nonce=0123456789abcdef", ""),
                "field nonce missing",
            ),
            (format!("{good},pool=x"), "given twice"),
            (good.replace("worker=", "wrkr="), "unknown field"),
            ("x".repeat(5000), "longer than"),
        ];
        for (header, expected) in cases {
            let err = SignedRequest::parse(&header).unwrap_err().to_string();
            assert!(err.contains(expected), "{header:.60}: {err}");
        }
    }
}
