//! Requests and responses of the admin API.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::lldp::LldpSnapshot;
use crate::supervisor::SubsystemHealth;
use crate::switch::{Port, SwitchRecord};

/// Longest request line the server reads; longer ones are refused.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case")]
pub enum Request {
    Status,
    LldpNeighbors,
    Ports,
    Leases,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", content = "body", rename_all = "snake_case")]
pub enum Response {
    Status(Box<AgentStatus>),
    LldpNeighbors(LldpSnapshot),
    Ports(Vec<Port>),
    Leases(Vec<metalmesh_provisioning::dhcp::Lease>),
    Error { message: String },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AgentStatus {
    pub version: String,
    /// VRF devices, or routing tables and rules where the kernel has none.
    pub kernel_mode: crate::dataplane::KernelMode,
    pub pid: u32,
    pub uptime_secs: u64,
    pub config: String,
    pub state_dir: String,
    pub switch: Option<SwitchRecord>,
    /// Port patterns LLDP runs on.
    pub lldp_port_patterns: Vec<String>,
    pub lldp_ports: Vec<String>,
    pub lldp_neighbors: usize,
    pub lldp_counters: crate::lldp::Counters,
    /// DHCP counters, when boot services run.
    pub dhcp_counters: Option<metalmesh_provisioning::dhcp::DhcpCounters>,
    pub subsystems: BTreeMap<String, SubsystemHealth>,
}
