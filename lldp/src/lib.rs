//! IEEE 802.1AB (LLDP) frames: a decoder that never panics on any input and
//! an encoder, with no I/O and no async runtime, so the leaf agent and the
//! in-machine installer share it.
//!
//! Decoded are the mandatory TLVs (chassis ID, port ID, TTL, end) and the
//! common optional ones: port description, system name and description,
//! system capabilities, management address, 802.1 port VLAN ID, 802.3 MAC/PHY
//! configuration and maximum frame size. Any other TLV is kept raw, so
//! nothing a neighbour says is lost.

mod tlv;

pub use tlv::{
    Capabilities, ChassisId, ChassisIdSubtype, Id, InterfaceNumbering, MacPhy, ManagementAddress,
    PortId, PortIdSubtype, RawTlv, family, format_mac, kind, oui, parse_mac,
};

use serde::{Deserialize, Serialize};

/// EtherType of LLDP.
pub const ETHERTYPE: u16 = 0x88cc;
/// Nearest-bridge group address: what LLDP agents send to and listen on.
pub const MULTICAST_MAC: [u8; 6] = [0x01, 0x80, 0xc2, 0x00, 0x00, 0x0e];
/// Largest LLDPDU accepted or produced: one standard Ethernet payload.
pub const MAX_LLDPDU: usize = 1500;
/// Ethernet header length (untagged).
pub const ETHERNET_HEADER: usize = 14;
/// Largest frame accepted (untagged header + LLDPDU).
pub const MAX_FRAME: usize = ETHERNET_HEADER + MAX_LLDPDU;

/// One LLDP data unit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lldpdu {
    pub chassis_id: ChassisId,
    pub port_id: PortId,
    /// Seconds the receiver keeps this information; 0 announces shutdown.
    pub ttl: u16,
    pub port_description: Option<String>,
    pub system_name: Option<String>,
    pub system_description: Option<String>,
    pub capabilities: Option<Capabilities>,
    pub management_addresses: Vec<ManagementAddress>,
    /// IEEE 802.1 port VLAN ID (0 = none).
    pub port_vlan_id: Option<u16>,
    pub mac_phy: Option<MacPhy>,
    /// IEEE 802.3 maximum frame size.
    pub max_frame_size: Option<u16>,
    /// TLVs not decoded above, in the order received.
    pub unknown: Vec<RawTlv>,
}

impl Lldpdu {
    /// An LLDPDU with the mandatory TLVs only.
    pub fn new(chassis_id: ChassisId, port_id: PortId, ttl: u16) -> Self {
        Lldpdu {
            chassis_id,
            port_id,
            ttl,
            port_description: None,
            system_name: None,
            system_description: None,
            capabilities: None,
            management_addresses: Vec::new(),
            port_vlan_id: None,
            mac_phy: None,
            max_frame_size: None,
            unknown: Vec::new(),
        }
    }
}

/// An LLDP Ethernet frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub destination: [u8; 6],
    pub source: [u8; 6],
    pub lldpdu: Lldpdu,
}

/// Why a frame was not accepted. Each is counted by receivers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("frame of {0} bytes is shorter than an Ethernet header")]
    ShortFrame(usize),
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    Oversized(usize),
    #[error("EtherType {0:#06x} is not LLDP")]
    NotLldp(u16),
    #[error("TLV at offset {offset} runs past the end of the LLDPDU")]
    Truncated { offset: usize },
    #[error("mandatory {0} TLV missing or out of order")]
    MissingMandatory(&'static str),
    #[error("TLV type {kind} at offset {offset} has invalid length {length}")]
    BadLength {
        kind: u8,
        offset: usize,
        length: usize,
    },
    #[error("TLV type {0} appears more than once")]
    Duplicate(u8),
}

/// Why an LLDPDU could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("{field} is {length} bytes; at most {max} fit")]
    TooLong {
        field: &'static str,
        length: usize,
        max: usize,
    },
    #[error("{0} must not be empty")]
    Empty(&'static str),
    #[error("encoded LLDPDU is {0} bytes; at most {MAX_LLDPDU} fit in a frame")]
    Oversized(usize),
}

