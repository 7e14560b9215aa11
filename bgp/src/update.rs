//! UPDATE messages to and from routes: received UPDATEs become route
//! announcements and withdrawals with RFC 7606 error handling (a malformed
//! attribute withdraws the UPDATE's routes instead of resetting the
//! session where the RFC allows it); routes to advertise become UPDATEs
//! that fit the 4096-byte message limit.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

use rustbgpd_wire::attribute::{MpReachNlri, MpUnreachNlri, PathAttribute};
use rustbgpd_wire::evpn::EvpnRoute;
use rustbgpd_wire::nlri::{Ipv4NlriEntry, NlriEntry, Prefix};
use rustbgpd_wire::validate::ErrorDisposition;
use rustbgpd_wire::{
    Ipv4UnicastMode, MAX_MESSAGE_LEN, Message, NotificationCode, NotificationMessage, UpdateMessage,
};

use crate::route::{Attributes, Family, NextHop, Path, PeerFacts, PeerId, RouteKey, Source};
use crate::session::{Negotiated, notification};

/// What one received UPDATE says.
#[derive(Debug, Default)]
pub struct Received {
    pub announced: Vec<(RouteKey, Path)>,
    pub withdrawn: Vec<RouteKey>,
    /// The peer finished sending its table of this family (End-of-RIB).
    pub end_of_rib: Option<Family>,
    /// Why routes were withdrawn instead of announced (RFC 7606
    /// treat-as-withdraw, an AS-path loop), for the log.
    pub withdrawn_because: Option<String>,
}

