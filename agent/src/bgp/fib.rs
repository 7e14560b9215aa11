//! Underlay routes learned over BGP, in the kernel's main table: IPv4
//! prefixes (other leaves' loopbacks, the exit's default) via the peers'
//! IPv6 link-local addresses on the fabric ports (RFC 8950 as Linux does
//! it, `RTA_VIA`), one next hop per equal-cost path. Routes are written one
//! by one as the RIB changes (no dump-and-diff of everything), and are
//! owned by protocol `bgp` (186): the agent touches no other routes here.
//!
//! After a restart the routes a previous run installed stay in place; the
//! ones not learned again within [`STALE_AFTER`] are removed.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::time::Duration;

use futures::TryStreamExt;
use metalmesh_bgp::rib::Change;
use metalmesh_bgp::{NextHop, PeerId, Remote, RouteKey, Source};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteNextHop, RouteProtocol, RouteVia,
};
use rtnetlink::{Handle, RouteMessageBuilder};

/// How long routes of a previous run wait to be learned again.
pub const STALE_AFTER: Duration = Duration::from_secs(30);
const MAIN_TABLE: u32 = 254;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Destination {
    pub address: Ipv4Addr,
    pub len: u8,
}

/// An underlay route as the kernel needs it: where to, and the selected
/// paths' next hops (none: remove it). Made from a RIB change without
/// keeping its paths, so a burst of changes queues compactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnderlayRoute {
    pub destination: Destination,
    pub next_hops: Vec<(Source, NextHop)>,
}

impl UnderlayRoute {
    /// The kernel's part of a change (IPv4 unicast only; locally originated
    /// paths are not written).
    pub fn from_change(change: &Change) -> Option<UnderlayRoute> {
        let RouteKey::V4(prefix) = change.key else {
            return None;
        };
        Some(UnderlayRoute {
            destination: Destination {
                address: prefix.addr,
                len: prefix.len,
            },
            next_hops: change
                .selected
                .iter()
                .filter(|p| p.source != Source::Local)
                .map(|p| (p.source, p.next_hop))
                .collect(),
        })
    }
}

#[derive(Debug)]
pub struct Fib {
    handle: Handle,
    /// Which port each unnumbered peer is on.
    peers: HashMap<PeerId, Remote>,
    installed: HashSet<Destination>,
    /// Routes of a previous run, until learned again or swept.
    stale: HashSet<Destination>,
}

impl Fib {
    /// Reads the routes a previous run left.
    pub async fn new(
        handle: Handle,
        peers: HashMap<PeerId, Remote>,
    ) -> Result<Fib, rtnetlink::Error> {
        let stale = owned_routes(&handle).await?;
        if !stale.is_empty() {
            tracing::info!(
                routes = stale.len(),
                "BGP routes of a previous run kept until re-learned"
            );
        }
        Ok(Fib {
            handle,
            peers,
            installed: HashSet::new(),
            stale,
        })
    }

    /// A peer configured after start (its port came up).
    pub fn add_peer(&mut self, peer: PeerId, remote: Remote) {
        self.peers.insert(peer, remote);
    }

    /// Writes one route change to the kernel (IPv4 unicast only; other
    /// families are not for the main table).
    pub async fn apply(&mut self, route: &UnderlayRoute) {
        let destination = route.destination;
        self.stale.remove(&destination);
        let hops: Vec<Hop> = route
            .next_hops
            .iter()
            .filter_map(|(source, next_hop)| self.hop(*source, next_hop))
            .collect();
        let result = if hops.is_empty() {
            if self.installed.remove(&destination) {
                self.delete(destination).await
            } else {
                Ok(())
            }
        } else {
            self.installed.insert(destination);
            self.replace(destination, &hops).await
        };
        if let Err(error) = result {
            tracing::warn!(?destination, %error, "BGP route not written to the kernel");
        }
    }

