//! Stack runs stage by stage (issue 11, item 3): a tracked run plans, waits for `run
//! confirm`, then applies from the workspace planning uploaded; a proposed run only plans; a
//! failed or stopped stage ends the run. The state is served as OpenTofu's `http` backend with
//! locking; logs are stored once per line and read back in order, `-f` following to the end.

use std::process::Stdio;
use std::time::Duration;

use launcher_api::{Job, LogBatch, LogLine, LogPart, LogStream, StopStatus};
use workerpool_operator::backend::archive::pack_directory;
use workerpool_operator::backend::blobs::sha256_hex;
use workerpool_operator::backend::client;
use workerpool_operator::protocol::{Body, Outcome};

use crate::broker::backend_binary;
use crate::harness::{FAKE_TOFU, StackFixture, cli, cli_output, wait_for_run_state, worker_key};
use crate::launcher_client::Launcher;

fn batch(part: LogPart, from: u64, texts: &[&str]) -> LogBatch {
    LogBatch {
        part,
        lines: texts
            .iter()
            .enumerate()
            .map(|(i, text)| LogLine {
                seq: from + i as u64,
                at: "2026-01-01T00:00:00Z".into(),
                stream: LogStream::Stdout,
                text: text.to_string(),
            })
            .collect(),
    }
}

async fn post_logs(launcher: &Launcher, batch: &LogBatch) {
    let answer = launcher
        .send(&launcher.call("POST", "logs").json(batch))
        .await;
    assert_eq!(answer.status, 204, "{}", answer.error());
}

fn lock_info(id: &str) -> serde_json::Value {
    serde_json::json!({"ID": id, "Operation": "OperationTypeApply", "Info": "",
        "Who": "runner@pod", "Version": "1.12.6", "Created": "2026-01-01T00:00:00Z", "Path": ""})
}

/// Writes a state under lock `id`, as `tofu` does: LOCK, POST ?ID=, UNLOCK.
async fn write_state_locked(launcher: &Launcher, id: &str, state: &serde_json::Value) {
    let lock = launcher
        .send(&launcher.call("LOCK", "state/lock").json(&lock_info(id)))
        .await;
    assert_eq!(lock.status, 200, "{}", lock.error());
    let call = launcher
        .call("POST", "state")
        .query(&format!("ID={id}"))
        .json(state);
    let write = launcher.send(&call).await;
    assert_eq!(write.status, 200, "{}", write.error());
    let unlock = launcher
        .send(&launcher.call("UNLOCK", "state/lock").json(&lock_info(id)))
        .await;
    assert_eq!(unlock.status, 200, "{}", unlock.error());
}

