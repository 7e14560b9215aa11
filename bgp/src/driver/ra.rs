//! IPv6 router advertisements on fabric ports: the unnumbered peer finds
//! us from ours, we find it from its. A received advertisement names the
//! peer's link-local address on that port; only link-local sources count
//! (RFC 4861 §6.1.2), and the socket is bound to the port, so the port an
//! address is learned on is where it was heard, not something a sender
//! can claim.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// ICMPv6 type of a router advertisement.
const ROUTER_ADVERTISEMENT: u8 = 134;
const ALL_NODES: Ipv6Addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1);

/// A peer's link-local address heard on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Heard {
    pub interface: String,
    pub address: Ipv6Addr,
}

/// The ifindex of `interface` (from sysfs: no ioctl needed).
pub fn ifindex(interface: &str) -> std::io::Result<u32> {
    let text = std::fs::read_to_string(format!("/sys/class/net/{interface}/ifindex"))?;
    text.trim()
        .parse()
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, format!("ifindex: {e}")))
}

/// The interface with `ifindex`, among `interfaces`.
pub fn interface_of(ifindex: u32, interfaces: &[String]) -> Option<String> {
    interfaces
        .iter()
        .find(|name| self::ifindex(name).ok() == Some(ifindex))
        .cloned()
}

/// A router advertisement with no prefixes and a zero router lifetime:
/// it announces a BGP speaker on the link without offering a default route.
fn advertisement() -> [u8; 16] {
    let mut packet = [0u8; 16];
    packet[0] = ROUTER_ADVERTISEMENT;
    // Checksum (bytes 2..4) is filled in by the kernel for ICMPv6 sockets.
    packet[4] = 64; // current hop limit
    // flags 0, router lifetime 0, reachable time 0, retransmit timer 0.
    packet
}

fn open(interface: &str) -> std::io::Result<UdpSocket> {
    let socket = Socket::new(Domain::IPV6, Type::RAW, Some(Protocol::ICMPV6))?;
    socket.bind_device(Some(interface.as_bytes()))?;
    // Neighbour discovery requires hop limit 255 (receivers drop others).
    socket.set_multicast_hops_v6(255)?;
    socket.set_unicast_hops_v6(255)?;
    // Our own advertisements are not news.
    socket.set_multicast_loop_v6(false)?;
    socket.set_nonblocking(true)?;
    UdpSocket::from_std(std::net::UdpSocket::from(socket))
}

/// Sends an advertisement on `interface` every `interval` and reports each
/// link-local address it hears one from. Ends when cancelled; an
/// interface that goes away is retried every interval.
pub async fn run(
    interface: String,
    interval: Duration,
    heard: mpsc::Sender<Heard>,
    cancel: CancellationToken,
) {
    let mut buffer = [0u8; 1500];
    loop {
        let socket = match open(&interface).and_then(|s| Ok((ifindex(&interface)?, s))) {
            Ok(socket) => socket,
            Err(error) => {
                tracing::warn!(%interface, %error, "router advertisements: cannot open the port");
                tokio::select! {
                    () = cancel.cancelled() => return,
                    () = tokio::time::sleep(interval) => continue,
                }
            }
        };
        let (index, socket) = socket;
        let target = SocketAddr::V6(SocketAddrV6::new(ALL_NODES, 0, 0, index));
        let mut timer = tokio::time::interval(interval);
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                _ = timer.tick() => {
                    if let Err(error) = socket.send_to(&advertisement(), target).await {
                        tracing::debug!(%interface, %error, "router advertisement not sent");
                        break;
                    }
                }
                received = socket.recv_from(&mut buffer) => match received {
                    Ok((len, SocketAddr::V6(from)))
                        if len >= 16
                            && buffer[0] == ROUTER_ADVERTISEMENT
                            && buffer[1] == 0
                            && from.ip().is_unicast_link_local() =>
                    {
                        let heard_one = Heard { interface: interface.clone(), address: *from.ip() };
                        if heard.send(heard_one).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(error) => {
                        tracing::debug!(%interface, %error, "router advertisements: receive failed");
                        break;
                    }
                },
            }
        }
        tokio::select! {
            () = cancel.cancelled() => return,
            () = tokio::time::sleep(interval) => {}
        }
    }
}
