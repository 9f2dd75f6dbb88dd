//! The guard in the operator on the real control plane: a pool plugin (a ConfigMap any
//! namespace owner can write) asks for a privileged sidecar, the node's filesystem, another
//! ServiceAccount, a node of its choosing and every registry; the run is denied with the
//! guard's reasons on the Worker's event and at the backend, and no Pod exists.

use kube::ResourceExt;
use kube::api::ListParams;
use workerpool_operator::crd::LABEL_RUN_ID;

use crate::built_plugin;
use crate::stack::{Stack, pool_yaml};

const RUNNER: &str = "public.ecr.aws/spacelift/runner-terraform:1.5.7";

#[tokio::test]
async fn a_widening_pool_plugin_is_denied_with_the_guards_reasons() -> anyhow::Result<()> {
    let mut stack = Stack::new("guard-widen").await?;
    stack.create_credentials("wide", "wide")?;
    let wasm = built_plugin("widen");
    stack.ns.kubectl([
        "create",
        "configmap",
        "widen",
        &format!("--from-file=plugin.wasm={}", wasm.display()),
    ])?;
    let guard = stack.dir.path().join("run-pod-guard.yaml");
    std::fs::write(&guard, "level: baseline\nserviceAccounts: [default]\n")?;
    stack.start_operator(&[&format!("--run-pod-guard={}", guard.display())])?;
    let spec = r#"  allowedRunnerImageHosts: [public.ecr.aws]
  plugins:
    - configMap: widen
      settings:
        do: [privileged-sidecar, host-path, service-account, node-name, all-image-hosts]
"#;
    stack.apply(&pool_yaml("wide", "wide", 1, spec))?;
    stack.wait_registered("wide", 1).await?;

    let run = stack.submit("wide", RUNNER, &[]).await?;
    let denied = stack.wait_run(&run.id, "denied").await?;
    let ns = &stack.ns.name;
    let from = "(from pool plugin \"widen\")";
    let expected = [
        format!(
            "guard baseline: spec.containers[escape].securityContext.privileged is true {from}: privileged containers are not allowed at level baseline; ask your cluster admin for level privileged in namespace {ns}"
        ),
        format!(
            "guard baseline: spec.volumes[host].hostPath is set {from}: hostPath volumes are not allowed"
        ),
        format!(
            "guard serviceAccounts: spec.serviceAccountName is \"admin\" {from}: run Pods in namespace {ns} may run only as [default]"
        ),
        format!(
            "guard nodeName: spec.nodeName is \"control-plane\" {from}: a nodeName skips the scheduler"
        ),
        format!("guard allowedImageHosts: allowedRunnerImageHosts is empty {from}"),
    ];
    for want in &expected {
        assert!(
            denied.message.contains(want),
            "the backend's record lacks {want}:\n{}",
            denied.message
        );
    }
    let pods = stack
        .pods()
        .list(&ListParams::default().labels(&format!("{LABEL_RUN_ID}={}", run.id)))
        .await?;
    assert!(pods.items.is_empty(), "the guard's denial created no Pod");
    let worker = stack.worker_list().await?.remove(0);
    let events = stack.ns.kubectl([
        "get",
        "events.events.k8s.io",
        "-o",
        "jsonpath={range .items[*]}{.regarding.name}|{.reason}|{.note}{\"\\n\"}{end}",
    ])?;
    let on_worker = format!("{}|RunDenied|", worker.name_any());
    let denial = events
        .lines()
        .find(|l| l.starts_with(&on_worker))
        .unwrap_or_else(|| panic!("no RunDenied event on the Worker: {events}"));
    assert!(denial.contains("guard/run-pod-guard"), "{denial}");
    // An event's note is capped at 1 kB, so it starts with the first reason in full.
    assert!(denial.contains(&expected[0]), "{denial}");
    stack.ns.cleanup().await
}
