//! The chart on the real control plane (tests/testenv): server-side dry-run of every rendering,
//! install, uninstall, and what the chart's ServiceAccount may and may not do. The operator Pod
//! itself only pretends to run here (kwok), so the operator is run on the host instead
//! (operator.rs).

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::json;
use workerpool_operator::hooks::registry::{LoadStatus, cluster_config_maps};
use workerpool_operator::hooks::{HookConfig, HookMetrics, HookRegistry, WasmHost};

use crate::chart::*;
use crate::release::*;
use crate::render::value_sets;
use crate::support::{self, TestNamespace};

/// testenv installs the CRDs itself (with kubectl), so releases here leave them alone; the CRD
/// test (crds.rs) installs CRDs of its own group.
fn without_crds(mut args: Vec<String>) -> Vec<String> {
    args.extend(["--set".into(), "crds.install=false".into()]);
    args
}

#[tokio::test]
async fn the_api_server_accepts_every_rendering() -> anyhow::Result<()> {
    let release_ns = TestNamespace::new("helm-dry").await?;
    let a = TestNamespace::new("helm-dry-a").await?;
    let b = TestNamespace::new("helm-dry-b").await?;
    for (name, args) in value_sets(&[&a.name, &b.name]) {
        let yaml = template_yaml(&chart_dir(), "wpo", &release_ns.name, &args)?;
        // Server-side apply, as docs/helm.md recommends: the WorkerPool CRD is far larger than
        // the last-applied annotation client-side apply would write. --force-conflicts: the
        // CRDs testenv applied (its own field manager) may be older than the chart's; whether
        // the API server accepts the objects is the question here, not who owns their fields.
        support::kubectl_stdin(
            [
                "apply",
                "--server-side",
                "--dry-run=server",
                "--force-conflicts",
                "--field-manager=workerpool-chart-test",
                "-f",
                "-",
            ],
            &yaml,
        )
        .map_err(|e| e.context(format!("value set {name:?}")))?;
    }
    b.cleanup().await?;
    a.cleanup().await?;
    release_ns.cleanup().await
}

#[tokio::test]
async fn install_succeeds_and_uninstall_removes_every_chart_object() -> anyhow::Result<()> {
    let ns = TestNamespace::new("helm-install").await?;
    let release = Release::install(
        &chart_dir(),
        &ns.name,
        &without_crds(vec!["--set".into(), "metricsService.enabled=true".into()]),
    )?;
    // --wait returned: the Deployment is available (kwok plays the Pod). It runs as the chart's
    // ServiceAccount with the chart's arguments.
    let selector = format!("app.kubernetes.io/instance={}", release.name);
    let pods = ns
        .pods()
        .list(&ListParams::default().labels(&selector))
        .await?;
    let pod = pods.items.first().expect("the operator Pod");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some(release.service_account().as_str())
    );
    assert_eq!(support::pod_phase(pod), "Running");

    let manifest = release.manifest()?;
    assert!(manifest.has("ClusterRole", "-manager-role"));
    release.uninstall()?;

    // Nothing of the release is left: namespaced objects, and the cluster-scoped RBAC.
    let kinds = "deployments,replicasets,pods,serviceaccounts,configmaps,services,roles,rolebindings,poddisruptionbudgets";
    support::wait_for(
        "the release's objects to go",
        Duration::from_secs(60),
        || async {
            let left = ns.kubectl(["get", kinds, "-l", &selector, "-o", "name"])?;
            Ok(left.trim().is_empty().then_some(()))
        },
    )
    .await?;
    let cluster_left = support::kubectl([
        "get",
        "clusterroles,clusterrolebindings",
        "-l",
        &selector,
        "-o",
        "name",
    ])?;
    assert_eq!(cluster_left.trim(), "", "left behind");
    ns.cleanup().await
}

