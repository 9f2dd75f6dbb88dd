//! kube-apiserver stopped (etcd stays up) while runs go on, then started again: the operator
//! rides it out without a restart.

use std::process::Command;
use std::time::Duration;

use anyhow::ensure;

use crate::bench::{AUTO_FINISH, Bench, exclusive, scaled};
use crate::books::balance;
use crate::support::{self, wait_for};

fn apiserver(action: &str) -> anyhow::Result<()> {
    let status = Command::new(support::testenv_script())
        .args(["apiserver", action])
        .status()?;
    ensure!(status.success(), "testenv apiserver {action} failed");
    Ok(())
}

#[tokio::test]
async fn stopping_the_api_server_loses_no_run_and_the_operator_recovers_by_itself()
-> anyhow::Result<()> {
    let _cluster = exclusive().await;
    let (runs, outages) = (scaled(16, 60), scaled(1, 3));
    let mut bench = Bench::with_pool("f-apiserver", "api", 4, AUTO_FINISH, &[]).await?;
    bench.submit("api", runs).await?;
    for _ in 0..outages {
        wait_for("some runs under way", Duration::from_secs(60), || async {
            Ok((bench.busy().await? > 0).then_some(()))
        })
        .await?;
        apiserver("stop")?;
        tokio::time::sleep(Duration::from_secs(scaled(10, 20) as u64)).await;
        apiserver("start")?;
        ensure!(
            bench.stack.operator_running(),
            "the operator exited while the API server was away:\n{}",
            bench.stack.operator_log()
        );
    }
    balance(
        "kube-apiserver stopped",
        &bench.stack,
        &bench.audit,
        outages,
    )
    .await?;
    ensure!(bench.stack.operator_running(), "the operator restarted");
    bench.stack.ns.cleanup().await
}
