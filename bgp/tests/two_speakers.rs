//! Two speakers over a simulated connection, every message through the
//! wire codec: sessions come up, routes of each family flow both ways
//! with the attributes eBGP requires, withdrawals and session loss clean
//! up, malformed UPDATEs are handled as RFC 7606 says. Time is passed in.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use metalmesh_bgp::rib::Change;
use metalmesh_bgp::route::{Family, NextHop, PeerId, RouteKey};
use metalmesh_bgp::session::{Event, RemoteAs, SessionConfig, State};
use metalmesh_bgp::speaker::{Input, LocalRoute, Output, PeerConfig, Remote, Speaker};
use rustbgpd_wire::nlri::Ipv4Prefix;
use rustbgpd_wire::{Message, decode_message, encode_message};

const LEAF_AS: u32 = 4_200_000_001;
const SPINE_AS: u32 = 65000;

fn config(local_as: u32, router_id: Ipv4Addr, remote_as: RemoteAs) -> SessionConfig {
    SessionConfig {
        local_as,
        router_id,
        remote_as,
        families: BTreeSet::from(Family::ALL),
        hold_time: Duration::from_secs(9),
        connect_retry: Duration::from_secs(1),
        passive: false,
        extended_next_hop: true,
        max_prefixes: 1000,
    }
}

/// A leaf and a spine joined by one link-local "connection".
struct Pair {
    now: Instant,
    leaf: Speaker,
    spine: Speaker,
    /// Route changes each side reported, in order.
    leaf_routes: Vec<Change>,
    spine_routes: Vec<Change>,
    discarded: Vec<String>,
}

const LEAF_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1);
const SPINE_LL: Ipv6Addr = Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2);

impl Pair {
    fn new() -> Pair {
        let mut leaf = Speaker::new(LEAF_AS);
        leaf.add_peer(PeerConfig {
            remote: Remote::Interface("spine1".into()),
            session: config(LEAF_AS, Ipv4Addr::new(10, 255, 0, 1), RemoteAs::External),
        });
        let mut spine = Speaker::new(SPINE_AS);
        spine.add_peer(PeerConfig {
            remote: Remote::Interface("leaf1".into()),
            session: config(SPINE_AS, Ipv4Addr::new(10, 254, 0, 1), RemoteAs::External),
        });
        Pair {
            now: Instant::now(),
            leaf,
            spine,
            leaf_routes: Vec::new(),
            spine_routes: Vec::new(),
            discarded: Vec::new(),
        }
    }

    /// Connects (leaf → spine) and runs the exchange until quiet.
    fn connect(&mut self) {
        let peer = PeerId(0);
        let start = self.leaf.handle(
            self.now,
            Input::Peer {
                peer,
                event: Event::Start,
            },
        );
        self.spine.handle(
            self.now,
            Input::Peer {
                peer,
                event: Event::Start,
            },
        );
        assert!(start.contains(&Output::Connect { peer }));
        let leaf_out = self.leaf.handle(
            self.now,
            Input::Peer {
                peer,
                event: Event::Connected {
                    conn: 1,
                    outgoing: true,
                    local: IpAddr::V6(LEAF_LL),
                    remote: IpAddr::V6(SPINE_LL),
                },
            },
        );
        let spine_out = self.spine.handle(
            self.now,
            Input::Peer {
                peer,
                event: Event::Connected {
                    conn: 1,
                    outgoing: false,
                    local: IpAddr::V6(SPINE_LL),
                    remote: IpAddr::V6(LEAF_LL),
                },
            },
        );
        self.pump(leaf_out, spine_out);
    }

    /// Delivers each side's sends to the other through the codec until
    /// neither has anything to say.
    fn pump(&mut self, mut leaf_out: Vec<Output>, mut spine_out: Vec<Output>) {
        for _ in 0..100 {
            if leaf_out.is_empty() && spine_out.is_empty() {
                return;
            }
            let to_spine = self.collect(&mut leaf_out, true);
            let to_leaf = self.collect(&mut spine_out, false);
            for message in to_spine {
                spine_out.extend(self.deliver(false, message));
            }
            for message in to_leaf {
                leaf_out.extend(self.deliver(true, message));
            }
        }
        panic!("the speakers kept talking");
    }

