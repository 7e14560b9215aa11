//! A machine as its rack's agent stores it: the mesh's
//! [`metalmesh_inventory::model::Machine`] (what every node and the API
//! read) with the lifecycle's own state beside it, so a restarted agent
//! resumes exactly. One JSON object: the model's fields, then `lifecycle`.

use metalmesh_installer::api::Allocation;
use metalmesh_inventory::model::{ExecutedAllocation, Machine};
use serde::{Deserialize, Serialize};

use super::lifecycle::{Lifecycle, Thresholds};

/// Events in a machine record's summary.
pub const SUMMARY_EVENTS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    #[serde(flatten)]
    pub machine: Machine,
    pub lifecycle: Lifecycle,
}

impl MachineRecord {
    pub fn new(uuid: &str, switch: &str) -> MachineRecord {
        MachineRecord {
            machine: Machine::new(uuid, switch),
            lifecycle: Lifecycle::default(),
        }
    }

    /// Refreshes the summary fields from the lifecycle.
    pub fn refresh(&mut self, now: u64, thresholds: &Thresholds) {
        let machine = &mut self.machine;
        machine.state = self
            .lifecycle
            .state()
            .map(|kind| kind.name().to_string())
            .unwrap_or_default();
        machine.liveliness = format!("{:?}", self.lifecycle.liveliness(now, thresholds));
        // The summary carries the newest events; the lifecycle keeps the history.
        machine.events = self
            .lifecycle
            .events
            .iter()
            .take(SUMMARY_EVENTS)
            .cloned()
            .collect();
        machine.crash_loop = self.lifecycle.crash_loop;
        machine.failed_machine_reclaim = self.lifecycle.failed_machine_reclaim;
        machine.install_stalled = self.lifecycle.install_stalled;
    }
}

/// What the installer is told to install.
pub fn installer_allocation(executed: &ExecutedAllocation) -> Allocation {
    Allocation {
        image: executed.request.image.clone(),
        image_url: executed.image_url.clone(),
        image_sha256: executed.image_sha256.clone(),
        hostname: executed.request.hostname.clone(),
        ip: executed.request.ip.to_string(),
        ssh_keys: executed.request.ssh_keys.clone(),
        user_data: executed.request.user_data.clone(),
    }
}
