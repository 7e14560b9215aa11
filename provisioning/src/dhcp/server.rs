//! The DHCPv4 server's protocol logic (RFC 2131, 2132, 3046, 4578), free of
//! I/O: a datagram in, replies, lease writes and events out. The service
//! persists the writes before it sends the replies.

use std::collections::{HashMap, HashSet};
use std::net::{Ipv4Addr, SocketAddrV4};

use dhcproto::v4::{DhcpOption, Flags, Message, MessageType, Opcode, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use serde::{Deserialize, Serialize};

use super::client::{ClientKind, classify};
use super::leases::{Lease, LeaseState, Quarantine, Write};
use super::settings::DhcpSettings;

pub const SERVER_PORT: u16 = 67;
pub const CLIENT_PORT: u16 = 68;
/// Relays forwarding more often than this are looping.
const MAX_HOPS: u8 = 16;
/// One `PXE Booting` event per MAC per this many seconds (firmware retries).
const PXE_EVENT_INTERVAL_SECS: u64 = 10;

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub bytes: Vec<u8>,
    pub destination: SocketAddrV4,
}

/// Something the rest of the agent wants to know.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum DhcpEvent {
    /// Network boot firmware asked for an address (lifecycle: `PXE Booting`).
    PxeBooting {
        mac: String,
        kind: ClientKind,
    },
    /// A client got no offer because every address is taken.
    PoolExhausted {
        mac: String,
        pool_size: u32,
    },
    LeaseBound {
        mac: String,
        ip: Ipv4Addr,
        kind: ClientKind,
    },
    Declined {
        mac: String,
        ip: Ipv4Addr,
    },
}

/// Where a datagram came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Its IPv4 source address.
    pub address: Ipv4Addr,
    /// The provisioning bridge port it came in on, when the leaf's filter
    /// marked it (see `metalmesh_packet_socket::marks`).
    pub port: Option<String>,
}

impl Origin {
    pub fn address(address: Ipv4Addr) -> Self {
        Origin {
            address,
            port: None,
        }
    }
}

/// An address offered and not yet requested.
#[derive(Debug, Clone)]
struct Offer {
    ip: Ipv4Addr,
    until: u64,
    port: Option<String>,
}

/// Takes a token from `key`'s bucket (refilled at `rate` per second,
/// bursts of twice that); false when it is empty.
fn allow(buckets: &mut HashMap<String, Bucket>, key: &str, rate: f64, now_ms: u64) -> bool {
    let burst = rate * 2.0;
    if buckets.len() > 100_000 {
        // Bounded memory under a flood of random keys: forget idle buckets.
        buckets.retain(|_, b| now_ms.saturating_sub(b.last_ms) < 10_000);
    }
    let bucket = buckets.entry(key.to_string()).or_insert(Bucket {
        tokens: burst,
        last_ms: now_ms,
    });
    let elapsed = now_ms.saturating_sub(bucket.last_ms) as f64 / 1000.0;
    bucket.tokens = (bucket.tokens + elapsed * rate).min(burst);
    bucket.last_ms = now_ms;
    if bucket.tokens >= 1.0 {
        bucket.tokens -= 1.0;
        true
    } else {
        false
    }
}

/// What one datagram led to.
#[derive(Debug, Default)]
pub struct Outcome {
    pub replies: Vec<Reply>,
    pub writes: Vec<Write>,
    pub events: Vec<DhcpEvent>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DhcpCounters {
    pub received: u64,
    pub malformed: u64,
    pub rate_limited: u64,
    pub ignored: u64,
    pub offers: u64,
    pub acks: u64,
    pub naks: u64,
    pub releases: u64,
    pub declines: u64,
    pub informs: u64,
    pub pool_exhausted: u64,
    /// Messages for a MAC whose lease or offer belongs to another port.
    #[serde(default)]
    pub wrong_port: u64,
    /// Clients refused an address because their port holds its quota.
    #[serde(default)]
    pub port_quota_exceeded: u64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    last_ms: u64,
}

#[derive(Debug)]
pub struct DhcpServer {
    settings: DhcpSettings,
    leases: HashMap<String, Lease>,
    owner_of: HashMap<Ipv4Addr, String>,
    offers: HashMap<String, Offer>,
    offered: HashMap<Ipv4Addr, String>,
    quarantine: HashMap<Ipv4Addr, u64>,
    buckets: HashMap<String, Bucket>,
    port_buckets: HashMap<String, Bucket>,
    /// The MACs that held a lease or offer on each port (pruned when counted).
    holders: HashMap<String, HashSet<String>>,
    pxe_events: HashMap<String, u64>,
    cursor: u32,
    counters: DhcpCounters,
    /// Second of the last sweep of expired offers and quarantine.
    last_sweep: u64,
}

impl DhcpServer {
    /// A server over the persisted leases and quarantine.
    pub fn new(settings: DhcpSettings, leases: Vec<Lease>, quarantine: Vec<Quarantine>) -> Self {
        let mut server = DhcpServer {
            cursor: u32::from(settings.pool_start),
            settings,
            leases: HashMap::new(),
            owner_of: HashMap::new(),
            offers: HashMap::new(),
            offered: HashMap::new(),
            quarantine: quarantine.into_iter().map(|q| (q.ip, q.until)).collect(),
            buckets: HashMap::new(),
            port_buckets: HashMap::new(),
            holders: HashMap::new(),
            pxe_events: HashMap::new(),
            counters: DhcpCounters::default(),
            last_sweep: 0,
        };
        for lease in leases {
            server.owner_of.insert(lease.ip, lease.mac.clone());
            if let Some(port) = &lease.port {
                server
                    .holders
                    .entry(port.clone())
                    .or_default()
                    .insert(lease.mac.clone());
            }
            server.leases.insert(lease.mac.clone(), lease);
        }
        server
    }

    pub fn counters(&self) -> &DhcpCounters {
        &self.counters
    }

    pub fn settings(&self) -> &DhcpSettings {
        &self.settings
    }

    /// Every lease the server holds (bound, released or expired).
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        self.leases.values()
    }

