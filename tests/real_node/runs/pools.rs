//! What a pool's spec does to a real run: every seed example that can run here, a custom init
//! container and a sidecar, a persistent binaries cache, and a worker identity that is not its
//! own.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams};
use serde_json::{Value, json};
use workerpool_operator::crd::Worker;

use super::RealRuns;
use crate::support::repo_root;

/// Seed examples whose Pod cannot run on this machine's node, and why.
const NOT_HERE: [(&str, &str); 3] = [
    (
        "workspace-volume",
        "its workspace is an ephemeral gp2 (AWS EBS) volume",
    ),
    (
        "docker-daemon-sidecar",
        "its sidecar is docker:dind, privileged, from Docker Hub",
    ),
    (
        "configuration",
        "its sidecar is redis from Docker Hub (no registry is reachable)",
    ),
];

/// A seed fixture as a pool of this test: its own name, our credentials, one worker, the node's
/// placement, and an image pull policy that never reaches for a registry.
fn seed_pool(runs: &RealRuns, fixture: &str, name: &str) -> anyhow::Result<Value> {
    let path = repo_root()
        .join("tests/fixtures/seed")
        .join(format!("{fixture}.yaml"));
    let mut pool: Value = yaml_serde::from_str(&std::fs::read_to_string(&path)?)?;
    pool["metadata"]["name"] = json!(name);
    let spec = &mut pool["spec"];
    spec["poolSize"] = json!(1);
    spec["token"] = json!({"secretKeyRef": {"name": name, "key": "token"}});
    spec["privateKey"] = json!({"secretKeyRef": {"name": name, "key": "privateKey"}});
    if !spec["pod"].is_object() {
        spec["pod"] = json!({});
    }
    let pod = &mut spec["pod"];
    pod["nodeSelector"] = json!({ runs.node.key.clone(): "true" });
    pod["tolerations"] = json!([{"key": runs.node.key, "operator": "Equal", "value": "true", "effect": "NoSchedule"}]);
    Ok(pool)
}

#[tokio::test]
async fn every_seed_example_that_can_run_here_runs_a_real_run() -> anyhow::Result<()> {
    let Some(runs) = RealRuns::start("real-seed", "anchor", 1, "", "").await? else {
        return Ok(());
    };
    let seed_policy =
        repo_root().join("tests/fixtures/seed/initialization-policies-configmap.yaml");
    runs.stack
        .ns
        .kubectl(["apply", "-f", &seed_policy.to_string_lossy()])?;
    let mut ran = Vec::new();
    let mut fixtures: Vec<String> = std::fs::read_dir(repo_root().join("tests/fixtures/seed"))?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            e.file_name()
                .to_str()?
                .strip_suffix(".yaml")
                .map(str::to_string)
        })
        .filter(|f| f != "initialization-policies-configmap")
        .collect();
    fixtures.sort();
    for fixture in &fixtures {
        if let Some((_, why)) = NOT_HERE.iter().find(|(f, _)| f == fixture) {
            eprintln!("seed example {fixture}: not run here: {why}");
            continue;
        }
        let name = format!("seed-{}", fixture.chars().take(20).collect::<String>());
        let name = name.trim_end_matches('-').to_string();
        runs.stack.create_credentials(&name, &name)?;
        let pool = seed_pool(&runs, fixture, &name)?;
        runs.stack.apply(&serde_json::to_string(&pool)?)?;
        runs.stack.wait_registered(&name, 1).await?;
        runs.create_stack(&name, &name, "hello", None, &[]).await?;
        let run = runs.trigger(&name, true).await?;
        let done = runs.wait_state(&run.id, &["succeeded"]).await?;
        let log = runs.log_text(&done.id, "planning").await?;
        assert!(log.contains("Plan: 4 to add"), "{fixture}: {log}");
        // Its pool goes, so that the next example's requests fit on the node.
        runs.stack
            .ns
            .kubectl(["delete", "workerpool", &name, "--wait=true"])?;
        ran.push(fixture.clone());
    }
    assert_eq!(
        ran.len() + NOT_HERE.len(),
        fixtures.len(),
        "every seed example either ran or says why not: {ran:?}"
    );
    assert!(ran.len() >= 8, "{ran:?}");
    runs.stack.ns.cleanup().await
}

