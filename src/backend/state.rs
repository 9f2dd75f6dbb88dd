//! The backend's state directory: CA, backend identity, configuration and the SQLite queue.
//!
//! ```text
//! <state-dir>/ca.pem, ca-key.pem            the CA (created on first use)
//! <state-dir>/backend.pem, backend-key.pem  the backend's client certificate for the broker
//! <state-dir>/config.json                   broker URL and topic namespace (broker-config writes it)
//! <state-dir>/backend.sqlite                pools, workers, runs, events, outbox, inbox,
//!                                           stacks, tools, state versions, logs
//! <state-dir>/blobs/<sha256>                sources, workspaces, tool binaries, states
//! ```

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};

use super::BackendError;
use super::ca::{self, Authority};

/// The default state directory.
pub const DEFAULT_STATE_DIR: &str = ".workerpool-backend";

/// What `broker-config` records for `pool create` and `serve`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackendConfig {
    /// The broker URL put into tokens and used by `serve`.
    pub broker_url: String,
    /// The first topic level.
    pub topic_namespace: String,
}

impl Default for BackendConfig {
    fn default() -> Self {
        Self {
            broker_url: "mqtts://localhost:8883".to_string(),
            topic_namespace: "spacelift".to_string(),
        }
    }
}

/// The state directory.
#[derive(Clone, Debug)]
pub struct StateDir {
    root: PathBuf,
}

impl StateDir {
    /// A state directory at `root` (created when first written).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    /// Its path.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn ensure(&self) -> Result<(), BackendError> {
        std::fs::create_dir_all(&self.root).map_err(|err| ca::io_error(&self.root, err))
    }

    /// The recorded configuration, or the defaults.
    pub fn config(&self) -> Result<BackendConfig, BackendError> {
        let path = self.root.join("config.json");
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|err| BackendError::Input(format!("{}: {err}", path.display()))),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => Ok(BackendConfig::default()),
            Err(err) => Err(ca::io_error(&path, err)),
        }
    }

    /// Records the configuration.
    pub fn save_config(&self, config: &BackendConfig) -> Result<(), BackendError> {
        self.ensure()?;
        let json = serde_json::to_string_pretty(config)
            .map_err(|err| BackendError::Input(err.to_string()))?;
        ca::write(&self.root.join("config.json"), &(json + "\n"))
    }

    /// The CA, created on first use.
    pub fn authority(&self) -> Result<Authority, BackendError> {
        self.ensure()?;
        Authority::load_or_create(&self.root)
    }

    /// The backend's client certificate and key (PEM), created on first use.
    pub fn backend_identity(&self) -> Result<(String, String), BackendError> {
        let cert_path = self.root.join("backend.pem");
        let key_path = self.root.join("backend-key.pem");
        if cert_path.exists() && key_path.exists() {
            let read = |p: &Path| std::fs::read_to_string(p).map_err(|err| ca::io_error(p, err));
            return Ok((read(&cert_path)?, read(&key_path)?));
        }
        let issued = self.authority()?.issue_backend_client()?;
        let key = issued.key_pem.unwrap_or_default();
        ca::write_secret(&key_path, &key)?;
        ca::write(&cert_path, &issued.cert_pem)?;
        Ok((issued.cert_pem, key))
    }

    /// A rustls client configuration with the backend identity, trusting the CA.
    pub fn backend_tls(&self) -> Result<Arc<rustls::ClientConfig>, BackendError> {
        let authority = self.authority()?;
        let (cert_pem, key_pem) = self.backend_identity()?;
        tls_client_config(authority.cert_pem(), &cert_pem, &key_pem)
    }

    /// The content-addressed blobs.
    pub fn blobs(&self) -> super::blobs::Blobs {
        super::blobs::Blobs::new(self.root.join("blobs"))
    }

    /// The SQLite database path.
    pub fn database_path(&self) -> PathBuf {
        self.root.join("backend.sqlite")
    }

    /// Opens (and migrates) the database.
    pub fn open_store(&self) -> Result<super::store::Store, BackendError> {
        self.ensure()?;
        super::store::Store::open(&self.database_path())
    }
}

/// A rustls client configuration from PEM material (aws-lc-rs provider).
pub fn tls_client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<rustls::ClientConfig>, BackendError> {
    let tls = |err: String| BackendError::Certificate(err);
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(|e| tls(e.to_string()))?)
            .map_err(|e| tls(e.to_string()))?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls(e.to_string()))?;
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(|e| tls(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| tls(e.to_string()))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| tls(e.to_string()))?;
    Ok(Arc::new(config))
}
