//! Every launcher API request: the resource is parsed from the path and method, the request
//! is authenticated and authorised ([`super::auth`]) with its body read within the resource's
//! bound, and then served for the run stage attempt it may act for.

use std::path::PathBuf;
use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt as _;
use launcher_api::layout::parse_stage_path;
use launcher_api::{LogBatch, SignatureError, StageResult};

use super::auth::{self, Signed, unix_now};
use super::{LauncherError, LauncherState, state};
use crate::backend::BackendError;
use crate::backend::blobs::{PendingBlob, UploadError};
use crate::backend::stages::build_job;
use crate::backend::store::{StageAccess, Store};

/// The bounds of request bodies.
pub mod limits {
    /// `PUT workspace`.
    pub const WORKSPACE: u64 = 512 * 1024 * 1024;
    /// `POST state`.
    pub const STATE: u64 = 64 * 1024 * 1024;
    /// `POST logs`: one batch.
    pub const LOG_BATCH: u64 = 1024 * 1024;
    /// One log line's text.
    pub const LOG_LINE: usize = 64 * 1024;
    /// Everything else (a stage result, lock info, the empty bodies of reads).
    pub const SMALL: u64 = 64 * 1024;
    /// A stack source uploaded through the plain API (`POST /api/sources`).
    pub const SOURCE: u64 = 64 * 1024 * 1024;
}

/// What a request asks for.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum Resource {
    Job,
    Source,
    GetWorkspace,
    PutWorkspace,
    Tool { name: String, version: String },
    Logs,
    Result,
    Stop,
    State(state::StateOp),
}

impl Resource {
    fn parse(method: &Method, leaf: &str) -> Result<Self, LauncherError> {
        let not_allowed = |allowed| LauncherError::MethodNotAllowed {
            method: method.to_string(),
            leaf: leaf.to_string(),
            allowed,
        };
        let m = method.as_str();
        Ok(match leaf {
            "job" if m == "GET" => Self::Job,
            "source" if m == "GET" => Self::Source,
            "workspace" if m == "GET" => Self::GetWorkspace,
            "workspace" if m == "PUT" => Self::PutWorkspace,
            "logs" if m == "POST" => Self::Logs,
            "result" if m == "POST" => Self::Result,
            "stop" if m == "GET" => Self::Stop,
            "job" | "source" | "stop" => return Err(not_allowed("GET")),
            "workspace" => return Err(not_allowed("GET or PUT")),
            "logs" | "result" => return Err(not_allowed("POST")),
            "state" | "state/lock" => {
                Self::State(state::StateOp::parse(m, leaf).ok_or_else(|| {
                    not_allowed(if leaf == "state" {
                        "GET, POST or DELETE"
                    } else {
                        "LOCK or UNLOCK"
                    })
                })?)
            }
            other => match other.strip_prefix("tools/").and_then(|t| t.split_once('/')) {
                Some((name, version)) if m == "GET" => Self::Tool {
                    name: name.to_string(),
                    version: version.to_string(),
                },
                Some(_) => return Err(not_allowed("GET")),
                None => {
                    return Err(LauncherError::NotFound(format!(
                        "no launcher API resource {other:?}: job, source, workspace, \
                         tools/<name>/<version>, logs, result, stop, state, state/lock"
                    )));
                }
            },
        })
    }

    fn body_limit(&self) -> u64 {
        match self {
            Self::PutWorkspace => limits::WORKSPACE,
            Self::State(state::StateOp::Write) => limits::STATE,
            Self::Logs => limits::LOG_BATCH,
            _ => limits::SMALL,
        }
    }

    fn body_name(&self) -> &'static str {
        match self {
            Self::PutWorkspace => "the workspace",
            Self::State(state::StateOp::Write) => "the state",
            Self::Logs => "the log batch",
            _ => "the request body",
        }
    }
}

/// How much of a refused body is read and dropped before answering: closing a connection
/// with unread data makes the kernel reset it, and the client would lose the 413.
const DRAIN_MAX: u64 = 8 * 1024 * 1024;

async fn drain(body: Body) {
    drain_stream(body.into_data_stream(), DRAIN_MAX).await;
}

async fn drain_stream(mut stream: axum::body::BodyDataStream, max: u64) {
    let mut read = 0u64;
    while read <= max {
        match stream.next().await {
            Some(Ok(chunk)) => read += chunk.len() as u64,
            _ => return,
        }
    }
}

/// A body as read: in memory, or (a workspace) on disk.
pub(super) enum ReadBody {
    Bytes(Bytes),
    Staged(PendingBlob),
}

/// Runs store work on the blocking pool.
pub(super) async fn blocking<T: Send + 'static>(
    store: &Arc<Store>,
    f: impl FnOnce(&Store) -> Result<T, LauncherError> + Send + 'static,
) -> Result<T, LauncherError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .map_err(|err| LauncherError::Backend(BackendError::Store(format!("store task: {err}"))))?
}

pub(super) fn backend(err: BackendError) -> LauncherError {
    LauncherError::Backend(err)
}

