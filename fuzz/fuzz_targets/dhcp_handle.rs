//! A fresh DHCP server per input, driven by a sequence of datagrams from
//! three bridge ports (and from no known port) over a moving clock. It
//! never panics, every reply decodes, and after every datagram the server's
//! state keeps its promises: no address bound to two MACs, every lease in
//! the pool, no port holding more than its quota, every ACK carrying the
//! address just leased to its client.
//!
//! Input: records of `[port: u8][clock advance ms: u16 LE][length: u16 LE]
//! [datagram]`; port `n % 4` is none, swp1, swp2 or swp3.
#![no_main]

use std::collections::HashMap;
use std::net::Ipv4Addr;

use dhcproto::v4::{Message, MessageType};
use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;
use metalmesh_provisioning::dhcp::leases::{LeaseState, Write};
use metalmesh_provisioning::dhcp::{BootFiles, DhcpServer, DhcpSettings, Origin};

fn settings() -> DhcpSettings {
    DhcpSettings {
        server_ip: Ipv4Addr::new(10, 100, 1, 1),
        prefix_len: 24,
        pool_start: Ipv4Addr::new(10, 100, 1, 100),
        pool_end: Ipv4Addr::new(10, 100, 1, 110),
        routers: vec![Ipv4Addr::new(10, 100, 1, 1)],
        dns: vec![],
        ntp: vec![],
        domain: Some("fuzz".into()),
        lease_secs: 600,
        offer_hold_secs: 30,
        decline_quarantine_secs: 600,
        requests_per_mac_per_sec: 1000,
        requests_per_port_per_sec: 1000,
        leases_per_port: 3,
        boot: BootFiles {
            bios: "undionly.kpxe".into(),
            uefi_x64: "ipxe.efi".into(),
            uefi_arm64: "ipxe-arm64.efi".into(),
            http_base: "http://10.100.1.1:8070".into(),
        },
    }
}

fn check(server: &DhcpServer, now_ms: u64) {
    let now = now_ms / 1000;
    let settings = server.settings();
    let mut owners: HashMap<Ipv4Addr, &str> = HashMap::new();
    let mut per_port: HashMap<&str, u32> = HashMap::new();
    for lease in server.leases() {
        assert!(settings.in_pool(lease.ip), "lease outside the pool: {lease:?}");
        if lease.state == LeaseState::Bound && lease.expires > now {
            if let Some(other) = owners.insert(lease.ip, &lease.mac) {
                panic!("{} bound to {other} and {}", lease.ip, lease.mac);
            }
            if let Some(port) = &lease.port {
                *per_port.entry(port).or_default() += 1;
            }
        }
    }
    for (port, n) in per_port {
        assert!(n <= settings.leases_per_port, "{port} holds {n} leases");
    }
}

fuzz_target!(|data: &[u8]| {
    let mut server = DhcpServer::new(settings(), vec![], vec![]);
    let mut now_ms = 1_800_000_000_000u64;
    let mut rest = data;
    for _ in 0..64 {
        let [port, a0, a1, l0, l1, tail @ ..] = rest else { break };
        let len = usize::from(u16::from_le_bytes([*l0, *l1])).min(tail.len());
        let (datagram, after) = tail.split_at(len);
        rest = after;
        now_ms += u64::from(u16::from_le_bytes([*a0, *a1])) * 50;
        let address = Ipv4Addr::new(10, 100, 1, 100 + port % 16);
        let port = match port % 4 {
            0 => None,
            n => Some(format!("swp{n}")),
        };
        let origin = Origin { address, port };
        let outcome = server.handle(now_ms, &origin, datagram);
        let leased: HashMap<&str, Ipv4Addr> = outcome
            .writes
            .iter()
            .filter_map(|w| match w {
                Write::Lease(l) if l.state == LeaseState::Bound => Some((l.mac.as_str(), l.ip)),
                _ => None,
            })
            .collect();
        for reply in &outcome.replies {
            let message = Message::decode(&mut Decoder::new(&reply.bytes)).expect("reply must decode");
            if message.opts().msg_type() == Some(MessageType::Ack) && !message.yiaddr().is_unspecified() {
                let mac = metalmesh_lldp::format_mac(&message.chaddr()[..6]);
                assert_eq!(leased.get(mac.as_str()), Some(&message.yiaddr()), "ACK without its lease");
            }
        }
        check(&server, now_ms);
    }
});
