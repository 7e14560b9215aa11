//! The dataplane the agent wants, as a set of kernel objects rendered from
//! tenant intents for the kernel's mode, and the minimal change between it
//! and what the kernel has. Pure: the reconciler reads and writes the kernel.
//!
//! Symmetric-IRB EVPN on Linux, the way FRR's zebra expects it: per tenant a
//! VXLAN device (`mm-vx<VNI>`, learning off, local VTEP, port 4789) in a
//! bridge (`mm-br<VNI>`, the SVI, MAC = the leaf's router MAC). With VRF
//! devices the bridge and the machine ports are enslaved to `mm-vrf<VNI>`;
//! without them (table mode) `ip rule`s send the same traffic to the
//! tenant's table. Machine ports carry 169.254.0.1/32, the gateway machines
//! use; remote prefixes route via the remote VTEP with a permanent
//! neighbour (its router MAC) and FDB entry.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::intent::{Prefix, VrfIntent};

/// The gateway address on every routed machine port.
pub const GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 0, 1);
/// VXLAN UDP port (IANA).
pub const VXLAN_PORT: u16 = 4789;
/// Priority of the agent's policy rules (table mode); rules at this
/// priority are the agent's.
pub const RULE_PRIORITY: u32 = 20000;

/// How tenants are separated in this kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelMode {
    /// VRF devices (CONFIG_NET_VRF): SONiC, Cumulus, Debian.
    VrfDevice,
    /// No VRF devices: one routing table and `ip rule`s per tenant.
    RoutingTables,
}

pub fn vrf_name(vni: u32) -> String {
    format!("mm-vrf{vni}")
}
pub fn bridge_name(vni: u32) -> String {
    format!("mm-br{vni}")
}
pub fn vxlan_name(vni: u32) -> String {
    format!("mm-vx{vni}")
}

/// A leaf's router MAC, derived from its VTEP address so that every leaf can
/// compute every other's: `02:6d:` followed by the four address bytes.
pub fn router_mac(vtep: Ipv4Addr) -> String {
    let o = vtep.octets();
    format!("02:6d:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

/// How a route forwards.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum NextHop {
    Device {
        dev: String,
    },
    /// Via a gateway that is not on a local subnet (`onlink`).
    ViaOnlink {
        via: Ipv4Addr,
        dev: String,
    },
    Unreachable,
}

/// One kernel object the agent owns. The order of variants is the order in
/// which objects are created (and the reverse of removal).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(tag = "object", rename_all = "snake_case")]
pub enum Object {
    Vrf {
        name: String,
        table: u32,
    },
    Bridge {
        name: String,
        mac: String,
        vrf: Option<String>,
    },
    Vxlan {
        name: String,
        vni: u32,
        local: Ipv4Addr,
        bridge: String,
    },
    /// A machine port taken out of the provisioning bridge and routed.
    RoutedPort {
        port: String,
        vrf: Option<String>,
    },
    Address {
        dev: String,
        address: Ipv4Addr,
        len: u8,
    },
    Rule {
        iif: Option<String>,
        to: Option<Prefix>,
        table: u32,
    },
    Route {
        table: u32,
        dst: Prefix,
        next_hop: NextHop,
    },
    Neighbor {
        dev: String,
        ip: Ipv4Addr,
        mac: String,
    },
    Fdb {
        dev: String,
        mac: String,
        dst: Ipv4Addr,
    },
}

/// Renders validated intents for this leaf.
pub fn render(vrfs: &[VrfIntent], mode: KernelMode, vtep: Ipv4Addr) -> BTreeSet<Object> {
    let mut objects = BTreeSet::new();
    let own_mac = router_mac(vtep);
    for vrf in vrfs {
        let table = vrf.table;
        let bridge = bridge_name(vrf.vni);
        let master = match mode {
            KernelMode::VrfDevice => {
                let name = vrf_name(vrf.vni);
                objects.insert(Object::Vrf {
                    name: name.clone(),
                    table,
                });
                Some(name)
            }
            KernelMode::RoutingTables => None,
        };
        objects.insert(Object::Bridge {
            name: bridge.clone(),
            mac: own_mac.clone(),
            vrf: master.clone(),
        });
        objects.insert(Object::Vxlan {
            name: vxlan_name(vrf.vni),
            vni: vrf.vni,
            local: vtep,
            bridge: bridge.clone(),
        });
        // Nothing of one tenant may fall through to another table (or main).
        objects.insert(Object::Route {
            table,
            dst: Prefix {
                address: Ipv4Addr::UNSPECIFIED,
                len: 0,
            },
            next_hop: NextHop::Unreachable,
        });
        if mode == KernelMode::RoutingTables {
            objects.insert(Object::Rule {
                iif: Some(bridge.clone()),
                to: None,
                table,
            });
            // The leaf's own replies from 169.254.0.1 are looked up in the
            // main table unless sent to the tenant's table.
            for prefix in &vrf.prefixes {
                objects.insert(Object::Rule {
                    iif: Some("lo".into()),
                    to: Some(*prefix),
                    table,
                });
            }
        }
        for port in &vrf.ports {
            objects.insert(Object::RoutedPort {
                port: port.name.clone(),
                vrf: master.clone(),
            });
            objects.insert(Object::Address {
                dev: port.name.clone(),
                address: GATEWAY,
                len: 32,
            });
            if mode == KernelMode::RoutingTables {
                objects.insert(Object::Rule {
                    iif: Some(port.name.clone()),
                    to: None,
                    table,
                });
            }
            for address in &port.addresses {
                objects.insert(Object::Route {
                    table,
                    dst: Prefix {
                        address: *address,
                        len: 32,
                    },
                    next_hop: NextHop::Device {
                        dev: port.name.clone(),
                    },
                });
            }
        }
        for remote in &vrf.remotes {
            let mac = remote
                .router_mac
                .clone()
                .unwrap_or_else(|| router_mac(remote.vtep))
                .to_ascii_lowercase();
            objects.insert(Object::Route {
                table,
                dst: remote.prefix,
                next_hop: NextHop::ViaOnlink {
                    via: remote.vtep,
                    dev: bridge.clone(),
                },
            });
            objects.insert(Object::Neighbor {
                dev: bridge.clone(),
                ip: remote.vtep,
                mac: mac.clone(),
            });
            objects.insert(Object::Fdb {
                dev: vxlan_name(vrf.vni),
                mac,
                dst: remote.vtep,
            });
        }
    }
    objects
}

/// The minimal change: what to remove (in removal order) and what to add
/// (in creation order). A changed object is removed and added again.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub remove: Vec<Object>,
    pub add: Vec<Object>,
}

