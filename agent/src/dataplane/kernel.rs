//! Reading the agent's objects from the kernel and changing them, through
//! rtnetlink. Only objects the agent owns are read (names `mm-…`, rules at
//! [`RULE_PRIORITY`], routes with [`PROTOCOL`] (245), the gateway address on
//! routed ports, permanent neighbours and FDB entries on its own devices),
//! so nothing else can ever be changed or removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use futures::{StreamExt, TryStreamExt};
use netlink_packet_route::AddressFamily;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    InfoData, InfoKind, InfoVrf, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteType,
};
use netlink_packet_route::rule::{RuleAction, RuleAttribute, RuleMessage};
use rtnetlink::{
    Handle, IpVersion, LinkBridge, LinkUnspec, LinkVrf, LinkVxlan, RouteMessageBuilder,
};

use super::desired::{GATEWAY, NextHop, Object, Plan, RULE_PRIORITY, VXLAN_PORT};
use super::intent::Prefix;
use crate::config::parse_mac;
use metalmesh_lldp::format_mac;

/// Route protocol number marking the agent's routes (`ip route … proto 245`).
/// FRR claims 186–198 (196 is its "static"), so the agent stays clear of them.
pub const PROTOCOL: u8 = 245;
const OWN_PREFIX: &str = "mm-";

/// What the kernel holds, with the messages needed to delete each object.
#[derive(Debug, Default)]
pub struct KernelState {
    pub objects: BTreeSet<Object>,
    /// Routing tables other programs' routes or rules use and the agent
    /// holds nothing in (no VRF device, rule or route of its own; not the
    /// kernel's own tables): a tenant VRF may not take one.
    pub foreign_tables: BTreeSet<u32>,
    links: BTreeMap<String, u32>,
    /// Each enslaved interface's controller (bridge or VRF) by name.
    controllers: BTreeMap<String, String>,
    /// Every interface's IPv4 addresses and prefix lengths.
    ipv4: BTreeMap<String, BTreeSet<(Ipv4Addr, u8)>>,
    addresses: BTreeMap<Object, AddressMessage>,
    rules: BTreeMap<Object, RuleMessage>,
    routes: BTreeMap<Object, RouteMessage>,
    neighbours: BTreeMap<Object, NeighbourMessage>,
}

impl KernelState {
    pub fn index_of(&self, name: &str) -> Option<u32> {
        self.links.get(name).copied()
    }

    /// The interfaces enslaved to `controller`.
    pub fn ports_of(&self, controller: &str) -> BTreeSet<String> {
        self.controllers
            .iter()
            .filter(|(_, c)| *c == controller)
            .map(|(port, _)| port.clone())
            .collect()
    }

    /// Whether `dev` carries `address/len`.
    pub fn has_address(&self, dev: &str, address: Ipv4Addr, len: u8) -> bool {
        self.ipv4
            .get(dev)
            .is_some_and(|addresses| addresses.contains(&(address, len)))
    }

    /// Every interface of the switch, from the same link dump.
    pub fn interface_names(&self) -> BTreeSet<String> {
        self.links.keys().cloned().collect()
    }

    /// What intents are validated against.
    pub fn facts(&self) -> super::intent::KernelFacts {
        super::intent::KernelFacts {
            interfaces: self.interface_names(),
            foreign_tables: self.foreign_tables.clone(),
        }
    }

    /// Forgets the routed ports (the gateway address on a port) the agent
    /// does not own: an operator's interface that happens to carry
    /// 169.254.0.1/32 is never changed or removed.
    pub fn keep_routed_ports(&mut self, owned: impl Fn(&str) -> bool) {
        self.objects.retain(|object| match object {
            Object::RoutedPort { port, .. } => owned(port),
            Object::Address { dev, address, .. } if *address == GATEWAY => owned(dev),
            _ => true,
        });
        self.addresses
            .retain(|object, _| self.objects.contains(object));
    }

    /// The routed ports read (owned ones, after [`Self::keep_routed_ports`]).
    pub fn routed_ports(&self) -> BTreeSet<String> {
        self.objects
            .iter()
            .filter_map(|o| match o {
                Object::RoutedPort { port, .. } => Some(port.clone()),
                _ => None,
            })
            .collect()
    }
}

/// Tables no tenant may use and nobody else's routes make foreign: unspec,
/// default, main, local.
const KERNEL_TABLES: [u32; 4] = [0, 253, 254, 255];

