//! The CRDs and the run-Pod builder against a real apiserver (issue 3, item 5): the generated
//! CRDs install, every seed example applies, the apiserver refuses bad pools naming the field,
//! every seed pool's run Pod is a valid Pod that runs, and Pods go with their Worker.

mod support;

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams};
use kube::{Resource, ResourceExt};
use workerpool_operator::crd::{
    ANNOTATION_WORKERPOOL_NAME, LABEL_ULID, LABEL_WORKERPOOL, Worker, WorkerPool, WorkerSpec,
};
use workerpool_operator::manifest::load_workerpool;
use workerpool_operator::pod::build_pod;
use workerpool_operator::protocol::RunSchedule;

use support::{TestNamespace, wait_for};

/// The garbage collector rereads discovery every 30 s; the CRDs exist before it starts, so it
/// is usually at once, but allow for one rediscovery.
const GC_WAIT: std::time::Duration = std::time::Duration::from_secs(90);

fn seed_files() -> Vec<std::path::PathBuf> {
    let dir = support::repo_root().join("tests/fixtures/seed");
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("fixtures")
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files
}

/// The CRDs as generated install on a cluster that never had them. The test cluster has the
/// real ones already (the support code applies them first), so the same YAML is installed
/// under a group of its own, which is then removed again.
#[tokio::test]
async fn the_generated_crds_apply_server_side_and_become_established() -> anyhow::Result<()> {
    support::cluster();
    let group = format!("fresh-{}.test.example.com", std::process::id());
    let mut manifests = String::new();
    for file in ["workerpools.yaml", "workers.yaml"] {
        let yaml = std::fs::read_to_string(support::repo_root().join("crds").join(file))?;
        manifests.push_str(&yaml.replace("workers.spacelift.io", &group));
        manifests.push_str("\n---\n");
    }
    let out = support::kubectl_output(["apply", "--server-side", "-f", "-"], Some(&manifests))?;
    assert!(out.success, "{}", out.stderr);
    let api: Api<CustomResourceDefinition> = Api::all(support::client().await?);
    let names = [format!("workerpools.{group}"), format!("workers.{group}")];
    for name in &names {
        let established = wait_for(
            &format!("{name} Established"),
            support::DEFAULT_TIMEOUT,
            || {
                let api = api.clone();
                async move {
                    let crd = api.get(name).await?;
                    let conditions = crd.status.and_then(|s| s.conditions).unwrap_or_default();
                    Ok(conditions
                        .iter()
                        .any(|c| c.type_ == "Established" && c.status == "True")
                        .then_some(()))
                }
            },
        )
        .await;
        let _ = api.delete(name, &DeleteParams::default()).await;
        established?;
    }
    Ok(())
}

