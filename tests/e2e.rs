//! End to end, one test per behaviour of the seed: the operator binary against the real control
//! plane (tests/testenv), a real Mosquitto with mutual TLS and the reference backend.

mod broker;
mod support;

#[path = "e2e/autoscale.rs"]
mod autoscale;
#[path = "e2e/leader.rs"]
mod leader;
#[path = "e2e/reports.rs"]
mod reports;
#[path = "e2e/stack.rs"]
mod stack;

use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use kube::{Resource, ResourceExt};
use ulid::Ulid;
use workerpool_operator::controller::FINALIZER;
use workerpool_operator::crd::{
    ANNOTATION_WORKERPOOL_NAME, LABEL_RUN_ID, LABEL_ULID, LABEL_WORKERPOOL, Worker, WorkerPool,
    WorkerSpec, WorkerState,
};
use workerpool_operator::protocol::{Body, Message, RunSchedule};

use stack::{Stack, WAIT, pool_yaml};
use support::{Finish, Outcome, wait_for};

pub const RUNNER: &str = "public.ecr.aws/spacelift/runner-terraform:latest";

fn seed(name: &str) -> String {
    let path = support::repo_root().join("tests/fixtures/seed").join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[tokio::test]
async fn the_seed_pool_registers_its_workers_with_their_own_keys() -> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-create").await?;
    let pool_ulid = stack.create_credentials("test-workerpool", "test-workerpool")?;
    stack.start_operator(&[])?;
    stack.apply(&seed("create-a-workerpool.yaml"))?;

    let pool = stack.wait_registered("test-workerpool", 2).await?;
    let status = pool.status.clone().unwrap_or_default();
    assert_eq!(status.desired_pool_size, Some(2));
    assert_eq!(
        status.selector,
        Some(format!("{LABEL_WORKERPOOL}={pool_ulid}"))
    );
    assert_eq!(pool.labels().get(LABEL_ULID), Some(&pool_ulid));

    let workers = stack.worker_list().await?;
    assert_eq!(workers.len(), 2);
    let secrets: Api<Secret> = stack.ns.api();
    let mut keys = Vec::new();
    for worker in &workers {
        let ulid = worker.labels().get(LABEL_ULID).cloned().unwrap_or_default();
        assert_eq!(
            worker.name_any(),
            format!("test-workerpool-{}", ulid.to_lowercase())
        );
        assert_eq!(worker.labels().get(LABEL_WORKERPOOL), Some(&pool_ulid));
        assert_eq!(
            worker
                .annotations()
                .get(ANNOTATION_WORKERPOOL_NAME)
                .map(String::as_str),
            Some("test-workerpool")
        );
        let status = worker.status.clone().unwrap_or_default();
        assert_eq!(
            (status.registered, status.state),
            (Some(true), Some(WorkerState::Idle))
        );
        let secret = secrets.get(&worker.name_any()).await?;
        assert_eq!(secret.owner_references()[0].name, worker.name_any());
        keys.push(secret.data.unwrap_or_default()["privateKey"].0.clone());
    }
    assert_ne!(keys[0], keys[1], "every worker has its own key pair");

    let table = stack.ns.kubectl(["get", "workerpools"])?;
    assert!(
        table.contains("DESIRED POOL SIZE") && table.contains("ACTUAL POOL SIZE"),
        "{table}"
    );
    let row = table
        .lines()
        .find(|l| l.starts_with("test-workerpool"))
        .unwrap_or_default();
    assert_eq!(
        row.split_whitespace().collect::<Vec<_>>()[1..3],
        ["2", "2"],
        "{table}"
    );
    let workers_table = stack.ns.kubectl(["get", "workers"])?;
    assert!(
        workers_table.contains("test-workerpool") && workers_table.contains("IDLE"),
        "{workers_table}"
    );

    let backend_workers: Vec<workerpool_operator::backend::store::WorkerView> =
        reqwest::get(format!("{}/api/workers", stack.backend_url))
            .await?
            .json()
            .await?;
    assert_eq!(
        backend_workers
            .iter()
            .filter(|w| w.pool_id == pool_ulid)
            .count(),
        2
    );
    stack.ns.cleanup().await
}

