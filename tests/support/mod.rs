//! Support for integration tests that need a real Kubernetes control plane.
//!
//! The cluster is `tests/testenv/testenv` (etcd, kube-apiserver, kube-controller-manager,
//! kube-scheduler and kwok as processes on loopback, one fake node called `fake`). The first test
//! of a test binary that asks for it runs `testenv up`, which is idempotent and serialised with a
//! file lock, so parallel test binaries share one cluster. The cluster is left running after the
//! tests (`tests/testenv/testenv down` stops it; `.ci/run` does that).
//!
//! Tests that need real containers use [`real_node::real_node`]: the same cluster plus a real
//! kubelet (`testenv up --real-node`), or a printed reason why it cannot run here.
//!
//! Set `WORKERPOOL_TEST_KUBECONFIG=/path/to/kubeconfig` to run against another cluster instead
//! (plain `KUBECONFIG` is deliberately ignored, so a developer's real cluster is never touched).
//! Set `WORKERPOOL_TEST_KEEP_NAMESPACES=1` to keep each test's namespace for debugging.
//!
//! ```ignore
//! mod support;
//! use support::*;
//!
//! #[tokio::test]
//! async fn pod_goes_oom() -> anyhow::Result<()> {
//!     let ns = TestNamespace::new("oom").await?;
//!     ns.pods().create(&Default::default(), &test_pod("p")).await?;
//!     wait_for_pod(&ns.client, &ns.name, "p", pod_running).await?;
//!     let pod = finish_pod(&ns.client, &ns.name, "p", Outcome::OomKilled).await?;
//!     ns.cleanup().await
//! }
//! ```
#![allow(dead_code)]

pub mod real_node;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail};
use k8s_openapi::api::authentication::v1::TokenRequest;
use k8s_openapi::api::core::v1::{Namespace, Pod, ServiceAccount};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::json;

/// How long the helpers wait by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// The name of the kwok fake node that testenv creates.
pub const FAKE_NODE: &str = "fake";
/// Label put on every test namespace, so leftovers can be found:
/// `kubectl get ns -l workerpool.dev/test`.
pub const TEST_NAMESPACE_LABEL: &str = "workerpool.dev/test";
/// The annotation the `pod-finish` kwok stage reacts to (tests/testenv/stages/pod-finish.yaml).
pub const FINISH_ANNOTATION: &str = "testenv.workerpool.dev/finish";
pub const FINISH_CONTAINER_ANNOTATION: &str = "testenv.workerpool.dev/container";
pub const FINISH_EXIT_CODE_ANNOTATION: &str = "testenv.workerpool.dev/exit-code";
pub const FINISH_MESSAGE_ANNOTATION: &str = "testenv.workerpool.dev/message";

// ------------------------------------------------------------------------------------------
// The cluster
// ------------------------------------------------------------------------------------------

/// The cluster the tests run against.
#[derive(Debug)]
pub struct Cluster {
    /// The kubeconfig (admin, system:masters).
    pub kubeconfig: PathBuf,
    /// The kubectl to use: the testenv cache's, or `kubectl` from PATH.
    pub kubectl: PathBuf,
    /// The testenv cache's bin dir (kubectl, helm, kwok, ...), when it has been built.
    pub bin_dir: Option<PathBuf>,
}

/// The repository root (where Cargo.toml is).
pub fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `plugins/target/wasm`, after `plugins/build` built every example once per test process.
pub fn plugins_dir() -> &'static Path {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(|| {
        let status = std::process::Command::new(repo_root().join("plugins/build"))
            .arg("--quiet")
            .status()
            .expect("plugins/build runs");
        assert!(status.success(), "plugins/build failed");
        repo_root().join("plugins/target/wasm")
    })
}

/// `tests/testenv/testenv`.
pub fn testenv_script() -> PathBuf {
    repo_root().join("tests/testenv/testenv")
}

/// The cluster, started on first use (once per test process; `testenv up` itself holds a file
/// lock, so concurrent test binaries do not race). Panics with the script's output if it
/// cannot be started: every test that needs a cluster would fail anyway.
pub fn cluster() -> &'static Cluster {
    static CLUSTER: OnceLock<Result<Cluster, String>> = OnceLock::new();
    match CLUSTER.get_or_init(|| start_cluster().map_err(|e| format!("{e:#}"))) {
        Ok(c) => c,
        Err(e) => panic!("the test cluster is not available: {e}"),
    }
}

