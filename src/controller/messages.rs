//! What the backend sends a pool, each to its handler: run schedules and stops to [`runs`],
//! the answers to registrations to [`workers`].

use std::sync::Arc;

use super::records::worker_name;
use super::{Context, Error, PoolHandle, runs, workers};
use crate::protocol::{Body, Message};

/// Handles one inbound message. `Ok` means it may be acknowledged.
pub async fn handle(
    ctx: &Arc<Context>,
    pool: &Arc<PoolHandle>,
    message: &Message,
) -> Result<(), Error> {
    let namespace = &pool.key.namespace;
    match (&message.body, message.worker) {
        (Body::RunSchedule(schedule), Some(worker)) => {
            runs::schedule::on_schedule(ctx, pool, worker, message.id, schedule).await
        }
        (Body::RunStop(stop), Some(worker)) => runs::stop::on_stop(ctx, pool, worker, stop).await,
        (Body::WorkerRegistered(_), Some(worker)) => {
            workers::on_registered(ctx, namespace, &worker_name(&pool.key.name, worker)).await
        }
        (Body::WorkerDeregistered(_), Some(worker)) => {
            workers::on_deregistered(ctx, namespace, &worker_name(&pool.key.name, worker)).await
        }
        (Body::PoolDemand(demand), None) => {
            ctx.autoscale.on_demand(&pool.key, message.id, demand);
            Ok(())
        }
        (Body::PoolStatus(status), None) => {
            tracing::debug!(pool = %pool.key, ?status, "backend pool status");
            Ok(())
        }
        (body, _) => {
            tracing::warn!(pool = %pool.key, kind = body.kind(), "ignoring a message the operator does not expect from the backend");
            Ok(())
        }
    }
}
