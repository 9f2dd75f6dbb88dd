//! TLS for the metrics endpoint: a mounted `tls.crt`/`tls.key` (re-read when the files change,
//! as controller-runtime's certwatcher does, so cert-manager rotations need no restart) or a
//! self-signed certificate made at start, and an axum [`Listener`] that does the handshakes.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use axum::serve::Listener;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

use super::HttpError;

pub const CERT_FILE: &str = "tls.crt";
pub const KEY_FILE: &str = "tls.key";

/// A client that connects and never finishes its handshake must not hold a task forever.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Where the serving certificate came from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum CertSource {
    /// `tls.crt` and `tls.key` in this directory.
    Files(PathBuf),
    /// Generated at start; clients must skip verification (Prometheus: `insecure_skip_verify`).
    SelfSigned,
}

/// The rustls server config for `cert_dir`: its `tls.crt`/`tls.key` when both exist, else a
/// self-signed certificate. Exactly one of the two files is a configuration error.
/// HTTP/2 is offered (ALPN `h2`) only when `http2`: off by default, as in controller-runtime's
/// `--enable-http2=false`, because of the HTTP/2 stream-reset attacks (CVE-2023-44487).
pub fn server_config(
    cert_dir: &Path,
    http2: bool,
) -> Result<(Arc<rustls::ServerConfig>, CertSource), HttpError> {
    crate::ops::install_crypto_provider();
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let cert_path = cert_dir.join(CERT_FILE);
    let key_path = cert_dir.join(KEY_FILE);
    let (resolver, source): (Arc<dyn ResolvesServerCert>, CertSource) = match (
        cert_path.is_file(),
        key_path.is_file(),
    ) {
        (true, true) => (
            Arc::new(FileCert::load(cert_path, key_path, provider.clone())?),
            CertSource::Files(cert_dir.to_owned()),
        ),
        (false, false) => (
            Arc::new(StaticCert(Arc::new(self_signed(&provider)?))),
            CertSource::SelfSigned,
        ),
        (has_cert, _) => {
            let (present, missing) = if has_cert {
                (cert_path, key_path)
            } else {
                (key_path, cert_path)
            };
            return Err(HttpError::Tls(format!(
                "{} exists but {} does not: mount both, or neither for a self-signed certificate",
                present.display(),
                missing.display()
            )));
        }
    };
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| HttpError::Tls(format!("TLS protocol versions: {e}")))?
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = if http2 {
        vec![b"h2".to_vec(), b"http/1.1".to_vec()]
    } else {
        vec![b"http/1.1".to_vec()]
    };
    Ok((Arc::new(config), source))
}

/// A self-signed ECDSA P-256 certificate for localhost, 127.0.0.1 and this host's name.
fn self_signed(provider: &CryptoProvider) -> Result<CertifiedKey, HttpError> {
    let mut names = vec!["localhost".to_owned(), "127.0.0.1".to_owned()];
    if let Some(host) = super::super::leader::hostname()
        && host != "localhost"
    {
        names.push(host);
    }
    let err =
        |e: rcgen::Error| HttpError::Tls(format!("generating a self-signed certificate: {e}"));
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let mut params = rcgen::CertificateParams::new(names).map_err(err)?;
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "workerpool-operator metrics");
    let cert = params.self_signed(&key).map_err(err)?;
    let key_der = PrivateKeyDer::try_from(key.serialize_der())
        .map_err(|e| HttpError::Tls(format!("self-signed key: {e}")))?;
    CertifiedKey::from_der(vec![cert.der().clone()], key_der, provider)
        .map_err(|e| HttpError::Tls(format!("self-signed certificate: {e}")))
}

#[derive(Debug)]
struct StaticCert(Arc<CertifiedKey>);

impl ResolvesServerCert for StaticCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// A certificate from files, reloaded on the next handshake after either file's mtime changes.
/// A broken new pair is logged and the old one kept.
#[derive(Debug)]
struct FileCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    provider: Arc<CryptoProvider>,
    current: RwLock<Loaded>,
}

#[derive(Debug, Clone)]
struct Loaded {
    key: Arc<CertifiedKey>,
    stamp: (Option<SystemTime>, Option<SystemTime>),
}

impl FileCert {
    fn load(
        cert_path: PathBuf,
        key_path: PathBuf,
        provider: Arc<CryptoProvider>,
    ) -> Result<Self, HttpError> {
        let stamp = stamp(&cert_path, &key_path);
        let key = Arc::new(read_pair(&cert_path, &key_path, &provider)?);
        Ok(FileCert {
            cert_path,
            key_path,
            provider,
            current: RwLock::new(Loaded { key, stamp }),
        })
    }
}

