//! The whole system for one test: its own namespace on the real control plane, a real Mosquitto
//! with mutual TLS, the reference backend, and the operator binary as a separate process
//! (so a test can kill it), watching only the test's namespace.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{ListParams, Patch, PatchParams};
use workerpool_operator::backend::client;
use workerpool_operator::backend::serve::{ServeOptions, Server};
use workerpool_operator::backend::state::StateDir;
use workerpool_operator::backend::store::{RunView, SubmitRun};
use workerpool_operator::crd::{LABEL_RUN_ID, Worker, WorkerPool};
use workerpool_operator::protocol::Message;

use crate::broker::{Broker, backend_binary};
use crate::support::{self, Finish, TestNamespace};

/// How long the operator may take for anything a user would watch happen.
pub const WAIT: Duration = Duration::from_secs(60);

pub struct Stack {
    pub ns: TestNamespace,
    pub broker: Broker,
    pub backend: Server,
    pub backend_url: String,
    operator: Option<KillOnDrop>,
    operator_args: Vec<String>,
    /// A cgroup (v1 directory) the operator joins before its first instruction: it is
    /// started through `sh`, which writes its own pid there and then execs the operator.
    pub operator_cgroup: Option<PathBuf>,
    /// The kubeconfig the operator runs with (the admin's unless [`Stack::run_operator_as`]).
    kubeconfig: PathBuf,
    log: PathBuf,
    pub dir: tempfile::TempDir,
}

