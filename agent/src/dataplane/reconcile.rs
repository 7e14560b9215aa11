//! The reconciler: keeps the kernel equal to the rendered intents. It runs
//! when the intents change, when the kernel reports a change to links,
//! addresses, routes, rules or neighbours (so manual drift is reverted within
//! moments), and every few seconds regardless. Each pass reads what the
//! agent owns, diffs, and applies only the difference; a pass with nothing
//! to do changes nothing.
//!
//! When only remote routes change (a tenant route learned or withdrawn over
//! BGP), the change is written at once from the difference between what was
//! wanted and what is wanted now, without reading the kernel first; the
//! pass that the kernel's notifications then trigger confirms it.

use crate::netlink::AbortOnDrop;
use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use netlink_sys::{AsyncSocket, SocketAddr};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::desired::{KernelMode, Object, Plan, diff, render};
use super::intent::{Intents, Rejection, validate};
use super::kernel::{self, Failure, KernelState};

/// Full pass at least this often.
const PERIOD: Duration = Duration::from_secs(10);
/// Notifications within this window are handled by one pass.
const DEBOUNCE: Duration = Duration::from_millis(50);
/// rtnetlink multicast groups: links, neighbours, IPv4 addresses, routes, rules.
const GROUPS: u32 = 0x1 | 0x4 | 0x10 | 0x40 | 0x80;

/// What the last pass did, for `metalmesh-agent status` and `dataplane diff`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PassReport {
    pub passes: u64,
    /// Changes written without a pass (remote routes only).
    #[serde(default)]
    pub incremental: u64,
    pub objects: usize,
    pub added: usize,
    pub removed: usize,
    pub duration_ms: u64,
    pub rejected: Vec<Rejection>,
    pub failures: Vec<Failure>,
    /// Full passes that found the kernel changed behind the agent's back
    /// (no new intent asked for it) and put it back.
    #[serde(default)]
    pub drift_repaired: u64,
    /// Every full pass's duration, in seconds (not serialised: metrics only).
    #[serde(skip)]
    pub durations: PassDurations,
}

/// The histogram of full-pass durations.
#[derive(Debug, Clone)]
pub struct PassDurations(pub prometheus_client::metrics::histogram::Histogram);

impl Default for PassDurations {
    fn default() -> PassDurations {
        PassDurations(prometheus_client::metrics::histogram::Histogram::new([
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ]))
    }
}

/// Everything a reconciler needs.
#[derive(Debug, Clone)]
pub struct Reconciler {
    pub mode: KernelMode,
    pub vtep: Ipv4Addr,
    pub provisioning_bridge: String,
    /// What tenant intents may not touch.
    pub guardrails: Arc<crate::dataplane::Guardrails>,
    pub intents: watch::Receiver<Intents>,
    pub report: Arc<Mutex<PassReport>>,
}

/// What the last full pass read and wanted (what an incremental change is
/// computed against).
#[derive(Debug)]
struct Applied {
    state: KernelState,
    want: BTreeSet<Object>,
}

/// Renders what the kernel should hold, with the rejected VRFs.
pub fn desired(
    intents: &Intents,
    interfaces: &BTreeSet<String>,
    guardrails: &crate::dataplane::Guardrails,
    mode: KernelMode,
    vtep: Ipv4Addr,
) -> (BTreeSet<Object>, Vec<Rejection>) {
    let (accepted, rejected) = validate(intents, interfaces, guardrails);
    (render(&accepted, mode, vtep), rejected)
}

impl Reconciler {
    /// What one pass would change now.
    pub async fn plan(
        &self,
        handle: &rtnetlink::Handle,
    ) -> Result<(Plan, Vec<Rejection>), rtnetlink::Error> {
        let (_, _, plan, rejected) = self.compute(handle).await?;
        Ok((plan, rejected))
    }

    /// Reads the kernel, renders the intents against its interfaces and
    /// diffs: the kernel's state, the objects wanted, what to change, and
    /// the VRFs rejected.
    async fn compute(
        &self,
        handle: &rtnetlink::Handle,
    ) -> Result<(KernelState, BTreeSet<Object>, Plan, Vec<Rejection>), rtnetlink::Error> {
        let state = kernel::read(handle).await?;
        let (want, rejected) = desired(
            &self.intents.borrow(),
            &state.interface_names(),
            &self.guardrails,
            self.mode,
            self.vtep,
        );
        let plan = diff(&want, &state.objects);
        Ok((state, want, plan, rejected))
    }

