//! The LLDP agent as an I/O-free state machine: ports come and go, frames
//! arrive, time passes; it answers with frames to transmit and neighbour
//! events. The tokio task in `task.rs` only moves bytes and time in and out.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::time::{Duration, Instant, SystemTime};

use metalmesh_lldp::{
    Capabilities, ChassisId, DecodeError, Frame, Lldpdu, MULTICAST_MAC, ManagementAddress, PortId,
};
use serde::{Deserialize, Serialize};

/// What this switch says about itself.
#[derive(Debug, Clone)]
pub struct LocalSystem {
    pub name: String,
    pub description: String,
    pub chassis_mac: [u8; 6],
    pub management_address: Option<IpAddr>,
    /// ifindex the management address lives on (the loopback).
    pub management_ifindex: u32,
}

#[derive(Debug, Clone)]
pub struct Settings {
    pub tx_interval: Duration,
    pub hold_multiplier: u32,
    pub max_neighbors_per_port: usize,
}

impl Settings {
    /// TTL advertised: interval × hold, plus one second so that a neighbour
    /// never ages us out between two on-time frames (802.1AB §9.2.5.22).
    pub fn ttl(&self) -> u16 {
        let secs = self.tx_interval.as_secs() * u64::from(self.hold_multiplier) + 1;
        u16::try_from(secs).unwrap_or(u16::MAX)
    }
}

/// A neighbour learnt on a port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Neighbor {
    /// Our port it was heard on.
    pub local_port: String,
    pub source_mac: String,
    pub chassis_id: String,
    pub chassis_id_subtype: String,
    pub port_id: String,
    pub port_id_subtype: String,
    pub port_description: Option<String>,
    pub system_name: Option<String>,
    pub system_description: Option<String>,
    pub capabilities: Vec<String>,
    pub enabled_capabilities: Vec<String>,
    pub management_addresses: Vec<String>,
    pub port_vlan_id: Option<u16>,
    pub max_frame_size: Option<u16>,
    pub ttl_secs: u16,
    /// Seconds since the Unix epoch.
    pub first_seen: u64,
    pub last_seen: u64,
    /// When it ages out unless heard again (seconds since the Unix epoch).
    pub expires_at: u64,
    #[serde(skip)]
    expires: Option<Instant>,
    #[serde(skip)]
    lldpdu: Option<Lldpdu>,
}

impl Neighbor {
    /// Seconds until this neighbour ages out.
    pub fn expires_in(&self, now: Instant) -> u64 {
        self.expires
            .map(|e| e.saturating_duration_since(now).as_secs())
            .unwrap_or(0)
    }
}

/// Why a neighbour went away.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GoneReason {
    /// Its TTL ran out without a new frame.
    Expired,
    /// It announced shutdown (TTL 0).
    Shutdown,
    /// Our port went down or was removed.
    PortDown,
}

/// Receive and transmit counters (802.1AB statistics, plus metalmesh's).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counters {
    pub frames_out: u64,
    pub frames_in: u64,
    /// Frames dropped as malformed (truncated, bad lengths, missing or duplicate TLVs).
    pub frames_discarded: u64,
    /// Frames dropped because they exceed the maximum LLDP frame size.
    pub frames_oversized: u64,
    /// TLVs received that metalmesh keeps raw.
    pub tlvs_unrecognized: u64,
    pub neighbors_added: u64,
    pub neighbors_aged_out: u64,
    /// New neighbours refused because the port already had the maximum.
    pub neighbors_refused: u64,
    pub transmit_errors: u64,
    /// Frames dropped because a port received more than LLDP ever sends.
    pub frames_rate_limited: u64,
}

/// Inputs to the machine.
#[derive(Debug)]
pub enum Input<'a> {
    /// A selected port is up (or came up, or changed MAC).
    PortUp { port: String, mac: [u8; 6] },
    /// A selected port went down or disappeared.
    PortDown { port: String },
    /// A frame was received on a port.
    Frame { port: &'a str, bytes: &'a [u8] },
    /// A transmission failed; counted.
    TransmitFailed { port: &'a str },
    /// Time passed; run timers.
    Tick,
}

/// What the machine asks its driver to do or to tell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    Transmit {
        port: String,
        frame: Vec<u8>,
    },
    Added(Neighbor),
    Changed(Neighbor),
    Gone {
        neighbor: Neighbor,
        reason: GoneReason,
    },
}

