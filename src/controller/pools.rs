//! The WorkerPool reconciler: hooks -> credentials -> backend link -> autoscaling (when
//! `spec.autoscaling` is set) -> Workers -> status.

use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use futures::future::join_all;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::autoscale::{annotate_status, autoscale};
use super::error::{Error, Step, ignore_not_found, is_conflict};
use super::plan::{WorkerView, plan_workers};
use super::pool_credentials::read_credentials;
use super::pool_status::{CredentialState, Observation, pool_status, worker_counts};
use super::{Context, MANAGER, PoolHandle, PoolKey, cache, dispatch, workers};
use crate::crd::{LABEL_ULID, LABEL_WORKERPOOL, Worker, WorkerPool, WorkerPoolStatus, WorkerState};
use crate::hooks::registry::{
    CONDITION_TYPE, FetchedConfigMaps, HooksCondition, REASON_LOAD_FAILED, pool_config_maps,
};

/// How long a pool's reconcile waits for the first load of the cluster-wide hooks, so that its
/// HooksReady condition can include them.
const CLUSTER_HOOKS_WAIT: Duration = Duration::from_secs(10);
/// When a hook ConfigMap could not be read or the cluster-wide hooks had not loaded, the pool
/// is reconciled again this soon (as after a failed reconcile).
const HOOKS_RETRY: Duration = Duration::from_secs(5);

/// While a pool's broker link is down, the pool is reconciled again this soon.
const LINK_RETRY: Duration = Duration::from_secs(10);

/// Reconciles one pool. Failures of one pool never stop the others: each pool is its own
/// reconciliation, and a pool with bad input reports it on its status and events.
pub async fn reconcile(pool: Arc<WorkerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let key = PoolKey {
        namespace: namespace.clone(),
        name: pool.name_any(),
    };
    if pool.meta().deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }

    // Hooks first: the backend link below starts taking run messages at once, and a run is
    // built only from loaded hooks (runs that come earlier wait for them).
    let hooks = load_hooks(&ctx, &pool).await;

    let start = dispatch::starter(&ctx);
    let registration =
        read_credentials(&ctx, &pool)
            .await?
            .and_then(|credentials| match credentials {
                None => Ok(None),
                Some(credentials) => {
                    let link = ctx.links.ensure(&key, &credentials, &start)?;
                    Ok(Some((credentials, link)))
                }
            });
    let (credentials, link) = match registration {
        Ok(None) => (CredentialState::Missing, None),
        Ok(Some((credentials, link))) => (
            CredentialState::Valid {
                pool_ulid: credentials.pool_id.to_string(),
            },
            Some(link),
        ),
        Err(problem) => {
            let problem = problem.to_string();
            tracing::error!(pool = %key, "{problem}");
            ctx.event(
                &*pool,
                EventType::Warning,
                "WorkerPoolCannotRegister",
                "Register",
                format!("Unable to register worker pool: {problem}"),
            )
            .await;
            (CredentialState::Invalid(problem), None)
        }
    };
    if let Some(link) = &link {
        label_with_ulid(&ctx, &pool, &link.pool_id.to_string()).await?;
    }

    let mut workers = owned_workers(&ctx, &pool).await?;
    let mut degraded = None;
    let scaling = match &link {
        Some(link) => autoscale(&ctx, &pool, &link.pool_id.to_string(), &workers).await?,
        None => None,
    };
    let pool_size = scaling.as_ref().map_or(pool.spec.pool_size, |s| s.size);
    if let Some(link) = &link {
        let mut views = views_of(&workers, &link.pool_id.to_string());
        if let Some(scaling) = &scaling {
            for view in &mut views {
                view.leave_first = scaling.remove_first.contains(&view.name);
            }
        }
        let plan = plan_workers(usize::try_from(pool_size).unwrap_or(0), &views);
        if !plan.is_empty() {
            tracing::info!(pool = %key, ?plan, "scaling the pool");
            if let Some(problem) = apply_plan(&ctx, &pool, link, plan).await? {
                degraded = Some(problem);
            }
            workers = owned_workers(&ctx, &pool).await?;
        }
    }

    let pool_ulid = link.as_ref().map(|l| l.pool_id.to_string());
    let views = views_of(&workers, pool_ulid.as_deref().unwrap_or_default());
    if let Some(ulid) = &pool_ulid {
        set_gauges(&ctx, ulid, &views);
    }
    let observation = Observation {
        generation: pool.meta().generation,
        desired: pool_size,
        credentials,
        link: link.as_ref().map(|l| l.state()),
        workers: views,
        degraded,
        hooks: Some(hooks.condition),
    };
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut status = pool_status(&observation, pool.status.as_ref(), now);
    if let Some(scaling) = &scaling {
        annotate_status(
            &mut status,
            scaling,
            pool.status.as_ref(),
            pool.meta().generation,
            now,
        );
    }
    write_status(&ctx, &pool, status).await?;
    let autoscale_recheck = scaling.as_ref().and_then(|s| s.recheck);
    let link_down = link.as_ref().is_some_and(|l| !l.state().is_connected());
    let next = if hooks.retry_soon {
        HOOKS_RETRY
    } else if link_down {
        // A link that gave up is replaced by a later reconcile (with its own backoff), so a
        // broker that comes up late is found without waiting for the resync.
        LINK_RETRY.min(ctx.config.resync)
    } else {
        ctx.config.resync
    };
    // The autoscaler looks again when a delay or a window ends (at least a second apart).
    let next = autoscale_recheck.map_or(next, |r| next.min(r.max(Duration::from_secs(1))));
    Ok(Action::requeue(next))
}

