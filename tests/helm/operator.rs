//! Running the operator on the host as the chart's ServiceAccount: the proof that the chart's
//! RBAC is enough. The operator Pod cannot really run in the test cluster (kwok only pretends),
//! so the binary runs here, with a kubeconfig that holds nothing but the ServiceAccount's token
//! (`kubectl create token`, through the TokenRequest API) and exactly the arguments the chart
//! renders for its Deployment (only the listen addresses and the paths of the hook file and the
//! plugin cache are adapted).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::chart::Rendering;
use crate::release::Release;

/// The operator binary of this package (built by cargo for the integration tests).
pub const OPERATOR_BIN: &str = env!("CARGO_BIN_EXE_workerpool-operator");

/// Where the operator listens on the host.
#[derive(Clone, Copy, Debug)]
pub struct HostAddresses {
    pub probes: SocketAddr,
    pub metrics: SocketAddr,
}

impl HostAddresses {
    /// Free loopback ports (bound and released: a small race, acceptable in tests).
    pub fn free() -> anyhow::Result<Self> {
        let port = || -> anyhow::Result<SocketAddr> {
            Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?)
        };
        Ok(Self {
            probes: port()?,
            metrics: port()?,
        })
    }
}

/// The chart's Deployment arguments, made runnable on the host: `run` first, listen addresses on
/// loopback, the hook configuration and the run-Pod guard read from `config_dir` and compiled
/// plugins cached in `plugin_cache` instead of the mounted paths. Everything else (namespaces,
/// leader election, metrics security, logging, the cache's size) is the chart's.
pub fn host_args(
    chart_args: &[String],
    config_dir: &Path,
    plugin_cache: &Path,
    at: HostAddresses,
) -> Vec<String> {
    chart_args
        .iter()
        .map(|arg| {
            let (flag, value) = arg.split_once('=').unwrap_or((arg.as_str(), ""));
            let file = Path::new(value).file_name().unwrap_or_default();
            match flag {
                "--health-probe-bind-address" => format!("{flag}={}", at.probes),
                "--metrics-bind-address" => format!("{flag}={}", at.metrics),
                "--hook-config" | "--run-pod-guard" => {
                    format!("{flag}={}", config_dir.join(file).display())
                }
                "--plugin-cache-dir" => format!("{flag}={}", plugin_cache.display()),
                _ => arg.clone(),
            }
        })
        .collect()
}

/// `workerpool-operator run ...` on the host, as a release's ServiceAccount. Killed when
/// dropped; [`HostOperator::terminate`] stops it the way the kubelet does (SIGTERM).
pub struct HostOperator {
    child: Child,
    pub addresses: HostAddresses,
    pub log: PathBuf,
    _dir: tempfile::TempDir,
}

