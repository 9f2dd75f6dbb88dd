//! The reference backend: a small, real counterpart of the operator.
//!
//! It exists so the system runs end to end and can be measured; it is not Spacelift. It
//! issues pool credentials from its own CA ([`pool::create_pool`]), writes a Mosquitto
//! configuration that enforces the protocol's topic ACL ([`broker_config`]), keeps a durable
//! run queue in SQLite, dispatches runs to IDLE workers over MQTT and records every event
//! ([`serve::Server`]), and serves a small HTTP API. It keeps stacks (source, tool, state) and
//! runs them stage by stage ([`stages`]): the run Pods' launchers fetch their jobs and send
//! their logs, workspaces and state through the launcher API ([`launcher`]), HTTPS with
//! requests signed by the worker's own key.

pub mod archive;
pub mod blobs;
pub mod broker_config;
pub mod ca;
pub mod client;
mod http;
mod http_stacks;
pub mod launcher;
pub mod pool;
pub mod serve;
pub mod stages;
pub mod state;
pub mod store;

use std::path::PathBuf;

/// Errors of the reference backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Bad input from the user (flags, API requests).
    #[error("{0}")]
    Input(String),
    /// Something named does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// A file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Certificate or key handling failed.
    #[error("certificate: {0}")]
    Certificate(String),
    /// The SQLite store failed.
    #[error("database: {0}")]
    Store(String),
    /// The MQTT link failed.
    #[error(transparent)]
    Link(#[from] crate::link::LinkError),
    /// HTTP (server or client) failed.
    #[error("HTTP: {0}")]
    Http(String),
    /// Metrics registration failed.
    #[error("metrics: {0}")]
    Metrics(#[from] prometheus::Error),
}

/// Installs aws-lc-rs as the process-wide rustls provider (both ring and aws-lc-rs are in the
/// dependency graph, so rustls cannot pick one itself). Idempotent.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
