//! `helm upgrade` applies a changed CRD, and `helm uninstall` keeps the CRDs (and so the pools).
//!
//! The test cluster's own workers.spacelift.io CRDs are shared by every test binary, so this
//! test installs the chart's CRDs under a group of its own: a copy of the chart whose CRD files
//! differ from the real ones only in the group name. The mechanism under test (CRDs as
//! templates, `helm.sh/resource-policy: keep`) is the same.

use std::time::Duration;

use anyhow::Context;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, PostParams};
use serde_json::json;

use crate::chart::*;
use crate::release::*;
use crate::support::{self, TestNamespace};

const PRINTER_COLUMN: &str =
    "    - jsonPath: .spec.poolSize\n      name: Pool size (test)\n      type: integer\n";

#[tokio::test]
async fn helm_upgrade_applies_a_changed_crd_and_uninstall_keeps_it() -> anyhow::Result<()> {
    let ns = TestNamespace::new("helm-crd").await?;
    let group = format!("{}.workerpool.test", support::unique_name("g"));
    let chart = ChartCopy::new()?;
    for file in ["files/crds/workerpools.yaml", "files/crds/workers.yaml"] {
        let text = chart.read(file)?.replace("workers.spacelift.io", &group);
        chart.write(file, text)?;
    }
    let crds: Api<CustomResourceDefinition> = Api::all(ns.client.clone());
    let pools_crd = format!("workerpools.{group}");
    let cleanup_crds = CrdCleanup {
        names: vec![pools_crd.clone(), format!("workers.{group}")],
    };

    let release = Release::install(chart.path(), &ns.name, &[])?;
    let installed = established(&crds, &pools_crd).await?;
    let annotations = installed.metadata.annotations.clone().unwrap_or_default();
    assert_eq!(
        annotations
            .get("helm.sh/resource-policy")
            .map(String::as_str),
        Some("keep")
    );
    assert_eq!(
        annotations.get("meta.helm.sh/release-name"),
        Some(&release.name)
    );

    // A pool exists before the upgrade and must survive it.
    let gvk = GroupVersionKind::gvk(&group, "v1beta1", "WorkerPool");
    let pools: Api<DynamicObject> =
        Api::namespaced_with(ns.client.clone(), &ns.name, &ApiResource::from_gvk(&gvk));
    let pool: DynamicObject = serde_json::from_value(json!({
        "apiVersion": format!("{group}/v1beta1"),
        "kind": "WorkerPool",
        "metadata": {"name": "survivor"},
        "spec": {"poolSize": 2}
    }))?;
    let pool_uid = pools
        .create(&PostParams::default(), &pool)
        .await?
        .metadata
        .uid;

    // The new chart version: the WorkerPool CRD gains a printer column.
    let file = "files/crds/workerpools.yaml";
    let text = chart.read(file)?;
    let anchor = "  - additionalPrinterColumns:\n";
    anyhow::ensure!(
        text.contains(anchor),
        "{file} has no printer columns to extend"
    );
    chart.write(
        file,
        text.replacen(anchor, &format!("{anchor}{PRINTER_COLUMN}"), 1),
    )?;
    release.upgrade(chart.path(), &[])?;

    let upgraded = crds.get(&pools_crd).await?;
    assert_eq!(
        upgraded.metadata.uid, installed.metadata.uid,
        "the CRD was replaced, not patched"
    );
    let columns: Vec<String> = upgraded.spec.versions[0]
        .additional_printer_columns
        .iter()
        .flatten()
        .map(|c| c.name.clone())
        .collect();
    assert!(
        columns.contains(&"Pool size (test)".to_string()),
        "{columns:?}"
    );
    let table = ns.kubectl(["get", &format!("workerpools.{group}")])?;
    assert!(table.contains("POOL SIZE (TEST)"), "{table}");
    assert_eq!(pools.get("survivor").await?.metadata.uid, pool_uid);

    release.uninstall()?;
    // keep: the CRDs, and with them the pools, are still there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(
        crds.get_opt(&pools_crd).await?.is_some(),
        "uninstall deleted the CRD"
    );
    assert_eq!(pools.get("survivor").await?.metadata.uid, pool_uid);

    drop(cleanup_crds);
    ns.cleanup().await
}

async fn established(
    crds: &Api<CustomResourceDefinition>,
    name: &str,
) -> anyhow::Result<CustomResourceDefinition> {
    support::wait_for(
        &format!("CRD {name} Established"),
        Duration::from_secs(30),
        || async {
            let crd = crds.get_opt(name).await?;
            Ok(crd.filter(|c| {
                c.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c.type_ == "Established" && c.status == "True")
                    })
            }))
        },
    )
    .await
    .context("the chart's CRD")
}

/// Deletes the test's CRDs (kept by the chart on purpose) when dropped, also after a failure.
struct CrdCleanup {
    names: Vec<String>,
}

impl Drop for CrdCleanup {
    fn drop(&mut self) {
        for name in &self.names {
            let _ = support::kubectl(["delete", "crd", name, "--ignore-not-found", "--wait=false"]);
        }
    }
}
