//! `workerpool-operator render`: the Pod a run would get, with no cluster. The Pod itself goes
//! through the same pipeline as in the operator (`hooks::Pipeline`, its guard included).

use std::path::Path;

use kube::api::ObjectMeta;
use thiserror::Error;

use crate::crd::{
    ANNOTATION_WORKERPOOL_NAME, LABEL_ULID, LABEL_WORKERPOOL, Worker, WorkerPool, WorkerSpec,
};
use crate::manifest::{self, ManifestError};
use crate::protocol::RunSchedule;

/// Stand-in identities for the worker a rendered run lands on. Fixed by default so that a
/// render is reproducible; the pool's own ULID label is used when it has one.
#[derive(Clone, Debug)]
pub struct RenderIds {
    pub pool_ulid: Option<String>,
    pub worker_ulid: String,
}

/// The worker ULID a render uses unless told otherwise (the seed's example worker).
pub const PLACEHOLDER_WORKER_ULID: &str = "01HPS6K4BNB7BPHCDHDWFAMJNV";

/// The ULID used for a pool that has no `workers.spacelift.io/ulid` label and none was given.
pub const PLACEHOLDER_POOL_ULID: &str = "01HPS9HDSWCQ73RPDTVAK0KK0A";
const PLACEHOLDER_WORKER_UID: &str = "00000000-0000-0000-0000-000000000000";

#[derive(Debug, Error)]
pub enum RenderError {
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    #[error("{file}: {path}: {message}")]
    Run {
        file: String,
        path: String,
        message: String,
    },
}

/// Reads a run-schedule document (JSON or YAML, the protocol's field names).
pub fn load_run(path: &Path) -> Result<RunSchedule, RenderError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|error| ManifestError::Read {
        file: file.clone(),
        error,
    })?;
    let document = manifest::parse_documents(&file, &text)?
        .into_iter()
        .next()
        .ok_or_else(|| RenderError::Run {
            file: file.clone(),
            path: "(document)".into(),
            message: "the file is empty: expected a run with runId, stage, attempt, launcherImage"
                .into(),
        })?;
    manifest::deserialize_at_path(document).map_err(|(path, message)| RenderError::Run {
        file,
        path: if path == "." {
            "(document)".into()
        } else {
            path
        },
        message,
    })
}

/// The Worker a rendered run is scheduled on: what the controller would have created.
pub fn stand_in_worker(pool: &WorkerPool, ids: &RenderIds) -> Worker {
    let pool_name = pool.metadata.name.clone().unwrap_or_default();
    let pool_ulid = ids
        .pool_ulid
        .clone()
        .or_else(|| {
            pool.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(LABEL_ULID).cloned())
        })
        .unwrap_or_else(|| PLACEHOLDER_POOL_ULID.into());
    Worker {
        metadata: ObjectMeta {
            name: Some(format!(
                "{pool_name}-{}",
                ids.worker_ulid.to_ascii_lowercase()
            )),
            namespace: Some(
                pool.metadata
                    .namespace
                    .clone()
                    .unwrap_or_else(|| "default".into()),
            ),
            uid: Some(PLACEHOLDER_WORKER_UID.into()),
            labels: Some(
                [
                    (LABEL_WORKERPOOL.to_string(), pool_ulid),
                    (LABEL_ULID.to_string(), ids.worker_ulid.clone()),
                ]
                .into(),
            ),
            annotations: Some([(ANNOTATION_WORKERPOOL_NAME.to_string(), pool_name)].into()),
            ..ObjectMeta::default()
        },
        spec: WorkerSpec::default(),
        status: None,
    }
}
