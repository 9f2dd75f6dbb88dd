//! The backend's HTTP API (axum) and `/metrics`.
//!
//! ```text
//! GET  /healthz                 liveness
//! GET  /readyz                  200 when connected to the broker
//! GET  /metrics                 Prometheus text format
//! GET  /api/pools               pools
//! GET  /api/workers[?pool=P]    workers (P: pool name or ULID)
//! POST /api/runs                submit a run (JSON SubmitRun) -> 201 run
//! GET  /api/runs[?pool=P]       runs, newest first, each with its events
//! GET  /api/runs/{id}           one run with its events
//! POST /api/runs/{id}/stop      stop a run
//! ```
//!
//! and the stacks' routes ([`super::http_stacks`]).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use prometheus::{IntGaugeVec, Opts, Registry};
use serde::Deserialize;
use tokio::sync::watch;

use super::BackendError;
use super::serve::{Shared, blocking};
use super::store::SubmitRun;

/// The seed's pool gauges, labelled like Spacelift's prometheus exporter.
pub(crate) struct Gauges {
    pending: IntGaugeVec,
    workers: IntGaugeVec,
    busy: IntGaugeVec,
}

impl Gauges {
    pub(crate) fn register(registry: &Registry) -> Result<Self, prometheus::Error> {
        let gauge = |name: &str, help: &str| {
            IntGaugeVec::new(
                Opts::new(name, help),
                &["worker_pool_id", "worker_pool_name"],
            )
        };
        let gauges = Self {
            pending: gauge(
                "spacelift_worker_pool_runs_pending",
                "Runs queued for the pool and not yet dispatched to a worker.",
            )?,
            workers: gauge(
                "spacelift_worker_pool_workers",
                "Workers registered in the pool.",
            )?,
            busy: gauge(
                "spacelift_worker_pool_workers_busy",
                "Registered workers processing a run.",
            )?,
        };
        registry.register(Box::new(gauges.pending.clone()))?;
        registry.register(Box::new(gauges.workers.clone()))?;
        registry.register(Box::new(gauges.busy.clone()))?;
        Ok(gauges)
    }
}

impl IntoResponse for BackendError {
    fn into_response(self) -> Response {
        let status = match &self {
            BackendError::Input(_) => StatusCode::BAD_REQUEST,
            BackendError::NotFound(_) => StatusCode::NOT_FOUND,
            BackendError::Conflict(_) => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        (status, Json(serde_json::json!({"error": self.to_string()}))).into_response()
    }
}

#[derive(Deserialize)]
struct PoolFilter {
    pool: Option<String>,
}

pub(crate) async fn serve(
    listener: tokio::net::TcpListener,
    shared: Arc<Shared>,
    mut stop: watch::Receiver<bool>,
) {
    let router = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/api/pools", get(pools))
        .route("/api/workers", get(workers))
        .route("/api/runs", post(submit).get(runs))
        .route("/api/runs/{id}", get(run))
        .route("/api/runs/{id}/stop", post(stop_run))
        .merge(super::http_stacks::routes())
        .with_state(shared);
    let shutdown = async move {
        let _ = stop.wait_for(|stopped| *stopped).await;
    };
    if let Err(err) = axum::serve(listener, router)
        .with_graceful_shutdown(shutdown)
        .await
    {
        tracing::error!(error = %err, "HTTP server failed");
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    let state = shared.link_state.borrow().clone();
    if state.is_connected() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("broker link {state}\n"),
        )
            .into_response()
    }
}

async fn metrics(State(shared): State<Arc<Shared>>) -> Result<Response, BackendError> {
    let pools = blocking(&shared.store, |s| s.gauges()).await?;
    let gauges = &shared.gauges;
    gauges.pending.reset();
    gauges.workers.reset();
    gauges.busy.reset();
    for pool in pools {
        let labels = [pool.id.as_str(), pool.name.as_str()];
        gauges.pending.with_label_values(&labels).set(pool.pending);
        gauges.workers.with_label_values(&labels).set(pool.workers);
        gauges.busy.with_label_values(&labels).set(pool.busy);
    }
    let text = prometheus::TextEncoder::new()
        .encode_to_string(&shared.registry.gather())
        .map_err(BackendError::Metrics)?;
    Ok(([("content-type", "text/plain; version=0.0.4")], text).into_response())
}

async fn pools(State(shared): State<Arc<Shared>>) -> Result<Response, BackendError> {
    let pools = blocking(&shared.store, |s| s.pools()).await?;
    Ok(Json(pools).into_response())
}

async fn workers(
    State(shared): State<Arc<Shared>>,
    Query(filter): Query<PoolFilter>,
) -> Result<Response, BackendError> {
    let workers = blocking(&shared.store, move |s| s.workers(filter.pool.as_deref())).await?;
    Ok(Json(workers).into_response())
}

async fn submit(
    State(shared): State<Arc<Shared>>,
    Json(request): Json<SubmitRun>,
) -> Result<Response, BackendError> {
    let launcher = shared.launcher_image.clone();
    let run = blocking(&shared.store, move |s| s.submit_run(&request, &launcher)).await?;
    shared.wake.notify_one();
    Ok((StatusCode::CREATED, Json(run)).into_response())
}

async fn runs(
    State(shared): State<Arc<Shared>>,
    Query(filter): Query<PoolFilter>,
) -> Result<Response, BackendError> {
    let runs = blocking(&shared.store, move |s| s.runs(filter.pool.as_deref())).await?;
    Ok(Json(runs).into_response())
}

async fn run(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, BackendError> {
    let lookup = id.clone();
    let run = blocking(&shared.store, move |s| s.run(&lookup)).await?;
    match run {
        Some(run) => Ok(Json(run).into_response()),
        None => Err(BackendError::NotFound(format!("no run {id}"))),
    }
}

async fn stop_run(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<String>,
) -> Result<Response, BackendError> {
    let run = blocking(&shared.store, move |s| {
        s.request_stop(&id, "stopped via the API")
    })
    .await?;
    shared.wake.notify_one();
    Ok(Json(run).into_response())
}
