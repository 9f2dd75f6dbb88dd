//! Real runs: the operator binary, the reference backend with its launcher API on the node's
//! bridge, a real Mosquitto with mutual TLS, the launcher image and the OpenTofu runner image on
//! the real node. A run here is the whole thing a user gets: the backend dispatches a stage,
//! the operator builds and creates the Pod, `init` fetches the signed job, `spacelift-worker`
//! runs `tofu`, the logs, the workspace and the state go back to the backend, and the operator
//! reports the outcome it reads from the kubelet.

mod hooks;
mod outcomes;
mod pools;
mod tofu;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use anyhow::{Context as _, bail};
use workerpool_operator::backend::client;
use workerpool_operator::backend::store::{LogEntry, RunView, TriggerRun};

use crate::broker::backend_binary;
use crate::stack::{Stack, pool_yaml};
use crate::support::real_node::{RealNode, real_node};
use crate::support::{repo_root, wait_for};

/// How long a real run may take to reach a state a test waits for: a tofu stage takes seconds,
/// but the machine is shared with parallel builds and tests.
pub const RUN_WAIT: Duration = Duration::from_secs(240);

/// The operator, backend and broker of one test, with runs on the real node.
pub struct RealRuns {
    pub stack: Stack,
    pub node: &'static RealNode,
    pub tofu_version: String,
}

impl RealRuns {
    /// Everything for pool `pool` of `size` workers, its `spec` extended with `extra` (YAML
    /// indented two spaces, under `spec:`) and `pod_extra` (indented four, under `spec.pod:`,
    /// beside the node's placement). `None` where the real node cannot run here (the reason is
    /// printed; under `WORKERPOOL_REQUIRE_REAL_NODE=1` that panics instead).
    pub async fn start(
        prefix: &str,
        pool: &str,
        size: i32,
        extra: &str,
        pod_extra: &str,
    ) -> anyhow::Result<Option<Self>> {
        let Some(runs) = Self::begin(prefix, &[]).await? else {
            return Ok(None);
        };
        runs.add_pool(pool, size, extra, pod_extra).await?;
        Ok(Some(runs))
    }

    /// As [`RealRuns::start`] for a pool of one worker whose hooks read the ConfigMaps
    /// `(name, key, file)`, made before the operator starts.
    pub async fn start_with_hooks(
        prefix: &str,
        pool: &str,
        config_maps: &[(&str, &str, &Path)],
        extra: &str,
        pod_extra: &str,
    ) -> anyhow::Result<Option<Self>> {
        let Some(runs) = Self::begin(prefix, config_maps).await? else {
            return Ok(None);
        };
        runs.add_pool(pool, 1, extra, pod_extra).await?;
        Ok(Some(runs))
    }

    /// The broker, the backend with its launcher API on the node's bridge and OpenTofu in its
    /// tools, the ConfigMaps, and the operator.
    async fn begin(
        prefix: &str,
        config_maps: &[(&str, &str, &Path)],
    ) -> anyhow::Result<Option<Self>> {
        let Some(node) = real_node() else {
            return Ok(None);
        };
        let launcher =
            node.images.launcher.clone().context(
                "the real node has no launcher image: run launcher/build and images/build",
            )?;
        let mut stack = Stack::new_with(prefix, |options| {
            options.launcher_listen = Some((node.ip, 0).into());
            options.launcher_image = launcher;
        })
        .await?;
        for (name, key, file) in config_maps {
            stack.ns.kubectl([
                "create".to_string(),
                "configmap".to_string(),
                name.to_string(),
                format!("--from-file={key}={}", file.display()),
            ])?;
        }
        stack.start_operator(&[])?;
        let runs = Self {
            stack,
            node,
            tofu_version: tofu_version()?,
        };
        let mut add = runs.backend(["tool", "add", "--name", "tofu", "--version"]);
        add.arg(&runs.tofu_version)
            .arg("--file")
            .arg(tofu_binary()?);
        output_ok(add).await?;
        Ok(Some(runs))
    }