impl Frame {
    /// Decodes an untagged Ethernet frame carrying an LLDPDU.
    pub fn decode(bytes: &[u8]) -> Result<Frame, DecodeError> {
        if bytes.len() > MAX_FRAME {
            return Err(DecodeError::Oversized(bytes.len()));
        }
        let (header, payload) = bytes
            .split_at_checked(ETHERNET_HEADER)
            .ok_or(DecodeError::ShortFrame(bytes.len()))?;
        let mut destination = [0u8; 6];
        let mut source = [0u8; 6];
        destination.copy_from_slice(&header[0..6]);
        source.copy_from_slice(&header[6..12]);
        let ethertype = u16::from_be_bytes([header[12], header[13]]);
        if ethertype != ETHERTYPE {
            return Err(DecodeError::NotLldp(ethertype));
        }
        Ok(Frame {
            destination,
            source,
            lldpdu: Lldpdu::decode(payload)?,
        })
    }

    /// Encodes the frame; short frames are padded to the Ethernet minimum.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let pdu = self.lldpdu.encode()?;
        let mut out = Vec::with_capacity(ETHERNET_HEADER + pdu.len());
        out.extend_from_slice(&self.destination);
        out.extend_from_slice(&self.source);
        out.extend_from_slice(&ETHERTYPE.to_be_bytes());
        out.extend_from_slice(&pdu);
        // 60 bytes without FCS is Ethernet's minimum frame.
        if out.len() < 60 {
            out.resize(60, 0);
        }
        Ok(out)
    }
}

/// Reads TLV headers: 7 bits of type, 9 bits of length.
struct Tlvs<'a> {
    bytes: &'a [u8],
    offset: usize,
}

impl<'a> Iterator for Tlvs<'a> {
    type Item = Result<(u8, usize, &'a [u8]), DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        let rest = self.bytes.get(self.offset..)?;
        if rest.is_empty() {
            return None;
        }
        let offset = self.offset;
        let Some(header) = rest.get(..2) else {
            self.offset = self.bytes.len();
            return Some(Err(DecodeError::Truncated { offset }));
        };
        let header = u16::from_be_bytes([header[0], header[1]]);
        let kind = (header >> 9) as u8;
        let length = usize::from(header & 0x01ff);
        let Some(value) = rest.get(2..2 + length) else {
            self.offset = self.bytes.len();
            return Some(Err(DecodeError::Truncated { offset }));
        };
        self.offset += 2 + length;
        Some(Ok((kind, offset, value)))
    }
}

fn text(value: &[u8]) -> String {
    String::from_utf8_lossy(value).into_owned()
}

