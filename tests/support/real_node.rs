//! The real node of the test control plane: `tests/testenv/testenv up --real-node` joins a
//! kubelet with containerd and runc to the cluster as node `real-0`, so a test can run real
//! containers from the images `images/build` writes (tests/testenv/README.md, "The real node").
//!
//! ```ignore
//! let Some(node) = real_node() else { return Ok(()) }; // skipped here, with the reason printed
//! let mut pod = test_pod("p");
//! node.place(&mut pod);                                  // its toleration and node selector
//! ```
//!
//! Where the node cannot start (not root, no cgroups, no runc ...) [`real_node`] prints why and
//! returns `None`, and the test returns early. With `WORKERPOOL_REQUIRE_REAL_NODE=1` (set by
//! `scripts/test` when the preflight passes) it panics instead, so a run that should have the
//! node can never skip its tests silently. A node that passes the preflight but fails to start
//! is a failure either way.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Pod, Toleration};

use super::{cluster, repo_root, testenv_script};

/// Set to `1` to make a test that needs the real node fail, not skip, where it cannot start.
pub const REQUIRE_REAL_NODE: &str = "WORKERPOOL_REQUIRE_REAL_NODE";

/// The real node, as `target/testenv/node/env` describes it.
#[derive(Clone, Debug)]
pub struct RealNode {
    /// The Node's name (`real-0`).
    pub name: String,
    /// The node's IP: its bridge's address on this machine. A server a Pod must reach (the
    /// backend, a test's own) binds there; Pods reach nothing off the bridge's /24.
    pub ip: Ipv4Addr,
    /// The taint and label key (`testenv.workerpool.dev/real-node`), value `true`: put
    /// [`RealNode::tolerations`] and [`RealNode::node_selector`] into a pool's `spec.pod`.
    pub key: String,
    /// The images imported into the node's containerd.
    pub images: Images,
}

/// References of the images `images/build` made and the node imported (pull policy
/// `IfNotPresent` or `Never`: they are in no registry).
#[derive(Clone, Debug)]
pub struct Images {
    /// `localhost/workerpool-operator/runner-tofu:<version>`: OpenTofu, busybox's shell and
    /// applets, user spacelift (1983).
    pub runner_tofu: String,
    /// `localhost/workerpool-operator/launcher:<version>`, when the checkout could build it.
    pub launcher: Option<String>,
    /// The sandbox image.
    pub pause: String,
}

impl RealNode {
    /// The toleration of the node's `NoSchedule` taint.
    pub fn tolerations(&self) -> Vec<Toleration> {
        vec![Toleration {
            key: Some(self.key.clone()),
            operator: Some("Equal".into()),
            value: Some("true".into()),
            effect: Some("NoSchedule".into()),
            ..Toleration::default()
        }]
    }

    /// The node selector that picks the node (and nothing else).
    pub fn node_selector(&self) -> BTreeMap<String, String> {
        BTreeMap::from([(self.key.clone(), "true".to_owned())])
    }

    /// Make a Pod land on this node: its toleration and node selector.
    pub fn place(&self, pod: &mut Pod) {
        let spec = pod.spec.get_or_insert_with(Default::default);
        spec.tolerations
            .get_or_insert_with(Vec::new)
            .extend(self.tolerations());
        spec.node_selector
            .get_or_insert_with(BTreeMap::new)
            .extend(self.node_selector());
    }
}

/// The real node, started on first use (once per test process; `testenv up --real-node` is
/// idempotent and holds testenv's lock). `None`, after printing why, where it cannot start;
/// a panic instead under `WORKERPOOL_REQUIRE_REAL_NODE=1`, or when it passes the preflight
/// and still fails to start.
pub fn real_node() -> Option<&'static RealNode> {
    static NODE: OnceLock<Result<RealNode, Unavailable>> = OnceLock::new();
    let test = std::thread::current()
        .name()
        .unwrap_or("this test")
        .to_owned();
    match NODE.get_or_init(start_real_node) {
        Ok(node) => Some(node),
        Err(Unavailable::Here(reason)) if !required() => {
            eprintln!("SKIPPED {test}: {reason}");
            None
        }
        Err(Unavailable::Here(reason)) => {
            panic!("{REQUIRE_REAL_NODE}=1, but {reason}")
        }
        Err(Unavailable::Failed(error)) => panic!("the real node did not start: {error}"),
    }
}

enum Unavailable {
    /// This machine cannot run it (the preflight's words).
    Here(String),
    /// It should have started and did not.
    Failed(String),
}

fn required() -> bool {
    std::env::var(REQUIRE_REAL_NODE).is_ok_and(|v| v == "1")
}

fn start_real_node() -> Result<RealNode, Unavailable> {
    if std::env::var_os("WORKERPOOL_TEST_KUBECONFIG").is_some_and(|v| !v.is_empty()) {
        return Err(Unavailable::Here(
            "WORKERPOOL_TEST_KUBECONFIG is set: the real node joins only tests/testenv's cluster"
                .into(),
        ));
    }
    let script = testenv_script();
    let preflight = Command::new(&script)
        .arg("preflight")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| Unavailable::Failed(format!("running {} preflight: {e}", script.display())))?;
    if !preflight.status.success() {
        let said = String::from_utf8_lossy(&preflight.stdout);
        let said: Vec<&str> = said
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        return Err(Unavailable::Here(said.join(" ")));
    }
    let _ = cluster(); // the control plane first, as every other test starts it
    let up = Command::new(&script)
        .args(["up", "--real-node"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .status()
        .map_err(|e| Unavailable::Failed(format!("running {} up: {e}", script.display())))?;
    if !up.success() {
        return Err(Unavailable::Failed(format!(
            "`{} up --real-node` failed ({up}); its output is above, the logs are in target/testenv/logs",
            script.display()
        )));
    }
    read_env(&node_env_path()).map_err(|e| Unavailable::Failed(format!("{e:#}")))
}

/// `target/testenv/node/env`.
pub fn node_env_path() -> PathBuf {
    repo_root().join("target/testenv/node/env")
}

fn read_env(path: &std::path::Path) -> anyhow::Result<RealNode> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let vars: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let get = |key: &str| {
        vars.get(key)
            .map(|v| v.to_string())
            .with_context(|| format!("{} has no {key}", path.display()))
    };
    let label = get("NODE_LABEL")?;
    let Some((key, "true")) = label.split_once('=') else {
        bail!("{}: NODE_LABEL={label} is not <key>=true", path.display());
    };
    Ok(RealNode {
        name: get("NODE_NAME")?,
        ip: get("NODE_IP")?
            .parse()
            .with_context(|| format!("{}: NODE_IP", path.display()))?,
        key: key.to_owned(),
        images: Images {
            runner_tofu: get("IMAGE_RUNNER_TOFU")?,
            launcher: get("IMAGE_LAUNCHER").ok(),
            pause: get("IMAGE_PAUSE")?,
        },
    })
}
