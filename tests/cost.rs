//! What one run costs the API server, counted by the API server itself: the deltas of
//! kube-apiserver's `apiserver_request_total` over one run, at 10 and at 200 workers. A run must
//! cost the same at both sizes (nothing the operator does per run may grow with the pool) and
//! at most [`MAX_REQUESTS_PER_RUN`] requests (issue 14).
//!
//! The metric has no user or namespace label, so the test is its own binary (cargo runs test
//! binaries one after the other, so nothing else of the suite runs meanwhile), waits until the
//! counted resources are quiet before and after the run, and counts only what the operator
//! does: requests on Workers, WorkerPools, Secrets, ConfigMaps and run Pods, without the
//! scheduler's `pods/binding` and kwok's `pods/status`. Counted verbs are the issue's: creates,
//! patches (and server-side applies), updates, gets and lists. Deletes are printed apart: the
//! successful run's Pod is removed by the operator (retention) and then by kwok (the fake
//! kubelet), and the metric cannot tell the two apart. Not timed: every wait is only a bound.

mod broker;
mod support;

#[path = "e2e/stack.rs"]
mod stack;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kube::Client;
use workerpool_operator::backend::client;

use stack::{Stack, pool_yaml};

/// Issue 14's goal.
const MAX_REQUESTS_PER_RUN: u64 = 8;
/// The resources the operator reads and writes for a run, by (resource, subresource).
const COUNTED: [(&str, &str); 7] = [
    ("workers", ""),
    ("workers", "status"),
    ("workerpools", ""),
    ("workerpools", "status"),
    ("pods", ""),
    ("secrets", ""),
    ("configmaps", ""),
];
/// The verbs counted (the metric's spelling).
const VERBS: [&str; 6] = ["POST", "PATCH", "APPLY", "PUT", "GET", "LIST"];
/// How long the counted requests must not change for the cluster to count as quiet.
const QUIET: Duration = Duration::from_secs(6);
/// Bounds, not timings: a pool of 200 generates 200 RSA keys on two shared cores.
const SCALE_WAIT: Duration = Duration::from_secs(600);
const QUIET_WAIT: Duration = Duration::from_secs(120);
const RUN_WAIT: Duration = Duration::from_secs(120);

/// The pool's run Pods finish by themselves (kwok's `pod-finish` stage): the test sends the
/// API server nothing while a run goes on.
const FINISH_BY_THEMSELVES: &str = "  pod:
    annotations:
      testenv.workerpool.dev/finish: succeeded
";

#[tokio::test]
async fn one_run_costs_the_same_few_api_requests_at_10_and_at_200_workers() -> anyhow::Result<()> {
    let mut stack = Stack::new("cost").await?;
    stack.create_credentials("cost", "cost")?;
    stack.start_operator(&[])?;
    let admin = support::client().await?;

    let mut costs = Vec::new();
    for size in [10, 200] {
        stack.apply(&pool_yaml("cost", "cost", size, FINISH_BY_THEMSELVES))?;
        wait_steady(&stack, "cost", size).await?;
        let cost = cost_of_one_run(&stack, &admin, "cost").await?;
        eprintln!("one run at {size} workers: {cost}");
        costs.push((size, cost));
    }

    let [(_, small), (_, large)] = &costs[..] else {
        unreachable!()
    };
    assert_eq!(
        small.counted(),
        large.counted(),
        "one run costs as many API requests at 200 workers as at 10\n  10: {small}\n 200: {large}"
    );
    assert!(
        small.counted() <= MAX_REQUESTS_PER_RUN,
        "one run costs at most {MAX_REQUESTS_PER_RUN} API requests, not {}: {small}",
        small.counted()
    );
    stack.ns.cleanup().await
}

/// Waits until the pool has `size` registered workers and the backend has them all IDLE.
async fn wait_steady(stack: &Stack, pool: &str, size: i32) -> anyhow::Result<()> {
    stack.wait_registered_within(pool, size, SCALE_WAIT).await?;
    let url = format!("{}/api/workers", stack.backend_url);
    support::wait_for(
        &format!("{size} IDLE workers at the backend"),
        SCALE_WAIT,
        || {
            let url = url.clone();
            async move {
                let workers: Vec<workerpool_operator::backend::store::WorkerView> =
                    reqwest::get(&url).await?.json().await?;
                let idle = workers.iter().filter(|w| w.state == "IDLE").count();
                Ok((idle == usize::try_from(size)?).then_some(()))
            }
        },
    )
    .await
    .with_context(|| stack.diagnostics())
}

/// Submits one run once the cluster is quiet and counts the requests until it is quiet again
/// after the run ended. The test itself only talks to the backend meanwhile.
async fn cost_of_one_run(stack: &Stack, admin: &Client, pool: &str) -> anyhow::Result<Cost> {
    let before = quiet_counts(admin).await?;
    let run = stack
        .submit(
            pool,
            "public.ecr.aws/spacelift/runner-terraform:latest",
            &[],
        )
        .await?;
    support::wait_for(&format!("run {} succeeded", run.id), RUN_WAIT, || {
        let (url, id) = (stack.backend_url.clone(), run.id.clone());
        async move {
            let runs = client::list_runs(&url, None).await?;
            Ok(runs
                .into_iter()
                .find(|r| r.id == id && r.state == "succeeded")
                .map(|_| ()))
        }
    })
    .await
    .with_context(|| stack.diagnostics())?;
    let after = quiet_counts(admin).await?;
    Ok(Cost::between(
        &before.counts,
        &after.counts,
        after.quiet && before.quiet,
    ))
}

