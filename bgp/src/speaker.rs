//! The speaker, free of I/O: every peer's session, the RIB, what was sent
//! to each peer (Adj-RIB-Out), and local routes. The driver feeds it
//! [`Input`]s with the time and carries out its [`Output`]s.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use rustbgpd_wire::attribute::{AsPath, AsPathSegment, ExtendedCommunity, Origin, PathAttribute};
use rustbgpd_wire::evpn::EvpnRoute;
use rustbgpd_wire::{Message, RouteRefreshMessage};
use serde::{Deserialize, Serialize};

use crate::rib::{Change, Rib};
use crate::route::{Attributes, Family, NextHop, Path, PeerFacts, PeerId, RouteKey, Source};
use crate::session::{self, ConnId, Negotiated, Session, SessionConfig, SessionStats, State};
use crate::update::{self, Advertised};

/// How a peer is reached.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Remote {
    /// Unnumbered: the peer's link-local address on this interface,
    /// learned from its router advertisements.
    Interface(String),
    Address(IpAddr),
}

impl std::fmt::Display for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Remote::Interface(name) => f.write_str(name),
            Remote::Address(address) => write!(f, "{address}"),
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub remote: Remote,
    pub session: SessionConfig,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Input {
    /// Something happened on a peer's connections (or its time came).
    Peer { peer: PeerId, event: session::Event },
    /// Announce (or replace) a route of this speaker.
    Originate { key: RouteKey, route: LocalRoute },
    /// Withdraw a route of this speaker.
    Withdraw { key: RouteKey },
    /// Time passed.
    Tick,
}

/// A route this speaker originates.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalRoute {
    pub next_hop: NextHop,
    pub communities: Vec<ExtendedCommunity>,
    pub evpn: Option<EvpnRoute>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Output {
    /// Open a connection to the peer.
    Connect {
        peer: PeerId,
    },
    Send {
        peer: PeerId,
        conn: ConnId,
        message: Message,
    },
    Close {
        peer: PeerId,
        conn: ConnId,
    },
    /// Routes whose selected paths changed (for the kernel).
    Routes(Vec<Change>),
    PeerUp {
        peer: PeerId,
    },
    PeerDown {
        peer: PeerId,
        reason: String,
    },
    /// Something received was withdrawn instead of used, and why.
    Discarded {
        peer: PeerId,
        reason: String,
    },
}

#[derive(Debug)]
struct PeerState {
    config: PeerConfig,
    session: Session,
    facts: Option<PeerFacts>,
    adj_out: HashMap<RouteKey, Advertised>,
    /// Routes kept while the peer restarts gracefully.
    stale: Option<Stale>,
}

#[derive(Debug)]
struct Stale {
    until: Instant,
    keys: HashSet<RouteKey>,
}

/// A peer as `bgp summary` and `bgp neighbors` show it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PeerView {
    pub id: PeerId,
    pub remote: Remote,
    pub state: State,
    pub remote_as: Option<u32>,
    pub remote_id: Option<Ipv4Addr>,
    pub remote_address: Option<IpAddr>,
    pub local_address: Option<IpAddr>,
    pub established_secs: Option<u64>,
    pub families: Vec<Family>,
    /// Paths held from this peer per family.
    pub received: Vec<(Family, usize)>,
    /// Routes advertised to this peer.
    pub advertised: usize,
    pub negotiated: Option<Negotiated>,
    pub stats: SessionStats,
}

#[derive(Debug)]
pub struct Speaker {
    /// Our AS (prepended on eBGP export); the BGP identifier and the rest
    /// of each session's settings are in its `SessionConfig`.
    local_as: u32,
    peers: Vec<PeerState>,
    rib: Rib,
    /// Attributes of local routes, shared per distinct community set.
    local_attributes: HashMap<Vec<u64>, Arc<Attributes>>,
}

impl Speaker {
    pub fn new(local_as: u32) -> Speaker {
        Speaker {
            local_as,
            peers: Vec::new(),
            rib: Rib::new(),
            local_attributes: HashMap::new(),
        }
    }

    /// Adds a peer (not started yet); its id is its index.
    pub fn add_peer(&mut self, config: PeerConfig) -> PeerId {
        let id = PeerId(u32::try_from(self.peers.len()).unwrap_or(u32::MAX));
        self.peers.push(PeerState {
            session: Session::new(config.session.clone()),
            config,
            facts: None,
            adj_out: HashMap::new(),
            stale: None,
        });
        id
    }

