//! Mosquitto stopped and started again while runs are dispatched.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use workerpool_operator::backend::store::WorkerView;

use crate::bench::{AUTO_FINISH, Bench, scaled, shared};
use crate::books::balance;
use crate::support::wait_for;

#[tokio::test]
async fn restarting_mosquitto_during_dispatch_loses_no_run_and_the_link_comes_back()
-> anyhow::Result<()> {
    let _cluster = shared().await;
    let (runs, restarts) = (scaled(20, 80), scaled(1, 4));
    let mut bench = Bench::with_pool("f-mqtt", "mqtt", 4, AUTO_FINISH, &[]).await?;
    bench.submit("mqtt", runs).await?;
    let mut back = Vec::new();
    for _ in 0..restarts {
        wait_for("some runs under way", Duration::from_secs(60), || async {
            Ok((bench.busy().await? > 0).then_some(()))
        })
        .await?;
        bench.stack.broker.stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let restarted = Instant::now();
        let since = k8s_openapi::jiff::Timestamp::now();
        bench.stack.broker.restart();
        // The link is back when the backend hears a worker again: every reconnection re-sends
        // every worker's state.
        wait_for(
            "the operator's link back",
            Duration::from_secs(60),
            || async {
                let workers: Vec<WorkerView> =
                    reqwest::get(format!("{}/api/workers", bench.stack.backend_url))
                        .await?
                        .json()
                        .await?;
                let heard = |w: &WorkerView| {
                    w.last_seen
                        .parse::<k8s_openapi::jiff::Timestamp>()
                        .is_ok_and(|at| at > since)
                };
                Ok(workers.iter().any(heard).then_some(()))
            },
        )
        .await
        .context("the operator did not reconnect")?;
        back.push(restarted.elapsed());
    }
    println!("link back after a broker restart: {back:?}");
    balance("Mosquitto restarted", &bench.stack, &bench.audit, restarts).await?;
    bench.stack.ns.cleanup().await
}
