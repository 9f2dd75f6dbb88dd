//! The catalogue's harness: one Stack (namespace, Mosquitto, reference backend, operator
//! binary) per group of cases, a bystander pool that keeps running runs the whole time, and
//! the places a user reads a message (events, conditions, the backend's record, the log).

use anyhow::{Context as _, bail};
use k8s_openapi::api::events::v1::Event;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use tokio::sync::watch;

use crate::stack::{Stack, WAIT, pool_yaml};
use crate::support::{self, Outcome};

/// The bystander's runner image.
pub const RUNNER: &str = "public.ecr.aws/spacelift/runner-terraform:1.5.7";
/// The pool that must keep running runs while the cases go on.
pub const BYSTANDER: &str = "bystander";

/// Where a user reads a message, and the message (`{ns}`, `{pool}` and `{pod}` stand for the
/// case's namespace, pool and the run's Pod name; `{*}` for a part that varies from run to
/// run, such as the memory a process had in use).
#[derive(Clone, Debug)]
pub enum Seen {
    /// An event on the case's WorkerPool: its reason and its exact note.
    PoolEvent(&'static str, String),
    /// The case's WorkerPool condition of this type, with exactly this message.
    PoolCondition(&'static str, String),
    /// An event on one of the case's Workers: its reason and its exact note.
    WorkerEvent(&'static str, String),
    /// The backend's record of the case's run: its state and exactly this message.
    Backend(&'static str, String),
    /// A line of the operator's log that contains this.
    Log(String),
}

impl Seen {
    /// The same place with the case's names filled in.
    pub fn expand(&self, ns: &str, pool: &str, pod: &str) -> Seen {
        let fill = |text: &String| {
            text.replace("{ns}", ns)
                .replace("{pool}", pool)
                .replace("{pod}", pod)
        };
        match self {
            Seen::PoolEvent(reason, note) => Seen::PoolEvent(reason, fill(note)),
            Seen::PoolCondition(kind, message) => Seen::PoolCondition(kind, fill(message)),
            Seen::WorkerEvent(reason, note) => Seen::WorkerEvent(reason, fill(note)),
            Seen::Backend(state, message) => Seen::Backend(state, fill(message)),
            Seen::Log(line) => Seen::Log(fill(line)),
        }
    }
}

/// One group's stack, with the bystander pool registered.
pub struct Catalogue {
    pub stack: Stack,
    progress: watch::Sender<usize>,
}

impl Catalogue {
    /// A stack whose operator watches a new namespace, with the bystander pool (2 workers)
    /// registered. `extra` are operator flags.
    pub async fn new(prefix: &str, extra: &[&str]) -> anyhow::Result<Self> {
        Self::new_in(prefix, extra, None).await
    }

    /// [`Catalogue::new`] with the operator in `cgroup` (a v1 directory) from its start.
    pub async fn new_in(
        prefix: &str,
        extra: &[&str],
        cgroup: Option<std::path::PathBuf>,
    ) -> anyhow::Result<Self> {
        let mut stack = Stack::new(prefix).await?;
        stack.operator_cgroup = cgroup;
        stack.create_credentials(BYSTANDER, BYSTANDER)?;
        stack.start_operator(extra)?;
        stack.apply(&pool_yaml(BYSTANDER, BYSTANDER, 2, ""))?;
        stack.wait_registered(BYSTANDER, 2).await?;
        Ok(Self {
            stack,
            progress: watch::Sender::new(0),
        })
    }

    /// Runs `cases` while the bystander pool runs one run after another, and then waits for
    /// the bystander to complete one more run with every case still in place. Returns the
    /// bystander's completed runs.
    pub async fn alongside(
        &self,
        cases: impl Future<Output = anyhow::Result<()>>,
    ) -> anyhow::Result<usize> {
        let (stop, stopped) = watch::channel(false);
        let cases = async {
            let result = cases.await;
            let done = self.wait_progress().await;
            stop.send_replace(true);
            result.and(done)
        };
        let (cases, bystander) = futures::join!(cases, self.keep_running(stopped));
        let completed = bystander.context("the bystander pool stopped running runs")?;
        cases.with_context(|| self.stack.diagnostics())?;
        Ok(completed)
    }

    /// Checks that the operator never exited, and removes the namespace.
    pub async fn end(mut self) -> anyhow::Result<()> {
        if !self.stack.operator_running() {
            bail!("the operator exited:{}", self.stack.diagnostics());
        }
        self.stack.ns.cleanup().await
    }

    /// Waits until the bystander completes one more run than it had when called.
    pub async fn wait_progress(&self) -> anyhow::Result<()> {
        let before = *self.progress.borrow();
        let mut progress = self.progress.subscribe();
        tokio::time::timeout(WAIT * 2, progress.wait_for(|n| *n > before))
            .await
            .context("the bystander pool completed no run meanwhile")?
            .context("the bystander stopped")?;
        Ok(())
    }

    async fn keep_running(&self, stop: watch::Receiver<bool>) -> anyhow::Result<usize> {
        let mut completed = 0;
        while !*stop.borrow() {
            let run = self.stack.submit(BYSTANDER, RUNNER, &[]).await?;
            let pod = self.stack.wait_run_pod(&run.id).await?;
            self.stack
                .finish(&pod.name_any(), Outcome::Succeeded)
                .await?;
            self.stack.wait_run(&run.id, "succeeded").await?;
            completed += 1;
            self.progress.send_replace(completed);
        }
        Ok(completed)
    }

    /// Waits until `seen` shows up for `pool` (and its run `run`, for the backend), exactly.
    pub async fn check(&self, pool: &str, run: &str, seen: &Seen) -> anyhow::Result<()> {
        let ns = &self.stack.ns.name;
        let pod = match run {
            "" => String::new(),
            run => {
                let view = self.stack.run(run).await?;
                format!("{}-{}-{}", run.to_lowercase(), view.stage, view.attempt)
            }
        };
        let seen = seen.expand(ns, pool, &pod);
        let what = format!("{seen:?} for pool {pool}");
        support::wait_for(&what, WAIT, || async {
            let found = match &seen {
                Seen::PoolEvent(reason, note) => self
                    .event_notes("WorkerPool", pool, reason)
                    .await?
                    .iter()
                    .any(|n| matches(note, n)),
                Seen::WorkerEvent(reason, note) => {
                    let prefix = format!("{pool}-");
                    self.event_notes("Worker", &prefix, reason)
                        .await?
                        .iter()
                        .any(|n| matches(note, n))
                }
                Seen::PoolCondition(kind, message) => {
                    let workerpool = self.stack.pools().get(pool).await?;
                    workerpool
                        .status
                        .unwrap_or_default()
                        .conditions
                        .iter()
                        .any(|c| c.type_ == *kind && matches(message, &c.message))
                }
                Seen::Backend(state, message) => {
                    let view = self.stack.run(run).await?;
                    view.state == *state && matches(message, &view.message)
                }
                Seen::Log(line) => {
                    let anywhere = format!("{{*}}{line}{{*}}");
                    self.stack
                        .operator_log()
                        .lines()
                        .any(|l| matches(&anywhere, l))
                }
            };
            Ok(found.then_some(()))
        })
        .await
        .with_context(|| self.what_there_is(pool, run))
    }

    /// The notes of events with `reason` about objects of `kind` named `name` (or, for
    /// Workers, named with that prefix).
    async fn event_notes(
        &self,
        kind: &str,
        name: &str,
        reason: &str,
    ) -> anyhow::Result<Vec<String>> {
        let events: Api<Event> = self.stack.ns.api();
        let list = events.list(&ListParams::default()).await?;
        Ok(list
            .items
            .into_iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter(|e| {
                e.regarding.as_ref().is_some_and(|r| {
                    r.kind.as_deref() == Some(kind)
                        && r.name.as_deref().is_some_and(|n| {
                            if kind == "Worker" {
                                n.starts_with(name)
                            } else {
                                n == name
                            }
                        })
                })
            })
            .filter_map(|e| e.note)
            .collect())
    }

    /// What the pool shows, for a failed check.
    fn what_there_is(&self, pool: &str, run: &str) -> String {
        let events = self
            .stack
            .ns
            .kubectl([
                "get",
                "events",
                "-o",
                "custom-columns=OBJ:.involvedObject.name,REASON:.reason,NOTE:.message",
            ])
            .unwrap_or_default();
        let conditions = self
            .stack
            .ns
            .kubectl([
                "get",
                "workerpool",
                pool,
                "-o",
                "jsonpath={.status.conditions}",
            ])
            .unwrap_or_default();
        let record = self
            .stack
            .ns
            .kubectl([
                "get",
                "workers",
                "-o",
                "jsonpath={.items[*].status.finishedRuns}",
            ])
            .unwrap_or_default();
        format!(
            "\n--- run {run}; pool {pool} conditions ---\n{conditions}\n--- workers' finished runs ---\n{record}\n--- events ---\n{events}"
        )
    }

    /// Queues a run on `pool` and returns its id.
    pub async fn submit(&self, pool: &str) -> anyhow::Result<String> {
        Ok(self.stack.submit(pool, RUNNER, &[]).await?.id)
    }
}

/// Whether `actual` is `template`, where each `{*}` stands for any text.
pub fn matches(template: &str, actual: &str) -> bool {
    let mut parts = template.split("{*}");
    let first = parts.next().unwrap_or_default();
    let Some(mut rest) = actual.strip_prefix(first) else {
        return false;
    };
    let parts: Vec<&str> = parts.collect();
    let Some((last, middle)) = parts.split_last() else {
        return rest.is_empty();
    };
    for part in middle {
        match rest.find(part) {
            Some(at) => rest = &rest[at + part.len()..],
            None => return false,
        }
    }
    rest.ends_with(last)
}

/// Runs every check of every case, and fails listing each one that failed (not only the
/// first), with the number of cases.
pub fn verdict(group: &str, total: usize, failures: Vec<String>) -> anyhow::Result<()> {
    if failures.is_empty() {
        return Ok(());
    }
    bail!(
        "{} of {total} {group} cases failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    )
}
