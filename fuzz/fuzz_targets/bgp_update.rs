//! Bytes after an established session's handshake, as a peer would send
//! them: framed and decoded as on a real connection, then handed to the
//! speaker (UPDATEs with IPv4, IPv6 and EVPN NLRI, RFC 7606 handling, the
//! RIB, the advertisements to a second peer). Nothing panics, and the
//! speaker never holds more paths from the peer than its limit.
#![no_main]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use metalmesh_bgp::session::{Event, RemoteAs, SessionConfig};
use metalmesh_bgp::speaker::{Input, PeerConfig, Remote, Speaker};
use metalmesh_bgp::{Family, PeerId, Source};
use rustbgpd_wire::{Capability, Message, OpenMessage, decode_message};

const LIMIT: usize = 64;

fn session(local_as: u32) -> SessionConfig {
    SessionConfig {
        local_as,
        router_id: Ipv4Addr::new(10, 255, 0, 1),
        remote_as: RemoteAs::External,
        families: BTreeSet::from(Family::ALL),
        hold_time: Duration::from_secs(9),
        connect_retry: Duration::from_secs(1),
        passive: false,
        extended_next_hop: true,
        max_prefixes: LIMIT,
    }
}

fn open() -> Message {
    let mut capabilities = vec![Capability::FourOctetAs { asn: 65000 }];
    for family in Family::ALL {
        let (afi, safi) = family.afi_safi();
        capabilities.push(Capability::MultiProtocol { afi, safi });
    }
    Message::Open(OpenMessage {
        version: 4,
        my_as: 65000,
        hold_time: 9,
        bgp_identifier: Ipv4Addr::new(10, 254, 0, 1),
        capabilities,
    })
}

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut speaker = Speaker::new(4_200_000_001);
    for name in ["spine1", "spine2"] {
        speaker.add_peer(PeerConfig {
            remote: Remote::Interface(name.into()),
            session: session(4_200_000_001),
        });
    }
    for peer in [PeerId(0), PeerId(1)] {
        let conn = u64::from(peer.0) + 1;
        let events = [
            Event::Start,
            Event::Connected {
                conn,
                outgoing: true,
                local: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
                remote: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2)),
            },
            Event::Received { conn, message: open() },
            Event::Received { conn, message: Message::Keepalive },
        ];
        for event in events {
            speaker.handle(now, Input::Peer { peer, event });
        }
    }
    let mut bytes = Bytes::copy_from_slice(data);
    while !bytes.is_empty() {
        let message = match decode_message(&mut bytes, 4096) {
            Ok(message) => message,
            Err(_) => break,
        };
        speaker.handle(now, Input::Peer { peer: PeerId(0), event: Event::Received { conn: 1, message } });
        for family in Family::ALL {
            assert!(speaker.rib().count(Source::Peer(PeerId(0)), family) <= LIMIT);
        }
    }
});