    /// Handles one datagram received at `now_ms` (milliseconds since the
    /// Unix epoch) from `origin`.
    pub fn handle(&mut self, now_ms: u64, origin: &Origin, datagram: &[u8]) -> Outcome {
        let mut outcome = Outcome::default();
        self.counters.received += 1;
        if !options_are_sane(datagram) {
            self.counters.malformed += 1;
            return outcome;
        }
        let message = match Message::decode(&mut Decoder::new(datagram)) {
            Ok(m) => m,
            Err(error) => {
                self.counters.malformed += 1;
                tracing::debug!(%error, len = datagram.len(), "malformed DHCP datagram dropped");
                return outcome;
            }
        };
        // hlen is checked before chaddr(): dhcproto slices chaddr by hlen
        // and panics on lengths above 16.
        if message.opcode() != Opcode::BootRequest
            || message.hlen() != 6
            || message.chaddr().len() < 6
            || message.hops() > MAX_HOPS
        {
            self.counters.malformed += 1;
            return outcome;
        }
        let mac = metalmesh_lldp::format_mac(&message.chaddr()[..6]);
        let port = origin.port.as_deref();
        // The port's bucket first: a flood of random MACs from one port
        // must not reach the per-MAC buckets' memory at all.
        let per_port = f64::from(self.settings.requests_per_port_per_sec);
        if port.is_some_and(|p| !allow(&mut self.port_buckets, p, per_port, now_ms))
            || !allow(
                &mut self.buckets,
                &mac,
                f64::from(self.settings.requests_per_mac_per_sec),
                now_ms,
            )
        {
            self.counters.rate_limited += 1;
            return outcome;
        }
        let giaddr = message.giaddr();
        if !giaddr.is_unspecified() && !self.settings.in_subnet(giaddr) {
            // Relayed from a network this server does not serve.
            self.counters.ignored += 1;
            return outcome;
        }
        let now = now_ms / 1000;
        self.expire(now);
        if let Some(port) = port
            && let Some(other) = self.held_elsewhere(now, &mac, port)
        {
            // The MAC's address belongs to another port: whoever sends
            // this chose the MAC. Nothing is answered (a NAK would be
            // broadcast and unsettle the real holder).
            self.counters.wrong_port += 1;
            tracing::warn!(%mac, port, holder = other, "DHCP message for a MAC held on another port ignored");
            return outcome;
        }
        let kind = classify(&message);
        match message.opts().msg_type() {
            Some(MessageType::Discover) => {
                self.discover(now, &mac, port, kind, &message, &mut outcome)
            }
            Some(MessageType::Request) => {
                self.request(now, &mac, port, kind, &message, &mut outcome)
            }
            Some(MessageType::Decline) => self.decline(now, &mac, &message, &mut outcome),
            Some(MessageType::Release) => {
                self.release(now, &mac, origin.address, &message, &mut outcome)
            }
            Some(MessageType::Inform) => self.inform(&mac, kind, &message, &mut outcome),
            _ => self.counters.ignored += 1,
        }
        outcome
    }

    /// Sweeps expired offers and quarantine entries, once per second at
    /// most: a sweep walks every outstanding offer. Between sweeps, stale
    /// entries are harmless (an expired offer is just a reservation that
    /// lasts up to a second longer).
    fn expire(&mut self, now: u64) {
        if now == self.last_sweep {
            return;
        }
        self.last_sweep = now;
        self.offers.retain(|_, offer| {
            let keep = offer.until > now;
            if !keep {
                self.offered.remove(&offer.ip);
            }
            keep
        });
        self.quarantine.retain(|_, until| *until > now);
    }

    /// Withdraws the address offered to `mac`, if any.
    fn drop_offer(&mut self, mac: &str) {
        if let Some(offer) = self.offers.remove(mac) {
            self.offered.remove(&offer.ip);
        }
    }

    /// Whether `mac` holds an address (a bound lease or an offer) on `port`.
    fn holds_on(&self, now: u64, mac: &str, port: &str) -> bool {
        let lease = self.leases.get(mac).is_some_and(|l| {
            l.state == LeaseState::Bound && l.expires > now && l.port.as_deref() == Some(port)
        });
        lease
            || self
                .offers
                .get(mac)
                .is_some_and(|o| o.until > now && o.port.as_deref() == Some(port))
    }

    /// The other port `mac`'s bound lease or offer belongs to, if any.
    fn held_elsewhere(&self, now: u64, mac: &str, port: &str) -> Option<String> {
        let lease = self
            .leases
            .get(mac)
            .filter(|l| l.state == LeaseState::Bound && l.expires > now)
            .and_then(|l| l.port.as_ref());
        let offer = self
            .offers
            .get(mac)
            .filter(|o| o.until > now)
            .and_then(|o| o.port.as_ref());
        lease.or(offer).filter(|p| *p != port).cloned()
    }

    /// Whether `mac` may take (another) address on `port`: it already holds
    /// one there, or the port holds fewer than its quota.
    fn within_quota(&mut self, now: u64, mac: &str, port: Option<&str>) -> bool {
        let Some(port) = port else {
            return true;
        };
        if self.holds_on(now, mac, port) {
            return true;
        }
        let Some(mut holders) = self.holders.remove(port) else {
            return true;
        };
        holders.retain(|holder| self.holds_on(now, holder, port));
        let room = holders.len() < self.settings.leases_per_port as usize;
        if !holders.is_empty() {
            self.holders.insert(port.to_string(), holders);
        }
        if !room {
            self.counters.port_quota_exceeded += 1;
            tracing::warn!(%mac, port, quota = self.settings.leases_per_port, "DHCP port quota reached: no address");
        }
        room
    }

    fn note_holder(&mut self, mac: &str, port: Option<&str>) {
        if let Some(port) = port {
            self.holders
                .entry(port.to_string())
                .or_default()
                .insert(mac.to_string());
        }
    }

    /// Forgets which port the leases obtained on `port` came from (the
    /// machine behind it moved, `metalmesh-agent port unbind`): their next
    /// request binds them to the port it arrives on.
    pub fn forget_port(&mut self, port: &str) -> Vec<Write> {
        self.holders.remove(port);
        for offer in self.offers.values_mut() {
            if offer.port.as_deref() == Some(port) {
                offer.port = None;
            }
        }
        self.leases
            .values_mut()
            .filter(|l| l.port.as_deref() == Some(port))
            .map(|l| {
                l.port = None;
                Write::Lease(l.clone())
            })
            .collect()
    }