    pub fn peers(&self) -> impl Iterator<Item = (PeerId, &PeerConfig)> {
        self.peers
            .iter()
            .enumerate()
            .map(|(i, p)| (PeerId(i as u32), &p.config))
    }

    /// The peer a remote address or interface belongs to.
    pub fn peer_for(&self, remote: &Remote) -> Option<PeerId> {
        self.peers
            .iter()
            .position(|p| &p.config.remote == remote)
            .map(|i| PeerId(i as u32))
    }

    pub fn rib(&self) -> &Rib {
        &self.rib
    }

    pub fn view(&self, now: Instant) -> Vec<PeerView> {
        self.peers
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let id = PeerId(i as u32);
                let negotiated = p.session.negotiated().cloned();
                let addresses = p.session.addresses();
                PeerView {
                    id,
                    remote: p.config.remote.clone(),
                    state: p.session.state(),
                    remote_as: negotiated.as_ref().map(|n| n.remote_as),
                    remote_id: negotiated.as_ref().map(|n| n.remote_id),
                    remote_address: addresses.map(|a| a.1),
                    local_address: addresses.map(|a| a.0),
                    established_secs: p
                        .session
                        .established_since()
                        .map(|t| now.saturating_duration_since(t).as_secs()),
                    families: negotiated
                        .as_ref()
                        .map(|n| n.families.iter().copied().collect())
                        .unwrap_or_default(),
                    received: Family::ALL
                        .into_iter()
                        .map(|f| (f, self.rib.count(Source::Peer(id), f)))
                        .collect(),
                    advertised: p.adj_out.len(),
                    negotiated,
                    stats: p.session.stats().clone(),
                }
            })
            .collect()
    }

    /// When the speaker next needs a `Tick`.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.peers
            .iter()
            .flat_map(|p| [p.session.next_deadline(), p.stale.as_ref().map(|s| s.until)])
            .flatten()
            .min()
    }

    pub fn handle(&mut self, now: Instant, input: Input) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::Peer { peer, event } => self.peer_event(now, peer, event, &mut out),
            Input::Originate { key, route } => {
                let path = self.local_path(route);
                if let Some(change) = self.rib.insert(key, path) {
                    self.changed(vec![change], &mut out);
                }
            }
            Input::Withdraw { key } => {
                if let Some(change) = self.rib.remove(key, Source::Local) {
                    self.changed(vec![change], &mut out);
                }
            }
            Input::Tick => {
                for index in 0..self.peers.len() {
                    let peer = PeerId(index as u32);
                    self.peer_event(now, peer, session::Event::Tick, &mut out);
                    if self.peers[index]
                        .stale
                        .as_ref()
                        .is_some_and(|s| s.until <= now)
                    {
                        tracing::info!(peer = index, "restart time over: stale routes removed");
                        self.flush_stale(peer, None, &mut out);
                    }
                }
            }
        }
        out
    }

    fn local_path(&mut self, route: LocalRoute) -> Path {
        let key: Vec<u64> = route.communities.iter().map(|c| c.as_u64()).collect();
        let attributes = self
            .local_attributes
            .entry(key)
            .or_insert_with(|| {
                let mut list = vec![
                    PathAttribute::Origin(Origin::Igp),
                    PathAttribute::AsPath(AsPath {
                        segments: Vec::new(),
                    }),
                ];
                if !route.communities.is_empty() {
                    list.push(PathAttribute::ExtendedCommunities(
                        route.communities.clone(),
                    ));
                }
                Arc::new(Attributes { list })
            })
            .clone();
        Path {
            source: Source::Local,
            peer: None,
            attributes,
            next_hop: route.next_hop,
            evpn: route.evpn.map(Box::new),
        }
    }

    fn peer_event(
        &mut self,
        now: Instant,
        peer: PeerId,
        event: session::Event,
        out: &mut Vec<Output>,
    ) {
        let Some(state) = self.peers.get_mut(peer.0 as usize) else {
            return;
        };
        let actions = state.session.handle(now, event);
        for action in actions {
            match action {
                session::Action::Connect => out.push(Output::Connect { peer }),
                session::Action::Send { conn, message } => out.push(Output::Send {
                    peer,
                    conn,
                    message,
                }),
                session::Action::Close { conn } => out.push(Output::Close { peer, conn }),
                session::Action::Up(negotiated) => self.up(peer, negotiated, out),
                session::Action::Down { reason, retain } => {
                    self.down(now, peer, reason, retain, out);
                }
                session::Action::Update(message) => self.update(now, peer, &message, out),
                session::Action::RefreshRequested(family) => {
                    if let Some(state) = self.peers.get_mut(peer.0 as usize) {
                        state.adj_out.retain(|k, _| k.family() != family);
                    }
                    let keys: Vec<RouteKey> = self
                        .rib
                        .keys()
                        .filter(|k| k.family() == family)
                        .copied()
                        .collect();
                    self.advertise(peer, &keys, out);
                    self.send_end_of_rib(peer, &[family], out);
                }
            }
        }
    }

    fn up(&mut self, peer: PeerId, negotiated: Negotiated, out: &mut Vec<Output>) {
        let Some(state) = self.peers.get_mut(peer.0 as usize) else {
            return;
        };
        let (_, remote) = state.session.addresses().unwrap_or((
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        ));
        state.facts = Some(PeerFacts {
            router_id: negotiated.remote_id,
            address: remote,
            ebgp: negotiated.ebgp,
        });
        state.adj_out.clear();
        tracing::info!(
            peer = %state.config.remote, remote_as = negotiated.remote_as,
            families = ?negotiated.families, "BGP session established"
        );
        out.push(Output::PeerUp { peer });
        let keys: Vec<RouteKey> = self.rib.keys().copied().collect();
        self.advertise(peer, &keys, out);
        let families: Vec<Family> = negotiated.families.iter().copied().collect();
        self.send_end_of_rib(peer, &families, out);
    }

    fn down(
        &mut self,
        now: Instant,
        peer: PeerId,
        reason: String,
        retain: Option<session::GracefulRestart>,
        out: &mut Vec<Output>,
    ) {
        let source = Source::Peer(peer);
        let held: Vec<RouteKey> = self
            .rib
            .keys()
            .filter(|k| self.rib.paths(k).iter().any(|p| p.source == source))
            .copied()
            .collect();
        let Some(state) = self.peers.get_mut(peer.0 as usize) else {
            return;
        };
        tracing::info!(peer = %state.config.remote, %reason, graceful = retain.is_some(), "BGP session down");
        state.adj_out.clear();
        state.facts = None;
        out.push(Output::PeerDown { peer, reason });
        let mut drop_now = held.clone();
        if let Some(gr) = retain {
            // The peer restarts: its routes of the families it keeps
            // forwarding for stay (stale) until it sends them again and
            // its End-of-RIB, or its restart time passes.
            let stale = state.stale.get_or_insert_with(|| Stale {
                until: now + gr.restart_time,
                keys: HashSet::new(),
            });
            for key in held.iter().filter(|k| gr.preserved.contains(&k.family())) {
                stale.keys.insert(*key);
            }
            drop_now.retain(|k| !stale.keys.contains(k));
        } else {
            state.stale = None;
        }
        let changes = drop_now
            .into_iter()
            .filter_map(|key| self.rib.remove(key, source))
            .collect();
        self.changed(changes, out);
    }

    /// Removes what is still stale of `peer` in `family` (all families:
    /// `None`): its End-of-RIB arrived, or its restart time passed.
    fn flush_stale(&mut self, peer: PeerId, family: Option<Family>, out: &mut Vec<Output>) {
        let Some(state) = self.peers.get_mut(peer.0 as usize) else {
            return;
        };
        let Some(stale) = state.stale.as_mut() else {
            return;
        };
        let flushed: Vec<RouteKey> = stale
            .keys
            .iter()
            .filter(|k| family.is_none_or(|f| k.family() == f))
            .copied()
            .collect();
        for key in &flushed {
            stale.keys.remove(key);
        }
        if stale.keys.is_empty() || family.is_none() {
            state.stale = None;
        }
        let changes = flushed
            .into_iter()
            .filter_map(|key| self.rib.remove(key, Source::Peer(peer)))
            .collect();
        self.changed(changes, out);
    }

    fn update(
        &mut self,
        now: Instant,
        peer: PeerId,
        message: &rustbgpd_wire::UpdateMessage,
        out: &mut Vec<Output>,
    ) {
        let Some(state) = self.peers.get(peer.0 as usize) else {
            return;
        };
        let (Some(negotiated), Some(facts), Some(conn)) = (
            state.session.negotiated().cloned(),
            state.facts,
            state.session.established_conn(),
        ) else {
            return;
        };
        let max_prefixes = state.session.config().max_prefixes;
        let received = match update::decode(message, &negotiated, peer, facts, self.local_as) {
            Ok(received) => received,
            Err(notification) => {
                let reason = format!(
                    "malformed UPDATE: {:?}/{}",
                    notification.code, notification.subcode
                );
                self.reset(now, peer, conn, notification, reason, out);
                return;
            }
        };
        if let Some(reason) = received.withdrawn_because {
            out.push(Output::Discarded { peer, reason });
        }
        let mut changes = Vec::new();
        if let Some(stale) = self
            .peers
            .get_mut(peer.0 as usize)
            .and_then(|s| s.stale.as_mut())
        {
            // Sent again (or withdrawn): no longer stale.
            for key in received
                .withdrawn
                .iter()
                .chain(received.announced.iter().map(|(k, _)| k))
            {
                stale.keys.remove(key);
            }
        }
        for key in received.withdrawn {
            changes.extend(self.rib.remove(key, Source::Peer(peer)));
        }
        let mut families = BTreeSet::new();
        for (key, path) in received.announced {
            families.insert(key.family());
            changes.extend(self.rib.insert(key, path));
        }
        if let Some(family) = received.end_of_rib {
            self.flush_stale(peer, Some(family), out);
        }
        let over = families
            .into_iter()
            .find(|f| self.rib.count(Source::Peer(peer), *f) > max_prefixes);
        self.changed(changes, out);
        if let Some(family) = over {
            let reason = format!("more than {max_prefixes} {family} paths");
            self.reset(
                now,
                peer,
                conn,
                update::max_prefixes_notification(),
                reason,
                out,
            );
        }
    }

    /// Closes the established session with `notification`.
    fn reset(
        &mut self,
        now: Instant,
        peer: PeerId,
        conn: ConnId,
        notification: rustbgpd_wire::NotificationMessage,
        reason: String,
        out: &mut Vec<Output>,
    ) {
        tracing::warn!(peer = peer.0, %reason, "resetting BGP session");
        self.peer_event(
            now,
            peer,
            session::Event::Reset {
                conn,
                notification,
                reason,
            },
            out,
        );
    }

    /// Passes selected-path changes on: to the kernel, and to every peer.
    fn changed(&mut self, changes: Vec<Change>, out: &mut Vec<Output>) {
        if changes.is_empty() {
            return;
        }
        let keys: Vec<RouteKey> = changes.iter().map(|c| c.key).collect();
        for index in 0..self.peers.len() {
            self.advertise(PeerId(index as u32), &keys, out);
        }
        out.push(Output::Routes(changes));
    }

    /// Brings what `peer` was sent for `keys` up to date.
    fn advertise(&mut self, peer: PeerId, keys: &[RouteKey], out: &mut Vec<Output>) {
        let Some(state) = self.peers.get(peer.0 as usize) else {
            return;
        };
        let (Some(negotiated), Some((local, _)), Some(conn)) = (
            state.session.negotiated().cloned(),
            state.session.addresses(),
            state.session.established_conn(),
        ) else {
            return;
        };
        let mut shared: HashMap<usize, Arc<Attributes>> = HashMap::new();
        let mut announce = Vec::new();
        let mut withdraw = Vec::new();
        for key in keys {
            let selected = self.rib.selected(key);
            let export = selected
                .first()
                .and_then(|best| self.export(peer, &negotiated, local, key, best, &mut shared));
            let state = &self.peers[peer.0 as usize];
            match (export, state.adj_out.get(key)) {
                (Some(new), Some(old)) if *old == new => {}
                (Some(new), _) => announce.push((*key, new)),
                (None, Some(_)) => withdraw.push(*key),
                (None, None) => {}
            }
        }
        let state = &mut self.peers[peer.0 as usize];
        for key in &withdraw {
            state.adj_out.remove(key);
        }
        for (key, advertised) in &announce {
            state.adj_out.insert(*key, advertised.clone());
        }
        for message in update::encode(&announce, &withdraw, negotiated.four_octet_as) {
            out.push(Output::Send {
                peer,
                conn,
                message,
            });
        }
    }

    /// What `peer` is sent for `key` whose best path is `best`: `None` when
    /// the route is not for it (its own, its family not negotiated, its AS
    /// in the path, no usable next hop).
    fn export(
        &self,
        peer: PeerId,
        negotiated: &Negotiated,
        local: IpAddr,
        key: &RouteKey,
        best: &Path,
        shared: &mut HashMap<usize, Arc<Attributes>>,
    ) -> Option<Advertised> {
        if best.source == Source::Peer(peer) || !negotiated.families.contains(&key.family()) {
            return None;
        }
        if negotiated.ebgp && best.attributes.contains_as(negotiated.remote_as) {
            return None;
        }
        // No route reflection: iBGP-learned paths go to eBGP peers only.
        if !negotiated.ebgp && best.peer.is_some_and(|p| !p.ebgp) {
            return None;
        }
        let next_hop = match key.family() {
            Family::Ipv4Unicast => match local {
                IpAddr::V4(a) => NextHop::V4(a),
                IpAddr::V6(a) if negotiated.extended_next_hop => NextHop::v6(a),
                IpAddr::V6(a) => NextHop::V4(a.to_ipv4_mapped()?),
            },
            Family::Ipv6Unicast => match local {
                IpAddr::V6(a) => NextHop::v6(a),
                IpAddr::V4(_) => return None,
            },
            // EVPN next hops are VTEPs: passed on unchanged.
            Family::L2vpnEvpn => best.next_hop,
        };
        let attributes = shared
            .entry(Arc::as_ptr(&best.attributes) as usize)
            .or_insert_with(|| Arc::new(self.export_attributes(negotiated, best)))
            .clone();
        Some(Advertised {
            attributes,
            next_hop,
            evpn: best.evpn.clone(),
        })
    }

    fn export_attributes(&self, negotiated: &Negotiated, best: &Path) -> Attributes {
        let mut list = Vec::with_capacity(best.attributes.list.len() + 1);
        let mut has_as_path = false;
        for attribute in &best.attributes.list {
            match attribute {
                PathAttribute::AsPath(path) if negotiated.ebgp => {
                    has_as_path = true;
                    list.push(PathAttribute::AsPath(prepend(path, self.local_as)));
                }
                PathAttribute::AsPath(_) => {
                    has_as_path = true;
                    list.push(attribute.clone());
                }
                // LOCAL_PREF stays inside the AS; a received MED is not
                // passed to another AS (RFC 4271 §5.1.4).
                PathAttribute::LocalPref(_) if negotiated.ebgp => {}
                PathAttribute::Med(_) if negotiated.ebgp && best.source != Source::Local => {}
                other => list.push(other.clone()),
            }
        }
        if !has_as_path {
            let empty = AsPath {
                segments: Vec::new(),
            };
            list.push(PathAttribute::AsPath(if negotiated.ebgp {
                prepend(&empty, self.local_as)
            } else {
                empty
            }));
        }
        if !negotiated.ebgp && best.attributes.local_pref().is_none() {
            list.push(PathAttribute::LocalPref(100));
        }
        Attributes { list }
    }

    fn send_end_of_rib(&mut self, peer: PeerId, families: &[Family], out: &mut Vec<Output>) {
        let Some(state) = self.peers.get(peer.0 as usize) else {
            return;
        };
        let (Some(negotiated), Some(conn)) =
            (state.session.negotiated(), state.session.established_conn())
        else {
            return;
        };
        for family in families {
            out.push(Output::Send {
                peer,
                conn,
                message: update::end_of_rib(*family, negotiated.four_octet_as),
            });
        }
    }

    /// Asks `peer` to send its routes of `family` again.
    pub fn refresh_message(family: Family) -> Message {
        let (afi, safi) = family.afi_safi();
        Message::RouteRefresh(RouteRefreshMessage::new(afi, safi))
    }
}

fn prepend(path: &AsPath, asn: u32) -> AsPath {
    let mut segments = path.segments.clone();
    match segments.first_mut() {
        Some(AsPathSegment::AsSequence(v)) if v.len() < 255 => v.insert(0, asn),
        _ => segments.insert(0, AsPathSegment::AsSequence(vec![asn])),
    }
    AsPath { segments }
}
