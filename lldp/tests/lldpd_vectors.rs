//! Frames captured from a real lldpd decode to what lldpd was configured with,
//! and re-encode to frames that decode the same.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::IpAddr;

use metalmesh_lldp::{ChassisIdSubtype, Frame, MULTICAST_MAC, PortIdSubtype, kind, oui};

fn vector(name: &str) -> Frame {
    let path = format!("{}/tests/vectors/{name}", env!("CARGO_MANIFEST_DIR"));
    let bytes = std::fs::read(&path).unwrap();
    Frame::decode(&bytes).unwrap_or_else(|e| panic!("{name}: {e}"))
}

const LLDPD_MAC: &str = "8a:e4:7c:ff:ae:4e";

#[test]
fn default_frame() {
    let frame = vector("lldpd-default.bin");
    assert_eq!(frame.destination, MULTICAST_MAC);
    let pdu = &frame.lldpdu;
    assert_eq!(pdu.chassis_id.subtype, ChassisIdSubtype::MacAddress);
    assert_eq!(pdu.chassis_id.to_string(), LLDPD_MAC);
    assert_eq!(pdu.port_id.subtype, PortIdSubtype::MacAddress);
    assert_eq!(pdu.ttl, 120);
    assert_eq!(pdu.system_name.as_deref(), Some("vm"));
    assert_eq!(
        pdu.system_description.as_deref(),
        Some("metalmesh test host")
    );
    assert_eq!(pdu.port_description.as_deref(), Some("eth0"));
    let caps = pdu.capabilities.unwrap();
    assert_eq!(caps.supported, 0x009c);
    assert_eq!(caps.enabled, 0x0080);
    let addresses: Vec<IpAddr> = pdu
        .management_addresses
        .iter()
        .filter_map(|m| m.as_ip())
        .collect();
    assert_eq!(
        addresses,
        [
            "192.0.2.10".parse::<IpAddr>().unwrap(),
            "2001:db8::10".parse().unwrap()
        ]
    );
    assert_eq!(pdu.management_addresses[0].interface_number, 2);
    let mac_phy = pdu.mac_phy.unwrap();
    assert_eq!(mac_phy.advertised_capabilities, 0x8000);
    assert_eq!(mac_phy.operational_mau_type, 0x0036);
    // 802.3 link aggregation is not decoded: it is kept raw, not dropped.
    assert_eq!(pdu.unknown.len(), 1);
    assert_eq!(pdu.unknown[0].kind, kind::ORGANIZATION_SPECIFIC);
    assert_eq!(
        &pdu.unknown[0].value[..4],
        &[
            oui::IEEE_802_3[0],
            oui::IEEE_802_3[1],
            oui::IEEE_802_3[2],
            3
        ]
    );
}

#[test]
fn configured_hostname_interval_and_port_id() {
    assert_eq!(vector("lldpd-tx-interval-1s.bin").lldpdu.ttl, 4);
    let named = vector("lldpd-hostname.bin");
    assert_eq!(
        named.lldpdu.system_name.as_deref(),
        Some("server01.example")
    );
    let ifname = vector("lldpd-portid-ifname.bin");
    assert_eq!(ifname.lldpdu.port_id.subtype, PortIdSubtype::InterfaceName);
    assert_eq!(ifname.lldpdu.port_id.to_string(), "eth0");
}

#[test]
fn power_tlv_is_kept_raw() {
    let pdu = vector("lldpd-dot3-power.bin").lldpdu;
    assert!(
        pdu.unknown
            .iter()
            .any(|t| t.value.get(..4) == Some(&[0x00, 0x12, 0x0f, 2][..])),
        "{:?}",
        pdu.unknown
    );
}

#[test]
fn shutdown_frame_has_ttl_zero() {
    let pdu = vector("lldpd-shutdown.bin").lldpdu;
    assert_eq!(pdu.ttl, 0);
    assert_eq!(pdu.chassis_id.to_string(), LLDPD_MAC);
}

#[test]
fn every_vector_re_encodes_to_the_same_meaning() {
    let dir = format!("{}/tests/vectors", env!("CARGO_MANIFEST_DIR"));
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "bin") {
            let frame = Frame::decode(&std::fs::read(&path).unwrap()).unwrap();
            let again = Frame::decode(&frame.encode().unwrap()).unwrap();
            assert_eq!(frame, again, "{}", path.display());
            seen += 1;
        }
    }
    assert_eq!(seen, 6);
}