#[derive(Debug)]
struct PortTx {
    mac: [u8; 6],
    next_tx: Instant,
    /// Receive token bucket: a flood on one port costs bounded work.
    tokens: f64,
    refilled: Instant,
}

/// Frames accepted per port per second (LLDP sends one per interval, a few
/// during fast start) and the burst allowed.
const RX_PER_SEC: f64 = 10.0;
const RX_BURST: f64 = 20.0;

/// Neighbours are keyed by port and MSAP (chassis ID + port ID, each with
/// its subtype as the first byte).
type Key = (String, Vec<u8>, Vec<u8>);

fn msap(pdu: &Lldpdu) -> (Vec<u8>, Vec<u8>) {
    let mut chassis = vec![pdu.chassis_id.subtype.to_u8()];
    chassis.extend_from_slice(&pdu.chassis_id.value);
    let mut port = vec![pdu.port_id.subtype.to_u8()];
    port.extend_from_slice(&pdu.port_id.value);
    (chassis, port)
}

#[derive(Debug)]
pub struct LldpMachine {
    local: LocalSystem,
    settings: Settings,
    ports: BTreeMap<String, PortTx>,
    neighbors: BTreeMap<Key, Neighbor>,
    counters: Counters,
    wall: WallAnchor,
}

/// One reading of both clocks, taken by the driver: the machine derives the
/// wall-clock times it shows (first/last seen) from the `Instant`s it is
/// handed, so it reads no clock itself and replays exactly.
#[derive(Debug, Clone, Copy)]
pub struct WallAnchor {
    pub instant: Instant,
    pub unix_secs: u64,
}

impl WallAnchor {
    /// Both clocks now (drivers only).
    pub fn now() -> WallAnchor {
        WallAnchor {
            instant: Instant::now(),
            unix_secs: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
        }
    }

    /// `at` in seconds since the Unix epoch.
    fn unix_at(&self, at: Instant) -> u64 {
        self.unix_secs + at.saturating_duration_since(self.instant).as_secs()
    }
}

