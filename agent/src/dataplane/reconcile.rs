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
    /// The routed ports the agent owns, persisted (`None`: only the ports
    /// the intents route are the agent's).
    pub owned_ports: Option<OwnedPorts>,
    /// The provisioning bridge, put back when deleted by hand (with the
    /// ports it last held, `bridge_ports`), when boot services run here.
    pub provisioning: Option<kernel::ProvisioningBridge>,
    pub bridge_ports: Option<OwnedPorts>,
}

/// The machine ports the agent has routed (given the tenant gateway
/// address), kept in `<state_dir>/dataplane-owned-ports.json`: ownership is
/// what the agent did, not what an interface looks like, so an operator's
/// interface carrying 169.254.0.1/32 is never taken over. Written before a
/// port is routed and after one is released, so a crash in between leaves
/// the agent owning a superset, never losing a port it configured.
#[derive(Debug, Clone)]
pub struct OwnedPorts {
    path: PathBuf,
    ports: Arc<Mutex<BTreeSet<String>>>,
}

impl OwnedPorts {
    /// Loads the routed ports' file (none yet: the agent owns no routed
    /// port). A damaged file stops the start, like the stored intents.
    pub fn load(state_dir: &std::path::Path) -> anyhow::Result<OwnedPorts> {
        OwnedPorts::load_file(state_dir.join("dataplane-owned-ports.json"))
    }

    /// Loads the provisioning bridge's ports as last seen.
    pub fn load_bridge_ports(state_dir: &std::path::Path) -> anyhow::Result<OwnedPorts> {
        OwnedPorts::load_file(state_dir.join("provisioning-bridge-ports.json"))
    }

    fn load_file(path: PathBuf) -> anyhow::Result<OwnedPorts> {
        use anyhow::Context as _;
        let ports = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{} is unreadable", path.display()))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        Ok(OwnedPorts {
            path,
            ports: Arc::new(Mutex::new(ports)),
        })
    }

    pub fn contains(&self, port: &str) -> bool {
        self.ports.lock().is_ok_and(|p| p.contains(port))
    }

    /// Stores `ports` as the owned set (durably) when it changed.
    fn store(&self, ports: BTreeSet<String>) -> std::io::Result<()> {
        let Ok(mut current) = self.ports.lock() else {
            return Err(std::io::Error::other("owned ports lock poisoned"));
        };
        if *current == ports {
            return Ok(());
        }
        let bytes = serde_json::to_vec_pretty(&ports).map_err(std::io::Error::other)?;
        crate::admin::server::write_durably(
            &self.path.with_extension("json.tmp"),
            &self.path,
            &bytes,
        )?;
        *current = ports;
        Ok(())
    }

    fn all(&self) -> BTreeSet<String> {
        self.ports.lock().map(|p| p.clone()).unwrap_or_default()
    }
}