#[tokio::test]
async fn scale_down_never_deletes_a_busy_worker() -> anyhow::Result<()> {
    let stack = Stack::with_pool("e2e-scale", "scaling", 2, "").await?;

    let run = stack.submit("scaling", RUNNER, &[]).await?;
    let pod = stack.wait_run_pod(&run.id).await?;
    stack
        .ns
        .kubectl(["scale", "workerpools", "scaling", "--replicas=0"])?;
    let spec_size = stack.pools().get("scaling").await?.spec.pool_size;
    assert_eq!(spec_size, 0, "kubectl scale sets spec.poolSize");

    let busy = wait_for(
        "the idle worker gone and the busy one DRAINING",
        WAIT,
        || async {
            let workers = stack.worker_list().await?;
            let states: Vec<_> = workers
                .iter()
                .map(|w| w.status.clone().unwrap_or_default().state)
                .collect();
            Ok((states == [Some(WorkerState::Draining)]).then(|| workers[0].clone()))
        },
    )
    .await?;
    assert_eq!(
        busy.status.unwrap_or_default().current_run_id.as_deref(),
        Some(run.id.as_str())
    );
    assert!(
        stack.pods().get_opt(&pod.name_any()).await?.is_some(),
        "the run Pod survives the scale-down"
    );

    stack.finish(&pod.name_any(), Outcome::Succeeded).await?;
    stack.wait_run(&run.id, "succeeded").await?;
    wait_for("the drained worker removed", WAIT, || async {
        Ok(stack.worker_list().await?.is_empty().then_some(()))
    })
    .await?;

    stack
        .ns
        .kubectl(["scale", "workerpools", "scaling", "--replicas=1"])?;
    stack.wait_registered("scaling", 1).await?;
    stack.ns.cleanup().await
}

#[tokio::test]
async fn run_outcomes_are_reported_with_their_cause() -> anyhow::Result<()> {
    let stack = Stack::with_pool("e2e-runs", "runs", 4, "").await?;

    let cases = [
        (Finish::succeeded(), "succeeded", None, ""),
        (
            Finish::failed().exit_code(3),
            "failed",
            Some("Error"),
            "exited with code 3",
        ),
        (
            Finish::oom_killed(),
            "failed",
            Some("OOMKilled"),
            "OOMKilled",
        ),
        (
            Outcome::DeadlineExceeded.into(),
            "failed",
            Some("DeadlineExceeded"),
            "deadline",
        ),
        (
            Finish::evicted(),
            "failed",
            Some("Evicted"),
            "low on resource",
        ),
    ];
    let mut runs = Vec::new();
    for (finish, ..) in &cases {
        let run = stack.submit("runs", RUNNER, &[]).await?;
        let pod = stack.wait_run_pod(&run.id).await?;
        stack.finish(&pod.name_any(), finish.clone()).await?;
        runs.push((run, pod));
    }
    for ((run, pod), (_, state, cause, message)) in runs.iter().zip(&cases) {
        let ended = stack.wait_run(&run.id, state).await?;
        assert_eq!(ended.cause.as_deref(), *cause, "run {}", run.id);
        assert!(
            ended.message.contains(message),
            "{:?} lacks {message:?}",
            ended.message
        );
        if *state == "succeeded" {
            stack
                .wait_pod_gone("the successful Pod deleted", &pod.name_any())
                .await?;
        } else {
            // The outcome annotation says the report was sent, so it follows the report.
            let pods = stack.pods();
            let marked = wait_for("the failed Pod marked with its outcome", WAIT, || async {
                let kept = pods.get_opt(&pod.name_any()).await?;
                let kept = kept.expect("failed Pods are kept for debugging");
                Ok(kept
                    .annotations()
                    .get("workers.spacelift.io/outcome")
                    .cloned())
            })
            .await?;
            assert_eq!(marked, "failed");
        }
    }
    wait_for("every worker IDLE again", WAIT, || async {
        let workers = stack.worker_list().await?;
        Ok(workers
            .iter()
            .all(|w| w.status.clone().unwrap_or_default().state == Some(WorkerState::Idle))
            .then_some(()))
    })
    .await?;
    stack.ns.cleanup().await
}

