//! A launcher as the backend meets it: HTTPS trusting only the pool token's CA, every request
//! signed with a worker's RSA key per `launcher_api::signature`. Tests bend one thing at a
//! time (the key, the claims, the time, the nonce, the path) to see each refusal.

use std::time::{SystemTime, UNIX_EPOCH};

use launcher_api::layout::stage_path;
use launcher_api::signature::private_key_from_pem;
use launcher_api::token::PoolToken;
use launcher_api::{Claims, SignedRequest};
use ulid::Ulid;
use workerpool_operator::protocol::RunSchedule;

/// One request, before it is signed.
#[derive(Clone, Debug)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub query: String,
    pub body: Vec<u8>,
    pub time: u64,
    pub nonce: String,
}

impl Call {
    pub fn query(mut self, query: &str) -> Self {
        self.query = query.to_string();
        self
    }

    pub fn body(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = body.into();
        self
    }

    pub fn json(self, value: &impl serde::Serialize) -> Self {
        self.body(serde_json::to_vec(value).expect("json"))
    }
}

/// What came back.
#[derive(Clone, Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Vec<u8>,
}

impl Answer {
    /// The `error` of a JSON error body.
    pub fn error(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("error").and_then(|e| e.as_str()).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).into_owned())
    }

    pub fn json<T: serde::de::DeserializeOwned>(&self) -> T {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|err| panic!("{err}: {}", String::from_utf8_lossy(&self.body)))
    }

    /// Asserts the status and that the message says `expected`.
    #[track_caller]
    pub fn refused(&self, status: u16, expected: &str) {
        assert_eq!(self.status, status, "{}", self.error());
        assert!(
            self.error().contains(expected),
            "{expected:?} in {:?}",
            self.error()
        );
    }
}

pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs()
}

/// A launcher for one run stage attempt of one worker.
#[derive(Clone)]
pub struct Launcher {
    pub http: reqwest::Client,
    pub url: String,
    pub key: rsa::PrivateKey,
    pub claims: Claims,
}

/// A client that trusts only `ca_pem`.
pub fn https_client(ca_pem: &str) -> reqwest::Client {
    workerpool_operator::backend::install_crypto_provider();
    let ca = reqwest::Certificate::from_pem(ca_pem.as_bytes()).expect("CA PEM");
    reqwest::Client::builder()
        .tls_certs_only([ca])
        .build()
        .expect("https client")
}

impl Launcher {
    /// As the run Pod has it: the schedule's endpoint, the token's CA, the worker's key.
    pub fn new(token: &PoolToken, worker: Ulid, key_pem: &str, schedule: &RunSchedule) -> Self {
        let url = schedule
            .launcher_endpoint
            .clone()
            .expect("the schedule names the launcher endpoint");
        Self {
            http: https_client(&token.ca_cert),
            url,
            key: private_key_from_pem(key_pem).expect("worker key"),
            claims: Claims {
                pool: token.pool_id.clone(),
                worker: worker.to_string(),
                run: schedule.run_id.clone(),
                stage: schedule.stage.clone(),
                attempt: schedule.attempt,
            },
        }
    }

    /// A call to `leaf` of the stage the launcher is for, signed now with a fresh nonce.
    pub fn call(&self, method: &str, leaf: &str) -> Call {
        Call {
            method: method.to_string(),
            path: stage_path(
                &self.claims.run,
                &self.claims.stage,
                self.claims.attempt,
                leaf,
            ),
            query: String::new(),
            body: Vec::new(),
            time: unix_now(),
            nonce: Ulid::generate().to_string(),
        }
    }

    /// The `Authorization` header for `call`.
    pub fn authorization(&self, call: &Call) -> String {
        SignedRequest::sign(
            &self.key,
            self.claims.clone(),
            &call.method,
            &call.path,
            &call.query,
            &call.body,
            call.time,
            call.nonce.clone(),
        )
        .expect("sign")
        .header_value()
    }

    /// Sends `call` signed.
    pub async fn send(&self, call: &Call) -> Answer {
        let header = self.authorization(call);
        self.send_with(call, Some(header)).await
    }

    /// Sends `call` with the given `Authorization` header (or none).
    pub async fn send_with(&self, call: &Call, authorization: Option<String>) -> Answer {
        let mut url = format!("{}{}", self.url, call.path);
        if !call.query.is_empty() {
            url = format!("{url}?{}", call.query);
        }
        let method = reqwest::Method::from_bytes(call.method.as_bytes()).expect("method");
        let mut request = self.http.request(method, url).body(call.body.clone());
        if let Some(header) = authorization {
            request = request.header("authorization", header);
        }
        let response = request.send().await.expect("launcher API reachable");
        Answer {
            status: response.status().as_u16(),
            body: response.bytes().await.expect("body").to_vec(),
        }
    }

    /// `send(call(method, leaf))`.
    pub async fn request(&self, method: &str, leaf: &str) -> Answer {
        self.send(&self.call(method, leaf)).await
    }
}