fn link_name(message: &LinkMessage) -> Option<String> {
    message.attributes.iter().find_map(|a| match a {
        LinkAttribute::IfName(name) => Some(name.clone()),
        _ => None,
    })
}

pub async fn read(handle: &Handle) -> Result<KernelState, rtnetlink::Error> {
    let mut state = KernelState::default();
    // One dump at a time: the kernel allows one per netlink socket.
    let messages: Vec<LinkMessage> = handle.link().get().execute().try_collect().await?;
    let address_messages: Vec<AddressMessage> =
        handle.address().get().execute().try_collect().await?;
    let rule_messages: Vec<RuleMessage> = handle
        .rule()
        .get(IpVersion::V4)
        .execute()
        .try_collect()
        .await?;
    let route_messages: Vec<RouteMessage> = handle
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().table_id(0).build())
        .execute()
        .try_collect()
        .await?;
    for message in &messages {
        if let Some(name) = link_name(message) {
            state.links.insert(name, message.header.index);
        }
    }
    let name_of: BTreeMap<u32, String> = state.links.iter().map(|(n, i)| (*i, n.clone())).collect();
    let controller_name = |message: &LinkMessage| {
        message.attributes.iter().find_map(|a| match a {
            LinkAttribute::Controller(index) => name_of.get(index).cloned(),
            _ => None,
        })
    };
    for message in &messages {
        if let (Some(name), Some(controller)) = (link_name(message), controller_name(message)) {
            state.controllers.insert(name, controller);
        }
    }
    for message in &messages {
        let Some(name) = link_name(message) else {
            continue;
        };
        if !name.starts_with(OWN_PREFIX) || name == super::mode::PROBE {
            continue;
        }
        let infos: Vec<&LinkInfo> = message
            .attributes
            .iter()
            .filter_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => Some(infos),
                _ => None,
            })
            .flatten()
            .collect();
        let kind = infos.iter().find_map(|i| match i {
            LinkInfo::Kind(kind) => Some(kind.clone()),
            _ => None,
        });
        let data = infos.iter().find_map(|i| match i {
            LinkInfo::Data(data) => Some(data.clone()),
            _ => None,
        });
        let mac = message.attributes.iter().find_map(|a| match a {
            LinkAttribute::Address(bytes) => Some(format_mac(bytes)),
            _ => None,
        });
        match (kind, data) {
            (Some(InfoKind::Vrf), Some(InfoData::Vrf(vrf))) if name.starts_with("mm-vrf") => {
                if let Some(table) = vrf.iter().find_map(|v| match v {
                    InfoVrf::TableId(t) => Some(*t),
                    _ => None,
                }) {
                    state.objects.insert(Object::Vrf { name, table });
                }
            }
            (Some(InfoKind::Bridge), _) if name.starts_with("mm-br") => {
                state.objects.insert(Object::Bridge {
                    name,
                    mac: mac.unwrap_or_default(),
                    vrf: controller_name(message).filter(|c| c.starts_with("mm-vrf")),
                });
            }
            (Some(InfoKind::Vxlan), Some(InfoData::Vxlan(vxlan))) if name.starts_with("mm-vx") => {
                let vni = vxlan.iter().find_map(|v| match v {
                    InfoVxlan::Id(id) => Some(*id),
                    _ => None,
                });
                let local = vxlan.iter().find_map(|v| match v {
                    InfoVxlan::Local(ip) => Some(*ip),
                    _ => None,
                });
                if let (Some(vni), Some(local)) = (vni, local) {
                    state.objects.insert(Object::Vxlan {
                        name,
                        vni,
                        local,
                        bridge: controller_name(message).unwrap_or_default(),
                    });
                }
            }
            _ => {}
        }
    }

    // Routed ports are the ones carrying the gateway address.
    for message in address_messages {
        let address = message.attributes.iter().find_map(|a| match a {
            AddressAttribute::Local(IpAddr::V4(ip)) | AddressAttribute::Address(IpAddr::V4(ip)) => {
                Some(*ip)
            }
            _ => None,
        });
        if let (Some(ip), Some(dev)) = (address, name_of.get(&message.header.index)) {
            state
                .ipv4
                .entry(dev.clone())
                .or_default()
                .insert((ip, message.header.prefix_len));
        }
        if address != Some(GATEWAY) || message.header.prefix_len != 32 {
            continue;
        }
        let Some(dev) = name_of.get(&message.header.index).cloned() else {
            continue;
        };
        if dev == "lo" {
            continue;
        }
        let vrf = messages
            .iter()
            .find(|m| m.header.index == message.header.index)
            .and_then(controller_name)
            .filter(|c| c.starts_with("mm-vrf"));
        state.objects.insert(Object::RoutedPort {
            port: dev.clone(),
            vrf,
        });
        let object = Object::Address {
            dev,
            address: GATEWAY,
            len: 32,
        };
        state.objects.insert(object.clone());
        state.addresses.insert(object, message);
    }

    // Tables used by anything but the agent; the kernel's own routes in the
    // table of one of its VRF devices (VRF-device mode) do not count.
    let mut foreign: BTreeSet<u32> = BTreeSet::new();
    for message in rule_messages {
        let priority = message.attributes.iter().find_map(|a| match a {
            RuleAttribute::Priority(p) => Some(*p),
            _ => None,
        });
        let rule_table = message
            .attributes
            .iter()
            .find_map(|a| match a {
                RuleAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(message.header.table));
        if priority != Some(RULE_PRIORITY) {
            foreign.insert(rule_table);
            continue;
        }
        let iif = message.attributes.iter().find_map(|a| match a {
            RuleAttribute::Iifname(n) => Some(n.clone()),
            _ => None,
        });
        let to = message.attributes.iter().find_map(|a| match a {
            RuleAttribute::Destination(IpAddr::V4(ip)) => Some(Prefix {
                address: *ip,
                len: message.header.dst_len,
            }),
            _ => None,
        });
        let object = Object::Rule {
            iif,
            to,
            table: rule_table,
        };
        state.objects.insert(object.clone());
        state.rules.insert(object, message);
    }

    for message in route_messages {
        let table = message
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Table(t) => Some(*t),
                _ => None,
            })
            .unwrap_or(u32::from(message.header.table));
        if message.header.protocol != RouteProtocol::Other(PROTOCOL) {
            foreign.insert(table);
            continue;
        }
        let dst = message
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            })
            .unwrap_or(Ipv4Addr::UNSPECIFIED);
        let dev = message
            .attributes
            .iter()
            .find_map(|a| match a {
                RouteAttribute::Oif(index) => name_of.get(index).cloned(),
                _ => None,
            })
            .unwrap_or_default();
        let via = message.attributes.iter().find_map(|a| match a {
            RouteAttribute::Gateway(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        let next_hop = if message.header.kind == RouteType::Unreachable {
            NextHop::Unreachable
        } else if let Some(via) = via {
            NextHop::ViaOnlink { via, dev }
        } else {
            NextHop::Device { dev }
        };
        let object = Object::Route {
            table,
            dst: Prefix {
                address: dst,
                len: message.header.destination_prefix_length,
            },
            next_hop,
        };
        state.objects.insert(object.clone());
        state.routes.insert(object, message);
    }

    // A table holding any of the agent's objects is the agent's, whatever
    // else was added to it since (such routes are left alone, and the
    // tenant stays).
    let own_tables: BTreeSet<u32> = state
        .objects
        .iter()
        .filter_map(|o| match o {
            Object::Vrf { table, .. }
            | Object::Rule { table, .. }
            | Object::Route { table, .. } => Some(*table),
            _ => None,
        })
        .collect();
    state.foreign_tables = foreign
        .into_iter()
        .filter(|t| !KERNEL_TABLES.contains(t) && !own_tables.contains(t))
        .collect();

    for family in [AddressFamily::Inet, AddressFamily::Bridge] {
        let neighbours: Vec<NeighbourMessage> = handle
            .neighbours()
            .get()
            .set_address_family(family)
            .execute()
            .try_collect()
            .await?;
        for message in neighbours {
            let Some(dev) = name_of.get(&message.header.ifindex).cloned() else {
                continue;
            };
            if message.header.state != NeighbourState::Permanent {
                continue;
            }
            let mac = message.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::LinkLayerAddress(bytes) if bytes.len() == 6 => {
                    Some(format_mac(bytes))
                }
                _ => None,
            });
            // Bridge (FDB) entries carry their VXLAN destination as raw bytes.
            let ip = message.attributes.iter().find_map(|a| match a {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => Some(*ip),
                NeighbourAttribute::Destination(NeighbourAddress::Other(bytes)) => {
                    <[u8; 4]>::try_from(bytes.as_slice())
                        .ok()
                        .map(Ipv4Addr::from)
                }
                _ => None,
            });
            let object = match (family, mac, ip) {
                (AddressFamily::Inet, Some(mac), Some(ip)) if dev.starts_with("mm-br") => {
                    Object::Neighbor { dev, ip, mac }
                }
                (AddressFamily::Bridge, Some(mac), Some(dst)) if dev.starts_with("mm-vx") => {
                    Object::Fdb { dev, mac, dst }
                }
                _ => continue,
            };
            state.objects.insert(object.clone());
            state.neighbours.insert(object, message);
        }
    }
    Ok(state)
}

