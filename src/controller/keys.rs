//! Worker key pairs. Every Worker gets its own RSA-2048 key pair; generating one is the
//! CPU-bound part of scaling out, so it runs on the blocking pool, in parallel on every core,
//! and a small reserve of ready keys makes the first Workers of a scale-out instant.
//!
//! The cores are shared between pools in turns, not first come first served: a pool scaling
//! out by hundreds queues its requests behind its own, so another pool that needs a key waits
//! for at most one generation per busy core and pool ahead of it.
//!
//! The generator is the `rsa` crate: measured here (benches/keygen.rs, docs/benchmarks.md) its
//! 0.10 release makes RSA-2048 keys about 25% faster than aws-lc-rs, which is kept only for
//! the comparison.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use aws_lc_rs::encoding::{AsDer, Pkcs8V1Der, PublicKeyX509Der};
use aws_lc_rs::rsa::{KeyPair, KeySize};
use aws_lc_rs::signature::KeyPair as _;
use thiserror::Error;
use tokio::sync::oneshot;

use super::lock;
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
    #[error("the key generation task failed")]
    Task(#[source] tokio::task::JoinError),
    #[error("the key generation queue was dropped")]
    QueueDropped,
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
/// one generation per core at a time, the cores taken by the waiting pools in turns.
#[derive(Clone)]
pub struct KeySource {
    reserve: Arc<Mutex<Vec<WorkerKey>>>,
    reserve_target: usize,
    cores: Arc<FairSlots>,
}

impl KeySource {
    /// A source that keeps `reserve_target` keys ready.
    pub fn new(reserve_target: usize) -> Self {
        let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
        Self {
            reserve: Arc::default(),
            reserve_target,
            cores: FairSlots::new(cores),
        }
    }

    /// One key for `pool` (any name that tells pools apart): from the reserve if possible.
    /// Taking does not refill the reserve: during a scale-out every core goes to the keys the
    /// pool waits for, none to keys for later; the caller calls [`KeySource::refill`] when its
    /// burst is over.
    pub async fn take(&self, pool: &str) -> Result<WorkerKey, KeyError> {
        let reserved = lock(&self.reserve).pop();
        match reserved {
            Some(key) => Ok(key),
            None => generate_on(self.cores.acquire(pool).await?).await,
        }
    }

    /// How many keys are ready.
    pub fn reserved(&self) -> usize {
        lock(&self.reserve).len()
    }

    /// Tops the reserve up to its target in the background, on idle cores only: a pool waiting
    /// for a key has priority.
    pub fn refill(&self) {
        let missing = self.reserve_target.saturating_sub(self.reserved());
        for _ in 0..missing {
            let Some(core) = self.cores.try_acquire() else {
                return;
            };
            let source = self.clone();
            tokio::spawn(async move {
                if let Ok(key) = generate_on(core).await {
                    let mut reserve = lock(&source.reserve);
                    if reserve.len() < source.reserve_target {
                        reserve.push(key);
                    }
                    drop(reserve);
                    // The core is free again: keep going until the reserve is full.
                    source.refill();
                }
            });
        }
    }
}

/// Generates a key on the blocking pool, holding `core` until it is done.
async fn generate_on(core: Slot) -> Result<WorkerKey, KeyError> {
    let key = tokio::task::spawn_blocking(generate_worker_key)
        .await
        .map_err(KeyError::Task);
    drop(core);
    key?
}

/// A fixed number of slots shared in turns: when one frees, it goes to the next pool in line
/// that has a waiter (to that pool's oldest waiter), and that pool goes to the end of the line.
struct FairSlots {
    state: Mutex<SlotState>,
}

struct SlotState {
    free: usize,
    /// The pools with waiters, in the order of their turns.
    turns: VecDeque<String>,
    /// Each pool's waiters, oldest first.
    waiting: HashMap<String, VecDeque<oneshot::Sender<Slot>>>,
}

/// A held slot; dropping it passes it on.
struct Slot {
    slots: Option<Arc<FairSlots>>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(slots) = self.slots.take() {
            slots.release();
        }
    }
}