    /// Another pool (credentials in a Secret of its name), registered.
    pub async fn add_pool(
        &self,
        pool: &str,
        size: i32,
        extra: &str,
        pod_extra: &str,
    ) -> anyhow::Result<()> {
        self.stack.create_credentials(pool, pool)?;
        self.apply_pool(pool, size, extra, pod_extra)?;
        self.stack.wait_registered(pool, size).await?;
        Ok(())
    }

    /// The pool's manifest with the node's placement, applied.
    pub fn apply_pool(
        &self,
        pool: &str,
        size: i32,
        extra: &str,
        pod_extra: &str,
    ) -> anyhow::Result<()> {
        let key = &self.node.key;
        let spec = format!(
            "{extra}  pod:\n    nodeSelector:\n      {key}: \"true\"\n    tolerations:\n      - {{key: {key}, operator: Equal, value: \"true\", effect: NoSchedule}}\n{pod_extra}"
        );
        self.stack.apply(&pool_yaml(pool, pool, size, &spec))?;
        Ok(())
    }

    /// `workerpool-backend` with this test's state dir and backend URL.
    pub fn backend<I, S>(&self, args: I) -> Command
    where
        I: IntoIterator<Item = S>,
        S: AsRef<std::ffi::OsStr>,
    {
        let mut command = Command::new(backend_binary());
        command
            .arg("--state-dir")
            .arg(&self.stack.broker.state_dir)
            .args(args)
            .env("WORKERPOOL_BACKEND_URL", &self.stack.backend_url);
        command
    }

    /// A stack of pool `pool` from a directory under tests/fixtures/stacks, run with the OpenTofu
    /// runner image unless `runner_image` names another; `env` as KEY=VALUE.
    pub async fn create_stack(
        &self,
        name: &str,
        pool: &str,
        fixture: &str,
        runner_image: Option<&str>,
        env: &[&str],
    ) -> anyhow::Result<()> {
        let mut command = self.backend(["stack", "create", "--name", name, "--pool", pool]);
        command
            .arg("--source")
            .arg(fixture_dir(fixture))
            .args(["--tool-version", &self.tofu_version, "--runner-image"])
            .arg(runner_image.unwrap_or(&self.node.images.runner_tofu));
        for variable in env {
            command.args(["--env", variable]);
        }
        output_ok(command).await?;
        Ok(())
    }

    /// Gives stack `name` the source of another fixture (runs triggered later take it).
    pub async fn update_source(&self, name: &str, fixture: &str) -> anyhow::Result<()> {
        let mut command = self.backend(["stack", "update", "--name", name, "--source"]);
        command.arg(fixture_dir(fixture));
        output_ok(command).await?;
        Ok(())
    }

    pub async fn trigger(&self, stack: &str, proposed: bool) -> anyhow::Result<RunView> {
        Ok(client::trigger_run(&self.stack.backend_url, stack, &TriggerRun { proposed }).await?)
    }

    pub async fn confirm(&self, run: &str) -> anyhow::Result<RunView> {
        Ok(client::confirm_run(&self.stack.backend_url, run).await?)
    }

    /// Waits until the run is in one of `states`; fails at once when it ends in another.
    pub async fn wait_state(&self, run: &str, states: &[&str]) -> anyhow::Result<RunView> {
        const ENDED: [&str; 4] = ["succeeded", "failed", "stopped", "denied"];
        let url = &self.stack.backend_url;
        let result = wait_for(&format!("run {run} {states:?}"), RUN_WAIT, || async move {
            let view = client::get_run(url, run).await?;
            if states.contains(&view.state.as_str()) {
                return Ok(Some(view));
            }
            if ENDED.contains(&view.state.as_str()) {
                bail!(
                    "run {run} ended {} ({:?}: {})",
                    view.state,
                    view.cause,
                    view.message
                );
            }
            Ok(None)
        })
        .await;
        match result {
            Ok(view) => Ok(view),
            Err(err) => Err(err.context(self.diagnostics(run).await)),
        }
    }

