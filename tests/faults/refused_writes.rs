//! The operator's API writes refused (403, an admission policy) or erroring (500, a webhook
//! that cannot be reached) for a while at each step of a run's life, then accepted again.

use std::time::Duration;

use crate::admission::{Faults, STEPS};
use crate::bench::{AUTO_FINISH, Bench, full, shared};
use crate::books::balance;

#[tokio::test]
async fn writes_that_fail_for_a_while_at_each_step_of_a_run_lose_nothing() -> anyhow::Result<()> {
    let _cluster = shared().await;
    let bench = Bench::with_pool("f-writes", "writes", 2, AUTO_FINISH, &[]).await?;
    let faults = Faults::install(&bench.stack.ns.name, &bench.user).await?;
    // The short mode refuses at the steps of every run; the full one also makes each error.
    let steps: Vec<&str> = if full() {
        STEPS.to_vec()
    } else {
        STEPS[..4].to_vec()
    };
    let mut injected = 0;
    for step in &steps {
        for erroring in [false, true] {
            if erroring && !full() && *step != "workers/status:UPDATE" {
                continue;
            }
            if erroring {
                faults.error(step).await?;
            } else {
                faults.refuse(&[step]).await?;
            }
            injected += 1;
            // A step of a run's life, or of a Worker's, while the fault lasts.
            if step.starts_with("workers:") {
                bench
                    .stack
                    .ns
                    .kubectl(["scale", "workerpools", "writes", "--replicas=1"])?;
            } else {
                bench.submit("writes", 2).await?;
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
            if erroring {
                faults.stop_erroring().await?;
            } else {
                faults.refuse(&[]).await?;
            }
            if step.starts_with("workers:") {
                bench
                    .stack
                    .ns
                    .kubectl(["scale", "workerpools", "writes", "--replicas=2"])?;
            }
        }
    }
    balance(
        "API writes refused or erroring",
        &bench.stack,
        &bench.audit,
        injected,
    )
    .await?;
    drop(faults);
    bench.stack.ns.cleanup().await
}