impl Lldpdu {
    /// Decodes an LLDPDU (the Ethernet payload).
    pub fn decode(bytes: &[u8]) -> Result<Lldpdu, DecodeError> {
        if bytes.len() > MAX_LLDPDU {
            return Err(DecodeError::Oversized(bytes.len() + ETHERNET_HEADER));
        }
        let mut tlvs = Tlvs { bytes, offset: 0 };
        let mut mandatory =
            |kind_expected: u8, name: &'static str, min: usize, max: usize| match tlvs.next() {
                Some(Ok((kind, offset, value))) if kind == kind_expected => {
                    if value.len() < min || value.len() > max {
                        Err(DecodeError::BadLength {
                            kind,
                            offset,
                            length: value.len(),
                        })
                    } else {
                        Ok(value)
                    }
                }
                Some(Err(e)) => Err(e),
                _ => Err(DecodeError::MissingMandatory(name)),
            };
        let chassis = mandatory(kind::CHASSIS_ID, "chassis ID", 2, 256)?;
        let port = mandatory(kind::PORT_ID, "port ID", 2, 256)?;
        let ttl = mandatory(kind::TTL, "TTL", 2, 2)?;
        let mut pdu = Lldpdu::new(
            ChassisId {
                subtype: ChassisIdSubtype::from_u8(chassis[0]),
                value: chassis[1..].to_vec(),
            },
            PortId {
                subtype: PortIdSubtype::from_u8(port[0]),
                value: port[1..].to_vec(),
            },
            u16::from_be_bytes([ttl[0], ttl[1]]),
        );
        for item in tlvs {
            let (kind, offset, value) = item?;
            let bad = || DecodeError::BadLength {
                kind,
                offset,
                length: value.len(),
            };
            match kind {
                kind::END => {
                    if !value.is_empty() {
                        return Err(bad());
                    }
                    break;
                }
                kind::CHASSIS_ID | kind::PORT_ID | kind::TTL => {
                    return Err(DecodeError::Duplicate(kind));
                }
                kind::PORT_DESCRIPTION => set_once(&mut pdu.port_description, text(value), kind)?,
                kind::SYSTEM_NAME => set_once(&mut pdu.system_name, text(value), kind)?,
                kind::SYSTEM_DESCRIPTION => {
                    set_once(&mut pdu.system_description, text(value), kind)?
                }
                kind::SYSTEM_CAPABILITIES => {
                    let [a, b, c, d] = <[u8; 4]>::try_from(value).map_err(|_| bad())?;
                    set_once(
                        &mut pdu.capabilities,
                        Capabilities {
                            supported: u16::from_be_bytes([a, b]),
                            enabled: u16::from_be_bytes([c, d]),
                        },
                        kind,
                    )?;
                }
                kind::MANAGEMENT_ADDRESS => {
                    pdu.management_addresses
                        .push(decode_management_address(value).ok_or_else(bad)?);
                }
                kind::ORGANIZATION_SPECIFIC => {
                    if value.len() < 4 {
                        return Err(bad());
                    }
                    if !decode_organization_specific(&mut pdu, value) {
                        pdu.unknown.push(RawTlv {
                            kind,
                            value: value.to_vec(),
                        });
                    }
                }
                _ => pdu.unknown.push(RawTlv {
                    kind,
                    value: value.to_vec(),
                }),
            }
        }
        Ok(pdu)
    }

    /// Encodes the LLDPDU, ending with an End TLV.
    pub fn encode(&self) -> Result<Vec<u8>, EncodeError> {
        let mut out = Vec::with_capacity(128);
        let id = |field: &'static str, subtype: u8, value: &[u8]| -> Result<Vec<u8>, EncodeError> {
            if value.is_empty() {
                return Err(EncodeError::Empty(field));
            }
            if value.len() > 255 {
                return Err(EncodeError::TooLong {
                    field,
                    length: value.len(),
                    max: 255,
                });
            }
            let mut v = vec![subtype];
            v.extend_from_slice(value);
            Ok(v)
        };
        put(
            &mut out,
            kind::CHASSIS_ID,
            &id(
                "chassis ID",
                self.chassis_id.subtype.to_u8(),
                &self.chassis_id.value,
            )?,
        );
        put(
            &mut out,
            kind::PORT_ID,
            &id("port ID", self.port_id.subtype.to_u8(), &self.port_id.value)?,
        );
        put(&mut out, kind::TTL, &self.ttl.to_be_bytes());
        let strings = [
            (
                kind::PORT_DESCRIPTION,
                "port description",
                &self.port_description,
            ),
            (kind::SYSTEM_NAME, "system name", &self.system_name),
            (
                kind::SYSTEM_DESCRIPTION,
                "system description",
                &self.system_description,
            ),
        ];
        for (kind, field, value) in strings {
            if let Some(value) = value {
                if value.len() > 255 {
                    return Err(EncodeError::TooLong {
                        field,
                        length: value.len(),
                        max: 255,
                    });
                }
                put(&mut out, kind, value.as_bytes());
            }
        }
        if let Some(c) = self.capabilities {
            let mut v = c.supported.to_be_bytes().to_vec();
            v.extend_from_slice(&c.enabled.to_be_bytes());
            put(&mut out, kind::SYSTEM_CAPABILITIES, &v);
        }
        for m in &self.management_addresses {
            if m.address.is_empty() || m.address.len() > 31 {
                return Err(EncodeError::TooLong {
                    field: "management address",
                    length: m.address.len(),
                    max: 31,
                });
            }
            if m.oid.len() > 128 {
                return Err(EncodeError::TooLong {
                    field: "management address OID",
                    length: m.oid.len(),
                    max: 128,
                });
            }
            let mut v = vec![(m.address.len() + 1) as u8, m.family];
            v.extend_from_slice(&m.address);
            v.push(m.interface_numbering.to_u8());
            v.extend_from_slice(&m.interface_number.to_be_bytes());
            v.push(m.oid.len() as u8);
            v.extend_from_slice(&m.oid);
            put(&mut out, kind::MANAGEMENT_ADDRESS, &v);
        }
        if let Some(vid) = self.port_vlan_id {
            put_org(&mut out, oui::IEEE_802_1, 1, &vid.to_be_bytes());
        }
        if let Some(p) = self.mac_phy {
            let mut v = vec![p.autoneg];
            v.extend_from_slice(&p.advertised_capabilities.to_be_bytes());
            v.extend_from_slice(&p.operational_mau_type.to_be_bytes());
            put_org(&mut out, oui::IEEE_802_3, 1, &v);
        }
        if let Some(size) = self.max_frame_size {
            put_org(&mut out, oui::IEEE_802_3, 4, &size.to_be_bytes());
        }
        for raw in &self.unknown {
            if raw.value.len() > 511 {
                return Err(EncodeError::TooLong {
                    field: "raw TLV",
                    length: raw.value.len(),
                    max: 511,
                });
            }
            put(&mut out, raw.kind, &raw.value);
        }
        put(&mut out, kind::END, &[]);
        if out.len() > MAX_LLDPDU {
            return Err(EncodeError::Oversized(out.len()));
        }
        Ok(out)
    }
}

