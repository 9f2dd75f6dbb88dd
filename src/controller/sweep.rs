//! Cleanup after deleted pools, run every resync: a deleted pool's backend link, metrics and
//! autoscaling memory go once its Workers are deregistered, and its hooks once the WorkerPool
//! is gone. What the stores show is taken as it is; only a pool the store no longer has is
//! confirmed gone by the API server.

use std::sync::Arc;

use kube::api::{Api, ListParams};

use super::Context;
use super::cache::of_pool;
use crate::crd::{LABEL_WORKERPOOL, Worker, WorkerPool};

/// Cleans up after deleted pools: their backend links are closed once their Workers are
/// deregistered, and their hooks and hook metrics are forgotten once the WorkerPool is gone.
pub async fn sweep_links(ctx: &Arc<Context>) {
    for key in ctx.links.keys() {
        if ctx.caches.pool(&key.namespace, &key.name).is_some() {
            continue; // still there
        }
        let pools: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), &key.namespace);
        let Ok(None) = pools.get_opt(&key.name).await else {
            continue;
        };
        let Some(handle) = ctx.links.get(&key) else {
            continue;
        };
        let ulid = handle.pool_id.to_string();
        if no_workers_left(ctx, &key.namespace, &ulid).await {
            tracing::info!(pool = %key, "pool deleted and its workers deregistered: closing its backend link");
            ctx.links.remove(&key);
            ctx.metrics.forget_pool(&ulid);
            ctx.autoscale.forget(&key);
        }
    }
    forget_hooks_of_deleted_pools(ctx).await;
}

/// A pool's hooks serve only its own runs, and a run of a deleted pool is refused before its
/// hooks are asked for: they go with the WorkerPool (or when one of the same name replaced it).
async fn forget_hooks_of_deleted_pools(ctx: &Arc<Context>) {
    for (scope, uid) in ctx.hooks.pools() {
        let Some((namespace, name)) = scope.split_once('/') else {
            continue;
        };
        if let Some(pool) = ctx.caches.pool(namespace, name)
            && pool.metadata.uid == uid
        {
            continue; // still there
        }
        let pools: Api<WorkerPool> = Api::namespaced(ctx.client.clone(), namespace);
        let gone = match pools.get_opt(name).await {
            Ok(None) => true,
            Ok(Some(pool)) => pool.metadata.uid != uid,
            Err(_) => false, // try again at the next sweep
        };
        if gone {
            tracing::info!(pool = %scope, "pool deleted: forgetting its hooks");
            ctx.hooks.forget_pool(&scope, uid.as_deref());
        }
    }
}

/// Whether no Worker of the pool registered as `pool_ulid` is left in `namespace` (false when
/// that cannot be read: the next sweep looks again).
async fn no_workers_left(ctx: &Context, namespace: &str, pool_ulid: &str) -> bool {
    if let Some(left) = ctx.caches.workers(namespace, of_pool(pool_ulid)).await {
        return left.is_empty();
    }
    let workers: Api<Worker> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = format!("{LABEL_WORKERPOOL}={pool_ulid}");
    workers
        .list_metadata(&ListParams::default().labels(&selector))
        .await
        .is_ok_and(|left| left.items.is_empty())
}