impl LldpMachine {
    pub fn new(local: LocalSystem, settings: Settings, wall: WallAnchor) -> Self {
        LldpMachine {
            local,
            settings,
            ports: BTreeMap::new(),
            neighbors: BTreeMap::new(),
            counters: Counters::default(),
            wall,
        }
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    pub fn neighbors(&self) -> impl Iterator<Item = &Neighbor> {
        self.neighbors.values()
    }

    pub fn ports(&self) -> impl Iterator<Item = &str> {
        self.ports.keys().map(String::as_str)
    }

    /// When the machine next needs a `Tick`.
    pub fn next_wakeup(&self) -> Option<Instant> {
        let tx = self.ports.values().map(|p| p.next_tx);
        let expiry = self.neighbors.values().filter_map(|n| n.expires);
        tx.chain(expiry).min()
    }

    pub fn handle(&mut self, now: Instant, input: Input<'_>) -> Vec<Output> {
        let mut out = Vec::new();
        match input {
            Input::PortUp { port, mac } => {
                // A port that comes up (or changes address) announces itself at once.
                let changed = self.ports.get(&port).is_none_or(|p| p.mac != mac);
                if changed {
                    self.ports.insert(
                        port.clone(),
                        PortTx {
                            mac,
                            next_tx: now,
                            tokens: RX_BURST,
                            refilled: now,
                        },
                    );
                    self.transmit_due(now, &mut out);
                }
            }
            Input::PortDown { port } => {
                if self.ports.remove(&port).is_some() {
                    self.forget_port(&port, &mut out);
                }
            }
            Input::Frame { port, bytes } => self.receive(now, port, bytes, &mut out),
            Input::TransmitFailed { .. } => self.counters.transmit_errors += 1,
            Input::Tick => {
                self.expire(now, &mut out);
                self.transmit_due(now, &mut out);
            }
        }
        out
    }

    /// Frames announcing shutdown (TTL 0) on every port, for a clean stop.
    pub fn shutdown(&mut self) -> Vec<Output> {
        let ports: Vec<(String, [u8; 6])> =
            self.ports.iter().map(|(n, p)| (n.clone(), p.mac)).collect();
        ports
            .into_iter()
            .filter_map(|(port, mac)| {
                self.frame(&port, mac, 0)
                    .map(|frame| Output::Transmit { port, frame })
            })
            .collect()
    }

    fn frame(&self, port: &str, mac: [u8; 6], ttl: u16) -> Option<Vec<u8>> {
        let mut pdu = Lldpdu::new(
            ChassisId::mac(self.local.chassis_mac),
            PortId::interface_name(port),
            ttl,
        );
        pdu.port_description = Some(port.to_string());
        pdu.system_name = Some(self.local.name.clone());
        pdu.system_description = Some(self.local.description.clone());
        pdu.capabilities = Some(Capabilities {
            supported: Capabilities::BRIDGE | Capabilities::ROUTER,
            enabled: Capabilities::ROUTER,
        });
        if let Some(address) = self.local.management_address {
            pdu.management_addresses.push(ManagementAddress::ip(
                address,
                self.local.management_ifindex,
            ));
        }
        let frame = Frame {
            destination: MULTICAST_MAC,
            source: mac,
            lldpdu: pdu,
        };
        match frame.encode() {
            Ok(bytes) => Some(bytes),
            Err(error) => {
                tracing::error!(%error, port, "cannot encode our own LLDPDU");
                None
            }
        }
    }

    fn transmit_due(&mut self, now: Instant, out: &mut Vec<Output>) {
        let ttl = self.settings.ttl();
        let due: Vec<(String, [u8; 6])> = self
            .ports
            .iter()
            .filter(|(_, p)| p.next_tx <= now)
            .map(|(n, p)| (n.clone(), p.mac))
            .collect();
        for (port, mac) in due {
            if let Some(frame) = self.frame(&port, mac, ttl) {
                self.counters.frames_out += 1;
                out.push(Output::Transmit {
                    port: port.clone(),
                    frame,
                });
            }
            if let Some(p) = self.ports.get_mut(&port) {
                p.next_tx = now + self.settings.tx_interval;
            }
        }
    }

    fn receive(&mut self, now: Instant, port: &str, bytes: &[u8], out: &mut Vec<Output>) {
        let Some(tx) = self.ports.get_mut(port) else {
            return;
        };
        let elapsed = now.saturating_duration_since(tx.refilled).as_secs_f64();
        tx.tokens = (tx.tokens + elapsed * RX_PER_SEC).min(RX_BURST);
        tx.refilled = now;
        if tx.tokens < 1.0 {
            self.counters.frames_rate_limited += 1;
            return;
        }
        tx.tokens -= 1.0;
        let frame = match Frame::decode(bytes) {
            Ok(frame) => frame,
            Err(DecodeError::Oversized(_)) => {
                self.counters.frames_oversized += 1;
                tracing::debug!(port, len = bytes.len(), "oversized LLDP frame dropped");
                return;
            }
            Err(error) => {
                self.counters.frames_discarded += 1;
                tracing::debug!(port, %error, "malformed LLDP frame dropped");
                return;
            }
        };
        self.counters.frames_in += 1;
        self.counters.tlvs_unrecognized += frame.lldpdu.unknown.len() as u64;
        let pdu = frame.lldpdu;
        let (chassis, remote_port) = msap(&pdu);
        let key: Key = (port.to_string(), chassis, remote_port);
        if pdu.ttl == 0 {
            if let Some(neighbor) = self.neighbors.remove(&key) {
                out.push(Output::Gone {
                    neighbor,
                    reason: GoneReason::Shutdown,
                });
            }
            return;
        }
        let expires = now + Duration::from_secs(u64::from(pdu.ttl));
        let unix = self.wall.unix_at(now);
        if let Some(existing) = self.neighbors.get_mut(&key) {
            let changed = existing.lldpdu.as_ref() != Some(&pdu);
            existing.expires = Some(expires);
            existing.last_seen = unix;
            existing.expires_at = unix + u64::from(pdu.ttl);
            if changed {
                let first_seen = existing.first_seen;
                *existing = neighbor_view(port, &frame.source, pdu, first_seen, unix, expires);
                out.push(Output::Changed(existing.clone()));
            } else {
                existing.ttl_secs = pdu.ttl;
            }
            return;
        }
        let on_port = self.neighbors.keys().filter(|k| k.0 == port).count();
        if on_port >= self.settings.max_neighbors_per_port {
            self.counters.neighbors_refused += 1;
            return;
        }
        let neighbor = neighbor_view(port, &frame.source, pdu, unix, unix, expires);
        self.counters.neighbors_added += 1;
        self.neighbors.insert(key, neighbor.clone());
        out.push(Output::Added(neighbor));
    }

    fn expire(&mut self, now: Instant, out: &mut Vec<Output>) {
        let expired: Vec<Key> = self
            .neighbors
            .iter()
            .filter(|(_, n)| n.expires.is_some_and(|e| e <= now))
            .map(|(k, _)| k.clone())
            .collect();
        for key in expired {
            if let Some(neighbor) = self.neighbors.remove(&key) {
                self.counters.neighbors_aged_out += 1;
                out.push(Output::Gone {
                    neighbor,
                    reason: GoneReason::Expired,
                });
            }
        }
    }

    fn forget_port(&mut self, port: &str, out: &mut Vec<Output>) {
        let keys: Vec<Key> = self
            .neighbors
            .keys()
            .filter(|k| k.0 == port)
            .cloned()
            .collect();
        for key in keys {
            if let Some(neighbor) = self.neighbors.remove(&key) {
                out.push(Output::Gone {
                    neighbor,
                    reason: GoneReason::PortDown,
                });
            }
        }
    }
}

/// What a neighbour says, made safe to print on an operator's terminal:
/// control characters (escape sequences) become `?`.
fn printable(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '?' } else { c })
        .collect()
}

