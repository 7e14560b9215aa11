//! One peer's BGP session (RFC 4271 §8), free of I/O: the driver reports
//! connections, decoded messages and the passing of time; the session
//! answers with messages to send, connections to open or close, and what
//! the speaker must learn (session up or down, routes received).
//!
//! Up to two connections may exist at once (both sides connecting, the
//! usual case on unnumbered links); collisions are resolved by BGP
//! identifier as §6.8 says.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rustbgpd_wire::notification::{cease_subcode, open_subcode};
use rustbgpd_wire::{
    Capability, ExtendedNextHopFamily, Message, NotificationCode, NotificationMessage, OpenMessage,
    RouteRefreshMessage,
};
use serde::{Deserialize, Serialize};

use crate::route::Family;

/// The 2-octet AS placeholder of a 4-octet AS speaker (RFC 6793).
const AS_TRANS: u16 = 23456;
/// Hold time while waiting for the peer's OPEN (RFC 4271 §8.2.2 suggests 4 minutes).
const OPEN_HOLD: Duration = Duration::from_secs(240);
/// Longest back-off between connection attempts.
const MAX_RETRY: Duration = Duration::from_secs(30);
/// How long peers keep our routes while we restart (RFC 4724): the kernel
/// keeps forwarding meanwhile, and a restarted agent is back in seconds.
pub const RESTART_TIME: Duration = Duration::from_secs(120);

/// Which AS the peer must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RemoteAs {
    Asn(u32),
    /// Any AS but ours (eBGP), as unnumbered fabrics configure it.
    External,
    /// Our own AS (iBGP).
    Internal,
}

#[derive(Debug, Clone)]
pub struct SessionConfig {
    pub local_as: u32,
    pub router_id: Ipv4Addr,
    pub remote_as: RemoteAs,
    /// Families offered; a session carries those both sides offer.
    pub families: BTreeSet<Family>,
    /// Proposed hold time (0 or at least 3 s).
    pub hold_time: Duration,
    /// Initial delay between connection attempts (doubled up to 30 s).
    pub connect_retry: Duration,
    /// Only accept connections, never open one.
    pub passive: bool,
    /// Offer IPv4 routes with IPv6 next hops (RFC 8950): unnumbered peers.
    pub extended_next_hop: bool,
    /// Most paths accepted from the peer per family; beyond, the session
    /// is closed with Cease / maximum prefixes.
    pub max_prefixes: usize,
}

/// What the session state is, as `bgp neighbors` shows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum State {
    Idle,
    Connect,
    Active,
    OpenSent,
    OpenConfirm,
    Established,
}

/// A connection's number, chosen by the driver.
pub type ConnId = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GracefulRestart {
    pub restart_time: Duration,
    pub preserved: BTreeSet<Family>,
}

/// What both sides agreed on in their OPENs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Negotiated {
    pub remote_as: u32,
    pub remote_id: Ipv4Addr,
    pub hold_time: Duration,
    pub keepalive: Duration,
    pub four_octet_as: bool,
    pub families: BTreeSet<Family>,
    /// IPv4 routes may carry IPv6 next hops to and from this peer.
    pub extended_next_hop: bool,
    pub route_refresh: bool,
    /// The peer's graceful restart (RFC 4724), if it announced it: its
    /// restart time and the families whose forwarding it keeps.
    pub graceful_restart: Option<GracefulRestart>,
    pub ebgp: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// Start (or restart) the session.
    Start,
    /// Stop it: Cease / administrative shutdown on open connections.
    Stop,
    /// A TCP connection to or from the peer is up.
    Connected {
        conn: ConnId,
        outgoing: bool,
        local: IpAddr,
        remote: IpAddr,
    },
    /// An outgoing connection attempt failed.
    ConnectFailed,
    /// A connection closed or failed.
    Closed { conn: ConnId },
    /// A message arrived on a connection.
    Received { conn: ConnId, message: Message },
    /// A message on a connection did not decode: the driver has the
    /// NOTIFICATION the codec says to send.
    Malformed {
        conn: ConnId,
        notification: NotificationMessage,
    },
    /// Close the established session with `notification` (the speaker
    /// found the peer's UPDATEs unacceptable).
    Reset {
        conn: ConnId,
        notification: NotificationMessage,
        reason: String,
    },
    /// Time passed (deadlines are checked on every event).
    Tick,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Open a TCP connection to the peer.
    Connect,
    Send {
        conn: ConnId,
        message: Message,
    },
    /// Close the connection (after sending what was queued).
    Close {
        conn: ConnId,
    },
    /// The session is Established.
    Up(Negotiated),
    /// The session left Established. `retain`: the peer restarts
    /// gracefully (its TCP connection ended, it announced graceful
    /// restart): keep its routes of these families as stale meanwhile.
    Down {
        reason: String,
        retain: Option<GracefulRestart>,
    },
    /// An UPDATE arrived on the established session (parse it with the
    /// negotiated settings).
    Update(rustbgpd_wire::UpdateMessage),
    /// The peer asks for our routes of a family again.
    RefreshRequested(Family),
}

