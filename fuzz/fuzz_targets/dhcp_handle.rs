//! Any datagram given to the DHCP server yields replies or nothing, never a
//! panic; every reply it produces is a well-formed DHCP message.
#![no_main]

use std::net::Ipv4Addr;
use std::sync::OnceLock;
use std::sync::Mutex;

use dhcproto::{Decodable, Decoder};
use libfuzzer_sys::fuzz_target;
use metalmesh_provisioning::dhcp::{BootFiles, DhcpServer, DhcpSettings};

fn server() -> &'static Mutex<DhcpServer> {
    static SERVER: OnceLock<Mutex<DhcpServer>> = OnceLock::new();
    SERVER.get_or_init(|| {
        let settings = DhcpSettings {
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
            boot: BootFiles {
                bios: "undionly.kpxe".into(),
                uefi_x64: "ipxe.efi".into(),
                uefi_arm64: "ipxe-arm64.efi".into(),
                http_base: "http://10.100.1.1:8070".into(),
            },
        };
        Mutex::new(DhcpServer::new(settings, vec![], vec![]))
    })
}

fuzz_target!(|data: &[u8]| {
    // The first 8 bytes move the clock, so leases expire and rate limits refill.
    let (clock, datagram) = data.split_at(data.len().min(8));
    let mut now = [0u8; 8];
    now[..clock.len()].copy_from_slice(clock);
    let now_ms = 1_800_000_000_000 + (u64::from_le_bytes(now) % 10_000_000_000);
    let Ok(mut server) = server().lock() else { return };
    let outcome = server.handle(now_ms, std::net::Ipv4Addr::new(10, 0, 0, 10), datagram);
    for reply in outcome.replies {
        dhcproto::v4::Message::decode(&mut Decoder::new(&reply.bytes)).expect("reply must decode");
    }
});
