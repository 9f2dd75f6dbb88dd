//! `GET /metrics` in the Prometheus text format, behind Kubernetes authn/authz when secure.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus::{Encoder, TextEncoder};

use super::auth::{Authorizer, require_metrics_reader};

/// The metrics router; `authorizer` is `None` for plain HTTP without auth.
pub fn router(registry: prometheus::Registry, authorizer: Option<Arc<Authorizer>>) -> Router {
    let route = Router::new()
        .route("/metrics", get(metrics))
        .with_state(registry);
    match authorizer {
        Some(authorizer) => route.route_layer(axum::middleware::from_fn_with_state(
            authorizer,
            require_metrics_reader,
        )),
        None => route,
    }
}

async fn metrics(State(registry): State<prometheus::Registry>) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    match encoder.encode(&registry.gather(), &mut body) {
        Ok(()) => (
            [(header::CONTENT_TYPE, encoder.format_type().to_owned())],
            body,
        )
            .into_response(),
        Err(err) => {
            tracing::error!(error = %err, "cannot encode metrics");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("cannot encode metrics: {err}\n"),
            )
                .into_response()
        }
    }
}
