//! The FRR configuration the agent wants, from the same inputs the native
//! speaker is built from, and which of FRR's lines the agent owns.
//!
//! Owned, and so added and removed by the agent:
//! - in `router bgp <asn>`: the router ID, the `mm-fabric` peer group and
//!   every `neighbor <port> interface peer-group mm-fabric`, the loopback's
//!   `network` line, `advertise-all-vni`;
//! - every `router bgp <asn> vrf mm-vrf<VNI>` instance, whole;
//! - the `vni` line of every `vrf mm-vrf<VNI>`.
//!
//! Everything else in FRR (the operator's neighbours, route maps, other
//! VRFs, logging) is left as it is.

use std::net::Ipv4Addr;

use super::running::{Config, Line};
use crate::dataplane::Intents;
use crate::dataplane::desired::vrf_name;

/// The peer group of the unnumbered fabric sessions.
pub const FABRIC_GROUP: &str = "mm-fabric";
/// The prefix of the VRFs (and their BGP instances) the agent owns.
const VRF_PREFIX: &str = "mm-vrf";

/// What the FRR configuration is computed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FrrIntent {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Fabric ports with an unnumbered session each.
    pub fabric_ports: Vec<String>,
    /// Hold time of fabric sessions in seconds (0: no keepalives).
    pub hold_time_secs: u32,
    /// Tenants: VNI and the machine addresses routed here.
    pub tenants: Vec<Tenant>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant {
    pub vni: u32,
    pub addresses: Vec<Ipv4Addr>,
}

impl Tenant {
    pub fn from_intents(intents: &Intents) -> Vec<Tenant> {
        let mut tenants: Vec<Tenant> = intents
            .vrfs
            .iter()
            .map(|vrf| {
                let mut addresses: Vec<Ipv4Addr> = vrf
                    .ports
                    .iter()
                    .flat_map(|p| p.addresses.iter().copied())
                    .collect();
                addresses.sort();
                addresses.dedup();
                Tenant {
                    vni: vrf.vni,
                    addresses,
                }
            })
            .collect();
        tenants.sort_by_key(|t| t.vni);
        tenants
    }
}

impl FrrIntent {
    fn router(&self) -> String {
        format!("router bgp {}", self.asn)
    }

    fn tenant_router(&self, vni: u32) -> String {
        format!("router bgp {} vrf {}", self.asn, vrf_name(vni))
    }

    /// The configuration wanted, in the order FRR accepts it. `profile` is
    /// the running `frr defaults` (`traditional` needs eBGP policy off).
    pub fn desired(&self, profile: Option<&str>) -> Config {
        let mut lines = Vec::new();
        for tenant in &self.tenants {
            lines.push(Line::context(
                format!("vrf {}", vrf_name(tenant.vni)),
                vec![Line::leaf(format!("vni {}", tenant.vni))],
            ));
        }
        let mut router = vec![Line::leaf(format!("bgp router-id {}", self.router_id))];
        if profile != Some("datacenter") {
            // `traditional` sends nothing to an eBGP peer without a policy.
            router.push(Line::leaf("no bgp ebgp-requires-policy"));
        }
        router.push(Line::leaf(format!("neighbor {FABRIC_GROUP} peer-group")));
        router.push(Line::leaf(format!(
            "neighbor {FABRIC_GROUP} remote-as external"
        )));
        let hold = self.hold_time_secs;
        router.push(Line::leaf(format!(
            "neighbor {FABRIC_GROUP} timers {} {hold}",
            hold / 3
        )));
        for port in &self.fabric_ports {
            router.push(Line::leaf(format!(
                "neighbor {port} interface peer-group {FABRIC_GROUP}"
            )));
        }
        router.push(Line::context(
            "address-family ipv4 unicast",
            vec![Line::leaf(format!("network {}/32", self.router_id))],
        ));
        router.push(Line::context(
            "address-family l2vpn evpn",
            vec![
                Line::leaf(format!("neighbor {FABRIC_GROUP} activate")),
                Line::leaf("advertise-all-vni"),
            ],
        ));
        lines.push(Line::context(self.router(), router));
        for tenant in &self.tenants {
            let mut instance = vec![Line::leaf(format!("bgp router-id {}", self.router_id))];
            if !tenant.addresses.is_empty() {
                instance.push(Line::context(
                    "address-family ipv4 unicast",
                    tenant
                        .addresses
                        .iter()
                        .map(|a| Line::leaf(format!("network {a}/32")))
                        .collect(),
                ));
            }
            instance.push(Line::context(
                "address-family l2vpn evpn",
                vec![Line::leaf("advertise ipv4 unicast")],
            ));
            lines.push(Line::context(self.tenant_router(tenant.vni), instance));
        }
        Config { lines }
    }