/// The pool's HooksReady condition after a load, and whether to load again soon: a ConfigMap
/// could not be read, or the cluster-wide hooks (part of the condition) have not loaded.
struct HooksLoaded {
    condition: HooksCondition,
    retry_soon: bool,
}

/// Loads (or hot-reloads) the pool's plugins and initialization policy from their ConfigMaps.
/// A hook that fails to load, including one whose ConfigMap cannot be read, is reported by an
/// event and the HooksReady condition (which also carries the cluster-wide hooks' problems);
/// the registry keeps the previous good version of a plugin in service. Never fails the
/// reconcile: what went wrong goes on the pool's status.
async fn load_hooks(ctx: &Context, pool: &Arc<WorkerPool>) -> HooksLoaded {
    let namespace = pool.namespace().unwrap_or_default();
    let config_maps: Api<ConfigMap> = Api::namespaced(ctx.client.clone(), &namespace);
    let mut fetched = FetchedConfigMaps {
        namespace,
        ..FetchedConfigMaps::default()
    };
    for name in pool_config_maps(pool) {
        // Read again (and decompressed again by the registry) only when it changed.
        if let Some(known) = ctx.caches.known_config_map(&fetched.namespace, &name) {
            fetched.found.insert(name, (*known).clone());
            continue;
        }
        match config_maps.get_opt(&name).await {
            Ok(Some(config_map)) => {
                ctx.caches.read_config_map(config_map.clone());
                fetched.found.insert(name, config_map);
            }
            Ok(None) => {}
            Err(err) => {
                fetched.unreadable.insert(name, err.to_string());
            }
        }
    }
    let unreadable = !fetched.unreadable.is_empty();
    let registry = ctx.hooks.clone();
    let loading = pool.clone();
    let report = match tokio::task::spawn_blocking(move || {
        registry.load_pool_from(&loading, &fetched)
    })
    .await
    {
        Ok(report) => report,
        Err(err) => {
            // The load did not complete, so the pool's runs are not built (fail closed).
            let message = format!("loading the pool's hooks stopped unexpectedly: {err}");
            tracing::error!(pool = %pool.name_any(), "{message}");
            ctx.event(
                &**pool,
                EventType::Warning,
                REASON_LOAD_FAILED,
                "LoadHooks",
                message.clone(),
            )
            .await;
            return HooksLoaded {
                condition: HooksCondition {
                    type_: CONDITION_TYPE,
                    status: false,
                    reason: REASON_LOAD_FAILED,
                    message,
                },
                retry_soon: true,
            };
        }
    };
    for problem in report.problems() {
        tracing::warn!(pool = %report.scope, "{}", problem.message());
        ctx.event(
            &**pool,
            EventType::Warning,
            REASON_LOAD_FAILED,
            "LoadHooks",
            problem.message(),
        )
        .await;
    }
    let cluster_loaded = ctx.hooks.wait_for_cluster(CLUSTER_HOOKS_WAIT).await;
    HooksLoaded {
        condition: ctx.hooks.pool_condition(&report),
        retry_soon: unreadable || !cluster_loaded,
    }
}