    fn collect(&mut self, outputs: &mut Vec<Output>, from_leaf: bool) -> Vec<Message> {
        let mut messages = Vec::new();
        for output in outputs.drain(..) {
            match output {
                Output::Send { message, .. } => {
                    // Through the codec, as on a real connection.
                    let bytes = encode_message(&message).expect("encodes");
                    assert!(bytes.len() <= 4096);
                    let mut bytes = Bytes::from(bytes.to_vec());
                    messages.push(decode_message(&mut bytes, 4096).expect("decodes"));
                }
                Output::Routes(changes) if from_leaf => self.leaf_routes.extend(changes),
                Output::Routes(changes) => self.spine_routes.extend(changes),
                Output::Discarded { reason, .. } => self.discarded.push(reason),
                _ => {}
            }
        }
        messages
    }

    fn deliver(&mut self, to_leaf: bool, message: Message) -> Vec<Output> {
        let event = Event::Received { conn: 1, message };
        let input = Input::Peer {
            peer: PeerId(0),
            event,
        };
        if to_leaf {
            self.leaf.handle(self.now, input)
        } else {
            self.spine.handle(self.now, input)
        }
    }

    fn state(&self) -> (State, State) {
        let now = self.now;
        (self.leaf.view(now)[0].state, self.spine.view(now)[0].state)
    }

    fn originate_on_leaf(&mut self, key: RouteKey, route: LocalRoute) {
        let out = self.leaf.handle(self.now, Input::Originate { key, route });
        self.pump(out, Vec::new());
    }
}

fn loopback_key(a: u8) -> RouteKey {
    RouteKey::V4(Ipv4Prefix::new(Ipv4Addr::new(10, 255, 0, a), 32))
}

/// Leaf `a`'s loopback as it originates it.
fn loopback_route(a: u8) -> LocalRoute {
    LocalRoute {
        next_hop: NextHop::V4(Ipv4Addr::new(10, 255, 0, a)),
        communities: Vec::new(),
        evpn: None,
    }
}

#[test]
fn unnumbered_session_carries_ipv4_with_link_local_next_hops() {
    let mut pair = Pair::new();
    pair.connect();
    assert_eq!(pair.state(), (State::Established, State::Established));
    let negotiated = pair.leaf.view(pair.now)[0].negotiated.clone().unwrap();
    assert!(negotiated.extended_next_hop);
    assert!(negotiated.four_octet_as);
    assert_eq!(negotiated.remote_as, SPINE_AS);

    pair.originate_on_leaf(loopback_key(1), loopback_route(1));
    let learned = pair.spine.rib().selected(&loopback_key(1));
    assert_eq!(learned.len(), 1, "the spine learned the leaf loopback");
    let path = learned[0];
    assert_eq!(
        path.next_hop,
        NextHop::V6 {
            global: None,
            link_local: Some(LEAF_LL)
        },
        "IPv4 route with the leaf's link-local next hop (RFC 8950)"
    );
    assert_eq!(path.attributes.as_path_flat(), vec![LEAF_AS]);

    // The spine does not send the route back to where it came from.
    assert!(pair.leaf.rib().selected(&loopback_key(1)).len() == 1);
    assert!(
        pair.leaf
            .rib()
            .paths(&loopback_key(1))
            .iter()
            .all(|p| p.source == metalmesh_bgp::Source::Local)
    );

    // Withdrawn on the leaf: gone on the spine.
    let out = pair.leaf.handle(
        pair.now,
        Input::Withdraw {
            key: loopback_key(1),
        },
    );
    pair.pump(out, Vec::new());
    assert!(pair.spine.rib().selected(&loopback_key(1)).is_empty());
    assert!(
        pair.spine_routes
            .last()
            .is_some_and(|c| c.selected.is_empty())
    );
}

#[test]
fn evpn_type5_routes_carry_vni_rd_rt_and_router_mac() {
    let mut pair = Pair::new();
    pair.connect();
    let loopback = Ipv4Addr::new(10, 255, 0, 1);
    let route =
        metalmesh_bgp::evpn::type5(loopback, 10001, IpAddr::V4(Ipv4Addr::new(10, 0, 1, 11)), 32);
    let key = RouteKey::Evpn(route.key());
    pair.originate_on_leaf(
        key,
        LocalRoute {
            next_hop: NextHop::V4(loopback),
            communities: metalmesh_bgp::evpn::communities(LEAF_AS, 10001, [2, 0, 0, 0, 1, 1]),
            evpn: Some(route),
        },
    );
    let learned = pair.spine.rib().selected(&key);
    assert_eq!(learned.len(), 1);
    let path = learned[0];
    assert_eq!(path.vni(), Some(10001));
    assert_eq!(
        path.next_hop,
        NextHop::V4(loopback),
        "the VTEP is the next hop"
    );
    assert_eq!(path.attributes.router_mac(), Some([2, 0, 0, 0, 1, 1]));
    assert_eq!(
        path.attributes.route_targets(),
        vec![(LEAF_AS & 0xFFFF, 10001)]
    );
    assert_eq!(key.to_string(), "[5]:[10.255.0.1:10001]:[0]:[10.0.1.11/32]");
}

