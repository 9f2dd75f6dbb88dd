//! Thin HTTP clients of the API, for `run submit` and `run list`.

use super::BackendError;
use super::store::{RunView, SubmitRun};

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

/// `POST /api/runs`.
pub async fn submit_run(base_url: &str, request: &SubmitRun) -> Result<RunView, BackendError> {
    let url = format!("{}/api/runs", base_url.trim_end_matches('/'));
    let response = client()?
        .post(url)
        .json(request)
        .send()
        .await
        .map_err(http_error)?;
    check(response).await?.json().await.map_err(http_error)
}

/// `GET /api/runs`.
pub async fn list_runs(base_url: &str, pool: Option<&str>) -> Result<Vec<RunView>, BackendError> {
    let mut url = format!("{}/api/runs", base_url.trim_end_matches('/'));
    if let Some(pool) = pool {
        url.push_str("?pool=");
        url.push_str(&percent_encode(pool));
    }
    let response = client()?.get(url).send().await.map_err(http_error)?;
    check(response).await?.json().await.map_err(http_error)
}

/// `POST /api/runs/{id}/stop`.
pub async fn stop_run(base_url: &str, run_id: &str) -> Result<RunView, BackendError> {
    let url = format!("{}/api/runs/{run_id}/stop", base_url.trim_end_matches('/'));
    let response = client()?.post(url).send().await.map_err(http_error)?;
    check(response).await?.json().await.map_err(http_error)
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
