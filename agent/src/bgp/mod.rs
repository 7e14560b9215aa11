//! The leaf's BGP: metalmesh's own speaker (`metalmesh-bgp`) with
//! unnumbered eBGP on the fabric ports and numbered neighbours. The leaf
//! announces its loopback (the VTEP) in IPv4 unicast and an EVPN type-5
//! route for every machine address routed on it; it installs underlay
//! routes to other loopbacks in the main table ([`fib`]) and hands learned
//! tenant routes to the dataplane as its third input. With `backend =
//! "frr"` the same intent is written into the switch's FRR instead
//! ([`frr`]). See `docs/bgp.md`.

pub mod fib;
pub mod frr;
pub mod task;

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;
use std::time::Duration;

use metalmesh_bgp::Family;
use metalmesh_bgp::session::{RemoteAs, SessionConfig};
use metalmesh_config::{ConfigError, Source};

use crate::config::{BgpConfig, PortSelector, RemoteAsConfig, SwitchConfig};

/// A numbered neighbour, checked.
#[derive(Debug, Clone)]
pub struct Neighbor {
    pub address: IpAddr,
    pub remote_as: RemoteAs,
    pub families: BTreeSet<Family>,
    pub passive: bool,
}

/// `[bgp]`, checked: what the speaker is built from.
#[derive(Debug, Clone)]
pub struct BgpSettings {
    pub asn: u32,
    pub router_id: std::net::Ipv4Addr,
    pub interfaces: PortSelector,
    pub neighbors: Vec<Neighbor>,
    pub hold_time: Duration,
    pub max_prefixes: usize,
    pub port: u16,
    pub backend: Backend,
}

/// Where this switch's BGP sessions are read from.
#[derive(Debug, Clone)]
pub enum Sessions {
    Native(task::SpeakerSlot),
    Frr(frr::vtysh::Vtysh),
}

impl Sessions {
    /// The sessions now; none while the speaker restarts or FRR does not
    /// answer.
    pub async fn peers(&self) -> Vec<metalmesh_bgp::speaker::PeerView> {
        match self {
            Sessions::Native(slot) => {
                let speaker = slot.lock().ok().and_then(|s| s.clone());
                match speaker {
                    Some(speaker) => speaker.peers().await.unwrap_or_default(),
                    None => Vec::new(),
                }
            }
            Sessions::Frr(vtysh) => vtysh.sessions().await.unwrap_or_default(),
        }
    }
}

/// Who speaks BGP on this switch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Backend {
    /// metalmesh's own speaker, in the agent.
    Native,
    /// The switch's FRR, configured by the agent through `vtysh`.
    Frr(frr::vtysh::Vtysh),
}

impl BgpSettings {
    /// The switch's ports this leaf runs fabric sessions on, by name.
    pub fn fabric_ports(
        &self,
        ports: &tokio::sync::watch::Receiver<Option<Vec<crate::switch::Port>>>,
    ) -> Vec<String> {
        let mut names: Vec<String> = ports
            .borrow()
            .iter()
            .flatten()
            .map(|p| p.name.clone())
            .filter(|name| self.interfaces.matches(name))
            .collect();
        names.sort();
        names
    }

