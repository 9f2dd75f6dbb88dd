//! The plain HTTP API of stacks and their runs (loopback, no authentication, like the rest of
//! it):
//!
//! ```text
//! POST  /api/sources                  a source, tar.gz (64 MiB at most) -> 201 {sha256, size}
//! POST  /api/stacks                   create a stack (JSON CreateStack) -> 201 stack
//! GET   /api/stacks                   stacks
//! GET   /api/stacks/{name}            one stack
//! PATCH /api/stacks/{name}            change a stack (JSON UpdateStack)
//! GET   /api/stacks/{name}/state      the current state (?version=N: that version); 404 if none
//! GET   /api/stacks/{name}/state/versions   every version, oldest first
//! POST  /api/stacks/{name}/runs       trigger a run ({"proposed": bool}) -> 201 run
//! POST  /api/runs/{id}/confirm        confirm an unconfirmed run: its plan is applied
//! GET   /api/runs/{id}/logs           ?stage=S&after=N: lines in reading order, a page at a time
//! GET   /api/tools                    stored tool binaries
//! ```

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use serde::Deserialize;

use super::BackendError;
use super::archive::check_source;
use super::blobs::BlobRef;
use super::launcher::limits;
use super::serve::{Shared, blocking};
use super::store::{CreateStack, TriggerRun, UpdateStack};

/// The stack routes, merged into the API's router.
pub(crate) fn routes() -> axum::Router<Arc<Shared>> {
    axum::Router::new()
        .route(
            "/api/sources",
            post(upload_source).layer(DefaultBodyLimit::max(limits::SOURCE as usize)),
        )
        .route("/api/stacks", post(create_stack).get(stacks))
        .route("/api/stacks/{name}", get(stack).patch(update_stack))
        .route("/api/stacks/{name}/state", get(state))
        .route("/api/stacks/{name}/state/versions", get(state_versions))
        .route("/api/stacks/{name}/runs", post(trigger))
        .route("/api/runs/{id}/confirm", post(confirm))
        .route("/api/runs/{id}/logs", get(logs))
        .route("/api/tools", get(tools))
}

async fn upload_source(
    State(shared): State<Arc<Shared>>,
    body: Bytes,
) -> Result<Response, BackendError> {
    let blobs = shared.blobs.clone();
    let blob = tokio::task::spawn_blocking(move || {
        check_source(&body).map_err(|err| BackendError::Input(format!("source: {err}")))?;
        blobs.put(&body)
    })
    .await
    .map_err(|err| BackendError::Store(format!("source task failed: {err}")))??;
    let artifact: launcher_api::Artifact = blob.into();
    Ok((StatusCode::CREATED, Json(artifact)).into_response())
}

/// The stored source a request names by digest.
fn source_blob(shared: &Shared, sha256: &str) -> Result<BlobRef, BackendError> {
    let path = shared
        .blobs
        .path(sha256)
        .filter(|p| p.is_file())
        .ok_or_else(|| {
            BackendError::Input(format!(
                "source {sha256:?} was not uploaded: POST the tar.gz to /api/sources first and \
                 give the sha256 it answers"
            ))
        })?;
    let size = std::fs::metadata(&path)
        .map_err(|err| super::ca::io_error(&path, err))?
        .len();
    Ok(BlobRef {
        sha256: sha256.to_string(),
        size,
    })
}

async fn create_stack(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<CreateStack>,
) -> Result<Response, BackendError> {
    let source = source_blob(&shared, &request.source)?;
    let stack = blocking(&shared.store, move |s| s.create_stack(&request, &source)).await?;
    Ok((StatusCode::CREATED, Json(stack)).into_response())
}

async fn update_stack(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(request): Json<UpdateStack>,
) -> Result<Response, BackendError> {
    let source = match &request.source {
        Some(sha256) => Some(source_blob(&shared, sha256)?),
        None => None,
    };
    let stack = blocking(&shared.store, move |s| {
        s.update_stack(&name, &request, source.as_ref())
    })
    .await?;
    Ok(Json(stack).into_response())
}

async fn stacks(State(shared): State<Arc<Shared>>) -> Result<Response, BackendError> {
    let stacks = blocking(&shared.store, |s| s.stacks()).await?;
    Ok(Json(stacks).into_response())
}

async fn stack(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Response, BackendError> {
    let lookup = name.clone();
    match blocking(&shared.store, move |s| s.stack(&lookup)).await? {
        Some(stack) => Ok(Json(stack).into_response()),
        None => Err(BackendError::NotFound(format!("no stack named {name:?}"))),
    }
}

#[derive(Deserialize)]
struct VersionQuery {
    version: Option<i64>,
}

async fn state(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Query(query): Query<VersionQuery>,
) -> Result<Response, BackendError> {
    let lookup = name.clone();
    let wanted = query.version;
    let version = blocking(&shared.store, move |s| s.state_version(&lookup, wanted)).await?;
    let version = version.ok_or_else(|| match wanted {
        Some(n) => BackendError::NotFound(format!("stack {name} has no state version {n}")),
        None => BackendError::NotFound(format!(
            "stack {name} has no state yet: a run's planning or applying writes it"
        )),
    })?;
    let blobs = shared.blobs.clone();
    let bytes = tokio::task::spawn_blocking(move || blobs.read(&version.sha256))
        .await
        .map_err(|err| BackendError::Store(format!("state task failed: {err}")))??;
    Ok(([("content-type", "application/json")], bytes).into_response())
}

async fn state_versions(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
) -> Result<Response, BackendError> {
    let versions = blocking(&shared.store, move |s| {
        s.stack(&name)?
            .ok_or_else(|| BackendError::NotFound(format!("no stack named {name:?}")))?;
        s.state_versions(&name)
    })
    .await?;
    Ok(Json(versions).into_response())
}

async fn trigger(
    State(shared): State<Arc<Shared>>,
    Path(name): Path<String>,
    Json(request): Json<TriggerRun>,
) -> Result<Response, BackendError> {
    let launcher = shared.launcher_image.clone();
    let run = blocking(&shared.store, move |s| {
        s.trigger_run(&name, &request, &launcher)
    })
    .await?;
    shared.wake.notify_one();
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

async fn confirm(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, BackendError> {
    let run = blocking(&shared.store, move |s| s.confirm_run(&id)).await?;
    shared.wake.notify_one();
    Ok(Json(run).into_response())
}

#[derive(Deserialize)]
struct LogQuery {
    stage: Option<String>,
    #[serde(default)]
    after: i64,
}

async fn logs(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
    Query(query): Query<LogQuery>,
) -> Result<Response, BackendError> {
    let page = blocking(&shared.store, move |s| {
        s.logs(&id, query.stage.as_deref(), query.after)
    })
    .await?;
    Ok(Json(page).into_response())
}

async fn tools(State(shared): State<Arc<Shared>>) -> Result<Response, BackendError> {
    let tools = blocking(&shared.store, |s| s.tools()).await?;
    Ok(Json(tools).into_response())
}