/// The seed shows the pool labelled with its ULID (`workers.spacelift.io/ulid`).
async fn label_with_ulid(ctx: &Context, pool: &WorkerPool, ulid: &str) -> Result<(), Error> {
    if pool.labels().get(LABEL_ULID).map(String::as_str) == Some(ulid) {
        return Ok(());
    }
    let api: Api<WorkerPool> =
        Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    let patch = json!({"metadata": {"labels": {LABEL_ULID: ulid}}});
    api.patch(
        &pool.name_any(),
        &workers::patch_params(),
        &Patch::Merge(&patch),
    )
    .await
    .map_err(Error::api(Step::LabelPool, pool_object(pool)))?;
    Ok(())
}

/// The pool's Workers: those it owns, from the cache when there is one (with the Workers this
/// process created a moment ago, so that a plan never counts short and creates too many).
pub async fn owned_workers(ctx: &Context, pool: &WorkerPool) -> Result<Vec<Worker>, Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let uid = pool.uid().unwrap_or_default();
    let owned = |w: &Worker| w.owner_references().iter().any(|o| o.uid == uid);
    if let Some(workers) = ctx.caches.workers(&namespace, owned).await {
        return Ok(workers.iter().map(|w| (**w).clone()).collect());
    }
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), &namespace);
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(Error::api(Step::ListWorkers, pool_object(pool)))?
        .items
        .into_iter()
        .filter(|w| w.owner_references().iter().any(|o| o.uid == uid))
        .collect())
}

/// The pool's idle and total worker gauges.
fn set_gauges(ctx: &Context, pool_ulid: &str, views: &[WorkerView]) {
    let (idle, total) = worker_counts(views);
    ctx.metrics
        .worker_idle
        .with_label_values(&[pool_ulid])
        .set(idle);
    ctx.metrics
        .worker_total
        .with_label_values(&[pool_ulid])
        .set(total);
}

/// Sets the gauges of the pool registered as `pool_ulid` from the cache, when one of its
/// Workers took or ended a run (which does not reconcile the pool).
pub fn set_gauges_from_cache(ctx: &Context, namespace: &str, pool_ulid: &str) {
    let Some(workers) = ctx
        .caches
        .workers(namespace, cache::of_pool(pool_ulid))
        .now_or_never()
        .flatten()
    else {
        return;
    };
    let workers: Vec<Worker> = workers.iter().map(|w| (**w).clone()).collect();
    set_gauges(ctx, pool_ulid, &views_of(&workers, pool_ulid));
}

/// The planner's view of the Workers. A Worker registered under another pool ULID (the pool's
/// credentials were replaced by another pool's) can no longer serve: it counts as leaving.
fn views_of(workers: &[Worker], pool_ulid: &str) -> Vec<WorkerView> {
    workers
        .iter()
        .map(|w| {
            let status = w.status.clone().unwrap_or_default();
            let stale = w.labels().get(LABEL_WORKERPOOL).map(String::as_str) != Some(pool_ulid);
            WorkerView {
                name: w.name_any(),
                state: status.state.unwrap_or(WorkerState::Idle),
                has_run: status.current_run.is_some(),
                registered: status.registered.unwrap_or(false) && !stale,
                deleting: w.meta().deletion_timestamp.is_some()
                    || (stale && status.current_run.is_none()),
                created: w
                    .meta()
                    .creation_timestamp
                    .as_ref()
                    .map_or(0, |t| t.0.as_second()),
                leave_first: false,
            }
        })
        .collect()
}

/// Deletes a Worker the plan found idle, unless a schedule made it busy since the Workers were
/// listed: under the worker's lock (which a schedule holds while it takes the worker) its
/// current state is read again, and the delete is conditional on that version. A worker that
/// took a run in between is left for the next reconcile, which drains it.
async fn delete_if_still_idle(
    ctx: &Context,
    api: &Api<Worker>,
    namespace: &str,
    name: &str,
) -> Result<(), Error> {
    let (_guard, worker) = ctx.locked_worker(namespace, name).await?;
    let Some(worker) = worker else {
        return Ok(());
    };
    if worker
        .status
        .as_ref()
        .is_some_and(|s| s.current_run.is_some())
    {
        tracing::info!(worker = %name, "not scaling down a worker that took a run meanwhile");
        return Ok(());
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            resource_version: worker.resource_version(),
            uid: worker.uid(),
        }),
        ..DeleteParams::default()
    };
    match api.delete(name, &params).await {
        Err(err) if is_conflict(&err) => Ok(()), // changed meanwhile: the next reconcile decides
        result => ignore_not_found(result).map_err(Error::api(
            Step::DeleteWorker,
            format!("{namespace}/{name}"),
        )),
    }
}