#[tokio::test]
async fn a_stop_request_deletes_the_pod_and_reports_stopped() -> anyhow::Result<()> {
    let stack = Stack::with_pool("e2e-stop", "stopping", 1, "").await?;
    let run = stack.submit("stopping", RUNNER, &[]).await?;
    let pod = stack.wait_run_pod(&run.id).await?;
    workerpool_operator::backend::client::stop_run(&stack.backend_url, &run.id).await?;
    let stopped = stack.wait_run(&run.id, "stopped").await;
    if stopped.is_err() {
        eprintln!("{:#?}", stack.run(&run.id).await?.events);
        eprintln!("{}", stack.operator_log());
    }
    stopped?;
    stack
        .wait_pod_gone("the stopped run's Pod gone", &pod.name_any())
        .await?;
    stack.ns.cleanup().await
}

#[tokio::test]
async fn bad_credentials_are_reported_and_a_fixed_secret_heals_the_pool() -> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-creds").await?;
    stack.create_credentials("healthy", "healthy")?;
    stack.create_credentials("broken", "broken")?;
    // Corrupt the private key the way the seed's troubleshooting shows.
    let good_key = stack.ns.kubectl([
        "get",
        "secret",
        "broken",
        "-o",
        "jsonpath={.data.privateKey}",
    ])?;
    stack.ns.kubectl([
        "patch",
        "secret",
        "broken",
        "--type=merge",
        "-p",
        r#"{"stringData":{"privateKey":"bm90@base64"}}"#,
    ])?;
    stack.start_operator(&[])?;
    stack.apply(&pool_yaml("healthy", "healthy", 1, ""))?;
    stack.apply(&pool_yaml("broken", "broken", 1, ""))?;

    stack.wait_registered("healthy", 1).await?;
    let events = wait_for("a WorkerPoolCannotRegister event", WAIT, || async {
        let out = stack
            .ns
            .kubectl([
                "get",
                "events",
                "--field-selector",
                "regarding.name=broken,reason=WorkerPoolCannotRegister",
                "-o",
                "jsonpath={.items[*].note}",
            ])
            .or_else(|_| stack.ns.kubectl(["events", "--for", "workerpool/broken"]))?;
        Ok(out
            .contains("WorkerPoolCannotRegister")
            .then_some(out.clone())
            .or_else(|| out.contains("Unable to register").then_some(out)))
    })
    .await?;
    assert!(
        events.contains("Unable to register worker pool: cannot retrieve workerpool token: unable to base64 decode privateKey: illegal base64 data at input byte 4"),
        "{events}"
    );
    let broken = stack.pools().get("broken").await?;
    let status = broken.status.unwrap_or_default();
    assert_eq!(
        status.actual_pool_size, None,
        "the actual size stays empty, as the seed shows"
    );
    let registered = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Registered")
        .expect("Registered condition");
    assert_eq!(
        (registered.status.as_str(), registered.reason.as_str()),
        ("False", "InvalidCredentials")
    );
    assert!(
        stack
            .operator_log()
            .contains("illegal base64 data at input byte 4")
    );

    stack.ns.kubectl([
        "patch",
        "secret",
        "broken",
        "--type=merge",
        "-p",
        &format!(r#"{{"data":{{"privateKey":"{good_key}"}}}}"#),
    ])?;
    stack.wait_registered("broken", 1).await?;
    stack.ns.cleanup().await
}