fn state(serial: i64) -> serde_json::Value {
    serde_json::json!({"version": 4, "terraform_version": "1.12.6", "serial": serial,
        "lineage": "5d0ad5d4", "outputs": {"x": {"value": "1", "type": "string"}},
        "resources": []})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tracked_run_plans_waits_for_confirmation_and_applies_the_uploaded_workspace() {
    let StackFixture {
        broker,
        token,
        server,
        base,
        mut pool,
        ..
    } = StackFixture::start().await;
    let keys = [worker_key(), worker_key()];
    let workers = [
        pool.register(&keys[0].public_key_pem).await,
        pool.register(&keys[1].public_key_pem).await,
    ];
    let key_of = |w| &keys[workers.iter().position(|x| *x == w).expect("ours")];

    let run_id = cli(
        &broker,
        &["run", "trigger", "--stack", "demo", "--backend-url", &base],
    )
    .trim()
    .to_string();
    let (planner, planning) = pool.next_schedule_any(&workers).await;
    assert_eq!(
        (
            planning.run_id.as_str(),
            planning.stage.as_str(),
            planning.attempt
        ),
        (run_id.as_str(), "planning", 1)
    );
    assert_eq!(
        planning.metadata.get("stack").map(String::as_str),
        Some("demo")
    );
    pool.start(planner, &planning).await;
    let plan = Launcher::new(&token, planner, &key_of(planner).private_key_pem, &planning);

    // The planning job: the stack's source snapshot, tool, environment; it uploads.
    let job: Job = plan.request("GET", "job").await.json();
    let argv: Vec<String> = job.commands.iter().map(|c| c.argv.join(" ")).collect();
    assert_eq!(
        argv,
        [
            "tofu init -input=false -no-color",
            "tofu plan -input=false -no-color -out=spacelift.plan"
        ]
    );
    assert!(job.upload_workspace && job.managed_state);
    assert_eq!(
        job.environment.get("TF_VAR_x").map(String::as_str),
        Some("1")
    );
    assert_eq!(
        (job.tool.name.as_str(), job.tool.version.as_str()),
        ("tofu", "1.12.6")
    );
    assert_eq!(job.tool.sha256, sha256_hex(FAKE_TOFU));
    let source = job.source.clone().expect("planning gets the source");
    let tarball = plan.request("GET", "source").await;
    assert_eq!(
        (sha256_hex(&tarball.body), tarball.body.len() as u64),
        (source.sha256, source.size)
    );
    assert_eq!(
        plan.request("GET", "tools/tofu/1.12.6").await.body,
        FAKE_TOFU
    );
    plan.request("GET", "tools/tofu/9.9.9")
        .await
        .refused(404, "names tool tofu 1.12.6, not tofu 9.9.9");

    post_logs(
        &plan,
        &batch(LogPart::Init, 0, &["fetched the job", "tool cache miss"]),
    )
    .await;
    post_logs(
        &plan,
        &batch(LogPart::Worker, 0, &["$ tofu init", "$ tofu plan"]),
    )
    .await;

    // Locking: a second LOCK gets the holder's lock info with 423, as OpenTofu expects.
    let held = lock_info("lock-1");
    assert_eq!(
        plan.send(&plan.call("LOCK", "state/lock").json(&held))
            .await
            .status,
        200
    );
    let conflict = plan
        .send(&plan.call("LOCK", "state/lock").json(&lock_info("lock-x")))
        .await;
    assert_eq!(conflict.status, 423);
    assert_eq!(conflict.json::<serde_json::Value>(), held);
    plan.send(&plan.call("POST", "state").json(&state(1)))
        .await
        .refused(423, "");
    let unlock = plan
        .send(&plan.call("UNLOCK", "state/lock").json(&held))
        .await;
    assert_eq!(unlock.status, 200);
    plan.send(
        &plan
            .call("POST", "state")
            .query("ID=lock-1")
            .json(&state(1)),
    )
    .await
    .refused(
        409,
        "is not locked, but the request is made under lock lock-1",
    );
    write_state_locked(&plan, "lock-2", &state(1)).await;
    assert_eq!(
        plan.request("GET", "state")
            .await
            .json::<serde_json::Value>(),
        state(1)
    );

    // Planning uploads its workspace, saved plan included, and reports its detail.
    let workspace_dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(workspace_dir.path().join("main.tf"), "output \"x\" {}\n").expect("file");
    std::fs::write(workspace_dir.path().join("spacelift.plan"), "PLAN").expect("plan");
    let workspace = pack_directory(workspace_dir.path()).expect("pack");
    let put = plan
        .send(&plan.call("PUT", "workspace").body(workspace.clone()))
        .await;
    assert_eq!(put.status, 204, "{}", put.error());
    let result = serde_json::json!({"outcome": "succeeded", "toolCache": "miss"});
    assert_eq!(
        plan.send(&plan.call("POST", "result").json(&result))
            .await
            .status,
        204
    );
    pool.finish(planner, &planning, Outcome::Succeeded).await;
    wait_for_run_state(&base, &run_id, "unconfirmed").await;
    let run = client::get_run(&base, &run_id).await.expect("run");
    assert_eq!(
        run.workspace_sha256.as_deref(),
        Some(sha256_hex(&workspace).as_str())
    );

    // Confirmed: applying is its own dispatch, here to the other worker (the least recently
    // busy), and starts from planning's workspace.
    let confirmed = cli(
        &broker,
        &["run", "confirm", &run_id, "--backend-url", &base],
    );
    assert_eq!(confirmed.trim(), format!("{run_id} applying queued"));
    let (applier, applying) = pool.next_schedule_any(&workers).await;
    assert_eq!((applying.stage.as_str(), applying.attempt), ("applying", 1));
    assert_ne!(
        applier, planner,
        "the stage went to another worker of the pool"
    );
    plan.request("GET", "job").await.refused(
        403,
        &format!("is dispatched to worker {applier}, not to worker {planner}"),
    );
    pool.start(applier, &applying).await;
    let apply = Launcher::new(&token, applier, &key_of(applier).private_key_pem, &applying);
    let job: Job = apply.request("GET", "job").await.json();
    let argv: Vec<String> = job.commands.iter().map(|c| c.argv.join(" ")).collect();
    assert_eq!(argv, ["tofu apply -input=false -no-color spacelift.plan"]);
    assert_eq!(job.source, None);
    assert!(!job.upload_workspace);
    assert_eq!(
        job.workspace.map(|w| w.sha256),
        Some(sha256_hex(&workspace))
    );
    assert_eq!(apply.request("GET", "workspace").await.body, workspace);
    assert_eq!(
        apply
            .request("GET", "state")
            .await
            .json::<serde_json::Value>(),
        state(1)
    );
    post_logs(
        &apply,
        &batch(LogPart::Init, 0, &["restored the workspace"]),
    )
    .await;
    post_logs(
        &apply,
        &batch(LogPart::Worker, 0, &["$ tofu apply", "Apply complete!"]),
    )
    .await;
    write_state_locked(&apply, "lock-3", &state(2)).await;
    pool.finish(applier, &applying, Outcome::Succeeded).await;
    wait_for_run_state(&base, &run_id, "succeeded").await;

    // The state survives the run; every version is kept.
    let current: serde_json::Value = serde_json::from_str(&cli(
        &broker,
        &["stack", "state", "demo", "--backend-url", &base],
    ))
    .expect("state JSON");
    assert_eq!(current, state(2));
    let versions = client::state_versions(&base, "demo")
        .await
        .expect("versions");
    assert_eq!(
        versions.iter().map(|v| v.serial).collect::<Vec<_>>(),
        [Some(1), Some(2)]
    );

    // The log, stage by stage, init before worker.
    let logs = cli(&broker, &["run", "logs", &run_id, "--backend-url", &base]);
    assert_eq!(
        logs,
        "--- planning #1 init ---\nfetched the job\ntool cache miss\n\
         --- planning #1 worker ---\n$ tofu init\n$ tofu plan\n\
         --- applying #1 init ---\nrestored the workspace\n\
         --- applying #1 worker ---\n$ tofu apply\nApply complete!\n"
    );
    let only = cli(
        &broker,
        &[
            "run",
            "logs",
            &run_id,
            "--stage",
            "applying",
            "--backend-url",
            &base,
        ],
    );
    assert!(only.starts_with("--- applying #1 init ---\n"), "{only}");
    let kinds: Vec<String> = client::get_run(&base, &run_id)
        .await
        .expect("run")
        .events
        .into_iter()
        .map(|e| e.kind)
        .collect();
    for kind in [
        "stage.result",
        "workspace.uploaded",
        "confirmed",
        "state.written",
    ] {
        assert!(kinds.iter().any(|k| k == kind), "{kind} in {kinds:?}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_proposed_run_only_plans_and_a_failed_planning_ends_the_run_and_its_lock() {
    let mut fx = StackFixture::start().await;
    let registered = fx.worker().await;
    let worker = registered.0;

    let (schedule, launcher) = fx.planning(&registered, true).await;
    let job: Job = launcher.request("GET", "job").await.json();
    assert!(!job.upload_workspace, "a proposed plan is not kept");
    launcher
        .send(&launcher.call("PUT", "workspace").body(b"x".to_vec()))
        .await
        .refused(409, "uploads no workspace");
    fx.pool.finish(worker, &schedule, Outcome::Succeeded).await;
    let proposed = schedule.run_id.clone();
    wait_for_run_state(&fx.base, &proposed, "succeeded").await;
    let refused = cli_output(
        &fx.broker,
        &["run", "confirm", &proposed, "--backend-url", &fx.base],
    );
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("only an unconfirmed run"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    // A planning that takes the lock and fails: the run fails, the lock goes with the stage.
    let (schedule, launcher) = fx.planning(&registered, false).await;
    let failing = schedule.run_id.clone();
    let lock = launcher
        .send(
            &launcher
                .call("LOCK", "state/lock")
                .json(&lock_info("stuck")),
        )
        .await;
    assert_eq!(lock.status, 200);
    fx.pool.finish(worker, &schedule, Outcome::Failed).await;
    wait_for_run_state(&fx.base, &failing, "failed").await;
    let stack = client::get_stack(&fx.base, "demo").await.expect("stack");
    assert_eq!(stack.lock, None, "the lock ended with its stage");

    let (_, launcher) = fx.planning(&registered, false).await;
    write_state_locked(&launcher, "fresh", &state(1)).await;
    fx.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_reaches_the_worker_and_the_launcher_and_ends_the_run() {
    let mut fx = StackFixture::start().await;
    let registered = fx.worker().await;
    let worker = registered.0;
    let (schedule, launcher) = fx.planning(&registered, false).await;
    let run_id = schedule.run_id.clone();
    let before: StopStatus = launcher.request("GET", "stop").await.json();
    assert!(!before.stop_requested);

    cli(
        &fx.broker,
        &["run", "stop", &run_id, "--backend-url", &fx.base],
    );
    let stop = fx.pool.next_for(worker).await;
    assert!(
        matches!(&stop.message.body, Body::RunStop(s) if s.run_id == run_id && s.stage.as_deref() == Some("planning")),
        "{:?}",
        stop.message.body
    );
    stop.ack().await.expect("ack");
    let after: StopStatus = launcher.request("GET", "stop").await.json();
    assert_eq!(
        after,
        StopStatus {
            stop_requested: true,
            reason: "stopped via the API".into()
        }
    );
    fx.pool.finish(worker, &schedule, Outcome::Stopped).await;
    wait_for_run_state(&fx.base, &run_id, "stopped").await;

    // A bare run carries the endpoint too, but has no job.
    let bare = client::submit_run(
        &fx.base,
        &workerpool_operator::backend::store::SubmitRun {
            pool: "pool-a".into(),
            ..Default::default()
        },
    )
    .await
    .expect("submit");
    let schedule = fx.pool.next_schedule(worker).await;
    assert_eq!(
        (schedule.run_id.as_str(), schedule.stage.as_str()),
        (bare.id.as_str(), "preparing")
    );
    assert!(schedule.launcher_endpoint.is_some());
    fx.pool.start(worker, &schedule).await;
    Launcher::new(&fx.token, worker, &registered.1.private_key_pem, &schedule)
        .request("GET", "job")
        .await
        .refused(
            404,
            "is a bare run (run submit) with no stack, so it has no job",
        );
    fx.server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_logs_follow_prints_every_line_once_in_order_until_the_run_ends() {
    let mut fx = StackFixture::start().await;
    let registered = fx.worker().await;
    let worker = registered.0;
    let (schedule, launcher) = fx.planning(&registered, true).await;

    let follower = tokio::process::Command::new(backend_binary())
        .args([
            "run",
            "logs",
            &schedule.run_id,
            "-f",
            "--backend-url",
            &fx.base,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run logs -f");
    post_logs(&launcher, &batch(LogPart::Init, 0, &["init 0", "init 1"])).await;
    tokio::time::sleep(Duration::from_millis(700)).await;
    post_logs(
        &launcher,
        &batch(LogPart::Worker, 0, &["worker 0", "worker 1"]),
    )
    .await;
    // A resent batch (the launcher retrying) and the rest.
    post_logs(
        &launcher,
        &batch(LogPart::Worker, 0, &["worker 0", "worker 1"]),
    )
    .await;
    post_logs(&launcher, &batch(LogPart::Worker, 2, &["worker 2"])).await;
    fx.pool.finish(worker, &schedule, Outcome::Succeeded).await;

    let output = tokio::time::timeout(Duration::from_secs(20), follower.wait_with_output())
        .await
        .expect("-f stops when the run ends")
        .expect("output");
    assert!(output.status.success());
    assert_eq!(
        String::from_utf8_lossy(&output.stdout),
        "--- planning #1 init ---\ninit 0\ninit 1\n\
         --- planning #1 worker ---\nworker 0\nworker 1\nworker 2\n"
    );
    assert!(String::from_utf8_lossy(&output.stderr).contains("is succeeded"));
    fx.server.shutdown().await;
}
