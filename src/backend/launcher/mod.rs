//! The launcher API: what a run Pod's launcher fetches and sends for its stage (the job, the
//! source, the workspace, the tool, logs, the result, the stop flag, the stack's state), on a
//! listener of its own. HTTPS only, with a server certificate from the backend's CA (the
//! `ca_cert` of every pool token, which is what the launcher trusts), and every request signed
//! by the worker's own key ([`auth`]). The plain HTTP API stays on loopback and unchanged.
//!
//! One handler takes every request: the API's paths are `launcher_api::layout::stage_path`s
//! and two of its methods (`LOCK`, `UNLOCK`) are not HTTP's, so the resource is parsed here
//! rather than by a router.

mod auth;
mod routes;
mod state;
mod tls;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use tokio::sync::watch;

pub use auth::{MAX_NONCES, Nonces};
pub use routes::limits;

use super::BackendError;
use super::blobs::Blobs;
use super::ca::Authority;
use super::store::{StageDenied, Store};

/// Why a launcher request was refused. Every message says why, for the launcher's log.
#[derive(Debug, thiserror::Error)]
pub enum LauncherError {
    /// No, a malformed or a bad signature; a stale time; a replayed nonce.
    #[error(transparent)]
    Unauthenticated(launcher_api::SignatureError),
    /// The signer may not act for that run stage attempt.
    #[error(transparent)]
    Forbidden(StageDenied),
    /// The path is not the stage the request is signed for.
    #[error("{0}")]
    PathNotClaimed(String),
    /// No such resource, or nothing there.
    #[error("{0}")]
    NotFound(String),
    /// A known resource, another method.
    #[error("{method} is not allowed on {leaf}: use {allowed}")]
    MethodNotAllowed {
        method: String,
        leaf: String,
        allowed: &'static str,
    },
    /// A body over its bound.
    #[error("{what} is larger than {limit} bytes, the most the backend accepts")]
    TooLarge { what: String, limit: u64 },
    /// A body that is not what the resource takes.
    #[error("{0}")]
    BadRequest(String),
    /// The resource exists but the request does not fit its state.
    #[error("{0}")]
    Conflict(String),
    /// The nonce memory is full of unexpired nonces.
    #[error(
        "the backend remembers {MAX_NONCES} recent nonces and all are in use: retry in a minute"
    )]
    Busy,
    /// The backend itself failed.
    #[error(transparent)]
    Backend(BackendError),
}

impl LauncherError {
    fn status(&self) -> StatusCode {
        match self {
            Self::Unauthenticated(_) => StatusCode::UNAUTHORIZED,
            Self::Forbidden(_) | Self::PathNotClaimed(_) => StatusCode::FORBIDDEN,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Self::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Busy => StatusCode::SERVICE_UNAVAILABLE,
            Self::Backend(BackendError::NotFound(_)) => StatusCode::NOT_FOUND,
            Self::Backend(BackendError::Conflict(_)) => StatusCode::CONFLICT,
            Self::Backend(BackendError::Input(_)) => StatusCode::BAD_REQUEST,
            Self::Backend(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for LauncherError {
    fn into_response(self) -> Response {
        let status = self.status();
        if status.is_server_error() {
            tracing::error!(error = %self, "launcher API request failed");
        } else {
            tracing::info!(status = status.as_u16(), error = %self, "launcher API request refused");
        }
        let body = Json(serde_json::json!({"error": self.to_string()}));
        if status == StatusCode::UNAUTHORIZED {
            let challenge = [("www-authenticate", launcher_api::signature::SCHEME)];
            return (status, challenge, body).into_response();
        }
        (status, body).into_response()
    }
}

/// What the handler needs.
pub(crate) struct LauncherState {
    pub store: Arc<Store>,
    pub blobs: Blobs,
    pub nonces: Nonces,
}

/// The launcher API's listener and TLS identity.
pub struct LauncherListener {
    listener: tls::TlsListener,
    /// Where it listens.
    pub addr: SocketAddr,
}

/// The host names and addresses the server certificate names: the listen IP (unless it is
/// the unspecified address) and the host of the URL put into schedules.
pub fn certificate_hosts(listen: SocketAddr, url: &str) -> Vec<String> {
    let mut hosts = Vec::new();
    if !listen.ip().is_unspecified() {
        hosts.push(listen.ip().to_string());
    }
    let authority = url.strip_prefix("https://").unwrap_or(url);
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    if !host.is_empty() && !hosts.iter().any(|h| h == host) {
        hosts.push(host.to_string());
    }
    hosts
}

impl LauncherListener {
    /// Binds `listen` with a fresh server certificate from `authority` for `hosts`.
    pub async fn bind(
        listen: SocketAddr,
        authority: &Authority,
        hosts: &[String],
    ) -> Result<Self, BackendError> {
        let issued = authority.issue_server(hosts)?;
        let config = tls::server_config(&issued)?;
        let listener = tls::TlsListener::bind(listen, config).await?;
        let addr = listener.addr;
        Ok(Self { listener, addr })
    }
}

/// Serves the launcher API until `stop`.
pub(crate) async fn serve(
    listener: LauncherListener,
    state: Arc<LauncherState>,
    mut stop: watch::Receiver<bool>,
) {
    let router = axum::Router::new()
        .fallback(routes::handle)
        .with_state(state);
    let shutdown = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    if let Err(err) = axum::serve(listener.listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %err, "launcher API server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_names_the_listen_address_and_the_url_host() {
        let listen: SocketAddr = "10.213.0.1:8443".parse().unwrap();
        assert_eq!(
            certificate_hosts(listen, "https://10.213.0.1:8443"),
            ["10.213.0.1"]
        );
        let any: SocketAddr = "0.0.0.0:8443".parse().unwrap();
        assert_eq!(
            certificate_hosts(any, "https://backend.example.com:8443"),
            ["backend.example.com"]
        );
        assert_eq!(certificate_hosts(any, "https://[::1]:8443"), ["::1"]);
    }
}
