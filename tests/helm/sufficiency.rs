//! The chart's RBAC is enough: the operator, run on the host as the chart's ServiceAccount with
//! the chart's arguments (operator.rs), does its work without being refused anything.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde_json::json;

use crate::chart::chart_dir;
use crate::operator::HostOperator;
use crate::release::Release;
use crate::support::{self, TestNamespace};

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

/// The RBAC sufficiency proof proper: pools reconciled in a watched namespace, untouched
/// elsewhere, deleted cleanly, and nothing of the operator's left after `helm uninstall`.
#[tokio::test]
#[ignore = "TODO(issue 7): the controller's end-to-end scenarios (issue 5) are to run inside it, \
            and the leader Lease outlives `helm uninstall` (docs/helm.md, Uninstalling)"]
async fn the_operator_does_its_work_as_the_chart_service_account() -> anyhow::Result<()> {
    let ns = TestNamespace::new("helm-op").await?;
    let watched = TestNamespace::new("helm-op-w").await?;
    let other = TestNamespace::new("helm-op-o").await?;
    let release = Release::install(&chart_dir(), &ns.name, &args(&watched.name))?;
    let mut operator = HostOperator::start(&release).await?;
    operator.wait_ready(Duration::from_secs(60)).await?;

    let gvk = GroupVersionKind::gvk("workers.spacelift.io", "v1beta1", "WorkerPool");
    let resource = ApiResource::from_gvk(&gvk);
    let pools_in =
        |n: &str| -> Api<DynamicObject> { Api::namespaced_with(ns.client.clone(), n, &resource) };
    let pool = |name: &str| -> anyhow::Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "workers.spacelift.io/v1beta1",
            "kind": "WorkerPool",
            "metadata": {"name": name},
            "spec": {"poolSize": 1}
        }))?)
    };
    pools_in(&watched.name)
        .create(&PostParams::default(), &pool("watched")?)
        .await?;
    pools_in(&other.name)
        .create(&PostParams::default(), &pool("unwatched")?)
        .await?;

    // The operator reconciles the watched pool (it writes its status) ...
    let watched_pools = pools_in(&watched.name);
    support::wait_for(
        "the operator to report on the pool",
        Duration::from_secs(30),
        || async {
            Ok(watched_pools
                .get("watched")
                .await?
                .data
                .get("status")
                .filter(|s| s.as_object().is_some_and(|o| !o.is_empty()))
                .cloned())
        },
    )
    .await
    .map_err(|e| e.context(operator.logs()))?;
    // ... and leaves the other alone.
    let unwatched = pools_in(&other.name).get("unwatched").await?;
    assert!(unwatched.data.get("status").is_none(), "{unwatched:?}");
    assert!(unwatched.metadata.finalizers.is_none(), "{unwatched:?}");

    // TODO(issue 7): the controller's end-to-end scenarios (issue 5) go here, against this
    // operator: pools with real credentials from the reference backend, workers registered,
    // runs scheduled and finished, scale-down while busy, hooks, pool deletion.

    watched_pools
        .delete("watched", &DeleteParams::default())
        .await?;
    support::wait_for(
        "the pool to be deleted",
        Duration::from_secs(60),
        || async {
            Ok(watched_pools
                .get_opt("watched")
                .await?
                .is_none()
                .then_some(()))
        },
    )
    .await
    .map_err(|e| e.context(operator.logs()))?;

    let logs = operator.logs();
    assert!(!logs.contains(" is forbidden: "), "refused:\n{logs}");
    let status = operator.terminate(Duration::from_secs(15)).await?;
    assert!(status.success(), "exit {status}:\n{logs}");
    release.uninstall()?;

    // Nothing the operator made is left: Workers, their key Secrets, run Pods, the Lease.
    let workers = Api::<DynamicObject>::namespaced_with(
        ns.client.clone(),
        &watched.name,
        &ApiResource::from_gvk(&GroupVersionKind::gvk(
            "workers.spacelift.io",
            "v1beta1",
            "Worker",
        )),
    );
    let lp = ListParams::default();
    assert!(workers.list(&lp).await?.items.is_empty(), "Workers left");
    assert!(
        watched.api::<Secret>().list(&lp).await?.items.is_empty(),
        "Secrets left"
    );
    assert!(
        watched.api::<Pod>().list(&lp).await?.items.is_empty(),
        "Pods left"
    );
    assert!(
        ns.api::<Lease>().list(&lp).await?.items.is_empty(),
        "the Lease is left"
    );
    pools_in(&other.name)
        .delete("unwatched", &DeleteParams::default())
        .await?;
    other.cleanup().await?;
    watched.cleanup().await?;
    ns.cleanup().await
}