#[tokio::test]
async fn successful_pods_are_kept_when_asked_and_history_limits_apply() -> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-history").await?;
    stack.create_credentials("kept", "kept")?;
    stack.start_operator(&[])?;
    stack.apply(&pool_yaml(
        "kept",
        "kept",
        1,
        "  keepSuccessfulPods: true\n  failedPodsHistoryLimit: 1\n",
    ))?;
    stack.wait_registered("kept", 1).await?;

    let mut pods = Vec::new();
    for finish in [Finish::succeeded(), Finish::failed(), Finish::failed()] {
        let run = stack.submit("kept", RUNNER, &[]).await?;
        let pod = stack.wait_run_pod(&run.id).await?;
        stack.finish(&pod.name_any(), finish).await?;
        let state = if pods.is_empty() {
            "succeeded"
        } else {
            "failed"
        };
        stack.wait_run(&run.id, state).await?;
        pods.push(pod.name_any());
    }
    let remaining = wait_for("the oldest failed Pod removed", WAIT, || async {
        let names: Vec<String> = stack
            .pods()
            .list(&ListParams::default().labels(LABEL_RUN_ID))
            .await?
            .items
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .map(ResourceExt::name_any)
            .collect();
        Ok((names.len() == 2).then_some(names))
    })
    .await?;
    assert!(
        remaining.contains(&pods[0]),
        "keepSuccessfulPods keeps the successful Pod"
    );
    assert!(
        remaining.contains(&pods[2]),
        "the newest failed Pod is kept"
    );
    assert!(
        !remaining.contains(&pods[1]),
        "failedPodsHistoryLimit: 1 removes the older failed Pod"
    );
    stack.ns.cleanup().await
}

#[tokio::test]
async fn a_controller_killed_mid_run_reports_the_outcome_and_never_creates_a_second_pod()
-> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-crash").await?;
    stack.create_credentials("crash", "crash")?;
    stack.start_operator(&[])?;
    stack.apply(&pool_yaml(
        "crash",
        "crash",
        1,
        "  keepSuccessfulPods: true\n",
    ))?;
    stack.wait_registered("crash", 1).await?;

    let run = stack.submit("crash", RUNNER, &[]).await?;
    let pod = stack.wait_run_pod(&run.id).await?;
    stack.kill_operator();
    // The run ends while nobody watches; a second run is queued meanwhile.
    stack.finish(&pod.name_any(), Outcome::Succeeded).await?;
    support::wait_for_pod(
        &support::client().await?,
        &stack.ns.name,
        &pod.name_any(),
        support::pod_finished,
    )
    .await?;
    let second = stack.submit("crash", RUNNER, &[]).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    stack.restart_operator()?;
    let ended = stack.wait_run(&run.id, "succeeded").await?;
    let created = ended
        .events
        .iter()
        .filter(|e| e.kind == "run.podCreated")
        .count();
    assert_eq!(created, 1, "one Pod for the run: {:?}", ended.events);
    let same = stack.pods().get(&pod.name_any()).await?;
    assert_eq!(same.uid(), pod.uid(), "the Pod was not recreated");

    let next_pod = stack.wait_run_pod(&second.id).await?;
    let pods: Api<Pod> = stack.pods();
    let for_second = pods
        .list(&ListParams::default().labels(&format!("{LABEL_RUN_ID}={}", second.id)))
        .await?;
    assert_eq!(for_second.items.len(), 1);
    stack
        .finish(&next_pod.name_any(), Outcome::Succeeded)
        .await?;
    stack.wait_run(&second.id, "succeeded").await?;
    stack.ns.cleanup().await
}