#[tokio::test]
async fn the_service_account_may_do_what_the_operator_does_and_no_more() -> anyhow::Result<()> {
    let ns = TestNamespace::new("helm-rbac").await?;
    let elsewhere = TestNamespace::new("helm-rbac-x").await?;
    let release = Release::install(
        &chart_dir(),
        &ns.name,
        &without_crds(vec!["--set".into(), "metricsService.enabled=true".into()]),
    )?;
    let sa = release.service_account_client().await?;
    let lease = format!("{}-workerpool-operator-leader", release.name);

    // Everything the operator does, in any namespace (ClusterRole).
    expect_access(&sa, true, &manager_accesses(Some(&elsewhere.name))).await?;
    expect_access(&sa, true, &manager_accesses(None)).await?;
    expect_access(
        &sa,
        true,
        &[
            Access::new("create", "coordination.k8s.io", "leases").in_ns(&ns.name),
            Access::new("get", "coordination.k8s.io", "leases")
                .in_ns(&ns.name)
                .named(&lease),
            Access::new("update", "coordination.k8s.io", "leases")
                .in_ns(&ns.name)
                .named(&lease),
            Access::new("create", "authentication.k8s.io", "tokenreviews"),
            Access::new("create", "authorization.k8s.io", "subjectaccessreviews"),
        ],
    )
    .await?;

    // And nothing it does not do.
    let x = &elsewhere.name;
    expect_access(
        &sa,
        false,
        &[
            Access::new("create", "workers.spacelift.io", "workerpools").in_ns(x),
            Access::new("delete", "workers.spacelift.io", "workerpools").in_ns(x),
            Access::new("update", "workers.spacelift.io", "workerpools").in_ns(x),
            Access::new("update", "workers.spacelift.io", "workerpools/status").in_ns(x),
            Access::new("update", "workers.spacelift.io", "workers").in_ns(x),
            Access::new("update", "", "secrets").in_ns(x),
            Access::new("patch", "", "secrets").in_ns(x),
            Access::new("delete", "", "secrets").in_ns(x),
            Access::new("create", "", "configmaps").in_ns(x),
            Access::new("update", "", "configmaps").in_ns(x),
            Access::new("delete", "", "configmaps").in_ns(x),
            Access::new("update", "", "pods").in_ns(x),
            Access::new("create", "", "events").in_ns(x),
            Access::new("create", "", "pods/exec").in_ns(x),
            Access::new("get", "", "pods/log").in_ns(x),
            Access::new("create", "", "serviceaccounts/token").in_ns(x),
            Access::new("create", "apps", "deployments").in_ns(x),
            Access::new("list", "", "nodes"),
            Access::new("list", "", "namespaces"),
            Access::new("get", "coordination.k8s.io", "leases")
                .in_ns(&ns.name)
                .named("someone-else"),
            Access::new("update", "coordination.k8s.io", "leases")
                .in_ns(&ns.name)
                .named("someone-else"),
            Access::new("list", "coordination.k8s.io", "leases").in_ns(&ns.name),
            Access::new("create", "coordination.k8s.io", "leases").in_ns(x),
            Access::new(
                "update",
                "apiextensions.k8s.io",
                "customresourcedefinitions",
            ),
            Access::new("bind", "rbac.authorization.k8s.io", "clusterroles"),
            Access::new("escalate", "rbac.authorization.k8s.io", "clusterroles"),
            Access::new("impersonate", "", "serviceaccounts").in_ns(x),
        ],
    )
    .await?;

    release.uninstall()?;
    elsewhere.cleanup().await?;
    ns.cleanup().await
}

