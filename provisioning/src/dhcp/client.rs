//! What kind of client sent a DHCP request, from the options PXE firmware,
//! UEFI HTTP boot and iPXE put in it (60 vendor class, 77 user class, 93
//! client architecture, 175 iPXE encapsulated options).

use dhcproto::v4::{DhcpOption, Message, OptionCode};
use serde::{Deserialize, Serialize};

/// The boot stage a client is in, which decides what it is told to load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientKind {
    /// Legacy BIOS PXE ROM (architecture 0).
    BiosPxe,
    /// UEFI PXE on x86-64 (architecture 7 or 9).
    UefiX64Pxe,
    /// UEFI PXE on arm64 (architecture 11).
    UefiArm64Pxe,
    /// UEFI HTTP boot on x86-64 (architecture 16).
    UefiX64Http,
    /// UEFI HTTP boot on arm64 (architecture 19).
    UefiArm64Http,
    /// iPXE, already running: it gets its script over HTTP.
    Ipxe,
    /// An ordinary DHCP client (an installed OS, dhclient, udhcpc, the installer).
    Plain,
}

impl ClientKind {
    /// Whether the request comes from network boot firmware (a `PXE Booting` event).
    pub fn is_network_boot(self) -> bool {
        self != ClientKind::Plain
    }

    pub fn as_str(self) -> &'static str {
        match self {
            ClientKind::BiosPxe => "bios_pxe",
            ClientKind::UefiX64Pxe => "uefi_x64_pxe",
            ClientKind::UefiArm64Pxe => "uefi_arm64_pxe",
            ClientKind::UefiX64Http => "uefi_x64_http",
            ClientKind::UefiArm64Http => "uefi_arm64_http",
            ClientKind::Ipxe => "ipxe",
            ClientKind::Plain => "plain",
        }
    }

    pub fn parse(text: &str) -> Option<ClientKind> {
        [
            ClientKind::BiosPxe,
            ClientKind::UefiX64Pxe,
            ClientKind::UefiArm64Pxe,
            ClientKind::UefiX64Http,
            ClientKind::UefiArm64Http,
            ClientKind::Ipxe,
            ClientKind::Plain,
        ]
        .into_iter()
        .find(|k| k.as_str() == text)
    }
}

/// Vendor class (option 60) prefix of PXE firmware.
const PXE_CLIENT: &[u8] = b"PXEClient";
/// Vendor class prefix of UEFI HTTP boot firmware.
const HTTP_CLIENT: &[u8] = b"HTTPClient";

fn unknown_option(message: &Message, code: u8) -> Option<&[u8]> {
    match message.opts().get(OptionCode::from(code))? {
        DhcpOption::Unknown(option) => Some(option.data()),
        _ => None,
    }
}

/// Classifies a request.
pub fn classify(message: &Message) -> ClientKind {
    let opts = message.opts();
    // iPXE marks itself with user class "iPXE" (77) and its own option space (175).
    let user_class = match opts.get(OptionCode::UserClass) {
        Some(DhcpOption::UserClass(data)) => Some(data.as_slice()),
        _ => None,
    };
    if user_class.is_some_and(|u| u.windows(4).any(|w| w == b"iPXE"))
        || unknown_option(message, 175).is_some()
    {
        return ClientKind::Ipxe;
    }
    let vendor = match opts.get(OptionCode::ClassIdentifier) {
        Some(DhcpOption::ClassIdentifier(data)) => data.as_slice(),
        _ => &[],
    };
    let arch = match opts.get(OptionCode::ClientSystemArchitecture) {
        Some(DhcpOption::ClientSystemArchitecture(arch)) => Some(u16::from(*arch)),
        _ => None,
    };
    let http = vendor.starts_with(HTTP_CLIENT);
    let pxe = vendor.starts_with(PXE_CLIENT);
    if !http && !pxe && arch.is_none() {
        return ClientKind::Plain;
    }
    match (arch, http) {
        (Some(16), _) => ClientKind::UefiX64Http,
        (Some(19), _) => ClientKind::UefiArm64Http,
        (Some(7 | 9), false) => ClientKind::UefiX64Pxe,
        (Some(7 | 9), true) => ClientKind::UefiX64Http,
        (Some(11), false) => ClientKind::UefiArm64Pxe,
        (Some(11), true) => ClientKind::UefiArm64Http,
        (Some(0) | None, _) if pxe => ClientKind::BiosPxe,
        (Some(0), _) => ClientKind::BiosPxe,
        _ => ClientKind::Plain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use dhcproto::v4::{Architecture, UnknownOption};
    use std::net::Ipv4Addr;

    fn request(options: Vec<DhcpOption>) -> Message {
        let mut m = Message::new(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
            &[0x52, 0x54, 0, 0, 0, 1],
        );
        for o in options {
            m.opts_mut().insert(o);
        }
        m
    }

    #[test]
    fn firmware_kinds() {
        let pxe = |arch: u16| {
            classify(&request(vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture::from(arch)),
            ]))
        };
        assert_eq!(pxe(0), ClientKind::BiosPxe);
        assert_eq!(pxe(7), ClientKind::UefiX64Pxe);
        assert_eq!(pxe(9), ClientKind::UefiX64Pxe);
        assert_eq!(pxe(11), ClientKind::UefiArm64Pxe);
        let http = classify(&request(vec![
            DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016:UNDI:003001".to_vec()),
            DhcpOption::ClientSystemArchitecture(Architecture::from(16)),
        ]));
        assert_eq!(http, ClientKind::UefiX64Http);
        let ipxe = classify(&request(vec![
            DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
            DhcpOption::UserClass(b"iPXE".to_vec()),
        ]));
        assert_eq!(ipxe, ClientKind::Ipxe);
        let ipxe175 = classify(&request(vec![DhcpOption::Unknown(UnknownOption::new(
            OptionCode::from(175),
            vec![19, 1, 1],
        ))]));
        assert_eq!(ipxe175, ClientKind::Ipxe);
        assert_eq!(classify(&request(vec![])), ClientKind::Plain);
        assert_eq!(
            classify(&request(vec![DhcpOption::ClassIdentifier(
                b"udhcp 1.35.0".to_vec()
            )])),
            ClientKind::Plain
        );
        for kind in [ClientKind::BiosPxe, ClientKind::Ipxe, ClientKind::Plain] {
            assert_eq!(ClientKind::parse(kind.as_str()), Some(kind));
        }
    }
}