#[tokio::test]
async fn a_schedule_redelivered_after_its_run_ended_creates_no_second_pod() -> anyhow::Result<()> {
    // Successful Pods are deleted (keepSuccessfulPods is off), so the Pod name is free again.
    let mut stack = Stack::new("e2e-redeliver").await?;
    let pool_ulid = stack.create_credentials("again", "again")?;
    stack.start_operator(&[])?;
    stack.apply(&pool_yaml("again", "again", 1, ""))?;
    stack.wait_registered("again", 1).await?;

    let run = stack.submit("again", RUNNER, &[]).await?;
    let pod = stack.wait_run_pod(&run.id).await?;
    stack.finish(&pod.name_any(), Outcome::Succeeded).await?;
    let ended = stack.wait_run(&run.id, "succeeded").await?;
    let run_pods = ListParams::default().labels(&format!("{LABEL_RUN_ID}={}", run.id));
    wait_for("the successful Pod deleted", WAIT, || async {
        Ok(stack
            .pods()
            .list(&run_pods)
            .await?
            .items
            .is_empty()
            .then_some(()))
    })
    .await?;

    // A restarted operator has forgotten which schedules it handled; the same schedule arrives
    // again (a broker redelivery, a backend re-sending it).
    stack.restart_operator()?;
    let worker = ended.worker_id.clone().unwrap_or_default().parse()?;
    let schedule = RunSchedule {
        run_id: ended.id.clone(),
        stage: ended.stage.clone(),
        attempt: ended.attempt,
        runner_image: ended.runner_image.clone(),
        launcher_image: ended.launcher_image.clone(),
        ..RunSchedule::default()
    };
    let message = Message::for_worker(worker, Body::RunSchedule(schedule));
    stack
        .publish_as_backend(pool_ulid.parse()?, &message)
        .await?;

    let answer = wait_for(
        "the operator to answer the schedule again",
        WAIT,
        || async {
            if !stack.pods().list(&run_pods).await?.items.is_empty() {
                return Ok(Some("a second Pod"));
            }
            Ok(stack
                .operator_log()
                .contains("already finished: re-sending its report")
                .then_some("the recorded report"))
        },
    )
    .await
    .with_context(|| stack.diagnostics())?;
    assert_eq!(answer, "the recorded report", "{}", stack.diagnostics());
    // Give a wrongly accepted schedule time to show in the backend's history.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let history = stack.run(&run.id).await?;
    let kinds: Vec<&str> = history.events.iter().map(|e| e.kind.as_str()).collect();
    let count = |prefix: &str| kinds.iter().filter(|k| k.starts_with(prefix)).count();
    assert_eq!(
        count("run.podCreated"),
        1,
        "one Pod was reported: {kinds:?}"
    );
    assert_eq!(count("run.accepted"), 1, "accepted once: {kinds:?}");
    assert_eq!(history.state, "succeeded");
    assert!(stack.pods().list(&run_pods).await?.items.is_empty());
    let worker = stack.worker_list().await?.remove(0);
    assert_eq!(
        worker.status.unwrap_or_default().state,
        Some(WorkerState::Idle),
        "the worker did not take the finished run again"
    );
    stack.ns.cleanup().await
}

#[tokio::test]
async fn an_unschedulable_run_pod_fails_its_run_after_the_wait() -> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-unsched").await?;
    stack.create_credentials("nowhere", "nowhere")?;
    stack.start_operator(&[])?;
    let pinned = "  pod:\n    nodeSelector:\n      no-such-label: x\n";
    stack.apply(&pool_yaml("nowhere", "nowhere", 1, pinned))?;
    stack.wait_registered("nowhere", 1).await?;
    let run = stack.submit("nowhere", RUNNER, &[]).await?;
    // The operator runs with --unschedulable-timeout=5s.
    let failed = stack.wait_run(&run.id, "failed").await?;
    assert_eq!(failed.cause.as_deref(), Some("Unschedulable"));
    assert!(
        failed.message.contains("could not be scheduled"),
        "{}",
        failed.message
    );
    let pod_name = failed.pod_name.clone().unwrap_or_default();
    stack
        .wait_pod_gone("the abandoned Pod deleted", &pod_name)
        .await?;
    stack.ns.cleanup().await
}

