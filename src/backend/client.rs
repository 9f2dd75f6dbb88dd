//! Thin HTTP clients of the API, for the `run` and `stack` commands.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::BackendError;
use super::store::{
    CreateStack, LogPage, RunView, StackView, StateVersionView, SubmitRun, TriggerRun, UpdateStack,
};

fn http_error(err: reqwest::Error) -> BackendError {
    BackendError::Http(err.to_string())
}

async fn check(response: reqwest::Response) -> Result<reqwest::Response, BackendError> {
    if response.status().is_success() {
        return Ok(response);
    }
    let status = response.status();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let message = body
        .get("error")
        .and_then(|e| e.as_str())
        .map(str::to_string)
        .unwrap_or_else(|| status.to_string());
    Err(match status.as_u16() {
        400 | 422 => BackendError::Input(message),
        404 => BackendError::NotFound(message),
        409 => BackendError::Conflict(message),
        _ => BackendError::Http(format!("{status}: {message}")),
    })
}

fn client() -> Result<reqwest::Client, BackendError> {
    super::install_crypto_provider();
    reqwest::Client::builder().build().map_err(http_error)
}

fn url(base_url: &str, path: &str) -> String {
    format!("{}{path}", base_url.trim_end_matches('/'))
}

async fn send<T: DeserializeOwned>(request: reqwest::RequestBuilder) -> Result<T, BackendError> {
    let response = request.send().await.map_err(http_error)?;
    check(response).await?.json().await.map_err(http_error)
}

async fn post_json<B: Serialize, T: DeserializeOwned>(
    base_url: &str,
    path: &str,
    body: &B,
) -> Result<T, BackendError> {
    send(client()?.post(url(base_url, path)).json(body)).await
}

async fn get_json<T: DeserializeOwned>(base_url: &str, path: &str) -> Result<T, BackendError> {
    send(client()?.get(url(base_url, path))).await
}

/// `POST /api/runs`.
pub async fn submit_run(base_url: &str, request: &SubmitRun) -> Result<RunView, BackendError> {
    post_json(base_url, "/api/runs", request).await
}

/// `GET /api/runs`.
pub async fn list_runs(base_url: &str, pool: Option<&str>) -> Result<Vec<RunView>, BackendError> {
    let path = match pool {
        Some(pool) => format!("/api/runs?pool={}", percent_encode(pool)),
        None => "/api/runs".to_string(),
    };
    get_json(base_url, &path).await
}

/// `GET /api/runs/{id}`.
pub async fn get_run(base_url: &str, run_id: &str) -> Result<RunView, BackendError> {
    get_json(base_url, &format!("/api/runs/{}", percent_encode(run_id))).await
}

/// `POST /api/runs/{id}/stop`.
pub async fn stop_run(base_url: &str, run_id: &str) -> Result<RunView, BackendError> {
    let path = format!("/api/runs/{}/stop", percent_encode(run_id));
    send(client()?.post(url(base_url, &path))).await
}

/// `POST /api/stacks/{name}/runs`.
pub async fn trigger_run(
    base_url: &str,
    stack: &str,
    request: &TriggerRun,
) -> Result<RunView, BackendError> {
    let path = format!("/api/stacks/{}/runs", percent_encode(stack));
    post_json(base_url, &path, request).await
}

/// `POST /api/runs/{id}/confirm`.
pub async fn confirm_run(base_url: &str, run_id: &str) -> Result<RunView, BackendError> {
    let path = format!("/api/runs/{}/confirm", percent_encode(run_id));
    send(client()?.post(url(base_url, &path))).await
}

/// `GET /api/runs/{id}/logs`.
pub async fn run_logs(
    base_url: &str,
    run_id: &str,
    stage: Option<&str>,
    after: i64,
) -> Result<LogPage, BackendError> {
    let mut path = format!("/api/runs/{}/logs?after={after}", percent_encode(run_id));
    if let Some(stage) = stage {
        path.push_str(&format!("&stage={}", percent_encode(stage)));
    }
    get_json(base_url, &path).await
}

/// `POST /api/sources`: a gzipped tarball.
pub async fn upload_source(
    base_url: &str,
    tar_gz: Vec<u8>,
) -> Result<launcher_api::Artifact, BackendError> {
    send(
        client()?
            .post(url(base_url, "/api/sources"))
            .header("content-type", "application/gzip")
            .body(tar_gz),
    )
    .await
}

/// `POST /api/stacks`.
pub async fn create_stack(
    base_url: &str,
    request: &CreateStack,
) -> Result<StackView, BackendError> {
    post_json(base_url, "/api/stacks", request).await
}

/// `PATCH /api/stacks/{name}`.
pub async fn update_stack(
    base_url: &str,
    name: &str,
    request: &UpdateStack,
) -> Result<StackView, BackendError> {
    let path = format!("/api/stacks/{}", percent_encode(name));
    send(client()?.patch(url(base_url, &path)).json(request)).await
}

/// `GET /api/stacks`.
pub async fn list_stacks(base_url: &str) -> Result<Vec<StackView>, BackendError> {
    get_json(base_url, "/api/stacks").await
}

/// `GET /api/stacks/{name}`.
pub async fn get_stack(base_url: &str, name: &str) -> Result<StackView, BackendError> {
    get_json(base_url, &format!("/api/stacks/{}", percent_encode(name))).await
}

/// `GET /api/stacks/{name}/state`: the raw state document.
pub async fn stack_state(
    base_url: &str,
    name: &str,
    version: Option<i64>,
) -> Result<String, BackendError> {
    let mut path = format!("/api/stacks/{}/state", percent_encode(name));
    if let Some(version) = version {
        path.push_str(&format!("?version={version}"));
    }
    let response = client()?
        .get(url(base_url, &path))
        .send()
        .await
        .map_err(http_error)?;
    check(response).await?.text().await.map_err(http_error)
}

/// `GET /api/stacks/{name}/state/versions`.
pub async fn state_versions(
    base_url: &str,
    name: &str,
) -> Result<Vec<StateVersionView>, BackendError> {
    get_json(
        base_url,
        &format!("/api/stacks/{}/state/versions", percent_encode(name)),
    )
    .await
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}
