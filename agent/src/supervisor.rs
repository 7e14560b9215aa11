//! Runs the agent's subsystems as tasks: a subsystem that fails is restarted
//! with exponential back-off (so one broken part never takes the switch's
//! other services down), and all of them stop together on shutdown.

use crate::netlink::AbortOnDrop;
use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

const FIRST_BACKOFF: Duration = Duration::from_millis(500);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A subsystem that ran this long before failing starts over at the first back-off.
const HEALTHY_AFTER: Duration = Duration::from_secs(60);

type BoxFuture = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;
type Factory = Box<dyn Fn(CancellationToken) -> BoxFuture + Send + Sync>;

/// Health of one subsystem, as `metalmesh-agent status` shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubsystemHealth {
    pub running: bool,
    pub restarts: u64,
    pub last_error: Option<String>,
}

/// Shared view of every subsystem's health.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<BTreeMap<String, SubsystemHealth>>>);

impl Health {
    pub fn snapshot(&self) -> BTreeMap<String, SubsystemHealth> {
        self.0.lock().map(|m| m.clone()).unwrap_or_default()
    }

    fn update(&self, name: &str, f: impl FnOnce(&mut SubsystemHealth)) {
        if let Ok(mut map) = self.0.lock() {
            f(map.entry(name.to_string()).or_default());
        }
    }
}

pub struct Supervisor {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    health: Health,
}

impl std::fmt::Debug for Supervisor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Supervisor")
            .field("health", &self.health)
            .finish()
    }
}

impl Supervisor {
    pub fn new(cancel: CancellationToken) -> Self {
        Supervisor {
            cancel,
            tasks: JoinSet::new(),
            health: Health::default(),
        }
    }

    pub fn health(&self) -> Health {
        self.health.clone()
    }

    /// Starts a subsystem. `factory` builds a fresh run of it each time; a
    /// run that returns `Ok` has stopped for good, an `Err` is restarted.
    pub fn spawn<F, Fut>(&mut self, name: &str, factory: F)
    where
        F: Fn(CancellationToken) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let factory: Factory = Box::new(move |cancel| Box::pin(factory(cancel)));
        let name = name.to_string();
        let cancel = self.cancel.clone();
        let health = self.health.clone();
        self.tasks.spawn(async move {
            let mut backoff = FIRST_BACKOFF;
            loop {
                health.update(&name, |h| h.running = true);
                let started = tokio::time::Instant::now();
                // A panic inside a subsystem is caught by its own task and
                // treated like an error, not allowed to end the agent.
                let mut run = AbortOnDrop(tokio::spawn(factory(cancel.child_token())));
                let result = match (&mut run.0).await {
                    Ok(result) => result,
                    Err(join) => Err(anyhow::anyhow!("panicked: {join}")),
                };
                health.update(&name, |h| h.running = false);
                match result {
                    Ok(()) => {
                        tracing::info!(subsystem = %name, "stopped");
                        return;
                    }
                    Err(error) if !cancel.is_cancelled() => {
                        if started.elapsed() > HEALTHY_AFTER {
                            backoff = FIRST_BACKOFF;
                        }
                        tracing::error!(subsystem = %name, error = format!("{error:#}"), retry_in = ?backoff, "failed; restarting");
                        health.update(&name, |h| {
                            h.restarts += 1;
                            h.last_error = Some(format!("{error:#}"));
                        });
                        tokio::select! {
                            () = cancel.cancelled() => return,
                            () = tokio::time::sleep(backoff) => {}
                        }
                        backoff = (backoff * 2).min(MAX_BACKOFF);
                    }
                    Err(_) => return,
                }
            }
        });
    }

    /// Cancels every subsystem and waits (bounded) for them to finish.
    pub async fn shutdown(mut self, timeout: Duration) {
        self.cancel.cancel();
        let drain = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(timeout, drain).await.is_err() {
            tracing::warn!(?timeout, "subsystems did not stop in time; aborting them");
            self.tasks.abort_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn failing_subsystem_is_restarted_and_shutdown_stops_all() {
        let cancel = CancellationToken::new();
        let mut supervisor = Supervisor::new(cancel.clone());
        let runs = Arc::new(AtomicU32::new(0));
        let counter = Arc::clone(&runs);
        supervisor.spawn("flaky", move |cancel| {
            let counter = Arc::clone(&counter);
            async move {
                if counter.fetch_add(1, Ordering::SeqCst) < 2 {
                    anyhow::bail!("boom");
                }
                cancel.cancelled().await;
                Ok(())
            }
        });
        supervisor.spawn("panicky", |_cancel| async move {
            panic!("wire bug");
        });
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(runs.load(Ordering::SeqCst), 3);
        let health = supervisor.health().snapshot();
        assert_eq!(health["flaky"].restarts, 2);
        assert!(health["flaky"].running);
        assert!(health["panicky"].restarts >= 2);
        assert!(
            health["panicky"]
                .last_error
                .as_deref()
                .unwrap()
                .contains("panicked")
        );
        supervisor.shutdown(Duration::from_secs(5)).await;
    }
}
