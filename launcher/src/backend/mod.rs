//! The launcher API client: HTTPS to the backend, trusting only the pool token's CA, every
//! request signed as the worker for this run stage attempt (launcher_api::signature) with a
//! fresh nonce, bounded in time and retried with backoff when the backend could not answer.
//! A 4xx is never retried: the backend's message says what is wrong, and it is shown as is.

mod download;
pub mod retry;
pub mod tls;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use launcher_api::signature::{SignatureError, SignedRequest, body_digest};
use launcher_api::{Claims, layout};
use reqwest::{Method, Response, StatusCode, header};
use thiserror::Error;

pub use retry::Retry;

use crate::identity::Identity;
pub use tls::TlsError;

/// Bound on one small request (job, logs, result, stop, state).
pub const API_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on one download or upload (source, workspace, tool).
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(15 * 60);
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The longest silence inside one answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest JSON answer read (a job with its environment).
pub const MAX_JSON: u64 = 4 * 1024 * 1024;
/// How much of an error answer is kept for the message.
const MAX_ERROR_BODY: u64 = 16 * 1024;
/// Passes over a download that broke off in the middle.
const DOWNLOAD_PASSES: u32 = 3;

#[derive(Debug, Error)]
pub enum BackendError {
    #[error("TLS to the backend cannot be set up")]
    Tls(#[from] TlsError),
    #[error("the HTTP client cannot be built")]
    Client(#[source] reqwest::Error),
    #[error("{what}: the request cannot be signed")]
    Sign {
        what: String,
        #[source]
        source: SignatureError,
    },
    #[error("{what}: the backend at {endpoint} could not be reached ({attempts} attempts)")]
    Unreachable {
        what: String,
        endpoint: String,
        attempts: u32,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: the backend answered {status}: {message}")]
    Status {
        what: String,
        status: u16,
        message: String,
    },
    #[error(
        "{what}: TLS to the backend at {endpoint} failed: its certificate must be issued by the CA in the pool token (ca_cert) for the address in launcherEndpoint"
    )]
    Untrusted {
        what: String,
        endpoint: String,
        #[source]
        source: reqwest::Error,
    },
    #[error("{what}: the answer is larger than {limit} bytes")]
    TooLarge { what: String, limit: u64 },
    #[error("{what}: the answer is not the expected JSON")]
    Json {
        what: String,
        #[source]
        source: serde_json::Error,
    },
    #[error(
        "{what}: got {actual_size} bytes with SHA-256 {actual_sha256}, but the job says {size} bytes with SHA-256 {sha256}"
    )]
    Mismatch {
        what: String,
        size: u64,
        sha256: String,
        actual_size: u64,
        actual_sha256: String,
    },
    #[error("{what}: {}", path.display())]
    Io {
        what: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What a request sends.
pub enum Body {
    Empty,
    Bytes(Bytes),
    /// A file streamed from disk, whose digest is known already.
    File {
        path: PathBuf,
        size: u64,
        sha256: String,
    },
}

/// One launcher API request of this stage.
pub struct Call<'a> {
    pub method: Method,
    /// The stage path's leaf: `job`, `logs`, `state/lock` ...
    pub leaf: &'a str,
    /// The query, without `?`, or empty.
    pub query: &'a str,
    pub body: Body,
    pub timeout: Duration,
    pub retry: Retry,
}

impl Call<'_> {
    fn what(&self) -> String {
        format!("{} {}", self.method, self.leaf)
    }
}

/// The signed client of one run stage attempt.
#[derive(Clone)]
pub struct Backend {
    http: reqwest::Client,
    endpoint: reqwest::Url,
    key: Arc<rsa::PrivateKey>,
    claims: Claims,
}

enum AttemptError {
    /// The request may not have reached the backend, or its answer did not come back.
    Http(reqwest::Error),
    Fatal(BackendError),
}

impl Backend {
    pub fn new(identity: Identity, endpoint: reqwest::Url) -> Result<Self, BackendError> {
        let tls = tls::client_config(&identity.ca_pem)?;
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(CONNECT_TIMEOUT)
            .read_timeout(READ_TIMEOUT)
            // Never through a proxy from the environment: the backend is reached directly,
            // and the signature must not travel through someone else's hands.
            .no_proxy()
            .http1_only()
            .build()
            .map_err(BackendError::Client)?;
        Ok(Self {
            http,
            endpoint,
            key: Arc::new(identity.key),
            claims: identity.claims,
        })
    }