#[tokio::test]
async fn a_custom_init_container_and_a_sidecar_run_beside_a_real_run() -> anyhow::Result<()> {
    let runner = crate::support::real_node::real_node().map(|n| n.images.runner_tofu.clone());
    let Some(runner) = runner else {
        return Ok(());
    };
    let pod_extra = format!(
        "    terminationGracePeriodSeconds: 5
    customInitContainers:
      - name: prepare
        image: {runner}
        command: [sh, -c, 'echo prepared by a custom init container > /opt/spacelift/workspace/prepared']
        volumeMounts: [{{name: workspace, mountPath: /opt/spacelift/workspace}}]
    additionalSidecarContainers:
      - name: helper
        image: {runner}
        command: [sleep, '3600']
"
    );
    let Some(runs) = RealRuns::start("real-sidecar", "sided", 1, "", &pod_extra).await? else {
        return Ok(());
    };
    runs.create_stack("reader", "sided", "reads-workspace", None, &[])
        .await?;
    let run = runs.trigger("reader", true).await?;
    let pod = runs.stack.wait_run_pod(&run.id).await?;
    let spec = pod.spec.clone().unwrap_or_default();
    let init: Vec<String> = spec
        .init_containers
        .unwrap_or_default()
        .into_iter()
        .map(|c| c.name)
        .collect();
    assert_eq!(
        init,
        ["prepare", "init"],
        "the custom init container runs before init"
    );
    runs.wait_state(&run.id, &["succeeded"]).await?;
    let log = runs.log_text(&run.id, "planning").await?;
    assert!(
        log.contains("prepared = \"prepared by a custom init container\""),
        "the workspace the custom init container wrote is the run's: {log}"
    );
    // The sidecar never ends by itself: the run still ends, and its Pod goes with the sidecar.
    runs.stack
        .wait_pod_gone("the succeeded run's Pod, sidecar included", &pod.name_any())
        .await?;
    runs.stack.ns.cleanup().await
}

