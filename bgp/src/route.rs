//! What the speaker routes: address families, route keys, next hops and
//! paths. Wire types (`rustbgpd_wire`) stay at the edges; these are the
//! types the RIB and the agent see.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use rustbgpd_wire::attribute::{AsPathSegment, ExtendedCommunity, Origin, PathAttribute};
use rustbgpd_wire::evpn::{EvpnRoute, EvpnRouteKey};
use rustbgpd_wire::nlri::{Ipv4Prefix, Ipv6Prefix};
use rustbgpd_wire::{Afi, Safi};
use serde::{Deserialize, Serialize};

/// The address families metalmesh speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
    L2vpnEvpn,
}

impl Family {
    pub const ALL: [Family; 3] = [Family::Ipv4Unicast, Family::Ipv6Unicast, Family::L2vpnEvpn];

    pub fn afi_safi(self) -> (Afi, Safi) {
        match self {
            Family::Ipv4Unicast => (Afi::Ipv4, Safi::Unicast),
            Family::Ipv6Unicast => (Afi::Ipv6, Safi::Unicast),
            Family::L2vpnEvpn => (Afi::L2Vpn, Safi::Evpn),
        }
    }

    pub fn from_afi_safi(afi: Afi, safi: Safi) -> Option<Family> {
        Family::ALL
            .into_iter()
            .find(|f| f.afi_safi() == (afi, safi))
    }

    /// The short name the CLI and the configuration use.
    pub fn name(self) -> &'static str {
        match self {
            Family::Ipv4Unicast => "ipv4",
            Family::Ipv6Unicast => "ipv6",
            Family::L2vpnEvpn => "evpn",
        }
    }

    pub fn parse(text: &str) -> Option<Family> {
        Family::ALL.into_iter().find(|f| f.name() == text)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// What a route is for: a prefix of a unicast family, or an EVPN route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RouteKey {
    V4(Ipv4Prefix),
    V6(Ipv6Prefix),
    Evpn(EvpnRouteKey),
}

impl RouteKey {
    pub fn family(&self) -> Family {
        match self {
            RouteKey::V4(_) => Family::Ipv4Unicast,
            RouteKey::V6(_) => Family::Ipv6Unicast,
            RouteKey::Evpn(_) => Family::L2vpnEvpn,
        }
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RouteKey::V4(p) => write!(f, "{}/{}", p.addr, p.len),
            RouteKey::V6(p) => write!(f, "{}/{}", p.addr, p.len),
            RouteKey::Evpn(EvpnRouteKey::IpPrefix {
                rd,
                ethernet_tag,
                prefix,
                ..
            }) => write!(f, "[5]:[{rd}]:[{}]:[{prefix}]", ethernet_tag.0),
            RouteKey::Evpn(key) => write!(f, "{key:?}"),
        }
    }
}

/// Where a path leads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NextHop {
    V4(Ipv4Addr),
    /// An IPv6 next hop: a global address, a link-local one, or both (RFC
    /// 2545); an unnumbered peer sends only its link-local address.
    V6 {
        global: Option<Ipv6Addr>,
        link_local: Option<Ipv6Addr>,
    },
}

impl NextHop {
    /// The address to forward to: the global one where there is one.
    pub fn address(&self) -> IpAddr {
        match *self {
            NextHop::V4(a) => IpAddr::V4(a),
            NextHop::V6 {
                global: Some(g), ..
            } => IpAddr::V6(g),
            NextHop::V6 {
                link_local: Some(l),
                ..
            } => IpAddr::V6(l),
            NextHop::V6 { .. } => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
        }
    }

    /// An IPv6 address as a next hop, sorted into global or link-local.
    pub fn v6(address: Ipv6Addr) -> NextHop {
        if address.is_unicast_link_local() {
            NextHop::V6 {
                global: None,
                link_local: Some(address),
            }
        } else {
            NextHop::V6 {
                global: Some(address),
                link_local: None,
            }
        }
    }
}

impl fmt::Display for NextHop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NextHop::V4(a) => write!(f, "{a}"),
            NextHop::V6 {
                global: Some(g),
                link_local: Some(l),
            } => write!(f, "{g} ({l})"),
            other => write!(f, "{}", other.address()),
        }
    }
}

/// Which speaker a path came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Source {
    /// Originated by this speaker.
    Local,
    /// Learned from the peer with this index.
    Peer(PeerId),
}

/// A configured peer, by its index in the speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PeerId(pub u32);

