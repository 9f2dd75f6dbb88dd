//! Who the launcher is: the worker's private key and the pool token's CA, read from the
//! identity volume the operator mounts into `init` and `launcher-grpc` only.

use std::io;
use std::path::{Path, PathBuf};

use launcher_api::signature::{SignatureError, private_key_from_pem};
use launcher_api::token::{TokenError, read_pool_token};
use launcher_api::{Claims, layout};
use thiserror::Error;

/// Neither file is anywhere near this; a bigger one is not what the operator mounted.
const MAX_IDENTITY_FILE: u64 = 256 * 1024;

#[derive(Debug, Error)]
pub enum IdentityError {
    #[error(
        "no worker key at {0}: the run Pod mounts the Worker's Secret (key privateKey) there, into the init and launcher-grpc containers only"
    )]
    KeyMissing(PathBuf),
    #[error(
        "no pool token at {0}: the WorkerPool has no spec.token (the launcher needs the token's ca_cert to trust the backend)"
    )]
    TokenMissing(PathBuf),
    #[error("{path} cannot be read")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{0} is larger than {MAX_IDENTITY_FILE} bytes: it is not what the operator mounted")]
    TooLarge(PathBuf),
    #[error("the worker key at {path} is not an RSA private key in PEM")]
    Key {
        path: PathBuf,
        #[source]
        source: SignatureError,
    },
    #[error("the pool token at {path} cannot be read")]
    Token {
        path: PathBuf,
        #[source]
        source: TokenError,
    },
    #[error(
        "the pool token at {path} is for pool {token_pool} but {env} is {claimed}: the Pod mounts another pool's token"
    )]
    PoolMismatch {
        path: PathBuf,
        token_pool: String,
        env: &'static str,
        claimed: String,
    },
}

/// The worker's credentials for signed requests.
pub struct Identity {
    pub key: rsa::PrivateKey,
    /// PEM of the CA(s) the backend's certificate must chain to.
    pub ca_pem: String,
    pub claims: Claims,
}

impl std::fmt::Debug for Identity {
    // The key never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("claims", &self.claims)
            .finish_non_exhaustive()
    }
}

/// Reads the key and the token from `dir` and checks that the token is this pool's.
pub fn read_identity(dir: &Path, claims: Claims) -> Result<Identity, IdentityError> {
    let key_path = dir.join(layout::IDENTITY_KEY_FILE);
    let token_path = dir.join(layout::IDENTITY_TOKEN_FILE);
    let key_pem = read_small(&key_path).map_err(|err| match err {
        ReadError::Missing => IdentityError::KeyMissing(key_path.clone()),
        ReadError::Other(err) => err,
    })?;
    let token = read_small(&token_path).map_err(|err| match err {
        ReadError::Missing => IdentityError::TokenMissing(token_path.clone()),
        ReadError::Other(err) => err,
    })?;
    let key = private_key_from_pem(&key_pem).map_err(|source| IdentityError::Key {
        path: key_path,
        source,
    })?;
    let token = read_pool_token(&token).map_err(|source| IdentityError::Token {
        path: token_path.clone(),
        source,
    })?;
    if token.pool_id != claims.pool {
        return Err(IdentityError::PoolMismatch {
            path: token_path,
            token_pool: token.pool_id,
            env: layout::ENV_POOL,
            claimed: claims.pool,
        });
    }
    Ok(Identity {
        key,
        ca_pem: token.ca_cert,
        claims,
    })
}

enum ReadError {
    Missing,
    Other(IdentityError),
}

fn read_small(path: &Path) -> Result<String, ReadError> {
    let read_error = |source: io::Error| {
        if source.kind() == io::ErrorKind::NotFound {
            ReadError::Missing
        } else {
            ReadError::Other(IdentityError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let size = std::fs::metadata(path).map_err(read_error)?.len();
    if size > MAX_IDENTITY_FILE {
        return Err(ReadError::Other(IdentityError::TooLarge(
            path.to_path_buf(),
        )));
    }
    std::fs::read_to_string(path).map_err(read_error)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            pool: "01HPS9HDSWCQ73RPDTVAK0KK0A".into(),
            worker: "01HPS6K4BNB7BPHCDHDWFAMJNV".into(),
            run: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
            stage: "planning".into(),
            attempt: 1,
        }
    }

    #[test]
    fn missing_files_say_what_the_pod_lacks() {
        let dir = tempfile::tempdir().unwrap();
        let err = read_identity(dir.path(), claims()).unwrap_err().to_string();
        assert!(err.starts_with("no worker key at "), "{err}");
        std::fs::write(dir.path().join("worker.key"), "not pem").unwrap();
        let err = read_identity(dir.path(), claims()).unwrap_err().to_string();
        assert!(err.starts_with("no pool token at "), "{err}");
        assert!(err.contains("the WorkerPool has no spec.token"), "{err}");
        std::fs::write(dir.path().join("pool.token"), "%%").unwrap();
        let err = read_identity(dir.path(), claims()).unwrap_err();
        assert!(matches!(err, IdentityError::Key { .. }), "{err}");
    }
}