/// Decodes a received UPDATE; an error is the NOTIFICATION to send.
pub fn decode(
    update: &UpdateMessage,
    negotiated: &Negotiated,
    peer: PeerId,
    facts: PeerFacts,
    local_as: u32,
) -> Result<Received, NotificationMessage> {
    let mut received = Received::default();
    if update.withdrawn_routes.is_empty()
        && update.path_attributes.is_empty()
        && update.nlri.is_empty()
    {
        received.end_of_rib = Some(Family::Ipv4Unicast);
        return Ok(received);
    }
    let parsed = update
        .parse_revised(negotiated.four_octet_as, !negotiated.ebgp, false, &[])
        .map_err(|e| {
            let (code, subcode, data) = e.to_notification();
            NotificationMessage::new(code, subcode, data)
        })?;
    let strongest = parsed
        .malformed
        .iter()
        .map(|m| m.disposition)
        .max_by_key(|d| match d {
            ErrorDisposition::AttributeDiscard => 0,
            ErrorDisposition::TreatAsWithdraw => 1,
            ErrorDisposition::SessionReset => 2,
        });
    if let Some(ErrorDisposition::SessionReset) = strongest {
        let first = &parsed.malformed[0];
        let (code, subcode, data) = first.error.to_notification();
        return Err(NotificationMessage::new(code, subcode, data));
    }
    let update = parsed.update;

    let mut next_hop_v4 = None;
    let mut reach: Vec<&MpReachNlri> = Vec::new();
    let mut unreach: Vec<&MpUnreachNlri> = Vec::new();
    let mut kept = Vec::new();
    for attribute in &update.attributes {
        match attribute {
            PathAttribute::NextHop(address) => next_hop_v4 = Some(*address),
            PathAttribute::MpReachNlri(r) => reach.push(r),
            PathAttribute::MpUnreachNlri(u) => unreach.push(u),
            other => kept.push(other.clone()),
        }
    }
    let attributes = Arc::new(Attributes { list: kept });

    // Withdrawals first: an UPDATE may withdraw and announce.
    for entry in &update.withdrawn {
        received.withdrawn.push(RouteKey::V4(entry.prefix));
    }
    for u in &unreach {
        let Some(family) = Family::from_afi_safi(u.afi, u.safi) else {
            continue;
        };
        if u.withdrawn.is_empty() && u.evpn_withdrawn.is_empty() && reach.is_empty() {
            received.end_of_rib = Some(family);
        }
        received
            .withdrawn
            .extend(u.withdrawn.iter().filter_map(nlri_key));
        received
            .withdrawn
            .extend(u.evpn_withdrawn.iter().map(|r| RouteKey::Evpn(r.key())));
    }

    let mut announced: Vec<(RouteKey, NextHop, Option<Box<EvpnRoute>>)> = Vec::new();
    if !update.announced.is_empty() {
        match next_hop_v4 {
            Some(nh) => announced.extend(
                update
                    .announced
                    .iter()
                    .map(|e| (RouteKey::V4(e.prefix), NextHop::V4(nh), None)),
            ),
            None => {
                // Body NLRI without NEXT_HOP: treat-as-withdraw (RFC 7606 §3 d).
                received.withdrawn_because = Some("NEXT_HOP missing".into());
                received
                    .withdrawn
                    .extend(update.announced.iter().map(|e| RouteKey::V4(e.prefix)));
            }
        }
    }
    for r in &reach {
        let Some(family) = Family::from_afi_safi(r.afi, r.safi) else {
            continue;
        };
        if !negotiated.families.contains(&family) {
            continue;
        }
        let next_hop = match (r.next_hop, r.link_local_next_hop) {
            (IpAddr::V4(a), _) => NextHop::V4(a),
            (IpAddr::V6(g), Some(l)) => NextHop::V6 {
                global: Some(g).filter(|g| !g.is_unspecified() && !g.is_unicast_link_local()),
                link_local: Some(l),
            },
            (IpAddr::V6(g), None) => NextHop::v6(g),
        };
        announced.extend(
            r.announced
                .iter()
                .filter_map(|e| nlri_key(e).map(|k| (k, next_hop, None))),
        );
        announced.extend(r.evpn_announced.iter().map(|route| {
            (
                RouteKey::Evpn(route.key()),
                next_hop,
                Some(Box::new(route.clone())),
            )
        }));
    }

    let missing = if announced.is_empty() {
        None
    } else if !update
        .attributes
        .iter()
        .any(|a| matches!(a, PathAttribute::Origin(_)))
    {
        Some("ORIGIN missing")
    } else if !update
        .attributes
        .iter()
        .any(|a| matches!(a, PathAttribute::AsPath(_)))
    {
        Some("AS_PATH missing")
    } else {
        None
    };
    // An attribute this speaker does not know that claims to be well-known
    // (optional bit clear) cannot be honoured: treat-as-withdraw.
    let unknown_well_known = update.attributes.iter().find_map(|a| match a {
        PathAttribute::Unknown(raw) if raw.flags & 0x80 == 0 => Some(raw.type_code),
        _ => None,
    });
    let reason = if let Some(ErrorDisposition::TreatAsWithdraw) = strongest {
        Some(format!(
            "malformed attribute type {} (treat-as-withdraw)",
            parsed.malformed[0].type_code
        ))
    } else if let Some(code) = unknown_well_known {
        Some(format!(
            "unrecognized well-known attribute type {code} (treat-as-withdraw)"
        ))
    } else if let Some(missing) = missing {
        Some(format!("{missing} (treat-as-withdraw)"))
    } else if attributes.contains_as(local_as) {
        Some(format!("AS path loop: contains our AS {local_as}"))
    } else if negotiated.ebgp && attributes.neighbor_as() != Some(negotiated.remote_as) {
        Some(format!(
            "AS path does not start with the peer's AS {}",
            negotiated.remote_as
        ))
    } else {
        None
    };
    if let Some(reason) = reason {
        received.withdrawn_because = Some(reason);
        received
            .withdrawn
            .extend(announced.into_iter().map(|(key, _, _)| key));
        return Ok(received);
    }
    received.announced = announced
        .into_iter()
        .map(|(key, next_hop, evpn)| {
            let path = Path {
                source: Source::Peer(peer),
                peer: Some(facts),
                attributes: Arc::clone(&attributes),
                next_hop,
                evpn,
            };
            (key, path)
        })
        .collect();
    Ok(received)
}

fn nlri_key(entry: &NlriEntry) -> Option<RouteKey> {
    Some(match entry.prefix {
        Prefix::V4(p) => RouteKey::V4(p),
        Prefix::V6(p) => RouteKey::V6(p),
    })
}

/// A route as it is sent to one peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Advertised {
    /// Attributes as sent (AS path prepended, next hop not among them).
    pub attributes: Arc<Attributes>,
    pub next_hop: NextHop,
    pub evpn: Option<Box<EvpnRoute>>,
}