/// The rack's provisioning bridge, as the boot services need it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProvisioningBridge {
    pub name: String,
    pub address: Ipv4Addr,
    pub prefix_len: u8,
}

/// What [`repair_provisioning_bridge`] put back.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BridgeRepair {
    pub created: bool,
    pub address: bool,
    pub ports: Vec<String>,
}

impl BridgeRepair {
    pub fn is_empty(&self) -> bool {
        !self.created && !self.address && self.ports.is_empty()
    }
}

/// Puts the provisioning bridge back when it was deleted or stripped by
/// hand: the bridge itself (up), the leaf's address on it, and `ports` (the
/// machine ports it last held that are not routed now) as its ports again.
pub async fn repair_provisioning_bridge(
    handle: &Handle,
    bridge: &ProvisioningBridge,
    ports: &BTreeSet<String>,
    state: &KernelState,
) -> Result<BridgeRepair, String> {
    let e = |what: &str, error: rtnetlink::Error| {
        format!("provisioning bridge {}: {what}: {error}", bridge.name)
    };
    let mut repair = BridgeRepair::default();
    let index = match state.index_of(&bridge.name) {
        Some(index) => index,
        None => {
            handle
                .link()
                .add(LinkBridge::new(&bridge.name).up().build())
                .execute()
                .await
                .map_err(|error| e("create", error))?;
            repair.created = true;
            let links = link_indexes(handle)
                .await
                .map_err(|error| e("find", error))?;
            *links.get(&bridge.name).ok_or_else(|| {
                format!(
                    "provisioning bridge {}: not there after creating it",
                    bridge.name
                )
            })?
        }
    };
    if repair.created || !state.has_address(&bridge.name, bridge.address, bridge.prefix_len) {
        handle
            .address()
            .add(index, IpAddr::V4(bridge.address), bridge.prefix_len)
            .execute()
            .await
            .map_err(|error| e("address", error))?;
        repair.address = true;
    }
    for port in ports {
        let Some(port_index) = state.index_of(port) else {
            continue;
        };
        if !repair.created && state.controllers.get(port) == Some(&bridge.name) {
            continue;
        }
        handle
            .link()
            .set(
                LinkUnspec::new_with_index(port_index)
                    .controller(index)
                    .up()
                    .build(),
            )
            .execute()
            .await
            .map_err(|error| e(port, error))?;
        repair.ports.push(port.clone());
    }
    Ok(repair)
}

