//! `/healthz` and `/readyz` for the kubelet.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::routing::get;

use crate::ops::health::Health;

pub fn router(health: Health) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/livez", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(health)
}

/// Liveness: answering is the check.
async fn healthz() -> &'static str {
    "ok"
}

/// Readiness: 200 when every check is ready, else 503 listing every check (the failing ones
/// with their reasons). `?verbose` lists them on success too.
async fn readyz(State(health): State<Health>, RawQuery(query): RawQuery) -> (StatusCode, String) {
    let verbose = query.as_deref().is_some_and(|q| {
        q.split('&')
            .any(|kv| kv == "verbose" || kv.starts_with("verbose="))
    });
    let report = health.report();
    let status = if report.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, report.render(verbose))
}
