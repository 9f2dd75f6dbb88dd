//! Worker key pairs. Every Worker gets its own RSA-2048 key pair; generating one is the
//! CPU-bound part of scaling out, so it runs on the blocking pool, in parallel on every core,
//! and a small reserve of ready keys makes the first Workers of a scale-out instant.
//!
//! The generator is the `rsa` crate: measured here (benches/keygen.rs, docs/benchmarks.md) its
//! 0.10 release makes RSA-2048 keys about 25% faster than aws-lc-rs, which is kept only for
//! the comparison.

use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use thiserror::Error;
use tokio::sync::Semaphore;

use crate::credentials::pem_encode;

/// An RSA key pair in PEM: PKCS#8 private key, SubjectPublicKeyInfo public key.
#[derive(Clone)]
pub struct WorkerKey {
    pub private_key_pem: String,
    pub public_key_pem: String,
}

impl std::fmt::Debug for WorkerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerKey")
            .field("public_key_pem", &self.public_key_pem)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Error)]
pub enum KeyError {
    #[error("generating an RSA key pair failed")]
    Generate,
    #[error("the key generation task failed: {0}")]
    Task(String),
}

/// Generates one RSA-2048 key pair. Blocking: call it off the async runtime.
pub fn generate_worker_key() -> Result<WorkerKey, KeyError> {
    use rsa::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
    let mut rng = rand::rng();
    let private = rsa::PrivateKey::new(&mut rng, 2048).map_err(|_| KeyError::Generate)?;
    let private_key_pem = private
        .to_pkcs8_pem(LineEnding::LF)
        .map_err(|_| KeyError::Generate)?
        .to_string();
    let public_key_pem = private
        .to_public_key()
        .to_public_key_pem(LineEnding::LF)
        .map_err(|_| KeyError::Generate)?;
    Ok(WorkerKey {
        private_key_pem,
        public_key_pem,
    })
}

/// Generates one RSA-2048 key pair with aws-lc-rs (for the benchmark).
pub fn generate_worker_key_aws_lc() -> Result<WorkerKey, KeyError> {
    let pair = KeyPair::generate(KeySize::Rsa2048).map_err(|_| KeyError::Generate)?;
    let private: Pkcs8V1Der<'_> = pair.as_der().map_err(|_| KeyError::Generate)?;
    let public: PublicKeyX509Der<'_> =
        pair.public_key().as_der().map_err(|_| KeyError::Generate)?;
    Ok(WorkerKey {
        private_key_pem: pem_encode("PRIVATE KEY", private.as_ref()),
        public_key_pem: pem_encode("PUBLIC KEY", public.as_ref()),
    })
}

/// Hands out worker keys: from the reserve when it has some, else freshly generated with at most
/// one generation per core at a time, so that one pool's scale-out cannot starve the runtime.
#[derive(Clone)]
pub struct KeySource {
    reserve: Arc<Mutex<Vec<WorkerKey>>>,
    reserve_target: usize,
    generators: Arc<Semaphore>,
}

impl KeySource {
    /// A source that keeps `reserve_target` keys ready.
    pub fn new(reserve_target: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            reserve: Arc::default(),
            reserve_target,
            generators: Arc::new(Semaphore::new(cores)),
        }
    }

    /// One key: from the reserve if possible; the reserve is refilled in the background.
    pub async fn take(&self) -> Result<WorkerKey, KeyError> {
        let reserved = self.lock().pop();
        let key = match reserved {
            Some(key) => key,
            None => self.generate().await?,
        };
        self.refill();
        Ok(key)
    }

    /// How many keys are ready.
    pub fn reserved(&self) -> usize {
        self.lock().len()
    }

    /// Tops the reserve up to its target in the background.
    pub fn refill(&self) {
        let missing = self.reserve_target.saturating_sub(self.reserved());
        for _ in 0..missing {
            let source = self.clone();
            tokio::spawn(async move {
                // Only spare cores fill the reserve: a waiting take() has priority.
                if source.generators.available_permits() == 0 {
                    return;
                }
                if let Ok(key) = source.generate().await {
                    let mut reserve = source.lock();
                    if reserve.len() < source.reserve_target {
                        reserve.push(key);
                    }
                }
            });
        }
    }

    async fn generate(&self) -> Result<WorkerKey, KeyError> {
        let _permit = self
            .generators
            .acquire()
            .await
            .map_err(|e| KeyError::Task(e.to_string()))?;
        tokio::task::spawn_blocking(generate_worker_key)
            .await
            .map_err(|e| KeyError::Task(e.to_string()))?
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<WorkerKey>> {
        // A panic while holding the lock leaves a Vec of whole keys: still usable.
        self.reserve
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_are_pem_pkcs8_and_spki_and_match() {
        let key = generate_worker_key().unwrap();
        assert!(
            key.private_key_pem
                .starts_with("-----BEGIN PRIVATE KEY-----\n")
        );
        assert!(
            key.public_key_pem
                .starts_with("-----BEGIN PUBLIC KEY-----\n")
        );
        use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey};
        let private = rsa::PrivateKey::from_pkcs8_pem(&key.private_key_pem).unwrap();
        let public = rsa::PublicKey::from_public_key_pem(&key.public_key_pem).unwrap();
        assert_eq!(private.to_public_key(), public);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_reserve_fills_up_and_is_used_first() {
        let source = KeySource::new(2);
        source.refill();
        for _ in 0..100 {
            if source.reserved() == 2 {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(source.reserved(), 2);
        let a = source.take().await.unwrap();
        let b = source.take().await.unwrap();
        assert_ne!(a.private_key_pem, b.private_key_pem);
    }
}
