//! A node deleted while runs are on it: those runs fail as node lost, their workers are free.

use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::api::{DeleteParams, PostParams};

use crate::bench::{Bench, scaled, shared};
use crate::books::balance;
use crate::support::{self, wait_for};

/// A kwok node of its own, so that deleting it touches no other test.
async fn own_node(name: &str) -> anyhow::Result<Api<Node>> {
    let nodes: Api<Node> = Api::all(support::client().await?);
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {
            "name": name,
            "annotations": {"kwok.x-k8s.io/node": "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {"kubernetes.io/hostname": name, "type": "kwok", "workerpool.dev/fault-node": name},
        },
        "status": {"allocatable": {"cpu": "32", "memory": "256Gi", "pods": "110"},
                   "capacity": {"cpu": "32", "memory": "256Gi", "pods": "110"}},
    }))?;
    nodes.create(&PostParams::default(), &node).await?;
    wait_for(
        "the node Ready and untainted",
        Duration::from_secs(60),
        || async {
            let node = nodes.get(name).await?;
            let ready = node
                .status
                .and_then(|s| s.conditions)
                .unwrap_or_default()
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            let tainted = node
                .spec
                .and_then(|s| s.taints)
                .is_some_and(|t| !t.is_empty());
            Ok((ready && !tainted).then_some(()))
        },
    )
    .await?;
    Ok(nodes)
}

#[tokio::test]
async fn deleting_the_node_under_running_runs_fails_them_as_node_lost() -> anyhow::Result<()> {
    let _cluster = shared().await;
    let runs = scaled(3, 6);
    let node = support::unique_name("fault-node");
    let nodes = own_node(&node).await?;
    let pinned = format!("  pod:\n    nodeSelector:\n      workerpool.dev/fault-node: {node}\n");
    let bench = Bench::with_pool("f-node", "node", runs as i32, &pinned, &[]).await;
    let bench = match bench {
        Ok(bench) => bench,
        Err(err) => {
            let _ = nodes.delete(&node, &DeleteParams::default()).await;
            return Err(err);
        }
    };
    let ids = bench.submit("node", runs).await?;
    bench.running_pods(runs).await?;
    nodes.delete(&node, &DeleteParams::default()).await?;
    for id in &ids {
        let run = wait_for(
            &format!("run {id} failed"),
            Duration::from_secs(180),
            || async {
                let run = bench.stack.run(id).await?;
                Ok((run.state == "failed").then_some(run))
            },
        )
        .await
        .with_context(|| bench.stack.diagnostics())?;
        ensure!(
            run.cause.as_deref() == Some("NodeLost"),
            "run {id} failed as {:?}: {}",
            run.cause,
            run.message
        );
    }
    balance("node deleted", &bench.stack, &bench.audit, 1).await?;
    bench.stack.ns.cleanup().await
}
