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
}

/// An IP address allocated from a network (API-owned; key = address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ip {
    pub address: String,
    pub network: String,
    pub project: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<String>,
}

/// An OS image machines can be installed with (API-owned; key = image id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Image {
    pub id: String,
    pub url: String,
    pub sha256: String,
}

/// A machine size (API-owned; key = size id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Size {
    pub id: String,
    pub min_cpus: u32,
    pub min_memory_bytes: u64,
    pub min_disk_bytes: u64,
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
