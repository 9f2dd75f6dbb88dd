//! Graceful shutdown: a future for SIGTERM/SIGINT, and a clonable [`Shutdown`] handle so that
//! one signal stops every server and loop of the process.

use std::fmt;

use tokio::sync::watch;

/// The signal that asked the process to stop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Signal {
    /// SIGTERM: what the kubelet sends when a Pod is deleted.
    Terminate,
    /// SIGINT: Ctrl-C.
    Interrupt,
}

impl fmt::Display for Signal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Signal::Terminate => "SIGTERM",
            Signal::Interrupt => "SIGINT",
        })
    }
}

/// Resolves on the first SIGTERM or SIGINT. If a handler cannot be installed (it practically
/// never fails) that is logged and the other signal still works.
pub async fn signal() -> Signal {
    let sigterm = async {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            match signal(SignalKind::terminate()) {
                Ok(mut stream) => {
                    stream.recv().await;
                }
                Err(err) => {
                    tracing::error!(error = %err, "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        }
        #[cfg(not(unix))]
        std::future::pending::<()>().await;
    };
    let sigint = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    let signal = tokio::select! {
        () = sigterm => Signal::Terminate,
        () = sigint => Signal::Interrupt,
    };
    tracing::info!(%signal, "shutting down");
    signal
}

/// Asks every [`Shutdown`] handle to stop. Dropping it does the same, so a task that owns the
/// trigger and dies cannot leave the others running forever.
#[derive(Debug)]
pub struct ShutdownTrigger {
    tx: watch::Sender<bool>,
}

/// A clonable "time to stop" future source, for `axum::serve(..).with_graceful_shutdown(..)`,
/// `Controller::graceful_shutdown_on(..)` and `select!` loops.
#[derive(Clone, Debug)]
pub struct Shutdown {
    rx: watch::Receiver<bool>,
}

impl Shutdown {
    /// A handle and its trigger.
    pub fn channel() -> (ShutdownTrigger, Shutdown) {
        let (tx, rx) = watch::channel(false);
        (ShutdownTrigger { tx }, Shutdown { rx })
    }

    /// A handle triggered by SIGTERM/SIGINT (spawns a task on the current runtime).
    pub fn on_signal() -> Shutdown {
        let (trigger, shutdown) = Shutdown::channel();
        tokio::spawn(async move {
            signal().await;
            trigger.trigger();
        });
        shutdown
    }

    /// True once shutdown was triggered.
    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once shutdown is triggered (or the trigger was dropped).
    pub async fn wait(self) {
        let mut rx = self.rx;
        // An error means the trigger is gone, which also means stop.
        let _ = rx.wait_for(|stop| *stop).await;
    }
}

impl ShutdownTrigger {
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn every_clone_resolves_when_triggered() {
        let (trigger, shutdown) = Shutdown::channel();
        let a = tokio::spawn(shutdown.clone().wait());
        let b = tokio::spawn(shutdown.clone().wait());
        assert!(!shutdown.is_triggered());
        trigger.trigger();
        let both = tokio::time::timeout(Duration::from_secs(5), async { (a.await, b.await) }).await;
        assert!(matches!(both, Ok((Ok(()), Ok(())))));
        assert!(shutdown.is_triggered());
        // A handle cloned after the trigger resolves at once.
        let late = tokio::time::timeout(Duration::from_secs(5), shutdown.wait()).await;
        assert!(late.is_ok());
    }

    #[tokio::test]
    async fn dropping_the_trigger_also_stops() {
        let (trigger, shutdown) = Shutdown::channel();
        drop(trigger);
        let done = tokio::time::timeout(Duration::from_secs(5), shutdown.wait()).await;
        assert!(done.is_ok());
    }
}