    /// Whether `ip` may be given to `mac` now.
    fn free_for(&self, ip: Ipv4Addr, mac: &str, now: u64) -> bool {
        if !self.settings.in_pool(ip) || self.quarantine.contains_key(&ip) {
            return false;
        }
        if self.offered.get(&ip).is_some_and(|owner| owner != mac) {
            return false;
        }
        match self.owner_of.get(&ip) {
            None => true,
            Some(owner) if owner == mac => true,
            Some(owner) => self
                .leases
                .get(owner)
                .is_none_or(|l| l.state != LeaseState::Bound || l.expires <= now),
        }
    }

    fn choose(&mut self, now: u64, mac: &str, requested: Option<Ipv4Addr>) -> Option<Ipv4Addr> {
        if let Some(offer) = self.offers.get(mac) {
            return Some(offer.ip);
        }
        if let Some(lease) = self.leases.get(mac) {
            let ip = lease.ip;
            if self.free_for(ip, mac, now) {
                return Some(ip);
            }
        }
        if let Some(ip) = requested.filter(|ip| self.free_for(*ip, mac, now)) {
            return Some(ip);
        }
        // Next fit from a moving cursor: new clients take fresh addresses
        // first, so recently used ones are reused last.
        let start = u32::from(self.settings.pool_start);
        let size = self.settings.pool_size();
        for step in 0..size {
            let candidate = start + (self.cursor.wrapping_sub(start).wrapping_add(step)) % size;
            let ip = Ipv4Addr::from(candidate);
            let owned_elsewhere = self.owner_of.get(&ip).is_some_and(|o| o != mac);
            // Addresses that ever had another owner are left for a second pass.
            if !owned_elsewhere && self.free_for(ip, mac, now) {
                self.cursor = candidate.wrapping_add(1);
                return Some(ip);
            }
        }
        (0..size)
            .map(|i| Ipv4Addr::from(start + i))
            .find(|ip| self.free_for(*ip, mac, now))
    }

    fn discover(
        &mut self,
        now: u64,
        mac: &str,
        port: Option<&str>,
        kind: ClientKind,
        m: &Message,
        out: &mut Outcome,
    ) {
        if !self.within_quota(now, mac, port) {
            return;
        }
        self.pxe_event(now, mac, kind, out);
        let requested = requested_ip(m);
        let Some(ip) = self.choose(now, mac, requested) else {
            self.counters.pool_exhausted += 1;
            tracing::warn!(%mac, pool_size = self.settings.pool_size(), "DHCP pool exhausted: no offer");
            out.events.push(DhcpEvent::PoolExhausted {
                mac: mac.to_string(),
                pool_size: self.settings.pool_size(),
            });
            return;
        };
        if let Some(old) = self.offers.insert(
            mac.to_string(),
            Offer {
                ip,
                until: now + u64::from(self.settings.offer_hold_secs),
                port: port.map(str::to_string),
            },
        ) && old.ip != ip
        {
            self.offered.remove(&old.ip);
        }
        self.offered.insert(ip, mac.to_string());
        self.note_holder(mac, port);
        self.counters.offers += 1;
        out.replies
            .extend(self.reply(m, MessageType::Offer, ip, kind, true));
    }

