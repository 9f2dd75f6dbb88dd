//! How real runs end, as the operator reads it from a real kubelet and the launcher explains it:
//! a failing command with its exit code, OOMKilled under the worker's memory limit,
//! DeadlineExceeded, a runner image that cannot be pulled.

use workerpool_operator::backend::store::RunView;

use super::RealRuns;

fn cause(run: &RunView) -> &str {
    run.cause.as_deref().unwrap_or_default()
}

#[tokio::test]
async fn real_runs_fail_with_the_cause_the_kubelet_and_the_launcher_give() -> anyhow::Result<()> {
    let Some(runs) = RealRuns::start("real-outcomes", "plain", 1, "", "").await? else {
        return Ok(());
    };
    // A worker container with too little memory for OpenTofu.
    runs.add_pool(
        "tight",
        1,
        "",
        "    workerContainer:\n      resources:\n        limits: {memory: 12Mi}\n",
    )
    .await?;
    // A Pod that cannot finish within its deadline: a custom init container sleeps past it.
    runs.add_pool(
        "late",
        1,
        "",
        &format!(
            "    activeDeadlineSeconds: 8\n    customInitContainers:\n      - {{name: wait, image: {}, command: [sleep, \"600\"]}}\n",
            runs.node.images.runner_tofu
        ),
    )
    .await?;
    runs.create_stack("broken", "plain", "broken", None, &[])
        .await?;
    runs.create_stack("hungry", "tight", "hello", None, &[])
        .await?;
    runs.create_stack("slow", "late", "hello", None, &[])
        .await?;
    let broken = runs.trigger("broken", true).await?;
    let hungry = runs.trigger("hungry", true).await?;
    let slow = runs.trigger("slow", true).await?;

    let broken = runs.wait_state(&broken.id, &["failed"]).await?;
    assert_eq!(cause(&broken), "Error");
    // The operator's message carries the launcher's detail: which command, which code.
    assert!(
        broken.message.contains("exited with code 1") && broken.message.contains("init"),
        "{}",
        broken.message
    );
    let log = runs.log_text(&broken.id, "planning").await?;
    assert!(
        log.contains("Error: "),
        "tofu's own error reached the log: {log}"
    );

    let hungry = runs.wait_state(&hungry.id, &["failed"]).await?;
    assert_eq!(cause(&hungry), "OOMKilled", "{}", hungry.message);

    let slow = runs.wait_state(&slow.id, &["failed"]).await?;
    assert_eq!(cause(&slow), "DeadlineExceeded", "{}", slow.message);

    // A runner image no registry serves: the pull backs off, and after the operator's wait
    // (5 s in these tests) the run fails and its Pod is deleted.
    runs.create_stack(
        "absent",
        "plain",
        "hello",
        Some("localhost/workerpool-operator/absent:1"),
        &[],
    )
    .await?;
    let absent = runs.trigger("absent", true).await?;
    let absent = runs.wait_state(&absent.id, &["failed"]).await?;
    assert_eq!(cause(&absent), "ImagePullBackOff", "{}", absent.message);
    let pod = format!("{}-planning-1", absent.id.to_lowercase());
    runs.stack
        .wait_pod_gone("the abandoned Pod of the unpullable run", &pod)
        .await?;
    runs.stack.ns.cleanup().await
}
