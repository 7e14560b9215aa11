//! Typed values of the records. They travel as JSON inside
//! [`crate::Record::value`]; fields added later are optional so older nodes
//! keep reading newer records.

use serde::{Deserialize, Serialize};

mod machine;
pub use machine::{
    AllocateRequest, Disk, Event, EventKind, ExecutedAllocation, Hardware, Liveliness, Machine, Nic,
};

/// A leaf switch (written by its agent; key = switch name).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Switch {
    pub name: String,
    pub partition: String,
    pub rack: String,
    pub loopback: String,
    pub asn: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chassis_mac: Option<String>,
    /// Address the switch's mesh endpoint listens on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mesh_address: Option<String>,
    /// Its BGP sessions as its own speaker last saw them (none where FRR
    /// speaks BGP for it).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bgp_sessions: Vec<BgpSession>,
}

/// One BGP session of a switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BgpSession {
    /// The interface (unnumbered) or address of the peer.
    pub peer: String,
    /// `Established`, `Active`, `Connect`, …
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote_as: Option<u32>,
    /// Paths held from the peer, all families.
    #[serde(default)]
    pub received: u64,
}

/// A switch port and what LLDP sees on it (key = `<switch>/<port>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub switch: String,
    pub name: String,
    pub mac: Option<String>,
    pub up: bool,
    pub mtu: u32,
    #[serde(default)]
    pub neighbors: Vec<Neighbor>,
}

/// One LLDP neighbour of a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbor {
    pub chassis_id: String,
    pub port_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_name: Option<String>,
}

/// A DHCP lease of a rack (key = `<switch>/<mac>`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub switch: String,
    pub mac: String,
    pub ip: String,
    pub state: String,
    pub expires: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// A tenant project (API-owned; key = project id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Project {
    pub id: String,
    pub name: String,
    #[serde(default)]
    pub description: String,
}

/// A tenant or underlay network (API-owned; key = network id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    /// What its project calls it.
    #[serde(default)]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    pub prefixes: Vec<String>,
    pub vni: u32,
    pub vrf: u32,
    /// Admin-defined and open to every project (its `project` is empty).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared: bool,
    /// Admin-defined, leading out of the data center (internet, storage).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub external: bool,
}

/// An IP address allocated from a network (API-owned; key = address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    pub address: String,
    pub network: String,
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
    /// Acquired on its own (kept when its machine is freed); otherwise it
    /// came with an allocation and goes with it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub acquired: bool,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

/// An OS image machines can be installed with (API-owned; key = image id):
/// leaves download it from `url` on first use and keep it by checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    pub url: String,
    pub sha256: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub description: String,
}

/// Whether `name` may name an image: it is also a file name on the leaves
/// (rack-local images), so no paths.
pub fn valid_image_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// A machine size (API-owned; key = size id): the hardware a machine of
/// this size has, each bound inclusive.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    pub id: String,
    pub min_cpus: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cpus: Option<u32>,
    pub min_memory_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_memory_bytes: Option<u64>,
    /// The sum of the machine's disks.
    pub min_disk_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_disk_bytes: Option<u64>,
}

impl Size {
    /// Whether hardware fits this size.
    pub fn fits(&self, hardware: &Hardware) -> bool {
        // Reported by the installer: never trusted not to overflow.
        let disk = hardware
            .disks
            .iter()
            .fold(0u64, |sum, d| sum.saturating_add(d.size_bytes));
        let within = |value: u64, min: u64, max: Option<u64>| {
            value >= min && max.is_none_or(|max| value <= max)
        };
        within(
            u64::from(hardware.cpus),
            u64::from(self.min_cpus),
            self.max_cpus.map(u64::from),
        ) && within(
            hardware.memory_bytes,
            self.min_memory_bytes,
            self.max_memory_bytes,
        ) && within(disk, self.min_disk_bytes, self.max_disk_bytes)
    }
}

/// An admin's hold on a machine (API-owned; key = machine UUID): a locked
/// machine is neither allocated nor freed; a reserved one goes only to its
/// project.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub machine: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub locked: bool,
    #[serde(default)]
    pub reason: String,
}

/// A partition: one mesh, one failure domain (API-owned; key = partition id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    pub id: String,
    #[serde(default)]
    pub description: String,
}

/// The API's decision that a machine should run an image in a project
/// (API-owned; key = machine UUID). The owning agent executes it and records
/// the outcome in its machine record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationIntent {
    pub machine: String,
    pub project: String,
    pub image: String,
    pub hostname: String,
    pub ips: Vec<String>,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
}