    fn request(
        &mut self,
        now: u64,
        mac: &str,
        port: Option<&str>,
        kind: ClientKind,
        m: &Message,
        out: &mut Outcome,
    ) {
        let server_id = match m.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(ip)) => Some(*ip),
            _ => None,
        };
        let requested = requested_ip(m);
        let ciaddr = m.ciaddr();
        let ip = match (server_id, requested) {
            // SELECTING: the client picked an offer.
            (Some(id), _) if id != self.settings.server_ip => {
                // It chose another server: our offer is free again.
                self.drop_offer(mac);
                self.counters.ignored += 1;
                return;
            }
            (Some(_), Some(ip)) => ip,
            (Some(_), None) => {
                self.nak(m, "SELECTING request without a requested address", out);
                return;
            }
            // INIT-REBOOT: verify the address the client remembers.
            (None, Some(ip)) => ip,
            // RENEWING / REBINDING: the client uses ciaddr.
            (None, None) if !ciaddr.is_unspecified() => ciaddr,
            (None, None) => {
                self.nak(m, "request names no address", out);
                return;
            }
        };
        if !self.settings.in_subnet(ip) {
            self.nak(m, "address is not on this network", out);
            return;
        }
        let has_offer = self.offers.get(mac).is_some_and(|o| o.ip == ip);
        let has_lease = self.leases.get(mac).is_some_and(|l| l.ip == ip);
        if !has_offer && !has_lease && !self.settings.in_pool(ip) {
            self.nak(m, "address is outside the pool", out);
            return;
        }
        // Even a client's own lease or offer yields to an address offered to
        // another client since (its lease had ended) or declined as in use.
        let contested = self.quarantine.contains_key(&ip)
            || self.offered.get(&ip).is_some_and(|owner| owner != mac);
        if contested || !(has_offer || has_lease || self.free_for(ip, mac, now)) {
            self.nak(m, "address belongs to another client", out);
            return;
        }
        if !self.within_quota(now, mac, port) {
            return;
        }
        self.drop_offer(mac);
        let hostname = match m.opts().get(OptionCode::Hostname) {
            Some(DhcpOption::Hostname(h)) => Some(h.chars().take(64).collect()),
            _ => None,
        };
        let lease = Lease {
            mac: mac.to_string(),
            ip,
            state: LeaseState::Bound,
            expires: now + u64::from(self.settings.lease_secs),
            client_kind: kind,
            hostname,
            updated: now,
            port: port.map(str::to_string),
        };
        self.note_holder(mac, port);
        if let Some(previous) = self.leases.get(mac)
            && previous.ip != ip
        {
            self.owner_of.remove(&previous.ip);
        }
        if let Some(previous_owner) = self.owner_of.insert(ip, mac.to_string())
            && previous_owner != mac
        {
            self.leases.remove(&previous_owner);
        }
        self.leases.insert(mac.to_string(), lease.clone());
        out.writes.push(Write::Lease(lease));
        out.events.push(DhcpEvent::LeaseBound {
            mac: mac.to_string(),
            ip,
            kind,
        });
        self.counters.acks += 1;
        out.replies
            .extend(self.reply(m, MessageType::Ack, ip, kind, true));
    }

    fn decline(&mut self, now: u64, mac: &str, m: &Message, out: &mut Outcome) {
        let Some(ip) = requested_ip(m) else {
            self.counters.ignored += 1;
            return;
        };
        let ours = self.leases.get(mac).is_some_and(|l| l.ip == ip)
            || self.offers.get(mac).is_some_and(|o| o.ip == ip);
        if !ours {
            self.counters.ignored += 1;
            return;
        }
        self.counters.declines += 1;
        let until = now + u64::from(self.settings.decline_quarantine_secs);
        self.quarantine.insert(ip, until);
        self.drop_offer(mac);
        if self.leases.remove(mac).is_some() {
            self.owner_of.remove(&ip);
        }
        tracing::warn!(%mac, %ip, "address declined (in use elsewhere): quarantined");
        out.writes.push(Write::Quarantine(Quarantine {
            ip,
            until,
            mac: mac.to_string(),
        }));
        out.writes.push(Write::Forget {
            mac: mac.to_string(),
        });
        out.events.push(DhcpEvent::Declined {
            mac: mac.to_string(),
            ip,
        });
    }

    /// A client releases its address from that address (RFC 2131 §4.4.6);
    /// a RELEASE from elsewhere is ignored: on the provisioning bridge an
    /// address is tied to one port, so only the holder may give it up.
    fn release(&mut self, now: u64, mac: &str, source: Ipv4Addr, m: &Message, out: &mut Outcome) {
        let ip = m.ciaddr();
        match self.leases.get_mut(mac) {
            Some(lease) if lease.ip == ip && source == ip && lease.state == LeaseState::Bound => {
                lease.state = LeaseState::Released;
                lease.expires = now;
                lease.updated = now;
                self.counters.releases += 1;
                out.writes.push(Write::Lease(lease.clone()));
            }
            _ => self.counters.ignored += 1,
        }
    }

    fn inform(&mut self, _mac: &str, kind: ClientKind, m: &Message, out: &mut Outcome) {
        if m.ciaddr().is_unspecified() {
            self.counters.ignored += 1;
            return;
        }
        self.counters.informs += 1;
        out.replies
            .extend(self.reply(m, MessageType::Ack, Ipv4Addr::UNSPECIFIED, kind, false));
    }

    fn nak(&mut self, m: &Message, why: &str, out: &mut Outcome) {
        self.counters.naks += 1;
        tracing::debug!(mac = %metalmesh_lldp::format_mac(&m.chaddr()[..6]), why, "DHCPNAK");
        let mut reply = self.reply_header(
            m,
            MessageType::Nak,
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::UNSPECIFIED,
        );
        reply
            .opts_mut()
            .insert(DhcpOption::Message(why.to_string()));
        // A NAK goes to everyone: the client may not be able to receive unicast.
        let destination = if m.giaddr().is_unspecified() {
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        } else {
            SocketAddrV4::new(m.giaddr(), SERVER_PORT)
        };
        out.replies.extend(finish(m, reply, destination));
    }

    /// A reply's header and the options every reply carries.
    fn reply_header(
        &self,
        m: &Message,
        kind: MessageType,
        ciaddr: Ipv4Addr,
        yiaddr: Ipv4Addr,
    ) -> Message {
        let mut reply = Message::new_with_id(
            m.xid(),
            ciaddr,
            yiaddr,
            Ipv4Addr::UNSPECIFIED,
            m.giaddr(),
            m.chaddr(),
        );
        reply.set_opcode(Opcode::BootReply);
        reply.set_flags(m.flags());
        let opts = reply.opts_mut();
        opts.insert(DhcpOption::MessageType(kind));
        opts.insert(DhcpOption::ServerIdentifier(self.settings.server_ip));
        reply
    }

    fn pxe_event(&mut self, now: u64, mac: &str, kind: ClientKind, out: &mut Outcome) {
        if !kind.is_network_boot() {
            return;
        }
        let last = self.pxe_events.get(mac).copied().unwrap_or(0);
        if now.saturating_sub(last) >= PXE_EVENT_INTERVAL_SECS || last == 0 {
            if self.pxe_events.len() > 100_000 {
                self.pxe_events
                    .retain(|_, t| now.saturating_sub(*t) < PXE_EVENT_INTERVAL_SECS);
            }
            self.pxe_events.insert(mac.to_string(), now);
            out.events.push(DhcpEvent::PxeBooting {
                mac: mac.to_string(),
                kind,
            });
        }
    }

    /// OFFER or ACK (with `lease` false: an INFORM answer without lease times).
    fn reply(
        &self,
        m: &Message,
        kind_of: MessageType,
        yiaddr: Ipv4Addr,
        client: ClientKind,
        lease: bool,
    ) -> Option<Reply> {
        let s = &self.settings;
        let mut reply = self.reply_header(m, kind_of, m.ciaddr(), yiaddr);
        let opts = reply.opts_mut();
        if lease {
            opts.insert(DhcpOption::AddressLeaseTime(s.lease_secs));
            opts.insert(DhcpOption::Renewal(s.lease_secs / 2));
            opts.insert(DhcpOption::Rebinding(s.lease_secs / 8 * 7));
        }
        opts.insert(DhcpOption::SubnetMask(s.mask()));
        opts.insert(DhcpOption::BroadcastAddr(s.broadcast()));
        if !s.routers.is_empty() {
            opts.insert(DhcpOption::Router(s.routers.clone()));
        }
        if !s.dns.is_empty() {
            opts.insert(DhcpOption::DomainNameServer(s.dns.clone()));
        }
        if !s.ntp.is_empty() {
            opts.insert(DhcpOption::NtpServers(s.ntp.clone()));
        }
        if let Some(domain) = &s.domain {
            opts.insert(DhcpOption::DomainName(domain.clone()));
        }
        let mac = metalmesh_lldp::format_mac(&m.chaddr()[..6]);
        match client {
            ClientKind::BiosPxe | ClientKind::UefiX64Pxe | ClientKind::UefiArm64Pxe => {
                let file = match client {
                    ClientKind::BiosPxe => &s.boot.bios,
                    ClientKind::UefiX64Pxe => &s.boot.uefi_x64,
                    _ => &s.boot.uefi_arm64,
                };
                reply.set_siaddr(s.server_ip);
                set_file(&mut reply, file);
                reply
                    .opts_mut()
                    .insert(DhcpOption::ClassIdentifier(b"PXEClient".to_vec()));
                reply.opts_mut().insert(DhcpOption::TFTPServerName(
                    s.server_ip.to_string().into_bytes(),
                ));
            }
            ClientKind::UefiX64Http | ClientKind::UefiArm64Http => {
                let file = if client == ClientKind::UefiX64Http {
                    &s.boot.uefi_x64
                } else {
                    &s.boot.uefi_arm64
                };
                set_file(&mut reply, &s.http_boot_url(file));
                reply
                    .opts_mut()
                    .insert(DhcpOption::ClassIdentifier(b"HTTPClient".to_vec()));
            }
            ClientKind::Ipxe => {
                // iPXE option 175.176 (no-pxedhcp): this offer is all there
                // is; without it iPXE waits seconds for ProxyDHCP offers.
                reply
                    .opts_mut()
                    .insert(DhcpOption::Unknown(dhcproto::v4::UnknownOption::new(
                        OptionCode::Unknown(175),
                        vec![176, 1, 1],
                    )));
                reply.set_siaddr(s.server_ip);
                set_file(
                    &mut reply,
                    &format!("{}/ipxe/{}", s.boot.http_base, mac.replace(':', "-")),
                );
            }
            ClientKind::Plain => {}
        }
        let destination = if !m.giaddr().is_unspecified() {
            SocketAddrV4::new(m.giaddr(), SERVER_PORT)
        } else if !m.ciaddr().is_unspecified() {
            SocketAddrV4::new(m.ciaddr(), CLIENT_PORT)
        } else {
            // Without ARP for an address the client does not have yet, a
            // broadcast on the provisioning bridge is what every client hears.
            SocketAddrV4::new(Ipv4Addr::BROADCAST, CLIENT_PORT)
        };
        finish(m, reply, destination)
    }
}

