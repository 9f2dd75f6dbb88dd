//! A small HTTPS server that speaks the launcher API exactly as launcher_api and
//! docs/launcher.md define it: every request's signature is verified with the worker's public
//! key, its time and nonce checked, and its path must be the stage the worker holds. It keeps
//! what a real backend keeps (jobs, blobs, logs, results, state) in memory for the asserts.
//! The real reference backend is tested against the same contract on its own branch.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use launcher_api::signature::SignedRequest;
use launcher_api::{Job, LogBatch, LogLine, LogPart, StageResult, StopStatus, layout};
use sha2::{Digest as _, Sha256};

/// A run stage attempt: (run, stage, attempt).
pub type Attempt = (String, String, u32);

#[derive(Default)]
pub struct Books {
    pub workers: HashMap<String, rsa::PublicKey>,
    /// Which worker holds which attempt, and its job.
    pub assigned: HashMap<Attempt, (String, Job)>,
    pub sources: HashMap<String, Vec<u8>>,
    /// The workspace each run uploaded last.
    pub workspaces: HashMap<String, Vec<u8>>,
    pub tools: HashMap<(String, String), Vec<u8>>,
    pub tool_downloads: u32,
    pub logs: HashMap<(Attempt, LogPart), BTreeMap<u64, LogLine>>,
    pub results: HashMap<Attempt, StageResult>,
    pub stop: HashSet<String>,
    pub state: Option<Vec<u8>>,
    pub lock: Option<Vec<u8>>,
    nonces: HashSet<String>,
}

impl Books {
    /// The lines of one part, in seq order; panics on a gap.
    pub fn lines(&self, attempt: &Attempt, part: LogPart) -> Vec<LogLine> {
        let lines: Vec<LogLine> = self
            .logs
            .get(&(attempt.clone(), part))
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default();
        for (i, line) in lines.iter().enumerate() {
            assert_eq!(line.seq, i as u64, "seqs have a gap: {lines:#?}");
        }
        lines
    }
}

pub struct TestBackend {
    pub url: String,
    pub ca_pem: String,
    pub books: Arc<Mutex<Books>>,
}

pub fn sha256(bytes: &[u8]) -> String {
    launcher_api::signature::hex(&Sha256::digest(bytes))
}

impl TestBackend {
    pub async fn start() -> Self {
        let ca_key = rcgen::KeyPair::generate().unwrap();
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let ca = ca_params.self_signed(&ca_key).unwrap();
        let issuer = rcgen::Issuer::new(ca_params, ca_key);
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_params = rcgen::CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
        let server_cert = server_params.signed_by(&server_key, &issuer).unwrap();

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(
                vec![server_cert.der().clone()],
                rustls::pki_types::PrivateKeyDer::try_from(server_key.serialize_der()).unwrap(),
            )
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        let books = Arc::new(Mutex::new(Books::default()));
        let app = Router::new().fallback(handle).with_state(books.clone());
        tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let app = app.clone();
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(app);
                    let _ = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    )
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                    .await;
                });
            }
        });
        Self {
            url: format!("https://{address}"),
            ca_pem: ca.pem(),
            books,
        }
    }

    pub fn books(&self) -> std::sync::MutexGuard<'_, Books> {
        self.books.lock().unwrap()
    }
}

