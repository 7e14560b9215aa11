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
    /// Which machine (MAC, leased address) each provisioning port is bound to.
    PortBindings,
    /// Forget a port's binding (the operator moved or replaced the machine).
    PortUnbind {
        port: String,
    },
    /// Replace the tenant intents (rack-local operation; the mesh does this later).
    DataplaneApply {
        intents: crate::dataplane::Intents,
    },
    /// What the reconciler would change now.
    DataplaneDiff,
    /// Routes the agent owns, optionally of one VRF.
    Routes {
        vrf: Option<String>,
    },
    /// Machines cabled to this leaf.
    Machines,
    /// One machine, with its events.
    MachineDescribe {
        uuid: String,
    },
    /// Allocate a waiting machine (rack-local; the API node later asks over the mesh).
    MachineAllocate {
        uuid: String,
        allocation: metalmesh_inventory::model::AllocateRequest,
    },
    /// Free an allocated machine: it is reclaimed and returns to Waiting.
    MachineFree {
        uuid: String,
    },
    /// Members of the inventory mesh as this node sees them.
    MeshMembers,
    /// Records of the local replica, optionally of one kind.
    MeshRecords {
        kind: Option<String>,
    },
    /// Take in a revocation signed by the mesh CA (`metalmesh ca revoke`)
    /// and spread it through the mesh.
    MeshRevoke {
        record: metalmesh_inventory::Record,
    },
    /// BGP sessions.
    BgpNeighbors,
    /// BGP routes, optionally of one family (`ipv4`, `ipv6`, `evpn`) or of
    /// one tenant VRF (its EVPN routes).
    BgpRoutes {
        family: Option<String>,
        vrf: Option<String>,
    },
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "response", content = "body", rename_all = "snake_case")]
pub enum Response {
    Status(Box<AgentStatus>),
    LldpNeighbors(LldpSnapshot),
    Ports(Vec<Port>),
    Leases(Vec<metalmesh_provisioning::dhcp::Lease>),
    PortBindings(std::collections::BTreeMap<String, crate::policy::bindings::Binding>),
    PortUnbound {
        was_bound: bool,
    },
    DataplaneApplied {
        rejected: Vec<crate::dataplane::intent::Rejection>,
    },
    DataplaneDiff {
        plan: crate::dataplane::Plan,
        rejected: Vec<crate::dataplane::intent::Rejection>,
    },
    Routes(Vec<RouteView>),
    Machines(Vec<crate::machines::record::MachineRecord>),
    Machine(Box<crate::machines::record::MachineRecord>),
    MeshMembers {
        node: String,
        members: Vec<metalmesh_inventory::mesh::service::MemberInfo>,
        #[serde(default)]
        health: metalmesh_inventory::mesh::service::MeshHealth,
    },
    MeshRecords {
        records: Vec<metalmesh_inventory::Record>,
        /// Origins revoked: their records stay readable, marked.
        revoked: Vec<String>,
    },
    MeshRevoked {
        node: String,
        /// False when this node held the revocation already.
        new: bool,
    },
    BgpNeighbors {
        asn: u32,
        router_id: std::net::Ipv4Addr,
        peers: Vec<metalmesh_bgp::speaker::PeerView>,
    },
    BgpRoutes(Vec<metalmesh_bgp::driver::RouteView>),
    Error {
        message: String,
    },
}

/// A tenant route as `metalmesh-agent routes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteView {
    pub vrf: Option<String>,
    pub table: u32,
    pub destination: String,
    pub next_hop: crate::dataplane::desired::NextHop,
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
    /// The dataplane reconciler's last pass.
    pub dataplane: crate::dataplane::reconcile::PassReport,
    /// DHCP counters, when boot services run.
    pub dhcp_counters: Option<metalmesh_provisioning::dhcp::DhcpCounters>,
    pub subsystems: BTreeMap<String, SubsystemHealth>,
    /// The FRR backend's last pass (`[bgp] backend = "frr"`).
    #[serde(default)]
    pub frr: Option<crate::bgp::frr::FrrStatus>,
}
