//! The chart's RBAC is enough: the operator, run on the host as the chart's ServiceAccount with
//! the chart's arguments (operator.rs), does its work without being refused anything.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};

use crate::chart::{chart_dir, example_plugin, values_file};
use crate::operator::HostOperator;
use crate::release::Release;
use crate::stack::{Stack, pool_yaml};
use crate::support::Finish;
use crate::support::{self, TestNamespace};

const RUNNER: &str = "public.ecr.aws/spacelift/runner-terraform:1.5.7";

/// A cluster-wide policy, inline in the chart's values: the chart puts it into the
/// `<fullname>-policies` ConfigMap of the release namespace, which the operator reads by name.
const NO_LATEST_VALUES: &str = r#"hooks:
  policies:
    - name: no-latest
      regoVersion: v1
      rego: |
        package spacelift
        import rego.v1
        deny contains msg if {
          endswith(input.runnerImage, ":latest")
          msg := sprintf("runner image %q floats: not in this cluster", [input.runnerImage])
        }
"#;

/// The pool's own plugin, from a ConfigMap in the pool's namespace.
const LABEL_INJECTOR: &str = r#"  plugins:
    - configMap: label-injector
      settings:
        labels:
          spacelift.io/stack: "{run.metadata.stack}"
"#;

fn args(watched: &str) -> Vec<String> {
    [
        "--set",
        "crds.install=false",
        "--set",
        &format!("controllerManager.namespaces={{{watched}}}"),
        "--set",
        "metricsService.enabled=true",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// A ClusterRoleBinding the test makes; deleted when dropped.
struct ClusterBinding(String);

impl Drop for ClusterBinding {
    fn drop(&mut self) {
        let _ = support::kubectl([
            "delete",
            "clusterrolebinding",
            &self.0,
            "--ignore-not-found",
        ]);
    }
}

/// GET /metrics over HTTPS (the certificate is self-signed) with an optional bearer token.
async fn scrape(operator: &HostOperator, token: Option<&str>) -> anyhow::Result<(u16, String)> {
    support::install_crypto_provider();
    let client = reqwest::Client::builder()
        .tls_danger_accept_invalid_certs(true)
        .build()?;
    let mut request = client.get(format!("https://{}/metrics", operator.addresses.metrics));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await?;
    Ok((response.status().as_u16(), response.text().await?))
}

/// Leader election and the secure metrics endpoint (TokenReview + SubjectAccessReview) work
/// with exactly the chart's RBAC, and the metrics-reader ClusterRole is what a scraper needs.
#[tokio::test]
async fn leader_election_and_secure_metrics_work_as_the_chart_service_account() -> anyhow::Result<()>
{
    let ns = TestNamespace::new("helm-op-metrics").await?;
    let watched = TestNamespace::new("helm-op-metrics-w").await?;
    let release = Release::install(&chart_dir(), &ns.name, &args(&watched.name))?;
    let mut operator = HostOperator::start(&release).await?;
    operator.wait_ready(Duration::from_secs(60)).await?;

    // It leads, through the Lease the chart's Role allows.
    let lease_name = format!("{}-workerpool-operator-leader", release.name);
    let leases: Api<Lease> = Api::namespaced(ns.client.clone(), &ns.name);
    support::wait_for("the leader Lease", Duration::from_secs(30), || async {
        Ok(leases
            .get_opt(&lease_name)
            .await?
            .and_then(|l| l.spec?.holder_identity)
            .filter(|h| !h.is_empty()))
    })
    .await?;

    // A scraper bound to the chart's metrics-reader ClusterRole may read; others may not.
    let fullname = format!("{}-workerpool-operator", release.name);
    for sa in ["scraper", "stranger"] {
        ns.kubectl(["create", "serviceaccount", sa])?;
    }
    let binding = ClusterBinding(format!("{}-test-scraper", release.name));
    support::kubectl([
        "create",
        "clusterrolebinding",
        &binding.0,
        &format!("--clusterrole={fullname}-metrics-reader"),
        &format!("--serviceaccount={}:scraper", ns.name),
    ])?;
    let scraper = support::service_account_token(&ns.name, "scraper").await?;
    let stranger = support::service_account_token(&ns.name, "stranger").await?;
    let (status, body) = scrape(&operator, Some(&scraper)).await?;
    assert_eq!(status, 200, "{body}\n{}", operator.logs());
    assert!(
        body.contains("spacelift_workerpool_controller_"),
        "no operator metrics in:\n{body}"
    );
    let (status, _) = scrape(&operator, Some(&stranger)).await?;
    assert_eq!(status, 403, "a ServiceAccount without the role");
    let (status, _) = scrape(&operator, None).await?;
    assert_eq!(status, 401, "no token");

    let logs = operator.logs();
    assert!(!logs.contains(" is forbidden: "), "refused:\n{logs}");
    let status = operator.terminate(Duration::from_secs(15)).await?;
    assert!(status.success(), "exit {status}:\n{logs}");
    drop(binding);
    release.uninstall()?;
    watched.cleanup().await?;
    ns.cleanup().await
}

/// The RBAC sufficiency proof proper: the controller's end-to-end scenarios (real
/// credentials, broker and backend) pass with nothing but the chart's ServiceAccount; the hooks
/// load from where they live (the pool's plugin from a ConfigMap in its namespace, the chart's
/// cluster-wide policy from the release namespace): a run's Pod is changed by the plugin and a
/// run is denied by the policy, with an event on its Worker; a pool in a namespace it does not
/// watch is left alone; deleting the pool deregisters and removes its Workers; and after
/// `helm uninstall` nothing the operator made is left, the Lease included.
#[tokio::test]
async fn the_operator_does_its_work_as_the_chart_service_account() -> anyhow::Result<()> {
    let ns = TestNamespace::new("helm-op").await?;
    let stack = Stack::new("helm-op-w").await?;
    let other = TestNamespace::new("helm-op-o").await?;
    let watched = stack.ns.name.clone();
    let values = values_file(NO_LATEST_VALUES)?;
    let mut install = args(&watched);
    install.extend(["-f".into(), values.path().display().to_string()]);
    let release = Release::install(&chart_dir(), &ns.name, &install)?;
    let mut operator = HostOperator::start(&release).await?;
    operator.wait_ready(Duration::from_secs(60)).await?;
    let with_logs = |e: anyhow::Error| e.context(operator.logs());

    // A pool in a namespace the operator does not watch stays untouched.
    other.kubectl_stdin(
        ["apply", "--server-side", "-f", "-"],
        &pool_yaml("unwatched", "none", 1, ""),
    )?;

    // Pools, workers and their keys, registration; the pool's plugin loads from its namespace.
    let wasm = example_plugin("label-injector")?;
    stack.ns.kubectl([
        "create",
        "configmap",
        "label-injector",
        &format!("--from-file=plugin.wasm={}", wasm.display()),
    ])?;
    stack.create_credentials("sufficient", "sufficient")?;
    stack.apply(&pool_yaml("sufficient", "sufficient", 2, LABEL_INJECTOR))?;
    stack
        .wait_registered("sufficient", 2)
        .await
        .map_err(with_logs)?;
    support::wait_for("the pool's HooksReady", Duration::from_secs(60), || async {
        let pool = stack.pools().get("sufficient").await?;
        Ok(pool
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .any(|c| c.type_ == "HooksReady" && c.status == "True")
            .then_some(()))
    })
    .await
    .map_err(with_logs)?;

    // Runs: one succeeds (its Pod, labelled by the pool's plugin, is deleted), one fails (its
    // Pod is kept).
    let ok = stack
        .submit("sufficient", RUNNER, &[("stack", "networking")])
        .await?;
    let failing = stack.submit("sufficient", RUNNER, &[]).await?;
    let ok_pod = stack.wait_run_pod(&ok.id).await.map_err(with_logs)?;
    assert_eq!(
        ok_pod
            .labels()
            .get("spacelift.io/stack")
            .map(String::as_str),
        Some("networking"),
        "the pool's plugin did not label the run Pod"
    );
    let failing_pod = stack.wait_run_pod(&failing.id).await.map_err(with_logs)?;
    stack
        .finish(
            &ok_pod.metadata.name.clone().unwrap_or_default(),
            Finish::succeeded(),
        )
        .await?;
    stack
        .finish(
            &failing_pod.metadata.name.clone().unwrap_or_default(),
            Finish::oom_killed(),
        )
        .await?;
    stack
        .wait_run(&ok.id, "succeeded")
        .await
        .map_err(with_logs)?;
    let failed = stack
        .wait_run(&failing.id, "failed")
        .await
        .map_err(with_logs)?;
    assert_eq!(failed.cause.as_deref(), Some("OOMKilled"));

    // Denied by the chart's cluster-wide policy: the backend hears it, the Worker gets the event.
    let latest = stack
        .submit(
            "sufficient",
            "public.ecr.aws/spacelift/runner-terraform:latest",
            &[],
        )
        .await?;
    let denied = stack
        .wait_run(&latest.id, "denied")
        .await
        .map_err(with_logs)?;
    assert!(
        denied.message.contains("floats: not in this cluster"),
        "{}",
        denied.message
    );
    let events: Api<Event> = stack.ns.api();
    let note = support::wait_for(
        "the RunDenied event on a Worker",
        Duration::from_secs(30),
        || async {
            Ok(events
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .find(|e| {
                    e.reason.as_deref() == Some("RunDenied")
                        && e.regarding.as_ref().and_then(|r| r.kind.as_deref()) == Some("Worker")
                })
                .and_then(|e| e.note))
        },
    )
    .await
    .map_err(with_logs)?;
    assert!(
        note.contains("no-latest") && note.contains("floats: not in this cluster"),
        "{note}"
    );

    // Scale-down while a run is busy: the busy worker drains, then goes.
    let busy = stack.submit("sufficient", RUNNER, &[]).await?;
    let busy_pod = stack.wait_run_pod(&busy.id).await.map_err(with_logs)?;
    stack
        .ns
        .kubectl(["scale", "workerpools", "sufficient", "--replicas=0"])?;
    support::wait_for(
        "one DRAINING worker left",
        Duration::from_secs(60),
        || async {
            let workers = stack.worker_list().await?;
            Ok((workers.len() == 1).then_some(()))
        },
    )
    .await
    .map_err(with_logs)?;
    stack
        .finish(
            &busy_pod.metadata.name.clone().unwrap_or_default(),
            Finish::succeeded(),
        )
        .await?;
    stack
        .wait_run(&busy.id, "succeeded")
        .await
        .map_err(with_logs)?;

    // Deleting the pool deregisters and removes its Workers (finalizers included).
    stack
        .ns
        .kubectl(["scale", "workerpools", "sufficient", "--replicas=1"])?;
    stack
        .wait_registered("sufficient", 1)
        .await
        .map_err(with_logs)?;
    stack.ns.kubectl([
        "delete",
        "workerpool",
        "sufficient",
        "--wait=true",
        "--timeout=60s",
    ])?;
    support::wait_for(
        "the pool's Workers gone",
        Duration::from_secs(60),
        || async { Ok(stack.worker_list().await?.is_empty().then_some(())) },
    )
    .await
    .map_err(with_logs)?;
    let status = other.kubectl(["get", "workerpool", "unwatched", "-o", "jsonpath={.status}"])?;
    assert!(
        status.trim().is_empty(),
        "the unwatched pool was touched: {status}"
    );

    let logs = operator.logs();
    assert!(!logs.contains(" is forbidden: "), "refused:\n{logs}");
    let exit = operator.terminate(Duration::from_secs(15)).await?;
    assert!(exit.success(), "exit {exit}:\n{logs}");
    release.uninstall()?;

    // Nothing the operator made is left: Workers, their key Secrets, run Pods, the Lease.
    stack
        .ns
        .kubectl(["delete", "secret", "sufficient", "--ignore-not-found"])?;
    let lp = ListParams::default();
    assert!(stack.worker_list().await?.is_empty(), "Workers left");
    let secrets: Vec<String> = stack
        .ns
        .api::<Secret>()
        .list(&lp)
        .await?
        .items
        .into_iter()
        .filter_map(|s| s.metadata.name)
        .collect();
    assert!(secrets.is_empty(), "Secrets left: {secrets:?}");
    let pods: Vec<Pod> = stack.ns.api::<Pod>().list(&lp).await?.items;
    // The failed run's Pod is kept by design (for debugging) until its Worker goes; with the
    // Worker deleted the garbage collector takes it.
    support::wait_for(
        "run Pods collected with their Workers",
        Duration::from_secs(90),
        || async {
            let left = stack.ns.api::<Pod>().list(&lp).await?.items;
            Ok(left
                .iter()
                .all(|p| p.metadata.deletion_timestamp.is_some())
                .then_some(()))
        },
    )
    .await
    .map_err(|e| e.context(format!("{} Pods left", pods.len())))?;
    support::wait_for(
        "the Lease collected with the operator's Pod",
        Duration::from_secs(90),
        || async {
            Ok(ns
                .api::<Lease>()
                .list(&lp)
                .await?
                .items
                .is_empty()
                .then_some(()))
        },
    )
    .await?;
    other.kubectl(["delete", "workerpool", "unwatched"])?;
    other.cleanup().await?;
    stack.ns.cleanup().await?;
    ns.cleanup().await
}
