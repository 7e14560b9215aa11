//! The switch's interfaces as the kernel reports them over rtnetlink: one
//! full dump, then link notifications (`RTMGRP_LINK`) kept in a table, with a
//! periodic re-dump in case the kernel dropped notifications under load.

use crate::netlink::AbortOnDrop;
use std::collections::BTreeMap;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use netlink_packet_core::NetlinkPayload;
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkLayerType, LinkMessage, State};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netlink_sys::{AsyncSocket, SocketAddr};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::Port;

/// A full re-dump this often repairs any lost notification.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("cannot open rtnetlink socket: {0}")]
    Socket(#[source] std::io::Error),
    #[error("rtnetlink link dump failed: {0}")]
    Dump(#[from] rtnetlink::Error),
    #[error("rtnetlink notification stream ended")]
    StreamEnded,
}

/// Converts a link message into a port; `None` for the loopback.
pub fn port_from_message(message: &LinkMessage) -> Option<Port> {
    let header = &message.header;
    if header.link_layer_type == LinkLayerType::Loopback {
        return None;
    }
    let mut port = Port {
        name: String::new(),
        ifindex: header.index,
        mac: None,
        mtu: None,
        admin_up: header.flags.contains(LinkFlags::Up),
        oper_up: false,
        oper_state: "unknown".into(),
        speed_mbps: None,
        controller_ifindex: None,
    };
    let mut lower_up = header.flags.contains(LinkFlags::LowerUp);
    for attribute in &message.attributes {
        match attribute {
            LinkAttribute::IfName(name) => port.name = name.clone(),
            LinkAttribute::Address(bytes) if bytes.len() == 6 => {
                port.mac = Some(metalmesh_lldp::format_mac(bytes));
            }
            LinkAttribute::Mtu(mtu) => port.mtu = Some(*mtu),
            LinkAttribute::Controller(index) => port.controller_ifindex = Some(*index),
            LinkAttribute::OperState(state) => {
                port.oper_state = match state {
                    State::Up => "up",
                    State::Down => "down",
                    State::LowerLayerDown => "lowerlayerdown",
                    State::Dormant => "dormant",
                    State::Testing => "testing",
                    State::NotPresent => "notpresent",
                    _ => "unknown",
                }
                .into();
                if *state == State::Up {
                    lower_up = true;
                }
            }
            _ => {}
        }
    }
    if port.name.is_empty() {
        return None;
    }
    // Devices without operstate support (some virtual ones) report
    // "unknown" while passing traffic; carrier (LOWER_UP) decides then.
    port.oper_up =
        port.admin_up && (port.oper_state == "up" || (port.oper_state == "unknown" && lower_up));
    port.speed_mbps = read_speed(&port.name);
    Some(port)
}

/// Link speed from sysfs (what ethtool reports); `None` when the driver has none.
fn read_speed(name: &str) -> Option<u32> {
    std::fs::read_to_string(format!("/sys/class/net/{name}/speed"))
        .ok()
        .and_then(|s| s.trim().parse::<i64>().ok())
        .filter(|s| *s > 0)
        .and_then(|s| u32::try_from(s).ok())
}

/// Dumps every link once.
pub async fn dump(handle: &rtnetlink::Handle) -> Result<Vec<Port>, LinkError> {
    let mut links = handle.link().get().execute();
    let mut ports = Vec::new();
    while let Some(message) = links.try_next().await? {
        if let Some(port) = port_from_message(&message) {
            ports.push(port);
        }
    }
    ports.sort_by_key(|p| p.ifindex);
    Ok(ports)
}

/// One-shot dump with its own connection (for start-up checks and tools).
pub async fn dump_once() -> Result<Vec<Port>, LinkError> {
    let (handle, _driver) = crate::netlink::connect().map_err(LinkError::Socket)?;
    dump(&handle).await
}

/// Keeps `ports` equal to the kernel's links until cancelled.
pub async fn monitor(
    ports: &watch::Sender<Option<Vec<Port>>>,
    cancel: CancellationToken,
) -> Result<(), LinkError> {
    let (mut connection, handle, mut messages) =
        rtnetlink::new_connection().map_err(LinkError::Socket)?;
    connection
        .socket_mut()
        .socket_mut()
        .bind(&SocketAddr::new(0, rtnetlink::constants::RTMGRP_LINK))
        .map_err(LinkError::Socket)?;
    let driver = tokio::spawn(connection);
    let _abort_driver = AbortOnDrop(driver);

    let mut table: BTreeMap<u32, Port> = BTreeMap::new();
    let resync = |table: &mut BTreeMap<u32, Port>, fresh: Vec<Port>| {
        table.clear();
        table.extend(fresh.into_iter().map(|p| (p.ifindex, p)));
    };
    resync(&mut table, dump(&handle).await?);
    publish(ports, &table);
    let mut timer = tokio::time::interval(RESYNC_INTERVAL);
    timer.tick().await;
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = timer.tick() => {
                resync(&mut table, dump(&handle).await?);
                publish(ports, &table);
            }
            message = messages.next() => {
                let Some((message, _)) = message else {
                    return Err(LinkError::StreamEnded);
                };
                match message.payload {
                    // Bridge-port notifications (AF_BRIDGE) describe membership,
                    // not the link itself: a port leaving a bridge still exists.
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewLink(ref link) | RouteNetlinkMessage::DelLink(ref link),
                    ) if link.header.interface_family != AddressFamily::Unspec => continue,
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewLink(link)) => {
                        match port_from_message(&link) {
                            Some(port) => { table.insert(port.ifindex, port); }
                            None => { table.remove(&link.header.index); }
                        }
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                        table.remove(&link.header.index);
                    }
                    _ => continue,
                }
                publish(ports, &table);
            }
        }
    }
}

fn publish(ports: &watch::Sender<Option<Vec<Port>>>, table: &BTreeMap<u32, Port>) {
    let fresh: Vec<Port> = table.values().cloned().collect();
    ports.send_if_modified(|current| {
        if current.as_ref() == Some(&fresh) {
            false
        } else {
            *current = Some(fresh);
            true
        }
    });
}