    /// Writes the change of the intents at once when it is only remote
    /// routes, neighbours and FDB entries added or routes removed; false
    /// when a full pass must do it (links, rules, addresses, a refusal).
    async fn incremental(&self, handle: &rtnetlink::Handle, last: &mut Applied) -> bool {
        let (want, rejected) = desired(
            &self.intents.borrow(),
            &last.state.interface_names(),
            &self.guardrails,
            self.mode,
            self.vtep,
        );
        let plan = diff(&want, &last.want);
        let simple = plan.add.iter().all(|o| {
            matches!(
                o,
                Object::Route { .. } | Object::Neighbor { .. } | Object::Fdb { .. }
            )
        }) && plan
            .remove
            .iter()
            .all(|o| matches!(o, Object::Route { .. }));
        if !simple {
            return false;
        }
        if !plan.is_empty() {
            let failures =
                kernel::apply(handle, &plan, &last.state, &self.provisioning_bridge).await;
            if !failures.is_empty() {
                return false;
            }
            tracing::debug!(
                add = plan.add.len(),
                remove = plan.remove.len(),
                "dataplane: remote routes written"
            );
            last.want = want;
        }
        if let Ok(mut report) = self.report.lock() {
            if report.rejected != rejected {
                for r in &rejected {
                    tracing::warn!(vrf = %r.vrf, reason = %r.reason, "dataplane: VRF rejected");
                }
            }
            report.incremental += u64::from(!plan.is_empty());
            report.rejected = rejected;
        }
        true
    }

    async fn pass(&self, handle: &rtnetlink::Handle) -> Result<Applied, rtnetlink::Error> {
        let started = Instant::now();
        let (state, want, plan, rejected) = self.compute(handle).await?;
        let failures = if plan.is_empty() {
            Vec::new()
        } else {
            tracing::info!(
                add = plan.add.len(),
                remove = plan.remove.len(),
                "dataplane: applying changes"
            );
            kernel::apply(handle, &plan, &state, &self.provisioning_bridge).await
        };
        for failure in &failures {
            tracing::warn!(object = ?failure.object, error = %failure.error, "dataplane: kernel refused");
        }
        if let Ok(mut report) = self.report.lock() {
            if report.rejected != rejected {
                for r in &rejected {
                    tracing::warn!(vrf = %r.vrf, reason = %r.reason, "dataplane: VRF rejected");
                }
            }
            report.passes += 1;
            report.objects = want.len();
            report.added = plan.add.len();
            report.removed = plan.remove.len();
            report.duration_ms = started.elapsed().as_millis() as u64;
            report.durations.0.observe(started.elapsed().as_secs_f64());
            report.rejected = rejected;
            report.failures = failures;
        }
        Ok(Applied { state, want })
    }

    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let (handle, _driver) = crate::netlink::connect()?;
        let (mut events_connection, _, mut events) = rtnetlink::new_connection()?;
        events_connection
            .socket_mut()
            .socket_mut()
            .bind(&SocketAddr::new(0, GROUPS))?;
        let _events_driver = AbortOnDrop(tokio::spawn(events_connection));
        let mut timer = tokio::time::interval(PERIOD);
        let mut full = true;
        // Whether the coming full pass was asked for by nothing but time or
        // the kernel: what it changes is drift.
        let mut repair = false;
        let mut last: Option<Applied> = None;
        loop {
            if full {
                last = Some(self.pass(&handle).await?);
                if repair
                    && let Ok(mut report) = self.report.lock()
                    && report.added + report.removed > 0
                {
                    report.drift_repaired += 1;
                }
            }
            full = true;
            repair = true;
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                _ = timer.tick() => {}
                changed = self.intents.changed() => {
                    changed?;
                    repair = false;
                    if let Some(last) = last.as_mut() {
                        full = !self.incremental(&handle, last).await;
                    }
                }
                event = events.next() => {
                    if event.is_none() {
                        anyhow::bail!("netlink notifications ended");
                    }
                    // Coalesce a burst (our own changes produce one too).
                    let until = tokio::time::Instant::now() + DEBOUNCE;
                    while let Ok(Some(_)) = tokio::time::timeout_at(until, events.next()).await {}
                }
            }
        }
    }
}

/// Where the agent keeps the intents it was last given, to reconcile the
/// same dataplane after a restart without touching it.
pub fn intents_file(state_dir: &std::path::Path) -> PathBuf {
    state_dir.join("dataplane-intents.toml")
}

/// The intents stored at `path`, or none when there is no file yet. An
/// unreadable file stops the start: tearing the dataplane down because a
/// file is damaged would cut every tenant off.
pub fn load_intents(path: &std::path::Path) -> anyhow::Result<crate::dataplane::Intents> {
    use anyhow::Context as _;
    match std::fs::read_to_string(path) {
        Ok(text) => toml::from_str(&text).with_context(|| {
            format!(
                "stored dataplane intents {} are unreadable (refusing to start rather than tear the dataplane down)",
                path.display()
            )
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Default::default()),
        Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
    }
}