#[tokio::test]
async fn a_persistent_binaries_cache_serves_the_tool_to_the_next_run() -> anyhow::Result<()> {
    let Some(node) = crate::support::real_node::real_node() else {
        return Ok(());
    };
    // The cluster admin's volume: a host directory behind a PersistentVolume, claimed by the
    // pool's namespace (a pool itself may not mount host paths).
    let Some(runs) = RealRuns::start("real-cache", "cached", 1, "", "").await? else {
        return Ok(());
    };
    let ns = runs.stack.ns.name.clone();
    let dir = tempfile::Builder::new()
        .prefix("wpo-cache-")
        .tempdir_in("/tmp")?;
    std::fs::set_permissions(
        dir.path(),
        std::os::unix::fs::PermissionsExt::from_mode(0o1777),
    )?;
    let pv = format!(
        "apiVersion: v1
kind: PersistentVolume
metadata: {{name: {ns}-cache}}
spec:
  capacity: {{storage: 1Gi}}
  accessModes: [ReadWriteMany]
  storageClassName: ''
  persistentVolumeReclaimPolicy: Retain
  hostPath: {{path: {}, type: Directory}}
  claimRef: {{namespace: {ns}, name: binaries-cache}}
---
apiVersion: v1
kind: PersistentVolumeClaim
metadata: {{name: binaries-cache, namespace: {ns}}}
spec:
  accessModes: [ReadWriteMany]
  storageClassName: ''
  volumeName: {ns}-cache
  resources: {{requests: {{storage: 1Gi}}}}
",
        dir.path().display()
    );
    crate::support::kubectl_stdin(["apply", "-f", "-"], &pv)?;
    // Successful Pods are kept, so that init's own output can be read when its lines are
    // missing from the backend (below).
    runs.apply_pool(
        "cached",
        1,
        "  keepSuccessfulPods: true\n",
        "    binariesCacheVolume:\n      name: binaries-cache\n      persistentVolumeClaim: {claimName: binaries-cache}\n",
    )?;
    runs.create_stack(
        "cached",
        "cached",
        "hello",
        Some(&node.images.runner_tofu),
        &[],
    )
    .await?;
    // The cache's files after each run: the second run must find the first one's tool and
    // leave it as it was (same inode, same modification time: nothing downloaded again).
    let files = |dir: &std::path::Path| {
        let mut found = Vec::new();
        let mut todo = vec![dir.to_path_buf()];
        while let Some(at) = todo.pop() {
            for entry in std::fs::read_dir(&at).into_iter().flatten().flatten() {
                let Ok(meta) = entry.metadata() else { continue };
                if meta.is_dir() {
                    todo.push(entry.path());
                } else {
                    use std::os::unix::fs::MetadataExt as _;
                    found.push((entry.path(), meta.ino(), meta.mtime_nsec(), meta.len()));
                }
            }
        }
        found.sort();
        found
    };
    let mut cached = Vec::new();
    let mut said = Vec::new();
    let mut logs = Vec::new();
    for _ in 0..2 {
        let run = runs.trigger("cached", true).await?;
        runs.wait_state(&run.id, &["succeeded"]).await?;
        // init's lines reach the backend before init ends; read again for a while all the
        // same, so that a slow machine shows the log instead of an empty line.
        let tool = format!("tool tofu {}:", runs.tofu_version);
        let mut log = String::new();
        for _ in 0..30 {
            log = runs.log_text(&run.id, "planning").await?;
            if log.contains(&tool) {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
        let line = log
            .lines()
            .find(|l| l.contains(&tool))
            .unwrap_or_default()
            .to_string();
        if line.is_empty() {
            // The defect being chased (see below): keep what init printed itself, which says
            // why its lines did not reach the backend, where the suite's run leaves it.
            let pod = format!("{}-planning-1", run.id.to_lowercase());
            let init = crate::logs(&runs.stack.ns, &pod, "init")
                .unwrap_or_else(|err| format!("no init log: {err:#}"));
            let dir = crate::support::repo_root().join("target/diagnostics");
            let _ = std::fs::create_dir_all(&dir);
            let _ = std::fs::write(
                dir.join(format!("init-lines-missing-{}.txt", run.id)),
                &init,
            );
            eprintln!("init's lines are missing from the backend; init printed:\n{init}");
        }
        said.push(line);
        logs.push(log);
        cached.push(files(dir.path()));
    }
    assert!(said[0].contains("cache miss"), "{said:?}\n{}", logs[0]);
    assert!(
        cached[0].iter().any(|(_, _, _, len)| *len > 1 << 20),
        "the first run left the tool in the cache: {:?}",
        cached[0]
    );
    assert_eq!(
        cached[1], cached[0],
        "the second run used the cached tool as it was"
    );
    // init's own log says so too. Under load its lines are sometimes missing from the
    // backend altogether (a defect being chased: the worker's lines arrive, init's do not);
    // when they are there, they must say hit.
    assert!(
        said[1].is_empty() || said[1].contains("cache hit"),
        "the second run found the tool: {said:?}\nits log:\n{}",
        logs[1]
    );
    let _ = crate::support::kubectl(["delete", "pv", &format!("{ns}-cache"), "--wait=false"]);
    runs.stack.ns.cleanup().await
}

#[tokio::test]
async fn a_launcher_holding_another_workers_key_is_refused() -> anyhow::Result<()> {
    let Some(runs) = RealRuns::start("real-identity", "swapped", 2, "", "").await? else {
        return Ok(());
    };
    // Each worker's Secret gets the other's private key: whichever worker takes the run signs
    // as itself with a key the backend registered for someone else.
    let workers = runs.stack.worker_list().await?;
    let secrets: Api<Secret> = runs.stack.ns.api();
    let mut keys = BTreeMap::new();
    for worker in &workers {
        let secret = secrets.get(&worker.name_any()).await?;
        keys.insert(
            worker.name_any(),
            secret.data.unwrap_or_default()["privateKey"].clone(),
        );
    }
    let names: Vec<String> = workers.iter().map(Worker::name_any).collect();
    for (mine, theirs) in [(&names[0], &names[1]), (&names[1], &names[0])] {
        let key: &ByteString = &keys[theirs];
        let patch = json!({"data": {"privateKey": key}});
        secrets
            .patch(mine, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    runs.create_stack("victim", "swapped", "hello", None, &[])
        .await?;
    let run = runs.trigger("victim", true).await?;
    let failed = runs.wait_state(&run.id, &["failed"]).await?;
    assert!(
        failed
            .message
            .contains("does not verify with the public key worker"),
        "init says the backend refused the signature: {}",
        failed.message
    );
    runs.stack.ns.cleanup().await
}
