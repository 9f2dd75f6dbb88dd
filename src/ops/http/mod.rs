//! The two HTTP endpoints of the controller, with the flags and defaults of kubebuilder:
//! probes on `--health-probe-bind-address` (`:8081`) and metrics on `--metrics-bind-address`
//! (`0` = off, the seed's default) with `--metrics-secure` (HTTPS + TokenReview and
//! SubjectAccessReview, the default) or plain HTTP.
//!
//! Each server is bound first and served second, so the caller (and a test binding port 0)
//! learns the real address and bind errors surface before anything else starts.

pub mod auth;
pub mod metrics;
pub mod probes;
pub mod tls;

use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;

use crate::ops::health::Health;

pub use tls::CertSource;

/// Default `--health-probe-bind-address`.
pub const DEFAULT_PROBE_ADDRESS: &str = ":8081";
/// Where kubebuilder (and the seed) look for a mounted metrics certificate.
pub const DEFAULT_CERT_DIR: &str = "/tmp/k8s-metrics-server/serving-certs";

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error(
        "invalid bind address {address:?}: {reason} (use \":8081\", \"0.0.0.0:8081\", \"[::]:8443\" or \"0\" to disable)"
    )]
    BindAddress { address: String, reason: String },
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read the bound address: {0}")]
    LocalAddr(#[source] std::io::Error),
    #[error("metrics TLS: {0}")]
    Tls(String),
    #[error("{server} server failed: {source}")]
    Serve {
        server: &'static str,
        #[source]
        source: std::io::Error,
    },
}

/// Parse a Go-style listen address: `:8081` (all IPv4 interfaces), `0.0.0.0:8081`,
/// `127.0.0.1:0`, `[::]:8081`, `localhost:8081`. `"0"` (kubebuilder's convention) and `""`
/// mean "do not serve" and give `None`.
pub fn parse_bind_address(address: &str) -> Result<Option<SocketAddr>, HttpError> {
    let trimmed = address.trim();
    if trimmed.is_empty() || trimmed == "0" {
        return Ok(None);
    }
    let invalid = |reason: &str| HttpError::BindAddress {
        address: address.to_owned(),
        reason: reason.to_owned(),
    };
    if let Ok(addr) = trimmed.parse::<SocketAddr>() {
        return Ok(Some(addr));
    }
    let Some((host, port)) = trimmed.rsplit_once(':') else {
        return Err(invalid("missing port"));
    };
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("the port is not a number from 0 to 65535"))?;
    let ip = match host {
        // Go listens on every interface for an empty host; 0.0.0.0 rather than [::] because
        // [::] fails outright where IPv6 is disabled. IPv6-only clusters pass "[::]:port".
        "" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        "localhost" => IpAddr::V4(Ipv4Addr::LOCALHOST),
        _ => {
            return Err(invalid(
                "the host must be an IP address, \"localhost\" or empty",
            ));
        }
    };
    Ok(Some(SocketAddr::new(ip, port)))
}

async fn bind(addr: SocketAddr) -> Result<(TcpListener, SocketAddr), HttpError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| HttpError::Bind { addr, source })?;
    let local = listener.local_addr().map_err(HttpError::LocalAddr)?;
    Ok((listener, local))
}

// ------------------------------------------------------------------------------------------
// Probes
// ------------------------------------------------------------------------------------------

/// A bound probe server: `/healthz` (and `/livez`), `/readyz`.
pub struct ProbeServer {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
}