#[tokio::test]
async fn hooks_change_or_refuse_run_pods_before_they_exist() -> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-hooks").await?;
    stack.create_credentials("hooked", "hooked")?;
    let wasm = support::repo_root().join("plugins/target/wasm/label-injector.wasm");
    anyhow::ensure!(
        wasm.is_file(),
        "{} is missing: run plugins/build",
        wasm.display()
    );
    let policies = support::repo_root().join("policies/pinned-runner-images.rego");
    stack.ns.kubectl([
        "create",
        "configmap",
        "label-injector",
        &format!("--from-file=plugin.wasm={}", wasm.display()),
    ])?;
    stack.ns.kubectl([
        "create",
        "configmap",
        "hooked-initialization-policy",
        &format!(
            "--from-file=initialization-policy.rego={}",
            policies.display()
        ),
    ])?;
    stack.start_operator(&[])?;
    let hooks = r#"  plugins:
    - configMap: label-injector
      settings:
        labels:
          spacelift.io/stack: "{run.metadata.stack}"
"#
    .to_string()
        + &stack::initialization_policy_yaml("hooked-initialization-policy");
    stack.apply(&pool_yaml("hooked", "hooked", 1, &hooks))?;
    stack.wait_registered("hooked", 1).await?;
    let pool = stack.pools().get("hooked").await?;
    let hooks_ready = pool
        .status
        .unwrap_or_default()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "HooksReady");
    assert_eq!(hooks_ready.map(|c| c.status).as_deref(), Some("True"));

    // Allowed and changed by the plugin: the Pod carries the label and the decision trail.
    let run = stack
        .submit(
            "hooked",
            "public.ecr.aws/spacelift/runner-terraform:1.5.7",
            &[("stack", "networking")],
        )
        .await?;
    let pod = stack.wait_run_pod(&run.id).await?;
    assert_eq!(
        pod.labels().get("spacelift.io/stack").map(String::as_str),
        Some("networking")
    );
    let trail = pod
        .annotations()
        .get("workers.spacelift.io/hooks")
        .cloned()
        .unwrap_or_default();
    assert!(trail.contains("label-injector"), "{trail}");
    stack.finish(&pod.name_any(), Outcome::Succeeded).await?;
    stack.wait_run(&run.id, "succeeded").await?;

    // Refused by the initialization policy: no Pod, every reason reported, an event on the Worker.
    let latest = stack
        .submit(
            "hooked",
            "public.ecr.aws/spacelift/runner-terraform:latest",
            &[],
        )
        .await?;
    let denied = stack.wait_run(&latest.id, "denied").await?;
    assert!(
        denied
            .message
            .contains("floats: pin a tag other than latest"),
        "{}",
        denied.message
    );
    let pods = stack
        .pods()
        .list(&ListParams::default().labels(&format!("{LABEL_RUN_ID}={}", latest.id)))
        .await?;
    assert!(pods.items.is_empty(), "a denied run has no Pod");
    let worker = stack.worker_list().await?.remove(0);
    let events = stack
        .ns
        .kubectl(["events", "--for", &format!("worker/{}", worker.name_any())])?;
    assert!(events.contains("RunDenied"), "{events}");
    wait_for("the worker IDLE after the denial", WAIT, || async {
        let w = stack.worker_list().await?.remove(0);
        Ok((w.status.unwrap_or_default().state == Some(WorkerState::Idle)).then_some(()))
    })
    .await?;

    // A broken new plugin version is reported and the previous one stays in service.
    stack.ns.kubectl_stdin(["apply", "-f", "-"], "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: label-injector\nbinaryData:\n  plugin.wasm: bm90IHdhc20=\n")?;
    let condition = wait_for("HooksReady=False", WAIT, || async {
        let pool = stack.pools().get("hooked").await?;
        Ok(pool
            .status
            .unwrap_or_default()
            .conditions
            .into_iter()
            .find(|c| c.type_ == "HooksReady" && c.status == "False"))
    })
    .await?;
    assert!(
        condition.message.contains("the previous version"),
        "{}",
        condition.message
    );
    let again = stack
        .submit(
            "hooked",
            "public.ecr.aws/spacelift/runner-terraform:1.5.7",
            &[("stack", "dns")],
        )
        .await?;
    let pod = stack.wait_run_pod(&again.id).await?;
    assert_eq!(
        pod.labels().get("spacelift.io/stack").map(String::as_str),
        Some("dns")
    );
    stack.ns.cleanup().await
}