fn set_once<T>(slot: &mut Option<T>, value: T, kind: u8) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Duplicate(kind));
    }
    *slot = Some(value);
    Ok(())
}

/// Appends one TLV; callers keep `value` within 511 bytes.
fn put(out: &mut Vec<u8>, kind: u8, value: &[u8]) {
    let header = (u16::from(kind) << 9) | (value.len() as u16 & 0x01ff);
    out.extend_from_slice(&header.to_be_bytes());
    out.extend_from_slice(value);
}

fn put_org(out: &mut Vec<u8>, oui: [u8; 3], subtype: u8, info: &[u8]) {
    let mut v = oui.to_vec();
    v.push(subtype);
    v.extend_from_slice(info);
    put(out, kind::ORGANIZATION_SPECIFIC, &v);
}

fn decode_management_address(value: &[u8]) -> Option<ManagementAddress> {
    let (&string_len, rest) = value.split_first()?;
    let string_len = usize::from(string_len);
    if !(2..=32).contains(&string_len) {
        return None;
    }
    let (string, rest) = rest.split_at_checked(string_len)?;
    let (&family, address) = string.split_first()?;
    let (numbering, rest) = rest.split_first()?;
    let (number, rest) = rest.split_at_checked(4)?;
    let (&oid_len, oid) = rest.split_first()?;
    if oid.len() != usize::from(oid_len) || oid.len() > 128 {
        return None;
    }
    Some(ManagementAddress {
        family,
        address: address.to_vec(),
        interface_numbering: InterfaceNumbering::from_u8(*numbering),
        interface_number: u32::from_be_bytes([number[0], number[1], number[2], number[3]]),
        oid: oid.to_vec(),
    })
}