/// The request counts, once they have not changed for [`QUIET`] (or after [`QUIET_WAIT`], when
/// they never settle: then `quiet` is false and the figure includes the noise).
async fn quiet_counts(admin: &Client) -> anyhow::Result<Sampled> {
    let started = Instant::now();
    let mut last = request_counts(admin).await?;
    let mut since = Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let now = request_counts(admin).await?;
        if counted_only(&now) != counted_only(&last) {
            last = now.clone();
            since = Instant::now();
        } else if since.elapsed() >= QUIET {
            return Ok(Sampled {
                counts: now,
                quiet: true,
            });
        }
        if started.elapsed() >= QUIET_WAIT {
            return Ok(Sampled {
                counts: now,
                quiet: false,
            });
        }
    }
}

struct Sampled {
    counts: Counts,
    quiet: bool,
}

/// `apiserver_request_total` summed by (verb, resource, subresource), successful or not.
type Counts = BTreeMap<(String, String, String), u64>;

fn counted_only(counts: &Counts) -> Counts {
    counts
        .iter()
        .filter(|((verb, resource, sub), _)| {
            (VERBS.contains(&verb.as_str()) || verb == "DELETE")
                && COUNTED.contains(&(resource.as_str(), sub.as_str()))
        })
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

/// Reads the API server's `/metrics` (the admin may).
async fn request_counts(admin: &Client) -> anyhow::Result<Counts> {
    let request = http::Request::get("/metrics").body(Vec::new())?;
    let text = admin
        .request_text(request)
        .await
        .context("reading kube-apiserver /metrics")?;
    Ok(parse_request_totals(&text))
}

fn parse_request_totals(text: &str) -> Counts {
    let mut counts = Counts::new();
    for line in text.lines() {
        let Some(rest) = line.strip_prefix("apiserver_request_total{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once("} ") else {
            continue;
        };
        let label = |name: &str| {
            labels
                .split("\",")
                .filter_map(|pair| pair.split_once("=\""))
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.trim_end_matches('"').to_string())
                .unwrap_or_default()
        };
        let value = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        *counts
            .entry((label("verb"), label("resource"), label("subresource")))
            .or_default() += value;
    }
    counts
}

/// What one run cost, by (verb, resource, subresource).
struct Cost {
    counted: BTreeMap<String, u64>,
    deletes: u64,
    quiet: bool,
}

impl Cost {
    fn between(before: &Counts, after: &Counts, quiet: bool) -> Self {
        let mut counted = BTreeMap::new();
        let mut deletes = 0;
        for (key, value) in counted_only(after) {
            let delta = value.saturating_sub(before.get(&key).copied().unwrap_or(0));
            let (verb, resource, sub) = key;
            if delta == 0 {
                continue;
            }
            if verb == "DELETE" {
                deletes += delta;
                continue;
            }
            let name = if sub.is_empty() {
                format!("{verb} {resource}")
            } else {
                format!("{verb} {resource}/{sub}")
            };
            counted.insert(name, delta);
        }
        Self {
            counted,
            deletes,
            quiet,
        }
    }

    fn counted(&self) -> u64 {
        self.counted.values().sum()
    }
}

impl std::fmt::Display for Cost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} requests", self.counted())?;
        let parts: Vec<String> = self
            .counted
            .iter()
            .map(|(name, n)| format!("{n} {name}"))
            .collect();
        write!(f, " ({})", parts.join(", "))?;
        write!(
            f,
            "; {} deletes of run Pods (operator and kwok)",
            self.deletes
        )?;
        if !self.quiet {
            write!(
                f,
                "; the cluster never went quiet for {QUIET:?}, so this includes background requests"
            )?;
        }
        Ok(())
    }
}

#[test]
fn request_totals_are_summed_by_verb_resource_and_subresource() {
    let text = r#"# HELP apiserver_request_total x
apiserver_request_total{code="200",component="apiserver",dry_run="",group="workers.spacelift.io",resource="workers",scope="resource",subresource="status",verb="PATCH",version="v1beta1"} 5
apiserver_request_total{code="409",component="apiserver",dry_run="",group="workers.spacelift.io",resource="workers",scope="resource",subresource="status",verb="PATCH",version="v1beta1"} 2
apiserver_request_total{code="201",component="apiserver",dry_run="",group="",resource="pods",scope="resource",subresource="binding",verb="POST",version="v1"} 3
"#;
    let counts = parse_request_totals(text);
    let key = |v: &str, r: &str, s: &str| (v.to_string(), r.to_string(), s.to_string());
    assert_eq!(counts[&key("PATCH", "workers", "status")], 7);
    assert_eq!(counts[&key("POST", "pods", "binding")], 3);
    assert!(counted_only(&counts).contains_key(&key("PATCH", "workers", "status")));
    assert!(!counted_only(&counts).contains_key(&key("POST", "pods", "binding")));
}