#[test]
fn hold_timer_expiry_closes_with_a_notification_and_drops_routes() {
    let mut pair = Pair::new();
    pair.connect();
    pair.originate_on_leaf(loopback_key(1), loopback_route(1));
    assert_eq!(pair.spine.rib().selected(&loopback_key(1)).len(), 1);
    // The leaf goes silent: the spine's hold timer (9 s) expires.
    let later = pair.now + Duration::from_secs(10);
    let out = pair.spine.handle(later, Input::Tick);
    assert!(out.iter().any(|o| matches!(o,
        Output::Send { message: Message::Notification(n), .. }
            if n.code == rustbgpd_wire::NotificationCode::HoldTimerExpired)));
    assert!(out.iter().any(|o| matches!(o, Output::PeerDown { .. })));
    assert!(pair.spine.rib().selected(&loopback_key(1)).is_empty());
    // Keepalives keep a session up: the leaf sends one every 3 s.
    let out = pair
        .leaf
        .handle(pair.now + Duration::from_secs(4), Input::Tick);
    assert!(out.iter().any(|o| matches!(
        o,
        Output::Send {
            message: Message::Keepalive,
            ..
        }
    )));
}

#[test]
fn wrong_peer_as_is_refused_in_open() {
    let mut pair = Pair::new();
    pair.spine = Speaker::new(SPINE_AS);
    pair.spine.add_peer(PeerConfig {
        remote: Remote::Interface("leaf1".into()),
        session: config(
            SPINE_AS,
            Ipv4Addr::new(10, 254, 0, 1),
            RemoteAs::Asn(4_200_000_099),
        ),
    });
    pair.connect();
    assert_ne!(pair.state().1, State::Established);
    let error = pair.spine.view(pair.now)[0]
        .stats
        .last_error
        .clone()
        .unwrap();
    assert!(error.contains("peer AS 4200000001"), "{error}");
}

/// An UPDATE whose ORIGIN has a bad length: RFC 7606 says treat-as-withdraw,
/// so the route goes and the session stays.
#[test]
fn malformed_origin_withdraws_instead_of_resetting() {
    let mut pair = Pair::new();
    pair.connect();
    pair.originate_on_leaf(loopback_key(1), loopback_route(1));
    assert_eq!(pair.spine.rib().selected(&loopback_key(1)).len(), 1);
    // Hand-made: ORIGIN with length 2, AS_PATH [4200000001], NEXT_HOP, NLRI 10.255.0.1/32.
    let attributes: Vec<u8> = [
        &[0x40, 1, 2, 0, 0][..],
        &[0x40, 2, 6, 2, 1, 0xfa, 0x56, 0xea, 0x01],
        &[0x40, 3, 4, 10, 255, 0, 1],
    ]
    .concat();
    let update = rustbgpd_wire::UpdateMessage {
        withdrawn_routes: Bytes::new(),
        path_attributes: Bytes::from(attributes),
        nlri: Bytes::from_static(&[32, 10, 255, 0, 1]),
    };
    let out = pair.spine.handle(
        pair.now,
        Input::Peer {
            peer: PeerId(0),
            event: Event::Received {
                conn: 1,
                message: Message::Update(update),
            },
        },
    );
    pair.pump(Vec::new(), out);
    assert_eq!(pair.state().1, State::Established, "the session stays up");
    assert!(
        pair.spine.rib().selected(&loopback_key(1)).is_empty(),
        "the route is withdrawn"
    );
    assert!(
        pair.discarded
            .iter()
            .any(|r| r.contains("treat-as-withdraw")),
        "{:?}",
        pair.discarded
    );
}