fn subtype_name<T: Serialize>(subtype: &T) -> String {
    serde_json::to_value(subtype)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_else(|| "other".into())
}

fn neighbor_view(
    port: &str,
    source: &[u8; 6],
    pdu: Lldpdu,
    first_seen: u64,
    last_seen: u64,
    expires: Instant,
) -> Neighbor {
    let caps = pdu.capabilities.unwrap_or(Capabilities {
        supported: 0,
        enabled: 0,
    });
    Neighbor {
        local_port: port.to_string(),
        source_mac: metalmesh_lldp::format_mac(source),
        chassis_id: printable(&pdu.chassis_id.to_string()),
        chassis_id_subtype: subtype_name(&pdu.chassis_id.subtype),
        port_id: printable(&pdu.port_id.to_string()),
        port_id_subtype: subtype_name(&pdu.port_id.subtype),
        port_description: pdu.port_description.as_deref().map(printable),
        system_name: pdu.system_name.as_deref().map(printable),
        system_description: pdu.system_description.as_deref().map(printable),
        capabilities: Capabilities::names(caps.supported)
            .into_iter()
            .map(String::from)
            .collect(),
        enabled_capabilities: Capabilities::names(caps.enabled)
            .into_iter()
            .map(String::from)
            .collect(),
        management_addresses: pdu
            .management_addresses
            .iter()
            .filter_map(|m| m.as_ip().map(|ip| ip.to_string()))
            .collect(),
        port_vlan_id: pdu.port_vlan_id,
        max_frame_size: pdu.max_frame_size,
        ttl_secs: pdu.ttl,
        first_seen,
        last_seen,
        expires_at: last_seen + u64::from(pdu.ttl),
        expires: Some(expires),
        lldpdu: Some(pdu),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const OUR_MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
    const PEER_MAC: [u8; 6] = [2, 0, 0, 0, 0, 2];

    fn machine() -> LldpMachine {
        LldpMachine::new(
            LocalSystem {
                name: "leaf1".into(),
                description: "metalmesh-agent".into(),
                chassis_mac: OUR_MAC,
                management_address: Some(IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1))),
                management_ifindex: 1,
            },
            Settings {
                tx_interval: Duration::from_secs(30),
                hold_multiplier: 4,
                max_neighbors_per_port: 2,
            },
            WallAnchor {
                instant: Instant::now(),
                unix_secs: 1_800_000_000,
            },
        )
    }

    fn peer_frame(port_id: &str, ttl: u16, name: &str) -> Vec<u8> {
        let mut pdu = Lldpdu::new(
            ChassisId::mac(PEER_MAC),
            PortId::interface_name(port_id),
            ttl,
        );
        pdu.system_name = Some(name.into());
        Frame {
            destination: MULTICAST_MAC,
            source: PEER_MAC,
            lldpdu: pdu,
        }
        .encode()
        .unwrap()
    }

    fn transmits(out: &[Output]) -> Vec<&str> {
        out.iter()
            .filter_map(|o| match o {
                Output::Transmit { port, .. } => Some(port.as_str()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn port_up_transmits_at_once_then_every_interval() {
        let mut m = machine();
        let t0 = Instant::now();
        let out = m.handle(
            t0,
            Input::PortUp {
                port: "swp1".into(),
                mac: OUR_MAC,
            },
        );
        assert_eq!(transmits(&out), ["swp1"]);
        let Output::Transmit { frame, .. } = &out[0] else {
            unreachable!()
        };
        let sent = Frame::decode(frame).unwrap();
        assert_eq!(sent.lldpdu.system_name.as_deref(), Some("leaf1"));
        assert_eq!(sent.lldpdu.port_id.to_string(), "swp1");
        assert_eq!(sent.lldpdu.chassis_id.to_string(), "02:00:00:00:00:01");
        assert_eq!(sent.lldpdu.ttl, 121);
        assert_eq!(
            sent.lldpdu.management_addresses[0].as_ip(),
            Some(IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)))
        );
        // The same port again is not a change.
        assert!(
            m.handle(
                t0,
                Input::PortUp {
                    port: "swp1".into(),
                    mac: OUR_MAC
                }
            )
            .is_empty()
        );
        assert!(transmits(&m.handle(t0 + Duration::from_secs(29), Input::Tick)).is_empty());
        assert_eq!(m.next_wakeup(), Some(t0 + Duration::from_secs(30)));
        assert_eq!(
            transmits(&m.handle(t0 + Duration::from_secs(30), Input::Tick)),
            ["swp1"]
        );
        assert_eq!(m.counters().frames_out, 2);
    }

    #[test]
    fn neighbor_added_changed_refreshed_and_aged_out() {
        let mut m = machine();
        let t0 = Instant::now();
        m.handle(
            t0,
            Input::PortUp {
                port: "swp1".into(),
                mac: OUR_MAC,
            },
        );
        let frame = peer_frame("eth0", 10, "server1");
        let out = m.handle(
            t0,
            Input::Frame {
                port: "swp1",
                bytes: &frame,
            },
        );
        let [Output::Added(n)] = out.as_slice() else {
            panic!("{out:?}")
        };
        assert_eq!(n.system_name.as_deref(), Some("server1"));
        assert_eq!(n.port_id, "eth0");
        assert_eq!(n.chassis_id, "02:00:00:00:00:02");
        // Wall-clock times come from the instants handed in.
        assert_eq!((n.first_seen, n.expires_at), (1_800_000_000, 1_800_000_010));
        // Same content: a refresh, no event.
        let t1 = t0 + Duration::from_secs(8);
        assert!(
            m.handle(
                t1,
                Input::Frame {
                    port: "swp1",
                    bytes: &frame
                }
            )
            .is_empty()
        );
        let refreshed = m.neighbors().next().map(|n| (n.first_seen, n.last_seen));
        assert_eq!(refreshed, Some((1_800_000_000, 1_800_000_008)));
        // The refresh moved the expiry: still there at t0 + 12.
        assert!(
            m.handle(t0 + Duration::from_secs(12), Input::Tick)
                .iter()
                .all(|o| !matches!(o, Output::Gone { .. }))
        );
        // New content: changed.
        let renamed = peer_frame("eth0", 10, "server1.example");
        let out = m.handle(
            t1,
            Input::Frame {
                port: "swp1",
                bytes: &renamed,
            },
        );
        assert!(
            matches!(out.as_slice(), [Output::Changed(n)] if n.system_name.as_deref() == Some("server1.example"))
        );
        // Aged out after the TTL.
        let out = m.handle(t1 + Duration::from_secs(10), Input::Tick);
        assert!(out.iter().any(|o| matches!(
            o,
            Output::Gone {
                reason: GoneReason::Expired,
                ..
            }
        )));
        assert_eq!(m.neighbors().count(), 0);
        assert_eq!(m.counters().neighbors_aged_out, 1);
    }

    #[test]
    fn shutdown_frame_and_port_down_remove_neighbors() {
        let mut m = machine();
        let t0 = Instant::now();
        m.handle(
            t0,
            Input::PortUp {
                port: "swp1".into(),
                mac: OUR_MAC,
            },
        );
        m.handle(
            t0,
            Input::Frame {
                port: "swp1",
                bytes: &peer_frame("eth0", 120, "a"),
            },
        );
        let out = m.handle(
            t0,
            Input::Frame {
                port: "swp1",
                bytes: &peer_frame("eth0", 0, "a"),
            },
        );
        assert!(matches!(
            out.as_slice(),
            [Output::Gone {
                reason: GoneReason::Shutdown,
                ..
            }]
        ));
        m.handle(
            t0,
            Input::Frame {
                port: "swp1",
                bytes: &peer_frame("eth0", 120, "a"),
            },
        );
        let out = m.handle(
            t0,
            Input::PortDown {
                port: "swp1".into(),
            },
        );
        assert!(matches!(
            out.as_slice(),
            [Output::Gone {
                reason: GoneReason::PortDown,
                ..
            }]
        ));
        // Frames on ports we do not run on are ignored.
        assert!(
            m.handle(
                t0,
                Input::Frame {
                    port: "swp1",
                    bytes: &peer_frame("eth0", 120, "a")
                }
            )
            .is_empty()
        );
    }

    #[test]
    fn bad_frames_are_counted_not_fatal() {
        let mut m = machine();
        let t0 = Instant::now();
        m.handle(
            t0,
            Input::PortUp {
                port: "swp1".into(),
                mac: OUR_MAC,
            },
        );
        let good = peer_frame("eth0", 120, "a");
        assert!(
            m.handle(
                t0,
                Input::Frame {
                    port: "swp1",
                    bytes: &good[..20]
                }
            )
            .is_empty()
        );
        let mut huge = good.clone();
        huge.resize(9000, 0);
        assert!(
            m.handle(
                t0,
                Input::Frame {
                    port: "swp1",
                    bytes: &huge
                }
            )
            .is_empty()
        );
        assert_eq!(m.counters().frames_discarded, 1);
        assert_eq!(m.counters().frames_oversized, 1);
        assert_eq!(
            m.handle(
                t0,
                Input::Frame {
                    port: "swp1",
                    bytes: &good
                }
            )
            .len(),
            1
        );
    }

    #[test]
    fn floods_are_rate_limited_per_port() {
        let mut m = machine();
        let t0 = Instant::now();
        m.handle(
            t0,
            Input::PortUp {
                port: "swp1".into(),
                mac: OUR_MAC,
            },
        );
        let frame = peer_frame("eth0", 120, "a");
        for _ in 0..100 {
            m.handle(
                t0,
                Input::Frame {
                    port: "swp1",
                    bytes: &frame,
                },
            );
        }
        assert_eq!(m.counters().frames_in, 20);
        assert_eq!(m.counters().frames_rate_limited, 80);
        // A second later the port is heard again.
        m.handle(
            t0 + Duration::from_secs(1),
            Input::Frame {
                port: "swp1",
                bytes: &frame,
            },
        );
        assert_eq!(m.counters().frames_in, 21);
    }

    #[test]
    fn neighbors_per_port_are_bounded() {
        let mut m = machine();
        let t0 = Instant::now();
        m.handle(
            t0,
            Input::PortUp {
                port: "swp1".into(),
                mac: OUR_MAC,
            },
        );
        for p in ["a", "b", "c"] {
            m.handle(
                t0,
                Input::Frame {
                    port: "swp1",
                    bytes: &peer_frame(p, 120, p),
                },
            );
        }
        assert_eq!(m.neighbors().count(), 2);
        assert_eq!(m.counters().neighbors_refused, 1);
    }

    #[test]
    fn shutdown_announces_ttl_zero_everywhere() {
        let mut m = machine();
        let t0 = Instant::now();
        m.handle(
            t0,
            Input::PortUp {
                port: "swp1".into(),
                mac: OUR_MAC,
            },
        );
        m.handle(
            t0,
            Input::PortUp {
                port: "swp2".into(),
                mac: OUR_MAC,
            },
        );
        let out = m.shutdown();
        assert_eq!(out.len(), 2);
        for o in out {
            let Output::Transmit { frame, .. } = o else {
                panic!()
            };
            assert_eq!(Frame::decode(&frame).unwrap().lldpdu.ttl, 0);
        }
    }
}