#[derive(Debug, Clone)]
struct Connection {
    id: ConnId,
    outgoing: bool,
    local: IpAddr,
    remote: IpAddr,
    state: State,
    open: Option<Negotiated>,
    hold_deadline: Option<Instant>,
    keepalive_due: Option<Instant>,
}

/// Counters and the last error, for `bgp neighbors`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct SessionStats {
    pub messages_in: u64,
    pub messages_out: u64,
    pub updates_in: u64,
    pub established_transitions: u64,
    pub last_error: Option<String>,
}

#[derive(Debug)]
pub struct Session {
    config: SessionConfig,
    started: bool,
    /// No session has been established since this speaker started: our
    /// OPEN says we restarted (the R bit), so helpers flush what we no
    /// longer announce after our End-of-RIB.
    restarted: bool,
    connections: Vec<Connection>,
    retry_at: Option<Instant>,
    retry_delay: Duration,
    established_since: Option<Instant>,
    stats: SessionStats,
}

impl Session {
    pub fn new(config: SessionConfig) -> Session {
        let retry_delay = config.connect_retry;
        Session {
            config,
            started: false,
            restarted: true,
            connections: Vec::new(),
            retry_at: None,
            retry_delay,
            established_since: None,
            stats: SessionStats::default(),
        }
    }

    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    pub fn stats(&self) -> &SessionStats {
        &self.stats
    }

    pub fn state(&self) -> State {
        let best = self
            .connections
            .iter()
            .map(|c| c.state)
            .max_by_key(|s| rank(*s));
        match best {
            Some(state) => state,
            None if !self.started => State::Idle,
            None if self.config.passive || self.retry_at.is_some() => State::Active,
            None => State::Connect,
        }
    }

    /// The established connection's agreement, if any.
    pub fn negotiated(&self) -> Option<&Negotiated> {
        self.established().and_then(|c| c.open.as_ref())
    }

    /// Local and remote addresses of the established connection.
    pub fn addresses(&self) -> Option<(IpAddr, IpAddr)> {
        self.established().map(|c| (c.local, c.remote))
    }

    pub fn established_conn(&self) -> Option<ConnId> {
        self.established().map(|c| c.id)
    }

    pub fn established_since(&self) -> Option<Instant> {
        self.established_since
    }

