//! The backend's certificate authority: created on first use in the state directory, it
//! issues pool certificates (CN = pool ULID), the broker's server certificate and the
//! backend's own client certificate. Keys are ECDSA P-256 except pool keys, which are RSA as
//! the credentials format requires.

use std::path::{Path, PathBuf};

use aws_lc_rs::encoding::AsDer as _;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateSigningRequestParams, DnType,
    ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};

use super::BackendError;
use crate::credentials::pem_encode;

/// The common name of the backend's client certificate; the broker ACL grants it every topic.
pub const BACKEND_COMMON_NAME: &str = crate::link::BACKEND_IDENTITY;

const CA_CERT: &str = "ca.pem";
const CA_KEY: &str = "ca-key.pem";

/// A loaded CA.
pub struct Authority {
    cert_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

/// A certificate and its private key, both PEM.
pub struct Issued {
    /// The certificate.
    pub cert_pem: String,
    /// The private key (PKCS#8 `PRIVATE KEY`, RSA for pools and ECDSA P-256 otherwise);
    /// `None` when the certificate was issued for a CSR.
    pub key_pem: Option<String>,
}

impl Authority {
    /// Loads the CA from `dir`, creating it on first use.
    pub fn load_or_create(dir: &Path) -> Result<Self, BackendError> {
        let cert_path = dir.join(CA_CERT);
        let key_path = dir.join(CA_KEY);
        if cert_path.exists() && key_path.exists() {
            let cert_pem = read(&cert_path)?;
            let key =
                KeyPair::from_pem(&read(&key_path)?).map_err(|err| cert_error(&key_path, err))?;
            let issuer = Issuer::from_ca_cert_pem(&cert_pem, key)
                .map_err(|err| cert_error(&cert_path, err))?;
            return Ok(Self { cert_pem, issuer });
        }
        std::fs::create_dir_all(dir).map_err(|err| io_error(dir, err))?;
        let key = KeyPair::generate().map_err(|err| cert_error(&key_path, err))?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::CommonName, "workerpool-backend reference CA");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        set_validity(&mut params, 3650);
        let cert = params
            .self_signed(&key)
            .map_err(|err| cert_error(&cert_path, err))?;
        write_secret(&key_path, &key.serialize_pem())?;
        write(&cert_path, &cert.pem())?;
        tracing::info!(path = %cert_path.display(), "created the backend CA");
        Ok(Self {
            cert_pem: cert.pem(),
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (what clients and the broker trust).
    pub fn cert_pem(&self) -> &str {
        &self.cert_pem
    }

    /// Issues a pool client certificate with CN = `pool_id`: for the public key of `csr_pem`
    /// (after checking its signature and that it is RSA), or for a new RSA key of `key_bits`.
    pub fn issue_pool(
        &self,
        pool_id: &str,
        csr_pem: Option<&str>,
        key_bits: usize,
    ) -> Result<Issued, BackendError> {
        let mut params = leaf_params(pool_id, ExtendedKeyUsagePurpose::ClientAuth, 1825);
        // Only the CSR's key is used; its subject and extensions are ignored, so nobody can
        // ask for another pool's CN or a CA certificate.
        match csr_pem {
            Some(csr_pem) => {
                let csr = CertificateSigningRequestParams::from_pem(csr_pem).map_err(|err| {
                    BackendError::Input(format!(
                        "the CSR is not a valid PEM certificate request: {err}"
                    ))
                })?;
                let rsa = [
                    &rcgen::PKCS_RSA_SHA256,
                    &rcgen::PKCS_RSA_SHA384,
                    &rcgen::PKCS_RSA_SHA512,
                ];
                if !rsa.iter().any(|alg| *alg == csr.public_key.algorithm()) {
                    return Err(BackendError::Input(
                        "the CSR's key must be RSA (the pool privateKey is an RSA key)".into(),
                    ));
                }
                params.subject_alt_names.clear();
                let cert = params
                    .signed_by(&csr.public_key, &self.issuer)
                    .map_err(|err| BackendError::Certificate(err.to_string()))?;
                Ok(Issued {
                    cert_pem: cert.pem(),
                    key_pem: None,
                })
            }
            None => {
                let size = match key_bits {
                    2048 => aws_lc_rs::rsa::KeySize::Rsa2048,
                    3072 => aws_lc_rs::rsa::KeySize::Rsa3072,
                    4096 => aws_lc_rs::rsa::KeySize::Rsa4096,
                    8192 => aws_lc_rs::rsa::KeySize::Rsa8192,
                    other => {
                        return Err(BackendError::Input(format!(
                            "RSA key size {other} is not one of 2048, 3072, 4096, 8192"
                        )));
                    }
                };
                let key = aws_lc_rs::rsa::KeyPair::generate(size).map_err(|err| {
                    BackendError::Certificate(format!("RSA key generation: {err}"))
                })?;
                let pkcs8 = key
                    .as_der()
                    .map_err(|err| BackendError::Certificate(format!("RSA key encoding: {err}")))?;
                let public = {
                    use aws_lc_rs::signature::KeyPair as _;
                    key.public_key()
                        .as_der()
                        .map_err(|err| BackendError::Certificate(err.to_string()))?
                };
                let spki = rcgen::SubjectPublicKeyInfo::from_der(public.as_ref())
                    .map_err(|err| BackendError::Certificate(err.to_string()))?;
                let cert = params
                    .signed_by(&spki, &self.issuer)
                    .map_err(|err| BackendError::Certificate(err.to_string()))?;
                Ok(Issued {
                    cert_pem: cert.pem(),
                    key_pem: Some(pem_encode("PRIVATE KEY", pkcs8.as_ref())),
                })
            }
        }
    }

    /// Issues the broker's server certificate for `hosts` (DNS names or IP addresses).
    pub fn issue_server(&self, hosts: &[String]) -> Result<Issued, BackendError> {
        let first = hosts.first().map(String::as_str).unwrap_or("localhost");
        let mut params = leaf_params(first, ExtendedKeyUsagePurpose::ServerAuth, 825);
        params.subject_alt_names =
            hosts
                .iter()
                .map(|host| match host.parse::<std::net::IpAddr>() {
                    Ok(ip) => Ok(SanType::IpAddress(ip)),
                    Err(_) => host.as_str().try_into().map(SanType::DnsName).map_err(|_| {
                        BackendError::Input(format!("{host:?} is not a valid host name"))
                    }),
                })
                .collect::<Result<_, _>>()?;
        self.issue_ecdsa(params)
    }

    /// Issues the backend's own client certificate (CN = [`BACKEND_COMMON_NAME`]).
    pub fn issue_backend_client(&self) -> Result<Issued, BackendError> {
        let params = leaf_params(
            BACKEND_COMMON_NAME,
            ExtendedKeyUsagePurpose::ClientAuth,
            825,
        );
        self.issue_ecdsa(params)
    }

    fn issue_ecdsa(&self, mut params: CertificateParams) -> Result<Issued, BackendError> {
        let key = KeyPair::generate().map_err(|err| BackendError::Certificate(err.to_string()))?;
        params.use_authority_key_identifier_extension = true;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|err| BackendError::Certificate(err.to_string()))?;
        Ok(Issued {
            cert_pem: cert.pem(),
            key_pem: Some(key.serialize_pem()),
        })
    }
}

fn leaf_params(common_name: &str, usage: ExtendedKeyUsagePurpose, days: i64) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.extended_key_usages = vec![usage];
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    let serial: [u8; 16] = rand::random();
    // A positive serial: clear the top bit.
    let mut serial = serial;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    set_validity(&mut params, days);
    params
}

/// Valid from yesterday (clock skew) for `days`.
fn set_validity(params: &mut CertificateParams, days: i64) {
    let today = jiff::Timestamp::now()
        .to_zoned(jiff::tz::TimeZone::UTC)
        .date();
    let from = today.yesterday().unwrap_or(today);
    let until = today
        .checked_add(jiff::Span::new().days(days))
        .unwrap_or(today);
    let ymd = |d: jiff::civil::Date| {
        rcgen::date_time_ymd(i32::from(d.year()), d.month() as u8, d.day() as u8)
    };
    params.not_before = ymd(from);
    params.not_after = ymd(until);
}

fn read(path: &Path) -> Result<String, BackendError> {
    std::fs::read_to_string(path).map_err(|err| io_error(path, err))
}

/// Writes a file readable by others (certificates, configuration).
pub(crate) fn write(path: &Path, contents: &str) -> Result<(), BackendError> {
    std::fs::write(path, contents).map_err(|err| io_error(path, err))
}

/// Writes a file only the owner can read (private keys).
pub(crate) fn write_secret(path: &Path, contents: &str) -> Result<(), BackendError> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|err| io_error(path, err))?;
    file.write_all(contents.as_bytes())
        .map_err(|err| io_error(path, err))
}

pub(crate) fn io_error(path: &Path, err: std::io::Error) -> BackendError {
    BackendError::Io {
        path: PathBuf::from(path),
        source: err,
    }
}

fn cert_error(path: &Path, err: rcgen::Error) -> BackendError {
    BackendError::Certificate(format!("{}: {err}", path.display()))
}