#[tokio::test]
async fn in_namespaced_mode_the_service_account_cannot_read_secrets_it_does_not_watch()
-> anyhow::Result<()> {
    let ns = TestNamespace::new("helm-nsmode").await?;
    let watched = TestNamespace::new("helm-nsmode-w").await?;
    let other = TestNamespace::new("helm-nsmode-o").await?;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": "pool-credentials"},
        "stringData": {"token": "t", "privateKey": "k"}
    }))?;
    for n in [&watched, &other] {
        n.api::<Secret>()
            .create(&PostParams::default(), &secret)
            .await?;
    }
    let release = Release::install(
        &chart_dir(),
        &ns.name,
        &without_crds(vec![
            "--set".into(),
            format!("controllerManager.namespaces={{{}}}", watched.name),
        ]),
    )?;
    let sa = release.service_account_client().await?;

    // In the watched namespace: everything the operator does.
    expect_access(&sa, true, &manager_accesses(Some(&watched.name))).await?;
    Api::<Secret>::namespaced(sa.clone(), &watched.name)
        .get("pool-credentials")
        .await?;
    // Elsewhere and cluster-wide: nothing, neither by the review nor by trying.
    expect_access(&sa, false, &manager_accesses(Some(&other.name))).await?;
    expect_access(&sa, false, &manager_accesses(None)).await?;
    let forbidden =
        |r: Result<_, kube::Error>| matches!(r, Err(kube::Error::Api(s)) if s.code == 403);
    let in_other: Api<Secret> = Api::namespaced(sa.clone(), &other.name);
    assert!(forbidden(
        in_other.get("pool-credentials").await.map(|_| ())
    ));
    assert!(forbidden(
        in_other.list(&ListParams::default()).await.map(|_| ())
    ));
    assert!(forbidden(
        Api::<Secret>::all(sa.clone())
            .list(&ListParams::default())
            .await
            .map(|_| ())
    ));
    // The release namespace: the hook ConfigMaps (by name) and the Lease, not its Secrets.
    expect_access(
        &sa,
        true,
        &[Access::new("get", "", "configmaps").in_ns(&ns.name)],
    )
    .await?;
    expect_access(
        &sa,
        false,
        &[
            Access::new("list", "", "configmaps").in_ns(&ns.name),
            Access::new("get", "", "secrets").in_ns(&ns.name),
            Access::new("create", "", "pods").in_ns(&ns.name),
            Access::new("list", "workers.spacelift.io", "workerpools").in_ns(&ns.name),
            Access::new("create", "authentication.k8s.io", "tokenreviews"),
        ],
    )
    .await?;

    release.uninstall()?;
    other.cleanup().await?;
    watched.cleanup().await?;
    ns.cleanup().await
}

/// plugins/target/wasm/<name>.wasm, built by plugins/build (scripts/setup runs it); built here
/// if missing.
fn ensure_example_plugins_built() -> anyhow::Result<()> {
    let dir = support::repo_root().join("plugins/target/wasm");
    let missing = [
        "label-injector",
        "registry-mirror",
        "resource-guard",
        "deny-latest",
    ]
    .iter()
    .any(|p| !dir.join(format!("{p}.wasm")).is_file());
    if missing {
        let status = std::process::Command::new(support::repo_root().join("plugins/build"))
            .arg("--quiet")
            .status()?;
        anyhow::ensure!(status.success(), "plugins/build failed");
    }
    Ok(())
}

#[tokio::test]
async fn the_example_hooks_load_as_the_chart_service_account() -> anyhow::Result<()> {
    ensure_example_plugins_built()?;
    let ns = TestNamespace::new("helm-examples").await?;
    // The documented steps: the script, then the install with the examples values file.
    let script = chart_dir().join("examples/create-example-configmaps");
    let out = std::process::Command::new(&script)
        .args(["-n", &ns.name])
        .env("KUBECTL", &support::cluster().kubectl)
        .env("KUBECONFIG", &support::cluster().kubeconfig)
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "{}: {}",
        script.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    let release = Release::install(
        &chart_dir(),
        &ns.name,
        &without_crds(vec!["-f".into(), examples_values().display().to_string()]),
    )?;

    // What the operator does at start: read the mounted configuration, fetch the ConfigMaps it
    // names (as its own ServiceAccount), load every hook.
    let text = release.manifest()?.hook_config()?;
    let config = HookConfig::parse(&text, "hooks.yaml")?;
    let sa = release.service_account_client().await?;
    let api: Api<ConfigMap> = Api::namespaced(sa, &ns.name);
    let mut config_maps = BTreeMap::new();
    for name in cluster_config_maps(&config) {
        let cm = api.get(&name).await?;
        config_maps.insert(name, cm);
    }
    let host = WasmHost::new(config.limits.host_limits())?;
    let policies = workerpool_operator::hooks::PolicyEvaluator::new(
        env!("CARGO_BIN_EXE_workerpool-operator"),
        config.limits.policy_limits(),
    );
    let registry = HookRegistry::new(host, policies, std::sync::Arc::new(HookMetrics::new()));
    let report = registry.load_cluster(&config, &config_maps);
    assert!(report.is_healthy(), "{report:#?}");
    let loaded: Vec<&str> = report
        .results
        .iter()
        .filter(|r| matches!(r.status, LoadStatus::Loaded { .. }))
        .map(|r| r.name.as_str())
        .collect();
    assert_eq!(
        loaded,
        [
            "label-injector",
            "registry-mirror",
            "resource-guard",
            "deny-latest",
            "no-privileged",
            "pinned-runner-images",
            "change-freeze",
        ]
    );
    release.uninstall()?;
    ns.cleanup().await
}
