//! The workspace `init` lays out (docs/launcher.md, "The workspace"):
//! `job.json`, `source/` (the stack's source and/or an earlier stage's workspace), the state
//! override in the working directory when the state is managed, and the launcher's own
//! `.spacelift/` (what `init` tells `launcher-grpc`).

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use launcher_api::{Artifact, Job, ToolCache, layout};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::archive::unpack::{self, Limits, UnpackError, Unpacked};
use crate::backend::{Backend, BackendError};
use crate::settings::Paths;

/// The largest source accepted (the backend's own cap).
const MAX_SOURCE_BYTES: u64 = 64 * 1024 * 1024;
/// The largest earlier workspace accepted (the backend's own cap).
const MAX_WORKSPACE_BYTES: u64 = 512 * 1024 * 1024;
/// What `init` tells `launcher-grpc`, under [`layout::LAUNCHER_DIR`].
const REPORT_FILE: &str = "init.json";

#[derive(Debug, Error)]
pub enum WorkspaceError {
    #[error(
        "the job's workingDirectory {0:?} must be a relative path inside the workspace, without .."
    )]
    WorkingDirectory(String),
    #[error("the {what} is {size} bytes, more than the {limit} allowed")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("the {what} cannot be downloaded")]
    Download {
        what: &'static str,
        #[source]
        source: BackendError,
    },
    #[error("the {what} cannot be unpacked")]
    Unpack {
        what: &'static str,
        #[source]
        source: UnpackError,
    },
    #[error("{} cannot be written", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// What `init` found that the stage result reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitReport {
    pub tool_cache: ToolCache,
}

impl InitReport {
    /// Reads what `init` wrote into the workspace, if it got that far.
    pub fn read(paths: &Paths) -> Option<Self> {
        let text = fs::read(paths.scratch().join(REPORT_FILE)).ok()?;
        serde_json::from_slice(&text).ok()
    }
}

/// The workspace of one job.
pub struct Layout {
    root: PathBuf,
    scratch: PathBuf,
    working: PathBuf,
    working_rel: PathBuf,
}

impl Layout {
    pub fn new(paths: &Paths, job: &Job) -> Result<Self, WorkspaceError> {
        let bad = || WorkspaceError::WorkingDirectory(job.working_directory.clone());
        let working_rel = unpack::relative(Path::new(&job.working_directory)).ok_or_else(bad)?;
        if working_rel.starts_with(layout::LAUNCHER_DIR)
            || working_rel == Path::new(layout::JOB_FILE)
        {
            return Err(bad());
        }
        let root = paths.workspace.clone();
        let scratch = paths.scratch();
        for dir in [&root, &scratch] {
            fs::create_dir_all(dir).map_err(|source| write_error(dir, source))?;
        }
        Ok(Self {
            working: root.join(&working_rel),
            root,
            scratch,
            working_rel,
        })
    }

    /// The stack's source, into `source/`.
    pub async fn fetch_source(
        &self,
        backend: &Backend,
        source: &Artifact,
    ) -> Result<Unpacked, WorkspaceError> {
        let into = self.root.join(layout::SOURCE_DIR);
        self.fetch(backend, "source", "source", source, MAX_SOURCE_BYTES, &into)
            .await
    }

    /// The workspace an earlier stage uploaded, into the workspace itself (it was packed
    /// from there, so its `source/` lands on `source/`).
    pub async fn fetch_workspace(
        &self,
        backend: &Backend,
        earlier: &Artifact,
    ) -> Result<Unpacked, WorkspaceError> {
        let into = self.root.clone();
        self.fetch(
            backend,
            "workspace",
            "workspace",
            earlier,
            MAX_WORKSPACE_BYTES,
            &into,
        )
        .await
    }

    async fn fetch(
        &self,
        backend: &Backend,
        what: &'static str,
        leaf: &str,
        artifact: &Artifact,
        limit: u64,
        into: &Path,
    ) -> Result<Unpacked, WorkspaceError> {
        if artifact.size > limit {
            return Err(WorkspaceError::TooLarge {
                what,
                size: artifact.size,
                limit,
            });
        }
        let archive = self.scratch.join(format!("{what}.tar.gz"));
        backend
            .download(leaf, artifact, &archive)
            .await
            .map_err(|source| WorkspaceError::Download { what, source })?;
        let into = into.to_path_buf();
        let opened = archive.clone();
        let unpacked = tokio::task::spawn_blocking(move || {
            let file = fs::File::open(&opened).map_err(UnpackError::Read)?;
            unpack::unpack(io::BufReader::new(file), &into, Limits::WORKSPACE)
        })
        .await
        .unwrap_or_else(|join| Err(UnpackError::Read(io::Error::other(join))))
        .map_err(|source| WorkspaceError::Unpack { what, source });
        let _ = fs::remove_file(&archive);
        unpacked
    }

    /// `job.json` for the worker, and the working directory it runs in.
    pub fn write_job(&self, job: &Job) -> Result<(), WorkspaceError> {
        unpack::real_dirs(
            &self.root,
            &self.working_rel,
            &self.working_rel.display().to_string(),
        )
        .map_err(|source| WorkspaceError::Unpack {
            what: "working directory",
            source,
        })?;
        let path = self.root.join(layout::JOB_FILE);
        let json = serde_json::to_vec_pretty(job).map_err(io::Error::other);
        json.and_then(|json| fs::write(&path, json))
            .map_err(|source| write_error(&path, source))
    }

    /// The OpenTofu `http` backend pointing at the state proxy, in the working directory.
    pub fn write_state_override(&self, proxy: SocketAddr) -> Result<PathBuf, WorkspaceError> {
        let path = self.working.join(layout::STATE_OVERRIDE_FILE);
        let text = state_override(proxy);
        // Removed first: the source may hold a symlink by that name.
        let _ = fs::remove_file(&path);
        fs::write(&path, text).map_err(|source| write_error(&path, source))?;
        Ok(path)
    }

    pub fn write_report(&self, report: &InitReport) -> Result<(), WorkspaceError> {
        let path = self.scratch.join(REPORT_FILE);
        let json = serde_json::to_vec(report).map_err(io::Error::other);
        json.and_then(|json| fs::write(&path, json))
            .map_err(|source| write_error(&path, source))
    }
}

/// The override file's text: the stack's state lives with the backend, reached through
/// `launcher-grpc`'s state proxy, with locking.
pub fn state_override(proxy: SocketAddr) -> String {
    format!(
        r#"# Written by spacelift-launcher init: the stack's state is kept by the backend,
# reached through the launcher's state proxy (docs/launcher.md).
terraform {{
  backend "http" {{
    address        = "http://{proxy}/state"
    lock_address   = "http://{proxy}/state/lock"
    unlock_address = "http://{proxy}/state/lock"
    lock_method    = "LOCK"
    unlock_method  = "UNLOCK"
  }}
}}
"#
    )
}

fn write_error(path: &Path, source: io::Error) -> WorkspaceError {
    WorkspaceError::Write {
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_override_points_at_the_proxy_with_lock_methods() {
        let text = state_override("127.0.0.1:7947".parse().unwrap());
        assert!(text.contains(r#"address        = "http://127.0.0.1:7947/state""#));
        assert!(text.contains(r#"lock_address   = "http://127.0.0.1:7947/state/lock""#));
        assert!(text.contains(r#"lock_method    = "LOCK""#));
        assert!(text.contains(r#"unlock_method  = "UNLOCK""#));
    }
}
