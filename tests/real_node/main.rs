//! Run Pods on the real node (`tests/testenv/testenv up --real-node`: a kubelet with
//! containerd and runc), built from the images `images/build` writes. Each test reads the Pod
//! status a real kubelet wrote and feeds it to the operator's own classifier
//! (`controller::outcome::classify`), so the causes the operator reports are proven against a
//! real kubelet, not only against kwok's imitation of one.
//!
//! Where the node cannot start here, every test prints why and passes without running
//! (`WORKERPOOL_REQUIRE_REAL_NODE=1` makes that a failure; scripts/test sets it when the
//! preflight passes).

#[path = "../support/mod.rs"]
mod support;

#[path = "../broker/mod.rs"]
mod broker;
#[path = "../e2e/stack.rs"]
mod stack;

mod identity;
mod network;
mod outcomes;
mod runs;

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::PostParams;
use serde_json::json;
use workerpool_operator::controller::outcome::{Ending, PodProgress, Waits, classify};
use workerpool_operator::pod::{INIT_CONTAINER, SPACELIFT_UID, WORKER_CONTAINER, WORKSPACE_PATH};

use support::real_node::RealNode;
use support::{TestNamespace, wait_for_pod_within};

/// How long a Pod on the real node may take to reach the state a test waits for: seconds
/// here, but the machine is shared with parallel builds.
const WAIT: Duration = Duration::from_secs(90);

/// A Pod shaped like a run Pod where it matters to the kubelet: an `init` container and a
/// `worker` container of the runner image, uid/gid 1983 with fsGroup 1983, the workspace as an
/// emptyDir at the seed's path, restartPolicy Never. Each container runs a shell script.
fn run_pod(node: &RealNode, name: &str, init: Option<&str>, worker: &str) -> Pod {
    let container = |name: &str, script: &str| {
        json!({
            "name": name,
            "image": node.images.runner_tofu,
            "imagePullPolicy": "Never",
            "command": ["sh", "-c", script],
            "volumeMounts": [{"name": "workspace", "mountPath": WORKSPACE_PATH}],
        })
    };
    let mut pod: Pod = serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name},
        "spec": {
            "restartPolicy": "Never",
            // busybox's sh as PID 1 ignores SIGTERM: do not wait 30 s for it.
            "terminationGracePeriodSeconds": 1,
            "securityContext": {"runAsUser": SPACELIFT_UID, "runAsGroup": SPACELIFT_UID, "fsGroup": SPACELIFT_UID},
            "volumes": [{"name": "workspace", "emptyDir": {}}],
            "initContainers": init.map(|s| vec![container(INIT_CONTAINER, s)]).unwrap_or_default(),
            "containers": [container(WORKER_CONTAINER, worker)],
        }
    }))
    .expect("a valid Pod");
    node.place(&mut pod);
    pod
}

/// The worker container of a Pod, to change it.
fn worker(pod: &mut Pod) -> &mut k8s_openapi::api::core::v1::Container {
    pod.spec
        .as_mut()
        .and_then(|s| s.containers.iter_mut().find(|c| c.name == WORKER_CONTAINER))
        .expect("a worker container")
}

/// Create the Pod and wait until `until` holds for it.
async fn run(ns: &TestNamespace, pod: &Pod, until: impl Fn(&Pod) -> bool) -> anyhow::Result<Pod> {
    let name = pod.metadata.name.clone().context("the Pod has a name")?;
    ns.pods().create(&PostParams::default(), pod).await?;
    wait_for_pod_within(&ns.client, &ns.name, &name, WAIT, until).await
}

/// What the operator's classifier makes of the Pod now.
fn verdict(pod: &Pod, waits: &Waits) -> PodProgress {
    classify(pod, Timestamp::now(), waits)
}

fn ended(pod: &Pod, waits: &Waits) -> Ending {
    match verdict(pod, waits) {
        PodProgress::Ended(e) => e,
        other => panic!(
            "the classifier says {other:?} for a Pod with status {:?}",
            pod.status
        ),
    }
}

/// `kubectl logs` of one container (through the apiserver and the kubelet, as a user reads
/// them).
fn logs(ns: &TestNamespace, pod: &str, container: &str) -> anyhow::Result<String> {
    ns.kubectl(["logs", pod, "-c", container])
}