impl HostOperator {
    /// Starts the operator with the release's rendered arguments and configuration.
    pub async fn start(release: &Release) -> anyhow::Result<Self> {
        // A build from another source tree sharing this target directory (CARGO_TARGET_DIR)
        // can replace the binary cargo built for this test; say so rather than fail obscurely.
        let probe = Command::new(OPERATOR_BIN)
            .args(["run", "--help"])
            .output()?;
        anyhow::ensure!(
            probe.status.success(),
            "{OPERATOR_BIN} has no `run` command: it was built from other sources (another \
             tree sharing this target directory?): {}",
            String::from_utf8_lossy(&probe.stderr).trim()
        );
        let manifest: Rendering = release.manifest()?;
        let dir = tempfile::tempdir()?;
        let kubeconfig = release
            .service_account_kubeconfig(&dir.path().join("kubeconfig"))
            .await?;
        std::fs::write(dir.path().join("hooks.yaml"), manifest.hook_config()?)?;
        std::fs::write(
            dir.path().join("run-pod-guard.yaml"),
            manifest.run_pod_guard()?,
        )?;
        let addresses = HostAddresses::free()?;
        let args = host_args(
            &manifest.args()?,
            dir.path(),
            &dir.path().join("plugin-cache"),
            addresses,
        );
        anyhow::ensure!(args.first().map(String::as_str) == Some("run"), "{args:?}");

        // The Pod the chart's Deployment made (kwok plays it): the operator writes it as the
        // leader Lease's owner, as it would from inside that Pod (downward API).
        let pod = crate::support::kubectl([
            "-n",
            &release.namespace,
            "get",
            "pods",
            "-l",
            &format!("app.kubernetes.io/instance={}", release.name),
            "-o",
            "jsonpath={.items[0].metadata.name} {.items[0].metadata.uid}",
        ])?;
        let (pod_name, pod_uid) = pod.trim().split_once(' ').unwrap_or_default();
        let log = dir.path().join("operator.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new(OPERATOR_BIN)
            .args(&args)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            // Passed through for debugging (e.g. RUST_MIN_STACK, RUST_BACKTRACE); nothing of
            // the developer's kube or cloud configuration is.
            .envs(
                std::env::vars_os()
                    .filter(|(k, _)| k.to_str().is_some_and(|k| k.starts_with("RUST_"))),
            )
            .env("KUBECONFIG", &kubeconfig)
            .env("POD_NAMESPACE", &release.namespace)
            .env("POD_NAME", pod_name)
            .env("POD_UID", pod_uid)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("starting {OPERATOR_BIN}"))?;
        eprintln!(
            "operator pid {} as {}: {args:?}",
            child.id(),
            release.service_account()
        );
        Ok(Self {
            child,
            addresses,
            log,
            _dir: dir,
        })
    }

    /// What the operator logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits until `/readyz` answers 200 (or the operator exits).
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "the operator exited ({status}) before it was ready:\n{}",
                    self.logs()
                );
            }
            if http_status(self.addresses.probes, "/readyz").await.ok() == Some(200) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "the operator was not ready after {timeout:?}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// SIGTERM, then wait up to `timeout` for the exit (SIGKILL after that).
    pub async fn terminate(mut self, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() >= deadline {
                self.child.kill()?;
                bail!(
                    "the operator ignored SIGTERM for {timeout:?}:\n{}",
                    self.logs()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for HostOperator {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The status code of a plain HTTP GET.
async fn http_status(at: SocketAddr, path: &str) -> anyhow::Result<u16> {
    let mut stream = tokio::net::TcpStream::connect(at).await?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {at}\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await?;
    let mut head = Vec::new();
    stream.read_to_end(&mut head).await?;
    let text = String::from_utf8_lossy(&head);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .context("no HTTP status line")
}

#[test]
fn the_host_run_keeps_every_chart_argument_but_addresses_and_paths() -> anyhow::Result<()> {
    let r = crate::chart::render(&[
        "--set",
        "controllerManager.namespaces={team-a}",
        "--set",
        "metricsService.enabled=true",
    ])?;
    let at = HostAddresses {
        probes: "127.0.0.1:18081".parse()?,
        metrics: "127.0.0.1:18443".parse()?,
    };
    let args = host_args(
        &r.args()?,
        Path::new("/tmp/x"),
        Path::new("/tmp/x/plugin-cache"),
        at,
    );
    assert_eq!(
        args,
        [
            "run",
            "--health-probe-bind-address=127.0.0.1:18081",
            "--leader-elect",
            "--leader-election-id=wpo-workerpool-operator-leader",
            "--hook-config=/tmp/x/hooks.yaml",
            "--run-pod-guard=/tmp/x/run-pod-guard.yaml",
            "--plugin-cache-dir=/tmp/x/plugin-cache",
            "--plugin-cache-max-mib=192",
            "--log-format=json",
            "--log-level=info",
            "--namespaces=team-a",
            "--metrics-bind-address=127.0.0.1:18443",
            "--metrics-secure=true",
        ]
    );
    Ok(())
}