/// One object the kernel refused, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Failure {
    pub object: Object,
    pub error: String,
}

/// Carries out a plan; an object that fails is reported and the rest goes on.
pub async fn apply(
    handle: &Handle,
    plan: &Plan,
    state: &KernelState,
    provisioning_bridge: &str,
) -> Vec<Failure> {
    let mut failures = Vec::new();
    for object in &plan.remove {
        if let Err(error) = remove(handle, object, state, provisioning_bridge).await {
            failures.push(Failure {
                object: object.clone(),
                error,
            });
        }
    }
    // Links created now get their indexes from one dump when a later object
    // first needs one, instead of a lookup per created link.
    let mut links = state.links.clone();
    let mut stale = false;
    let ipv6_off = ipv6_off_by_default();
    // Objects of one kind never depend on each other (a bridge needs its
    // VRF, a route its device: other kinds, created before), so each kind
    // goes out with up to IN_FLIGHT requests outstanding instead of one
    // round trip per object.
    for batch in plan
        .add
        .chunk_by(|a, b| std::mem::discriminant(a) == std::mem::discriminant(b))
    {
        if stale && batch.iter().any(|object| needs_refresh(object, &links)) {
            if let Ok(fresh) = link_indexes(handle).await {
                links = fresh;
            }
            stale = false;
        }
        let links = &links;
        // Built eagerly: a lazily mapped slice iterator held across the
        // await makes the reconciler's future fail the `Send` check.
        let requests: Vec<_> = batch
            .iter()
            .map(|object| async move { (object, add(handle, object, links, ipv6_off).await) })
            .collect();
        let results: Vec<(&Object, Result<bool, String>)> = futures::stream::iter(requests)
            .buffer_unordered(IN_FLIGHT)
            .collect()
            .await;
        for (object, result) in results {
            match result {
                Ok(created) => stale |= created,
                Err(error) => failures.push(Failure {
                    object: object.clone(),
                    error,
                }),
            }
        }
    }
    failures
}