/// The ports routed by `objects`.
fn routed_ports(objects: &BTreeSet<Object>) -> BTreeSet<String> {
    objects
        .iter()
        .filter_map(|o| match o {
            Object::RoutedPort { port, .. } => Some(port.clone()),
            _ => None,
        })
        .collect()
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
    facts: &crate::dataplane::KernelFacts,
    guardrails: &crate::dataplane::Guardrails,
    mode: KernelMode,
    vtep: Ipv4Addr,
) -> (BTreeSet<Object>, Vec<Rejection>) {
    let (accepted, rejected) = validate(intents, facts, guardrails);
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
        let mut state = kernel::read(handle).await?;
        let (want, rejected) = desired(
            &self.intents.borrow(),
            &state.facts(),
            &self.guardrails,
            self.mode,
            self.vtep,
        );
        // A routed port is the agent's when it routed it before or the
        // intents route it now; any other interface with the gateway
        // address is left alone.
        let wanted_ports = routed_ports(&want);
        state.keep_routed_ports(|port| {
            wanted_ports.contains(port)
                || self.owned_ports.as_ref().is_some_and(|o| o.contains(port))
        });
        let plan = diff(&want, &state.objects);
        Ok((state, want, plan, rejected))
    }

    /// Writes the change of the intents at once when it is only remote
    /// routes, neighbours and FDB entries added or routes removed; false
    /// when a full pass must do it (links, rules, addresses, a refusal).
    async fn incremental(&self, handle: &rtnetlink::Handle, last: &mut Applied) -> bool {
        let (want, rejected) = desired(
            &self.intents.borrow(),
            &last.state.facts(),
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

    /// Puts the provisioning bridge back (deleted or its address removed by
    /// hand), or remembers its ports while it is there. True when the
    /// kernel was changed.
    async fn keep_provisioning_bridge(
        &self,
        handle: &rtnetlink::Handle,
        state: &KernelState,
    ) -> bool {
        let (Some(bridge), Some(remembered)) = (&self.provisioning, &self.bridge_ports) else {
            return false;
        };
        if state.index_of(&bridge.name).is_some()
            && let Err(error) = remembered.store(state.ports_of(&bridge.name))
        {
            tracing::error!(%error, "cannot store the provisioning bridge's ports");
        }
        // Ports routed since they were seen in the bridge stay routed.
        let routed = state.routed_ports();
        let ports: BTreeSet<String> = remembered
            .all()
            .into_iter()
            .filter(|p| !routed.contains(p))
            .collect();
        match kernel::repair_provisioning_bridge(handle, bridge, &ports, state).await {
            Ok(repair) if repair.is_empty() => false,
            Ok(repair) => {
                tracing::warn!(
                    bridge = %bridge.name,
                    created = repair.created,
                    address = repair.address,
                    ports = ?repair.ports,
                    "the provisioning bridge was changed by hand; put back"
                );
                true
            }
            Err(error) => {
                tracing::error!(%error, "provisioning bridge not repaired; retrying");
                false
            }
        }
    }

    async fn pass(&self, handle: &rtnetlink::Handle) -> Result<Applied, rtnetlink::Error> {
        let started = Instant::now();
        let (mut state, mut want, mut plan, mut rejected) = self.compute(handle).await?;
        if self.keep_provisioning_bridge(handle, &state).await {
            (state, want, plan, rejected) = self.compute(handle).await?;
        }
        let wanted_ports = routed_ports(&want);
        if let Some(owned) = &self.owned_ports {
            // Before routing a port: own it (a crash now leaves a port
            // owned that is not routed yet, which the next pass settles).
            let mut before = owned.all();
            before.extend(wanted_ports.iter().cloned());
            if let Err(error) = owned.store(before) {
                tracing::error!(%error, "dataplane: cannot store the routed ports it owns; not applying");
                return Ok(Applied { state, want });
            }
        }
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
        if let Some(owned) = &self.owned_ports {
            // Released ports stay owned until their removal succeeded.
            let mut after = wanted_ports;
            after.extend(
                failures
                    .iter()
                    .filter_map(|f| match &f.object {
                        Object::RoutedPort { port, .. } => Some(port.clone()),
                        Object::Address { dev, .. } => Some(dev.clone()),
                        _ => None,
                    })
                    .filter(|port| owned.contains(port)),
            );
            if let Err(error) = owned.store(after) {
                tracing::error!(%error, "dataplane: cannot store the routed ports it owns");
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owned_ports_are_kept_across_restarts_and_a_damaged_file_stops_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let owned = OwnedPorts::load(dir.path()).unwrap();
        assert!(!owned.contains("swp1"));
        owned
            .store(["swp1".to_string(), "swp2".to_string()].into())
            .unwrap();
        let again = OwnedPorts::load(dir.path()).unwrap();
        assert!(again.contains("swp1") && again.contains("swp2") && !again.contains("swp3"));
        std::fs::write(dir.path().join("dataplane-owned-ports.json"), b"{oops").unwrap();
        let error = OwnedPorts::load(dir.path()).unwrap_err().to_string();
        assert!(error.contains("unreadable"), "{error}");
    }
}