impl Stack {
    /// Namespace, broker and backend; the operator is started by [`Stack::start_operator`].
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        Self::new_with(prefix, |_| {}).await
    }

    /// As [`Stack::new`], with the backend's options changed by `configure` (the launcher API,
    /// the launcher image).
    pub async fn new_with(
        prefix: &str,
        configure: impl FnOnce(&mut ServeOptions),
    ) -> anyhow::Result<Self> {
        support::install_crypto_provider();
        let ns = TestNamespace::new(prefix).await?;
        let broker = Broker::start();
        let mut options = ServeOptions {
            listen: "127.0.0.1:0".parse()?,
            tick: Duration::from_millis(200),
            ..ServeOptions::default()
        };
        configure(&mut options);
        let backend = Server::start(&StateDir::new(&broker.state_dir), options).await?;
        let backend_url = format!("http://{}", backend.addr);
        let dir = tempfile::tempdir()?;
        let log = dir.path().join("operator.log");
        Ok(Self {
            ns,
            broker,
            backend,
            backend_url,
            operator: None,
            operator_args: Vec::new(),
            operator_cgroup: None,
            kubeconfig: support::cluster().kubeconfig.clone(),
            log,
            dir,
        })
    }

    /// The usual start of a scenario: credentials for pool `name` (in a Secret of the same
    /// name), the operator, and the pool of `size` (plus `extra` spec YAML), registered.
    pub async fn with_pool(
        prefix: &str,
        name: &str,
        size: i32,
        extra: &str,
    ) -> anyhow::Result<Self> {
        let mut stack = Self::new(prefix).await?;
        stack.create_credentials(name, name)?;
        stack.start_operator(&[])?;
        stack.apply(&pool_yaml(name, name, size, extra))?;
        stack.wait_registered(name, size).await?;
        Ok(stack)
    }

    /// Starts the operator with test-friendly waits, plus `extra` flags.
    pub fn start_operator(&mut self, extra: &[&str]) -> anyhow::Result<()> {
        if self.operator.is_some() {
            bail!("the operator already runs");
        }
        let mut args: Vec<String> = [
            "run",
            "--health-probe-bind-address=0",
            "--log-format=text",
            "--image-pull-timeout=5s",
            "--unschedulable-timeout=5s",
            "--deregistration-timeout=5s",
            "--heartbeat-interval=10s",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(format!("--namespaces={}", self.ns.name));
        self.operator_args = with_flags(args, extra);
        self.spawn_operator()
    }

    /// Runs the operator (from its next start on) with this kubeconfig, e.g. a ServiceAccount's.
    pub fn run_operator_as(&mut self, kubeconfig: PathBuf) {
        self.kubeconfig = kubeconfig;
    }

    fn spawn_operator(&mut self) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let mut command = match &self.operator_cgroup {
            Some(cgroup) => {
                let mut sh = Command::new("sh");
                sh.args(["-c", "echo $$ >\"$0/cgroup.procs\" && exec \"$@\""])
                    .arg(cgroup)
                    .arg(operator_binary());
                sh
            }
            None => Command::new(operator_binary()),
        };
        let child = command
            .args(&self.operator_args)
            .env("KUBECONFIG", &self.kubeconfig)
            .env("RUST_LOG", "info,workerpool_operator=debug")
            .env_remove("RUST_BACKTRACE")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting workerpool-operator")?;
        self.operator = Some(KillOnDrop(child));
        Ok(())
    }

    /// Kills the operator without warning (SIGKILL), as a crash would.
    pub fn kill_operator(&mut self) {
        self.operator = None;
    }

    /// Starts the operator again with the same flags.
    pub fn restart_operator(&mut self) -> anyhow::Result<()> {
        self.kill_operator();
        self.spawn_operator()
    }

    /// Stops the operator as a rollout does (SIGTERM, then waits up to a minute for it to
    /// end) and starts it again with the same flags.
    pub async fn roll_operator(&mut self) -> anyhow::Result<()> {
        if let Some(mut running) = self.operator.take() {
            let pid = running.0.id().to_string();
            let status = Command::new("kill").args(["-TERM", &pid]).status()?;
            anyhow::ensure!(status.success(), "kill -TERM {pid}: {status}");
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
            while running.0.try_wait()?.is_none() {
                anyhow::ensure!(
                    std::time::Instant::now() < deadline,
                    "the operator did not end within a minute of SIGTERM"
                );
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
        }
        self.spawn_operator()
    }

    /// Whether the operator process is still running.
    pub fn operator_running(&mut self) -> bool {
        matches!(
            self.operator.as_mut().map(|c| c.0.try_wait()),
            Some(Ok(None))
        )
    }

    /// The operator process's id, while it runs.
    pub fn operator_pid(&self) -> Option<u32> {
        self.operator.as_ref().map(|c| c.0.id())
    }

    pub fn operator_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Issues credentials for a pool with the backend's CLI and applies the Secret (named
    /// `secret`) exactly as the seed's "Create a Secret" step does. Returns the pool ULID.
    pub fn create_credentials(&self, pool: &str, secret: &str) -> anyhow::Result<String> {
        let out = self.dir.path().join(format!("pool-{pool}"));
        let output = Command::new(backend_binary())
            .arg("--state-dir")
            .arg(&self.broker.state_dir)
            .args([
                "pool",
                "create",
                "--name",
                pool,
                "--key-bits",
                "2048",
                "--out-dir",
            ])
            .arg(&out)
            .output()?;
        if !output.status.success() {
            bail!("pool create: {}", String::from_utf8_lossy(&output.stderr));
        }
        let manifest = std::fs::read_to_string(out.join(format!("{pool}-secret.yaml")))?;
        let manifest =
            manifest.replacen(&format!("name: {pool}\n"), &format!("name: {secret}\n"), 1);
        self.ns.kubectl_stdin(["apply", "-f", "-"], &manifest)?;
        let pools = client_pools(&self.broker)?;
        pools
            .get(pool)
            .cloned()
            .with_context(|| format!("pool {pool} not in `pool list`: {pools:?}"))
    }

    /// `kubectl apply --server-side -f -` in the test namespace.
    pub fn apply(&self, yaml: &str) -> anyhow::Result<String> {
        self.ns
            .kubectl_stdin(["apply", "--server-side", "-f", "-"], yaml)
    }

    pub fn pools(&self) -> Api<WorkerPool> {
        self.ns.api()
    }

    pub fn workers(&self) -> Api<Worker> {
        self.ns.api()
    }

    pub fn pods(&self) -> Api<Pod> {
        self.ns.pods()
    }

    /// Waits until the pool reports `n` registered workers.
    pub async fn wait_registered(&self, pool: &str, n: i32) -> anyhow::Result<WorkerPool> {
        self.wait_registered_within(pool, n, WAIT).await
    }

    /// [`Stack::wait_registered`] with a bound of its own (a large pool takes longer).
    pub async fn wait_registered_within(
        &self,
        pool: &str,
        n: i32,
        within: Duration,
    ) -> anyhow::Result<WorkerPool> {
        let api = self.pools();
        support::wait_for(
            &format!("pool {pool} with {n} registered workers"),
            within,
            || {
                let api = api.clone();
                async move {
                    let pool = api.get(pool).await?;
                    let actual = pool.status.as_ref().and_then(|s| s.actual_pool_size);
                    Ok((actual == Some(n)).then_some(pool))
                }
            },
        )
        .await
        .with_context(|| self.diagnostics())
    }

    /// The pool's Workers, with their statuses.
    pub async fn worker_list(&self) -> anyhow::Result<Vec<Worker>> {
        Ok(self.workers().list(&ListParams::default()).await?.items)
    }

    /// Queues a run on the backend.
    pub async fn submit(
        &self,
        pool: &str,
        image: &str,
        metadata: &[(&str, &str)],
    ) -> anyhow::Result<RunView> {
        let request = SubmitRun {
            pool: pool.into(),
            runner_image: Some(image.into()),
            metadata: metadata
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ..SubmitRun::default()
        };
        Ok(client::submit_run(&self.backend_url, &request).await?)
    }

    /// The backend's view of a run.
    pub async fn run(&self, id: &str) -> anyhow::Result<RunView> {
        let runs = client::list_runs(&self.backend_url, None).await?;
        runs.into_iter()
            .find(|r| r.id == id)
            .with_context(|| format!("run {id} unknown to the backend"))
    }

    /// Waits until the backend sees the run in `state`.
    pub async fn wait_run(&self, id: &str, state: &str) -> anyhow::Result<RunView> {
        support::wait_for(&format!("run {id} {state}"), WAIT, || async move {
            let run = self.run(id).await?;
            Ok((run.state == state).then_some(run))
        })
        .await
        .with_context(|| self.diagnostics())
    }

    /// Waits until the Pod `name` no longer exists; `what` names the wait in its error.
    pub async fn wait_pod_gone(&self, what: &str, name: &str) -> anyhow::Result<()> {
        let pods = self.pods();
        support::wait_for(what, WAIT, || async {
            Ok(pods.get_opt(name).await?.is_none().then_some(()))
        })
        .await
    }

    /// Waits for the run's Pod to be Running, and returns its name.
    pub async fn wait_run_pod(&self, run_id: &str) -> anyhow::Result<Pod> {
        let pods = self.pods();
        let selector = format!("{LABEL_RUN_ID}={run_id}");
        support::wait_for(&format!("a Running Pod for run {run_id}"), WAIT, || {
            let pods = pods.clone();
            let selector = selector.clone();
            async move {
                let list = pods.list(&ListParams::default().labels(&selector)).await?;
                Ok(list.items.into_iter().find(support::pod_running))
            }
        })
        .await
        .with_context(|| self.diagnostics())
    }

    /// Makes kwok end a run Pod (as a kubelet would), without waiting: the operator may delete
    /// the Pod as soon as it has finished.
    pub async fn finish(&self, pod: &str, finish: impl Into<Finish>) -> anyhow::Result<()> {
        let patch = serde_json::json!({"metadata": {"annotations": finish.into().annotations()}});
        self.pods()
            .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
        Ok(())
    }

    /// What to print when a wait fails: the operator's log tail and the cluster objects.
    pub fn diagnostics(&self) -> String {
        let log = self.operator_log();
        let tail: Vec<&str> = log.lines().rev().take(40).collect();
        let objects = self
            .ns
            .kubectl(["get", "workerpools,workers,pods", "-o", "wide"])
            .unwrap_or_default();
        format!(
            "\n--- objects ---\n{objects}\n--- operator log (last 40 lines) ---\n{}",
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )
    }
}