    pub fn claims(&self) -> &Claims {
        &self.claims
    }

    /// Sends `call`, retrying per its policy. Returns the backend's answer, whatever its
    /// status, unless the backend could not be reached or kept failing: callers that expect
    /// success use [`expect_success`].
    pub async fn send(&self, call: &Call<'_>) -> Result<Response, BackendError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let retry_after = call.retry.delay_after(attempt);
            let failed = match self.attempt(call).await {
                Ok(response) => {
                    let transient = !call.retry.connect_only
                        && retry::is_transient_status(response.status().as_u16());
                    if !transient || retry_after.is_none() {
                        return Ok(response);
                    }
                    format!("the backend answered {}", response.status())
                }
                Err(AttemptError::Fatal(err)) => return Err(err),
                Err(AttemptError::Http(source)) => {
                    // A certificate the pool's CA did not sign will not be signed by it later.
                    if is_tls_failure(&source) {
                        return Err(BackendError::Untrusted {
                            what: call.what(),
                            endpoint: self.endpoint.to_string(),
                            source,
                        });
                    }
                    let transient = source.is_connect()
                        || (!call.retry.connect_only
                            && (source.is_timeout() || source.is_request()));
                    if !transient || retry_after.is_none() {
                        return Err(BackendError::Unreachable {
                            what: call.what(),
                            endpoint: self.endpoint.to_string(),
                            attempts: attempt,
                            source,
                        });
                    }
                    crate::chain(&source)
                }
            };
            if let Some(delay) = retry_after {
                // In the container's log: a run that waits on the backend says why.
                crate::note(&format!(
                    "{}: attempt {attempt} failed ({failed}); trying again in {delay:?}",
                    call.what()
                ));
                tokio::time::sleep(delay).await;
            }
        }
    }

    async fn attempt(&self, call: &Call<'_>) -> Result<Response, AttemptError> {
        let c = &self.claims;
        let path = layout::stage_path(&c.run, &c.stage, c.attempt, call.leaf);
        let mut url = self.endpoint.clone();
        url.set_path(&path);
        url.set_query((!call.query.is_empty()).then_some(call.query));
        let (digest, body, length) = match &call.body {
            Body::Empty => (body_digest(b""), reqwest::Body::from(Bytes::new()), 0),
            Body::Bytes(bytes) => (
                body_digest(bytes),
                reqwest::Body::from(bytes.clone()),
                bytes.len() as u64,
            ),
            Body::File { path, size, sha256 } => {
                let file = tokio::fs::File::open(path).await.map_err(|source| {
                    AttemptError::Fatal(BackendError::Io {
                        what: call.what(),
                        path: path.clone(),
                        source,
                    })
                })?;
                let stream = tokio_util::io::ReaderStream::new(file);
                (sha256.clone(), reqwest::Body::wrap_stream(stream), *size)
            }
        };
        let time = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs();
        let signed = SignedRequest::sign_digest(
            &self.key,
            self.claims.clone(),
            call.method.as_str(),
            url.path(),
            url.query().unwrap_or(""),
            &digest,
            time,
            nonce(),
        )
        .map_err(|source| {
            AttemptError::Fatal(BackendError::Sign {
                what: call.what(),
                source,
            })
        })?;
        self.http
            .request(call.method.clone(), url)
            .header(header::AUTHORIZATION, signed.header_value())
            .header(header::CONTENT_LENGTH, length)
            .timeout(call.timeout)
            .body(body)
            .send()
            .await
            .map_err(AttemptError::Http)
    }

    /// `GET leaf` as JSON.
    pub async fn get_json<T: serde::de::DeserializeOwned>(
        &self,
        leaf: &str,
    ) -> Result<T, BackendError> {
        let call = Call {
            method: Method::GET,
            leaf,
            query: "",
            body: Body::Empty,
            timeout: API_TIMEOUT,
            retry: Retry::STANDARD,
        };
        let what = call.what();
        let response = expect_success(&what, self.send(&call).await?).await?;
        let body = read_limited(&what, response, MAX_JSON).await?;
        serde_json::from_slice(&body).map_err(|source| BackendError::Json { what, source })
    }

    /// `POST leaf` with a JSON body, expecting success; each attempt bounded by `timeout`.
    pub async fn post_json<T: serde::Serialize>(
        &self,
        leaf: &str,
        value: &T,
        retry: Retry,
        timeout: Duration,
    ) -> Result<(), BackendError> {
        let body = serde_json::to_vec(value).map_err(|source| BackendError::Json {
            what: format!("POST {leaf}"),
            source,
        })?;
        let call = Call {
            method: Method::POST,
            leaf,
            query: "",
            body: Body::Bytes(body.into()),
            timeout,
            retry,
        };
        expect_success(&call.what(), self.send(&call).await?).await?;
        Ok(())
    }

    /// `PUT leaf` with a file's content.
    pub async fn put_file(
        &self,
        leaf: &str,
        path: &Path,
        size: u64,
        sha256: &str,
    ) -> Result<(), BackendError> {
        let call = Call {
            method: Method::PUT,
            leaf,
            query: "",
            body: Body::File {
                path: path.to_path_buf(),
                size,
                sha256: sha256.to_string(),
            },
            timeout: TRANSFER_TIMEOUT,
            retry: Retry::STANDARD,
        };
        expect_success(&call.what(), self.send(&call).await?).await?;
        Ok(())
    }
}

