//! LLDP from the machine: every NIC announces the machine's UUID as its
//! chassis ID (and the NIC's name as port ID), so the leaf learns which of
//! its ports the machine is cabled to.

#[cfg(test)]
use metalmesh_lldp::parse_mac;
use metalmesh_lldp::{ChassisId, Frame, Lldpdu, MULTICAST_MAC, PortId};
use metalmesh_packet_socket::BlockingSender;
use std::time::Duration;

/// Seconds between announcements; the TTL covers four of them.
const INTERVAL: Duration = Duration::from_secs(5);

/// One NIC to announce on.
#[derive(Debug, Clone)]
pub struct AnnouncePort {
    pub name: String,
    pub ifindex: u32,
    pub mac: [u8; 6],
}

/// Builds the LLDP frame for one NIC.
pub fn frame(uuid: &str, hostname: &str, port: &AnnouncePort) -> Option<Vec<u8>> {
    let mut pdu = Lldpdu::new(
        ChassisId::locally_assigned(uuid),
        PortId::interface_name(&port.name),
        u16::try_from(INTERVAL.as_secs() * 4 + 1).unwrap_or(u16::MAX),
    );
    pdu.system_name = Some(hostname.to_string());
    pdu.system_description = Some(format!("metalmesh-installer {}", env!("CARGO_PKG_VERSION")));
    pdu.port_description = Some(port.name.clone());
    Frame {
        destination: MULTICAST_MAC,
        source: port.mac,
        lldpdu: pdu,
    }
    .encode()
    .ok()
}

/// Announces on every port until the process ends, from a background thread.
pub fn start(uuid: String, hostname: String, ports: Vec<AnnouncePort>) {
    let spawned = std::thread::Builder::new()
        .name("lldp".into())
        .spawn(move || {
            let senders: Vec<(AnnouncePort, BlockingSender)> = ports
                .into_iter()
                .filter_map(|port| match BlockingSender::bind(port.ifindex) {
                    Ok(sender) => Some((port, sender)),
                    Err(error) => {
                        eprintln!("metalmesh-installer: LLDP on {}: {error}", port.name);
                        None
                    }
                })
                .collect();
            // The first few a second apart: the leaf may not be listening
            // on a port whose link just came up.
            let mut sent: u32 = 0;
            loop {
                for (port, sender) in &senders {
                    if let Some(frame) = frame(&uuid, &hostname, port)
                        && let Err(error) = sender.send(&frame)
                    {
                        eprintln!("metalmesh-installer: LLDP on {}: {error}", port.name);
                    }
                }
                sent = sent.saturating_add(1);
                std::thread::sleep(if sent < 4 {
                    Duration::from_secs(1)
                } else {
                    INTERVAL
                });
            }
        });
    if let Err(error) = spawned {
        eprintln!("metalmesh-installer: cannot start LLDP: {error}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_carries_the_uuid_as_chassis_id() {
        let port = AnnouncePort {
            name: "eth0".into(),
            ifindex: 2,
            mac: parse_mac("52:54:00:6d:01:01").unwrap(),
        };
        let bytes = frame("6d6d0000-0000-4000-8000-000001000001", "m1-1", &port).unwrap();
        let decoded = Frame::decode(&bytes).unwrap();
        assert_eq!(
            decoded.lldpdu.chassis_id,
            ChassisId::locally_assigned("6d6d0000-0000-4000-8000-000001000001")
        );
        assert_eq!(decoded.lldpdu.port_id, PortId::interface_name("eth0"));
        assert_eq!(decoded.source, port.mac);
        assert!(parse_mac("52:54:00:6d:01").is_none());
    }
}
