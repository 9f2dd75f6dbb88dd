//! A real Mosquitto for tests: configured by `workerpool-backend broker-config` (mutual TLS,
//! per-pool ACL) in a temporary state directory, listening on a free loopback port, stopped on
//! drop. Needs `mosquitto` (scripts/install-system-deps).

#![allow(dead_code)]

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running broker and the backend state directory whose CA it trusts.
pub struct Broker {
    child: Option<Child>,
    /// The TLS listener port.
    pub port: u16,
    /// `mqtts://127.0.0.1:<port>`.
    pub url: String,
    /// The backend state directory (CA, config, database).
    pub state_dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// The `workerpool-backend` binary built for this test run.
pub fn backend_binary() -> &'static str {
    env!("CARGO_BIN_EXE_workerpool-backend")
}

fn mosquitto_binary() -> PathBuf {
    if let Ok(path) = std::env::var("MOSQUITTO") {
        return PathBuf::from(path);
    }
    let on_path = std::env::var_os("PATH")
        .map(|paths| {
            std::env::split_paths(&paths)
                .map(|p| p.join("mosquitto"))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    on_path
        .into_iter()
        .chain([PathBuf::from("/usr/sbin/mosquitto")])
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("mosquitto not found: run scripts/install-system-deps"))
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn current_user() -> String {
    let output = Command::new("id").arg("-un").output().expect("id -un");
    String::from_utf8_lossy(&output.stdout).trim().to_string()
}

impl Broker {
    /// Writes the configuration with `broker-config` and starts Mosquitto.
    pub fn start() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let state_dir = dir.path().join("state");
        let broker_dir = dir.path().join("broker");
        let port = free_port();
        let output = Command::new(backend_binary())
            .arg("--state-dir")
            .arg(&state_dir)
            .args([
                "broker-config",
                "--host",
                "127.0.0.1",
                "--host",
                "localhost",
            ])
            .arg("--out-dir")
            .arg(&broker_dir)
            .args([
                "--port",
                &port.to_string(),
                "--mosquitto-user",
                &current_user(),
            ])
            .output()
            .expect("run workerpool-backend broker-config");
        assert!(
            output.status.success(),
            "broker-config failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let config = PathBuf::from(String::from_utf8_lossy(&output.stdout).trim());
        let mut broker = Self {
            child: None,
            port,
            url: format!("mqtts://127.0.0.1:{port}"),
            state_dir,
            config,
            log: dir.path().join("mosquitto.log"),
            _dir: dir,
        };
        broker.spawn();
        broker
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("mosquitto log");
        let child = Command::new(mosquitto_binary())
            .arg("-c")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start mosquitto");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Some(child) = self.child.as_mut()
                && let Ok(Some(status)) = child.try_wait()
            {
                panic!("mosquitto exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "mosquitto did not listen:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the broker (SIGTERM, so it saves its persistence file) and starts it again.
    pub fn restart(&mut self) {
        self.stop();
        self.spawn();
    }

    /// Stops the broker.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// What Mosquitto logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The directory holding `ca.pem`, `mosquitto.conf` and `acl`.
    pub fn config_dir(&self) -> &Path {
        self.config.parent().unwrap_or(Path::new("."))
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.stop();
    }
}
