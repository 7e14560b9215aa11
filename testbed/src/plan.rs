//! Turns a [`Topology`] into the concrete data center: node names, namespaces,
//! addresses, ASNs, links and machines. Pure: no I/O, so every address and
//! name is unit-tested and stable across runs.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::topology::{LeafBgp, Topology};

/// Prefix of every network namespace the testbed creates.
pub(crate) const NAMESPACE_PREFIX: &str = "mm-";
/// Namespaces `scripts/bench` creates and removes itself while it runs:
/// never the testbed's to clean up (a test must not pull a running
/// benchmark's network away).
pub(crate) const BENCH_NAMESPACE_PREFIX: &str = "mm-bench-";
/// Name of each leaf's provisioning bridge.
pub(crate) const PROVISIONING_BRIDGE: &str = "mm-pxe";
/// ASN shared by all spines (private 4-byte range, docs/network.md).
pub(crate) const SPINE_ASN: u32 = 4_210_000_000;
/// ASN shared by all exit routers.
pub(crate) const EXIT_ASN: u32 = 4_220_000_000;
/// Leaf `n` uses `LEAF_ASN_BASE + n`.
pub(crate) const LEAF_ASN_BASE: u32 = 4_200_000_000;

/// What a node is in the fabric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Spine,
    Leaf,
    Exit,
    Api,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Spine => "spine",
            Role::Leaf => "leaf",
            Role::Exit => "exit",
            Role::Api => "api",
        })
    }
}

/// One switch or server of the fabric, living in its own namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub role: Role,
    /// Loopback /32: router ID, and for leaves the VTEP address.
    pub loopback: Ipv4Addr,
    /// BGP ASN, for nodes that speak BGP.
    pub asn: Option<u32>,
    /// Rack number, for leaves.
    pub rack: Option<u32>,
    /// BGP implementation, for leaves.
    pub leaf_bgp: Option<LeafBgp>,
    /// Interfaces on which BGP unnumbered sessions run.
    pub bgp_interfaces: Vec<String>,
    /// Provisioning bridge address (leaves only), with prefix length.
    pub provisioning: Option<(Ipv4Addr, u8)>,
}

impl Node {
    pub fn namespace(&self) -> String {
        namespace_of(&self.name)
    }

    pub fn runs_frr(&self) -> bool {
        match self.role {
            Role::Spine | Role::Exit => true,
            Role::Leaf => self.leaf_bgp == Some(LeafBgp::Frr),
            Role::Api => false,
        }
    }
}

/// Namespace of a node or machine name.
pub(crate) fn namespace_of(name: &str) -> String {
    format!("{NAMESPACE_PREFIX}{name}")
}

/// A veth pair between two nodes; each end is named after the node it faces.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Link {
    pub a: String,
    pub a_interface: String,
    pub b: String,
    pub b_interface: String,
    pub mtu: u32,
    /// Numbered addresses (`a`, `b`, prefix length) for the few links that are not unnumbered.
    pub addresses: Option<(Ipv4Addr, Ipv4Addr, u8)>,
}

/// How a machine exists.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MachineKind {
    /// A namespace with a veth to the leaf: cheap, for scale.
    Netns,
    /// A qemu virtual machine with real PXE firmware.
    Vm,
}

impl std::fmt::Display for MachineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MachineKind::Netns => "netns",
            MachineKind::Vm => "vm",
        })
    }
}

/// A server cabled to a leaf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    /// `m<rack>-<index>`.
    pub name: String,
    pub rack: u32,
    pub index: u32,
    pub kind: MachineKind,
    pub mac: String,
    /// SMBIOS system UUID the machine reports.
    pub uuid: String,
    /// The leaf it is cabled to.
    pub leaf: String,
    /// Name of its switch port on the leaf (a veth end or a tap device).
    pub switch_port: String,
}

/// The whole data center.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub topology: Topology,
    pub nodes: Vec<Node>,
    pub links: Vec<Link>,
    pub machines: Vec<Machine>,
}

/// Address of the exit router on its link to the API node.
pub(crate) const EXIT_API_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 1);
/// Address of the API node (on its link to the exit router).
pub(crate) const API_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 254, 0, 2);
/// The host's own link to the API node (root namespace side, its address,
/// and the API side's address): the host reaches `API_ADDRESS` through it.
pub(crate) const HOST_LINK: &str = "mm-api-host";
pub(crate) const HOST_SIDE: Ipv4Addr = Ipv4Addr::new(10, 254, 1, 1);
pub(crate) const API_SIDE: Ipv4Addr = Ipv4Addr::new(10, 254, 1, 2);

