//! What every fault test stands on: the whole system ([`Stack`]) with the operator running as
//! a ServiceAccount of its own (the API faults match it alone), the audit log, the mode (short
//! in CI, full with `FAULT_SUITE=full`), and runs submitted in bulk.

use std::time::Duration;

use anyhow::Context as _;
use kube::ResourceExt;
use kube::api::ListParams;
use workerpool_operator::crd::{LABEL_RUN_ID, WorkerState};

use crate::audit::Audit;
use crate::stack::{Stack, WAIT, pool_yaml};
use crate::support::{self, wait_for};

pub const RUNNER: &str = "public.ecr.aws/spacelift/runner-terraform:1.5.7";
/// The operator's ServiceAccount in each test namespace.
pub const OPERATOR_SA: &str = "workerpool-operator";
/// Pool spec lines that make kwok finish every run Pod as soon as it runs.
pub const AUTO_FINISH: &str =
    "  pod:\n    annotations:\n      testenv.workerpool.dev/finish: succeeded\n";

/// Whether the full suite runs (`FAULT_SUITE=full`, `scripts/fault-suite --full`).
pub fn full() -> bool {
    std::env::var("FAULT_SUITE").is_ok_and(|v| v == "full")
}

/// `short` in the short mode, `full` in the full one.
pub fn scaled(short: usize, full_mode: usize) -> usize {
    if full() { full_mode } else { short }
}

/// A random duration in `range` (milliseconds), for faults at random moments.
pub fn random_ms(from: u64, to: u64) -> Duration {
    let random = ulid::Ulid::generate().random() as u64;
    Duration::from_millis(from + random % (to - from).max(1))
}

use tokio::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

static CLUSTER: RwLock<()> = RwLock::const_new(());

/// Most fault tests share the control plane; they hold this while they run.
pub async fn shared() -> RwLockReadGuard<'static, ()> {
    CLUSTER.read().await
}

/// A fault that stops the API server has the control plane to itself.
pub async fn exclusive() -> RwLockWriteGuard<'static, ()> {
    CLUSTER.write().await
}

/// The system of one fault test.
pub struct Bench {
    pub stack: Stack,
    pub audit: Audit,
    /// The operator's user name, as the API server sees it.
    pub user: String,
}

impl Bench {
    /// Namespace, broker, backend, and the operator's identity; the operator is started by
    /// [`Bench::start`] or [`Bench::with_pool`].
    pub async fn new(prefix: &str) -> anyhow::Result<Self> {
        let mut stack = Stack::new(prefix).await?;
        let audit = Audit::open()?;
        let ns = stack.ns.name.clone();
        stack.ns.kubectl_stdin(
            ["apply", "-f", "-"],
            &format!(
                "apiVersion: v1
kind: ServiceAccount
metadata: {{name: {OPERATOR_SA}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {OPERATOR_SA}}}
rules:
- {{apiGroups: ['*'], resources: ['*'], verbs: ['*']}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {OPERATOR_SA}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {OPERATOR_SA}}}
subjects: [{{kind: ServiceAccount, name: {OPERATOR_SA}, namespace: {ns}}}]
"
            ),
        )?;
        let kubeconfig = stack.dir.path().join("operator.kubeconfig");
        let kubeconfig =
            support::write_service_account_kubeconfig(&ns, OPERATOR_SA, &kubeconfig).await?;
        stack.run_operator_as(kubeconfig);
        Ok(Self {
            user: format!("system:serviceaccount:{ns}:{OPERATOR_SA}"),
            stack,
            audit,
        })
    }

    /// A bench with the operator running and pool `name` of `size` registered.
    pub async fn with_pool(
        prefix: &str,
        name: &str,
        size: i32,
        extra: &str,
        flags: &[&str],
    ) -> anyhow::Result<Self> {
        let mut bench = Self::new(prefix).await?;
        bench.stack.create_credentials(name, name)?;
        bench.stack.start_operator(flags)?;
        bench.stack.apply(&pool_yaml(name, name, size, extra))?;
        bench.stack.wait_registered(name, size).await?;
        Ok(bench)
    }

    /// Queues `n` runs on `pool`; returns their ids.
    pub async fn submit(&self, pool: &str, n: usize) -> anyhow::Result<Vec<String>> {
        let mut ids = Vec::with_capacity(n);
        for _ in 0..n {
            ids.push(self.stack.submit(pool, RUNNER, &[]).await?.id);
        }
        Ok(ids)
    }

    /// Waits until `n` run Pods are Running; returns their names.
    pub async fn running_pods(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let pods = self.stack.pods();
        wait_for(&format!("{n} run Pods Running"), WAIT, || async {
            let running: Vec<String> = pods
                .list(&ListParams::default().labels(LABEL_RUN_ID))
                .await?
                .items
                .iter()
                .filter(|p| support::pod_running(p) && p.metadata.deletion_timestamp.is_none())
                .map(ResourceExt::name_any)
                .collect();
            Ok((running.len() >= n).then_some(running))
        })
        .await
        .with_context(|| self.stack.diagnostics())
    }

    /// How many runs the backend has seen end so far.
    pub async fn ended(&self) -> anyhow::Result<usize> {
        let runs =
            workerpool_operator::backend::client::list_runs(&self.stack.backend_url, None).await?;
        Ok(runs
            .iter()
            .filter(|r| {
                matches!(
                    r.state.as_str(),
                    "succeeded" | "failed" | "stopped" | "denied"
                )
            })
            .count())
    }

    /// How many Workers are BUSY or DRAINING now.
    pub async fn busy(&self) -> anyhow::Result<usize> {
        Ok(self
            .stack
            .worker_list()
            .await?
            .iter()
            .filter(|w| {
                w.status.as_ref().and_then(|s| s.state).unwrap_or_default() != WorkerState::Idle
            })
            .count())
    }
}