#[tokio::test]
async fn a_disruption_budget_over_run_pods_blocks_evicting_a_run_in_progress() -> anyhow::Result<()>
{
    use k8s_openapi::api::policy::v1::PodDisruptionBudget;
    use kube::api::{EvictParams, PostParams};

    let stack = Stack::with_pool("e2e-pdb", "guarded", 1, "").await?;
    // What the chart's pdb.enabled renders: every run Pod, maxUnavailable 0.
    let budget: PodDisruptionBudget = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "run-pods"},
        "spec": {
            "maxUnavailable": 0,
            "selector": {"matchExpressions": [{"key": LABEL_WORKERPOOL, "operator": "Exists"}]},
        },
    }))?;
    let budgets: Api<PodDisruptionBudget> = stack.ns.api();
    budgets.create(&PostParams::default(), &budget).await?;

    let run = stack.submit("guarded", RUNNER, &[]).await?;
    let pod = stack.wait_run_pod(&run.id).await?;
    // The disruption controller counts the run Pod through the Worker's scale subresource.
    let status = wait_for("the budget to count the run Pod", WAIT, || async {
        let status = budgets.get("run-pods").await?.status.unwrap_or_default();
        Ok(
            (status.expected_pods == Some(1) && status.current_healthy == Some(1))
                .then_some(status),
        )
    })
    .await?;
    assert_eq!(status.disruptions_allowed, Some(0));
    let sync_failed = status
        .conditions
        .unwrap_or_default()
        .into_iter()
        .any(|c| c.reason == "SyncFailed");
    assert!(!sync_failed, "the budget cannot find the Worker's scale");

    // kube's client retries 429s by default (for minutes, honouring Retry-After): ask once.
    let mut config = support::config().await?;
    config.default_retry = false;
    let once: Api<Pod> = Api::namespaced(kube::Client::try_from(config)?, &stack.ns.name);
    let eviction = once.evict(&pod.name_any(), &EvictParams::default()).await;
    assert!(
        matches!(&eviction, Err(kube::Error::Api(status)) if status.code == 429),
        "a drain must wait for the run: {eviction:?}"
    );
    stack.finish(&pod.name_any(), Outcome::Succeeded).await?;
    stack.wait_run(&run.id, "succeeded").await?;
    stack.ns.cleanup().await
}

#[tokio::test]
async fn deleting_workers_while_the_backend_is_down_ends_after_the_deadline() -> anyhow::Result<()>
{
    let mut stack = Stack::with_pool("e2e-dereg", "orphaned", 1, "").await?;
    let worker = stack.worker_list().await?.remove(0);
    // Nobody will confirm the deregistration now.
    stack.broker.stop();
    stack
        .ns
        .kubectl(["delete", "workerpool", "orphaned", "--wait=false"])?;
    // The operator runs with --deregistration-timeout=5s.
    wait_for("the Worker gone despite the backend", WAIT, || async {
        Ok(stack.worker_list().await?.is_empty().then_some(()))
    })
    .await?;
    let events = stack.ns.kubectl([
        "get",
        "events",
        "--field-selector",
        "reason=DeregistrationTimedOut",
        "-o",
        "custom-columns=OBJECT:.involvedObject.name,MESSAGE:.message",
    ])?;
    assert!(events.contains(&worker.name_any()), "{events}");
    assert!(
        events.contains("did not confirm the deregistration"),
        "{events}"
    );
    stack.ns.cleanup().await
}

