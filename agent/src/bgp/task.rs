//! The BGP subsystem of the agent: builds the speaker from `[bgp]` and the
//! switch's ports, runs its driver, announces what this leaf originates
//! (its loopback; an EVPN type-5 route per machine address routed here)
//! and takes in what the speaker selects: underlay routes to the kernel
//! ([`super::fib`]), tenant routes to the dataplane's third input.

use std::collections::{BTreeMap, HashMap};
use std::net::{IpAddr, Ipv4Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metalmesh_bgp::driver::{Driver, DriverConfig, RouteSink, SpeakerHandle};
use metalmesh_bgp::rib::Change;
use metalmesh_bgp::{LocalRoute, NextHop, PeerConfig, Remote, RouteKey, Source, Speaker};
use rustbgpd_wire::evpn::{EvpnIpPrefixValue, EvpnRouteKey};
use rustbgpd_wire::nlri::Ipv4Prefix;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::BgpSettings;
use super::fib::{Fib, STALE_AFTER, UnderlayRoute};
use crate::dataplane::Intents;
use crate::dataplane::inputs::LearnedRemote;
use crate::dataplane::intent::{Prefix, RemoteIntent};
use crate::switch::Port;

/// Where the admin API finds the running speaker (replaced on restart).
pub type SpeakerSlot = Arc<Mutex<Option<SpeakerHandle>>>;

#[derive(Debug, Clone)]
pub struct BgpTask {
    pub settings: BgpSettings,
    pub ports: watch::Receiver<Option<Vec<Port>>>,
    /// The dataplane's merged intents: machine ports to announce.
    pub intents: watch::Receiver<Intents>,
    pub learned: Arc<watch::Sender<Vec<LearnedRemote>>>,
    pub slot: SpeakerSlot,
}

/// What the task does with one RIB change.
#[derive(Debug)]
enum Learned {
    Underlay(UnderlayRoute),
    /// A tenant route (EVPN type 5) and what the dataplane should get for
    /// it (`None`: nothing, it is gone or not for us).
    Tenant(RouteKey, Option<LearnedRemote>),
}

/// Hands the speaker's selected-path changes to the task's loop, reduced
/// at once to what the kernel and the dataplane need.
struct ChannelSink(mpsc::UnboundedSender<Vec<Learned>>);

impl RouteSink for ChannelSink {
    fn apply(&mut self, changes: Vec<Change>) {
        let learned = changes
            .iter()
            .filter_map(|change| {
                UnderlayRoute::from_change(change)
                    .map(Learned::Underlay)
                    .or_else(|| tenant_route(change).map(|r| Learned::Tenant(change.key, r)))
            })
            .collect();
        let _ = self.0.send(learned);
    }
}

impl BgpTask {
    pub async fn run(mut self, cancel: CancellationToken) -> anyhow::Result<()> {
        let settings = &self.settings;
        let ports = settings.fabric_ports(&self.ports);
        let mut speaker = Speaker::new(settings.asn);
        let mut remotes = HashMap::new();
        for port in &ports {
            let remote = Remote::Interface(port.clone());
            let id = speaker.add_peer(PeerConfig {
                remote: remote.clone(),
                session: settings.unnumbered_session(),
            });
            remotes.insert(id, remote);
        }
        for neighbor in &settings.neighbors {
            let remote = Remote::Address(neighbor.address);
            let id = speaker.add_peer(PeerConfig {
                remote: remote.clone(),
                session: settings.neighbor_session(neighbor),
            });
            remotes.insert(id, remote);
        }
        tracing::info!(unnumbered = ?ports, numbered = settings.neighbors.len(), "BGP speaker starting");
        let (handle, _connection) = crate::netlink::connect()?;
        let mut fib = Fib::new(handle, remotes).await?;
        let config = DriverConfig {
            listen: Some(std::net::SocketAddr::new(
                IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                settings.port,
            )),
            peer_port: settings.port,
            ..DriverConfig::default()
        };
        let (driver, speaker_handle) = Driver::new(speaker, config);
        let (changes_tx, mut changes) = mpsc::unbounded_channel();
        let driver_cancel = cancel.child_token();
        let mut driver = tokio::spawn(driver.run(ChannelSink(changes_tx), driver_cancel.clone()));
        if let Ok(mut slot) = self.slot.lock() {
            *slot = Some(speaker_handle.clone());
        }
        let mut known_ports: std::collections::BTreeSet<String> = ports.iter().cloned().collect();
        let mut originated: BTreeMap<RouteKey, LocalRoute> = BTreeMap::new();
        let mut learned: BTreeMap<RouteKey, LearnedRemote> = BTreeMap::new();
        let sweep = tokio::time::sleep(STALE_AFTER);
        tokio::pin!(sweep);
        let mut swept = false;
        self.intents.mark_changed();
        let result = loop {
            tokio::select! {
                () = cancel.cancelled() => break Ok(()),
                finished = &mut driver => {
                    break match finished {
                        Ok(Ok(())) => Ok(()),
                        Ok(Err(error)) => Err(anyhow::anyhow!("BGP speaker: {error}")),
                        Err(error) => Err(anyhow::anyhow!("BGP speaker task: {error}")),
                    };
                }
                Some(first) = changes.recv() => {
                    let mut tenant_changed = false;
                    // Everything queued now, then one publication of the
                    // learned tenant routes (a full table arrives in many
                    // batches; the dataplane needs the result once).
                    let mut batches = vec![first];
                    while let Ok(more) = changes.try_recv() {
                        batches.push(more);
                    }
                    for item in batches.into_iter().flatten() {
                        match item {
                            Learned::Underlay(route) => fib.apply(&route).await,
                            Learned::Tenant(key, Some(remote)) => {
                                tenant_changed |= learned.insert(key, remote.clone()) != Some(remote);
                            }
                            Learned::Tenant(key, None) => {
                                tenant_changed |= learned.remove(&key).is_some();
                            }
                        }
                    }
                    if tenant_changed {
                        self.learned.send_replace(learned.values().cloned().collect());
                    }
                }
                changed = self.ports.changed() => {
                    changed?;
                    // Fabric ports that appeared since: a peer each.
                    let names: Vec<String> = self
                        .ports
                        .borrow_and_update()
                        .clone()
                        .unwrap_or_default()
                        .into_iter()
                        .map(|p| p.name)
                        .filter(|name| self.settings.interfaces.matches(name) && !known_ports.contains(name))
                        .collect();
                    for name in names {
                        let remote = Remote::Interface(name.clone());
                        let config = PeerConfig {
                            remote: remote.clone(),
                            session: self.settings.unnumbered_session(),
                        };
                        match speaker_handle.add_peer(config).await {
                            Ok(Some(id)) => fib.add_peer(id, remote),
                            Ok(None) => {}
                            Err(_) => break,
                        }
                        known_ports.insert(name);
                    }
                }
                changed = self.intents.changed() => {
                    changed?;
                    let wanted = self.originations();
                    if let Err(error) = update_originated(&speaker_handle, &mut originated, wanted).await {
                        break Err(anyhow::anyhow!("{error}"));
                    }
                }
                () = &mut sweep, if !swept => {
                    swept = true;
                    fib.sweep().await;
                }
            }
        };
        driver_cancel.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(2), driver).await;
        if let Ok(mut slot) = self.slot.lock() {
            *slot = None;
        }
        result
    }

    /// What this leaf announces now: its loopback, and a type-5 route per
    /// machine address routed here, in its VRF's VNI.
    fn originations(&self) -> BTreeMap<RouteKey, LocalRoute> {
        let loopback = self.settings.router_id;
        let mut wanted = BTreeMap::new();
        wanted.insert(
            RouteKey::V4(Ipv4Prefix::new(loopback, 32)),
            LocalRoute {
                next_hop: NextHop::V4(loopback),
                communities: Vec::new(),
                evpn: None,
            },
        );
        let router_mac = router_mac(loopback);
        for vrf in &self.intents.borrow().vrfs {
            for port in &vrf.ports {
                for address in &port.addresses {
                    let route =
                        metalmesh_bgp::evpn::type5(loopback, vrf.vni, IpAddr::V4(*address), 32);
                    wanted.insert(
                        RouteKey::Evpn(route.key()),
                        LocalRoute {
                            next_hop: NextHop::V4(loopback),
                            communities: metalmesh_bgp::evpn::communities(
                                self.settings.asn,
                                vrf.vni,
                                router_mac,
                            ),
                            evpn: Some(route),
                        },
                    );
                }
            }
        }
        wanted
    }
}