fn json(status: StatusCode, value: &impl serde::Serialize) -> Response {
    let body = serde_json::to_vec(value).unwrap();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn refuse(status: StatusCode, why: String) -> Response {
    json(status, &serde_json::json!({ "error": why }))
}

/// Checks the signature and the scope, as docs/launcher.md says the backend must.
fn authorize(
    books: &mut Books,
    method: &Method,
    path: &str,
    query: &str,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Attempt, (StatusCode, String)> {
    let header = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| (StatusCode::UNAUTHORIZED, "no Authorization header".into()))?;
    let signed =
        SignedRequest::parse(header).map_err(|err| (StatusCode::UNAUTHORIZED, err.to_string()))?;
    let key = books
        .workers
        .get(&signed.claims.worker)
        .ok_or_else(|| (StatusCode::UNAUTHORIZED, "unknown worker".into()))?;
    signed
        .verify(key, method.as_str(), path, query, body)
        .map_err(|err| (StatusCode::UNAUTHORIZED, err.to_string()))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    signed
        .check_time(now)
        .map_err(|err| (StatusCode::UNAUTHORIZED, err.to_string()))?;
    if !books.nonces.insert(signed.nonce.clone()) {
        return Err((
            StatusCode::UNAUTHORIZED,
            format!("nonce {} replayed", signed.nonce),
        ));
    }
    let c = &signed.claims;
    let attempt = (c.run.clone(), c.stage.clone(), c.attempt);
    let holder = books
        .assigned
        .get(&attempt)
        .map(|(worker, _)| worker.clone());
    if holder.as_deref() != Some(c.worker.as_str()) {
        return Err((
            StatusCode::FORBIDDEN,
            format!(
                "worker {} does not hold run {} stage {} attempt {}",
                c.worker, c.run, c.stage, c.attempt
            ),
        ));
    }
    match layout::parse_stage_path(path) {
        Some((run, stage, n, _)) if (run, stage, n) == (&c.run[..], &c.stage[..], c.attempt) => {
            Ok(attempt)
        }
        _ => Err((
            StatusCode::FORBIDDEN,
            "the path is not the signed stage's".into(),
        )),
    }
}

async fn handle(State(books): State<Arc<Mutex<Books>>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let body: Bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let path = parts.uri.path().to_string();
    let query = parts.uri.query().unwrap_or("").to_string();
    let mut books = books.lock().unwrap();
    let attempt = match authorize(
        &mut books,
        &parts.method,
        &path,
        &query,
        &parts.headers,
        &body,
    ) {
        Ok(attempt) => attempt,
        Err((status, why)) => return refuse(status, why),
    };
    let leaf = layout::parse_stage_path(&path)
        .map(|(_, _, _, leaf)| leaf.to_string())
        .unwrap_or_default();
    let run = attempt.0.clone();
    let ok = || StatusCode::NO_CONTENT.into_response();
    let blob = |bytes: Option<&Vec<u8>>| match bytes {
        Some(bytes) => (StatusCode::OK, bytes.clone()).into_response(),
        None => refuse(StatusCode::NOT_FOUND, format!("no {leaf}")),
    };
    match (parts.method.as_str(), leaf.as_str()) {
        ("GET", "job") => json(StatusCode::OK, &books.assigned[&attempt].1),
        ("GET", "source") => blob(books.sources.get(&run)),
        ("GET", "workspace") => blob(books.workspaces.get(&run)),
        ("PUT", "workspace") => {
            books.workspaces.insert(run, body.to_vec());
            ok()
        }
        ("GET", tool) if tool.starts_with("tools/") => {
            let mut names = tool["tools/".len()..].splitn(2, '/');
            let key = (
                names.next().unwrap_or_default().to_string(),
                names.next().unwrap_or_default().to_string(),
            );
            books.tool_downloads += 1;
            let bytes = books.tools.get(&key).cloned();
            blob(bytes.as_ref())
        }
        ("POST", "logs") => {
            let batch: LogBatch = match serde_json::from_slice(&body) {
                Ok(batch) => batch,
                Err(err) => return refuse(StatusCode::BAD_REQUEST, err.to_string()),
            };
            let stored = books.logs.entry((attempt, batch.part)).or_default();
            for line in batch.lines {
                stored.entry(line.seq).or_insert(line);
            }
            ok()
        }
        ("POST", "result") => match serde_json::from_slice::<StageResult>(&body) {
            Ok(result) => {
                books.results.insert(attempt, result);
                ok()
            }
            Err(err) => refuse(StatusCode::BAD_REQUEST, err.to_string()),
        },
        ("GET", "stop") => json(
            StatusCode::OK,
            &StopStatus {
                stop_requested: books.stop.contains(&run),
                reason: "stopped by the test".into(),
            },
        ),
        ("GET", "state") => blob(books.state.as_ref()),
        ("POST", "state") => {
            books.state = Some(body.to_vec());
            ok()
        }
        ("DELETE", "state") => {
            books.state = None;
            ok()
        }
        ("LOCK", "state/lock") => match &books.lock {
            Some(holder) => (StatusCode::LOCKED, holder.clone()).into_response(),
            None => {
                books.lock = Some(body.to_vec());
                StatusCode::OK.into_response()
            }
        },
        ("UNLOCK", "state/lock") => {
            books.lock = None;
            StatusCode::OK.into_response()
        }
        (method, leaf) => refuse(StatusCode::NOT_FOUND, format!("no {method} {leaf}")),
    }
}
