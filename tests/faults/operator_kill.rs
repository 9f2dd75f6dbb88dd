//! kill -9 of the operator at random moments while runs go on, and a restart each time.

use std::time::Duration;

use crate::bench::{AUTO_FINISH, Bench, random_ms, scaled, shared};
use crate::books::balance;

#[tokio::test]
async fn killing_the_operator_at_random_moments_loses_no_run_and_runs_none_twice()
-> anyhow::Result<()> {
    let _cluster = shared().await;
    let (runs, kills) = (scaled(40, 200), scaled(4, 12));
    let mut bench = Bench::with_pool("f-kill", "kill", 4, AUTO_FINISH, &[]).await?;
    bench.submit("kill", runs).await?;
    let mut killed = 0;
    while killed < kills && bench.ended().await? < runs {
        tokio::time::sleep(random_ms(500, 4000)).await;
        bench.stack.kill_operator();
        killed += 1;
        tokio::time::sleep(random_ms(0, 1500)).await;
        bench.stack.restart_operator()?;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    balance("kill -9 the operator", &bench.stack, &bench.audit, killed).await?;
    bench.stack.ns.cleanup().await
}
