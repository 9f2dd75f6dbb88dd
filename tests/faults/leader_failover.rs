//! Two replicas with leader election; the leader killed mid-dispatch: the other takes over
//! within the lease time, and no run is handled twice.

use std::time::{Duration, Instant};

use anyhow::Context as _;

use crate::bench::{AUTO_FINISH, Bench, scaled, shared};
use crate::books::balance;
use crate::stack::{Replica, pool_yaml};
use crate::support::wait_for;

const LEADS: &str = "became leader";

#[tokio::test]
async fn killing_the_leader_mid_dispatch_hands_over_and_handles_no_run_twice() -> anyhow::Result<()>
{
    let _cluster = shared().await;
    let (runs, failovers) = (scaled(20, 80), scaled(1, 3));
    let mut bench = Bench::new("f-leader").await?;
    let lease = format!("--leader-election-namespace={}", bench.stack.ns.name);
    let flags = ["--leader-elect", lease.as_str()];
    bench.stack.create_credentials("led", "led")?;
    bench.stack.start_operator(&flags)?;
    let mut standby = Replica::start(&bench.stack, &flags)?;
    bench
        .stack
        .apply(&pool_yaml("led", "led", 4, AUTO_FINISH))?;
    bench.stack.wait_registered("led", 4).await?;
    let mut stack_leads = bench.stack.operator_log().contains(LEADS);
    bench.submit("led", runs).await?;
    let mut takeovers = Vec::new();
    for _ in 0..failovers {
        wait_for("runs under way", Duration::from_secs(60), || async {
            Ok((bench.busy().await? > 0).then_some(()))
        })
        .await?;
        let killed = Instant::now();
        if stack_leads {
            let before = standby.log().matches(LEADS).count();
            bench.stack.kill_operator();
            wait_for("the standby leading", Duration::from_secs(60), || async {
                Ok((standby.log().matches(LEADS).count() > before).then_some(()))
            })
            .await
            .context("the standby did not take over")?;
            takeovers.push(killed.elapsed());
            bench.stack.restart_operator()?; // the new standby
        } else {
            let before = bench.stack.operator_log().matches(LEADS).count();
            standby.kill();
            wait_for(
                "the other replica leading",
                Duration::from_secs(60),
                || async {
                    Ok((bench.stack.operator_log().matches(LEADS).count() > before).then_some(()))
                },
            )
            .await
            .context("the other replica did not take over")?;
            takeovers.push(killed.elapsed());
            standby = Replica::start(&bench.stack, &flags)?;
        }
        stack_leads = !stack_leads;
    }
    println!("leadership taken over after: {takeovers:?}");
    balance("leader killed", &bench.stack, &bench.audit, failovers).await?;
    drop(standby);
    bench.stack.ns.cleanup().await
}
