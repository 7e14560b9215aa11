//! Tenant intents: what the dataplane should carry, as the mesh (later) or a
//! file (`metalmesh-agent dataplane apply FILE`) gives it. Validation is per
//! VRF: a broken VRF is rejected with a clear error and the others are still
//! reconciled.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// The intent file (TOML); see docs/network.md.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Intents {
    #[serde(default, rename = "vrf")]
    pub vrfs: Vec<VrfIntent>,
}

/// One tenant network on this leaf: a VRF mapped 1:1 to an L3 VNI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VrfIntent {
    pub name: String,
    pub vni: u32,
    pub table: u32,
    /// The tenant's prefixes (carved from one super-network, never overlapping).
    #[serde(default)]
    pub prefixes: Vec<Prefix>,
    #[serde(default, rename = "port")]
    pub ports: Vec<PortIntent>,
    #[serde(default, rename = "remote")]
    pub remotes: Vec<RemoteIntent>,
}

/// A machine port routed in the VRF, with the machine's addresses (/32 each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortIntent {
    pub name: String,
    #[serde(default)]
    pub addresses: Vec<Ipv4Addr>,
}

/// A prefix behind another leaf (an EVPN type-5 route).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RemoteIntent {
    pub prefix: Prefix,
    pub vtep: Ipv4Addr,
    /// The remote leaf's router MAC; default: derived from its VTEP address.
    pub router_mac: Option<String>,
}

/// An IPv4 prefix `a.b.c.d/len`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Prefix {
    pub address: Ipv4Addr,
    pub len: u8,
}

impl Prefix {
    /// The prefix of `len` bits containing `address` (host bits cleared).
    pub fn new(address: Ipv4Addr, len: u8) -> Prefix {
        let len = len.min(32);
        Prefix {
            address: Ipv4Addr::from(u32::from(address) & mask(len)),
            len,
        }
    }

    pub fn network(self) -> u32 {
        u32::from(self.address) & mask(self.len)
    }

    pub fn contains(self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.len) == self.network()
    }

    pub fn overlaps(self, other: Prefix) -> bool {
        let len = self.len.min(other.len);
        self.network() & mask(len) == other.network() & mask(len)
    }
}

fn mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

impl TryFrom<String> for Prefix {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let (address, len) = text.split_once('/').unwrap_or((&text, "32"));
        let address: Ipv4Addr = address
            .parse()
            .map_err(|_| format!("`{text}` is not an IPv4 prefix"))?;
        let len: u8 = len
            .parse()
            .ok()
            .filter(|l| *l <= 32)
            .ok_or_else(|| format!("`{text}` has a bad prefix length"))?;
        if u32::from(address) & !mask(len) != 0 {
            return Err(format!("`{text}` has host bits set"));
        }
        Ok(Prefix { address, len })
    }
}

impl From<Prefix> for String {
    fn from(p: Prefix) -> String {
        format!("{}/{}", p.address, p.len)
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.address, self.len)
    }
}

/// Tables the kernel reserves (local, main, default, unspec).
const RESERVED_TABLES: [u32; 4] = [0, 253, 254, 255];
/// Largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;

/// Why one VRF was rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rejection {
    pub vrf: String,
    pub reason: String,
}

/// What no tenant intent may touch on this leaf, from its configuration.
#[derive(Debug, Clone, Default)]
pub struct Guardrails {
    /// Ranges the leaf itself uses (its loopback, the provisioning subnet,
    /// the underlay, link-local), each with what it is: a tenant prefix
    /// overlapping one is refused.
    pub protected: Vec<(Prefix, String)>,
    /// The ports machines are cabled to (`[switch] machine_ports`); `None`:
    /// any port but the refused ones.
    pub machine_ports: Option<crate::config::PortSelector>,
    /// Ports never routed into a tenant VRF: uplinks, the provisioning
    /// bridge, loopback.
    pub refused_ports: BTreeSet<String>,
}

impl Guardrails {
    /// Why `port` may not be a tenant port, if it may not.
    fn port_problem(&self, port: &str) -> Option<String> {
        if self.refused_ports.contains(port) {
            return Some(format!(
                "port `{port}` is an uplink, the provisioning bridge or loopback, never a tenant port"
            ));
        }
        match &self.machine_ports {
            Some(selector) if !selector.matches(port) => Some(format!(
                "port `{port}` is not a machine port (switch.machine_ports)"
            )),
            _ => None,
        }
    }

    /// Why `prefix` may not be a tenant prefix, if it may not.
    fn prefix_problem(&self, prefix: Prefix) -> Option<String> {
        if prefix.len == 0 {
            return Some("a default route is not a tenant prefix".into());
        }
        self.protected
            .iter()
            .find(|(range, _)| range.overlaps(prefix))
            .map(|(range, what)| format!("prefix {prefix} overlaps {range} ({what})"))
    }
}

/// What the kernel holds that intents are checked against.
#[derive(Debug, Clone, Default)]
pub struct KernelFacts {
    /// The switch's interface names (ports must exist).
    pub interfaces: BTreeSet<String>,
    /// Routing tables other programs use.
    pub foreign_tables: BTreeSet<u32>,
}