fn start_cluster() -> anyhow::Result<Cluster> {
    let script = testenv_script();
    let bin_dir = Command::new(&script)
        .arg("bin-dir")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| PathBuf::from(String::from_utf8_lossy(&o.stdout).trim()));

    let kubeconfig = match std::env::var_os("WORKERPOOL_TEST_KUBECONFIG") {
        Some(path) if !path.is_empty() => PathBuf::from(path),
        _ => {
            // stdout carries the `export KUBECONFIG=` line; stderr (progress, a first cold
            // build) goes straight to the test's stderr.
            let out = Command::new(&script)
                .arg("up")
                .stdin(Stdio::null())
                .stderr(Stdio::inherit())
                .output()
                .with_context(|| format!("running {}", script.display()))?;
            if !out.status.success() {
                bail!("`{} up` failed ({})", script.display(), out.status);
            }
            // The last line is `export KUBECONFIG=<path>`.
            let stdout = String::from_utf8_lossy(&out.stdout);
            let path = stdout
                .lines()
                .filter_map(|l| l.strip_prefix("export KUBECONFIG="))
                .next_back()
                .with_context(|| format!("`testenv up` printed no KUBECONFIG line: {stdout}"))?;
            PathBuf::from(path.trim())
        }
    };
    anyhow::ensure!(
        kubeconfig.is_file(),
        "no kubeconfig at {}",
        kubeconfig.display()
    );

    let bin_dir = bin_dir.filter(|d| d.join("kubectl").is_file());
    let kubectl = match &bin_dir {
        Some(dir) => dir.join("kubectl"),
        None => PathBuf::from("kubectl"),
    };
    // A cluster that was already up may carry CRDs from before the last change to src/crd:
    // install the current ones (idempotent, server-side like the seed says).
    let crds = repo_root().join("crds");
    let applied = Command::new(&kubectl)
        .arg("--kubeconfig")
        .arg(&kubeconfig)
        .args(["apply", "--server-side", "--force-conflicts", "-f"])
        .arg(&crds)
        .output()
        .context("applying crds/")?;
    anyhow::ensure!(
        applied.status.success(),
        "kubectl apply -f crds/ failed: {}",
        String::from_utf8_lossy(&applied.stderr)
    );
    Ok(Cluster {
        kubeconfig,
        kubectl,
        bin_dir,
    })
}

/// Install the aws-lc-rs rustls provider (ring is in the dependency graph too, so rustls
/// cannot pick one by itself). Safe to call many times.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A kube Config for the test cluster.
pub async fn config() -> anyhow::Result<Config> {
    install_crypto_provider();
    let path = &cluster().kubeconfig;
    let kubeconfig = Kubeconfig::read_from(path)
        .with_context(|| format!("reading kubeconfig {}", path.display()))?;
    Ok(Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default()).await?)
}

/// A new kube Client for the test cluster (bound to the calling tokio runtime).
pub async fn client() -> anyhow::Result<Client> {
    Ok(Client::try_from(config().await?)?)
}

/// A short-lived (1 h) token of a ServiceAccount, from the TokenRequest API.
pub async fn service_account_token(ns: &str, service_account: &str) -> anyhow::Result<String> {
    let api: Api<ServiceAccount> = Api::namespaced(client().await?, ns);
    let request: TokenRequest =
        serde_json::from_value(json!({ "spec": { "expirationSeconds": 3600 } }))?;
    let response = api
        .create_token_request(service_account, &PostParams::default(), &request)
        .await
        .with_context(|| format!("requesting a token for serviceaccount {ns}/{service_account}"))?;
    response
        .status
        .and_then(|s| s.token)
        .context("TokenRequest answered without a token")
}

/// A kube Config that authenticates as a ServiceAccount (and nothing more), e.g. to run the
/// controller with exactly the rights its RBAC grants.
pub async fn service_account_config(ns: &str, service_account: &str) -> anyhow::Result<Config> {
    let token = service_account_token(ns, service_account).await?;
    let mut config = config().await?;
    config.auth_info = serde_json::from_value(json!({ "token": token }))?;
    Ok(config)
}