impl FairSlots {
    fn new(slots: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(SlotState {
                free: slots,
                turns: VecDeque::new(),
                waiting: HashMap::new(),
            }),
        })
    }

    async fn acquire(self: &Arc<Self>, pool: &str) -> Result<Slot, KeyError> {
        let granted = {
            let mut guard = lock(&self.state);
            let state = &mut *guard;
            if state.free > 0 && state.turns.is_empty() {
                state.free -= 1;
                return Ok(self.slot());
            }
            let (sender, granted) = oneshot::channel();
            let queue = state.waiting.entry(pool.to_string()).or_default();
            if queue.is_empty() {
                state.turns.push_back(pool.to_string());
            }
            queue.push_back(sender);
            granted
        };
        // A waiter that gives up drops `granted`; a slot sent to it meanwhile is dropped
        // with it, which passes it on.
        granted.await.map_err(|_| KeyError::QueueDropped)
    }

    /// A slot if one is free and no pool is waiting.
    fn try_acquire(self: &Arc<Self>) -> Option<Slot> {
        let mut state = lock(&self.state);
        (state.free > 0 && state.turns.is_empty()).then(|| {
            state.free -= 1;
            self.slot()
        })
    }

    fn slot(self: &Arc<Self>) -> Slot {
        Slot {
            slots: Some(self.clone()),
        }
    }

    fn release(self: &Arc<Self>) {
        let mut state = lock(&self.state);
        while let Some(pool) = state.turns.pop_front() {
            let Some(queue) = state.waiting.get_mut(&pool) else {
                continue;
            };
            let next = queue.pop_front();
            if queue.is_empty() {
                state.waiting.remove(&pool);
            } else {
                state.turns.push_back(pool);
            }
            if let Some(next) = next {
                match next.send(self.slot()) {
                    Ok(()) => return,
                    // That waiter gave up: the slot was not passed on, so it must not be
                    // released again (this lock is held).
                    Err(mut unsent) => unsent.slots = None,
                }
            }
        }
        state.free += 1;
    }

    #[cfg(test)]
    fn waiters(&self) -> usize {
        lock(&self.state).waiting.values().map(VecDeque::len).sum()
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
        // More keys than cores: one refill keeps going until the reserve is full.
        let target = std::thread::available_parallelism().map_or(1, |n| n.get()) + 2;
        let source = KeySource::new(target);
        source.refill();
        for _ in 0..200 {
            if source.reserved() == target {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        assert_eq!(source.reserved(), target);
        let a = source.take("pool").await.unwrap();
        let b = source.take("pool").await.unwrap();
        assert_ne!(a.private_key_pem, b.private_key_pem);
    }

    async fn wait_for_waiters(slots: &FairSlots, n: usize) {
        while slots.waiters() < n {
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
    }

    #[tokio::test]
    async fn a_large_scale_out_does_not_keep_other_pools_waiting() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("big").await.unwrap();
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, pool) in ["big", "big", "big", "small"].into_iter().enumerate() {
            let (shared, order) = (slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = shared.acquire(pool).await.unwrap();
                lock(&order).push(pool);
            }));
            wait_for_waiters(&slots, i + 1).await;
        }
        drop(held);
        for task in tasks {
            task.await.unwrap();
        }
        assert_eq!(*lock(&order), ["big", "small", "big", "big"]);
    }

    #[tokio::test]
    async fn a_waiter_that_gives_up_passes_its_turn_on() {
        let slots = FairSlots::new(1);
        let held = slots.acquire("a").await.unwrap();
        let gave_up = std::time::Duration::from_millis(10);
        assert!(
            tokio::time::timeout(gave_up, slots.acquire("b"))
                .await
                .is_err()
        );
        assert!(slots.try_acquire().is_none(), "the slot is held");
        drop(held);
        let again = tokio::time::timeout(std::time::Duration::from_secs(1), slots.acquire("c"));
        assert!(again.await.is_ok(), "the slot was freed, not lost");
    }
}