/// Netlink requests the reconciler keeps outstanding within one kind of
/// object (the kernel still handles them one by one, under its lock).
const IN_FLIGHT: usize = 64;

/// Whether `object` refers to an interface missing from `links`.
fn needs_refresh(object: &Object, links: &BTreeMap<String, u32>) -> bool {
    let names: Vec<&String> = match object {
        Object::Vrf { .. } => vec![],
        Object::Bridge { vrf, .. } => vrf.iter().collect(),
        Object::Vxlan { bridge, .. } => vec![bridge],
        Object::RoutedPort { port, vrf } => std::iter::once(port).chain(vrf.iter()).collect(),
        Object::Address { dev, .. } | Object::Neighbor { dev, .. } | Object::Fdb { dev, .. } => {
            vec![dev]
        }
        Object::Rule { .. } => vec![],
        Object::Route { next_hop, .. } => match next_hop {
            NextHop::Device { dev } | NextHop::ViaOnlink { dev, .. } => vec![dev],
            NextHop::Unreachable => vec![],
        },
    };
    names.iter().any(|n| !links.contains_key(*n))
}

async fn link_indexes(handle: &Handle) -> Result<BTreeMap<String, u32>, rtnetlink::Error> {
    let mut map = BTreeMap::new();
    let mut links = handle.link().get().execute();
    while let Some(message) = links.try_next().await? {
        if let Some(name) = link_name(&message) {
            map.insert(name, message.header.index);
        }
    }
    Ok(map)
}