#[tokio::test]
async fn every_seed_example_applies_scales_and_prints_its_columns() -> anyhow::Result<()> {
    let ns = TestNamespace::new("seed-apply").await?;
    for file in seed_files() {
        let out = ns.kubectl([
            "apply",
            "--server-side",
            "-f",
            file.to_str().unwrap_or_default(),
        ])?;
        assert!(
            out.contains("serverside-applied"),
            "{}: {out}",
            file.display()
        );
    }
    ns.kubectl(["scale", "workerpools", "test-workerpool", "--replicas=5"])?;
    let pool = ns.api::<WorkerPool>().get("test-workerpool").await?;
    assert_eq!(pool.spec.pool_size, 5);
    let table = ns.kubectl(["get", "workerpools"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split("  ")
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect();
    assert_eq!(header, ["NAME", "DESIRED POOL SIZE", "ACTUAL POOL SIZE"]);
    let row = table
        .lines()
        .find(|line| line.starts_with("test-workerpool "))
        .unwrap_or_default();
    assert_eq!(row.split_whitespace().nth(1), Some("5"), "{table}");

    // A Worker prints its pool, registration, state and run.
    let pool = load_workerpool(&seed_files()[0])?;
    let mut worker = stand_in_worker(&ns.name, &pool, 0);
    worker
        .annotations_mut()
        .insert(ANNOTATION_WORKERPOOL_NAME.into(), pool.name_any());
    ns.api::<Worker>()
        .create(&PostParams::default(), &worker)
        .await?;
    let table = ns.kubectl(["get", "workers"])?;
    let header: Vec<&str> = table
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["NAME", "POOL", "REGISTERED", "STATUS", "RUN", "ID"],
        "{table}"
    );
    assert!(table.contains(&pool.name_any()), "{table}");
    ns.cleanup().await
}

#[tokio::test]
async fn the_apiserver_refuses_bad_pools_naming_the_field() -> anyhow::Result<()> {
    let ns = TestNamespace::new("seed-refuse").await?;
    let pool = |spec: &str| {
        format!(
            "apiVersion: workers.spacelift.io/v1beta1\nkind: WorkerPool\nmetadata:\n  name: bad\nspec:\n{spec}"
        )
    };
    let cases = [
        (
            "  token:\n    secretKeyRef: {name: s, key: token}\n",
            "spec.privateKey: Required value: privateKey must be set when token is",
        ),
        (
            "  privateKey:\n    secretKeyRef: {name: s, key: privateKey}\n",
            "spec.token: Required value: token must be set when privateKey is",
        ),
        (
            "  successfulPodsHistoryTTL: 1d\n",
            "spec.successfulPodsHistoryTTL: Invalid value: \"1d\": must be a Go duration",
        ),
        (
            "  pod:\n    workerContainer:\n      imagePullPolicy: Sometimes\n",
            "spec.pod.workerContainer.imagePullPolicy: Unsupported value: \"Sometimes\"",
        ),
        (
            "  pod:\n    activeDeadlineSeconds: 0\n",
            "spec.pod.activeDeadlineSeconds: Invalid value: 0",
        ),
        (
            "  plugins:\n  - configMap: mirror\n  - configMap: guard\n    name: mirror\n",
            "spec.plugins: Invalid value: two plugins have the same name",
        ),
        (
            "  plugins:\n  - configMap: \"\"\n",
            "spec.plugins[0].configMap: Invalid value: \"\"",
        ),
        (
            "  poolSize: -1\n",
            "spec.poolSize: Invalid value: -1: spec.poolSize in body should be greater than or equal to 0",
        ),
        (
            "  poolSize: two\n",
            ".spec.poolSize: expected numeric (int or float), got string",
        ),
        (
            "  poolSzie: 2\n",
            ".spec.poolSzie: field not declared in schema",
        ),
    ];
    for (spec, want) in cases {
        let out = ns.kubectl_output(
            ["apply", "--server-side", "--validate=strict", "-f", "-"],
            Some(&pool(spec)),
        )?;
        assert!(!out.success, "accepted: {spec}");
        assert!(
            out.stderr.contains(want),
            "expected {want:?} in {:?}",
            out.stderr
        );
    }
    ns.cleanup().await
}

/// Every field of Spacelift's controller v0.0.42 WorkerPool schema we know of (issue 15, item
/// 5) is accepted under strict field validation and kept as written: a field the CRD does not
/// declare is refused, and one it declares but prunes would be missing when read back.
#[tokio::test]
async fn every_field_of_controller_v0_0_42_is_accepted_and_kept() -> anyhow::Result<()> {
    let ns = TestNamespace::new("parity-0042").await?;
    let file = support::repo_root().join("tests/fixtures/parity/controller-v0.0.42.yaml");
    let manifest = std::fs::read_to_string(&file)?;
    let out = ns.kubectl_output(
        ["apply", "--server-side", "--validate=strict", "-f", "-"],
        Some(&manifest),
    )?;
    assert!(out.success, "refused: {}", out.stderr);
    let written: serde_json::Value = yaml_serde::from_str(&manifest)?;
    let read = ns.kubectl(["get", "workerpool", "parity-v0-0-42", "-o", "json"])?;
    let read: serde_json::Value = serde_json::from_str(&read)?;
    let mut leaves = Vec::new();
    leaf_paths(&written["spec"], "spec".to_string(), &mut leaves);
    assert!(
        leaves.len() >= 90,
        "the fixture sets every field: {}",
        leaves.len()
    );
    let missing: Vec<_> = leaves
        .iter()
        .filter(|(pointer, value)| read.pointer(&format!("/{pointer}")) != Some(value))
        .map(|(pointer, value)| format!("{pointer} = {value}"))
        .collect();
    assert!(missing.is_empty(), "not kept as written: {missing:#?}");
    // The operator reads the same object into its own types without losing the new fields.
    let pool = ns.api::<WorkerPool>().get("parity-v0-0-42").await?;
    let pod = pool.spec.pod.as_ref().expect("spec.pod");
    assert_eq!(pod.share_process_namespace, Some(true));
    for container in [&pod.worker_container, &pod.grpc_server_container] {
        let lifecycle = container.as_ref().and_then(|c| c.lifecycle.as_ref());
        assert!(lifecycle.and_then(|l| l.pre_stop.as_ref()).is_some());
    }
    ns.cleanup().await
}

/// Every leaf of `value` as a JSON pointer below `at` (without the leading slash) and its value.
fn leaf_paths(value: &serde_json::Value, at: String, out: &mut Vec<(String, serde_json::Value)>) {
    let escape = |key: &str| key.replace('~', "~0").replace('/', "~1");
    match value {
        serde_json::Value::Object(map) if !map.is_empty() => {
            for (key, child) in map {
                leaf_paths(child, format!("{at}/{}", escape(key)), out);
            }
        }
        serde_json::Value::Array(items) if !items.is_empty() => {
            for (i, child) in items.iter().enumerate() {
                leaf_paths(child, format!("{at}/{i}"), out);
            }
        }
        leaf => out.push((at, leaf.clone())),
    }
}

/// A null where the schema has a default takes the default, and a null elsewhere reads as
/// unset: either way the operator can still read every pool in the namespace.
#[tokio::test]
async fn nulls_in_a_pool_leave_it_readable() -> anyhow::Result<()> {
    let ns = TestNamespace::new("seed-nulls").await?;
    let manifest = "apiVersion: workers.spacelift.io/v1beta1
kind: WorkerPool
metadata:
  name: nulls
spec:
  poolSize: null
  plugins: null
  defaultRunnerImage: null
  pod:
    workerContainer:
      resources:
        requests: null
";
    let out = ns.kubectl_output(["apply", "--server-side", "-f", "-"], Some(manifest))?;
    assert!(out.success, "refused: {}", out.stderr);
    let pools = ns.api::<WorkerPool>().list(&Default::default()).await?;
    assert_eq!(pools.items.len(), 1);
    assert_eq!(pools.items[0].spec.pool_size, 1);
    assert!(pools.items[0].spec.plugins.is_empty());
    ns.cleanup().await
}

/// A Worker of `pool` as the operator would make it; `nth` tells apart the stand-ins of pools
/// that share a name (the seed's examples do).
fn stand_in_worker(ns: &str, pool: &WorkerPool, nth: usize) -> Worker {
    Worker {
        metadata: ObjectMeta {
            name: Some(format!(
                "{}-01hps6k4bnb7bphcdhdwfamjnv-{nth}",
                pool.name_any()
            )),
            namespace: Some(ns.into()),
            labels: Some(BTreeMap::from([
                (
                    LABEL_WORKERPOOL.to_string(),
                    "01HPS9HDSWCQ73RPDTVAK0KK0A".to_string(),
                ),
                (
                    LABEL_ULID.to_string(),
                    "01HPS6K4BNB7BPHCDHDWFAMJNV".to_string(),
                ),
            ])),
            ..ObjectMeta::default()
        },
        spec: WorkerSpec::default(),
        status: None,
    }
}

fn run() -> RunSchedule {
    RunSchedule {
        run_id: "01HN37WC3MCNE3CY9HAHWRF06K".into(),
        stage: "preparing".into(),
        attempt: 2,
        runner_image: Some("docker.io/spacelift/runner:1".into()),
        launcher_image: "public.ecr.aws/spacelift/launcher:d0a81de1".into(),
        ..RunSchedule::default()
    }
}

#[tokio::test]
async fn every_seed_pools_run_pod_is_accepted_scheduled_and_runs() -> anyhow::Result<()> {
    let ns = TestNamespace::new("seed-pods").await?;
    // The configuration example names a service account; the apiserver needs it to exist.
    let accounts: Api<ServiceAccount> = ns.api();
    let account = ServiceAccount {
        metadata: ObjectMeta {
            name: Some("custom-service-account".into()),
            ..ObjectMeta::default()
        },
        ..ServiceAccount::default()
    };
    accounts.create(&PostParams::default(), &account).await?;
    let workers: Api<Worker> = ns.api();
    let pods: Api<Pod> = ns.pods();
    let _volume = WorkspaceVolume::create(&ns.name)?;
    let mut ran = 0;
    for (index, file) in seed_files().into_iter().enumerate() {
        // The policy example's ConfigMap document holds no WorkerPool.
        if file.ends_with("initialization-policies-configmap.yaml") {
            continue;
        }
        let pool = load_workerpool(&file)?;
        // Each pool gets its own Worker so the Pods' owners are real objects. Several seed
        // pools share a name; the index keeps each Worker's and each Pod's name its own, so
        // nothing still acting on the previous file's objects by name can reach these.
        let worker = workers
            .create(
                &PostParams::default(),
                &stand_in_worker(&ns.name, &pool, index),
            )
            .await?;
        let schedule = RunSchedule {
            attempt: u32::try_from(index)? + 1,
            ..run()
        };
        let pod = build_pod(&pool, &worker, &schedule)
            .unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        let name = pod.name_any();
        pods.create(&PostParams::default(), &pod)
            .await
            .map_err(|e| {
                anyhow::anyhow!("{}: the apiserver refused the run Pod: {e}", file.display())
            })?;
        support::wait_for_pod(&ns.client, &ns.name, &name, support::pod_running)
            .await
            .map_err(|e| anyhow::anyhow!("{}: {e}", file.display()))?;
        ran += 1;
        pods.delete(&name, &DeleteParams::default().grace_period(0))
            .await?;
        wait_for("the Pod gone", support::DEFAULT_TIMEOUT, || async {
            Ok(pods.get_opt(&name).await?.is_none().then_some(()))
        })
        .await?;
        workers
            .delete(&worker.name_any(), &DeleteParams::default())
            .await?;
    }
    assert_eq!(ran, seed_files().len() - 1, "every seed pool's Pod ran");
    ns.cleanup().await
}

/// The workspace example asks for an ephemeral 1Gi ReadWriteOnce volume of StorageClass gp2.
/// No provisioner serves that here, so a pre-made PersistentVolume of that class stands in and
/// the claim binds to it. Both are cluster-wide; the volume is removed when this is dropped.
struct WorkspaceVolume(String);

impl WorkspaceVolume {
    fn create(namespace: &str) -> anyhow::Result<Self> {
        let name = format!("{namespace}-workspace");
        let manifest = format!(
            "apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: gp2
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: Immediate
---
apiVersion: v1
kind: PersistentVolume
metadata:
  name: {name}
spec:
  storageClassName: gp2
  capacity:
    storage: 1Gi
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Retain
  hostPath:
    path: /tmp/{name}
"
        );
        let out = support::kubectl_output(["apply", "--server-side", "-f", "-"], Some(&manifest))?;
        anyhow::ensure!(out.success, "creating the gp2 volume: {}", out.stderr);
        Ok(Self(name))
    }
}

impl Drop for WorkspaceVolume {
    fn drop(&mut self) {
        let _ = support::kubectl_output(["delete", "pv", &self.0, "--wait=false"], None);
    }
}

#[tokio::test]
async fn a_run_pod_is_garbage_collected_with_its_worker() -> anyhow::Result<()> {
    let ns = TestNamespace::new("seed-gc").await?;
    let pool = load_workerpool(
        &support::repo_root().join("tests/fixtures/seed/create-a-workerpool.yaml"),
    )?;
    let workers: Api<Worker> = ns.api();
    let worker = workers
        .create(&PostParams::default(), &stand_in_worker(&ns.name, &pool, 0))
        .await?;
    let pod = build_pod(&pool, &worker, &run())?;
    let pods: Api<Pod> = ns.pods();
    pods.create(&PostParams::default(), &pod).await?;
    assert_eq!(
        pod.owner_references()[0].uid,
        worker.meta().uid.clone().unwrap_or_default()
    );
    workers
        .delete(&worker.name_any(), &DeleteParams::background())
        .await?;
    wait_for("the run Pod collected with its Worker", GC_WAIT, || async {
        let pod = pods.get_opt(&pod.name_any()).await?;
        Ok(pod
            .is_none_or(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(()))
    })
    .await?;
    ns.cleanup().await
}