/// A Client that authenticates as a ServiceAccount.
pub async fn service_account_client(ns: &str, service_account: &str) -> anyhow::Result<Client> {
    Ok(Client::try_from(
        service_account_config(ns, service_account).await?,
    )?)
}

/// Write a kubeconfig file that authenticates as a ServiceAccount (for a subprocess, e.g. the
/// operator binary or `kubectl --kubeconfig`), and return its path.
pub async fn write_service_account_kubeconfig(
    ns: &str,
    service_account: &str,
    path: &Path,
) -> anyhow::Result<PathBuf> {
    let token = service_account_token(ns, service_account).await?;
    let admin = Kubeconfig::read_from(&cluster().kubeconfig)?;
    let cluster = admin
        .clusters
        .first()
        .and_then(|c| c.cluster.as_ref())
        .context("the test kubeconfig has no cluster")?;
    let yaml = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: testenv\n  cluster:\n    server: {}\n    certificate-authority-data: {}\nusers:\n- name: {sa}\n  user:\n    token: {token}\ncontexts:\n- name: {sa}\n  context: {{cluster: testenv, user: {sa}, namespace: {ns}}}\ncurrent-context: {sa}\n",
        cluster.server.as_deref().unwrap_or_default(),
        cluster
            .certificate_authority_data
            .as_deref()
            .unwrap_or_default(),
        sa = service_account,
    );
    std::fs::write(path, yaml).with_context(|| format!("writing {}", path.display()))?;
    Ok(path.to_owned())
}

// ------------------------------------------------------------------------------------------
// A namespace per test
// ------------------------------------------------------------------------------------------

/// A namespace of its own for one test, deleted by [`TestNamespace::cleanup`] or, failing that,
/// when dropped (also when the test panics).
pub struct TestNamespace {
    pub client: Client,
    pub name: String,
    deleted: bool,
}

impl TestNamespace {
    /// Create `wpt-<prefix>-<unique>` and wait for its `default` ServiceAccount (Pods are
    /// refused until the controller-manager has made it).
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        let client = client().await?;
        let name = unique_name(&format!("wpt-{prefix}"));
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": { "name": name, "labels": { TEST_NAMESPACE_LABEL: "true" } }
        }))?;
        Api::<Namespace>::all(client.clone())
            .create(&PostParams::default(), &ns)
            .await
            .with_context(|| format!("creating namespace {name}"))?;
        let this = TestNamespace {
            client,
            name,
            deleted: false,
        };
        let sa: Api<ServiceAccount> = this.api();
        wait_for("serviceaccount default", DEFAULT_TIMEOUT, || async {
            Ok(sa.get_opt("default").await?)
        })
        .await?;
        Ok(this)
    }

    /// A namespaced Api of any kind in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.name)
    }

    /// `Api<Pod>` in this namespace.
    pub fn pods(&self) -> Api<Pod> {
        self.api()
    }

    /// Run kubectl with `-n <this namespace>` prepended.
    pub fn kubectl<I, S>(&self, args: I) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        kubectl(self.ns_args(args))
    }

    /// Like [`kubectl_stdin`], in this namespace.
    pub fn kubectl_stdin<I, S>(&self, args: I, stdin: &str) -> anyhow::Result<String>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        kubectl_stdin(self.ns_args(args), stdin)
    }

    /// Like [`kubectl_output`], in this namespace.
    pub fn kubectl_output<I, S>(
        &self,
        args: I,
        stdin: Option<&str>,
    ) -> anyhow::Result<KubectlOutput>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        kubectl_output(self.ns_args(args), stdin)
    }

    fn ns_args<I, S>(&self, args: I) -> Vec<std::ffi::OsString>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut v: Vec<std::ffi::OsString> = vec!["-n".into(), self.name.clone().into()];
        v.extend(args.into_iter().map(|a| a.as_ref().to_owned()));
        v
    }

    /// Delete the namespace now (without waiting for it to be finalized).
    pub async fn cleanup(mut self) -> anyhow::Result<()> {
        self.deleted = true;
        if keep_namespaces() {
            eprintln!(
                "keeping namespace {} (WORKERPOOL_TEST_KEEP_NAMESPACES)",
                self.name
            );
            return Ok(());
        }
        delete_namespace(&self.client, &self.name).await
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if keep_namespaces() {
            eprintln!(
                "keeping namespace {} (WORKERPOOL_TEST_KEEP_NAMESPACES)",
                self.name
            );
            return;
        }
        // Drop cannot be async and may run inside (or outside) a tokio runtime: delete from a
        // plain thread with a runtime and a Client of its own, and wait for it.
        let name = self.name.clone();
        let result = std::thread::spawn(move || -> anyhow::Result<()> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let client = client().await?;
                delete_namespace(&client, &name).await
            })
        })
        .join();
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) => eprintln!("warning: deleting namespace {}: {e:#}", self.name),
            Err(_) => eprintln!("warning: deleting namespace {} panicked", self.name),
        }
    }
}

