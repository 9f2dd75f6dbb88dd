//! Who may call the launcher API: exactly the scheme of `launcher_api::signature` and
//! docs/launcher.md. Authentication first (401), then authorisation (403):
//!
//! 1. the `Authorization` header parses, its `time` is within a minute of ours;
//! 2. the signing worker registered a key (else 403: nobody to verify against);
//! 3. the signature verifies over the method, path, query, body digest and claims;
//! 4. the nonce is new (it is remembered only once the signature verified, so nobody can
//!    burn another worker's nonces);
//! 5. the path's run stage attempt is the one signed for, and the store says the worker holds
//!    it now: registered, not deregistered, dispatched to it and not ended.

use std::collections::HashMap;
use std::sync::Mutex;

use launcher_api::signature::{MAX_CLOCK_SKEW_SECONDS, public_key_from_pem};
use launcher_api::{Claims, SignatureError, SignedRequest};

use super::LauncherError;
use crate::backend::store::{StageAccess, StageDenied, Store};

/// How many nonces are remembered at most: far more than a pool's launchers send in the two
/// minutes a nonce is kept, and a bound on the memory a flood of valid requests can take.
pub const MAX_NONCES: usize = 100_000;

/// Nonces seen within the clock-skew window, each kept until its request's `time` could no
/// longer pass the time check.
pub struct Nonces {
    seen: Mutex<HashMap<String, u64>>,
    capacity: usize,
}

impl Nonces {
    pub fn new(capacity: usize) -> Self {
        Self {
            seen: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// Records `nonce` of a request signed at `time`; refuses one seen before.
    pub fn remember(&self, nonce: &str, time: u64, now: u64) -> Result<(), LauncherError> {
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(expiry) = seen.get(nonce)
            && *expiry >= now
        {
            return Err(LauncherError::Unauthenticated(SignatureError::Replayed(
                nonce.to_string(),
            )));
        }
        if seen.len() >= self.capacity {
            seen.retain(|_, expiry| *expiry >= now);
            if seen.len() >= self.capacity {
                return Err(LauncherError::Busy);
            }
        }
        // A request signed at `time` passes the time check until `time + skew`.
        seen.insert(nonce.to_string(), time.max(now) + MAX_CLOCK_SKEW_SECONDS);
        Ok(())
    }
}

/// Unix seconds now.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A request whose header parsed and whose time is current, waiting for its body to be read
/// so the signature can be checked.
pub struct Unverified {
    pub signed: SignedRequest,
    /// The PEM public key the worker registered.
    key: String,
}

/// Steps 1 and 2: the header and the signer's key.
pub fn begin(store: &Store, header: Option<&str>, now: u64) -> Result<Unverified, LauncherError> {
    let header = header.ok_or(LauncherError::Unauthenticated(SignatureError::Missing))?;
    let signed = SignedRequest::parse(header).map_err(LauncherError::Unauthenticated)?;
    signed
        .check_time(now)
        .map_err(LauncherError::Unauthenticated)?;
    let claims = &signed.claims;
    let key = store
        .worker_key(&claims.pool, &claims.worker)
        .map_err(LauncherError::Backend)?
        .ok_or_else(|| {
            LauncherError::Forbidden(StageDenied::Unregistered {
                pool: claims.pool.clone(),
                worker: claims.worker.clone(),
            })
        })?;
    Ok(Unverified {
        signed,
        key: key.public_key,
    })
}

/// What the request is, as the signature covers it.
pub struct Signed<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: &'a str,
    pub body_sha256: &'a str,
}

impl Unverified {
    /// Steps 3 to 5.
    pub fn finish(
        self,
        store: &Store,
        nonces: &Nonces,
        request: &Signed<'_>,
        path_claims: (&str, &str, u32),
        now: u64,
    ) -> Result<StageAccess, LauncherError> {
        let signed = self.signed;
        let claims = &signed.claims;
        let bad_signature = || {
            LauncherError::Unauthenticated(SignatureError::BadSignature {
                worker: claims.worker.clone(),
            })
        };
        // A key the worker registered that does not parse verifies nothing.
        let key = public_key_from_pem(&self.key).map_err(|_| bad_signature())?;
        signed
            .verify_digest(
                &key,
                request.method,
                request.path,
                request.query,
                request.body_sha256,
            )
            .map_err(LauncherError::Unauthenticated)?;
        nonces.remember(&signed.nonce, signed.time, now)?;
        check_path(claims, path_claims)?;
        store.stage_access(claims).map_err(|denied| match denied {
            StageDenied::Store(err) => LauncherError::Backend(err),
            denied => LauncherError::Forbidden(denied),
        })
    }
}

fn check_path(
    claims: &Claims,
    (run, stage, attempt): (&str, &str, u32),
) -> Result<(), LauncherError> {
    if claims.run == run && claims.stage == stage && claims.attempt == attempt {
        return Ok(());
    }
    Err(LauncherError::PathNotClaimed(format!(
        "the path names run {run} stage {stage} attempt {attempt}, but the request is signed for \
         run {} stage {} attempt {}: a signature is good only for its own stage's paths",
        claims.run, claims.stage, claims.attempt
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nonce_is_good_once_within_the_window_and_the_memory_is_bounded() {
        let nonces = Nonces::new(2);
        nonces.remember("aaaaaaaaaaaaaaaa", 1000, 1000).unwrap();
        let again = nonces.remember("aaaaaaaaaaaaaaaa", 1000, 1030).unwrap_err();
        assert!(again.to_string().contains("was used before"), "{again}");
        nonces.remember("bbbbbbbbbbbbbbbb", 1000, 1000).unwrap();
        assert!(matches!(
            nonces.remember("cccccccccccccccc", 1000, 1000),
            Err(LauncherError::Busy)
        ));
        // Once the window passed, old nonces make room (their requests fail the time check).
        nonces.remember("cccccccccccccccc", 1100, 1100).unwrap();
    }
}