    /// Every log line the backend stored for the run (all stages), in the backend's order.
    pub async fn logs(&self, run: &str) -> anyhow::Result<Vec<LogEntry>> {
        let mut lines = Vec::new();
        let mut after = 0;
        loop {
            let page = client::run_logs(&self.stack.backend_url, run, None, after).await?;
            if page.lines.is_empty() {
                return Ok(lines);
            }
            after = page.next;
            lines.extend(page.lines);
        }
    }

    /// The text of a stage's lines, one per line.
    pub async fn log_text(&self, run: &str, stage: &str) -> anyhow::Result<String> {
        Ok(self
            .logs(run)
            .await?
            .iter()
            .filter(|l| l.stage == stage)
            .map(|l| l.text.as_str())
            .collect::<Vec<_>>()
            .join("\n"))
    }

    /// The stack's current state document.
    pub async fn state(&self, stack: &str) -> anyhow::Result<serde_json::Value> {
        let text = client::stack_state(&self.stack.backend_url, stack, None).await?;
        serde_json::from_str(&text).with_context(|| format!("the state of {stack}: {text}"))
    }

    /// What to print when a wait fails: the run's events and logs, the cluster, the operator.
    pub async fn diagnostics(&self, run: &str) -> String {
        let events = client::get_run(&self.stack.backend_url, run)
            .await
            .map(|v| format!("{:#?}", v.events))
            .unwrap_or_default();
        let logs = self
            .logs(run)
            .await
            .map(|lines| {
                lines
                    .iter()
                    .map(|l| format!("[{} {} {}] {}", l.stage, l.part, l.seq, l.text))
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default();
        let pods = self
            .stack
            .ns
            .kubectl(["get", "pods", "-o", "yaml"])
            .unwrap_or_default();
        let pods: String = pods
            .lines()
            .rev()
            .take(80)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        format!(
            "\n--- run events ---\n{events}\n--- run logs ---\n{logs}\n--- pods (tail) ---\n{pods}{}",
            self.stack.diagnostics()
        )
    }
}

/// Runs a CLI command and fails with its stderr. Async, because the backend it talks to
/// serves from this test's own runtime: a blocking wait here would deadlock it.
pub async fn output_ok(command: Command) -> anyhow::Result<String> {
    let described = format!("{command:?}");
    let output = tokio::process::Command::from(command)
        .output()
        .await
        .with_context(|| format!("running {described}"))?;
    if !output.status.success() {
        bail!(
            "{described} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

pub fn fixture_dir(name: &str) -> PathBuf {
    repo_root().join("tests/fixtures/stacks").join(name)
}

/// The OpenTofu version of the runner image (its Dockerfile's `ARG TOFU_VERSION`).
fn tofu_version() -> anyhow::Result<String> {
    let dockerfile = repo_root().join("images/runner-tofu/Dockerfile");
    let text = std::fs::read_to_string(&dockerfile)?;
    text.lines()
        .find_map(|l| l.strip_prefix("ARG TOFU_VERSION="))
        .map(|v| v.trim().to_string())
        .with_context(|| format!("no ARG TOFU_VERSION= in {}", dockerfile.display()))
}

/// The OpenTofu binary the runner image holds, for the backend's tool store: the image's own
/// stage script writes it (from its cache) once per test process.
fn tofu_binary() -> anyhow::Result<&'static Path> {
    static BINARY: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BINARY
        .get_or_init(|| {
            let out = repo_root().join("target/real-runs-tools");
            let status = Command::new(repo_root().join("images/stages/tofu"))
                .arg(&out)
                .env("TOFU_VERSION", tofu_version().map_err(|e| e.to_string())?)
                .status()
                .map_err(|e| e.to_string())?;
            if !status.success() {
                return Err(format!("images/stages/tofu {}: {status}", out.display()));
            }
            Ok(out.join("tofu"))
        })
        .as_deref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}
