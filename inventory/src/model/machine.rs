//! A machine as its rack's agent records it (kind `machine`, key
//! `<switch>/<uuid>`), and the pieces every reader shares: the hardware the
//! installer reports, the lifecycle events operators know from metal-stack,
//! and the allocation as the leaf executed it. The agent stores this with
//! its lifecycle's private state beside it; every other node (and the API)
//! reads it as this type.

use serde::{Deserialize, Serialize};
use std::net::Ipv4Addr;

/// The machine as the installer found it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hardware {
    /// SMBIOS system UUID, lower case.
    pub uuid: String,
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub product: String,
    #[serde(default)]
    pub serial: String,
    pub cpus: u32,
    pub memory_bytes: u64,
    pub disks: Vec<Disk>,
    pub nics: Vec<Nic>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Disk {
    /// Kernel name (`vda`, `nvme0n1`) or, simulated, the file path.
    pub name: String,
    pub size_bytes: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub serial: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nic {
    pub name: String,
    pub mac: String,
    pub up: bool,
}

/// Provisioning events, named as metal-stack names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "PXE Booting")]
    PxeBooting,
    #[serde(rename = "Planned Reboot")]
    PlannedReboot,
    Preparing,
    Registering,
    Waiting,
    Installing,
    #[serde(rename = "Booting New Kernel")]
    BootingNewKernel,
    #[serde(rename = "Phoned Home")]
    PhonedHome,
    Crashed,
    #[serde(rename = "Machine Reclaim")]
    MachineReclaim,
    Alive,
}

impl EventKind {
    /// The name operators know (`Booting New Kernel`).
    pub fn name(self) -> &'static str {
        match self {
            EventKind::PxeBooting => "PXE Booting",
            EventKind::PlannedReboot => "Planned Reboot",
            EventKind::Preparing => "Preparing",
            EventKind::Registering => "Registering",
            EventKind::Waiting => "Waiting",
            EventKind::Installing => "Installing",
            EventKind::BootingNewKernel => "Booting New Kernel",
            EventKind::PhonedHome => "Phoned Home",
            EventKind::Crashed => "Crashed",
            EventKind::MachineReclaim => "Machine Reclaim",
            EventKind::Alive => "Alive",
        }
    }

    /// Parses an event name as [`EventKind::name`] writes it.
    pub fn parse(name: &str) -> Option<EventKind> {
        serde_json::from_value(serde_json::Value::String(name.to_string())).ok()
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveliness {
    Alive,
    Dead,
    Unknown,
}

/// What an allocation asks of a machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocateRequest {
    /// The project the machine is allocated to (set by the API node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub image: String,
    pub ip: Ipv4Addr,
    pub hostname: String,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub user_data: String,
    /// The tenant VRF; default: the one whose prefixes contain `ip`.
    #[serde(default)]
    pub vrf: Option<String>,
    /// The user's labels (placement spreads machines sharing one).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tags: Vec<String>,
}

/// An allocation as the machine's leaf executed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecutedAllocation {
    pub request: AllocateRequest,
    pub vrf: String,
    pub port: String,
    /// Where the installer downloads the image, and its checksum.
    pub image_url: String,
    pub image_sha256: String,
    /// The port is in the tenant VRF (from `Booting New Kernel` until the
    /// reclaimed machine leaves).
    pub routed: bool,
    /// SHA-256 (hex) of the request's SSH keys and user data, which only
    /// the owning leaf keeps: in the mesh they are empty and this says what
    /// they were (see `docs/design/inventory.md`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secrets_sha256: Option<String>,
}

/// A machine as its rack's agent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    pub uuid: String,
    pub switch: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<String>,
    /// The newest lifecycle event's name (`Waiting`, `Phoned Home`, …).
    pub state: String,
    pub liveliness: String,
    #[serde(default)]
    pub hardware: Option<Hardware>,
    /// The newest events, newest first.
    #[serde(default)]
    pub events: Vec<Event>,
    #[serde(default)]
    pub allocation: Option<ExecutedAllocation>,
    /// Registered from MACs not seen on any port of its leaf (LLDP or DHCP).
    #[serde(default)]
    pub unknown_mac: bool,
    #[serde(default)]
    pub crash_loop: bool,
    #[serde(default)]
    pub failed_machine_reclaim: bool,
    /// An installation or reclaim made no progress through every retry the
    /// watchdog allows: an operator must look.
    #[serde(default)]
    pub install_stalled: bool,
    /// Freed and not yet rebooted: its routed port stays until it does.
    #[serde(default)]
    pub reclaiming: Option<ExecutedAllocation>,
    /// A planned reboot is due at the machine's next call.
    #[serde(default)]
    pub reboot_due: bool,
    /// Its UUID is announced over LLDP on more than one port: it cannot be
    /// allocated until only one port does.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub duplicate_uuid: bool,
}

impl Machine {
    /// The flags that keep a machine from allocation, each with whether it
    /// is set.
    pub fn flag_states(&self) -> [(&'static str, bool); 4] {
        [
            ("crash_loop", self.crash_loop),
            ("failed_reclaim", self.failed_machine_reclaim),
            ("install_stalled", self.install_stalled),
            ("duplicate_uuid", self.duplicate_uuid),
        ]
    }

    /// The flags set on this machine.
    pub fn flags(&self) -> Vec<&'static str> {
        self.flag_states()
            .into_iter()
            .filter(|(_, set)| *set)
            .map(|(name, _)| name)
            .collect()
    }

    /// The addresses this machine holds: its allocation's, and the one
    /// it is being reclaimed from.
    pub fn held_ips(&self) -> impl Iterator<Item = Ipv4Addr> + '_ {
        [&self.allocation, &self.reclaiming]
            .into_iter()
            .flatten()
            .map(|executed| executed.request.ip)
    }

    pub fn new(uuid: &str, switch: &str) -> Machine {
        Machine {
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
            install_stalled: false,
            reclaiming: None,
            reboot_due: false,
            duplicate_uuid: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_names_round_trip_as_operators_write_them() {
        for kind in [
            EventKind::PxeBooting,
            EventKind::PlannedReboot,
            EventKind::BootingNewKernel,
            EventKind::PhonedHome,
            EventKind::MachineReclaim,
            EventKind::Waiting,
        ] {
            assert_eq!(EventKind::parse(kind.name()), Some(kind));
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.name().into())
            );
        }
        assert_eq!(EventKind::parse("Booting new kernel"), None);
    }
}
