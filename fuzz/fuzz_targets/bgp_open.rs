//! Bytes from a peer that has just connected, before any OPEN: framed and
//! decoded as on a real connection and handed to the session (OPEN
//! negotiation: version, AS, identifier, hold time, capabilities of every
//! kind). Nothing panics; a session only becomes Established through a
//! valid OPEN followed by a KEEPALIVE.
#![no_main]

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use libfuzzer_sys::fuzz_target;
use metalmesh_bgp::session::{Event, RemoteAs, SessionConfig, State};
use metalmesh_bgp::speaker::{Input, PeerConfig, Remote, Speaker};
use metalmesh_bgp::Family;
use rustbgpd_wire::{Message, decode_message};

fuzz_target!(|data: &[u8]| {
    let now = Instant::now();
    let mut speaker = Speaker::new(4_200_000_001);
    let peer = speaker.add_peer(PeerConfig {
        remote: Remote::Interface("spine1".into()),
        session: SessionConfig {
            local_as: 4_200_000_001,
            router_id: Ipv4Addr::new(10, 255, 0, 1),
            remote_as: RemoteAs::External,
            families: BTreeSet::from(Family::ALL),
            hold_time: Duration::from_secs(9),
            connect_retry: Duration::from_secs(1),
            passive: false,
            extended_next_hop: true,
            max_prefixes: 64,
        },
    });
    for event in [
        Event::Start,
        Event::Connected {
            conn: 1,
            outgoing: false,
            local: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 1)),
            remote: IpAddr::V6(Ipv6Addr::new(0xfe80, 0, 0, 0, 0, 0, 0, 2)),
        },
    ] {
        speaker.handle(now, Input::Peer { peer, event });
    }
    let mut bytes = Bytes::copy_from_slice(data);
    let mut opened = false;
    let mut confirmed = false;
    while !bytes.is_empty() {
        let Ok(message) = decode_message(&mut bytes, 4096) else {
            break;
        };
        confirmed |= opened && matches!(message, Message::Keepalive);
        opened |= matches!(message, Message::Open(_));
        speaker.handle(now, Input::Peer { peer, event: Event::Received { conn: 1, message } });
        let state = speaker.view(now)[0].state;
        if state == State::Established {
            assert!(confirmed, "Established without an OPEN and then a KEEPALIVE");
        }
    }
});