fn keep_namespaces() -> bool {
    std::env::var_os("WORKERPOOL_TEST_KEEP_NAMESPACES").is_some_and(|v| !v.is_empty() && v != "0")
}

async fn delete_namespace(client: &Client, name: &str) -> anyhow::Result<()> {
    match Api::<Namespace>::all(client.clone())
        .delete(name, &DeleteParams::background())
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 404 => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("deleting namespace {name}")),
    }
    release_workers(client, name).await;
    Ok(())
}

/// The test is over and its operator gone or going: its Workers' deregistration finalizers
/// are taken off, so that the namespace really goes. Left on, they keep it Terminating for
/// good, and the namespace controller's retries (LISTs of every resource, Pod deletes) are
/// background load for every later test, and noise in tests/cost.rs's request counts.
async fn release_workers(client: &Client, namespace: &str) {
    let workers: Api<workerpool_operator::crd::Worker> = Api::namespaced(client.clone(), namespace);
    let Ok(list) = workers.list(&Default::default()).await else {
        return;
    };
    let unfinalize = Patch::Merge(json!({"metadata": {"finalizers": null}}));
    for worker in list.items {
        if worker
            .metadata
            .finalizers
            .as_ref()
            .is_some_and(|f| !f.is_empty())
            && let Some(name) = worker.metadata.name.as_deref()
        {
            let _ = workers
                .patch(name, &PatchParams::default(), &unfinalize)
                .await;
        }
    }
}

/// `<prefix>-<unique suffix>`, a valid DNS-1123 label (at most 63 characters), unique across
/// the tests of this run (process id, a counter and the clock).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let suffix = format!("{:x}{n:x}{:04x}", std::process::id(), nanos & 0xffff);
    let mut clean: String = prefix
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    clean.truncate(62 - suffix.len());
    let clean = clean.trim_matches('-');
    if clean.is_empty() {
        format!("t{suffix}")
    } else {
        format!("{clean}-{suffix}")
    }
}

// ------------------------------------------------------------------------------------------
// Waiting
// ------------------------------------------------------------------------------------------

/// Poll `check` every 200 ms until it returns `Ok(Some(value))`, and return that value.
/// Errors from `check` are retried too (the last one is reported on timeout).
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<Option<T>>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        let last = match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => None,
            Err(e) => Some(e),
        };
        if Instant::now() >= deadline {
            return Err(match last {
                Some(e) => e.context(format!("timed out after {timeout:?} waiting for {what}")),
                None => anyhow::anyhow!("timed out after {timeout:?} waiting for {what}"),
            });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Wait (up to [`DEFAULT_TIMEOUT`]) until the Pod exists and `pred` holds; return it.
pub async fn wait_for_pod(
    client: &Client,
    ns: &str,
    name: &str,
    pred: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    wait_for_pod_within(client, ns, name, DEFAULT_TIMEOUT, pred).await
}

/// [`wait_for_pod`] with a timeout of your choice.
pub async fn wait_for_pod_within(
    client: &Client,
    ns: &str,
    name: &str,
    timeout: Duration,
    pred: impl Fn(&Pod) -> bool,
) -> anyhow::Result<Pod> {
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let pred = &pred;
    let api = &api;
    let result = wait_for(&format!("pod {ns}/{name}"), timeout, || async move {
        Ok(api.get_opt(name).await?.filter(|p| pred(p)))
    })
    .await;
    match result {
        Ok(pod) => Ok(pod),
        Err(e) => {
            // Say what the Pod looked like, which is what one wants to know about a timeout.
            let last = match api.get_opt(name).await {
                Ok(Some(pod)) => format!("last status: {:?}", pod.status),
                Ok(None) => "the pod does not exist".to_owned(),
                Err(err) => format!("(could not read it: {err})"),
            };
            Err(e.context(last))
        }
    }
}

/// The Pod's `status.phase` ("" when unset).
pub fn pod_phase(pod: &Pod) -> &str {
    pod.status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("")
}

pub fn pod_running(pod: &Pod) -> bool {
    pod_phase(pod) == "Running"
}

pub fn pod_finished(pod: &Pod) -> bool {
    matches!(pod_phase(pod), "Succeeded" | "Failed")
}

/// The Pod condition of this type (e.g. "PodScheduled", "Ready"), if present.
pub fn pod_condition<'a>(
    pod: &'a Pod,
    type_: &str,
) -> Option<&'a k8s_openapi::api::core::v1::PodCondition> {
    pod.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == type_)
}