/// Facts about the sending peer that best-path selection compares.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PeerFacts {
    pub router_id: Ipv4Addr,
    pub address: IpAddr,
    pub ebgp: bool,
}

/// A path's attributes as received (or made for a local route): the
/// multiprotocol framing and NEXT_HOP removed, everything else kept so
/// that unknown transitive attributes travel on. Shared between every
/// route of one UPDATE.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Attributes {
    pub list: Vec<PathAttribute>,
}

impl Attributes {
    pub fn origin(&self) -> Origin {
        self.list
            .iter()
            .find_map(|a| match a {
                PathAttribute::Origin(o) => Some(*o),
                _ => None,
            })
            .unwrap_or(Origin::Incomplete)
    }

    pub fn as_path(&self) -> &[AsPathSegment] {
        self.list
            .iter()
            .find_map(|a| match a {
                PathAttribute::AsPath(p) => Some(&p.segments[..]),
                _ => None,
            })
            .unwrap_or(&[])
    }

    /// AS-path length as best-path selection counts it: a set counts one.
    pub fn as_path_len(&self) -> usize {
        self.as_path()
            .iter()
            .map(|s| match s {
                AsPathSegment::AsSequence(v) => v.len(),
                AsPathSegment::AsSet(_) => 1,
            })
            .sum()
    }

    /// The AS the path was learned from (first of the path), if any.
    pub fn neighbor_as(&self) -> Option<u32> {
        match self.as_path().first() {
            Some(AsPathSegment::AsSequence(v)) => v.first().copied(),
            _ => None,
        }
    }

    pub fn contains_as(&self, asn: u32) -> bool {
        self.as_path().iter().any(|s| match s {
            AsPathSegment::AsSequence(v) | AsPathSegment::AsSet(v) => v.contains(&asn),
        })
    }

    /// The AS numbers in path order (sets flattened), for display.
    pub fn as_path_flat(&self) -> Vec<u32> {
        self.as_path()
            .iter()
            .flat_map(|s| match s {
                AsPathSegment::AsSequence(v) | AsPathSegment::AsSet(v) => v.iter().copied(),
            })
            .collect()
    }

    pub fn med(&self) -> Option<u32> {
        self.list.iter().find_map(|a| match a {
            PathAttribute::Med(m) => Some(*m),
            _ => None,
        })
    }

    pub fn local_pref(&self) -> Option<u32> {
        self.list.iter().find_map(|a| match a {
            PathAttribute::LocalPref(p) => Some(*p),
            _ => None,
        })
    }

    pub fn extended_communities(&self) -> impl Iterator<Item = ExtendedCommunity> + '_ {
        self.list.iter().flat_map(|a| {
            match a {
                PathAttribute::ExtendedCommunities(c)
                | PathAttribute::ExtendedCommunitiesPartial(c) => c.as_slice(),
                _ => &[],
            }
            .iter()
            .copied()
        })
    }

    /// The router MAC of an EVPN route (RFC 9135), if it carries one.
    pub fn router_mac(&self) -> Option<[u8; 6]> {
        self.extended_communities().find_map(|c| c.as_router_mac())
    }

    /// Route targets as (global administrator, local administrator).
    pub fn route_targets(&self) -> Vec<(u32, u32)> {
        self.extended_communities()
            .filter_map(|c| c.route_target())
            .collect()
    }
}

/// One path to a route: where it came from, its attributes and next hop,
/// and for EVPN the route itself (its label carries the VNI).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Path {
    pub source: Source,
    pub peer: Option<PeerFacts>,
    pub attributes: Arc<Attributes>,
    pub next_hop: NextHop,
    /// Boxed: most paths are unicast and should not carry its room.
    pub evpn: Option<Box<EvpnRoute>>,
}

impl Path {
    /// Same origin, attributes and next hop (attributes compared by
    /// pointer first: paths of one UPDATE share them).
    pub fn same_as(&self, other: &Path) -> bool {
        self.source == other.source
            && self.next_hop == other.next_hop
            && self.evpn == other.evpn
            && (Arc::ptr_eq(&self.attributes, &other.attributes)
                || self.attributes == other.attributes)
    }

    /// The VNI of an EVPN type-5 path (its label field).
    pub fn vni(&self) -> Option<u32> {
        match self.evpn.as_deref() {
            Some(EvpnRoute::IpPrefix(r)) => Some(r.label.value()),
            _ => None,
        }
    }
}