impl ResolvesServerCert for FileCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let now = stamp(&self.cert_path, &self.key_path);
        let loaded = self
            .current
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        if loaded.stamp == now {
            return Some(loaded.key);
        }
        let mut current = self.current.write().unwrap_or_else(PoisonError::into_inner);
        if current.stamp == now {
            // Another handshake reloaded it meanwhile.
            return Some(current.key.clone());
        }
        match read_pair(&self.cert_path, &self.key_path, &self.provider) {
            Ok(key) => {
                tracing::info!(cert = %self.cert_path.display(), "reloaded the metrics serving certificate");
                *current = Loaded {
                    key: Arc::new(key),
                    stamp: now,
                };
            }
            Err(err) => {
                // Remember the stamp so a broken pair is reported once, not on every handshake.
                tracing::warn!(error = %err, "keeping the previous metrics serving certificate");
                current.stamp = now;
            }
        }
        Some(current.key.clone())
    }
}

fn stamp(cert: &Path, key: &Path) -> (Option<SystemTime>, Option<SystemTime>) {
    let mtime = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    (mtime(cert), mtime(key))
}

fn read_pair(
    cert_path: &Path,
    key_path: &Path,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, HttpError> {
    let certs = CertificateDer::pem_file_iter(cert_path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| HttpError::Tls(format!("reading {}: {e}", cert_path.display())))?;
    if certs.is_empty() {
        return Err(HttpError::Tls(format!(
            "{} holds no PEM certificate",
            cert_path.display()
        )));
    }
    let key = PrivateKeyDer::from_pem_file(key_path)
        .map_err(|e| HttpError::Tls(format!("reading {}: {e}", key_path.display())))?;
    CertifiedKey::from_der(certs, key, provider).map_err(|e| {
        HttpError::Tls(format!(
            "{} and {} do not make a usable pair: {e}",
            cert_path.display(),
            key_path.display()
        ))
    })
}

/// Accepts TCP connections and completes TLS handshakes in their own tasks, so one slow
/// client cannot hold up the others; axum gets only finished handshakes.
pub struct TlsListener {
    local_addr: SocketAddr,
    rx: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    acceptor_task: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(
        listener: TcpListener,
        config: Arc<rustls::ServerConfig>,
    ) -> Result<Self, HttpError> {
        let local_addr = listener.local_addr().map_err(HttpError::LocalAddr)?;
        let acceptor = TlsAcceptor::from(config);
        let (tx, rx) = mpsc::channel(64);
        let acceptor_task = tokio::spawn(accept_loop(listener, acceptor, tx));
        Ok(TlsListener {
            local_addr,
            rx,
            acceptor_task,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.acceptor_task.abort();
    }
}

async fn accept_loop(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    tx: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    loop {
        let (tcp, peer) = tokio::select! {
            () = tx.closed() => return,
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    // Typically EMFILE: back off instead of spinning (as axum's own loop does).
                    tracing::warn!(error = %err, "metrics listener: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let acceptor = acceptor.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(tcp)).await {
                Ok(Ok(tls)) => {
                    let _ = tx.send((tls, peer)).await;
                }
                Ok(Err(err)) => {
                    tracing::debug!(%peer, error = %err, "metrics: TLS handshake failed")
                }
                Err(_) => tracing::debug!(%peer, "metrics: TLS handshake timed out"),
            }
        });
    }
}

impl Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.rx.recv().await {
            Some(conn) => conn,
            // The accept loop only ends when this listener is dropped, so this cannot happen;
            // never hand axum a fake connection.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        Ok(self.local_addr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_files_gives_a_self_signed_certificate() -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let (config, source) = server_config(dir.path(), false)?;
        assert_eq!(source, CertSource::SelfSigned);
        assert_eq!(config.alpn_protocols, [b"http/1.1".to_vec()]);
        let (with_h2, _) = server_config(dir.path(), true)?;
        assert_eq!(
            with_h2.alpn_protocols,
            [b"h2".to_vec(), b"http/1.1".to_vec()]
        );
        Ok(())
    }

    #[test]
    fn mounted_files_are_used_and_a_lone_file_is_an_error() -> Result<(), Box<dyn std::error::Error>>
    {
        let dir = tempfile::tempdir()?;
        let key = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec!["metrics.example".to_owned()])?.self_signed(&key)?;
        std::fs::write(dir.path().join(CERT_FILE), cert.pem())?;

        let lone = server_config(dir.path(), false)
            .err()
            .map(|e| e.to_string());
        assert!(
            lone.as_deref()
                .is_some_and(|m| m.contains("tls.key does not")),
            "{lone:?}"
        );

        std::fs::write(dir.path().join(KEY_FILE), key.serialize_pem())?;
        let (_, source) = server_config(dir.path(), false)?;
        assert_eq!(source, CertSource::Files(dir.path().to_owned()));
        Ok(())
    }

    #[test]
    fn a_key_that_does_not_match_the_certificate_is_refused()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let key = rcgen::KeyPair::generate()?;
        let other = rcgen::KeyPair::generate()?;
        let cert =
            rcgen::CertificateParams::new(vec!["metrics.example".to_owned()])?.self_signed(&key)?;
        std::fs::write(dir.path().join(CERT_FILE), cert.pem())?;
        std::fs::write(dir.path().join(KEY_FILE), other.serialize_pem())?;
        let err = server_config(dir.path(), false)
            .err()
            .map(|e| e.to_string());
        assert!(
            err.as_deref().is_some_and(|m| m.contains("usable pair")),
            "{err:?}"
        );
        Ok(())
    }
}
