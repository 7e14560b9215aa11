//! The switch's own inventory: its identity from the configuration and its
//! ports from the kernel. This is the record the inventory mesh gossips.

pub mod links;

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

/// One network interface of the switch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Port {
    pub name: String,
    pub ifindex: u32,
    pub mac: Option<String>,
    pub mtu: Option<u32>,
    /// Administratively up (`ip link set … up`).
    pub admin_up: bool,
    /// Operationally up: admin up and carrier present.
    pub oper_up: bool,
    /// The kernel's RFC 2863 operational state.
    pub oper_state: String,
    /// Link speed in Mbit/s, where the driver reports one.
    pub speed_mbps: Option<u32>,
    /// ifindex of the bridge or bond the port is enslaved to.
    pub controller_ifindex: Option<u32>,
}

/// The switch as the rest of the data center sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SwitchRecord {
    pub name: String,
    pub partition: String,
    pub rack: String,
    pub loopback: Ipv4Addr,
    pub asn: u32,
    /// MAC address used as LLDP chassis ID.
    pub chassis_mac: String,
    pub ports: Vec<Port>,
}

/// Picks the chassis MAC: the lowest-numbered interface with a real
/// (non-zero, unicast) Ethernet address.
pub fn default_chassis_mac(ports: &[Port]) -> Option<[u8; 6]> {
    let mut sorted: Vec<&Port> = ports.iter().collect();
    sorted.sort_by_key(|p| p.ifindex);
    sorted
        .into_iter()
        .filter_map(|p| p.mac.as_deref().and_then(crate::config::parse_mac))
        .find(|mac| mac != &[0; 6] && mac[0] & 1 == 0)
}

/// The host name, for switches whose configuration names none.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "switch".into())
}

/// Keeps the switch record current: the configured identity plus the
/// kernel's ports as they change.
pub async fn publish_record(
    mut record: SwitchRecord,
    mut ports: tokio::sync::watch::Receiver<Option<Vec<Port>>>,
    record_tx: std::sync::Arc<tokio::sync::watch::Sender<Option<SwitchRecord>>>,
    cancel: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    ports.mark_changed();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            changed = ports.changed() => changed?,
        }
        record.ports = ports.borrow_and_update().clone().unwrap_or_default();
        record_tx.send_replace(Some(record.clone()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn port(name: &str, ifindex: u32, mac: &str) -> Port {
        Port {
            name: name.into(),
            ifindex,
            mac: Some(mac.into()),
            mtu: Some(1500),
            admin_up: true,
            oper_up: true,
            oper_state: "up".into(),
            speed_mbps: None,
            controller_ifindex: None,
        }
    }

    #[test]
    fn chassis_mac_is_lowest_real_address() {
        let ports = [
            port("swp2", 5, "02:00:00:00:00:05"),
            port("zero", 2, "00:00:00:00:00:00"),
            port("swp1", 4, "02:00:00:00:00:04"),
            port("mcast", 3, "01:00:5e:00:00:01"),
        ];
        assert_eq!(default_chassis_mac(&ports), Some([2, 0, 0, 0, 0, 4]));
        assert_eq!(default_chassis_mac(&[]), None);
    }
}