pub(super) async fn handle(State(api): State<Arc<LauncherState>>, request: Request) -> Response {
    match serve(&api, request).await {
        Ok(response) => response,
        Err(err) => err.into_response(),
    }
}

async fn read_body(
    api: &LauncherState,
    resource: &Resource,
    declared: Option<u64>,
    body: Body,
) -> Result<ReadBody, LauncherError> {
    let limit = resource.body_limit();
    let too_large = || LauncherError::TooLarge {
        what: resource.body_name().to_string(),
        limit,
    };
    // A declared length over the bound is refused without keeping a byte; a small excess is
    // read and dropped first, so the client reads the answer instead of a reset connection.
    if let Some(length) = declared.filter(|length| *length > limit) {
        if length <= DRAIN_MAX {
            drain(body).await;
        }
        return Err(too_large());
    }
    if *resource == Resource::PutWorkspace {
        return match api.blobs.stage_stream(body.into_data_stream(), limit).await {
            Ok(pending) => Ok(ReadBody::Staged(pending)),
            Err(UploadError::TooLarge { .. }) => Err(too_large()),
            Err(UploadError::Body(err)) => Err(LauncherError::BadRequest(format!(
                "the workspace upload broke off: {err}"
            ))),
            Err(UploadError::Store(err)) => Err(backend(err)),
        };
    }
    let mut stream = body.into_data_stream();
    let mut bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|err| {
            LauncherError::BadRequest(format!("the request body could not be read: {err}"))
        })?;
        if (bytes.len() + chunk.len()) as u64 > limit {
            drop(bytes);
            drain_stream(stream, DRAIN_MAX).await;
            return Err(too_large());
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(ReadBody::Bytes(bytes.into()))
}

async fn serve(api: &Arc<LauncherState>, request: Request) -> Result<Response, LauncherError> {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let (run, stage, attempt, leaf) = parse_stage_path(&path).ok_or_else(|| {
        LauncherError::NotFound(format!(
            "{path} is not a launcher API path: /launcher/v1/runs/<run>/stages/<stage>/attempts/<n>/<resource>"
        ))
    })?;
    let path_claims = (run.to_string(), stage.to_string(), attempt);
    let resource = Resource::parse(&parts.method, leaf)?;
    let header = match parts.headers.get(header::AUTHORIZATION) {
        Some(value) => Some(value.to_str().map_err(|_| {
            LauncherError::Unauthenticated(SignatureError::Malformed(
                "the header is not ASCII".into(),
            ))
        })?),
        None => None,
    }
    .map(str::to_string);
    let now = unix_now();
    let unverified = blocking(&api.store, move |s| auth::begin(s, header.as_deref(), now)).await?;
    let declared = parts
        .headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = read_body(api, &resource, declared, body).await?;
    let digest = match &body {
        ReadBody::Bytes(bytes) => launcher_api::signature::body_digest(bytes),
        ReadBody::Staged(pending) => pending.sha256.clone(),
    };
    let method = parts.method.as_str().to_string();
    let api_for_auth = api.clone();
    let access = blocking(&api.store, move |s| {
        let request = Signed {
            method: &method,
            path: &path,
            query: &query,
            body_sha256: &digest,
        };
        let claims = (
            path_claims.0.as_str(),
            path_claims.1.as_str(),
            path_claims.2,
        );
        unverified.finish(s, &api_for_auth.nonces, &request, claims, now)
    })
    .await?;
    let query = parts.uri.query().unwrap_or("").to_string();
    respond(api, resource, access, body, &query).await
}

fn bytes_of(body: ReadBody) -> Bytes {
    match body {
        ReadBody::Bytes(bytes) => bytes,
        ReadBody::Staged(_) => Bytes::new(),
    }
}