/// The dataplane's router MAC of this leaf, as bytes.
fn router_mac(loopback: Ipv4Addr) -> [u8; 6] {
    let text = crate::dataplane::desired::router_mac(loopback);
    crate::config::parse_mac(&text).unwrap_or([0x02, 0, 0, 0, 0, 0])
}

async fn update_originated(
    speaker: &SpeakerHandle,
    originated: &mut BTreeMap<RouteKey, LocalRoute>,
    wanted: BTreeMap<RouteKey, LocalRoute>,
) -> Result<(), metalmesh_bgp::driver::SpeakerGone> {
    let gone: Vec<RouteKey> = originated
        .keys()
        .filter(|k| !wanted.contains_key(k))
        .copied()
        .collect();
    for key in gone {
        speaker.withdraw(key).await?;
        originated.remove(&key);
    }
    for (key, route) in wanted {
        if originated.get(&key) != Some(&route) {
            speaker.originate(key, route.clone()).await?;
            originated.insert(key, route);
        }
    }
    Ok(())
}

/// For a change of an IPv4 type-5 route: its best path as a remote of its
/// VNI's VRF, or `Some(None)` when there is none to render (gone, or
/// originated here); `None` for other routes.
fn tenant_route(change: &Change) -> Option<Option<LearnedRemote>> {
    let RouteKey::Evpn(EvpnRouteKey::IpPrefix {
        prefix: EvpnIpPrefixValue::V4(prefix),
        ..
    }) = change.key
    else {
        return None;
    };
    let remote = change.selected.first().and_then(|best| {
        let (Source::Peer(_), NextHop::V4(vtep), Some(vni)) =
            (best.source, best.next_hop, best.vni())
        else {
            return None;
        };
        Some(LearnedRemote {
            vni,
            remote: RemoteIntent {
                prefix: Prefix {
                    address: prefix.addr,
                    len: prefix.len,
                },
                vtep,
                router_mac: best
                    .attributes
                    .router_mac()
                    .map(|mac| metalmesh_lldp::format_mac(&mac)),
            },
        })
    });
    Some(remote)
}