/// Echoes the relay's option 82 and encodes; a reply that cannot be encoded
/// is not sent (never an empty datagram).
fn finish(m: &Message, mut reply: Message, destination: SocketAddrV4) -> Option<Reply> {
    echo_relay_info(m, &mut reply);
    match reply.to_vec() {
        Ok(bytes) => Some(Reply { bytes, destination }),
        Err(error) => {
            tracing::error!(%error, "DHCP reply not encodable; not sent");
            None
        }
    }
}

/// Options whose length the decoder only checks with debug assertions:
/// (code, exact length or minimum when negative).
const CHECKED_LENGTHS: [(u8, i16); 7] = [
    (80, 0),
    (81, -3),
    (94, 3),
    (152, 4),
    (153, 4),
    (154, 4),
    (155, 4),
];
/// Offset of the options (fixed header + magic cookie).
const OPTIONS_OFFSET: usize = 240;

/// Walks the options before the decoder does and rejects lengths it would
/// assert on, and option overloading (52), which this server does not use.
/// A checked option may appear once: the decoder concatenates repeated
/// options (RFC 3396), and two well-formed halves make a length it asserts on.
fn options_are_sane(datagram: &[u8]) -> bool {
    let mut offset = OPTIONS_OFFSET;
    let mut seen_checked = [false; CHECKED_LENGTHS.len()];
    while let Some(&code) = datagram.get(offset) {
        match code {
            0 => offset += 1,
            255 => return true,
            _ => {
                let Some(&len) = datagram.get(offset + 1) else {
                    return false;
                };
                if code == 52 {
                    return false;
                }
                let bad = CHECKED_LENGTHS.iter().any(|&(c, expected)| {
                    c == code
                        && if expected >= 0 {
                            i16::from(len) != expected
                        } else {
                            i16::from(len) < -expected
                        }
                });
                if bad {
                    return false;
                }
                if let Some(index) = CHECKED_LENGTHS.iter().position(|&(c, _)| c == code) {
                    if seen_checked[index] {
                        return false;
                    }
                    seen_checked[index] = true;
                }
                offset += 2 + usize::from(len);
            }
        }
    }
    true
}

fn requested_ip(m: &Message) -> Option<Ipv4Addr> {
    match m.opts().get(OptionCode::RequestedIpAddress) {
        Some(DhcpOption::RequestedIpAddress(ip)) => Some(*ip),
        _ => None,
    }
}

/// The boot file field holds 128 bytes including its NUL; settings keep
/// names shorter (validated), this guards the rest.
fn set_file(reply: &mut Message, file: &str) {
    if file.len() < 128 {
        reply.set_fname_str(file);
    } else {
        tracing::error!(file, "boot file name longer than 127 bytes; not sent");
    }
}

/// Relay agent information (option 82) goes back unchanged (RFC 3046 §2.2).
fn echo_relay_info(request: &Message, reply: &mut Message) {
    if let Some(info) = request.opts().get(OptionCode::RelayAgentInformation) {
        reply.opts_mut().insert(info.clone());
    }
}

/// Builds requests in tests and tools.
pub fn request_message(mac: [u8; 6], kind: MessageType, options: Vec<DhcpOption>) -> Message {
    let mut m = Message::new_with_id(
        u32::from_be_bytes([mac[2], mac[3], mac[4], mac[5]]),
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        Ipv4Addr::UNSPECIFIED,
        &mac,
    );
    m.set_flags(Flags::default());
    m.opts_mut().insert(DhcpOption::MessageType(kind));
    for option in options {
        m.opts_mut().insert(option);
    }
    m
}

#[cfg(test)]
mod tests {
    #[test]
    fn fixed_length_options_are_checked_before_decoding() {
        let with = |options: &[u8]| {
            let mut datagram = vec![0u8; OPTIONS_OFFSET];
            datagram.extend_from_slice(options);
            datagram.push(255);
            datagram
        };
        assert!(options_are_sane(&with(&[154, 4, 0, 0, 0, 1])));
        assert!(!options_are_sane(&with(&[154, 2, 0, 1])));
        // Two halves the decoder would concatenate into 8 bytes.
        assert!(!options_are_sane(&with(&[
            154, 4, 0, 0, 0, 1, 154, 4, 0, 0, 0, 2
        ])));
        assert!(!options_are_sane(&with(&[52, 1, 3])));
    }

