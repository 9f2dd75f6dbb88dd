//! One run Pod, as processes: the real `spacelift-launcher` binary in its three roles, with
//! the Pod's paths moved into a temporary directory by the test-only variables.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::LazyLock;
use std::time::{Duration, Instant};

use base64::Engine as _;
use launcher_api::{Claims, Job, layout};
use rsa::pkcs8::{EncodePrivateKey as _, LineEnding};

use super::backend::TestBackend;

pub const POOL: &str = "01HPS9HDSWCQ73RPDTVAK0KK0A";
pub const WORKER: &str = "01HPS6K4BNB7BPHCDHDWFAMJNV";

/// The worker's key: generated once, it is slow.
pub static WORKER_KEY: LazyLock<rsa::PrivateKey> =
    LazyLock::new(<rsa::PrivateKey as rsa::Generate>::generate);

pub struct Pod {
    pub dir: tempfile::TempDir,
    pub claims: Claims,
    pub workspace: PathBuf,
    pub binaries: PathBuf,
    pub cache: PathBuf,
    grpc: String,
    proxy: String,
    endpoint: Option<String>,
    /// Extra variables (timeouts, grace).
    pub env: Vec<(String, String)>,
}

/// The binary under test: the one cargo built for this test, or another build of it (the
/// static one from launcher/build) named by `SPACELIFT_LAUNCHER_TEST_BINARY`.
fn launcher_binary() -> PathBuf {
    std::env::var_os("SPACELIFT_LAUNCHER_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_spacelift-launcher")))
}

fn free_port() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().to_string()
}

impl Pod {
    /// A Pod for `job`, dispatched to the test worker; `cache` may be shared between Pods.
    pub fn new(backend: &TestBackend, job: &Job, cache: &Path) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let identity = dir.path().join("identity");
        std::fs::create_dir_all(&identity).unwrap();
        let pem = WORKER_KEY.to_pkcs8_pem(LineEnding::LF).unwrap();
        std::fs::write(identity.join(layout::IDENTITY_KEY_FILE), pem.as_bytes()).unwrap();
        let token = serde_json::json!({"version": 1, "pool_id": POOL, "ca_cert": backend.ca_pem,
            "broker_url": "mqtts://127.0.0.1:8883", "topic_namespace": "spacelift"});
        let token = base64::engine::general_purpose::STANDARD.encode(token.to_string());
        std::fs::write(identity.join(layout::IDENTITY_TOKEN_FILE), token).unwrap();
        let claims = Claims {
            pool: POOL.into(),
            worker: WORKER.into(),
            run: job.run_id.clone(),
            stage: job.stage.clone(),
            attempt: job.attempt,
        };
        let mut books = backend.books();
        books
            .workers
            .insert(WORKER.into(), WORKER_KEY.to_public_key());
        books.assigned.insert(
            (job.run_id.clone(), job.stage.clone(), job.attempt),
            (WORKER.into(), job.clone()),
        );
        Self {
            workspace: dir.path().join("workspace"),
            binaries: dir.path().join("binaries"),
            cache: cache.to_path_buf(),
            claims,
            grpc: free_port(),
            proxy: free_port(),
            endpoint: Some(backend.url.clone()),
            env: Vec::new(),
            dir,
        }
    }

    /// The pool token carries `ca_pem` instead of the backend's CA.
    pub fn trusting(self, ca_pem: &str) -> Self {
        let token = serde_json::json!({"version": 1, "pool_id": POOL, "ca_cert": ca_pem});
        let token = base64::engine::general_purpose::STANDARD.encode(token.to_string());
        let path = self
            .dir
            .path()
            .join("identity")
            .join(layout::IDENTITY_TOKEN_FILE);
        std::fs::write(path, token).unwrap();
        self
    }

    pub fn without_endpoint(mut self) -> Self {
        self.endpoint = None;
        self
    }

    pub fn proxy_address(&self) -> &str {
        &self.proxy
    }

    pub fn termination_log(&self, role: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("{role}.termination-log")))
            .unwrap_or_default()
    }

    /// What the three roles printed, for a failing assert's message.
    pub fn logs(&self) -> String {
        ["init", "grpc-server", "worker"]
            .iter()
            .map(|role| {
                let text = std::fs::read_to_string(self.dir.path().join(format!("{role}.log")));
                format!("--- {role}:\n{}", text.unwrap_or_default())
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn command(&self, program: &Path, role: &str) -> Command {
        let mut command = Command::new(program);
        command.env_clear();
        let path = std::env::var("PATH").unwrap_or_default();
        command
            // The worker container's PATH: the binaries directory first.
            .env("PATH", format!("{}:{path}", self.binaries.display()))
            .env(layout::ENV_POOL, &self.claims.pool)
            .env(layout::ENV_WORKER, &self.claims.worker)
            .env(layout::ENV_RUN, &self.claims.run)
            .env(layout::ENV_STAGE, &self.claims.stage)
            .env(layout::ENV_ATTEMPT, self.claims.attempt.to_string())
            .env("SPACELIFT_LAUNCHER_TEST_WORKSPACE", &self.workspace)
            .env("SPACELIFT_LAUNCHER_TEST_BINARIES", &self.binaries)
            .env("SPACELIFT_LAUNCHER_TEST_BINARIES_CACHE", &self.cache)
            .env(
                "SPACELIFT_LAUNCHER_TEST_IDENTITY",
                self.dir.path().join("identity"),
            )
            .env(
                "SPACELIFT_LAUNCHER_TEST_TERMINATION_LOG",
                self.dir.path().join(format!("{role}.termination-log")),
            )
            .env("SPACELIFT_LAUNCHER_TEST_GRPC_ADDRESS", &self.grpc)
            .env("SPACELIFT_LAUNCHER_TEST_STATE_PROXY_ADDRESS", &self.proxy)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        // Each role's output to a file of its own, shown when a test fails (see `logs`).
        let log = std::fs::File::create(self.dir.path().join(format!("{role}.log"))).unwrap();
        command.stderr(log.try_clone().unwrap()).stdout(log);
        if let Some(endpoint) = &self.endpoint {
            // The worker container has no endpoint and no identity in the Pod.
            if role != "worker" {
                command.env(layout::ENV_ENDPOINT, endpoint);
            }
        }
        command
    }

    /// `spacelift-launcher init`, to its end.
    pub fn init(&self) -> ExitStatus {
        let child = self
            .command(&launcher_binary(), "init")
            .arg("init")
            .spawn()
            .unwrap();
        wait(child, Duration::from_secs(120), "init")
    }

    /// `spacelift-launcher grpc-server`, running.
    pub fn start_grpc_server(&self) -> Child {
        self.command(&launcher_binary(), "grpc-server")
            .arg("grpc-server")
            .spawn()
            .unwrap()
    }

    /// The `spacelift-worker` that init installed, running.
    pub fn start_worker(&self) -> Child {
        self.command(&self.binaries.join(layout::WORKER_BINARY_NAME), "worker")
            .spawn()
            .unwrap()
    }
}

/// Waits for a process, at most `within` (then kills it and fails the test).
pub fn wait(mut child: Child, within: Duration, what: &str) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("{what} did not end within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Sends SIGTERM, as the kubelet does to every container of a Pod being deleted.
pub fn sigterm(child: &Child) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
}

/// Polls `check` every 50 ms for at most `within`.
pub fn eventually(within: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + within;
    while !check() {
        assert!(
            Instant::now() < deadline,
            "{what} did not happen within {within:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}