    /// Whether the agent owns the top-level context `top` entirely (it is
    /// removed when not wanted).
    pub fn owns_context(&self, top: &str) -> bool {
        top.strip_prefix(&format!("{} vrf ", self.router()))
            .is_some_and(|vrf| vrf.starts_with(VRF_PREFIX))
    }

    /// Whether the agent owns `line` inside the context path `path` (it is
    /// removed when not wanted).
    pub fn owns_line(&self, path: &[&str], line: &str) -> bool {
        match path {
            [top] if top.starts_with("vrf ") => {
                top[4..].starts_with(VRF_PREFIX) && line.starts_with("vni ")
            }
            [top] if *top == self.router() => {
                line.starts_with("bgp router-id ")
                    || line == "no bgp ebgp-requires-policy"
                    || line.starts_with(&format!("neighbor {FABRIC_GROUP} "))
                    || line.ends_with(&format!(" interface peer-group {FABRIC_GROUP}"))
            }
            [top, family] if *top == self.router() => match *family {
                "address-family ipv4 unicast" => line == format!("network {}/32", self.router_id),
                "address-family l2vpn evpn" => {
                    line == "advertise-all-vni"
                        || line.starts_with(&format!("neighbor {FABRIC_GROUP} "))
                }
                _ => false,
            },
            [top, ..] => self.owns_context(top),
            [] => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    pub(crate) fn intent() -> FrrIntent {
        FrrIntent {
            asn: 4_200_000_003,
            router_id: Ipv4Addr::new(10, 255, 0, 3),
            fabric_ports: vec!["spine1".into(), "spine2".into()],
            hold_time_secs: 3,
            tenants: vec![Tenant {
                vni: 100,
                addresses: vec![Ipv4Addr::new(10, 0, 1, 11)],
            }],
        }
    }

    #[test]
    fn desired_config_has_the_fabric_and_each_tenant() {
        let config = intent().desired(Some("datacenter"));
        let texts: Vec<&str> = config.lines.iter().map(|l| l.text.as_str()).collect();
        assert_eq!(
            texts,
            [
                "vrf mm-vrf100",
                "router bgp 4200000003",
                "router bgp 4200000003 vrf mm-vrf100"
            ]
        );
        let router = config.top("router bgp 4200000003").unwrap();
        assert!(
            router
                .child("neighbor spine2 interface peer-group mm-fabric")
                .is_some()
        );
        assert!(router.child("neighbor mm-fabric timers 1 3").is_some());
        assert!(router.child("no bgp ebgp-requires-policy").is_none());
        let traditional = intent().desired(Some("traditional"));
        assert!(
            traditional
                .top("router bgp 4200000003")
                .unwrap()
                .child("no bgp ebgp-requires-policy")
                .is_some()
        );
        let tenant = config.top("router bgp 4200000003 vrf mm-vrf100").unwrap();
        assert_eq!(
            tenant
                .child("address-family ipv4 unicast")
                .unwrap()
                .children,
            vec![Line::leaf("network 10.0.1.11/32")]
        );
    }

    #[test]
    fn only_the_agents_lines_are_owned() {
        let intent = intent();
        let router = "router bgp 4200000003";
        assert!(intent.owns_line(&[router], "neighbor swp9 interface peer-group mm-fabric"));
        assert!(!intent.owns_line(&[router], "neighbor 192.0.2.1 remote-as 65000"));
        assert!(!intent.owns_line(
            &[router, "address-family ipv4 unicast"],
            "network 192.0.2.0/24"
        ));
        assert!(intent.owns_line(&["vrf mm-vrf7"], "vni 7"));
        assert!(!intent.owns_line(&["vrf mgmt"], "vni 7"));
        assert!(intent.owns_context("router bgp 4200000003 vrf mm-vrf7"));
        assert!(!intent.owns_context("router bgp 4200000003 vrf mgmt"));
        assert!(!intent.owns_context("router bgp 65000 vrf mm-vrf7"));
    }
}
