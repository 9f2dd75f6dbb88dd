//! A pool's credentials, read from the Secrets its spec names and decoded; what is wrong with
//! them is the user's to fix, and says which Secret, which key and how.

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::Context;
use super::error::{Error, Step};
use super::links::LinkSetupError;
use crate::crd::{SecretKeyRef, WorkerPool};
use crate::credentials::{CredentialError, Credentials, decode_credentials};

/// Why a pool's credentials cannot be used: bad input, reported on the pool. Each message
/// names the Secret, the key and the fix.
#[derive(Debug, thiserror::Error)]
pub enum CredentialProblem {
    #[error(
        "cannot retrieve workerpool token: spec.{field}.secretKeyRef: Secret {namespace}/{secret} not found: create it with the pool's token and privateKey"
    )]
    SecretMissing {
        field: &'static str,
        namespace: String,
        secret: String,
    },
    #[error(
        "cannot retrieve workerpool token: spec.{field}.secretKeyRef: Secret {namespace}/{secret} has no key {key:?}"
    )]
    KeyMissing {
        field: &'static str,
        namespace: String,
        secret: String,
        key: String,
    },
    #[error("cannot retrieve workerpool token: {0}")]
    Undecodable(#[source] CredentialError),
    #[error(transparent)]
    Link(#[from] LinkSetupError),
}

/// Reads and decodes the pool's credentials. `Ok(Err(problem))` is bad input to report on the
/// pool; `Err` is a failed API call (retried).
pub async fn read_credentials(
    ctx: &Context,
    pool: &WorkerPool,
) -> Result<Result<Option<Credentials>, CredentialProblem>, Error> {
    let (Some(token), Some(private_key)) = (&pool.spec.token, &pool.spec.private_key) else {
        return Ok(Ok(None));
    };
    let namespace = pool.namespace().unwrap_or_default();
    let token = match secret_value(ctx, &namespace, token, "token").await? {
        Ok(value) => value,
        Err(problem) => return Ok(Err(problem)),
    };
    let private_key = match secret_value(ctx, &namespace, private_key, "privateKey").await? {
        Ok(value) => value,
        Err(problem) => return Ok(Err(problem)),
    };
    Ok(decode_credentials(&token, &private_key)
        .map(Some)
        .map_err(CredentialProblem::Undecodable))
}

async fn secret_value(
    ctx: &Context,
    namespace: &str,
    reference: &SecretKeyRef,
    field: &'static str,
) -> Result<Result<Vec<u8>, CredentialProblem>, Error> {
    let selector = &reference.secret_key_ref;
    // Read again only when the Secret changed (its resourceVersion, from the metadata watch).
    let secret = match ctx.caches.known_secret(namespace, &selector.name) {
        Some(secret) => Some(secret),
        None => {
            let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
            let read = secrets.get_opt(&selector.name).await.map_err(Error::api(
                Step::ReadSecret,
                format!("{namespace}/{}", selector.name),
            ))?;
            if let Some(secret) = &read {
                ctx.caches.read_secret(secret.clone());
            }
            read.map(std::sync::Arc::new)
        }
    };
    let Some(secret) = secret else {
        return Ok(Err(CredentialProblem::SecretMissing {
            field,
            namespace: namespace.to_string(),
            secret: selector.name.clone(),
        }));
    };
    let value = secret
        .data
        .as_ref()
        .and_then(|data| data.get(&selector.key))
        .map(|v| v.0.clone());
    Ok(value.ok_or_else(|| CredentialProblem::KeyMissing {
        field,
        namespace: namespace.to_string(),
        secret: selector.name.clone(),
        key: selector.key.clone(),
    }))
}
