//! The provisioning address, from busybox's `udhcpc` (present in the
//! initramfs and on every testbed host) with a script this module writes.
//! udhcpc keeps running and renews the lease for as long as the installer
//! runs: a machine may wait for an allocation far longer than one lease.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// udhcpc tries 10 times, 2 s apart; this bounds the wait for its lease.
const LEASE_WAIT: Duration = Duration::from_secs(30);

const SCRIPT: &str = r#"#!/bin/sh
# Written by metalmesh-installer: configure the lease udhcpc obtained.
case "$1" in
  deconfig)
    ip addr flush dev "$interface"
    ip link set "$interface" up
    ;;
  bound)
    ip addr flush dev "$interface"
    ip addr add "$ip/${mask:-24}" dev "$interface"
    if [ -n "$router" ]; then
      set -- $router
      ip route replace default via "$1" dev "$interface"
    fi
    echo "$serverid" > "$METALMESH_SERVER_FILE"
    ;;
  renew)
    # The same address renewed stays in place; a new one replaces the old.
    if ! ip addr show dev "$interface" | grep -q "inet $ip/"; then
      ip addr flush dev "$interface"
      ip addr add "$ip/${mask:-24}" dev "$interface"
    fi
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
    let hardware = crate::hardware::Sources::default().read(Some(&[]));
    let first_up = hardware.nics.iter().find(|nic| nic.up);
    first_up
        .or(hardware.nics.first())
        .map(|nic| nic.name.clone())
        .ok_or(DhcpError::NoInterface)
}

/// A lease held by a running udhcpc; dropping it stops the client (the
/// address stays configured, as it would across a kexec).
#[derive(Debug)]
pub struct DhcpClient {
    child: Child,
    /// The DHCP server's address (the leaf).
    pub server: String,
}

impl Drop for DhcpClient {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Obtains a lease on `interface` and keeps renewing it.
pub fn acquire(interface: &str, work_dir: &Path) -> Result<DhcpClient, DhcpError> {
    std::fs::create_dir_all(work_dir)?;
    let script = work_dir.join("udhcpc.script");
    let server_file = work_dir.join("dhcp-server");
    let log_file = work_dir.join("udhcpc.log");
    std::fs::write(&script, SCRIPT)?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let _ = std::fs::remove_file(&server_file);
    let _ = Command::new("ip")
        .args(["link", "set", interface, "up"])
        .output();
    let log = std::fs::File::create(&log_file)?;
    // No -n: should the leaf stay away longer than the lease, udhcpc keeps
    // asking until it is back (the first lease's wait is bounded below).
    let child = Command::new("busybox")
        .args(["udhcpc", "-f", "-i", interface, "-t", "10", "-T", "2", "-s"])
        .arg(&script)
        .env("METALMESH_SERVER_FILE", &server_file)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    let mut client = DhcpClient {
        child,
        server: String::new(),
    };
    let started = Instant::now();
    loop {
        let server = std::fs::read_to_string(&server_file).unwrap_or_default();
        if !server.trim().is_empty() {
            client.server = server.trim().to_string();
            return Ok(client);
        }
        let exited = client.child.try_wait()?.is_some();
        if exited || started.elapsed() > LEASE_WAIT {
            let log = std::fs::read_to_string(&log_file).unwrap_or_default();
            let tail: String = log.trim().chars().rev().take(300).collect();
            return Err(DhcpError::NoLease(if tail.is_empty() {
                format!("udhcpc got no lease within {} s", LEASE_WAIT.as_secs())
            } else {
                tail.chars().rev().collect()
            }));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