/// The `terminated` state of a container, if it has terminated.
pub fn container_terminated<'a>(
    pod: &'a Pod,
    container: &str,
) -> Option<&'a k8s_openapi::api::core::v1::ContainerStateTerminated> {
    pod.status
        .as_ref()?
        .container_statuses
        .as_ref()?
        .iter()
        .find(|c| c.name == container)?
        .state
        .as_ref()?
        .terminated
        .as_ref()
}

/// A minimal Pod (one container called `worker`, image `busybox:stable`, restartPolicy
/// Never). kwok does not pull images, so the image need not exist.
pub fn test_pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": { "name": name },
        "spec": {
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 0,
            "containers": [{
                "name": "worker",
                "image": "busybox:stable",
                "command": ["sleep", "3600"],
                "resources": { "requests": { "cpu": "100m", "memory": "64Mi" } }
            }]
        }
    }))
    .expect("a valid Pod")
}

// ------------------------------------------------------------------------------------------
// Finishing Pods (kwok stage tests/testenv/stages/pod-finish.yaml)
// ------------------------------------------------------------------------------------------

/// How kwok should finish a Running Pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Phase Succeeded; every container exit 0, reason Completed.
    Succeeded,
    /// Phase Failed; the target container exit 1 (or [`Finish::exit_code`]), reason Error.
    Failed,
    /// Phase Failed; the target container exit 137, reason OOMKilled.
    OomKilled,
    /// Phase Failed, status.reason Evicted, a message, DisruptionTarget condition.
    Evicted,
    /// Phase Failed, status.reason DeadlineExceeded: what the kubelet writes when
    /// activeDeadlineSeconds passes (kwok does not enforce deadlines itself).
    DeadlineExceeded,
}

impl Outcome {
    pub fn annotation_value(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Failed => "failed",
            Outcome::OomKilled => "oomkilled",
            Outcome::Evicted => "evicted",
            Outcome::DeadlineExceeded => "deadlineexceeded",
        }
    }
}

/// An [`Outcome`] with its options. `Outcome` converts into it, so
/// `finish_pod(.., Outcome::Failed)` and `finish_pod(.., Finish::failed().exit_code(3))` both work.
#[derive(Clone, Debug)]
pub struct Finish {
    pub outcome: Outcome,
    /// The container that fails (default `worker`, or the first container).
    pub container: Option<String>,
    /// Exit code for [`Outcome::Failed`] (default 1).
    pub exit_code: Option<i32>,
    /// Termination message, or the eviction message for [`Outcome::Evicted`].
    pub message: Option<String>,
}

impl From<Outcome> for Finish {
    fn from(outcome: Outcome) -> Self {
        Finish {
            outcome,
            container: None,
            exit_code: None,
            message: None,
        }
    }
}

