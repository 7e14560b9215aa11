//! A DHCPv4 load generator for `scripts/bench dhcp`: it plays a relay agent
//! (giaddr set, replies unicast to it) for many clients and runs complete
//! DISCOVER → OFFER → REQUEST → ACK exchanges with up to `--window` in
//! flight, as fast as the server answers, for a fixed time. Packets are
//! patched templates, so the generator spends little CPU per exchange and
//! the server, not the client, is what gets measured.
//!
//! It also checks what it was given: every ACK must name the client and the
//! address of its own exchange (`mismatched` otherwise), and no address may
//! be acknowledged to two clients in one run (`duplicates`); the summary
//! line prints both.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddrV4, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use dhcproto::Encodable;
use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode};

#[derive(Debug, Parser)]
#[command(about = "DHCPv4 DORA load generator (relay mode)")]
struct Args {
    /// The DHCP server.
    #[arg(long)]
    server: Ipv4Addr,
    /// Our address (giaddr); replies come back to it on port 67.
    #[arg(long)]
    relay: Ipv4Addr,
    /// Seconds to run.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Exchanges in flight at once.
    #[arg(long, default_value_t = 256)]
    window: usize,
    /// Distinct client MACs (at most the pool size, or the pool runs dry).
    #[arg(long, default_value_t = 50_000)]
    clients: u32,
    /// Milliseconds after which an unanswered exchange counts as lost.
    #[arg(long, default_value_t = 1000)]
    timeout_ms: u64,
}

const XID: std::ops::Range<usize> = 4..8;
const YIADDR: std::ops::Range<usize> = 16..20;
const CHADDR: std::ops::Range<usize> = 28..34;
const OPTIONS: usize = 240;

fn template(kind: MessageType, relay: Ipv4Addr, server: Ipv4Addr) -> Vec<u8> {
    let mut m = Message::new_with_id(
        0,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        relay,
        &[0, 0, 0, 0, 0, 0],
    );
    m.set_opcode(Opcode::BootRequest);
    m.set_hops(1);
    m.set_flags(Flags::default());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    if kind == MessageType::Request {
        m.opts_mut().insert(DhcpOption::ServerIdentifier(server));
        m.opts_mut()
            .insert(DhcpOption::RequestedIpAddress(Ipv4Addr::new(1, 2, 3, 4)));
    }
    m.to_vec().unwrap_or_default()
}

/// Offset of option `code`'s value in an encoded message.
fn option_at(packet: &[u8], code: u8) -> Option<usize> {
    let mut i = OPTIONS;
    while let Some(&c) = packet.get(i) {
        match c {
            0 => i += 1,
            255 => return None,
            _ => {
                let len = usize::from(*packet.get(i + 1)?);
                if c == code {
                    return Some(i + 2);
                }
                i += 2 + len;
            }
        }
    }
    None
}

#[derive(Debug)]
struct Flight {
    mac: [u8; 6],
    started: Instant,
    requested: bool,
    /// The address offered and requested.
    offered: [u8; 4],
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("metalmesh-dhcp-load: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: &Args) -> std::io::Result<()> {
    let socket = UdpSocket::bind(SocketAddrV4::new(args.relay, 67))?;
    socket.set_read_timeout(Some(Duration::from_millis(5)))?;
    let server = SocketAddrV4::new(args.server, 67);
    let discover = template(MessageType::Discover, args.relay, args.server);
    let request = template(MessageType::Request, args.relay, args.server);
    let requested_at =
        option_at(&request, 50).ok_or_else(|| std::io::Error::other("no option 50"))?;
    let mut flights: HashMap<u32, Flight> = HashMap::with_capacity(args.window * 2);
    let (mut xid, mut next_client) = (1u32, 0u32);
    let (mut acks, mut naks, mut lost, mut sent) = (0u64, 0u64, 0u64, 0u64);
    let (mut mismatched, mut duplicates) = (0u64, 0u64);
    // Who each acknowledged address went to.
    let mut holders: HashMap<[u8; 4], [u8; 6]> = HashMap::new();
    let mut buf = [0u8; 1500];
    let mut out = discover.clone();
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.seconds);
    let mut last_sweep = Instant::now();
    while Instant::now() < deadline {
        while flights.len() < args.window {
            let n = next_client % args.clients.max(1);
            next_client = next_client.wrapping_add(1);
            let mac = [
                0x02,
                0xbb,
                (n >> 24) as u8,
                (n >> 16) as u8,
                (n >> 8) as u8,
                n as u8,
            ];
            out.copy_from_slice(&discover);
            out[XID].copy_from_slice(&xid.to_be_bytes());
            out[CHADDR].copy_from_slice(&mac);
            socket.send_to(&out, server)?;
            sent += 1;
            flights.insert(
                xid,
                Flight {
                    mac,
                    started: Instant::now(),
                    requested: false,
                    offered: [0; 4],
                },
            );
            xid = xid.wrapping_add(1);
        }
        match socket.recv_from(&mut buf) {
            Ok((n, _)) => {
                let reply = &buf[..n];
                let Some(id) = reply
                    .get(XID)
                    .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
                else {
                    continue;
                };
                let kind = option_at(reply, 53).and_then(|i| reply.get(i)).copied();
                match (kind, flights.get_mut(&id)) {
                    (Some(2), Some(flight)) if !flight.requested => {
                        let mut req = request.clone();
                        req[XID].copy_from_slice(&id.to_be_bytes());
                        req[CHADDR].copy_from_slice(&flight.mac);
                        if let Some(yiaddr) = reply.get(YIADDR) {
                            req[requested_at..requested_at + 4].copy_from_slice(yiaddr);
                            flight.offered.copy_from_slice(yiaddr);
                        }
                        flight.requested = true;
                        socket.send_to(&req, server)?;
                        sent += 1;
                    }
                    (Some(5), Some(flight)) if flight.requested => {
                        let (mac, offered) = (flight.mac, flight.offered);
                        flights.remove(&id);
                        acks += 1;
                        let yiaddr: Option<[u8; 4]> =
                            reply.get(YIADDR).and_then(|b| b.try_into().ok());
                        let chaddr = reply.get(CHADDR);
                        if yiaddr != Some(offered) || chaddr != Some(&mac[..]) {
                            mismatched += 1;
                        } else if holders.insert(offered, mac).is_some_and(|m| m != mac) {
                            duplicates += 1;
                        }
                    }
                    (Some(6), Some(_)) => {
                        flights.remove(&id);
                        naks += 1;
                    }
                    _ => {}
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(e) => return Err(e),
        }
        if last_sweep.elapsed() > Duration::from_millis(100) {
            last_sweep = Instant::now();
            let timeout = Duration::from_millis(args.timeout_ms);
            let before = flights.len();
            flights.retain(|_, f| f.started.elapsed() < timeout);
            lost += (before - flights.len()) as u64;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!(
        "acks={acks} naks={naks} lost={lost} sent={sent} clients={} mismatched={mismatched} duplicates={duplicates} seconds={elapsed:.2} rate={:.0}",
        holders.len(),
        acks as f64 / elapsed
    );
    Ok(())
}
