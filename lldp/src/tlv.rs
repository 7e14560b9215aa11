//! The TLV types of an LLDPDU and their field types.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

/// TLV type numbers (IEEE 802.1AB-2016, table 8-1).
pub mod kind {
    pub const END: u8 = 0;
    pub const CHASSIS_ID: u8 = 1;
    pub const PORT_ID: u8 = 2;
    pub const TTL: u8 = 3;
    pub const PORT_DESCRIPTION: u8 = 4;
    pub const SYSTEM_NAME: u8 = 5;
    pub const SYSTEM_DESCRIPTION: u8 = 6;
    pub const SYSTEM_CAPABILITIES: u8 = 7;
    pub const MANAGEMENT_ADDRESS: u8 = 8;
    pub const ORGANIZATION_SPECIFIC: u8 = 127;
}

/// Organizationally unique identifiers of the TLV sets this codec knows.
pub mod oui {
    /// IEEE 802.1.
    pub const IEEE_802_1: [u8; 3] = [0x00, 0x80, 0xc2];
    /// IEEE 802.3.
    pub const IEEE_802_3: [u8; 3] = [0x00, 0x12, 0x0f];
}

/// Chassis ID subtypes (802.1AB §8.5.2.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChassisIdSubtype {
    ChassisComponent,
    InterfaceAlias,
    PortComponent,
    MacAddress,
    NetworkAddress,
    InterfaceName,
    LocallyAssigned,
    /// A subtype this codec does not know (reserved values).
    Other(u8),
}

impl ChassisIdSubtype {
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::ChassisComponent,
            2 => Self::InterfaceAlias,
            3 => Self::PortComponent,
            4 => Self::MacAddress,
            5 => Self::NetworkAddress,
            6 => Self::InterfaceName,
            7 => Self::LocallyAssigned,
            other => Self::Other(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::ChassisComponent => 1,
            Self::InterfaceAlias => 2,
            Self::PortComponent => 3,
            Self::MacAddress => 4,
            Self::NetworkAddress => 5,
            Self::InterfaceName => 6,
            Self::LocallyAssigned => 7,
            Self::Other(other) => other,
        }
    }
}

/// Port ID subtypes (802.1AB §8.5.3.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PortIdSubtype {
    InterfaceAlias,
    PortComponent,
    MacAddress,
    NetworkAddress,
    InterfaceName,
    AgentCircuitId,
    LocallyAssigned,
    Other(u8),
}

impl PortIdSubtype {
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::InterfaceAlias,
            2 => Self::PortComponent,
            3 => Self::MacAddress,
            4 => Self::NetworkAddress,
            5 => Self::InterfaceName,
            6 => Self::AgentCircuitId,
            7 => Self::LocallyAssigned,
            other => Self::Other(other),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::InterfaceAlias => 1,
            Self::PortComponent => 2,
            Self::MacAddress => 3,
            Self::NetworkAddress => 4,
            Self::InterfaceName => 5,
            Self::AgentCircuitId => 6,
            Self::LocallyAssigned => 7,
            Self::Other(other) => other,
        }
    }
}

/// Chassis or port identifier: a subtype and its octets.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Id<S> {
    pub subtype: S,
    pub value: Vec<u8>,
}

pub type ChassisId = Id<ChassisIdSubtype>;
pub type PortId = Id<PortIdSubtype>;

impl ChassisId {
    pub fn mac(mac: [u8; 6]) -> Self {
        Id {
            subtype: ChassisIdSubtype::MacAddress,
            value: mac.to_vec(),
        }
    }
    pub fn locally_assigned(text: &str) -> Self {
        Id {
            subtype: ChassisIdSubtype::LocallyAssigned,
            value: text.as_bytes().to_vec(),
        }
    }
    fn is_mac(&self) -> bool {
        self.subtype == ChassisIdSubtype::MacAddress
    }
    fn is_network_address(&self) -> bool {
        self.subtype == ChassisIdSubtype::NetworkAddress
    }
}

impl PortId {
    pub fn interface_name(name: &str) -> Self {
        Id {
            subtype: PortIdSubtype::InterfaceName,
            value: name.as_bytes().to_vec(),
        }
    }
    pub fn mac(mac: [u8; 6]) -> Self {
        Id {
            subtype: PortIdSubtype::MacAddress,
            value: mac.to_vec(),
        }
    }
    fn is_mac(&self) -> bool {
        self.subtype == PortIdSubtype::MacAddress
    }
    fn is_network_address(&self) -> bool {
        self.subtype == PortIdSubtype::NetworkAddress
    }
}