impl Stack {
    /// Publishes a message to a worker as the backend does: with the backend's certificate,
    /// under a client id of its own (the running backend keeps its session).
    pub async fn publish_as_backend(
        &self,
        pool: ulid::Ulid,
        message: &Message,
    ) -> anyhow::Result<()> {
        // On the running backend's own connection: the broker gives a certificate one client
        // id, so a second connection with the backend's certificate would take its session.
        self.backend.publish_unrecorded(pool, message).await?;
        Ok(())
    }
}

/// Another operator process on the same namespace (a second replica).
pub struct Replica {
    child: Child,
    log: PathBuf,
}

impl Replica {
    pub fn start(stack: &Stack, extra: &[&str]) -> anyhow::Result<Self> {
        let log = stack
            .dir
            .path()
            .join(format!("replica-{}.log", ulid::Ulid::generate()));
        let mut args = stack.operator_args.clone();
        args.retain(|a| !a.starts_with("--leader"));
        let args = with_flags(args, extra);
        let child = Command::new(operator_binary())
            .args(&args)
            .env("KUBECONFIG", &stack.kubeconfig)
            .env("RUST_LOG", "info,workerpool_operator=debug")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        Ok(Self { child, log })
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `args` with `extra` appended; an extra `--flag=value` replaces the same flag in `args`
/// (the operator refuses a flag given twice).
fn with_flags(mut args: Vec<String>, extra: &[&str]) -> Vec<String> {
    let flag = |arg: &str| arg.split_once('=').map_or(arg, |(f, _)| f).to_string();
    args.retain(|a| extra.iter().all(|e| flag(e) != flag(a)));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

/// The operator binary cargo built for these tests, or `WORKERPOOL_OPERATOR_BIN` when set (a
/// build directory shared by several checkouts may hold another checkout's build at the usual
/// path by the time a test starts it).
pub fn operator_binary() -> PathBuf {
    std::env::var_os("WORKERPOOL_OPERATOR_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_workerpool-operator")))
}

/// A child process killed when dropped, so a failing test leaves no operator behind.
pub struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn client_pools(broker: &Broker) -> anyhow::Result<BTreeMap<String, String>> {
    let state = StateDir::new(&broker.state_dir);
    let store = state.open_store()?;
    Ok(store.pools()?.into_iter().map(|p| (p.name, p.id)).collect())
}

/// A WorkerPool manifest for `name` reading credentials from Secret `secret`, with `extra`
/// YAML appended under `spec:` (indented by two spaces).
/// A pool spec's `pod:` that mounts the seed's initialization policy from ConfigMap `name`
/// (key `initialization-policy.rego`), for [`pool_yaml`]'s `extra`.
pub fn initialization_policy_yaml(name: &str) -> String {
    r#"  pod:
    volumes:
      - name: initialization-policy
        configMap:
          name: NAME
    initContainer:
      volumeMounts:
        - name: initialization-policy
          mountPath: "/opt/spacelift/policies/initialization"
          readOnly: true
      env:
        - name: "SPACELIFT_LAUNCHER_RUN_INITIALIZATION_POLICY"
          value: "/opt/spacelift/policies/initialization/initialization-policy.rego"
"#
    .replace("NAME", name)
}

pub fn pool_yaml(name: &str, secret: &str, size: i32, extra: &str) -> String {
    format!(
        "apiVersion: workers.spacelift.io/v1beta1
kind: WorkerPool
metadata:
  name: {name}
spec:
  poolSize: {size}
  token:
    secretKeyRef:
      name: {secret}
      key: token
  privateKey:
    secretKeyRef:
      name: {secret}
      key: privateKey
{extra}"
    )
}