/// Hand-made UPDATEs (the fuzz seeds) as a spine would send them: the
/// IPv4 route, then the EVPN type-5 route with its VNI, router MAC and
/// route target, then its withdrawal followed by an End-of-RIB.
#[test]
fn byte_vectors_decode_to_the_routes_they_carry() {
    let mut pair = Pair::new();
    pair.connect();
    let deliver = |pair: &mut Pair, bytes: &[u8]| {
        let mut bytes = Bytes::copy_from_slice(bytes);
        while !bytes.is_empty() {
            let message = decode_message(&mut bytes, 4096).expect("a valid vector");
            let out = pair.deliver(true, message);
            pair.pump(out, Vec::new());
        }
    };
    deliver(
        &mut pair,
        include_bytes!("../../fuzz/seeds/bgp_update/ipv4"),
    );
    let ipv4 = pair.leaf.rib().selected(&loopback_key(2));
    assert_eq!(ipv4.len(), 1);
    assert_eq!(ipv4[0].next_hop, NextHop::V4(Ipv4Addr::new(10, 254, 0, 1)));
    assert_eq!(ipv4[0].attributes.as_path_flat(), vec![SPINE_AS]);

    deliver(
        &mut pair,
        include_bytes!("../../fuzz/seeds/bgp_update/evpn_type5"),
    );
    let route = metalmesh_bgp::evpn::type5(
        Ipv4Addr::new(10, 255, 0, 2),
        10001,
        IpAddr::V4(Ipv4Addr::new(10, 0, 1, 21)),
        32,
    );
    let key = RouteKey::Evpn(route.key());
    let evpn = pair.leaf.rib().selected(&key);
    assert_eq!(
        evpn.len(),
        1,
        "{:?}",
        pair.leaf.rib().keys().collect::<Vec<_>>()
    );
    assert_eq!(evpn[0].vni(), Some(10001));
    assert_eq!(evpn[0].next_hop, NextHop::V4(Ipv4Addr::new(10, 255, 0, 2)));
    assert_eq!(
        evpn[0].attributes.router_mac(),
        Some([2, 0x6d, 10, 255, 0, 2])
    );
    assert_eq!(evpn[0].attributes.route_targets(), vec![(SPINE_AS, 10001)]);

    deliver(
        &mut pair,
        include_bytes!("../../fuzz/seeds/bgp_update/evpn_withdraw_then_eor"),
    );
    assert!(pair.leaf.rib().selected(&key).is_empty());
    assert_eq!(pair.state(), (State::Established, State::Established));
}

/// Graceful restart: the leaf's connection drops (its agent restarts);
/// the spine keeps its routes as stale, takes back the ones announced
/// again, and flushes the rest at the leaf's End-of-RIB. Without a new
/// session, the restart time ends it.
#[test]
fn a_restarting_peer_keeps_its_routes_until_end_of_rib() {
    let mut pair = Pair::new();
    pair.connect();
    for a in [1, 3] {
        pair.originate_on_leaf(loopback_key(a), loopback_route(a));
    }
    let negotiated = pair.spine.view(pair.now)[0].negotiated.clone().unwrap();
    let gr = negotiated
        .graceful_restart
        .expect("the leaf offers graceful restart");
    assert_eq!(gr.restart_time, Duration::from_secs(120));
    assert!(
        gr.preserved.contains(&Family::Ipv4Unicast) && gr.preserved.contains(&Family::L2vpnEvpn)
    );

    // The TCP connection ends without a NOTIFICATION: routes stay.
    let out = pair.spine.handle(
        pair.now,
        Input::Peer {
            peer: PeerId(0),
            event: Event::Closed { conn: 1 },
        },
    );
    assert!(out.iter().any(|o| matches!(o, Output::PeerDown { .. })));
    assert_eq!(
        pair.spine.rib().selected(&loopback_key(1)).len(),
        1,
        "kept while restarting"
    );
    assert_eq!(pair.spine.rib().selected(&loopback_key(3)).len(), 1);

    // The leaf comes back (a new speaker: R bit set) announcing only .1.
    pair.leaf = Speaker::new(LEAF_AS);
    pair.leaf.add_peer(PeerConfig {
        remote: Remote::Interface("spine1".into()),
        session: config(LEAF_AS, Ipv4Addr::new(10, 255, 0, 1), RemoteAs::External),
    });
    pair.leaf.handle(
        pair.now,
        Input::Originate {
            key: loopback_key(1),
            route: loopback_route(1),
        },
    );
    pair.now += Duration::from_secs(2);
    pair.connect();
    assert_eq!(pair.state(), (State::Established, State::Established));
    assert_eq!(
        pair.spine.rib().selected(&loopback_key(1)).len(),
        1,
        "announced again"
    );
    assert!(
        pair.spine.rib().selected(&loopback_key(3)).is_empty(),
        "not announced again: flushed at End-of-RIB"
    );

    // A second drop, and no new session: the restart time ends it.
    pair.spine.handle(
        pair.now,
        Input::Peer {
            peer: PeerId(0),
            event: Event::Closed { conn: 1 },
        },
    );
    assert_eq!(pair.spine.rib().selected(&loopback_key(1)).len(), 1);
    pair.spine
        .handle(pair.now + Duration::from_secs(121), Input::Tick);
    assert!(pair.spine.rib().selected(&loopback_key(1)).is_empty());
}