impl Plan {
    pub fn new(topology: &Topology) -> Plan {
        let mut nodes = Vec::new();
        let mut links = Vec::new();
        let mut machines = Vec::new();
        let spine_names: Vec<String> = (1..=topology.spines).map(|s| format!("spine{s}")).collect();
        let leaf_names: Vec<String> = (1..=topology.racks).map(|r| format!("leaf{r}")).collect();

        for (i, name) in spine_names.iter().enumerate() {
            let mut bgp_interfaces = leaf_names.clone();
            bgp_interfaces.push("exit".into());
            nodes.push(Node {
                name: name.clone(),
                role: Role::Spine,
                loopback: Ipv4Addr::new(10, 255, 1, (i + 1) as u8),
                asn: Some(SPINE_ASN),
                rack: None,
                leaf_bgp: None,
                bgp_interfaces,
                provisioning: None,
            });
        }
        for (i, name) in leaf_names.iter().enumerate() {
            let rack = (i + 1) as u32;
            nodes.push(Node {
                name: name.clone(),
                role: Role::Leaf,
                loopback: Ipv4Addr::new(10, 255, 0, rack as u8),
                asn: Some(LEAF_ASN_BASE + rack),
                rack: Some(rack),
                leaf_bgp: Some(topology.leaf_bgp[i]),
                bgp_interfaces: spine_names.clone(),
                provisioning: Some((Ipv4Addr::new(10, 100, rack as u8, 1), 24)),
            });
            for spine in &spine_names {
                links.push(Link {
                    a: name.clone(),
                    a_interface: spine.clone(),
                    b: spine.clone(),
                    b_interface: name.clone(),
                    mtu: topology.fabric_mtu,
                    addresses: None,
                });
            }
            let vms = topology
                .leaf_vm_machines
                .get(i)
                .copied()
                .unwrap_or(topology.vm_machines);
            let total = topology.machines_per_rack + vms;
            for index in 1..=total {
                let kind = if index <= topology.machines_per_rack {
                    MachineKind::Netns
                } else {
                    MachineKind::Vm
                };
                let machine = format!("m{rack}-{index}");
                machines.push(Machine {
                    name: machine.clone(),
                    rack,
                    index,
                    kind,
                    mac: format!("52:54:00:6d:{rack:02x}:{index:02x}"),
                    uuid: format!("6d6d0000-0000-4000-8000-{rack:06x}{index:06x}"),
                    leaf: name.clone(),
                    switch_port: machine,
                });
            }
        }
        nodes.push(Node {
            name: "exit".into(),
            role: Role::Exit,
            loopback: Ipv4Addr::new(10, 255, 2, 1),
            asn: Some(EXIT_ASN),
            rack: None,
            leaf_bgp: None,
            bgp_interfaces: spine_names.clone(),
            provisioning: None,
        });
        for spine in &spine_names {
            links.push(Link {
                a: "exit".into(),
                a_interface: spine.clone(),
                b: spine.clone(),
                b_interface: "exit".into(),
                mtu: topology.fabric_mtu,
                addresses: None,
            });
        }
        nodes.push(Node {
            name: "api".into(),
            role: Role::Api,
            loopback: API_ADDRESS,
            asn: None,
            rack: None,
            leaf_bgp: None,
            bgp_interfaces: Vec::new(),
            provisioning: None,
        });
        links.push(Link {
            a: "exit".into(),
            a_interface: "api".into(),
            b: "api".into(),
            b_interface: "exit".into(),
            mtu: 1500,
            addresses: Some((EXIT_API_ADDRESS, API_ADDRESS, 30)),
        });
        Plan {
            topology: topology.clone(),
            nodes,
            links,
            machines,
        }
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn machine(&self, name: &str) -> Option<&Machine> {
        self.machines.iter().find(|m| m.name == name)
    }

    /// Every namespace of the plan: nodes, then namespace machines.
    pub fn namespaces(&self) -> Vec<String> {
        self.nodes
            .iter()
            .map(Node::namespace)
            .chain(
                self.machines
                    .iter()
                    .filter(|m| m.kind == MachineKind::Netns)
                    .map(|m| namespace_of(&m.name)),
            )
            .collect()
    }

    /// Leaf–spine and exit–spine sessions the fabric must establish, as
    /// (spine, interface) pairs seen from the spines.
    pub fn expected_spine_sessions(&self) -> Vec<(String, String)> {
        self.nodes
            .iter()
            .filter(|n| n.role == Role::Spine)
            .flat_map(|spine| {
                spine
                    .bgp_interfaces
                    .iter()
                    .map(|i| (spine.name.clone(), i.clone()))
            })
            .collect()
    }
}

/// Files of one testbed run, all under one directory.
#[derive(Debug, Clone)]
pub struct RunDir {
    pub root: PathBuf,
}

impl RunDir {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }
    pub fn state_file(&self) -> PathBuf {
        self.root.join("state.json")
    }
    pub fn node_dir(&self, node: &str) -> PathBuf {
        self.root.join("nodes").join(node)
    }
    /// FRR's directory of a node: configs, pid files, vty sockets (owned by the `frr` user).
    pub fn frr_dir(&self, node: &str) -> PathBuf {
        self.node_dir(node).join("frr")
    }
    pub fn machine_dir(&self, machine: &str) -> PathBuf {
        self.root.join("machines").join(machine)
    }
    pub fn console_log(&self, machine: &str) -> PathBuf {
        self.machine_dir(machine).join("console.log")
    }
    pub fn console_socket(&self, machine: &str) -> PathBuf {
        self.machine_dir(machine).join("console.sock")
    }
    pub fn qmp_socket(&self, machine: &str) -> PathBuf {
        self.machine_dir(machine).join("qmp.sock")
    }
    pub fn disk(&self, machine: &str) -> PathBuf {
        self.machine_dir(machine).join("disk.raw")
    }
    pub fn path(&self) -> &Path {
        &self.root
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_racks_plan() {
        let topology = Topology {
            machines_per_rack: 1,
            vm_machines: 1,
            ..Topology::default()
        };
        let plan = Plan::new(&topology);
        let names: Vec<_> = plan.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["spine1", "spine2", "leaf1", "leaf2", "exit", "api"]);
        let leaf2 = plan.node("leaf2").unwrap();
        assert_eq!(leaf2.asn, Some(4_200_000_002));
        assert_eq!(leaf2.loopback, Ipv4Addr::new(10, 255, 0, 2));
        assert_eq!(leaf2.namespace(), "mm-leaf2");
        assert_eq!(
            plan.node("spine1").unwrap().asn,
            plan.node("spine2").unwrap().asn
        );
        // 2 leaves x 2 spines + exit x 2 spines + exit-api
        assert_eq!(plan.links.len(), 7);
        assert!(
            plan.links
                .iter()
                .filter(|l| l.addresses.is_none())
                .all(|l| l.mtu == 9000)
        );
        assert_eq!(plan.expected_spine_sessions().len(), 6);
        let m = plan.machine("m2-2").unwrap();
        assert_eq!(m.kind, MachineKind::Vm);
        assert_eq!(m.mac, "52:54:00:6d:02:02");
        assert_eq!(plan.machine("m1-1").unwrap().kind, MachineKind::Netns);
        // namespaces: 6 nodes + 2 namespace machines
        assert_eq!(plan.namespaces().len(), 8);
    }

    #[test]
    fn identities_are_unique() {
        let topology = Topology {
            racks: 32,
            machines_per_rack: 30,
            vm_machines: 34,
            leaf_bgp: vec![LeafBgp::Frr; 32],
            ..Topology::default()
        };
        let plan = Plan::new(&topology);
        let mut macs: Vec<_> = plan.machines.iter().map(|m| &m.mac).collect();
        macs.sort();
        macs.dedup();
        assert_eq!(macs.len(), plan.machines.len());
        let mut uuids: Vec<_> = plan.machines.iter().map(|m| &m.uuid).collect();
        uuids.sort();
        uuids.dedup();
        assert_eq!(uuids.len(), plan.machines.len());
        // Interface names must fit the kernel's 15-byte limit.
        assert!(plan.machines.iter().all(|m| m.switch_port.len() <= 15));
        assert!(plan.namespaces().iter().all(|n| n.len() <= 64));
    }
}