/// Decodes the organisation-specific TLVs this codec knows; false keeps it raw.
fn decode_organization_specific(pdu: &mut Lldpdu, value: &[u8]) -> bool {
    let oui = [value[0], value[1], value[2]];
    let subtype = value[3];
    let info = &value[4..];
    match (oui, subtype, info.len()) {
        (oui::IEEE_802_1, 1, 2) if pdu.port_vlan_id.is_none() => {
            pdu.port_vlan_id = Some(u16::from_be_bytes([info[0], info[1]]));
            true
        }
        (oui::IEEE_802_3, 1, 5) if pdu.mac_phy.is_none() => {
            pdu.mac_phy = Some(MacPhy {
                autoneg: info[0],
                advertised_capabilities: u16::from_be_bytes([info[1], info[2]]),
                operational_mau_type: u16::from_be_bytes([info[3], info[4]]),
            });
            true
        }
        (oui::IEEE_802_3, 4, 2) if pdu.max_frame_size.is_none() => {
            pdu.max_frame_size = Some(u16::from_be_bytes([info[0], info[1]]));
            true
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{IpAddr, Ipv4Addr};

    fn sample() -> Frame {
        let mut pdu = Lldpdu::new(
            ChassisId::mac([0x02, 0, 0, 0, 0, 1]),
            PortId::interface_name("swp1"),
            120,
        );
        pdu.port_description = Some("to m1-1".into());
        pdu.system_name = Some("leaf1".into());
        pdu.system_description = Some("metalmesh-agent".into());
        pdu.capabilities = Some(Capabilities {
            supported: Capabilities::BRIDGE | Capabilities::ROUTER,
            enabled: Capabilities::ROUTER,
        });
        pdu.management_addresses.push(ManagementAddress::ip(
            IpAddr::V4(Ipv4Addr::new(10, 255, 0, 1)),
            1,
        ));
        pdu.port_vlan_id = Some(0);
        pdu.mac_phy = Some(MacPhy {
            autoneg: 0,
            advertised_capabilities: 0x8000,
            operational_mau_type: 0,
        });
        pdu.max_frame_size = Some(9018);
        pdu.unknown.push(RawTlv {
            kind: 127,
            value: vec![0x00, 0x12, 0x0f, 0x03, 1, 0, 0, 0, 0],
        });
        Frame {
            destination: MULTICAST_MAC,
            source: [0x02, 0, 0, 0, 0, 1],
            lldpdu: pdu,
        }
    }

    #[test]
    fn round_trip() {
        let frame = sample();
        let bytes = frame.encode().unwrap();
        assert_eq!(Frame::decode(&bytes).unwrap(), frame);
    }

    #[test]
    fn short_frames_are_padded_and_still_decode() {
        let frame = Frame {
            destination: MULTICAST_MAC,
            source: [2, 0, 0, 0, 0, 2],
            lldpdu: Lldpdu::new(
                ChassisId::locally_assigned("x"),
                PortId::interface_name("p"),
                0,
            ),
        };
        let bytes = frame.encode().unwrap();
        assert_eq!(bytes.len(), 60);
        assert_eq!(Frame::decode(&bytes).unwrap(), frame);
    }

    #[test]
    fn every_truncation_is_an_error_not_a_panic() {
        let bytes = sample().encode().unwrap();
        // Cutting inside the mandatory TLVs must fail; cutting later may decode a prefix.
        // header 14 + chassis ID 9 + port ID 7 + TTL 4
        for cut in 0..34 {
            assert!(Frame::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        for cut in 0..bytes.len() {
            let _ = Frame::decode(&bytes[..cut]);
        }
    }

    #[test]
    fn malformed_inputs() {
        let good = sample().encode().unwrap();
        let mut oversized = good.clone();
        oversized.resize(MAX_FRAME + 1, 0);
        assert_eq!(
            Frame::decode(&oversized),
            Err(DecodeError::Oversized(MAX_FRAME + 1))
        );
        let mut wrong_type = good.clone();
        wrong_type[12] = 0x08;
        wrong_type[13] = 0x00;
        assert_eq!(
            Frame::decode(&wrong_type),
            Err(DecodeError::NotLldp(0x0800))
        );
        // TTL first instead of chassis ID.
        let mut pdu = good[..14].to_vec();
        pdu.extend_from_slice(&[0x06, 0x02, 0x00, 0x78]);
        assert_eq!(
            Frame::decode(&pdu),
            Err(DecodeError::MissingMandatory("chassis ID"))
        );
        // A length that points past the end.
        let mut long = good[..14].to_vec();
        long.extend_from_slice(&[0x02, 0xff, 0x04]);
        assert!(matches!(
            Frame::decode(&long),
            Err(DecodeError::Truncated { offset: 0 })
        ));
        // A second TTL TLV.
        let mut dup = good[..14].to_vec();
        let pdu_bytes = Lldpdu::new(
            ChassisId::locally_assigned("a"),
            PortId::interface_name("b"),
            9,
        )
        .encode()
        .unwrap();
        dup.extend_from_slice(&pdu_bytes[..pdu_bytes.len() - 2]);
        dup.extend_from_slice(&[0x06, 0x02, 0x00, 0x01, 0, 0]);
        assert_eq!(Frame::decode(&dup), Err(DecodeError::Duplicate(kind::TTL)));
    }

    #[test]
    fn encoder_refuses_what_does_not_fit() {
        let mut frame = sample();
        frame.lldpdu.system_name = Some("x".repeat(256));
        assert!(matches!(
            frame.encode(),
            Err(EncodeError::TooLong {
                field: "system name",
                ..
            })
        ));
        let mut frame = sample();
        frame.lldpdu.chassis_id.value.clear();
        assert_eq!(frame.encode(), Err(EncodeError::Empty("chassis ID")));
    }

    #[test]
    fn ids_render_for_operators() {
        assert_eq!(
            ChassisId::mac([0x8a, 0xe4, 0x7c, 0xff, 0xae, 0x4e]).to_string(),
            "8a:e4:7c:ff:ae:4e"
        );
        assert_eq!(PortId::interface_name("eth0").to_string(), "eth0");
        let network = ChassisId {
            subtype: ChassisIdSubtype::NetworkAddress,
            value: vec![1, 10, 0, 0, 1],
        };
        assert_eq!(network.to_string(), "10.0.0.1");
        let binary = ChassisId {
            subtype: ChassisIdSubtype::ChassisComponent,
            value: vec![0, 1, 2],
        };
        assert_eq!(binary.to_string(), "000102");
    }
}
