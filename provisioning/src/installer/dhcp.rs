//! The provisioning address, from busybox's `udhcpc` (present in the
//! initramfs and on every testbed host) with a script this module writes.

use std::path::Path;
use std::process::Command;

const SCRIPT: &str = r#"#!/bin/sh
# Written by metalmesh-installer: configure the lease udhcpc obtained.
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound|renew)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      set -- $router
      ip route replace default via "$1" dev "$interface"
    fi
    echo "$serverid" > "$METALMESH_SERVER_FILE"
    ;;
esac
exit 0
"#;

#[derive(Debug, thiserror::Error)]
pub enum DhcpError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("no lease: {0}")]
    NoLease(String),
    #[error("no Ethernet interface")]
    NoInterface,
}

/// The NIC named, or the first one with carrier (else the first one).
pub fn choose_interface(named: Option<&str>) -> Result<String, DhcpError> {
    if let Some(name) = named {
        return Ok(name.to_string());
    }
    let hardware = super::hardware::Sources::default().read(Some(&[]));
    let first_up = hardware.nics.iter().find(|nic| nic.up);
    first_up
        .or(hardware.nics.first())
        .map(|nic| nic.name.clone())
        .ok_or(DhcpError::NoInterface)
}

/// ifindex of a NIC.
pub fn ifindex(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/ifindex"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Runs one DHCP exchange on `interface`; returns the DHCP server's address.
pub fn acquire(interface: &str, work_dir: &Path) -> Result<String, DhcpError> {
    std::fs::create_dir_all(work_dir)?;
    let script = work_dir.join("udhcpc.script");
    let server_file = work_dir.join("dhcp-server");
    std::fs::write(&script, SCRIPT)?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let _ = std::fs::remove_file(&server_file);
    let _ = Command::new("ip")
        .args(["link", "set", interface, "up"])
        .output();
    let output = Command::new("busybox")
        .args([
            "udhcpc", "-i", interface, "-n", "-q", "-t", "10", "-T", "2", "-s",
        ])
        .arg(&script)
        .env("METALMESH_SERVER_FILE", &server_file)
        .output()?;
    let server = std::fs::read_to_string(&server_file).unwrap_or_default();
    let server = server.trim();
    if output.status.success() && !server.is_empty() {
        Ok(server.to_string())
    } else {
        Err(DhcpError::NoLease(
            String::from_utf8_lossy(&output.stderr)
                .trim()
                .chars()
                .take(300)
                .collect(),
        ))
    }
}
