//! Downloads: a blob streamed into a file and checked against the job's digest and size as
//! it arrives, restarted when it breaks off in the middle.

use std::path::Path;

use launcher_api::Artifact;
use reqwest::Method;
use sha2::{Digest as _, Sha256};
use tokio::io::AsyncWriteExt as _;

use super::{
    AttemptError, Backend, BackendError, Body, Call, DOWNLOAD_PASSES, Retry, TRANSFER_TIMEOUT,
    expect_success,
};
use crate::digest::hex;

impl Backend {
    /// `GET leaf` into a new file at `dest`, which must come out as `artifact` says: the
    /// download stops as soon as it runs past the announced size.
    pub async fn download(
        &self,
        leaf: &str,
        artifact: &Artifact,
        dest: &Path,
    ) -> Result<(), BackendError> {
        let mut pass = 0;
        loop {
            pass += 1;
            match self.download_once(leaf, artifact, dest).await {
                Err(AttemptError::Http(source)) if pass < DOWNLOAD_PASSES => {
                    crate::note(&format!(
                        "GET {leaf} broke off ({source}), downloading again"
                    ));
                }
                Err(AttemptError::Http(source)) => {
                    return Err(BackendError::Unreachable {
                        what: format!("GET {leaf}"),
                        endpoint: self.endpoint.to_string(),
                        attempts: pass,
                        source,
                    });
                }
                Err(AttemptError::Fatal(err)) => return Err(err),
                Ok(()) => return Ok(()),
            }
        }
    }

    async fn download_once(
        &self,
        leaf: &str,
        artifact: &Artifact,
        dest: &Path,
    ) -> Result<(), AttemptError> {
        let call = Call {
            method: Method::GET,
            leaf,
            query: "",
            body: Body::Empty,
            timeout: TRANSFER_TIMEOUT,
            retry: Retry::STANDARD,
        };
        let what = call.what();
        let fatal = AttemptError::Fatal;
        let response = self.send(&call).await.map_err(fatal)?;
        let mut response = expect_success(&what, response).await.map_err(fatal)?;
        let io_error = |source| {
            AttemptError::Fatal(BackendError::Io {
                what: what.clone(),
                path: dest.to_path_buf(),
                source,
            })
        };
        let mut file = tokio::fs::File::create(dest).await.map_err(io_error)?;
        let mut hasher = Sha256::new();
        let mut size = 0u64;
        let mismatch = |actual_size, actual_sha256| {
            AttemptError::Fatal(BackendError::Mismatch {
                what: what.clone(),
                size: artifact.size,
                sha256: artifact.sha256.clone(),
                actual_size,
                actual_sha256,
            })
        };
        while let Some(chunk) = response.chunk().await.map_err(AttemptError::Http)? {
            size += chunk.len() as u64;
            if size > artifact.size {
                return Err(mismatch(size, "(not computed: too large)".into()));
            }
            hasher.update(&chunk);
            file.write_all(&chunk).await.map_err(io_error)?;
        }
        file.flush().await.map_err(io_error)?;
        file.sync_all().await.map_err(io_error)?;
        let sha256 = hex(&hasher.finalize());
        if size != artifact.size || sha256 != artifact.sha256 {
            return Err(mismatch(size, sha256));
        }
        Ok(())
    }
}
