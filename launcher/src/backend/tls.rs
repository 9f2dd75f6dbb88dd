//! TLS to the backend trusts exactly the CA in the pool token (`ca_cert`): not the system's
//! roots, which a runner or launcher image may not even have.

use std::sync::Arc;

use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject as _;
use thiserror::Error;

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("the pool token's ca_cert holds a PEM block that is not a certificate")]
    Pem(#[source] rustls::pki_types::pem::Error),
    #[error("the pool token's ca_cert holds no usable CA certificate")]
    NoCertificate,
    #[error("the pool token's ca_cert is not a usable CA certificate")]
    Certificate(#[source] rustls::Error),
    #[error("TLS cannot be set up")]
    Config(#[source] rustls::Error),
}

/// A client configuration that trusts only `ca_pem`'s certificates.
pub fn client_config(ca_pem: &str) -> Result<rustls::ClientConfig, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem.as_bytes()) {
        roots
            .add(cert.map_err(TlsError::Pem)?)
            .map_err(TlsError::Certificate)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    // ring, not aws-lc: it builds for musl with a plain C compiler and keeps the binary small.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_without_certificates_is_refused() {
        assert!(matches!(client_config(""), Err(TlsError::NoCertificate)));
        let ca = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&rcgen::KeyPair::generate().unwrap())
            .unwrap();
        assert!(client_config(&ca.pem()).is_ok());
    }
}
