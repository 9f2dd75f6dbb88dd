//! Operational plumbing for the controller's `run` command: logs, health and readiness probes,
//! the metrics endpoint (HTTPS with Kubernetes authn/authz, as kubebuilder does it), leader
//! election on a Lease, and shutdown on SIGTERM.
//!
//! Nothing here knows about pools or workers; the controller reports into [`health::Health`]
//! and a `prometheus::Registry`, and stops when [`leader::Leadership::lost`] or
//! [`shutdown::signal`] resolves.

pub mod health;
pub mod http;
pub mod leader;
pub mod shutdown;
pub mod telemetry;

/// Install the aws-lc-rs rustls provider as the process default. Both ring and aws-lc-rs are in
/// the dependency graph, so rustls cannot choose by itself; the kube client and our servers need
/// one. Safe to call many times (a provider installed earlier is kept).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}