#[tokio::test]
async fn a_worker_left_without_its_key_by_a_crash_gets_a_new_key_and_registers()
-> anyhow::Result<()> {
    let mut stack = Stack::with_pool("e2e-nokey", "nokey", 1, "").await?;
    let pool_ulid = stack.worker_list().await?[0]
        .labels()
        .get(LABEL_WORKERPOOL)
        .cloned()
        .context("the worker's pool label")?;
    // The operator stops after creating a Worker of a scale-out, before creating its key Secret.
    stack.kill_operator();
    stack.apply(&pool_yaml("nokey", "nokey", 2, ""))?;
    let pool = stack.pools().get("nokey").await?;
    let ulid = Ulid::generate();
    let name = format!("nokey-{}", ulid.to_string().to_lowercase());
    let mut orphan = Worker::new(&name, WorkerSpec::default());
    orphan.metadata.labels = Some(
        [
            (LABEL_WORKERPOOL.to_string(), pool_ulid.clone()),
            (LABEL_ULID.to_string(), ulid.to_string()),
        ]
        .into(),
    );
    orphan.metadata.annotations =
        Some([(ANNOTATION_WORKERPOOL_NAME.to_string(), "nokey".to_string())].into());
    orphan.metadata.owner_references = pool.controller_owner_ref(&()).map(|o| vec![o]);
    orphan.metadata.finalizers = Some(vec![FINALIZER.to_string()]);
    stack
        .workers()
        .create(&PostParams::default(), &orphan)
        .await?;

    stack.restart_operator()?;
    stack.wait_registered("nokey", 2).await?;
    let workers = stack.worker_list().await?;
    assert_eq!(workers.len(), 2, "healed, not replaced");
    let healed = stack.workers().get(&name).await?;
    assert_eq!(healed.status.and_then(|s| s.registered), Some(true));
    let secrets: Api<Secret> = stack.ns.api();
    let secret = secrets.get(&name).await?;
    assert_eq!(secret.owner_references()[0].name, name);
    let data = secret.data.unwrap_or_default();
    assert!(data.contains_key("privateKey") && data.contains_key("publicKey"));
    let events = stack.ns.kubectl([
        "get",
        "events",
        "--field-selector",
        "reason=WorkerKeyRecreated",
        "-o",
        "custom-columns=OBJECT:.involvedObject.name,MESSAGE:.message",
    ])?;
    assert!(events.contains(&name), "{events}");
    assert!(events.contains("generated a new key pair"), "{events}");
    stack.ns.cleanup().await
}

/// A broker that is down when the operator starts, past its first-connection retries, is found
/// once it comes up: meanwhile the pool says the broker is unreachable, then it registers.
#[tokio::test]
async fn a_broker_that_comes_up_late_is_found_and_the_pool_registers() -> anyhow::Result<()> {
    let mut stack = Stack::new("e2e-late").await?;
    stack.create_credentials("late", "late")?;
    stack.broker.stop();
    stack.start_operator(&["--mqtt-reconnect-retry-count=1"])?;
    stack.apply(&pool_yaml("late", "late", 1, ""))?;
    let registered = |pool: WorkerPool| {
        pool.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Registered")
    };
    let gave_up = wait_for("the pool saying its broker link gave up", WAIT, || async {
        let condition = registered(stack.pools().get("late").await?);
        Ok(condition.filter(|c| c.reason == "BrokerUnreachable" && c.message.contains("failed:")))
    })
    .await
    .with_context(|| stack.diagnostics())?;
    assert_eq!(gave_up.status, "False");

    stack.broker.restart();
    stack.wait_registered("late", 1).await?;
    let condition = registered(stack.pools().get("late").await?).context("no Registered")?;
    assert_eq!(
        (condition.status.as_str(), condition.reason.as_str()),
        ("True", "Connected")
    );
    stack.ns.cleanup().await
}
