//! What the rack's DHCP server hands out, validated before it starts.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// Boot files announced to network-booting clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootFiles {
    /// TFTP file for legacy BIOS PXE (an iPXE build).
    pub bios: String,
    /// TFTP file for UEFI x86-64 PXE.
    pub uefi_x64: String,
    /// TFTP file for UEFI arm64 PXE.
    pub uefi_arm64: String,
    /// Base URL of the leaf's HTTP boot server, e.g. `http://10.100.1.1:8070`.
    pub http_base: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpSettings {
    /// The leaf's address on the provisioning network: server identifier,
    /// TFTP server and default router.
    pub server_ip: Ipv4Addr,
    pub prefix_len: u8,
    pub pool_start: Ipv4Addr,
    pub pool_end: Ipv4Addr,
    pub routers: Vec<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub ntp: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    pub lease_secs: u32,
    /// How long an offered address stays reserved for the client.
    pub offer_hold_secs: u32,
    /// How long a declined address stays out of the pool.
    pub decline_quarantine_secs: u32,
    /// Requests accepted per MAC per second (bursts of twice that pass).
    pub requests_per_mac_per_sec: u32,
    /// Requests accepted per bridge port per second (bursts of twice that
    /// pass): a client chooses its MAC, not its port.
    pub requests_per_port_per_sec: u32,
    /// Addresses (leases and outstanding offers) one bridge port may hold.
    pub leases_per_port: u32,
    pub boot: BootFiles,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SettingsError {
    #[error("prefix length {0} is not usable for a provisioning network (8..=30)")]
    Prefix(u8),
    #[error("pool {start}..{end} is empty (start after end)")]
    EmptyPool { start: Ipv4Addr, end: Ipv4Addr },
    #[error("pool {start}..{end} is outside the bridge's subnet {subnet}/{prefix}")]
    PoolOutsideSubnet {
        start: Ipv4Addr,
        end: Ipv4Addr,
        subnet: Ipv4Addr,
        prefix: u8,
    },
    #[error("lease time {0} s is out of range (60..=31536000)")]
    LeaseTime(u32),
    #[error("boot file name or URL `{0}` is longer than the 127 bytes DHCP can carry")]
    BootName(String),
    #[error("leases_per_port must be at least 1")]
    PortQuota,
    #[error("requests_per_mac_per_sec and requests_per_port_per_sec must be at least 1")]
    RateLimit,
}

impl DhcpSettings {
    /// What UEFI HTTP boot clients are told to fetch.
    pub fn http_boot_url(&self, file: &str) -> String {
        format!("{}/boot/{file}", self.boot.http_base)
    }

    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(mask_bits(self.prefix_len))
    }

    pub fn subnet(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.server_ip) & mask_bits(self.prefix_len))
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(u32::from(self.subnet()) | !mask_bits(self.prefix_len))
    }

    pub fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask_bits(self.prefix_len) == u32::from(self.subnet())
    }

    pub fn in_pool(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.pool_start)..=u32::from(self.pool_end)).contains(&u32::from(ip))
            && ip != self.server_ip
            && ip != self.subnet()
            && ip != self.broadcast()
    }

    pub fn pool_size(&self) -> u32 {
        u32::from(self.pool_end).saturating_sub(u32::from(self.pool_start)) + 1
    }

    pub fn validate(&self) -> Result<(), SettingsError> {
        if !(8..=30).contains(&self.prefix_len) {
            return Err(SettingsError::Prefix(self.prefix_len));
        }
        if u32::from(self.pool_start) > u32::from(self.pool_end) {
            return Err(SettingsError::EmptyPool {
                start: self.pool_start,
                end: self.pool_end,
            });
        }
        if !self.in_subnet(self.pool_start) || !self.in_subnet(self.pool_end) {
            return Err(SettingsError::PoolOutsideSubnet {
                start: self.pool_start,
                end: self.pool_end,
                subnet: self.subnet(),
                prefix: self.prefix_len,
            });
        }
        if !(60..=31_536_000).contains(&self.lease_secs) {
            return Err(SettingsError::LeaseTime(self.lease_secs));
        }
        if self.requests_per_mac_per_sec == 0 || self.requests_per_port_per_sec == 0 {
            return Err(SettingsError::RateLimit);
        }
        if self.leases_per_port == 0 {
            return Err(SettingsError::PortQuota);
        }
        let ipxe_script = format!("{}/ipxe/00-00-00-00-00-00", self.boot.http_base);
        for name in [
            &self.boot.bios,
            &self.boot.uefi_x64,
            &self.boot.uefi_arm64,
            &ipxe_script,
            &self.http_boot_url(&self.boot.uefi_x64),
            &self.http_boot_url(&self.boot.uefi_arm64),
        ] {
            if name.len() > 127 {
                return Err(SettingsError::BootName(name.clone()));
            }
        }
        Ok(())
    }
}

fn mask_bits(prefix: u8) -> u32 {
    match prefix {
        0 => 0,
        p if p >= 32 => u32::MAX,
        p => u32::MAX << (32 - u32::from(p)),
    }
}

#[cfg(test)]
pub(crate) fn example() -> DhcpSettings {
    DhcpSettings {
        server_ip: Ipv4Addr::new(10, 100, 1, 1),
        prefix_len: 24,
        pool_start: Ipv4Addr::new(10, 100, 1, 100),
        pool_end: Ipv4Addr::new(10, 100, 1, 102),
        routers: vec![Ipv4Addr::new(10, 100, 1, 1)],
        dns: vec![Ipv4Addr::new(10, 100, 1, 1)],
        ntp: vec![],
        domain: Some("rack1.metalmesh".into()),
        lease_secs: 600,
        offer_hold_secs: 30,
        decline_quarantine_secs: 600,
        requests_per_mac_per_sec: 20,
        requests_per_port_per_sec: 40,
        leases_per_port: 2,
        boot: BootFiles {
            bios: "undionly.kpxe".into(),
            uefi_x64: "ipxe.efi".into(),
            uefi_arm64: "ipxe-arm64.efi".into(),
            http_base: "http://10.100.1.1:8070".into(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_math_and_validation() {
        let s = example();
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(s.subnet(), Ipv4Addr::new(10, 100, 1, 0));
        assert_eq!(s.broadcast(), Ipv4Addr::new(10, 100, 1, 255));
        assert!(s.validate().is_ok());
        assert_eq!(s.pool_size(), 3);
        let outside = DhcpSettings {
            pool_end: Ipv4Addr::new(10, 100, 2, 10),
            ..example()
        };
        assert!(matches!(
            outside.validate(),
            Err(SettingsError::PoolOutsideSubnet { .. })
        ));
        let empty = DhcpSettings {
            pool_start: Ipv4Addr::new(10, 100, 1, 200),
            ..example()
        };
        assert!(matches!(
            empty.validate(),
            Err(SettingsError::EmptyPool { .. })
        ));
        let unlimited = DhcpSettings {
            requests_per_mac_per_sec: 0,
            ..example()
        };
        assert!(matches!(
            unlimited.validate(),
            Err(SettingsError::RateLimit)
        ));
        // The UEFI HTTP boot URL must fit too, not only the file name.
        let mut long_http = example();
        long_http.boot.uefi_x64 = "x".repeat(100);
        assert!(matches!(
            long_http.validate(),
            Err(SettingsError::BootName(url)) if url.starts_with("http://")
        ));
    }
}