async fn respond(
    api: &Arc<LauncherState>,
    resource: Resource,
    access: StageAccess,
    body: ReadBody,
    query: &str,
) -> Result<Response, LauncherError> {
    match resource {
        Resource::Job => {
            let access = access.clone();
            let job = blocking(&api.store, move |s| {
                let input = s.stage_input(&access).map_err(backend)?;
                build_job(&input).map_err(|err| LauncherError::Conflict(err.to_string()))
            })
            .await?;
            Ok(axum::Json(job).into_response())
        }
        Resource::Source => {
            let source = access.source.clone().ok_or_else(|| {
                LauncherError::NotFound(format!(
                    "run {} is a bare run with no stack, so it has no source",
                    access.run_id
                ))
            })?;
            blob_response(api, &source.sha256, source.size, "application/gzip").await
        }
        Resource::GetWorkspace => {
            let workspace = access.workspace.clone().ok_or_else(|| {
                LauncherError::NotFound(format!(
                    "no stage of run {} uploaded a workspace yet",
                    access.run_id
                ))
            })?;
            blob_response(api, &workspace.sha256, workspace.size, "application/gzip").await
        }
        Resource::PutWorkspace => {
            let ReadBody::Staged(pending) = body else {
                return Err(LauncherError::BadRequest("no workspace received".into()));
            };
            blocking(&api.store, move |s| {
                let input = s.stage_input(&access).map_err(backend)?;
                let job = build_job(&input).map_err(|err| LauncherError::Conflict(err.to_string()))?;
                if !job.upload_workspace {
                    return Err(LauncherError::Conflict(format!(
                        "stage {} of run {} uploads no workspace (its job says uploadWorkspace: false)",
                        access.stage, access.run_id
                    )));
                }
                let blob = pending.commit().map_err(backend)?;
                s.record_workspace(&access, &blob).map_err(backend)
            })
            .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Resource::Tool { name, version } => {
            let lookup = access.clone();
            let tool = blocking(&api.store, move |s| {
                Ok(s.stage_input(&lookup).map_err(backend)?.tool)
            })
            .await?;
            if tool.name != name || tool.version != version {
                return Err(LauncherError::NotFound(format!(
                    "the job of run {} stage {} names tool {} {}, not {name} {version}",
                    access.run_id, access.stage, tool.name, tool.version
                )));
            }
            blob_response(api, &tool.sha256, tool.size, "application/octet-stream").await
        }
        Resource::Logs => {
            let batch: LogBatch = serde_json::from_slice(&bytes_of(body)).map_err(|err| {
                LauncherError::BadRequest(format!("the body is not a log batch: {err}"))
            })?;
            if let Some(line) = batch.lines.iter().find(|l| l.text.len() > limits::LOG_LINE) {
                return Err(LauncherError::TooLarge {
                    what: format!("log line {} ({} bytes)", line.seq, line.text.len()),
                    limit: limits::LOG_LINE as u64,
                });
            }
            let stored = blocking(&api.store, move |s| {
                s.store_logs(
                    &access.pool_id,
                    &access.run_id,
                    &access.stage,
                    access.attempt,
                    &batch,
                )
                .map_err(backend)
            })
            .await?;
            if !stored.gaps.is_empty() {
                tracing::warn!(gaps = ?stored.gaps, "launcher log batch skipped lines; kept what came");
            }
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Resource::Result => {
            let result: StageResult = serde_json::from_slice(&bytes_of(body)).map_err(|err| {
                LauncherError::BadRequest(format!("the body is not a stage result: {err}"))
            })?;
            blocking(&api.store, move |s| {
                s.record_result(&access, &result).map_err(backend)
            })
            .await?;
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Resource::Stop => {
            let run = access.run_id.clone();
            let status =
                blocking(&api.store, move |s| s.stop_status(&run).map_err(backend)).await?;
            Ok(axum::Json(status).into_response())
        }
        Resource::State(op) => state::respond(api, op, access, bytes_of(body), query).await,
    }
}

/// Streams a blob: a source, a workspace or a tool binary.
pub(super) async fn blob_response(
    api: &LauncherState,
    sha256: &str,
    size: u64,
    content_type: &'static str,
) -> Result<Response, LauncherError> {
    let path: PathBuf = api.blobs.path(sha256).ok_or_else(|| {
        backend(BackendError::Store(format!(
            "{sha256:?} is not a blob digest"
        )))
    })?;
    let file = tokio::fs::File::open(&path)
        .await
        .map_err(|err| backend(crate::backend::ca::io_error(&path, err)))?;
    let stream = futures::stream::unfold(Some(file), |file| async move {
        use tokio::io::AsyncReadExt as _;
        let mut file = file?;
        let mut buffer = vec![0u8; 256 * 1024];
        match file.read(&mut buffer).await {
            Ok(0) => None,
            Ok(read) => {
                buffer.truncate(read);
                Some((Ok(Bytes::from(buffer)), Some(file)))
            }
            Err(err) => Some((Err(err), None)),
        }
    });
    Response::builder()
        .header(header::CONTENT_TYPE, content_type)
        .header(header::CONTENT_LENGTH, size)
        .body(Body::from_stream(stream))
        .map_err(|err| backend(BackendError::Http(err.to_string())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resources_are_named_by_leaf_and_method() {
        let get = Method::GET;
        assert_eq!(Resource::parse(&get, "job").unwrap(), Resource::Job);
        assert_eq!(
            Resource::parse(&get, "tools/tofu/1.12.6").unwrap(),
            Resource::Tool {
                name: "tofu".into(),
                version: "1.12.6".into()
            }
        );
        let lock = Method::from_bytes(b"LOCK").unwrap();
        assert_eq!(
            Resource::parse(&lock, "state/lock").unwrap(),
            Resource::State(state::StateOp::Lock)
        );
        let err = Resource::parse(&Method::PUT, "job")
            .unwrap_err()
            .to_string();
        assert_eq!(err, "PUT is not allowed on job: use GET");
        let err = Resource::parse(&lock, "state").unwrap_err().to_string();
        assert_eq!(err, "LOCK is not allowed on state: use GET, POST or DELETE");
        assert!(matches!(
            Resource::parse(&get, "secrets"),
            Err(LauncherError::NotFound(_))
        ));
        assert_eq!(Resource::PutWorkspace.body_limit(), 512 * 1024 * 1024);
        assert_eq!(Resource::Logs.body_limit(), 1024 * 1024);
        assert_eq!(
            Resource::State(state::StateOp::Write).body_limit(),
            64 * 1024 * 1024
        );
    }
}
