//! The pipeline's last step: the cluster admin's run-Pod guard ([`crate::guard`]) on the Pod
//! as every hook left it, told which hook changed what.

use k8s_openapi::api::core::v1::Pod;

use super::input::PoolContext;
use super::trail::HookRecord;
use crate::guard::{GuardInput, HookChanges, RunPodGuard};
use crate::protocol::RunSchedule;

/// Hook name under which the guard refuses a run.
pub const GUARD_HOOK: &str = "run-pod-guard";

/// Why the guard refuses `pod`, built by `build_pod` as `built` and changed by the hooks of
/// `trail`; empty when it is allowed.
pub(super) fn refusals(
    guard: &RunPodGuard,
    pool: &PoolContext,
    run: &RunSchedule,
    built: &Pod,
    pod: &Pod,
    trail: &[HookRecord],
    runner_image_hosts: &[String],
) -> Vec<String> {
    let hooks: Vec<HookChanges<'_>> = trail
        .iter()
        .map(|record| HookChanges {
            hook: format!("{} {:?}", record.stage, record.hook),
            changes: &record.changes,
        })
        .collect();
    // The Pod's own namespace: a pool read from a file may name none (render puts it in
    // "default", as the Worker would be).
    let namespace = built
        .metadata
        .namespace
        .as_deref()
        .unwrap_or(pool.namespace.as_str());
    guard.check(&GuardInput {
        namespace,
        pool_spec: &pool.spec,
        run,
        built,
        pod,
        hooks: &hooks,
        runner_image_hosts,
    })
}