/// UPDATE messages announcing and withdrawing `announce` and `withdraw`,
/// each within the 4096-byte limit.
pub fn encode(
    announce: &[(RouteKey, Advertised)],
    withdraw: &[RouteKey],
    four_octet_as: bool,
) -> Vec<Message> {
    let mut messages = Vec::new();
    // Withdrawals per family.
    let v4: Vec<Ipv4NlriEntry> = withdraw
        .iter()
        .filter_map(|k| match k {
            RouteKey::V4(p) => Some(Ipv4NlriEntry {
                path_id: 0,
                prefix: *p,
            }),
            _ => None,
        })
        .collect();
    for chunk in v4.chunks(400) {
        push_update(&mut messages, &[], chunk, &[], four_octet_as);
    }
    let v6: Vec<NlriEntry> = withdraw
        .iter()
        .filter_map(|k| match k {
            RouteKey::V6(p) => Some(NlriEntry {
                path_id: 0,
                prefix: Prefix::V6(*p),
            }),
            _ => None,
        })
        .collect();
    for chunk in v6.chunks(150) {
        let attribute = PathAttribute::MpUnreachNlri(Box::new(unreach(
            Family::Ipv6Unicast,
            chunk.to_vec(),
            Vec::new(),
        )));
        push_update(&mut messages, &[], &[], &[attribute], four_octet_as);
    }
    let evpn: Vec<EvpnRoute> = announce_withdrawn_evpn(withdraw);
    for chunk in evpn.chunks(60) {
        let attribute = PathAttribute::MpUnreachNlri(Box::new(unreach(
            Family::L2vpnEvpn,
            Vec::new(),
            chunk.to_vec(),
        )));
        push_update(&mut messages, &[], &[], &[attribute], four_octet_as);
    }

    // Announcements grouped by (family, attributes, next hop).
    let mut groups: HashMap<Group, Vec<&(RouteKey, Advertised)>> = HashMap::new();
    let mut order = Vec::new();
    for item in announce {
        let group = (
            item.0.family(),
            Arc::as_ptr(&item.1.attributes) as usize,
            NextHopKey(item.1.next_hop),
        );
        let entry = groups.entry(group).or_default();
        if entry.is_empty() {
            order.push(group);
        }
        entry.push(item);
    }
    for group in order {
        let items = &groups[&group];
        let (family, _, NextHopKey(next_hop)) = group;
        let base = &items[0].1.attributes.list;
        match (family, next_hop) {
            (Family::Ipv4Unicast, NextHop::V4(nh)) => {
                let nlri: Vec<Ipv4NlriEntry> = items
                    .iter()
                    .filter_map(|(k, _)| match k {
                        RouteKey::V4(p) => Some(Ipv4NlriEntry {
                            path_id: 0,
                            prefix: *p,
                        }),
                        _ => None,
                    })
                    .collect();
                for chunk in nlri.chunks(400) {
                    let mut attributes = base.clone();
                    attributes.push(PathAttribute::NextHop(nh));
                    push_update(&mut messages, chunk, &[], &attributes, four_octet_as);
                }
            }
            (Family::Ipv4Unicast | Family::Ipv6Unicast, _) => {
                let nlri: Vec<NlriEntry> = items
                    .iter()
                    .filter_map(|(k, _)| match k {
                        RouteKey::V4(p) => Some(NlriEntry {
                            path_id: 0,
                            prefix: Prefix::V4(*p),
                        }),
                        RouteKey::V6(p) => Some(NlriEntry {
                            path_id: 0,
                            prefix: Prefix::V6(*p),
                        }),
                        RouteKey::Evpn(_) => None,
                    })
                    .collect();
                for chunk in nlri.chunks(150) {
                    let mut attributes = base.clone();
                    attributes.push(PathAttribute::MpReachNlri(Box::new(reach(
                        family,
                        next_hop,
                        chunk.to_vec(),
                        Vec::new(),
                    ))));
                    push_update(&mut messages, &[], &[], &attributes, four_octet_as);
                }
            }
            (Family::L2vpnEvpn, _) => {
                let routes: Vec<EvpnRoute> = items
                    .iter()
                    .filter_map(|(_, a)| a.evpn.as_deref().cloned())
                    .collect();
                for chunk in routes.chunks(60) {
                    let mut attributes = base.clone();
                    attributes.push(PathAttribute::MpReachNlri(Box::new(reach(
                        family,
                        next_hop,
                        Vec::new(),
                        chunk.to_vec(),
                    ))));
                    push_update(&mut messages, &[], &[], &attributes, four_octet_as);
                }
            }
        }
    }
    messages
}

