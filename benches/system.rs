//! Scale-out and dispatch, measured on the whole system: the operator binary (release), the real
//! control plane from tests/testenv, Mosquitto with mutual TLS and the reference backend.
//!
//! `cargo bench --bench system` (needs what `scripts/setup` installs). Results go to
//! docs/benchmarks.md.

#[path = "../tests/broker/mod.rs"]
mod broker;
#[path = "../tests/e2e/stack.rs"]
mod stack;
#[path = "../tests/support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use kube::ResourceExt;
use stack::{Stack, pool_yaml};

const RUNNER: &str = "public.ecr.aws/spacelift/runner-terraform:1.5.7";

fn main() -> anyhow::Result<()> {
    if !std::env::args().any(|a| a == "--bench") {
        return Ok(()); // `cargo test --all-targets` runs benches once as tests: nothing to do.
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_stack_size(16 * 1024 * 1024)
        .build()?;
    runtime.block_on(async {
        println!("| measurement | result |\n|---|---|");
        for size in [10, 30] {
            scale_out(size).await?;
        }
        dispatch(20).await?;
        // Issue 15: a burst on an autoscaled pool at 0 beside the same burst on a pool
        // pre-scaled to it (the limit: nothing to create but the run Pods).
        let sizes: Vec<i32> = match std::env::var("WORKERPOOL_BENCH_BURSTS") {
            Ok(list) => list.split(',').filter_map(|n| n.trim().parse().ok()).collect(),
            Err(_) => vec![10, 50, 200],
        };
        for n in sizes {
            let prescaled = burst(n, false).await?;
            let autoscaled = burst(n, true).await?;
            println!(
                "| burst of {n} queued runs -> {n} run Pods Running | autoscaled from 0: {:.2} s; pre-scaled to {n} (the limit): {:.2} s; ratio {:.2} |",
                autoscaled.as_secs_f64(),
                prescaled.as_secs_f64(),
                autoscaled.as_secs_f64() / prescaled.as_secs_f64()
            );
        }
        anyhow::Ok(())
    })
}

/// From `kubectl apply` of a pool of `size` to `size` registered workers.
async fn scale_out(size: i32) -> anyhow::Result<()> {
    let mut stack = Stack::new("bench-scale").await?;
    stack.create_credentials("bench", "bench")?;
    stack.start_operator(&[])?;
    // Let the operator start and fill its key reserve, as a running operator would have.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    stack.apply(&pool_yaml("bench", "bench", size, ""))?;
    stack.wait_registered("bench", size).await?;
    let elapsed = started.elapsed();
    println!(
        "| scale-out from 0 to {size} registered workers | {:.2} s ({:.0} ms/worker) |",
        elapsed.as_secs_f64(),
        elapsed.as_secs_f64() * 1000.0 / f64::from(size)
    );
    stack.ns.cleanup().await
}

/// `runs` runs submitted at once to a pool with as many idle workers: from submission to the
/// run Pod created (backend's view) and to the Pod Running (kwok plays the kubelet).
async fn dispatch(runs: i32) -> anyhow::Result<()> {
    let mut stack = Stack::new("bench-dispatch").await?;
    stack.create_credentials("bench", "bench")?;
    stack.start_operator(&[])?;
    stack.apply(&pool_yaml("bench", "bench", runs, ""))?;
    stack.wait_registered("bench", runs).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut submitted = Vec::new();
    for _ in 0..runs {
        submitted.push((stack.submit("bench", RUNNER, &[]).await?, Instant::now()));
    }
    let mut to_created = Vec::new();
    let mut to_running = Vec::new();
    for (run, at) in &submitted {
        let pod = stack.wait_run_pod(&run.id).await?;
        to_running.push(at.elapsed());
        let view = stack.run(&run.id).await?;
        let submitted_at = view.created_at.parse::<jiff::Timestamp>()?;
        if let Some(created) = view.events.iter().find(|e| e.kind == "run.podCreated") {
            let created_at = created.at.parse::<jiff::Timestamp>()?;
            to_created.push(created_at.duration_since(submitted_at).unsigned_abs());
        }
        let _ = pod.name_any();
    }
    report(
        &format!("{runs} runs at once: submit -> Pod created"),
        &mut to_created,
    );
    report(
        &format!("{runs} runs at once: submit -> Pod Running (upper bound, polled)"),
        &mut to_running,
    );
    stack.ns.cleanup().await
}

/// `n` runs queued at once, from the first submit to every run's Pod Running (kwok plays the
/// kubelet): on a pool autoscaled from 0 (max `n`), or on one pre-scaled to `n` registered
/// workers before the clock starts.
async fn burst(n: i32, autoscaled: bool) -> anyhow::Result<Duration> {
    use kube::api::ListParams;
    let mut stack = Stack::new("bench-burst").await?;
    stack.create_credentials("bench", "bench")?;
    stack.start_operator(&[])?;
    let (size, spec) = if autoscaled {
        (
            0,
            format!("  autoscaling:\n    maxPoolSize: {n}\n    scaleDownDelay: 10m\n"),
        )
    } else {
        (n, String::new())
    };
    stack.apply(&pool_yaml("bench", "bench", size, &spec))?;
    stack.wait_registered("bench", size).await?;
    // Let the key reserve fill, as on a running operator.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let started = Instant::now();
    for _ in 0..n {
        stack.submit("bench", RUNNER, &[]).await?;
    }
    let deadline = Duration::from_secs(600);
    loop {
        let pods = stack
            .pods()
            .list(&ListParams::default().labels(workerpool_operator::crd::LABEL_RUN_ID))
            .await?;
        let running = pods
            .items
            .iter()
            .filter(|p| support::pod_running(p))
            .count();
        if running >= n as usize {
            break;
        }
        anyhow::ensure!(
            started.elapsed() < deadline,
            "{running} of {n} run Pods Running after {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let elapsed = started.elapsed();
    stack.ns.cleanup().await?;
    Ok(elapsed)
}

fn report(what: &str, samples: &mut [Duration]) {
    samples.sort();
    let pick = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "| {what} | p50 {:.0} ms, p90 {:.0} ms, max {:.0} ms |",
        pick(0.5).as_secs_f64() * 1000.0,
        pick(0.9).as_secs_f64() * 1000.0,
        pick(1.0).as_secs_f64() * 1000.0
    );
}