impl ProbeServer {
    pub async fn bind(addr: SocketAddr, health: Health) -> Result<Self, HttpError> {
        let (listener, local_addr) = bind(addr).await?;
        Ok(ProbeServer {
            listener,
            local_addr,
            router: probes::router(health),
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serve until `shutdown` resolves, then finish the requests in flight.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        tracing::info!(addr = %self.local_addr, "serving health probes");
        axum::serve(self.listener, self.router)
            .with_graceful_shutdown(shutdown)
            .await
            .map_err(|source| HttpError::Serve {
                server: "probe",
                source,
            })
    }
}

/// Bind and serve the probes until `shutdown`.
pub async fn serve_probes(
    addr: SocketAddr,
    health: Health,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    ProbeServer::bind(addr, health).await?.serve(shutdown).await
}

// ------------------------------------------------------------------------------------------
// Metrics
// ------------------------------------------------------------------------------------------

/// How `/metrics` is served (`--metrics-secure`, and where a mounted certificate lives).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricsServing {
    /// HTTPS with authn/authz (true, the default) or plain HTTP without auth.
    pub secure: bool,
    /// `tls.crt` + `tls.key` here are used when both exist; else a self-signed certificate.
    pub cert_dir: PathBuf,
    /// Offer HTTP/2 on the HTTPS listener (`--enable-http2`); HTTP/1.1 only by default.
    pub http2: bool,
}

impl Default for MetricsServing {
    fn default() -> Self {
        MetricsServing {
            secure: true,
            cert_dir: PathBuf::from(DEFAULT_CERT_DIR),
            http2: false,
        }
    }
}

enum MetricsListener {
    Plain(TcpListener),
    Tls(tls::TlsListener),
}

/// A bound metrics server.
pub struct MetricsServer {
    listener: MetricsListener,
    local_addr: SocketAddr,
    cert_source: Option<CertSource>,
    router: Router,
}

impl MetricsServer {
    /// Bind; when secure, also load or generate the certificate. `client` is used for the
    /// TokenReviews and SubjectAccessReviews (unused when not secure).
    pub async fn bind(
        addr: SocketAddr,
        serving: MetricsServing,
        registry: prometheus::Registry,
        client: kube::Client,
    ) -> Result<Self, HttpError> {
        let (listener, local_addr) = bind(addr).await?;
        if serving.secure {
            let (config, source) = tls::server_config(&serving.cert_dir, serving.http2)?;
            let authorizer = Arc::new(auth::Authorizer::new(client));
            Ok(MetricsServer {
                listener: MetricsListener::Tls(tls::TlsListener::new(listener, config)?),
                local_addr,
                cert_source: Some(source),
                router: metrics::router(registry, Some(authorizer)),
            })
        } else {
            Ok(MetricsServer {
                listener: MetricsListener::Plain(listener),
                local_addr,
                cert_source: None,
                router: metrics::router(registry, None),
            })
        }
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The certificate in use; `None` for plain HTTP.
    pub fn cert_source(&self) -> Option<&CertSource> {
        self.cert_source.as_ref()
    }

    /// Serve until `shutdown` resolves, then finish the requests in flight.
    pub async fn serve(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> Result<(), HttpError> {
        let err = |source| HttpError::Serve {
            server: "metrics",
            source,
        };
        match self.listener {
            MetricsListener::Plain(listener) => {
                tracing::warn!(addr = %self.local_addr, "serving metrics over plain HTTP without authentication");
                axum::serve(listener, self.router)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(err)
            }
            MetricsListener::Tls(listener) => {
                tracing::info!(addr = %self.local_addr, cert = ?self.cert_source, "serving metrics over HTTPS (TokenReview + SubjectAccessReview)");
                axum::serve(listener, self.router)
                    .with_graceful_shutdown(shutdown)
                    .await
                    .map_err(err)
            }
        }
    }
}

/// Bind and serve `/metrics` until `shutdown`.
pub async fn serve_metrics(
    addr: SocketAddr,
    serving: MetricsServing,
    registry: prometheus::Registry,
    client: kube::Client,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), HttpError> {
    MetricsServer::bind(addr, serving, registry, client)
        .await?
        .serve(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> Option<String> {
        match parse_bind_address(s) {
            Ok(Some(addr)) => Some(addr.to_string()),
            Ok(None) => Some("off".to_owned()),
            Err(_) => None,
        }
    }

    #[test]
    fn go_style_bind_addresses() {
        let cases = [
            (":8081", Some("0.0.0.0:8081")),
            ("0.0.0.0:8081", Some("0.0.0.0:8081")),
            ("127.0.0.1:0", Some("127.0.0.1:0")),
            ("[::]:8443", Some("[::]:8443")),
            ("[::1]:8443", Some("[::1]:8443")),
            ("localhost:9090", Some("127.0.0.1:9090")),
            ("0", Some("off")),
            ("", Some("off")),
            (" :8080 ", Some("0.0.0.0:8080")),
            ("8081", None),
            (":http", None),
            (":65536", None),
            ("example.com:80", None),
        ];
        for (input, want) in cases {
            assert_eq!(parsed(input).as_deref(), want, "{input:?}");
        }
    }

    #[test]
    fn a_bad_address_says_what_is_accepted() {
        let msg = parse_bind_address("8081")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            msg.contains("\"8081\"") && msg.contains("missing port"),
            "{msg}"
        );
    }

    #[test]
    fn metrics_are_secure_by_default_with_kubebuilders_cert_dir() {
        let serving = MetricsServing::default();
        assert!(serving.secure);
        assert_eq!(
            serving.cert_dir,
            PathBuf::from("/tmp/k8s-metrics-server/serving-certs")
        );
    }
}
