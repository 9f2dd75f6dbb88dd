//! Smoke tests of the test control plane (tests/testenv) and its kwok stages.
mod support;

use std::time::Duration;

use kube::api::PostParams;
use serde_json::json;
use support::*;

#[tokio::test]
async fn pod_runs_on_fake_node_and_can_be_oom_killed() -> anyhow::Result<()> {
    let ns = TestNamespace::new("smoke-oom").await?;
    ns.pods()
        .create(&PostParams::default(), &test_pod("oom"))
        .await?;

    let pod = wait_for_pod(&ns.client, &ns.name, "oom", pod_running).await?;
    assert_eq!(
        pod.spec.as_ref().and_then(|s| s.node_name.as_deref()),
        Some(FAKE_NODE)
    );

    let pod = finish_pod(&ns.client, &ns.name, "oom", Outcome::OomKilled).await?;
    assert_eq!(pod_phase(&pod), "Failed");
    let terminated = container_terminated(&pod, "worker").expect("worker has terminated");
    assert_eq!(terminated.reason.as_deref(), Some("OOMKilled"));
    assert_eq!(terminated.exit_code, 137);

    ns.cleanup().await
}

#[tokio::test]
async fn pod_with_unsatisfiable_node_selector_stays_pending() -> anyhow::Result<()> {
    let ns = TestNamespace::new("smoke-pending").await?;
    let mut pod = test_pod("nowhere");
    pod.spec.as_mut().unwrap().node_selector =
        Some([("no-such-label".to_owned(), "x".to_owned())].into());
    ns.pods().create(&PostParams::default(), &pod).await?;

    let unschedulable = |p: &k8s_openapi::api::core::v1::Pod| {
        pod_condition(p, "PodScheduled")
            .is_some_and(|c| c.status == "False" && c.reason.as_deref() == Some("Unschedulable"))
    };
    wait_for_pod(&ns.client, &ns.name, "nowhere", unschedulable).await?;

    // And it stays that way.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pod = ns.pods().get("nowhere").await?;
    assert_eq!(pod_phase(&pod), "Pending");
    assert!(unschedulable(&pod), "status: {:?}", pod.status);
    assert_eq!(pod.spec.as_ref().and_then(|s| s.node_name.as_deref()), None);

    ns.cleanup().await
}

#[tokio::test]
async fn kubectl_helper_sees_the_fake_node() -> anyhow::Result<()> {
    let _ = cluster();
    let out = kubectl([
        "get",
        "node",
        FAKE_NODE,
        "-o",
        "jsonpath={.status.allocatable.cpu}",
    ])?;
    assert_eq!(out, "32");

    let failed = kubectl_output(["get", "pod", "no-such-pod", "-n", "default"], None)?;
    assert!(!failed.success);
    assert!(failed.stderr.contains("not found"), "{}", failed.stderr);

    // Creation via stdin, in a namespace of its own that Drop removes.
    let ns = TestNamespace::new("smoke-kubectl").await?;
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c"},
                    "data": {"k": "v"}});
    ns.kubectl_stdin(["apply", "-f", "-"], &cm.to_string())?;
    assert_eq!(
        ns.kubectl(["get", "configmap", "c", "-o", "jsonpath={.data.k}"])?,
        "v"
    );
    Ok(())
}

#[tokio::test]
async fn service_account_client_has_only_its_own_rights() -> anyhow::Result<()> {
    let ns = TestNamespace::new("smoke-sa").await?;
    ns.kubectl(["create", "serviceaccount", "limited"])?;
    ns.kubectl([
        "create",
        "role",
        "read-configmaps",
        "--verb=get,list",
        "--resource=configmaps",
    ])?;
    ns.kubectl([
        "create",
        "rolebinding",
        "limited",
        "--role=read-configmaps",
        &format!("--serviceaccount={}:limited", ns.name),
    ])?;

    let client = service_account_client(&ns.name, "limited").await?;
    let cms: kube::Api<k8s_openapi::api::core::v1::ConfigMap> =
        kube::Api::namespaced(client.clone(), &ns.name);
    cms.list(&Default::default()).await?;
    let pods: kube::Api<k8s_openapi::api::core::v1::Pod> = kube::Api::namespaced(client, &ns.name);
    match pods.list(&Default::default()).await {
        Err(kube::Error::Api(s)) => assert_eq!(s.code, 403),
        other => panic!("listing pods as the serviceaccount: {other:?}"),
    }

    let dir = tempfile::tempdir()?;
    let kubeconfig =
        write_service_account_kubeconfig(&ns.name, "limited", &dir.path().join("kubeconfig"))
            .await?;
    let can_i = |verb: &str, resource: &str| {
        kubectl_output(
            [
                "--kubeconfig".as_ref(),
                kubeconfig.as_os_str(),
                "auth".as_ref(),
                "can-i".as_ref(),
                verb.as_ref(),
                resource.as_ref(),
            ],
            None,
        )
        .map(|o| o.stdout.trim().to_owned())
    };
    assert_eq!(can_i("list", "configmaps")?, "yes");
    assert_eq!(can_i("list", "pods")?, "no");
    ns.cleanup().await
}
