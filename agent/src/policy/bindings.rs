//! Which machine is on which port of the provisioning bridge: each port is
//! bound to the first MAC that obtained a DHCP lease through it (as the
//! bridge learned it) and to that lease's address. A binding is what the
//! anti-spoofing rules enforce (a bound port may send only from its MAC and
//! address; an unbound one only DHCP and ARP probes) and what the
//! installer API identifies callers by: the port a caller's lease is bound
//! to, not an address or a name the caller sends.
//!
//! Bindings are persisted (`<state_dir>/port-bindings.json`), so a restart
//! keeps them. A MAC that shows up on another port does not move its
//! binding: a machine moved to another port is an operator's decision
//! (`metalmesh-agent port unbind PORT`).

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use serde::{Deserialize, Serialize};

/// One port's binding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Binding {
    pub mac: String,
    /// The address leased to the MAC (none once the lease is gone).
    pub ip: Option<Ipv4Addr>,
}

/// Something the bindings noticed that an operator should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// A bound MAC was learned on another port.
    MacOnOtherPort {
        mac: String,
        bound: String,
        seen: String,
    },
    /// A bound port shows a lease holder with another MAC.
    OtherMacOnPort {
        port: String,
        bound: String,
        seen: String,
    },
}

impl std::fmt::Display for Conflict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Conflict::MacOnOtherPort { mac, bound, seen } => write!(
                f,
                "MAC {mac}, bound to port {bound}, holds a lease seen on port {seen}; \
                 the binding stays (a move is `metalmesh-agent port unbind {bound}`)"
            ),
            Conflict::OtherMacOnPort { port, bound, seen } => write!(
                f,
                "port {port} is bound to {bound}; lease holder {seen} on it is not admitted"
            ),
        }
    }
}

/// The bindings, shared by the policy task (which learns them) and the
/// machines task (which identifies callers by them).
#[derive(Debug, Clone, Default)]
pub struct PortBindings {
    inner: Arc<RwLock<BTreeMap<String, Binding>>>,
    path: Option<PathBuf>,
}

impl PortBindings {
    /// The bindings kept in `path` (none when the file does not exist; an
    /// unreadable file is an error, not a silent reset).
    pub fn load(path: &Path) -> anyhow::Result<PortBindings> {
        let bindings = match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text).map_err(|e| {
                anyhow::anyhow!("port bindings in {} are unreadable: {e}", path.display())
            })?,
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => BTreeMap::new(),
            Err(error) => anyhow::bail!("cannot read {}: {error}", path.display()),
        };
        Ok(PortBindings {
            inner: Arc::new(RwLock::new(bindings)),
            path: Some(path.to_path_buf()),
        })
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Binding>> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    /// Every binding, by port.
    pub fn all(&self) -> BTreeMap<String, Binding> {
        self.read().clone()
    }

    /// The port `mac` is bound to.
    pub fn port_of_mac(&self, mac: &str) -> Option<String> {
        self.read()
            .iter()
            .find(|(_, b)| b.mac.eq_ignore_ascii_case(mac))
            .map(|(port, _)| port.clone())
    }

    /// Learns from the leases (MAC → address) and where the bridge learned
    /// each MAC (MAC → port, ports of the provisioning bridge only): binds
    /// unbound ports, follows a bound MAC's address. Returns whether
    /// anything changed, and the conflicts seen.
    pub fn learn(
        &self,
        leases: &BTreeMap<String, Ipv4Addr>,
        learned: &BTreeMap<String, String>,
    ) -> anyhow::Result<(bool, Vec<Conflict>)> {
        let mut changed = false;
        let mut conflicts = Vec::new();
        {
            let mut bindings = self.inner.write().unwrap_or_else(|e| e.into_inner());
            // Addresses follow the leases of bound MACs.
            for binding in bindings.values_mut() {
                let ip = leases.get(&binding.mac.to_ascii_lowercase()).copied();
                if binding.ip != ip {
                    binding.ip = ip;
                    changed = true;
                }
            }
            for (mac, ip) in leases {
                let Some(port) = learned.get(mac) else {
                    continue;
                };
                let bound_port = bindings
                    .iter()
                    .find(|(_, b)| b.mac.eq_ignore_ascii_case(mac))
                    .map(|(p, _)| p.clone());
                match (bound_port, bindings.get(port)) {
                    (Some(bound), _) if bound == *port => {}
                    (Some(bound), _) => conflicts.push(Conflict::MacOnOtherPort {
                        mac: mac.clone(),
                        bound,
                        seen: port.clone(),
                    }),
                    (None, Some(other)) => conflicts.push(Conflict::OtherMacOnPort {
                        port: port.clone(),
                        bound: other.mac.clone(),
                        seen: mac.clone(),
                    }),
                    (None, None) => {
                        bindings.insert(
                            port.clone(),
                            Binding {
                                mac: mac.clone(),
                                ip: Some(*ip),
                            },
                        );
                        changed = true;
                    }
                }
            }
        }
        if changed {
            self.persist()?;
        }
        Ok((changed, conflicts))
    }

    /// Forgets `port`'s binding (the operator moved or replaced the
    /// machine); whether there was one.
    pub fn unbind(&self, port: &str) -> anyhow::Result<bool> {
        let removed = self
            .inner
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(port)
            .is_some();
        if removed {
            self.persist()?;
        }
        Ok(removed)
    }

    fn persist(&self) -> anyhow::Result<()> {
        let Some(path) = &self.path else {
            return Ok(());
        };
        let text = serde_json::to_string_pretty(&*self.read())?;
        let tmp = path.with_extension("json.tmp");
        {
            use std::io::Write as _;
            let mut file = std::fs::File::create(&tmp)?;
            file.write_all(text.as_bytes())?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        Ok(())
    }
}

