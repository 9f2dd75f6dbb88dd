//! The `launcher.v1.Launcher` gRPC service (proto/launcher.proto) over the shared state of
//! `launcher-grpc`.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use launcher_api::{Artifact, LogStream, StageOutcome, StageResult, layout};
use tonic::{Request, Response, Status, Streaming};

use super::Shared;
use crate::archive::pack::{PackError, pack};
use crate::proto::launcher_server::Launcher;
use crate::proto::{
    FinishRequest, FinishResponse, LogLine, LogsAck, StopNotice, UploadWorkspaceRequest,
    UploadWorkspaceResponse, WatchStopRequest, finish_request, log_line,
};

pub struct Service {
    pub shared: Arc<Shared>,
}

/// Counts the worker's open `WatchStop` streams: while one is open, the worker is alive.
struct Watching(Arc<Shared>);

impl Watching {
    fn new(shared: Arc<Shared>) -> Self {
        shared.watchers.send_modify(|w| {
            w.open += 1;
            w.ever = true;
        });
        Self(shared)
    }
}

impl Drop for Watching {
    fn drop(&mut self) {
        self.0.watchers.send_modify(|w| w.open -= 1);
    }
}

type StopStream = Pin<Box<dyn Stream<Item = Result<StopNotice, Status>> + Send>>;

#[tonic::async_trait]
impl Launcher for Service {
    async fn stream_logs(
        &self,
        request: Request<Streaming<LogLine>>,
    ) -> Result<Response<LogsAck>, Status> {
        let mut lines = request.into_inner();
        let mut received = 0;
        // One line at a time: the next is read only once this one is queued, so a full
        // buffer holds the worker back through HTTP/2 flow control.
        while let Some(line) = lines.message().await? {
            let stream = match line.stream() {
                log_line::Stream::Stderr => LogStream::Stderr,
                log_line::Stream::System => LogStream::System,
                log_line::Stream::Stdout | log_line::Stream::Unspecified => LogStream::Stdout,
            };
            // The worker's clock reading is kept when it is one; the backend gets no garbage.
            let at = line
                .at
                .parse::<jiff::Timestamp>()
                .unwrap_or_else(|_| jiff::Timestamp::now())
                .to_string();
            self.shared.logs.send_at(stream, &line.text, at).await;
            received += 1;
        }
        Ok(Response::new(LogsAck { received }))
    }

    async fn upload_workspace(
        &self,
        _request: Request<UploadWorkspaceRequest>,
    ) -> Result<Response<UploadWorkspaceResponse>, Status> {
        let shared = &self.shared;
        let _one_at_a_time = shared.upload_lock.lock().await;
        let root = shared.paths.workspace.clone();
        let out = shared.paths.scratch().join("upload.tar.gz");
        let limit = shared.workspace_limit;
        let packing = out.clone();
        let packed = tokio::task::spawn_blocking(move || {
            if let Some(dir) = packing.parent() {
                std::fs::create_dir_all(dir).map_err(|source| PackError::Write {
                    path: dir.to_path_buf(),
                    source,
                })?;
            }
            pack(
                &root,
                &[layout::JOB_FILE, layout::LAUNCHER_DIR],
                &packing,
                limit,
            )
        })
        .await
        .map_err(|err| Status::internal(format!("packing the workspace failed: {err}")))?;
        let packed = match packed {
            Ok(packed) => packed,
            Err(err @ PackError::TooLarge { .. }) => {
                let _ = std::fs::remove_file(&out);
                return Err(Status::resource_exhausted(crate::chain(&err)));
            }
            Err(err) => {
                let _ = std::fs::remove_file(&out);
                return Err(Status::internal(crate::chain(&err)));
            }
        };
        for skipped in &packed.skipped {
            crate::note(&format!(
                "not uploaded (not a file, directory or symlink): {}",
                skipped.display()
            ));
        }
        let put = shared
            .backend
            .put_file("workspace", &out, packed.size, &packed.sha256)
            .await;
        let _ = std::fs::remove_file(&out);
        put.map_err(|err| Status::unavailable(crate::chain(&err)))?;
        *shared.uploaded.lock().await = Some(Artifact {
            sha256: packed.sha256.clone(),
            size: packed.size,
        });
        Ok(Response::new(UploadWorkspaceResponse {
            sha256: packed.sha256,
            size: packed.size,
        }))
    }

    type WatchStopStream = StopStream;

    async fn watch_stop(
        &self,
        _request: Request<WatchStopRequest>,
    ) -> Result<Response<StopStream>, Status> {
        let watching = Watching::new(self.shared.clone());
        let stop = self.shared.stop.subscribe();
        let shutdown = self.shared.shutdown.clone();
        let notices = futures::stream::unfold(
            (stop, watching, false),
            move |(mut stop, watching, sent)| {
                let shutdown = shutdown.clone();
                async move {
                    if !sent {
                        let notice = tokio::select! {
                            notice = stop.wait_for(Option::is_some) => notice.ok()?.clone(),
                            () = shutdown.cancelled() => return None,
                        };
                        return notice.map(|n| (Ok::<_, Status>(n), (stop, watching, true)));
                    }
                    // Once told, the stream stays open until the server ends.
                    shutdown.cancelled().await;
                    None
                }
            },
        );
        Ok(Response::new(Box::pin(notices)))
    }

    async fn finish(
        &self,
        request: Request<FinishRequest>,
    ) -> Result<Response<FinishResponse>, Status> {
        let request = request.into_inner();
        let outcome = match request.outcome() {
            finish_request::Outcome::Succeeded => StageOutcome::Succeeded,
            finish_request::Outcome::Stopped => StageOutcome::Stopped,
            finish_request::Outcome::Failed | finish_request::Outcome::Unspecified => {
                StageOutcome::Failed
            }
        };
        let result = StageResult {
            outcome,
            failed_command: Some(request.failed_command).filter(|c| !c.is_empty()),
            exit_code: request.exit_code,
            message: request.message,
            tool_cache: None,
            workspace: None,
        };
        let flush_within = self.shared.flush_within().await;
        let concluded = self.shared.conclude(result, flush_within).await;
        Ok(Response::new(FinishResponse {
            reported: concluded.reported,
            message: concluded.problem.unwrap_or_default(),
        }))
    }
}