    /// When the session next needs a `Tick`.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.connections
            .iter()
            .flat_map(|c| [c.hold_deadline, c.keepalive_due])
            .chain([self.retry_at])
            .flatten()
            .min()
    }

    fn established(&self) -> Option<&Connection> {
        self.connections
            .iter()
            .find(|c| c.state == State::Established)
    }

    pub fn handle(&mut self, now: Instant, event: Event) -> Vec<Action> {
        let mut actions = Vec::new();
        match event {
            Event::Start => {
                if !self.started {
                    self.started = true;
                    self.retry_delay = self.config.connect_retry;
                    if !self.config.passive {
                        actions.push(Action::Connect);
                    }
                    self.retry_at = Some(now + self.retry_delay);
                }
            }
            Event::Stop => {
                self.started = false;
                self.retry_at = None;
                let ids: Vec<ConnId> = self.connections.iter().map(|c| c.id).collect();
                for id in ids {
                    self.fail(
                        id,
                        Some(notification(
                            NotificationCode::Cease,
                            cease_subcode::ADMINISTRATIVE_SHUTDOWN,
                        )),
                        "stopped".into(),
                        &mut actions,
                    );
                }
            }
            Event::Connected {
                conn,
                outgoing,
                local,
                remote,
            } => self.connected(now, conn, outgoing, local, remote, &mut actions),
            Event::ConnectFailed => {
                if self.started {
                    self.back_off(now);
                }
            }
            Event::Closed { conn } => {
                if let Some(index) = self.index(conn) {
                    let connection = self.connections.remove(index);
                    if connection.state == State::Established {
                        let retain = connection
                            .open
                            .and_then(|n| n.graceful_restart)
                            .filter(|gr| !gr.restart_time.is_zero() && !gr.preserved.is_empty());
                        self.went_down(
                            "connection closed by the peer".into(),
                            retain,
                            &mut actions,
                        );
                    }
                    if self.started && self.connections.is_empty() {
                        self.back_off(now);
                    }
                }
            }
            Event::Received { conn, message } => {
                self.stats.messages_in += 1;
                self.received(now, conn, message, &mut actions);
            }
            Event::Malformed { conn, notification } => {
                let reason = format!("malformed message: {:?}", notification.code);
                self.fail(conn, Some(notification), reason, &mut actions);
            }
            Event::Reset {
                conn,
                notification,
                reason,
            } => self.fail(conn, Some(notification), reason, &mut actions),
            Event::Tick => {}
        }
        self.deadlines(now, &mut actions);
        self.stats.messages_out += actions
            .iter()
            .filter(|a| matches!(a, Action::Send { .. }))
            .count() as u64;
        actions
    }

    fn connected(
        &mut self,
        now: Instant,
        conn: ConnId,
        outgoing: bool,
        local: IpAddr,
        remote: IpAddr,
        actions: &mut Vec<Action>,
    ) {
        if !self.started || self.established().is_some() || self.connections.len() >= 2 {
            // Refused before anything is read: not started, or a session
            // already runs on another connection.
            actions.push(Action::Send {
                conn,
                message: Message::Notification(notification(
                    NotificationCode::Cease,
                    cease_subcode::CONNECTION_REJECTED,
                )),
            });
            actions.push(Action::Close { conn });
            return;
        }
        self.retry_at = None;
        self.connections.push(Connection {
            id: conn,
            outgoing,
            local,
            remote,
            state: State::OpenSent,
            open: None,
            hold_deadline: Some(now + OPEN_HOLD),
            keepalive_due: None,
        });
        actions.push(Action::Send {
            conn,
            message: Message::Open(self.open_message()),
        });
    }

    fn open_message(&self) -> OpenMessage {
        let mut capabilities = vec![
            Capability::FourOctetAs {
                asn: self.config.local_as,
            },
            Capability::RouteRefresh,
        ];
        for family in &self.config.families {
            let (afi, safi) = family.afi_safi();
            capabilities.push(Capability::MultiProtocol { afi, safi });
        }
        if self.config.extended_next_hop && self.config.families.contains(&Family::Ipv4Unicast) {
            capabilities.push(Capability::ExtendedNextHop(vec![ExtendedNextHopFamily {
                nlri_afi: rustbgpd_wire::Afi::Ipv4,
                nlri_safi: rustbgpd_wire::Safi::Unicast,
                next_hop_afi: rustbgpd_wire::Afi::Ipv6,
            }]));
        }
        // Graceful restart: our forwarding survives an agent restart (the
        // kernel keeps the routes), so peers may keep our routes meanwhile.
        let preserved = [Family::Ipv4Unicast, Family::L2vpnEvpn]
            .into_iter()
            .filter(|f| self.config.families.contains(f))
            .map(|f| {
                let (afi, safi) = f.afi_safi();
                rustbgpd_wire::GracefulRestartFamily {
                    afi,
                    safi,
                    forwarding_preserved: true,
                }
            })
            .collect();
        capabilities.push(Capability::GracefulRestart {
            restart_state: self.restarted,
            notification: false,
            restart_time: RESTART_TIME.as_secs() as u16,
            families: preserved,
        });
        OpenMessage {
            version: 4,
            my_as: u16::try_from(self.config.local_as).unwrap_or(AS_TRANS),
            hold_time: u16::try_from(self.config.hold_time.as_secs()).unwrap_or(u16::MAX),
            bgp_identifier: self.config.router_id,
            capabilities,
        }
    }

    fn received(
        &mut self,
        now: Instant,
        conn: ConnId,
        message: Message,
        actions: &mut Vec<Action>,
    ) {
        let Some(index) = self.index(conn) else {
            return;
        };
        let state = self.connections[index].state;
        match (state, message) {
            (State::OpenSent, Message::Open(open)) => {
                self.open_received(now, index, &open, actions)
            }
            (State::OpenConfirm, Message::Keepalive) => {
                let connection = &mut self.connections[index];
                connection.state = State::Established;
                let negotiated = connection.open.clone();
                let hold = negotiated.as_ref().map(|n| n.hold_time);
                connection.hold_deadline = hold.filter(|h| !h.is_zero()).map(|h| now + h);
                self.established_since = Some(now);
                self.restarted = false;
                self.stats.established_transitions += 1;
                self.retry_delay = self.config.connect_retry;
                if let Some(negotiated) = negotiated {
                    actions.push(Action::Up(negotiated));
                }
            }
            (State::Established, Message::Keepalive) => self.refresh_hold(now, index),
            (State::Established, Message::Update(update)) => {
                self.refresh_hold(now, index);
                self.stats.updates_in += 1;
                actions.push(Action::Update(update));
            }
            (State::Established, Message::RouteRefresh(refresh)) => {
                self.refresh_hold(now, index);
                if let Some(family) = refresh_family(&refresh) {
                    actions.push(Action::RefreshRequested(family));
                }
            }
            (_, Message::Notification(n)) => {
                let reason = format!(
                    "peer sent NOTIFICATION {:?} subcode {}{}",
                    n.code,
                    n.subcode,
                    shutdown_text(&n)
                );
                self.fail(conn, None, reason, actions);
            }
            (state, message) => {
                let reason = format!("unexpected {:?} in state {state:?}", message.message_type());
                // RFC 6608 subcodes name the state the error happened in.
                let subcode = match state {
                    State::OpenSent => 1,
                    State::OpenConfirm => 2,
                    State::Established => 3,
                    _ => 0,
                };
                self.fail(
                    conn,
                    Some(notification(NotificationCode::FsmError, subcode)),
                    reason,
                    actions,
                );
            }
        }
    }

    fn open_received(
        &mut self,
        now: Instant,
        index: usize,
        open: &OpenMessage,
        actions: &mut Vec<Action>,
    ) {
        let conn = self.connections[index].id;
        let negotiated = match self.negotiate(open) {
            Ok(n) => n,
            Err((subcode, reason)) => {
                self.fail(
                    conn,
                    Some(notification(NotificationCode::OpenMessage, subcode)),
                    reason,
                    actions,
                );
                return;
            }
        };
        // Collision (§6.8): another connection past OpenSent, or one that
        // has the peer's OPEN too; keep the one opened by the higher id.
        if let Some(other) = self
            .connections
            .iter()
            .find(|c| c.id != conn && (c.open.is_some() || c.state == State::Established))
        {
            let ours_wins = u32::from(self.config.router_id) > u32::from(negotiated.remote_id);
            // Local id higher: the connection we opened survives; lower:
            // the one the peer opened.
            let keep_other = other.state == State::Established || other.outgoing == ours_wins;
            let loser = if keep_other { conn } else { other.id };
            self.fail(
                loser,
                Some(notification(
                    NotificationCode::Cease,
                    cease_subcode::CONNECTION_COLLISION_RESOLUTION,
                )),
                "connection collision resolved".into(),
                actions,
            );
            if keep_other {
                return;
            }
        }
        let Some(index) = self.index(conn) else {
            return;
        };
        let connection = &mut self.connections[index];
        connection.state = State::OpenConfirm;
        connection.hold_deadline =
            (!negotiated.hold_time.is_zero()).then(|| now + negotiated.hold_time);
        connection.keepalive_due = None;
        connection.open = Some(negotiated);
        actions.push(Action::Send {
            conn,
            message: Message::Keepalive,
        });
        self.schedule_keepalive(now, conn);
    }

    /// Checks the peer's OPEN against the configuration; the error is the
    /// OPEN-message subcode to send and why.
    fn negotiate(&self, open: &OpenMessage) -> Result<Negotiated, (u8, String)> {
        if open.version != 4 {
            return Err((
                open_subcode::UNSUPPORTED_VERSION,
                format!("BGP version {}", open.version),
            ));
        }
        let four_octet = open.capabilities.iter().find_map(|c| match c {
            Capability::FourOctetAs { asn } => Some(*asn),
            _ => None,
        });
        let remote_as = four_octet.unwrap_or(u32::from(open.my_as));
        let acceptable = match self.config.remote_as {
            RemoteAs::Asn(asn) => remote_as == asn,
            RemoteAs::External => remote_as != self.config.local_as,
            RemoteAs::Internal => remote_as == self.config.local_as,
        };
        if !acceptable {
            return Err((
                open_subcode::BAD_PEER_AS,
                format!("peer AS {remote_as} is not {:?}", self.config.remote_as),
            ));
        }
        let ebgp = remote_as != self.config.local_as;
        let remote_id = open.bgp_identifier;
        if remote_id.is_unspecified() || (!ebgp && remote_id == self.config.router_id) {
            return Err((
                open_subcode::BAD_BGP_IDENTIFIER,
                format!("BGP identifier {remote_id}"),
            ));
        }
        let hold_secs = u64::from(open.hold_time);
        if hold_secs == 1 || hold_secs == 2 {
            return Err((
                open_subcode::UNACCEPTABLE_HOLD_TIME,
                format!("hold time {hold_secs} s"),
            ));
        }
        let hold_time = Duration::from_secs(hold_secs.min(self.config.hold_time.as_secs()));
        let offered: BTreeSet<Family> = open
            .capabilities
            .iter()
            .filter_map(|c| match c {
                Capability::MultiProtocol { afi, safi } => Family::from_afi_safi(*afi, *safi),
                _ => None,
            })
            .collect();
        // A peer that sends no multiprotocol capability speaks IPv4 unicast.
        let offered = if open
            .capabilities
            .iter()
            .any(|c| matches!(c, Capability::MultiProtocol { .. }))
        {
            offered
        } else {
            BTreeSet::from([Family::Ipv4Unicast])
        };
        let families: BTreeSet<Family> = self
            .config
            .families
            .intersection(&offered)
            .copied()
            .collect();
        let extended_next_hop = self.config.extended_next_hop
            && open.capabilities.iter().any(|c| match c {
                Capability::ExtendedNextHop(list) => list.iter().any(|f| {
                    f.nlri_afi == rustbgpd_wire::Afi::Ipv4
                        && f.next_hop_afi == rustbgpd_wire::Afi::Ipv6
                }),
                _ => false,
            });
        let graceful_restart = open.capabilities.iter().find_map(|c| match c {
            Capability::GracefulRestart {
                restart_time,
                families,
                ..
            } => Some(GracefulRestart {
                restart_time: Duration::from_secs(u64::from(*restart_time)),
                preserved: families
                    .iter()
                    .filter(|f| f.forwarding_preserved)
                    .filter_map(|f| Family::from_afi_safi(f.afi, f.safi))
                    .collect(),
            }),
            _ => None,
        });
        Ok(Negotiated {
            remote_as,
            remote_id,
            hold_time,
            keepalive: hold_time / 3,
            four_octet_as: four_octet.is_some(),
            families,
            extended_next_hop,
            route_refresh: open.capabilities.iter().any(|c| {
                matches!(
                    c,
                    Capability::RouteRefresh | Capability::EnhancedRouteRefresh
                )
            }),
            graceful_restart,
            ebgp,
        })
    }

    fn refresh_hold(&mut self, now: Instant, index: usize) {
        let connection = &mut self.connections[index];
        if let Some(hold) = connection.open.as_ref().map(|n| n.hold_time)
            && !hold.is_zero()
        {
            connection.hold_deadline = Some(now + hold);
        }
    }

    fn schedule_keepalive(&mut self, now: Instant, conn: ConnId) {
        if let Some(index) = self.index(conn) {
            let connection = &mut self.connections[index];
            connection.keepalive_due = connection
                .open
                .as_ref()
                .map(|n| n.keepalive)
                .filter(|k| !k.is_zero())
                .map(|k| now + k);
        }
    }

    fn deadlines(&mut self, now: Instant, actions: &mut Vec<Action>) {
        let expired: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|c| c.hold_deadline.is_some_and(|d| d <= now))
            .map(|c| c.id)
            .collect();
        for conn in expired {
            self.fail(
                conn,
                Some(notification(NotificationCode::HoldTimerExpired, 0)),
                "hold timer expired".into(),
                actions,
            );
        }
        let due: Vec<ConnId> = self
            .connections
            .iter()
            .filter(|c| c.keepalive_due.is_some_and(|d| d <= now))
            .map(|c| c.id)
            .collect();
        for conn in due {
            actions.push(Action::Send {
                conn,
                message: Message::Keepalive,
            });
            self.schedule_keepalive(now, conn);
        }
        if self.retry_at.is_some_and(|at| at <= now) {
            if self.started && self.connections.is_empty() && !self.config.passive {
                actions.push(Action::Connect);
                self.back_off(now);
            } else {
                self.retry_at = None;
            }
        }
    }

    /// Closes `conn`, sending `notification` first if given.
    fn fail(
        &mut self,
        conn: ConnId,
        notification: Option<NotificationMessage>,
        reason: String,
        actions: &mut Vec<Action>,
    ) {
        let Some(index) = self.index(conn) else {
            return;
        };
        let connection = self.connections.remove(index);
        if let Some(n) = notification {
            actions.push(Action::Send {
                conn,
                message: Message::Notification(n),
            });
        }
        actions.push(Action::Close { conn });
        tracing::debug!(conn, %reason, "BGP connection closed");
        self.stats.last_error = Some(reason.clone());
        if connection.state == State::Established {
            self.went_down(reason, None, actions);
        }
    }

    fn went_down(
        &mut self,
        reason: String,
        retain: Option<GracefulRestart>,
        actions: &mut Vec<Action>,
    ) {
        self.established_since = None;
        self.stats.last_error = Some(reason.clone());
        actions.push(Action::Down { reason, retain });
    }

    fn back_off(&mut self, now: Instant) {
        self.retry_at = Some(now + self.retry_delay);
        self.retry_delay = (self.retry_delay * 2).min(MAX_RETRY);
    }

    fn index(&self, conn: ConnId) -> Option<usize> {
        self.connections.iter().position(|c| c.id == conn)
    }
}

fn rank(state: State) -> u8 {
    match state {
        State::Idle => 0,
        State::Connect => 1,
        State::Active => 2,
        State::OpenSent => 3,
        State::OpenConfirm => 4,
        State::Established => 5,
    }
}

pub fn notification(code: NotificationCode, subcode: u8) -> NotificationMessage {
    NotificationMessage::new(code, subcode, Bytes::new())
}

fn refresh_family(refresh: &RouteRefreshMessage) -> Option<Family> {
    Family::from_afi_safi(refresh.afi()?, refresh.safi()?)
}

/// The shutdown communication of a Cease (RFC 8203), if the peer sent one.
fn shutdown_text(n: &NotificationMessage) -> String {
    if n.code == NotificationCode::Cease
        && matches!(n.subcode, 2 | 4)
        && let Some((&len, rest)) = n.data.split_first()
        && let Some(text) = rest.get(..usize::from(len))
    {
        return format!(": \"{}\"", String::from_utf8_lossy(text));
    }
    String::new()
}
