//! The books every fault test closes with. They balance when:
//! - every run stage attempt the reference backend dispatched has exactly one outcome, none
//!   lost (failed as `WorkerLost`), and no second, different report reached the backend;
//! - the kube-apiserver's audit log shows at most one Pod create per run stage attempt;
//! - the cluster holds no run Pod that was not reported or that the history limits do not
//!   keep, no key Secret without its Worker, no Worker stuck in its finalizer;
//! - every worker is IDLE, holding no run.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context as _, ensure};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::ResourceExt;
use kube::api::ListParams;
use workerpool_operator::backend::store::RunView;
use workerpool_operator::crd::{LABEL_RUN_ID, LABEL_WORKERPOOL, WorkerState};

use crate::audit::Audit;
use crate::stack::Stack;
use crate::support::wait_for;

/// What a fault test did, as its books show.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Figures {
    pub test: String,
    pub runs_dispatched: usize,
    pub outcomes: BTreeMap<String, usize>,
    pub faults_injected: usize,
    pub runs_lost: usize,
    pub duplicate_pods: usize,
}

/// How long the system may take to settle after the last fault.
const SETTLE: Duration = Duration::from_secs(180);

/// Waits until the system has settled, then checks the books; `faults` is how many faults the
/// test injected. The figures are printed and appended to `target/fault-suite/figures.jsonl`.
pub async fn balance(
    test: &str,
    stack: &Stack,
    audit: &Audit,
    faults: usize,
) -> anyhow::Result<Figures> {
    let runs = wait_for("every dispatched run to have ended", SETTLE, || async {
        let runs = namespace_runs(stack).await?;
        let open: Vec<&RunView> = runs.iter().filter(|r| !is_final(&r.state)).collect();
        Ok(open.is_empty().then_some(runs))
    })
    .await
    .with_context(|| stack.diagnostics())?;
    wait_for(
        "every worker IDLE and none stuck leaving",
        SETTLE,
        || async {
            let workers = stack.worker_list().await?;
            Ok(workers
                .iter()
                .all(|w| {
                    let status = w.status.clone().unwrap_or_default();
                    w.metadata.deletion_timestamp.is_none()
                        && status.current_run.is_none()
                        && status.state.unwrap_or_default() == WorkerState::Idle
                })
                .then_some(()))
        },
    )
    .await
    .with_context(|| stack.diagnostics())?;

    let mut figures = Figures {
        test: test.into(),
        faults_injected: faults,
        ..Figures::default()
    };
    let mut problems = Vec::new();
    for run in &runs {
        let dispatched = run.events.iter().filter(|e| e.kind == "dispatched").count();
        if dispatched == 0 {
            continue;
        }
        figures.runs_dispatched += dispatched;
        let outcomes: Vec<&str> = run
            .events
            .iter()
            .map(|e| e.kind.as_str())
            .filter(|k| matches!(*k, "run.finished" | "run.denied" | "lost" | "stopped"))
            .collect();
        let late: Vec<&str> = run
            .events
            .iter()
            .map(|e| e.kind.as_str())
            .filter(|k| matches!(*k, "run.finished.ignored" | "run.denied.ignored"))
            .collect();
        *figures.outcomes.entry(outcome_name(run)).or_default() += 1;
        if outcomes.len() != dispatched {
            problems.push(format!(
                "run {} was dispatched {dispatched} time(s) and has outcomes {outcomes:?}",
                run.id
            ));
        }
        if !late.is_empty() {
            problems.push(format!(
                "run {} got a second, different report: {late:?}",
                run.id
            ));
        }
        if run.cause.as_deref() == Some("WorkerLost") || outcomes.contains(&"lost") {
            figures.runs_lost += 1;
            problems.push(format!("run {} was lost: {}", run.id, run.message));
        }
    }

    let creates = audit.pod_creates(&stack.ns.name)?;
    for (pod, count) in &creates {
        if *count > 1 {
            figures.duplicate_pods += count - 1;
            problems.push(format!("run Pod {pod} was created {count} times"));
        }
    }
    problems.extend(cluster_leftovers(stack).await?);
    println!("books: {}", serde_json::to_string(&figures)?);
    record(&figures);
    ensure!(
        problems.is_empty(),
        "the books do not balance:\n  {}\n{}",
        problems.join("\n  "),
        stack.diagnostics()
    );
    Ok(figures)
}

fn is_final(state: &str) -> bool {
    matches!(
        state,
        "succeeded" | "failed" | "stopped" | "denied" | "queued"
    )
}

fn outcome_name(run: &RunView) -> String {
    match &run.cause {
        Some(cause) => format!("{} ({cause})", run.state),
        None => run.state.clone(),
    }
}

/// The backend's runs: each test has a backend of its own.
async fn namespace_runs(stack: &Stack) -> anyhow::Result<Vec<RunView>> {
    Ok(workerpool_operator::backend::client::list_runs(&stack.backend_url, None).await?)
}

/// Run Pods that were never reported or outlived retention, and key Secrets whose Worker is
/// gone (the garbage collector removes them, within a bounded wait).
async fn cluster_leftovers(stack: &Stack) -> anyhow::Result<Vec<String>> {
    let leftovers = wait_for("run Pods and key Secrets to be tidied", SETTLE, || async {
        let mut problems = Vec::new();
        let pods = stack
            .pods()
            .list(&ListParams::default().labels(LABEL_RUN_ID))
            .await?;
        for pod in &pods.items {
            problems.extend(pod_problem(pod));
        }
        let workers: Vec<String> = stack
            .worker_list()
            .await?
            .iter()
            .map(ResourceExt::name_any)
            .collect();
        let secrets: kube::Api<Secret> = stack.ns.api();
        for secret in secrets
            .list(&ListParams::default().labels(LABEL_WORKERPOOL))
            .await?
            .items
        {
            if !workers.contains(&secret.name_any()) {
                problems.push(format!(
                    "key Secret {} outlived its Worker",
                    secret.name_any()
                ));
            }
        }
        Ok(problems.is_empty().then_some(problems))
    })
    .await;
    match leftovers {
        Ok(none) => Ok(none),
        Err(_) => {
            // Report what is still there.
            let pods = stack
                .pods()
                .list(&ListParams::default().labels(LABEL_RUN_ID))
                .await?;
            Ok(pods.items.iter().flat_map(pod_problem).collect())
        }
    }
}

/// What is wrong with a run Pod left at the end: the suite's pools keep no successful Pod.
fn pod_problem(pod: &Pod) -> Option<String> {
    let outcome = pod.annotations().get("workers.spacelift.io/outcome");
    match outcome.map(String::as_str) {
        None => Some(format!("run Pod {} was never reported", pod.name_any())),
        Some("succeeded") => Some(format!(
            "successful run Pod {} outlived retention",
            pod.name_any()
        )),
        Some(_) => None,
    }
}

/// Appends the figures for docs/reliability.md.
fn record(figures: &Figures) {
    let dir = crate::support::repo_root().join("target/fault-suite");
    let _ = std::fs::create_dir_all(&dir);
    if let Ok(line) = serde_json::to_string(figures) {
        use std::io::Write;
        if let Ok(mut file) = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("figures.jsonl"))
        {
            let _ = writeln!(file, "{line}");
        }
    }
}