    /// Removes routes of a previous run that were not learned again.
    pub async fn sweep(&mut self) {
        for destination in std::mem::take(&mut self.stale) {
            if !self.installed.contains(&destination)
                && let Err(error) = self.delete(destination).await
            {
                tracing::warn!(?destination, %error, "stale BGP route not removed");
            }
        }
    }

    fn hop(&self, source: Source, next_hop: &NextHop) -> Option<Hop> {
        let Source::Peer(peer) = source else {
            return None;
        };
        match *next_hop {
            NextHop::V4(address) => Some(Hop::V4(address)),
            NextHop::V6 {
                link_local: Some(address),
                ..
            } => {
                // A link-local next hop is only meaningful on the port the
                // peer is on.
                let Some(Remote::Interface(port)) = self.peers.get(&peer) else {
                    return None;
                };
                let index = metalmesh_bgp::driver::ra::ifindex(port).ok()?;
                Some(Hop::LinkLocal { address, index })
            }
            NextHop::V6 {
                global: Some(address),
                ..
            } => Some(Hop::V6(address)),
            NextHop::V6 { .. } => None,
        }
    }

    async fn replace(
        &self,
        destination: Destination,
        hops: &[Hop],
    ) -> Result<(), rtnetlink::Error> {
        let mut message = base(destination);
        if let [hop] = hops {
            hop.attributes(&mut message.attributes);
        } else {
            let next_hops = hops
                .iter()
                .map(|hop| {
                    let mut attributes = Vec::new();
                    let index = hop.attributes(&mut attributes);
                    attributes.retain(|a| !matches!(a, RouteAttribute::Oif(_)));
                    let mut next_hop = RouteNextHop::default();
                    next_hop.interface_index = index.unwrap_or(0);
                    next_hop.attributes = attributes;
                    next_hop
                })
                .collect();
            message
                .attributes
                .push(RouteAttribute::MultiPath(next_hops));
        }
        self.handle.route().add(message).replace().execute().await
    }

    async fn delete(&self, destination: Destination) -> Result<(), rtnetlink::Error> {
        match self.handle.route().del(base(destination)).execute().await {
            // Already gone (an operator removed it): nothing to do.
            Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
            other => other,
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Hop {
    V4(Ipv4Addr),
    V6(std::net::Ipv6Addr),
    LinkLocal {
        address: std::net::Ipv6Addr,
        index: u32,
    },
}

impl Hop {
    /// Adds this hop's attributes; returns its interface, if it names one.
    fn attributes(&self, attributes: &mut Vec<RouteAttribute>) -> Option<u32> {
        match *self {
            Hop::V4(address) => {
                attributes.push(RouteAttribute::Gateway(RouteAddress::Inet(address)));
                None
            }
            Hop::V6(address) => {
                attributes.push(RouteAttribute::Via(RouteVia::Inet6(address)));
                None
            }
            Hop::LinkLocal { address, index } => {
                attributes.push(RouteAttribute::Via(RouteVia::Inet6(address)));
                attributes.push(RouteAttribute::Oif(index));
                Some(index)
            }
        }
    }
}

fn base(destination: Destination) -> RouteMessage {
    RouteMessageBuilder::<Ipv4Addr>::new()
        .destination_prefix(destination.address, destination.len)
        .table_id(MAIN_TABLE)
        .protocol(RouteProtocol::Bgp)
        .build()
}

/// IPv4 routes of protocol `bgp` in the main table.
async fn owned_routes(handle: &Handle) -> Result<HashSet<Destination>, rtnetlink::Error> {
    let filter = RouteMessageBuilder::<Ipv4Addr>::new()
        .table_id(MAIN_TABLE)
        .build();
    let routes: Vec<RouteMessage> = handle.route().get(filter).execute().try_collect().await?;
    Ok(routes
        .into_iter()
        .filter(|r| r.header.protocol == RouteProtocol::Bgp && r.header.table == MAIN_TABLE as u8)
        .filter_map(|r| {
            let address = r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => Some(*a),
                _ => None,
            })?;
            Some(Destination {
                address,
                len: r.header.destination_prefix_length,
            })
        })
        .collect())
}