    use super::*;
    use crate::dhcp::settings::example;
    use dhcproto::v4::{Architecture, relay};

    const MAC: [u8; 6] = [0x52, 0x54, 0, 0x6d, 1, 3];
    const T0: u64 = 1_800_000_000_000;

    fn decode(reply: &Reply) -> Message {
        Message::decode(&mut Decoder::new(&reply.bytes)).unwrap()
    }

    fn fname(m: &Message) -> String {
        m.fname_str()
            .unwrap()
            .unwrap()
            .trim_end_matches('\0')
            .to_string()
    }

    /// Sends from the message's ciaddr, as a client does.
    fn send(server: &mut DhcpServer, now: u64, m: &Message) -> Outcome {
        server.handle(now, &Origin::address(m.ciaddr()), &m.to_vec().unwrap())
    }

    /// Sends from the message's ciaddr on bridge port `port`.
    fn send_on(server: &mut DhcpServer, now: u64, port: &str, m: &Message) -> Outcome {
        let origin = Origin {
            address: m.ciaddr(),
            port: Some(port.to_string()),
        };
        server.handle(now, &origin, &m.to_vec().unwrap())
    }

    /// DISCOVER then REQUEST of the offer, on bridge port `port` when given:
    /// the ACKed address.
    fn dora_from(
        server: &mut DhcpServer,
        port: Option<&str>,
        mac: [u8; 6],
        now: u64,
    ) -> Option<Ipv4Addr> {
        let mut exchange = |m: &Message| match port {
            Some(port) => send_on(server, now, port, m),
            None => send(server, now, m),
        };
        let offer = exchange(&request_message(mac, MessageType::Discover, vec![]));
        let ip = decode(offer.replies.first()?).yiaddr();
        let ack = exchange(&request_message(
            mac,
            MessageType::Request,
            vec![
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 100, 1, 1)),
                DhcpOption::RequestedIpAddress(ip),
            ],
        ));
        let reply = decode(ack.replies.first()?);
        (reply.opts().msg_type() == Some(MessageType::Ack) && ack.writes.len() == 1)
            .then(|| reply.yiaddr())
    }

    fn dora_on(server: &mut DhcpServer, port: &str, mac: [u8; 6], now: u64) -> Option<Ipv4Addr> {
        dora_from(server, Some(port), mac, now)
    }

    #[test]
    fn a_port_holds_at_most_its_quota_and_other_ports_still_get_addresses() {
        let mut settings = example();
        settings.pool_end = Ipv4Addr::new(10, 100, 1, 120);
        let mut server = DhcpServer::new(settings, vec![], vec![]);
        // Random MACs from one port: two addresses (the quota), no more.
        let flood: Vec<_> = (0..10u8)
            .filter_map(|i| dora_on(&mut server, "swp1", [2, 0xf1, 0, 0, 0, i], T0))
            .collect();
        assert_eq!(flood.len(), 2, "{flood:?}");
        assert_eq!(server.counters().port_quota_exceeded, 8);
        // The holders renew; other ports are untouched.
        assert!(dora_on(&mut server, "swp1", [2, 0xf1, 0, 0, 0, 0], T0 + 1000).is_some());
        assert!(dora_on(&mut server, "swp2", MAC, T0).is_some());
        assert!(dora_on(&mut server, "swp3", [2, 0, 0, 0, 0, 3], T0).is_some());
        // Leases carry their port into the store.
        let acked = send_on(
            &mut server,
            T0,
            "swp3",
            &request_message(
                [2, 0, 0, 0, 0, 3],
                MessageType::Request,
                vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                    10, 100, 1, 103,
                ))],
            ),
        );
        assert!(
            matches!(&acked.writes[..], [Write::Lease(l)] if l.port.as_deref() == Some("swp3")),
            "{:?}",
            acked.writes
        );
        // A released address frees the port's room.
        let mut release = request_message([2, 0xf1, 0, 0, 0, 0], MessageType::Release, vec![]);
        release.set_ciaddr(flood[0]);
        assert_eq!(
            send_on(&mut server, T0 + 2000, "swp1", &release)
                .writes
                .len(),
            1
        );
        assert!(dora_on(&mut server, "swp1", [2, 0xf1, 0, 0, 0, 9], T0 + 2000).is_some());
    }

    #[test]
    fn a_port_floods_only_its_own_bucket() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        // 100 MACs, one DISCOVER each, from one port at one instant: the
        // port's burst (twice 40/s) passes, the rest is dropped.
        for i in 0..100u8 {
            send_on(
                &mut server,
                T0,
                "swp1",
                &request_message([2, 0xf1, 0, 0, 1, i], MessageType::Discover, vec![]),
            );
        }
        assert_eq!(server.counters().rate_limited, 20);
        assert!(
            !send_on(
                &mut server,
                T0,
                "swp2",
                &request_message(MAC, MessageType::Discover, vec![])
            )
            .replies
            .is_empty()
        );
    }

    #[test]
    fn messages_for_a_mac_held_on_another_port_are_ignored() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        let ip = dora_on(&mut server, "swp1", MAC, T0).unwrap();
        let before = server.counters().clone();
        // From swp2 under the holder's MAC: a REQUEST, a DISCOVER, a
        // RELEASE from its address and a DECLINE — nothing answered or written.
        let mut release = request_message(MAC, MessageType::Release, vec![]);
        release.set_ciaddr(ip);
        for m in [
            request_message(
                MAC,
                MessageType::Request,
                vec![DhcpOption::RequestedIpAddress(ip)],
            ),
            request_message(MAC, MessageType::Discover, vec![]),
            release,
            request_message(
                MAC,
                MessageType::Decline,
                vec![DhcpOption::RequestedIpAddress(ip)],
            ),
        ] {
            let out = send_on(&mut server, T0 + 100, "swp2", &m);
            assert!(
                out.replies.is_empty() && out.writes.is_empty(),
                "{m:?}: {out:?}"
            );
        }
        assert_eq!(server.counters().wrong_port, before.wrong_port + 4);
        assert_eq!(server.counters().acks, before.acks);
        // The machine moved (the operator unbound swp1): its next request
        // from swp2 binds the lease to swp2, same address.
        let writes = server.forget_port("swp1");
        assert!(matches!(&writes[..], [Write::Lease(l)] if l.port.is_none()));
        assert_eq!(dora_on(&mut server, "swp2", MAC, T0 + 200), Some(ip));
        // A lease that ran out no longer ties its MAC to a port.
        let later = T0 + 1000 * (u64::from(example().lease_secs) + 10);
        assert_eq!(dora_on(&mut server, "swp3", MAC, later), Some(ip));
    }

    fn dora(server: &mut DhcpServer, mac: [u8; 6], now: u64) -> Option<Ipv4Addr> {
        dora_from(server, None, mac, now)
    }

    #[test]
    fn full_dora_and_the_same_address_again() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        let ip = dora(&mut server, MAC, T0).unwrap();
        assert_eq!(ip, Ipv4Addr::new(10, 100, 1, 100));
        // RENEWING: ciaddr set, unicast answer.
        let mut renew = request_message(MAC, MessageType::Request, vec![]);
        renew.set_ciaddr(ip);
        let out = send(&mut server, T0 + 1000, &renew);
        assert_eq!(
            out.replies[0].destination,
            SocketAddrV4::new(ip, CLIENT_PORT)
        );
        assert_eq!(
            decode(&out.replies[0]).opts().msg_type(),
            Some(MessageType::Ack)
        );
        // A new DISCOVER gets the same address back.
        let again = send(
            &mut server,
            T0 + 2000,
            &request_message(MAC, MessageType::Discover, vec![]),
        );
        assert_eq!(decode(&again.replies[0]).yiaddr(), ip);
    }

    #[test]
    fn pxe_clients_get_their_boot_file_and_an_event() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        let bios = request_message(
            MAC,
            MessageType::Discover,
            vec![
                DhcpOption::ClassIdentifier(b"PXEClient:Arch:00000:UNDI:002001".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture::from(0)),
            ],
        );
        let out = send(&mut server, T0, &bios);
        let offer = decode(&out.replies[0]);
        assert_eq!(fname(&offer), "undionly.kpxe");
        assert_eq!(offer.siaddr(), Ipv4Addr::new(10, 100, 1, 1));
        assert!(matches!(
            out.events[0],
            DhcpEvent::PxeBooting {
                kind: ClientKind::BiosPxe,
                ..
            }
        ));
        // Firmware retries within the window do not repeat the event.
        assert!(send(&mut server, T0 + 1000, &bios).events.is_empty());

        let ipxe = request_message(
            [2, 0, 0, 0, 0, 9],
            MessageType::Discover,
            vec![DhcpOption::UserClass(b"iPXE".to_vec())],
        );
        let offer = decode(&send(&mut server, T0, &ipxe).replies[0]);
        assert_eq!(
            fname(&offer),
            "http://10.100.1.1:8070/ipxe/02-00-00-00-00-09"
        );
        // iPXE is told not to wait for ProxyDHCP offers.
        assert!(matches!(
            offer.opts().get(OptionCode::Unknown(175)),
            Some(DhcpOption::Unknown(o)) if o.data() == [176, 1, 1]
        ));
        let http = request_message(
            [2, 0, 0, 0, 0, 10],
            MessageType::Discover,
            vec![
                DhcpOption::ClassIdentifier(b"HTTPClient:Arch:00016".to_vec()),
                DhcpOption::ClientSystemArchitecture(Architecture::from(16)),
            ],
        );
        let offer = decode(&send(&mut server, T0, &http).replies[0]);
        assert_eq!(fname(&offer), "http://10.100.1.1:8070/boot/ipxe.efi");
        assert!(matches!(
            offer.opts().get(OptionCode::ClassIdentifier),
            Some(DhcpOption::ClassIdentifier(v)) if v == b"HTTPClient"
        ));
    }

    #[test]
    fn exhausted_pool_gives_no_offer_and_says_why() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        for i in 0..3 {
            assert!(dora(&mut server, [2, 0, 0, 0, 1, i], T0).is_some());
        }
        let out = send(
            &mut server,
            T0,
            &request_message([2, 0, 0, 0, 1, 9], MessageType::Discover, vec![]),
        );
        assert!(out.replies.is_empty());
        assert!(matches!(
            out.events[0],
            DhcpEvent::PoolExhausted { pool_size: 3, .. }
        ));
        assert_eq!(server.counters().pool_exhausted, 1);
    }

    #[test]
    fn nak_for_wrong_network_or_someone_elses_address() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        let taken = dora(&mut server, [2, 0, 0, 0, 0, 1], T0).unwrap();
        let wrong_net = request_message(
            MAC,
            MessageType::Request,
            vec![DhcpOption::RequestedIpAddress(Ipv4Addr::new(
                192, 168, 7, 7,
            ))],
        );
        let out = send(&mut server, T0, &wrong_net);
        let nak = decode(&out.replies[0]);
        assert_eq!(nak.opts().msg_type(), Some(MessageType::Nak));
        assert_eq!(out.replies[0].destination.ip(), &Ipv4Addr::BROADCAST);
        let steal = request_message(
            MAC,
            MessageType::Request,
            vec![DhcpOption::RequestedIpAddress(taken)],
        );
        assert_eq!(
            decode(&send(&mut server, T0, &steal).replies[0])
                .opts()
                .msg_type(),
            Some(MessageType::Nak)
        );
        assert!(send(&mut server, T0, &steal).writes.is_empty());
    }

    #[test]
    fn an_address_offered_to_another_client_is_not_acked_to_its_former_owner() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        let a = [2, 0, 0, 0, 2, 1];
        let b = [2, 0, 0, 0, 2, 2];
        let x = dora(&mut server, a, T0).unwrap();
        // A gives X back; B asks for X and is offered it.
        let mut release = request_message(a, MessageType::Release, vec![]);
        release.set_ciaddr(x);
        send(&mut server, T0 + 1, &release);
        let offer = send(
            &mut server,
            T0 + 2,
            &request_message(
                b,
                MessageType::Discover,
                vec![DhcpOption::RequestedIpAddress(x)],
            ),
        );
        assert_eq!(decode(&offer.replies[0]).yiaddr(), x);
        // A reboots and asks for X again (INIT-REBOOT): refused.
        let init_reboot = request_message(
            a,
            MessageType::Request,
            vec![DhcpOption::RequestedIpAddress(x)],
        );
        let out = send(&mut server, T0 + 3, &init_reboot);
        assert_eq!(
            decode(&out.replies[0]).opts().msg_type(),
            Some(MessageType::Nak)
        );
        assert!(out.writes.is_empty());
        // B takes it.
        let selecting = request_message(
            b,
            MessageType::Request,
            vec![
                DhcpOption::ServerIdentifier(Ipv4Addr::new(10, 100, 1, 1)),
                DhcpOption::RequestedIpAddress(x),
            ],
        );
        let out = send(&mut server, T0 + 4, &selecting);
        assert_eq!(
            decode(&out.replies[0]).opts().msg_type(),
            Some(MessageType::Ack)
        );
    }

    #[test]
    fn release_decline_and_inform() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        let ip = dora(&mut server, MAC, T0).unwrap();
        let mut release = request_message(MAC, MessageType::Release, vec![]);
        release.set_ciaddr(ip);
        // Under the holder's MAC but from another address: ignored.
        let out = server.handle(
            T0,
            &Origin::address(Ipv4Addr::new(10, 0, 0, 99)),
            &release.to_vec().unwrap(),
        );
        assert!(out.writes.is_empty(), "a release from elsewhere was taken");
        let out = send(&mut server, T0, &release);
        assert!(out.replies.is_empty());
        assert!(matches!(&out.writes[0], Write::Lease(l) if l.state == LeaseState::Released));
        // Declined: quarantined, never offered again while it lasts.
        let ip = dora(&mut server, MAC, T0 + 1000).unwrap();
        let decline = request_message(
            MAC,
            MessageType::Decline,
            vec![DhcpOption::RequestedIpAddress(ip)],
        );
        let out = send(&mut server, T0 + 1000, &decline);
        assert!(matches!(out.writes[0], Write::Quarantine(_)));
        let offer = send(
            &mut server,
            T0 + 2000,
            &request_message(MAC, MessageType::Discover, vec![]),
        );
        assert_ne!(decode(&offer.replies[0]).yiaddr(), ip);
        // INFORM: options, no address, no lease time, unicast to ciaddr.
        let mut inform = request_message([2, 0, 0, 0, 0, 7], MessageType::Inform, vec![]);
        inform.set_ciaddr(Ipv4Addr::new(10, 100, 1, 50));
        let out = send(&mut server, T0, &inform);
        let ack = decode(&out.replies[0]);
        assert_eq!(ack.yiaddr(), Ipv4Addr::UNSPECIFIED);
        assert!(ack.opts().get(OptionCode::AddressLeaseTime).is_none());
        assert_eq!(
            out.replies[0].destination,
            SocketAddrV4::new(Ipv4Addr::new(10, 100, 1, 50), CLIENT_PORT)
        );
    }

    #[test]
    fn relayed_requests_keep_option_82_and_go_back_to_the_relay() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        let mut info = relay::RelayAgentInformation::default();
        info.insert(relay::RelayInfo::AgentCircuitId(b"swp7".to_vec()));
        let mut m = request_message(
            MAC,
            MessageType::Discover,
            vec![DhcpOption::RelayAgentInformation(info.clone())],
        );
        m.set_giaddr(Ipv4Addr::new(10, 100, 1, 254));
        m.set_hops(1);
        let out = send(&mut server, T0, &m);
        assert_eq!(
            out.replies[0].destination,
            SocketAddrV4::new(Ipv4Addr::new(10, 100, 1, 254), SERVER_PORT)
        );
        assert_eq!(
            decode(&out.replies[0])
                .opts()
                .get(OptionCode::RelayAgentInformation),
            Some(&DhcpOption::RelayAgentInformation(info))
        );
        // A relay from a network we do not serve is ignored.
        m.set_giaddr(Ipv4Addr::new(192, 0, 2, 1));
        assert!(send(&mut server, T0, &m).replies.is_empty());
    }

    #[test]
    fn floods_are_rate_limited_and_garbage_is_counted() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        let discover = request_message(MAC, MessageType::Discover, vec![]);
        let answered = (0..100)
            .filter(|_| !send(&mut server, T0, &discover).replies.is_empty())
            .count();
        assert_eq!(answered, 40);
        assert_eq!(server.counters().rate_limited, 60);
        assert!(
            server
                .handle(T0, &Origin::address(Ipv4Addr::UNSPECIFIED), &[1, 2, 3])
                .replies
                .is_empty()
        );
        assert_eq!(server.counters().malformed, 1);
    }

    #[test]
    fn lengths_the_decoder_would_assert_on_are_rejected() {
        let mut server = DhcpServer::new(example(), vec![], vec![]);
        let mut bytes = request_message(MAC, MessageType::Discover, vec![])
            .to_vec()
            .unwrap();
        let end = bytes.len() - 1;
        // option 94 (client network interface) must be 3 bytes long: give it 1.
        bytes.splice(end..end, [94u8, 1, 1]);
        assert!(
            server
                .handle(T0, &Origin::address(Ipv4Addr::UNSPECIFIED), &bytes)
                .replies
                .is_empty()
        );
        assert_eq!(server.counters().malformed, 1);
    }

    #[test]
    fn persisted_leases_are_honoured_after_restart() {
        let mut first = DhcpServer::new(example(), vec![], vec![]);
        let ip = dora(&mut first, MAC, T0).unwrap();
        let lease = first
            .leases
            .get(&metalmesh_lldp::format_mac(&MAC))
            .unwrap()
            .clone();
        let mut second = DhcpServer::new(example(), vec![lease], vec![]);
        // Another client never gets that address while the lease runs.
        let other = dora(&mut second, [2, 0, 0, 0, 0, 1], T0 + 1000).unwrap();
        assert_ne!(other, ip);
    }
}
