//! The state proxy on 127.0.0.1:7947: OpenTofu's `http` state backend (in the worker
//! container, which holds no key) talks plain HTTP/1.1 to it, and it forwards each request,
//! signed, to the stage's `state` and `state/lock` on the backend, returning the backend's
//! status and body as they are. Only these paths and methods pass; the query (OpenTofu's
//! `ID=<lock id>`) is kept.

use axum::Router;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::backend::{API_TIMEOUT, Backend, Body, Call, Retry, read_limited};

/// The largest state passed either way (the backend's own cap).
pub const MAX_STATE_BYTES: usize = 64 * 1024 * 1024;

/// Serves the proxy on `listener` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    backend: Backend,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let app = Router::new()
        .fallback(forward)
        .layer(DefaultBodyLimit::max(MAX_STATE_BYTES))
        .with_state(backend);
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Which backend leaf a request goes to, or why it does not pass.
fn route(method: &Method, path: &str) -> Result<&'static str, (StatusCode, &'static str)> {
    let (leaf, allowed): (&'static str, &[&str]) = match path {
        "/state" => ("state", &["GET", "POST", "DELETE"]),
        "/state/lock" => ("state/lock", &["LOCK", "UNLOCK"]),
        _ => {
            return Err((
                StatusCode::NOT_FOUND,
                "the state proxy serves /state (GET, POST, DELETE) and /state/lock (LOCK, UNLOCK) only",
            ));
        }
    };
    if allowed.contains(&method.as_str()) {
        Ok(leaf)
    } else {
        Err((
            StatusCode::METHOD_NOT_ALLOWED,
            "/state takes GET, POST and DELETE; /state/lock takes LOCK and UNLOCK",
        ))
    }
}

async fn forward(State(backend): State<Backend>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let leaf = match route(&parts.method, parts.uri.path()) {
        Ok(leaf) => leaf,
        Err((status, why)) => return (status, why).into_response(),
    };
    let body: Bytes = match axum::body::to_bytes(body, MAX_STATE_BYTES).await {
        Ok(body) => body,
        Err(_) => {
            return (
                StatusCode::PAYLOAD_TOO_LARGE,
                "the state is larger than the proxy's 64 MiB",
            )
                .into_response();
        }
    };
    // A read can be repeated; a write or a lock that reached the backend must not be.
    let retry = if parts.method == Method::GET {
        Retry::STANDARD
    } else {
        Retry::CONNECT_ONLY
    };
    let call = Call {
        method: parts.method.clone(),
        leaf,
        query: parts.uri.query().unwrap_or(""),
        body: if body.is_empty() {
            Body::Empty
        } else {
            Body::Bytes(body)
        },
        timeout: API_TIMEOUT,
        retry,
    };
    let what = format!("{} {leaf}", parts.method);
    let answer = match backend.send(&call).await {
        Ok(answer) => answer,
        Err(err) => {
            let why = crate::chain(&err);
            crate::note(&format!("state proxy: {why}"));
            return (StatusCode::BAD_GATEWAY, why).into_response();
        }
    };
    let status = answer.status();
    let content_type = answer.headers().get(header::CONTENT_TYPE).cloned();
    match read_limited(&what, answer, MAX_STATE_BYTES as u64).await {
        Ok(body) => {
            let mut response = (status, body).into_response();
            if let Some(content_type) = content_type {
                response
                    .headers_mut()
                    .insert(header::CONTENT_TYPE, content_type);
            }
            response
        }
        Err(err) => (StatusCode::BAD_GATEWAY, crate::chain(&err)).into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_state_paths_and_their_methods_pass() {
        let method = |m: &str| Method::from_bytes(m.as_bytes()).unwrap();
        assert_eq!(route(&method("GET"), "/state"), Ok("state"));
        assert_eq!(route(&method("POST"), "/state"), Ok("state"));
        assert_eq!(route(&method("DELETE"), "/state"), Ok("state"));
        assert_eq!(route(&method("LOCK"), "/state/lock"), Ok("state/lock"));
        assert_eq!(route(&method("UNLOCK"), "/state/lock"), Ok("state/lock"));
        assert_eq!(
            route(&method("LOCK"), "/state").unwrap_err().0,
            StatusCode::METHOD_NOT_ALLOWED
        );
        assert_eq!(
            route(&method("GET"), "/job").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
        assert_eq!(
            route(&method("GET"), "/state/../job").unwrap_err().0,
            StatusCode::NOT_FOUND
        );
    }
}
