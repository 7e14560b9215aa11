//! A BGP route injector for `scripts/bench bgp`: one eBGP session, then as
//! fast as the receiver reads, N IPv4 /32 routes and M EVPN type-5 routes,
//! every UPDATE encoded before the session opens so the injector spends no
//! time per route. The same injector feeds every speaker under test.
//!
//! Prints `established_ns=<unix ns>` when the session is up and
//! `sent_ns=<unix ns>` when the last UPDATE is written, then keeps the
//! session alive (KEEPALIVEs) until `--seconds` pass or stdin closes.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use clap::Parser;
use metalmesh_bgp::update::{Advertised, encode};
use metalmesh_bgp::{Family, NextHop, RouteKey};
use rustbgpd_wire::attribute::{AsPath, AsPathSegment, Origin, PathAttribute};
use rustbgpd_wire::nlri::Ipv4Prefix;
use rustbgpd_wire::{Capability, Message, OpenMessage, decode_message, encode_message};

#[derive(Debug, Parser)]
#[command(about = "BGP route injector (one eBGP session)")]
struct Args {
    /// The speaker under test.
    #[arg(long)]
    connect: SocketAddr,
    #[arg(long, default_value_t = 65001)]
    local_as: u32,
    /// Our BGP identifier and the routes' next hop.
    #[arg(long)]
    router_id: Ipv4Addr,
    /// IPv4 /32 routes (from 20.0.0.0).
    #[arg(long, default_value_t = 100_000)]
    ipv4: u32,
    /// EVPN type-5 /32 routes (from 30.0.0.0, VNI 10001).
    #[arg(long, default_value_t = 50_000)]
    evpn: u32,
    /// Keep the session this long after sending.
    #[arg(long, default_value_t = 600)]
    seconds: u64,
}

fn now_ns() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos())
}

fn updates(args: &Args) -> Vec<Vec<u8>> {
    let attributes = std::sync::Arc::new(metalmesh_bgp::route::Attributes {
        list: vec![
            PathAttribute::Origin(Origin::Igp),
            PathAttribute::AsPath(AsPath {
                segments: vec![AsPathSegment::AsSequence(vec![args.local_as])],
            }),
        ],
    });
    let mut routes = Vec::new();
    let base = u32::from(Ipv4Addr::new(20, 0, 0, 0));
    for i in 0..args.ipv4 {
        let prefix = Ipv4Prefix::new(Ipv4Addr::from(base + i), 32);
        routes.push((
            RouteKey::V4(prefix),
            Advertised {
                attributes: Arc::clone(&attributes),
                next_hop: NextHop::V4(args.router_id),
                evpn: None,
            },
        ));
    }
    let evpn_attributes = Arc::new(metalmesh_bgp::route::Attributes {
        list: {
            let mut list = attributes.list.clone();
            list.push(PathAttribute::ExtendedCommunities(
                metalmesh_bgp::evpn::communities(args.local_as, 10001, [2, 0, 0, 0, 0, 1]),
            ));
            list
        },
    });
    let base = u32::from(Ipv4Addr::new(30, 0, 0, 0));
    for i in 0..args.evpn {
        let route = metalmesh_bgp::evpn::type5(
            args.router_id,
            10001,
            IpAddr::V4(Ipv4Addr::from(base + i)),
            32,
        );
        routes.push((
            RouteKey::Evpn(route.key()),
            Advertised {
                attributes: Arc::clone(&evpn_attributes),
                next_hop: NextHop::V4(args.router_id),
                evpn: Some(Box::new(route)),
            },
        ));
    }
    let mut out: Vec<Vec<u8>> = encode(&routes, &[], true)
        .iter()
        .filter_map(|m| encode_message(m).ok().map(|b| b.to_vec()))
        .collect();
    // End-of-RIB for both families.
    for family in [Family::Ipv4Unicast, Family::L2vpnEvpn] {
        if let Ok(bytes) = encode_message(&metalmesh_bgp::update::end_of_rib(family, true)) {
            out.push(bytes.to_vec());
        }
    }
    out
}

fn read_message(stream: &mut TcpStream) -> std::io::Result<Message> {
    let mut header = [0u8; 19];
    stream.read_exact(&mut header)?;
    let len = usize::from(u16::from_be_bytes([header[16], header[17]]));
    let mut whole = header.to_vec();
    whole.resize(len.max(19), 0);
    stream.read_exact(&mut whole[19..])?;
    decode_message(&mut Bytes::from(whole), 4096)
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e.to_string()))
}

fn run(args: &Args) -> Result<(), String> {
    let messages = updates(args);
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut stream = loop {
        match TcpStream::connect_timeout(&args.connect, Duration::from_secs(1)) {
            Ok(stream) => break stream,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(100)),
            Err(e) => return Err(format!("connect {}: {e}", args.connect)),
        }
    };
    let mut capabilities = vec![
        Capability::FourOctetAs { asn: args.local_as },
        Capability::RouteRefresh,
    ];
    for family in [Family::Ipv4Unicast, Family::L2vpnEvpn] {
        let (afi, safi) = family.afi_safi();
        capabilities.push(Capability::MultiProtocol { afi, safi });
    }
    let open = Message::Open(OpenMessage {
        version: 4,
        my_as: u16::try_from(args.local_as).unwrap_or(23456),
        hold_time: 90,
        bgp_identifier: args.router_id,
        capabilities,
    });
    let write = |stream: &mut TcpStream, message: &Message| {
        let bytes = encode_message(message).map_err(|e| e.to_string())?;
        stream.write_all(&bytes).map_err(|e| e.to_string())
    };
    write(&mut stream, &open)?;
    let mut opened = false;
    loop {
        match read_message(&mut stream).map_err(|e| format!("reading: {e}"))? {
            Message::Open(_) => {
                opened = true;
                write(&mut stream, &Message::Keepalive)?;
            }
            Message::Keepalive if opened => break,
            Message::Notification(n) => {
                return Err(format!("NOTIFICATION {:?}/{}", n.code, n.subcode));
            }
            _ => {}
        }
    }
    println!("established_ns={}", now_ns());
    // Read (and drop) what the peer sends, so its writes never block.
    let mut reader = stream.try_clone().map_err(|e| e.to_string())?;
    let closed = Arc::new(AtomicBool::new(false));
    {
        let closed = Arc::clone(&closed);
        std::thread::spawn(move || {
            let mut sink = [0u8; 65536];
            while matches!(reader.read(&mut sink), Ok(n) if n > 0) {}
            closed.store(true, Ordering::SeqCst);
        });
    }
    let batch: Vec<u8> = messages.concat();
    stream
        .write_all(&batch)
        .map_err(|e| format!("sending: {e}"))?;
    println!("sent_ns={} messages={}", now_ns(), messages.len());
    let _ = std::io::stdout().flush();
    // Keep the session up until told to stop.
    let (stop_tx, stop) = std::sync::mpsc::channel::<()>();
    std::thread::spawn(move || {
        let mut buffer = [0u8; 64];
        while matches!(std::io::stdin().read(&mut buffer), Ok(n) if n > 0) {}
        let _ = stop_tx.send(());
    });
    let end = Instant::now() + Duration::from_secs(args.seconds);
    while Instant::now() < end && !closed.load(Ordering::SeqCst) {
        if stop.recv_timeout(Duration::from_secs(1)).is_ok() {
            break;
        }
        write(&mut stream, &Message::Keepalive)?;
    }
    if closed.load(Ordering::SeqCst) {
        return Err("the peer closed the session".into());
    }
    Ok(())
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("metalmesh-bgp-inject: {error}");
            ExitCode::FAILURE
        }
    }
}