/// Whether TLS itself failed (an unknown CA, a wrong name): rustls' error somewhere in the
/// chain. The TLS stream wraps it in io::Errors, whose `source` skips what they wrap, so
/// those are opened with `get_ref`.
fn is_tls_failure(err: &reqwest::Error) -> bool {
    let mut next: Option<&(dyn std::error::Error + 'static)> = Some(err);
    while let Some(cause) = next {
        if cause.is::<rustls::Error>() {
            return true;
        }
        next = match cause.downcast_ref::<std::io::Error>() {
            Some(io) => io
                .get_ref()
                .map(|inner| inner as &(dyn std::error::Error + 'static)),
            None => cause.source(),
        };
    }
    false
}

/// A 32-hex-digit nonce, new for every request: the backend refuses one it has seen.
fn nonce() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// The response if it is a success, else the backend's message as an error.
pub async fn expect_success(what: &str, response: Response) -> Result<Response, BackendError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body = read_limited(what, response, MAX_ERROR_BODY)
        .await
        .unwrap_or_default();
    Err(BackendError::Status {
        what: what.to_string(),
        status: status.as_u16(),
        message: error_message(status, &body),
    })
}

/// The backend's reason: the `error` or `message` of a JSON answer, else its text.
fn error_message(status: StatusCode, body: &[u8]) -> String {
    let json = serde_json::from_slice::<serde_json::Value>(body).ok();
    let field = json.as_ref().and_then(|v| {
        ["error", "message"]
            .iter()
            .find_map(|k| v.get(k).and_then(|m| m.as_str()).map(str::to_string))
    });
    let text = field.unwrap_or_else(|| String::from_utf8_lossy(body).trim().to_string());
    if text.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_string()
    } else {
        text
    }
}

/// The whole body, or an error once it passes `limit` bytes.
pub async fn read_limited(
    what: &str,
    mut response: Response,
    limit: u64,
) -> Result<Bytes, BackendError> {
    let too_large = || BackendError::TooLarge {
        what: what.to_string(),
        limit,
    };
    if response.content_length().is_some_and(|len| len > limit) {
        return Err(too_large());
    }
    let mut body = Vec::new();
    loop {
        let chunk = response
            .chunk()
            .await
            .map_err(|source| BackendError::Unreachable {
                what: what.to_string(),
                endpoint: response.url().to_string(),
                attempts: 1,
                source,
            })?;
        let Some(chunk) = chunk else { break };
        if (body.len() + chunk.len()) as u64 > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_fresh_and_fit_the_signature_scheme() {
        let (a, b) = (nonce(), nonce());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_alphanumeric()));
    }

    #[test]
    fn the_backends_message_is_taken_from_its_json() {
        let message = |body: &str| error_message(StatusCode::FORBIDDEN, body.as_bytes());
        assert_eq!(message(r#"{"error": "run ended"}"#), "run ended");
        assert_eq!(message(r#"{"message": "no"}"#), "no");
        assert_eq!(message(" plain text \n"), "plain text");
        assert_eq!(message(""), "Forbidden");
    }
}
