//! `pool create`: a pool ULID, its certificate, the `token` and `privateKey` values, and the
//! seed's Secret manifest.

use std::path::{Path, PathBuf};

use base64::Engine as _;
use ulid::Ulid;

use super::state::StateDir;
use super::{BackendError, ca};
use crate::credentials::Token;

/// What `pool create` produced.
#[derive(Clone, Debug)]
pub struct CreatedPool {
    /// The pool ULID (the certificate's CN).
    pub id: Ulid,
    /// The pool name (also the Secret's name).
    pub name: String,
    /// The `token` value: base64 of the token JSON, used verbatim in the Secret.
    pub token: String,
    /// The pool key as PEM, when the backend generated it (not with a CSR).
    pub private_key_pem: Option<String>,
}

impl CreatedPool {
    /// The `privateKey` value: base64 of the PEM, as `base64 -w 0 key.pem` would print it.
    pub fn private_key_value(&self) -> Option<String> {
        self.private_key_pem
            .as_ref()
            .map(|pem| base64::engine::general_purpose::STANDARD.encode(pem))
    }
}

/// Options of `pool create`.
#[derive(Clone, Debug)]
pub struct PoolRequest<'a> {
    /// Pool name: a Kubernetes object name (lowercase letters, digits, '-', '.').
    pub name: &'a str,
    /// A PEM CSR whose (RSA) key the certificate is for; a new key is made when absent.
    pub csr_pem: Option<&'a str>,
    /// Size of a generated RSA key.
    pub key_bits: usize,
    /// Overrides the recorded broker URL.
    pub broker_url: Option<&'a str>,
}

/// Creates a pool: records it, issues its certificate and builds its token.
pub fn create_pool(
    state: &StateDir,
    request: &PoolRequest<'_>,
) -> Result<CreatedPool, BackendError> {
    validate_name(request.name)?;
    let config = state.config()?;
    let broker_url = request.broker_url.unwrap_or(&config.broker_url).to_string();
    crate::credentials::BrokerUrl::parse(&broker_url)
        .map_err(|reason| BackendError::Input(format!("broker URL: {reason}")))?;
    let store = state.open_store()?;
    if let Some(existing) = store.find_pool(request.name)? {
        return Err(BackendError::Input(format!(
            "a pool named {:?} already exists ({})",
            request.name, existing.id
        )));
    }
    let authority = state.authority()?;
    let id = Ulid::generate();
    let issued = authority.issue_pool(&id.to_string(), request.csr_pem, request.key_bits)?;
    let token = Token {
        version: 1,
        pool_id: id.to_string(),
        broker_url,
        topic_namespace: config.topic_namespace,
        ca_cert: authority.cert_pem().to_string(),
        client_cert: issued.cert_pem,
    };
    store.insert_pool(id, request.name)?;
    Ok(CreatedPool {
        id,
        name: request.name.to_string(),
        token: token.encode(),
        private_key_pem: issued.key_pem,
    })
}

/// Files `pool create` writes next to each other, like the seed's setup step has them.
#[derive(Clone, Debug)]
pub struct PoolFiles {
    /// `<name>.config`: the token, as `export SPACELIFT_WP_TOKEN=$(cat ...)` expects.
    pub token: PathBuf,
    /// `<name>.pem`: the private key (only when the backend generated it).
    pub private_key: Option<PathBuf>,
    /// `<name>-secret.yaml`: the ready Secret (only when the key is known).
    pub secret: Option<PathBuf>,
}

/// Writes the pool's files into `out_dir` (keys and Secret readable by the owner only).
pub fn write_pool_files(out_dir: &Path, pool: &CreatedPool) -> Result<PoolFiles, BackendError> {
    std::fs::create_dir_all(out_dir).map_err(|err| ca::io_error(out_dir, err))?;
    let token = out_dir.join(format!("{}.config", pool.name));
    ca::write(&token, &pool.token)?;
    let (private_key, secret) = match (&pool.private_key_pem, pool.private_key_value()) {
        (Some(pem), Some(value)) => {
            let key_path = out_dir.join(format!("{}.pem", pool.name));
            ca::write_secret(&key_path, pem)?;
            let secret_path = out_dir.join(format!("{}-secret.yaml", pool.name));
            ca::write_secret(
                &secret_path,
                &secret_manifest(&pool.name, &pool.token, &value),
            )?;
            (Some(key_path), Some(secret_path))
        }
        _ => (None, None),
    };
    Ok(PoolFiles {
        token,
        private_key,
        secret,
    })
}

