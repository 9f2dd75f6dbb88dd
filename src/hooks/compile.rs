//! The compile queue: at most N plugin compiles at once in the process, at most one per scope
//! (a pool, or the cluster-wide hooks), each bounded in time.
//!
//! Compiling a module takes seconds and memory in proportion to its size, and a tenant chooses
//! the module. A compile runs on a thread of its own and holds one slot until it ends; the
//! load that asked for it waits at most the compile time limit and then reports the plugin
//! too slow to compile. Cranelift cannot be stopped mid-way, so an overdue compile goes on in
//! the background, still holding its slot: the CPU and memory compiles take stay bounded by
//! the slots, and since a scope holds at most one, another pool always finds one free unless
//! every slot is held by a different scope.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

/// Why a compile did not deliver in time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CompileWait {
    #[error(
        "compiling the module took longer than {} s (limits.pluginCompileTimeoutSeconds, Helm value hooks.limits.pluginCompileTimeoutSeconds): make the module smaller, or raise the limit",
        limit.as_secs()
    )]
    TooSlow { limit: Duration },
    #[error(
        "waited {} s for a compile slot while other modules compiled (limits.maxConcurrentCompiles; one per pool at a time, and an earlier compile of this pool may still be running); it is tried again at the next reload",
        waited.as_secs()
    )]
    Busy { waited: Duration },
}

#[derive(Debug, Default)]
struct Running {
    total: usize,
    by_scope: HashMap<String, usize>,
}

/// The queue. One per WASM host.
#[derive(Debug)]
pub struct CompileQueue {
    slots: usize,
    timeout: Duration,
    running: Arc<(Mutex<Running>, Condvar)>,
}

impl CompileQueue {
    pub fn new(slots: usize, timeout: Duration) -> Self {
        Self {
            slots: slots.max(1),
            timeout,
            running: Arc::default(),
        }
    }

    /// Runs `job` for `scope` on a thread of its own, once a slot is free, and waits for it;
    /// the wait and the job together take at most the time limit.
    pub fn run<T: Send + 'static>(
        &self,
        scope: &str,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, CompileWait> {
        let started = Instant::now();
        let deadline = started + self.timeout;
        let (lock, freed) = &*self.running;
        let mut running = lock.lock().unwrap_or_else(|p| p.into_inner());
        loop {
            // Unscoped compiles (`render`, `plugin check`) count toward the total only.
            let busy_scope =
                !scope.is_empty() && running.by_scope.get(scope).copied().unwrap_or(0) > 0;
            if running.total < self.slots && !busy_scope {
                break;
            }
            let now = Instant::now();
            if now >= deadline {
                return Err(CompileWait::Busy {
                    waited: now - started,
                });
            }
            running = freed
                .wait_timeout(running, deadline - now)
                .unwrap_or_else(|p| p.into_inner())
                .0;
        }
        running.total += 1;
        *running.by_scope.entry(scope.to_string()).or_default() += 1;
        drop(running);

        let (tx, rx) = mpsc::channel();
        let shared = self.running.clone();
        let owner = scope.to_string();
        let spawned = std::thread::Builder::new()
            .name("plugin-compile".into())
            .spawn(move || {
                let _ = tx.send(job());
                release(&shared, &owner);
            });
        if spawned.is_err() {
            release(&self.running, scope);
            return Err(CompileWait::Busy {
                waited: started.elapsed(),
            });
        }
        rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
            .map_err(|_| CompileWait::TooSlow {
                limit: self.timeout,
            })
    }
}

fn release(running: &(Mutex<Running>, Condvar), scope: &str) {
    let (lock, freed) = running;
    let mut running = lock.lock().unwrap_or_else(|p| p.into_inner());
    running.total = running.total.saturating_sub(1);
    if let Some(n) = running.by_scope.get_mut(scope) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            running.by_scope.remove(scope);
        }
    }
    freed.notify_all();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_overdue_compile_holds_its_slot_and_its_scope_until_it_ends() {
        let queue = CompileQueue::new(2, Duration::from_millis(100));
        let slow = queue.run("team-a/a", || {
            std::thread::sleep(Duration::from_millis(400))
        });
        assert_eq!(
            slow,
            Err(CompileWait::TooSlow {
                limit: Duration::from_millis(100)
            })
        );
        // The same pool waits for its own earlier compile; another pool compiles at once.
        assert!(matches!(
            queue.run("team-a/a", || 1),
            Err(CompileWait::Busy { .. })
        ));
        assert_eq!(queue.run("team-b/b", || 2), Ok(2));
        std::thread::sleep(Duration::from_millis(400));
        assert_eq!(queue.run("team-a/a", || 3), Ok(3));
    }
}