/// Carries out a plan. Returns a (reason, message) when worker creation failed, for the
/// Degraded condition; the failed Workers are retried at the next reconcile.
async fn apply_plan(
    ctx: &Arc<Context>,
    pool: &WorkerPool,
    link: &Arc<PoolHandle>,
    plan: super::plan::Plan,
) -> Result<Option<(String, String)>, Error> {
    let namespace = pool.namespace().unwrap_or_default();
    let api: Api<Worker> = Api::namespaced(ctx.client.clone(), &namespace);
    for name in &plan.delete {
        delete_if_still_idle(ctx, &api, &namespace, name).await?;
    }
    for name in &plan.drain {
        workers::set_draining(ctx, link, &namespace, name, true).await?;
    }
    for name in &plan.undrain {
        workers::set_draining(ctx, link, &namespace, name, false).await?;
    }
    let created = join_all((0..plan.create).map(|_| workers::create_worker(ctx, pool, link))).await;
    if plan.create > 0 {
        // The burst is over: ready keys for the next one, on the cores it no longer needs.
        ctx.keys.refill();
    }
    let failures: Vec<String> = created
        .into_iter()
        .filter_map(Result::err)
        .map(|e| e.to_string())
        .collect();
    if failures.is_empty() {
        return Ok(None);
    }
    let message = format!(
        "{} of {} new workers could not be created: {}",
        failures.len(),
        plan.create,
        failures[0]
    );
    ctx.event(
        pool,
        EventType::Warning,
        "WorkerCreationFailed",
        "CreateWorker",
        message.clone(),
    )
    .await;
    Ok(Some(("WorkerCreationFailed".into(), message)))
}

async fn write_status(
    ctx: &Context,
    pool: &WorkerPool,
    status: WorkerPoolStatus,
) -> Result<(), Error> {
    if pool.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let api: Api<WorkerPool> =
        Api::namespaced(ctx.client.clone(), &pool.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": WorkerPool::api_version(&()),
        "kind": WorkerPool::kind(&()),
        "status": status,
    });
    api.patch_status(
        &pool.name_any(),
        &PatchParams::apply(MANAGER).force(),
        &Patch::Apply(&patch),
    )
    .await
    .map_err(Error::api(Step::WritePoolStatus, pool_object(pool)))?;
    Ok(())
}

fn pool_object(pool: &WorkerPool) -> String {
    format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    )
}

/// Maps a ConfigMap to the pools in its namespace whose hooks come from it (hot reload).
pub fn pools_using_config_map(
    pools: &[Arc<WorkerPool>],
    config_map: &impl ResourceExt,
) -> Vec<kube::runtime::reflector::ObjectRef<WorkerPool>> {
    let name = config_map.name_any();
    let namespace = config_map.namespace();
    pools
        .iter()
        .filter(|p| p.namespace() == namespace && pool_config_maps(p).contains(&name))
        .map(|p| kube::runtime::reflector::ObjectRef::from_obj(&**p))
        .collect()
}

/// Maps a Secret to the pools in its namespace that read credentials from it.
pub fn pools_using_secret(
    pools: &[Arc<WorkerPool>],
    secret: &impl ResourceExt,
) -> Vec<kube::runtime::reflector::ObjectRef<WorkerPool>> {
    let name = secret.name_any();
    let namespace = secret.namespace();
    pools
        .iter()
        .filter(|p| p.namespace() == namespace)
        .filter(|p| {
            [&p.spec.token, &p.spec.private_key]
                .into_iter()
                .flatten()
                .any(|r| r.secret_key_ref.name == name)
        })
        .map(|p| kube::runtime::reflector::ObjectRef::from_obj(&**p))
        .collect()
}
