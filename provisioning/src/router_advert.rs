//! IPv6 router advertisements on the provisioning bridge, saying only "no
//! router here, no DHCPv6": network boot firmware (iPXE) configures IPv6
//! alongside DHCPv4 and, without any advertisement, waits out its
//! router-solicitation timeout (about 15 s) before it fetches its boot
//! script. Answers router solicitations at once and repeats every 30 s.

use socket2::{Domain, Protocol, Socket, Type};
use std::io;
use std::io::Read;
use std::net::{Ipv6Addr, SocketAddrV6};
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

const ROUTER_SOLICITATION: u8 = 133;
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);
const PERIOD: Duration = Duration::from_secs(30);

/// The advertisement: hop limit 64, M=0 O=0 (no DHCPv6), router lifetime 0
/// (not a default router), no options. The kernel fills in the checksum.
pub fn advertisement() -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[0] = ROUTER_ADVERTISEMENT;
    packet[4] = 64;
    packet
}

/// Whether `packet` (an ICMPv6 message) is a router solicitation.
pub fn is_solicitation(packet: &[u8]) -> bool {
    packet.len() >= 8 && packet[0] == ROUTER_SOLICITATION && packet[1] == 0
}

fn open(interface: &str) -> io::Result<(Socket, u32)> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    // RFC 4861: advertisements are sent, and only accepted, with hop limit 255.
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    socket.set_multicast_loop_v6(false)?;
    // Wake up now and then to notice cancellation and the period.
    socket.set_read_timeout(Some(Duration::from_millis(500)))?;
    let index = metalmesh_packet_socket::interface_index(interface)?;
    Ok((socket, index))
}

/// Runs until cancelled (on a blocking thread: one socket, little traffic).
pub async fn serve(interface: String, cancel: CancellationToken) -> io::Result<()> {
    let (socket, index) = open(&interface)?;
    tracing::info!(%interface, "router advertisements (no router, no DHCPv6) running");
    tokio::task::spawn_blocking(move || {
        let target: socket2::SockAddr = SocketAddrV6::new(ALL_NODES, 0, 0, index).into();
        let packet = advertisement();
        let mut last_sent: Option<Instant> = None;
        let mut buffer = [0u8; 1500];
        while !cancel.is_cancelled() {
            let solicited = match (&socket).read(&mut buffer) {
                Ok(n) => is_solicitation(&buffer[..n]),
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock
                            | io::ErrorKind::TimedOut
                            | io::ErrorKind::Interrupted
                    ) =>
                {
                    false
                }
                Err(error) => return Err(error),
            };
            if solicited || last_sent.is_none_or(|at| at.elapsed() >= PERIOD) {
                if let Err(error) = socket.send_to(&packet, &target) {
                    tracing::debug!(%interface, %error, "router advertisement not sent");
                }
                last_sent = Some(Instant::now());
            }
        }
        Ok(())
    })
    .await
    .map_err(io::Error::other)?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advertisement_says_no_router_and_no_dhcpv6() {
        let packet = advertisement();
        assert_eq!(packet[0], ROUTER_ADVERTISEMENT);
        assert_eq!(packet[5] & 0xc0, 0, "M and O flags clear");
        assert_eq!(
            u16::from_be_bytes([packet[6], packet[7]]),
            0,
            "router lifetime 0"
        );
        assert!(is_solicitation(&[133, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[134, 0, 0, 0, 0, 0, 0, 0]));
        assert!(!is_solicitation(&[133, 0]));
    }
}