    /// Checks `[bgp]`; errors name the file, line and key.
    pub fn check(
        bgp: &BgpConfig,
        switch: &SwitchConfig,
        source: &Source,
    ) -> Result<BgpSettings, ConfigError> {
        let backend = match bgp.backend.get_ref().as_str() {
            "native" => Backend::Native,
            "frr" => {
                if let Some(neighbor) = bgp.neighbors.first() {
                    return Err(source.error_at(
                        neighbor.address.span(),
                        "bgp.neighbor",
                        "numbered neighbours are configured in FRR itself with backend \"frr\" \
                         (the agent manages the unnumbered fabric ports, its loopback and the tenants)",
                    ));
                }
                let frr = bgp.frr.clone().unwrap_or(crate::config::FrrConfig {
                    vtysh: std::path::PathBuf::from("/usr/bin/vtysh"),
                    vty_socket: None,
                });
                Backend::Frr(frr::vtysh::Vtysh {
                    program: frr.vtysh,
                    vty_socket: frr.vty_socket,
                })
            }
            other => {
                return Err(source.error_at(
                    bgp.backend.span(),
                    "bgp.backend",
                    format!("unknown backend `{other}` (expected `native` or `frr`)"),
                ));
            }
        };
        if bgp.frr.is_some() && backend == Backend::Native {
            return Err(source.error_at(
                bgp.backend.span(),
                "bgp.frr",
                "[bgp.frr] is set but the backend is `native`",
            ));
        }
        let hold = *bgp.hold_time_secs.get_ref();
        if hold != 0 && !(3..=65_535).contains(&hold) {
            return Err(source.error_at(
                bgp.hold_time_secs.span(),
                "bgp.hold_time_secs",
                format!("{hold} is not 0 or 3..=65535"),
            ));
        }
        let max_prefixes = *bgp.max_prefixes.get_ref();
        if !(1..=10_000_000).contains(&max_prefixes) {
            return Err(source.error_at(
                bgp.max_prefixes.span(),
                "bgp.max_prefixes",
                format!("{max_prefixes} is out of range (1..=10000000)"),
            ));
        }
        let interfaces = PortSelector::parse(&bgp.interfaces, "bgp.interfaces", source)?;
        let mut neighbors = Vec::new();
        let mut seen = HashSet::new();
        for neighbor in &bgp.neighbors {
            let text = neighbor.address.get_ref();
            let address: IpAddr = text.parse().map_err(|_| {
                source.error_at(
                    neighbor.address.span(),
                    "bgp.neighbor.address",
                    format!("`{text}` is not an IP address"),
                )
            })?;
            if !seen.insert(address) {
                return Err(source.error_at(
                    neighbor.address.span(),
                    "bgp.neighbor.address",
                    format!("neighbour {address} is configured twice"),
                ));
            }
            let remote_as = match neighbor.remote_as.get_ref() {
                RemoteAsConfig::Number(0) => None,
                RemoteAsConfig::Number(asn) => Some(RemoteAs::Asn(*asn)),
                RemoteAsConfig::Word(word) if word == "external" => Some(RemoteAs::External),
                RemoteAsConfig::Word(word) if word == "internal" => Some(RemoteAs::Internal),
                RemoteAsConfig::Word(_) => None,
            }
            .ok_or_else(|| {
                source.error_at(
                    neighbor.remote_as.span(),
                    "bgp.neighbor.remote_as",
                    "expected an AS number (1..=4294967295), \"external\" or \"internal\"",
                )
            })?;
            let mut families = BTreeSet::new();
            for family in &neighbor.families {
                let parsed = Family::parse(family.get_ref()).ok_or_else(|| {
                    source.error_at(
                        family.span(),
                        "bgp.neighbor.families",
                        format!(
                            "unknown family `{}` (expected ipv4, ipv6 or evpn)",
                            family.get_ref()
                        ),
                    )
                })?;
                families.insert(parsed);
            }
            if families.is_empty() {
                families = BTreeSet::from([Family::Ipv4Unicast, Family::Ipv6Unicast]);
            }
            neighbors.push(Neighbor {
                address,
                remote_as,
                families,
                passive: neighbor.passive,
            });
        }
        Ok(BgpSettings {
            asn: switch.asn,
            router_id: switch.loopback,
            interfaces,
            neighbors,
            hold_time: Duration::from_secs(u64::from(hold)),
            max_prefixes: max_prefixes as usize,
            port: bgp.port,
            backend,
        })
    }

    /// The session settings of an unnumbered fabric peer.
    pub fn unnumbered_session(&self) -> SessionConfig {
        SessionConfig {
            local_as: self.asn,
            router_id: self.router_id,
            remote_as: RemoteAs::External,
            families: BTreeSet::from(Family::ALL),
            hold_time: self.hold_time,
            connect_retry: Duration::from_secs(1),
            passive: false,
            extended_next_hop: true,
            max_prefixes: self.max_prefixes,
        }
    }

    pub fn neighbor_session(&self, neighbor: &Neighbor) -> SessionConfig {
        SessionConfig {
            local_as: self.asn,
            router_id: self.router_id,
            remote_as: neighbor.remote_as,
            families: neighbor.families.clone(),
            hold_time: self.hold_time,
            connect_retry: Duration::from_secs(1),
            passive: neighbor.passive,
            extended_next_hop: false,
            max_prefixes: self.max_prefixes,
        }
    }
}