impl Plan {
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.add.is_empty()
    }
}

pub fn diff(desired: &BTreeSet<Object>, current: &BTreeSet<Object>) -> Plan {
    let mut remove: Vec<Object> = current.difference(desired).cloned().collect();
    let add: Vec<Object> = desired.difference(current).cloned().collect();
    // Removal runs in reverse creation order: routes before links, and so on.
    remove.sort();
    remove.reverse();
    Plan { remove, add }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dataplane::intent::{PortIntent, RemoteIntent};

    fn tenant() -> VrfIntent {
        VrfIntent {
            name: "tenant-a".into(),
            vni: 10001,
            table: 1001,
            prefixes: vec![Prefix::try_from("10.0.1.0/24".to_string()).unwrap()],
            ports: vec![PortIntent {
                name: "m1-1".into(),
                addresses: vec![Ipv4Addr::new(10, 0, 1, 11)],
            }],
            remotes: vec![RemoteIntent {
                prefix: Prefix::try_from("10.0.1.21/32".to_string()).unwrap(),
                vtep: Ipv4Addr::new(10, 255, 0, 2),
                router_mac: None,
            }],
        }
    }

    const VTEP: Ipv4Addr = Ipv4Addr::new(10, 255, 0, 1);

    #[test]
    fn table_mode_renders_rules_and_no_vrf_device() {
        let objects = render(&[tenant()], KernelMode::RoutingTables, VTEP);
        assert!(!objects.iter().any(|o| matches!(o, Object::Vrf { .. })));
        assert!(objects.contains(&Object::Rule {
            iif: Some("m1-1".into()),
            to: None,
            table: 1001
        }));
        assert!(objects.contains(&Object::Rule {
            iif: Some("mm-br10001".into()),
            to: None,
            table: 1001
        }));
        assert!(objects.contains(&Object::Rule {
            iif: Some("lo".into()),
            to: Some(Prefix::try_from("10.0.1.0/24".to_string()).unwrap()),
            table: 1001
        }));
        assert!(objects.contains(&Object::Neighbor {
            dev: "mm-br10001".into(),
            ip: Ipv4Addr::new(10, 255, 0, 2),
            mac: "02:6d:0a:ff:00:02".into()
        }));
        assert!(objects.contains(&Object::Fdb {
            dev: "mm-vx10001".into(),
            mac: "02:6d:0a:ff:00:02".into(),
            dst: Ipv4Addr::new(10, 255, 0, 2)
        }));
        assert!(objects.contains(&Object::Bridge {
            name: "mm-br10001".into(),
            mac: "02:6d:0a:ff:00:01".into(),
            vrf: None
        }));
    }

    #[test]
    fn vrf_mode_enslaves_instead_of_rules() {
        let objects = render(&[tenant()], KernelMode::VrfDevice, VTEP);
        assert!(objects.contains(&Object::Vrf {
            name: "mm-vrf10001".into(),
            table: 1001
        }));
        assert!(!objects.iter().any(|o| matches!(o, Object::Rule { .. })));
        assert!(objects.contains(&Object::RoutedPort {
            port: "m1-1".into(),
            vrf: Some("mm-vrf10001".into())
        }));
    }

    #[test]
    fn diff_is_minimal_and_ordered() {
        let desired = render(&[tenant()], KernelMode::RoutingTables, VTEP);
        let plan = diff(&desired, &BTreeSet::new());
        assert_eq!(plan.add.len(), desired.len());
        // Links come first, routes and neighbours later.
        assert!(matches!(plan.add[0], Object::Bridge { .. }));
        assert!(diff(&desired, &desired).is_empty());
        // Drop the tenant: everything goes, neighbours before links.
        let plan = diff(&BTreeSet::new(), &desired);
        assert!(matches!(plan.remove.last(), Some(Object::Bridge { .. })));
        assert!(matches!(plan.remove[0], Object::Fdb { .. }));
        // A moved machine address: one route out, one in.
        let mut moved = tenant();
        moved.ports[0].addresses = vec![Ipv4Addr::new(10, 0, 1, 12)];
        let plan = diff(&render(&[moved], KernelMode::RoutingTables, VTEP), &desired);
        assert_eq!(plan.add.len(), 1);
        assert_eq!(plan.remove.len(), 1);
    }
}
