//! `[bgp] backend = "frr"`: where FRR owns BGP (SONiC, Cumulus Linux), the
//! agent computes what its native speaker would announce — unnumbered
//! fabric sessions, its loopback, an L3VNI per tenant VRF, a `network` per
//! machine address routed here — and writes it into FRR's running
//! configuration through `vtysh`, line by line ([`diff`]): never a reload,
//! never a rewrite, so adding a machine or a VRF resets no session. FRR's
//! zebra then installs what BGP learns (underlay routes, tenant type-5
//! routes into the VRF devices); the agent's dataplane leaves its routes,
//! neighbours and FDB entries alone.
//!
//! The task re-reads FRR's configuration after every change and every
//! [`RESYNC`], so lines removed by hand come back; a refused command or an
//! FRR that is not running shows in `status` and is retried.

pub mod diff;
pub mod intent;
pub mod running;
pub mod vtysh;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use self::intent::{FrrIntent, Tenant};
use self::vtysh::{FrrError, Vtysh};
use super::BgpSettings;
use crate::dataplane::Intents;
use crate::switch::Port;

/// How often FRR's running configuration is compared with the intent
/// when nothing changed (lines removed by hand come back within this).
pub const RESYNC: Duration = Duration::from_secs(10);
/// Longest wait between retries after FRR failed.
const MAX_RETRY: Duration = Duration::from_secs(30);

/// What `status` shows of the FRR backend.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct FrrStatus {
    /// FRR's configuration matched the intent at the last pass.
    pub in_sync: bool,
    /// Passes that changed FRR, and the lines they changed in total.
    pub applies: u64,
    pub edits: u64,
    /// The edits of the last pass that changed something.
    pub last_edits: Vec<String>,
    /// Why the last pass failed (cleared by a pass that succeeds).
    pub last_error: Option<String>,
    /// Passes failed in a row.
    pub failures: u64,
}

/// The backend as the admin API reaches it.
#[derive(Debug, Clone)]
pub struct FrrHandle {
    pub vtysh: Vtysh,
    pub status: Arc<Mutex<FrrStatus>>,
}

#[derive(Debug, Clone)]
pub struct FrrTask {
    pub settings: BgpSettings,
    pub vtysh: Vtysh,
    pub ports: watch::Receiver<Option<Vec<Port>>>,
    pub intents: watch::Receiver<Intents>,
    pub status: Arc<Mutex<FrrStatus>>,
}

impl FrrTask {
    fn intent(&self) -> FrrIntent {
        let fabric_ports = self.settings.fabric_ports(&self.ports);
        FrrIntent {
            asn: self.settings.asn,
            router_id: self.settings.router_id,
            fabric_ports,
            hold_time_secs: u32::try_from(self.settings.hold_time.as_secs()).unwrap_or(u32::MAX),
            tenants: Tenant::from_intents(&self.intents.borrow()),
        }
    }

    /// One pass: read, compare, apply what differs, read again to check.
    async fn pass(&self) -> Result<Vec<diff::Edit>, FrrError> {
        let intent = self.intent();
        let profile = self.vtysh.bgpd_profile().await?;
        let running = self.vtysh.running_config().await?;
        let desired = intent.desired(profile.as_deref());
        let edits = diff::edits(&intent, &desired, &running);
        if edits.is_empty() {
            return Ok(edits);
        }
        for edit in &edits {
            tracing::info!(%edit, "FRR configuration");
        }
        // One vtysh call per top-level context: a context FRR refuses to
        // enter stops there, and the error names it.
        for group in edits.chunk_by(|a, b| a.path.first() == b.path.first()) {
            let context = group[0]
                .path
                .first()
                .cloned()
                .unwrap_or_else(|| group[0].line.clone());
            self.vtysh
                .configure(&diff::commands(group))
                .await
                .map_err(|error| match error {
                    FrrError::Refused { message, .. } => FrrError::Refused {
                        command: context.clone(),
                        message,
                    },
                    FrrError::Failed { output, .. } => FrrError::Refused {
                        command: context.clone(),
                        message: output,
                    },
                    other => other,
                })?;
        }
        let after = self.vtysh.running_config().await?;
        let left = diff::edits(&intent, &desired, &after);
        if let Some(edit) = left.first() {
            return Err(FrrError::Unexpected {
                command: "show running-config".into(),
                reason: format!("{} edit(s) did not take, first: {edit}", left.len()),
            });
        }
        Ok(edits)
    }

    fn record(&self, result: &Result<Vec<diff::Edit>, FrrError>) {
        let Ok(mut status) = self.status.lock() else {
            return;
        };
        match result {
            Ok(edits) => {
                status.in_sync = true;
                status.last_error = None;
                status.failures = 0;
                if !edits.is_empty() {
                    status.applies += 1;
                    status.edits += edits.len() as u64;
                    status.last_edits = edits.iter().map(|e| e.to_string()).collect();
                }
            }
            Err(error) => {
                status.in_sync = false;
                status.failures += 1;
                status.last_error = Some(error.to_string());
            }
        }
    }

    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        tracing::info!(vtysh = %self.vtysh.program.display(), "BGP through FRR");
        let mut retry = Duration::from_secs(1);
        loop {
            let result = self.pass().await;
            let wait = match &result {
                Ok(_) => {
                    retry = Duration::from_secs(1);
                    RESYNC
                }
                Err(error) => {
                    tracing::warn!(%error, retry_in = ?retry, "FRR backend");
                    let wait = retry;
                    retry = (retry * 2).min(MAX_RETRY);
                    wait
                }
            };
            self.record(&result);
            tokio::select! {
                () = cancel.cancelled() => return Ok(()),
                () = tokio::time::sleep(wait) => {}
                changed = self.intents.changed() => changed?,
                changed = self.ports.changed() => changed?,
            }
            // A burst of changes (a rack of machines allocated) is one pass.
            tokio::time::sleep(Duration::from_millis(50)).await;
            self.intents.mark_unchanged();
            self.ports.mark_unchanged();
        }
    }
}