impl Finish {
    pub fn succeeded() -> Self {
        Outcome::Succeeded.into()
    }
    pub fn failed() -> Self {
        Outcome::Failed.into()
    }
    pub fn oom_killed() -> Self {
        Outcome::OomKilled.into()
    }
    pub fn evicted() -> Self {
        Outcome::Evicted.into()
    }
    pub fn container(mut self, name: impl Into<String>) -> Self {
        self.container = Some(name.into());
        self
    }
    pub fn exit_code(mut self, code: i32) -> Self {
        self.exit_code = Some(code);
        self
    }
    pub fn message(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// The annotations that make kwok finish a Pod this way. Put them on a Pod at creation to
    /// have it finish as soon as it runs.
    pub fn annotations(&self) -> BTreeMap<String, String> {
        let mut a = BTreeMap::new();
        a.insert(
            FINISH_ANNOTATION.to_owned(),
            self.outcome.annotation_value().to_owned(),
        );
        if let Some(c) = &self.container {
            a.insert(FINISH_CONTAINER_ANNOTATION.to_owned(), c.clone());
        }
        if let Some(code) = self.exit_code {
            a.insert(FINISH_EXIT_CODE_ANNOTATION.to_owned(), code.to_string());
        }
        if let Some(m) = &self.message {
            a.insert(FINISH_MESSAGE_ANNOTATION.to_owned(), m.clone());
        }
        a
    }
}

/// Annotate the Pod so kwok finishes it, wait until it is Succeeded or Failed, and return it.
/// The Pod must be (or become) Running on the fake node.
pub async fn finish_pod(
    client: &Client,
    ns: &str,
    name: &str,
    finish: impl Into<Finish>,
) -> anyhow::Result<Pod> {
    let finish = finish.into();
    let api: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = json!({ "metadata": { "annotations": finish.annotations() } });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .with_context(|| format!("annotating pod {ns}/{name}"))?;
    wait_for_pod(client, ns, name, pod_finished)
        .await
        .with_context(|| format!("pod {ns}/{name} did not finish as {:?}", finish.outcome))
}

// ------------------------------------------------------------------------------------------
// kubectl
// ------------------------------------------------------------------------------------------

/// What a kubectl run printed.
#[derive(Debug)]
pub struct KubectlOutput {
    pub success: bool,
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for KubectlOutput {
    fn from(o: Output) -> Self {
        KubectlOutput {
            success: o.status.success(),
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

fn kubectl_command<I, S>(args: I) -> Command
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let c = cluster();
    let mut cmd = Command::new(&c.kubectl);
    cmd.arg("--kubeconfig").arg(&c.kubeconfig).args(args);
    cmd
}

/// Run kubectl (the testenv's, with the test kubeconfig), optionally feeding `stdin`, and
/// return what it printed whether or not it succeeded. Blocks the calling thread; see
/// [`kubectl_async`] for tests that run a controller on the same runtime.
pub fn kubectl_output<I, S>(args: I, stdin: Option<&str>) -> anyhow::Result<KubectlOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let mut cmd = kubectl_command(args);
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .with_context(|| format!("running {:?}", cmd.get_program()))?;
    if let Some(input) = stdin {
        // Written before waiting; kubectl reads all of stdin before it prints much.
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())?;
    }
    Ok(child.wait_with_output()?.into())
}

/// Run kubectl and return its stdout; an error (with stderr) if it fails.
pub fn kubectl<I, S>(args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = kubectl_output(&args, None)?;
    check_kubectl(&args, out)
}

/// `kubectl <args>` with `stdin` (e.g. `kubectl_stdin(["apply", "-f", "-"], yaml)`); stdout,
/// or an error with stderr.
pub fn kubectl_stdin<I, S>(args: I, stdin: &str) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let out = kubectl_output(&args, Some(stdin))?;
    check_kubectl(&args, out)
}

/// [`kubectl`] without blocking the runtime: stdout, or an error with stderr.
pub async fn kubectl_async<I, S>(args: I) -> anyhow::Result<String>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    let args: Vec<std::ffi::OsString> = args.into_iter().map(|a| a.as_ref().to_owned()).collect();
    let mut cmd = tokio::process::Command::from(kubectl_command(&args));
    cmd.stdin(Stdio::null());
    let out = cmd.output().await.context("running kubectl")?;
    check_kubectl(&args, out.into())
}

fn check_kubectl(args: &[std::ffi::OsString], out: KubectlOutput) -> anyhow::Result<String> {
    if out.success {
        Ok(out.stdout)
    } else {
        bail!(
            "kubectl {} failed ({:?}): {}",
            args.iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" "),
            out.code,
            out.stderr.trim()
        )
    }
}