/// Both sides connect at once (two TCP connections): one session results,
/// on the connection opened by the speaker with the higher BGP identifier,
/// and the other connection is closed with Cease / collision resolution.
#[test]
fn a_connection_collision_leaves_one_session() {
    let mut pair = Pair::new();
    let peer = PeerId(0);
    let now = pair.now;
    for speaker in [&mut pair.leaf, &mut pair.spine] {
        speaker.handle(
            now,
            Input::Peer {
                peer,
                event: Event::Start,
            },
        );
    }
    let connected = |conn, outgoing, local, remote| Event::Connected {
        conn,
        outgoing,
        local: IpAddr::V6(local),
        remote: IpAddr::V6(remote),
    };
    // Connection 1 opened by the leaf, connection 2 by the spine.
    let mut leaf_out = pair.leaf.handle(
        now,
        Input::Peer {
            peer,
            event: connected(1, true, LEAF_LL, SPINE_LL),
        },
    );
    leaf_out.extend(pair.leaf.handle(
        now,
        Input::Peer {
            peer,
            event: connected(2, false, LEAF_LL, SPINE_LL),
        },
    ));
    let mut spine_out = pair.spine.handle(
        now,
        Input::Peer {
            peer,
            event: connected(1, false, SPINE_LL, LEAF_LL),
        },
    );
    spine_out.extend(pair.spine.handle(
        now,
        Input::Peer {
            peer,
            event: connected(2, true, SPINE_LL, LEAF_LL),
        },
    ));
    // Deliver per connection, recording closes.
    let mut closed = Vec::new();
    let mut cease = 0;
    for _ in 0..20 {
        if leaf_out.is_empty() && spine_out.is_empty() {
            break;
        }
        let mut next_leaf = Vec::new();
        let mut next_spine = Vec::new();
        for (outputs, to_leaf) in [
            (std::mem::take(&mut leaf_out), false),
            (std::mem::take(&mut spine_out), true),
        ] {
            for output in outputs {
                match output {
                    Output::Send { conn, message, .. } => {
                        if let Message::Notification(n) = &message {
                            assert_eq!(n.code, rustbgpd_wire::NotificationCode::Cease);
                            assert_eq!(n.subcode, 7, "collision resolution");
                            cease += 1;
                        }
                        let input = Input::Peer {
                            peer,
                            event: Event::Received { conn, message },
                        };
                        if to_leaf {
                            next_leaf.extend(pair.leaf.handle(now, input));
                        } else {
                            next_spine.extend(pair.spine.handle(now, input));
                        }
                    }
                    Output::Close { conn, .. } => closed.push(conn),
                    _ => {}
                }
            }
        }
        leaf_out = next_leaf;
        spine_out = next_spine;
    }
    assert_eq!(pair.state(), (State::Established, State::Established));
    assert!(cease >= 1, "the losing connection got a NOTIFICATION");
    // The leaf's id (10.255.0.1) is higher than the spine's (10.254.0.1):
    // the connection the leaf opened (1) survives, the spine's (2) closes.
    assert!(closed.contains(&2) && !closed.contains(&1), "{closed:?}");
    assert_eq!(pair.leaf.view(now)[0].stats.established_transitions, 1);
}

/// A ROUTE-REFRESH from the peer gets every route of the family again and
/// an End-of-RIB.
#[test]
fn route_refresh_sends_the_table_again() {
    let mut pair = Pair::new();
    pair.connect();
    pair.originate_on_leaf(loopback_key(1), loopback_route(1));
    let out = pair.leaf.handle(
        pair.now,
        Input::Peer {
            peer: PeerId(0),
            event: Event::Received {
                conn: 1,
                message: Speaker::refresh_message(Family::Ipv4Unicast),
            },
        },
    );
    let updates: Vec<&Message> = out
        .iter()
        .filter_map(|o| match o {
            Output::Send { message, .. } => Some(message),
            _ => None,
        })
        .collect();
    assert_eq!(
        updates.len(),
        2,
        "the route again, then End-of-RIB: {updates:?}"
    );
    pair.pump(out, Vec::new());
    assert_eq!(pair.spine.rib().selected(&loopback_key(1)).len(), 1);
}