/// Tenants are routed in IPv4: without IPv6 the agent's devices carry no
/// link-local addresses, IPv6 routes or multicast FDB entries, which keeps
/// every later read of the kernel small. A kernel without IPv6 needs nothing,
/// nor does a namespace whose new devices start without it (one sysctl
/// write per device is a blocking file write in the middle of a batch).
fn without_ipv6(name: &str, ipv6_off_by_default: bool) {
    if !ipv6_off_by_default {
        let _ = std::fs::write(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"), "1");
    }
}

/// Whether devices created now start with IPv6 disabled.
fn ipv6_off_by_default() -> bool {
    std::fs::read_to_string("/proc/sys/net/ipv6/conf/default/disable_ipv6")
        .is_ok_and(|value| value.trim() == "1")
}

/// Adds one object; `Ok(true)` when it created an interface.
async fn add(
    handle: &Handle,
    object: &Object,
    links: &BTreeMap<String, u32>,
    ipv6_off_by_default: bool,
) -> Result<bool, String> {
    let index = |name: &str| {
        links
            .get(name)
            .copied()
            .ok_or_else(|| format!("no interface {name}"))
    };
    let e = |error: rtnetlink::Error| error.to_string();
    match object {
        Object::Vrf { name, table } => {
            handle
                .link()
                .add(LinkVrf::new(name, *table).up().build())
                .execute()
                .await
                .map_err(e)?;
            without_ipv6(name, ipv6_off_by_default);
            Ok(true)
        }
        Object::Bridge { name, mac, vrf } => {
            let mut builder = LinkBridge::new(name).up();
            if let Some(mac) = parse_mac(mac) {
                builder = builder.address(mac.to_vec());
            }
            if let Some(vrf) = vrf {
                builder = builder.controller(index(vrf)?);
            }
            handle
                .link()
                .add(builder.build())
                .execute()
                .await
                .map_err(e)?;
            without_ipv6(name, ipv6_off_by_default);
            Ok(true)
        }
        Object::Vxlan {
            name,
            vni,
            local,
            bridge,
        } => {
            let message = LinkVxlan::new(name, *vni)
                .local(*local)
                .port(VXLAN_PORT)
                .learning(false)
                .controller(index(bridge)?)
                .up()
                .build();
            handle.link().add(message).execute().await.map_err(e)?;
            without_ipv6(name, ipv6_off_by_default);
            Ok(true)
        }
        Object::RoutedPort { port, vrf } => {
            let mut builder = LinkUnspec::new_with_index(index(port)?);
            builder = match vrf {
                Some(vrf) => builder.controller(index(vrf)?),
                None => builder.nocontroller(),
            };
            handle
                .link()
                .set(builder.up().build())
                .execute()
                .await
                .map_err(e)?;
            Ok(false)
        }
        Object::Address { dev, address, len } => {
            handle
                .address()
                .add(index(dev)?, IpAddr::V4(*address), *len)
                .execute()
                .await
                .map_err(e)?;
            Ok(false)
        }
        Object::Rule { iif, to, table } => {
            let mut request = handle
                .rule()
                .add()
                .v4()
                .priority(RULE_PRIORITY)
                .table_id(*table)
                .action(RuleAction::ToTable);
            if let Some(iif) = iif {
                request = request.input_interface(iif.clone());
            }
            if let Some(to) = to {
                request = request.destination_prefix(to.address, to.len);
            }
            request.execute().await.map_err(e)?;
            Ok(false)
        }
        Object::Route {
            table,
            dst,
            next_hop,
        } => {
            let mut builder = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(dst.address, dst.len)
                .table_id(*table)
                .protocol(RouteProtocol::Other(PROTOCOL));
            builder = match next_hop {
                NextHop::Device { dev } => builder.output_interface(index(dev)?),
                NextHop::ViaOnlink { via, dev } => {
                    builder.output_interface(index(dev)?).gateway(*via).onlink()
                }
                NextHop::Unreachable => builder.kind(RouteType::Unreachable),
            };
            handle
                .route()
                .add(builder.build())
                .replace()
                .execute()
                .await
                .map_err(e)?;
            Ok(false)
        }
        Object::Neighbor { dev, ip, mac } => {
            let mac = parse_mac(mac).ok_or("bad MAC")?;
            handle
                .neighbours()
                .add(index(dev)?, IpAddr::V4(*ip))
                .link_layer_address(&mac)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(e)?;
            Ok(false)
        }
        Object::Fdb { dev, mac, dst } => {
            let mac = parse_mac(mac).ok_or("bad MAC")?;
            handle
                .neighbours()
                .add_bridge(index(dev)?, &mac)
                .destination(IpAddr::V4(*dst))
                .flags(NeighbourFlags::Own)
                .state(NeighbourState::Permanent)
                .replace()
                .execute()
                .await
                .map_err(e)?;
            Ok(false)
        }
    }
}

async fn remove(
    handle: &Handle,
    object: &Object,
    state: &KernelState,
    provisioning_bridge: &str,
) -> Result<(), String> {
    let e = |error: rtnetlink::Error| error.to_string();
    let gone_ok = |result: Result<(), rtnetlink::Error>| match result {
        // Removing a link removes what hangs off it: already gone is success.
        Err(error) if error.to_string().contains("No such") => Ok(()),
        other => other.map_err(e),
    };
    match object {
        Object::Vrf { name, .. } | Object::Bridge { name, .. } | Object::Vxlan { name, .. } => {
            match state.index_of(name) {
                Some(index) => gone_ok(handle.link().del(index).execute().await),
                None => Ok(()),
            }
        }
        Object::RoutedPort { port, .. } => {
            // Back into the provisioning network.
            let Some(index) = state.index_of(port) else {
                return Ok(());
            };
            let builder = match state.index_of(provisioning_bridge) {
                Some(bridge) => LinkUnspec::new_with_index(index).controller(bridge),
                None => LinkUnspec::new_with_index(index).nocontroller(),
            };
            handle
                .link()
                .set(builder.build())
                .execute()
                .await
                .map_err(e)
        }
        Object::Address { .. } => match state.addresses.get(object) {
            Some(message) => gone_ok(handle.address().del(message.clone()).execute().await),
            None => Ok(()),
        },
        Object::Rule { .. } => match state.rules.get(object) {
            Some(message) => gone_ok(handle.rule().del(message.clone()).execute().await),
            None => Ok(()),
        },
        Object::Route { table, dst, .. } => match state.routes.get(object) {
            Some(message) => gone_ok(handle.route().del(message.clone()).execute().await),
            // Written after the state was read (an incremental change):
            // the kernel finds a route by table, destination and protocol.
            None => {
                let message = RouteMessageBuilder::<Ipv4Addr>::new()
                    .destination_prefix(dst.address, dst.len)
                    .table_id(*table)
                    .protocol(RouteProtocol::Other(PROTOCOL))
                    .build();
                gone_ok(handle.route().del(message).execute().await)
            }
        },
        Object::Neighbor { .. } | Object::Fdb { .. } => match state.neighbours.get(object) {
            Some(message) => gone_ok(handle.neighbours().del(message.clone()).execute().await),
            None => Ok(()),
        },
    }
}
