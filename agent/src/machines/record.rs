//! A machine as its rack's agent keeps it: stored (and gossiped) as the
//! `machine` record keyed `<switch>/<uuid>`. The fields of the mesh's
//! `metalmesh_inventory::model::Machine` come first, so other nodes read the
//! summary; the lifecycle's full state follows so a restarted agent resumes
//! exactly.

use metalmesh_provisioning::installer::api::{Allocation, Hardware};
use metalmesh_provisioning::lifecycle::{Event, Lifecycle, Thresholds};
use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// Events in a machine record's summary.
pub const SUMMARY_EVENTS: usize = 20;

/// What `machine allocate` asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateRequest {
    pub image: String,
    pub ip: Ipv4Addr,
    pub hostname: String,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub user_data: String,
    /// The tenant VRF (from the dataplane intents); default: the one whose
    /// prefixes contain `ip`.
    #[serde(default)]
    pub vrf: Option<String>,
}

/// An allocation as executed on this leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Executed {
    pub request: AllocateRequest,
    pub vrf: String,
    pub port: String,
    /// Where the installer downloads the image, and its checksum.
    pub image_url: String,
    pub image_sha256: String,
    /// The port is in the tenant VRF (from `Booting New Kernel` until the
    /// reclaimed machine leaves).
    pub routed: bool,
}

impl Executed {
    /// What the installer is told to install.
    pub fn installer(&self) -> Allocation {
        Allocation {
            image: self.request.image.clone(),
            image_url: self.image_url.clone(),
            image_sha256: self.image_sha256.clone(),
            hostname: self.request.hostname.clone(),
            ip: self.request.ip.to_string(),
            ssh_keys: self.request.ssh_keys.clone(),
            user_data: self.request.user_data.clone(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    pub uuid: String,
    pub switch: String,
    pub port: Option<String>,
    /// The newest lifecycle event's name (`Waiting`, `Phoned Home`, …).
    pub state: String,
    pub liveliness: String,
    pub hardware: Option<Hardware>,
    pub events: Vec<Event>,
    pub allocation: Option<Executed>,
    /// Registered from MACs not seen on any port of this leaf (LLDP or DHCP).
    pub unknown_mac: bool,
    pub crash_loop: bool,
    pub failed_machine_reclaim: bool,
    /// Freed and not yet rebooted: its routed port stays until it does.
    pub reclaiming: Option<Executed>,
    /// A planned reboot is due at the next heartbeat.
    pub reboot_due: bool,
    pub lifecycle: Lifecycle,
}

impl MachineRecord {
    pub fn new(uuid: &str, switch: &str) -> MachineRecord {
        MachineRecord {
            uuid: uuid.to_string(),
            switch: switch.to_string(),
            port: None,
            state: String::new(),
            liveliness: "Unknown".into(),
            hardware: None,
            events: Vec::new(),
            allocation: None,
            unknown_mac: false,
            crash_loop: false,
            failed_machine_reclaim: false,
            reclaiming: None,
            reboot_due: false,
            lifecycle: Lifecycle::default(),
        }
    }

    /// Refreshes the summary fields from the lifecycle.
    pub fn refresh(&mut self, now: u64, thresholds: &Thresholds) {
        self.state = self
            .lifecycle
            .state()
            .map(|kind| event_name(kind).to_string())
            .unwrap_or_default();
        self.liveliness = format!("{:?}", self.lifecycle.liveliness(now, thresholds));
        // The summary carries the newest events; the lifecycle keeps the history.
        self.events = self
            .lifecycle
            .events
            .iter()
            .take(SUMMARY_EVENTS)
            .cloned()
            .collect();
        self.crash_loop = self.lifecycle.crash_loop;
        self.failed_machine_reclaim = self.lifecycle.failed_machine_reclaim;
    }
}

/// The event's name as operators know it.
pub fn event_name(kind: metalmesh_provisioning::lifecycle::EventKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| format!("{kind:?}"))
}

/// Parses an event name (`Booting New Kernel`).
pub fn parse_event(name: &str) -> Option<metalmesh_provisioning::lifecycle::EventKind> {
    serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
}
