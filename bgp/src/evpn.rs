//! EVPN type-5 (IP prefix, RFC 9136) routes as metalmesh originates them
//! for the machines routed on a leaf: RD `<loopback>:<VNI>`, route target
//! `<ASN mod 65536>:<VNI>`, the router MAC (RFC 9135) and VXLAN encapsulation
//! (RFC 9012 tunnel type 8) extended communities, the VNI in the label.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rustbgpd_wire::attribute::ExtendedCommunity;
use rustbgpd_wire::evpn::{
    EthernetSegmentIdentifier, EthernetTagId, EvpnIpPrefixRoute, EvpnIpPrefixValue, EvpnRoute,
    EvpnRouteKey, MplsLabel, RouteDistinguisher,
};

/// BGP tunnel encapsulation type of VXLAN (RFC 9012).
const VXLAN: u16 = 8;

/// RD type 1: an IPv4 address and a 2-octet number (RFC 4364 §4.2).
pub fn route_distinguisher(loopback: Ipv4Addr, vni: u32) -> RouteDistinguisher {
    let [a, b, c, d] = loopback.octets();
    // The number field has two octets; VNIs above 65535 keep their low bits,
    // still unique per leaf in practice (one RD per VRF of one leaf).
    let [_, _, hi, lo] = vni.to_be_bytes();
    RouteDistinguisher::new([0, 1, a, b, c, d, hi, lo])
}

/// Route target `<ASN mod 65536>:<VNI>` in the 2-octet-AS form, the one
/// FRR derives by itself for an L3VNI: FRR (and Junos) match such a route
/// target on its VNI alone when importing, so leaves of different ASNs
/// (eBGP) import each other's routes with no route target configured, and
/// a native leaf and an FRR leaf do too.
pub fn route_target(asn: u32, vni: u32) -> ExtendedCommunity {
    let [_, _, a, b] = asn.to_be_bytes();
    let [c, d, e, f] = vni.to_be_bytes();
    ExtendedCommunity::new(u64::from_be_bytes([0x00, 0x02, a, b, c, d, e, f]))
}

/// The extended communities of a type-5 route of this leaf.
pub fn communities(asn: u32, vni: u32, router_mac: [u8; 6]) -> Vec<ExtendedCommunity> {
    vec![
        route_target(asn, vni),
        ExtendedCommunity::bgp_encapsulation(VXLAN),
        ExtendedCommunity::router_mac(router_mac),
    ]
}

/// A type-5 route for `prefix/len` in the VRF of `vni`.
pub fn type5(loopback: Ipv4Addr, vni: u32, prefix: IpAddr, len: u8) -> EvpnRoute {
    let (prefix, gateway) = match prefix {
        IpAddr::V4(a) => (
            EvpnIpPrefixValue::V4(rustbgpd_wire::nlri::Ipv4Prefix::new(a, len)),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ),
        IpAddr::V6(a) => (
            EvpnIpPrefixValue::V6(rustbgpd_wire::nlri::Ipv6Prefix::new(a, len)),
            IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        ),
    };
    EvpnRoute::IpPrefix(EvpnIpPrefixRoute {
        rd: route_distinguisher(loopback, vni),
        esi: EthernetSegmentIdentifier::ZERO,
        ethernet_tag: EthernetTagId(0),
        prefix,
        gateway,
        label: MplsLabel::new(vni),
    })
}

/// A route carrying `key` for an MP_UNREACH_NLRI (only the key fields are
/// read by the receiver). Only type-5 keys are withdrawn by metalmesh.
pub fn route_for_withdrawal(key: &EvpnRouteKey) -> Option<EvpnRoute> {
    match *key {
        EvpnRouteKey::IpPrefix {
            rd,
            ethernet_tag,
            prefix,
        } => Some(EvpnRoute::IpPrefix(EvpnIpPrefixRoute {
            rd,
            esi: EthernetSegmentIdentifier::ZERO,
            ethernet_tag,
            prefix,
            gateway: match prefix {
                EvpnIpPrefixValue::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                EvpnIpPrefixValue::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
            },
            label: MplsLabel::new(0),
        })),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rd_and_rt_take_the_documented_forms() {
        let rd = route_distinguisher(Ipv4Addr::new(10, 255, 0, 1), 10001);
        assert_eq!(rd.to_string(), "10.255.0.1:10001");
        // 4200000001 = 0xFA56_EA01: its low 16 bits, 0xEA01 = 59905.
        let rt = route_target(4_200_000_001, 10001);
        assert_eq!(rt.route_target(), Some((59_905, 10001)));
        let rt = route_target(4_200_000_001, 16_000_000);
        assert_eq!(rt.route_target(), Some((59_905, 16_000_000)));
        let rt = route_target(65001, 10001);
        assert_eq!(rt.route_target(), Some((65001, 10001)));
        let communities = communities(65001, 10001, [0x02, 0, 0, 0, 0, 1]);
        assert_eq!(communities[1].as_bgp_encapsulation(), Some(VXLAN));
        assert_eq!(communities[2].as_router_mac(), Some([0x02, 0, 0, 0, 0, 1]));
    }
}