/// The End-of-RIB marker of a family (RFC 4724 §2).
pub fn end_of_rib(family: Family, four_octet_as: bool) -> Message {
    if family == Family::Ipv4Unicast {
        return Message::Update(UpdateMessage::build(
            &[],
            &[],
            &[],
            four_octet_as,
            false,
            Ipv4UnicastMode::Body,
        ));
    }
    let attribute = PathAttribute::MpUnreachNlri(Box::new(unreach(family, Vec::new(), Vec::new())));
    let mut messages = Vec::new();
    push_update(&mut messages, &[], &[], &[attribute], four_octet_as);
    messages.pop().unwrap_or(Message::Keepalive)
}

/// EVPN routes to withdraw: the wire wants whole NLRI, and for a withdrawal
/// only the key fields matter (the rest is zero).
fn announce_withdrawn_evpn(withdraw: &[RouteKey]) -> Vec<EvpnRoute> {
    withdraw
        .iter()
        .filter_map(|k| match k {
            RouteKey::Evpn(key) => crate::evpn::route_for_withdrawal(key),
            _ => None,
        })
        .collect()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct NextHopKey(NextHop);

/// Routes sent in one UPDATE share family, attributes (by pointer) and next hop.
type Group = (Family, usize, NextHopKey);

fn reach(
    family: Family,
    next_hop: NextHop,
    announced: Vec<NlriEntry>,
    evpn: Vec<EvpnRoute>,
) -> MpReachNlri {
    let (afi, safi) = family.afi_safi();
    let (next_hop, link_local_next_hop) = match next_hop {
        NextHop::V4(a) => (IpAddr::V4(a), None),
        NextHop::V6 {
            global: Some(g),
            link_local,
        } => (IpAddr::V6(g), link_local),
        // Only a link-local address (unnumbered): sent as the one next hop.
        NextHop::V6 {
            global: None,
            link_local,
        } => (
            IpAddr::V6(link_local.unwrap_or(Ipv6Addr::UNSPECIFIED)),
            None,
        ),
    };
    MpReachNlri {
        afi,
        safi,
        next_hop,
        link_local_next_hop,
        announced,
        flowspec_announced: Vec::new(),
        evpn_announced: evpn,
        bgpls_announced: Vec::new(),
        vpn_announced: Vec::new(),
        labeled_announced: Vec::new(),
        rtc_announced: Vec::new(),
    }
}

fn unreach(family: Family, withdrawn: Vec<NlriEntry>, evpn: Vec<EvpnRoute>) -> MpUnreachNlri {
    let (afi, safi) = family.afi_safi();
    MpUnreachNlri {
        afi,
        safi,
        withdrawn,
        flowspec_withdrawn: Vec::new(),
        evpn_withdrawn: evpn,
        bgpls_withdrawn: Vec::new(),
        vpn_withdrawn: Vec::new(),
        labeled_withdrawn: Vec::new(),
        rtc_withdrawn: Vec::new(),
    }
}

/// Builds one UPDATE; one that would not fit is split in halves (the
/// chunk sizes above make that rare: long AS paths, many communities).
fn push_update(
    messages: &mut Vec<Message>,
    announced: &[Ipv4NlriEntry],
    withdrawn: &[Ipv4NlriEntry],
    attributes: &[PathAttribute],
    four_octet_as: bool,
) {
    match UpdateMessage::try_build(
        announced,
        withdrawn,
        attributes,
        four_octet_as,
        false,
        Ipv4UnicastMode::Body,
    ) {
        Ok(update) if update.encoded_len() <= usize::from(MAX_MESSAGE_LEN) => {
            messages.push(Message::Update(update));
        }
        Ok(_) if announced.len() > 1 || withdrawn.len() > 1 => {
            let (a1, a2) = announced.split_at(announced.len() / 2);
            let (w1, w2) = withdrawn.split_at(withdrawn.len() / 2);
            push_update(messages, a1, w1, attributes, four_octet_as);
            push_update(messages, a2, w2, attributes, four_octet_as);
        }
        Ok(_) => tracing::warn!("an UPDATE exceeds 4096 bytes even with one prefix; not sent"),
        Err(error) => tracing::warn!(%error, "UPDATE could not be encoded; not sent"),
    }
}

/// The NOTIFICATION for a peer that sent more paths than allowed.
pub fn max_prefixes_notification() -> NotificationMessage {
    notification(
        NotificationCode::Cease,
        rustbgpd_wire::notification::cease_subcode::MAX_PREFIXES,
    )
}