/// Splits intents into those that can be rendered and the rejected ones,
/// against what the kernel holds (`facts`) and what tenants may not touch
/// (`guardrails`).
pub fn validate(
    intents: &Intents,
    facts: &KernelFacts,
    guardrails: &Guardrails,
) -> (Vec<VrfIntent>, Vec<Rejection>) {
    let interfaces = &facts.interfaces;
    let mut accepted: Vec<VrfIntent> = Vec::new();
    let mut rejected = Vec::new();
    // First come, first served: a later VRF that collides is the one rejected.
    let mut vnis: BTreeMap<u32, String> = BTreeMap::new();
    let mut tables: BTreeMap<u32, String> = BTreeMap::new();
    let mut names: BTreeSet<String> = BTreeSet::new();
    let mut ports: BTreeMap<String, String> = BTreeMap::new();
    for vrf in &intents.vrfs {
        let reject = |reason: String| Rejection {
            vrf: vrf.name.clone(),
            reason,
        };
        let problem = (|| {
            if vrf.name.is_empty() || vrf.name.len() > 64 {
                return Some("name must be 1 to 64 characters".to_string());
            }
            if !names.insert(vrf.name.clone()) {
                return Some("a VRF of this name is already defined".into());
            }
            if !(1..=MAX_VNI).contains(&vrf.vni) {
                return Some(format!("VNI {} is out of range (1..={MAX_VNI})", vrf.vni));
            }
            if let Some(other) = vnis.get(&vrf.vni) {
                return Some(format!("VNI {} is already used by VRF `{other}`", vrf.vni));
            }
            if RESERVED_TABLES.contains(&vrf.table) || vrf.table > i32::MAX as u32 {
                return Some(format!(
                    "routing table {} is reserved or out of range",
                    vrf.table
                ));
            }
            if let Some(other) = tables.get(&vrf.table) {
                return Some(format!(
                    "routing table {} is already used by VRF `{other}`",
                    vrf.table
                ));
            }
            if facts.foreign_tables.contains(&vrf.table) {
                return Some(format!(
                    "routing table {} holds routes or rules of another program",
                    vrf.table
                ));
            }
            for prefix in &vrf.prefixes {
                if let Some(problem) = guardrails.prefix_problem(*prefix) {
                    return Some(problem);
                }
            }
            for port in &vrf.ports {
                if let Some(problem) = guardrails.port_problem(&port.name) {
                    return Some(problem);
                }
                if !interfaces.contains(&port.name) {
                    return Some(format!(
                        "port `{}` does not exist on this switch",
                        port.name
                    ));
                }
                if let Some(other) = ports.get(&port.name) {
                    return Some(format!(
                        "port `{}` is already routed in VRF `{other}`",
                        port.name
                    ));
                }
                if let Some(ip) = port
                    .addresses
                    .iter()
                    .find(|ip| !vrf.prefixes.iter().any(|p| p.contains(**ip)))
                {
                    return Some(format!(
                        "address {ip} of port `{}` is outside the VRF's prefixes",
                        port.name
                    ));
                }
            }
            for remote in &vrf.remotes {
                if let Some(mac) = &remote.router_mac
                    && crate::config::parse_mac(mac).is_none()
                {
                    return Some(format!(
                        "router MAC `{mac}` of {} is not a MAC address",
                        remote.prefix
                    ));
                }
            }
            for other in &accepted {
                for p in &vrf.prefixes {
                    if let Some(q) = other.prefixes.iter().find(|q| q.overlaps(*p)) {
                        return Some(format!("prefix {p} overlaps {q} of VRF `{}`", other.name));
                    }
                }
            }
            None
        })();
        match problem {
            Some(reason) => rejected.push(reject(reason)),
            None => {
                vnis.insert(vrf.vni, vrf.name.clone());
                tables.insert(vrf.table, vrf.name.clone());
                for port in &vrf.ports {
                    ports.insert(port.name.clone(), vrf.name.clone());
                }
                accepted.push(vrf.clone());
            }
        }
    }
    (accepted, rejected)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Intents {
        toml::from_str(text).unwrap()
    }

    fn interfaces() -> KernelFacts {
        KernelFacts {
            interfaces: ["m1-1", "m1-2", "m1-3"]
                .into_iter()
                .map(String::from)
                .collect(),
            foreign_tables: BTreeSet::new(),
        }
    }

    #[test]
    fn a_table_another_program_uses_is_refused() {
        let mut facts = interfaces();
        facts.foreign_tables.insert(1002);
        let (ok, rejected) = validate(&parse(TWO), &facts, &Guardrails::default());
        assert_eq!(ok.len(), 1, "{rejected:?}");
        assert_eq!(rejected[0].vrf, "tenant-b");
        assert!(
            rejected[0]
                .reason
                .contains("routing table 1002 holds routes or rules of another program"),
            "{rejected:?}"
        );
    }

    const TWO: &str = r#"
[[vrf]]
name = "tenant-a"
vni = 10001
table = 1001
prefixes = ["10.0.1.0/24"]
[[vrf.port]]
name = "m1-1"
addresses = ["10.0.1.11"]
[[vrf.remote]]
prefix = "10.0.1.21/32"
vtep = "10.255.0.2"

[[vrf]]
name = "tenant-b"
vni = 10002
table = 1002
prefixes = ["10.0.2.0/24"]
[[vrf.port]]
name = "m1-2"
addresses = ["10.0.2.12"]
"#;

    #[test]
    fn valid_intents_pass() {
        let (ok, rejected) = validate(&parse(TWO), &interfaces(), &Guardrails::default());
        assert_eq!(ok.len(), 2, "{rejected:?}");
        assert!(rejected.is_empty());
        assert_eq!(ok[0].remotes[0].prefix.to_string(), "10.0.1.21/32");
    }

    #[test]
    fn collisions_reject_only_the_later_vrf() {
        let text = TWO.replace("vni = 10002", "vni = 10001");
        let (ok, rejected) = validate(&parse(&text), &interfaces(), &Guardrails::default());
        assert_eq!(ok.len(), 1);
        assert_eq!(rejected[0].vrf, "tenant-b");
        assert!(
            rejected[0]
                .reason
                .contains("VNI 10001 is already used by VRF `tenant-a`")
        );
        let text = TWO.replace("table = 1002", "table = 1001");
        let (_, rejected) = validate(&parse(&text), &interfaces(), &Guardrails::default());
        assert!(
            rejected[0].reason.contains("routing table 1001"),
            "{rejected:?}"
        );
        let text = TWO.replace("name = \"m1-2\"", "name = \"m1-1\"");
        let (_, rejected) = validate(&parse(&text), &interfaces(), &Guardrails::default());
        assert!(
            rejected[0].reason.contains("already routed"),
            "{rejected:?}"
        );
        let text = TWO
            .replace("10.0.2.0/24", "10.0.0.0/16")
            .replace("10.0.2.12", "10.0.3.12");
        let (_, rejected) = validate(&parse(&text), &interfaces(), &Guardrails::default());
        assert!(rejected[0].reason.contains("overlaps"), "{rejected:?}");
    }

    #[test]
    fn bad_ports_addresses_and_numbers() {
        let (ok, rejected) = validate(
            &parse(&TWO.replace("m1-2", "swp99")),
            &interfaces(),
            &Guardrails::default(),
        );
        assert_eq!(ok.len(), 1);
        assert!(rejected[0].reason.contains("port `swp99` does not exist"));
        let (_, rejected) = validate(
            &parse(&TWO.replace("10.0.2.12", "192.0.2.1")),
            &interfaces(),
            &Guardrails::default(),
        );
        assert!(rejected[0].reason.contains("outside the VRF's prefixes"));
        let (_, rejected) = validate(
            &parse(&TWO.replace("vni = 10002", "vni = 16777216")),
            &interfaces(),
            &Guardrails::default(),
        );
        assert!(rejected[0].reason.contains("out of range"));
        let (_, rejected) = validate(
            &parse(&TWO.replace("table = 1002", "table = 254")),
            &interfaces(),
            &Guardrails::default(),
        );
        assert!(rejected[0].reason.contains("reserved"));
        assert!(toml::from_str::<Intents>(&TWO.replace("10.0.2.0/24", "10.0.2.1/24")).is_err());
    }

    #[test]
    fn tenants_may_not_touch_the_leafs_own_ranges_and_ports() {
        let prefix = |text: &str| Prefix::try_from(text.to_string()).unwrap();
        let guardrails = Guardrails {
            protected: vec![
                (prefix("169.254.0.0/16"), "link-local".into()),
                (prefix("10.255.0.1/32"), "this leaf's loopback".into()),
                (prefix("10.0.0.0/26"), "the provisioning subnet".into()),
            ],
            machine_ports: None,
            refused_ports: ["spine1".to_string(), "mm-pxe".to_string()].into(),
        };
        let (ok, rejected) = validate(&parse(TWO), &interfaces(), &guardrails);
        assert_eq!(ok.len(), 2, "{rejected:?}");
        for (from, to, expected) in [
            (
                "10.0.2.0/24",
                "10.0.0.0/16",
                "overlaps 10.0.0.0/26 (the provisioning subnet)",
            ),
            ("10.0.2.0/24", "0.0.0.0/0", "default route"),
            ("10.0.2.0/24", "10.255.0.0/16", "this leaf's loopback"),
            ("10.0.2.0/24", "169.254.0.0/24", "link-local"),
            (
                "name = \"m1-2\"",
                "name = \"spine1\"",
                "port `spine1` is an uplink",
            ),
            (
                "name = \"m1-2\"",
                "name = \"mm-pxe\"",
                "never a tenant port",
            ),
        ] {
            let text = TWO.replace(from, to).replace("10.0.2.12", "10.0.0.200");
            let (_, rejected) = validate(&parse(&text), &interfaces(), &guardrails);
            assert!(
                rejected
                    .iter()
                    .any(|r| r.vrf == "tenant-b" && r.reason.contains(expected)),
                "{from} -> {to}: {rejected:?}"
            );
        }
    }
}