/// Renders an identifier the way operators read them: MAC addresses as
/// `aa:bb:…`, network addresses as IPs, text as text, anything else as hex.
fn render_id(
    value: &[u8],
    is_mac: bool,
    is_network: bool,
    f: &mut fmt::Formatter<'_>,
) -> fmt::Result {
    if is_mac && value.len() == 6 {
        return f.write_str(&format_mac(value));
    }
    if let Some(addr) = value
        .split_first()
        .filter(|_| is_network)
        .and_then(|(family, rest)| ip_from(*family, rest))
    {
        return write!(f, "{addr}");
    }
    match std::str::from_utf8(value) {
        Ok(text) if !text.is_empty() && text.chars().all(|c| !c.is_control()) => f.write_str(text),
        _ => f.write_str(&hex(value)),
    }
}

impl fmt::Display for ChassisId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render_id(&self.value, self.is_mac(), self.is_network_address(), f)
    }
}

impl fmt::Display for PortId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        render_id(&self.value, self.is_mac(), self.is_network_address(), f)
    }
}

/// `aa:bb:cc:dd:ee:ff` (lower case; on hot paths such as DHCP, so built
/// without intermediate strings).
pub fn format_mac(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 3);
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        text.push(char::from(HEX[usize::from(byte >> 4)]));
        text.push(char::from(HEX[usize::from(byte & 0xf)]));
    }
    text
}

/// Parses `aa:bb:cc:dd:ee:ff` (exactly two hex digits per byte, either case).
pub fn parse_mac(text: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = text.split(':');
    for byte in &mut mac {
        let part = parts.next()?;
        if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        *byte = u8::from_str_radix(part, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// IANA address family numbers used by LLDP.
pub mod family {
    pub const IPV4: u8 = 1;
    pub const IPV6: u8 = 2;
    pub const MAC: u8 = 6;
}

pub(crate) fn ip_from(family: u8, bytes: &[u8]) -> Option<IpAddr> {
    match family {
        family::IPV4 => <[u8; 4]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V4(Ipv4Addr::from(b))),
        family::IPV6 => <[u8; 16]>::try_from(bytes)
            .ok()
            .map(|b| IpAddr::V6(Ipv6Addr::from(b))),
        _ => None,
    }
}

/// System capabilities bit map (802.1AB §8.5.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    pub supported: u16,
    pub enabled: u16,
}

impl Capabilities {
    pub const OTHER: u16 = 1 << 0;
    pub const REPEATER: u16 = 1 << 1;
    pub const BRIDGE: u16 = 1 << 2;
    pub const WLAN_AP: u16 = 1 << 3;
    pub const ROUTER: u16 = 1 << 4;
    pub const TELEPHONE: u16 = 1 << 5;
    pub const DOCSIS: u16 = 1 << 6;
    pub const STATION: u16 = 1 << 7;

    /// Names of the bits set in `bits`.
    pub fn names(bits: u16) -> Vec<&'static str> {
        const NAMES: [&str; 8] = [
            "other",
            "repeater",
            "bridge",
            "wlan-ap",
            "router",
            "telephone",
            "docsis",
            "station",
        ];
        NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

/// How a management address names its interface (802.1AB §8.5.9.5).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InterfaceNumbering {
    Unknown,
    IfIndex,
    SystemPortNumber,
    Other(u8),
}

impl InterfaceNumbering {
    pub fn from_u8(value: u8) -> Self {
        match value {
            1 => Self::Unknown,
            2 => Self::IfIndex,
            3 => Self::SystemPortNumber,
            other => Self::Other(other),
        }
    }
    pub fn to_u8(self) -> u8 {
        match self {
            Self::Unknown => 1,
            Self::IfIndex => 2,
            Self::SystemPortNumber => 3,
            Self::Other(other) => other,
        }
    }
}

/// Management address TLV.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManagementAddress {
    /// IANA address family.
    pub family: u8,
    pub address: Vec<u8>,
    pub interface_numbering: InterfaceNumbering,
    pub interface_number: u32,
    pub oid: Vec<u8>,
}

impl ManagementAddress {
    pub fn ip(address: IpAddr, ifindex: u32) -> Self {
        let (family, address) = match address {
            IpAddr::V4(a) => (family::IPV4, a.octets().to_vec()),
            IpAddr::V6(a) => (family::IPV6, a.octets().to_vec()),
        };
        ManagementAddress {
            family,
            address,
            interface_numbering: InterfaceNumbering::IfIndex,
            interface_number: ifindex,
            oid: Vec::new(),
        }
    }

    /// The address as an IP, when it is one.
    pub fn as_ip(&self) -> Option<IpAddr> {
        ip_from(self.family, &self.address)
    }
}

/// IEEE 802.3 MAC/PHY configuration/status (802.3 clause 79.3.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacPhy {
    /// Bit 0: auto-negotiation supported; bit 1: enabled.
    pub autoneg: u8,
    pub advertised_capabilities: u16,
    pub operational_mau_type: u16,
}

/// A TLV this codec keeps as it came.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RawTlv {
    pub kind: u8,
    pub value: Vec<u8>,
}