fn validate_name(name: &str) -> Result<(), BackendError> {
    let ok = !name.is_empty()
        && name.len() <= 253
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(BackendError::Input(format!(
            "pool name {name:?} must be a Kubernetes object name: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit"
        )))
    }
}

/// The Secret of the seed's "Create a Secret" step, with the values filled in.
pub fn secret_manifest(name: &str, token: &str, private_key: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}\ntype: Opaque\nstringData:\n  token: {token}\n  privateKey: {private_key}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_manifest_has_the_seed_shape() {
        assert_eq!(
            secret_manifest("test-workerpool", "dG9rZW4=", "a2V5"),
            "apiVersion: v1
kind: Secret
metadata:
  name: test-workerpool
type: Opaque
stringData:
  token: dG9rZW4=
  privateKey: a2V5
"
        );
    }

    #[test]
    fn pool_names_are_kubernetes_names() {
        for good in ["test-workerpool", "a", "pool.prod-1"] {
            assert!(validate_name(good).is_ok(), "{good}");
        }
        for bad in ["", "Test", "-a", "a-", "a_b", "a b"] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
    }

    /// The whole chain: a created pool's token and privateKey decode into credentials that
    /// name the pool and carry a key matching the certificate.
    #[test]
    fn created_pool_credentials_decode() {
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let pool = create_pool(
            &state,
            &PoolRequest {
                name: "test-workerpool",
                csr_pem: None,
                key_bits: 2048,
                broker_url: Some("mqtts://127.0.0.1:18883"),
            },
        )
        .expect("create");
        let key = pool.private_key_value().expect("generated key");
        let credentials =
            crate::credentials::decode_credentials(pool.token.as_bytes(), key.as_bytes())
                .expect("decode");
        assert_eq!(credentials.pool_id, pool.id);
        assert_eq!(credentials.broker.port, 18883);
        assert_eq!(credentials.topic_namespace, "spacelift");
        let again = create_pool(
            &state,
            &PoolRequest {
                name: "test-workerpool",
                csr_pem: None,
                key_bits: 2048,
                broker_url: None,
            },
        );
        assert!(again.is_err(), "names are unique");
    }

    #[test]
    fn a_pool_can_be_issued_for_a_csr() {
        use aws_lc_rs::encoding::AsDer as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let state = StateDir::new(dir.path());
        let rsa =
            aws_lc_rs::rsa::KeyPair::generate(aws_lc_rs::rsa::KeySize::Rsa2048).expect("RSA key");
        let pkcs8 = rsa.as_der().expect("PKCS#8");
        let key = rcgen::KeyPair::try_from(pkcs8.as_ref()).expect("rcgen key");
        let csr = rcgen::CertificateParams::new(Vec::<String>::new())
            .expect("params")
            .serialize_request(&key)
            .expect("CSR")
            .pem()
            .expect("PEM");
        let pool = create_pool(
            &state,
            &PoolRequest {
                name: "from-csr",
                csr_pem: Some(&csr),
                key_bits: 4096,
                broker_url: None,
            },
        )
        .expect("create");
        assert!(
            pool.private_key_pem.is_none(),
            "the backend never sees the key"
        );
        let pem = crate::credentials::pem_encode("PRIVATE KEY", pkcs8.as_ref());
        let value = base64::engine::general_purpose::STANDARD.encode(pem);
        let credentials =
            crate::credentials::decode_credentials(pool.token.as_bytes(), value.as_bytes())
                .expect("the CSR's key matches the issued certificate");
        assert_eq!(credentials.pool_id, pool.id);

        let not_a_csr = create_pool(
            &state,
            &PoolRequest {
                name: "bad-csr",
                csr_pem: Some("hello"),
                key_bits: 4096,
                broker_url: None,
            },
        );
        assert!(not_a_csr.is_err());
    }
}