/// Which port of `ports` the bridge learned each MAC on (`bridge -j fdb
/// show br BRIDGE`; the bridge's own and static entries are left out).
pub async fn learned_macs(bridge: &str, ports: &BTreeSet<String>) -> BTreeMap<String, String> {
    super::iproute2_json("bridge", &["-j", "fdb", "show", "br", bridge])
        .await
        .iter()
        .filter(|entry| entry["state"].as_str() != Some("permanent"))
        .filter_map(|entry| {
            let port = entry["ifname"].as_str()?;
            let mac = entry["mac"].as_str()?;
            ports
                .contains(port)
                .then(|| (mac.to_ascii_lowercase(), port.to_string()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map<V: Clone>(pairs: &[(&str, V)]) -> BTreeMap<String, V> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect()
    }

    #[test]
    fn first_lease_binds_a_port_and_nothing_moves_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("port-bindings.json");
        let bindings = PortBindings::load(&path).unwrap();
        let victim = Ipv4Addr::new(10, 100, 1, 101);
        let (changed, conflicts) = bindings
            .learn(
                &map(&[("52:54:00:00:00:01", victim)]),
                &map(&[("52:54:00:00:00:01", "m1-1".to_string())]),
            )
            .unwrap();
        assert!(changed && conflicts.is_empty());
        assert_eq!(
            bindings.port_of_mac("52:54:00:00:00:01").as_deref(),
            Some("m1-1")
        );
        // The victim's MAC learned on the attacker's port: no move.
        let (changed, conflicts) = bindings
            .learn(
                &map(&[("52:54:00:00:00:01", victim)]),
                &map(&[("52:54:00:00:00:01", "m1-2".to_string())]),
            )
            .unwrap();
        assert!(!changed);
        assert!(
            matches!(&conflicts[..], [Conflict::MacOnOtherPort { seen, .. }] if seen == "m1-2")
        );
        // Another lease holder on the victim's port is not admitted.
        let (_, conflicts) = bindings
            .learn(
                &map(&[
                    ("52:54:00:00:00:01", victim),
                    ("52:54:00:00:00:66", Ipv4Addr::new(10, 100, 1, 166)),
                ]),
                &map(&[("52:54:00:00:00:66", "m1-1".to_string())]),
            )
            .unwrap();
        assert!(
            matches!(&conflicts[..], [Conflict::OtherMacOnPort { port, .. }] if port == "m1-1")
        );
        // Kept across a restart; the address follows the lease.
        let reloaded = PortBindings::load(&path).unwrap();
        assert_eq!(reloaded.all()["m1-1"].ip, Some(victim));
        let (changed, _) = reloaded.learn(&BTreeMap::new(), &BTreeMap::new()).unwrap();
        assert!(changed);
        assert_eq!(reloaded.all()["m1-1"].ip, None);
        assert!(reloaded.unbind("m1-1").unwrap());
        assert!(PortBindings::load(&path).unwrap().all().is_empty());
    }

    #[test]
    fn an_unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("port-bindings.json");
        std::fs::write(&path, "{").unwrap();
        assert!(PortBindings::load(&path).is_err());
    }
}
