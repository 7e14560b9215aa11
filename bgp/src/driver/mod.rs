//! The tokio driver of a [`Speaker`]: one task owns the speaker core and
//! carries out what it says (connect, send, close, routes changed), with
//! a listener on port 179, a reader and a writer task per connection, and
//! a router-advertisement task per unnumbered port.
//!
//! Who may connect: a connection is matched to a configured peer by what
//! the kernel reports and a client cannot choose — the port a link-local
//! connection arrived on (its scope), or the source address of a numbered
//! neighbour. Anything else is closed before a byte is read.

pub mod connection;
pub mod ra;

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV6};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::rib::Change;
use crate::route::{Family, PeerId, RouteKey, Source};
use crate::session::{ConnId, Event};
use crate::speaker::{Input, LocalRoute, Output, PeerView, Remote, Speaker};
use connection::{Connection, ConnectionEvent};

/// How long a connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone)]
pub struct DriverConfig {
    /// Where to accept connections (`[::]:179`); `None`: only connect out.
    pub listen: Option<SocketAddr>,
    /// Router advertisements on unnumbered ports, this often.
    pub advertisement_interval: Duration,
    /// Peer port to connect to (179).
    pub peer_port: u16,
}

impl Default for DriverConfig {
    fn default() -> DriverConfig {
        DriverConfig {
            listen: Some(SocketAddr::new(IpAddr::V6(Ipv6Addr::UNSPECIFIED), 179)),
            advertisement_interval: Duration::from_secs(3),
            peer_port: 179,
        }
    }
}

/// Where the speaker's selected-path changes go (the agent installs them
/// in the kernel).
pub trait RouteSink: Send + 'static {
    fn apply(&mut self, changes: Vec<Change>);
}

/// A route as `bgp routes` shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RouteView {
    pub family: Family,
    pub route: String,
    pub vni: Option<u32>,
    pub paths: Vec<PathView>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct PathView {
    pub selected: bool,
    pub best: bool,
    /// `local` or the peer's name (port or address).
    pub from: String,
    pub next_hop: String,
    pub as_path: Vec<u32>,
    pub router_mac: Option<String>,
}

#[derive(Debug)]
enum Command {
    /// A peer configured while running (a fabric port that came up).
    AddPeer(
        Box<crate::speaker::PeerConfig>,
        oneshot::Sender<Option<PeerId>>,
    ),
    Originate {
        key: RouteKey,
        route: LocalRoute,
    },
    Withdraw {
        key: RouteKey,
    },
    Peers(oneshot::Sender<Vec<PeerView>>),
    Routes(Option<Family>, oneshot::Sender<Vec<RouteView>>),
}

/// Talks to a running speaker task.
#[derive(Debug, Clone)]
pub struct SpeakerHandle {
    commands: mpsc::Sender<Command>,
}

#[derive(Debug, thiserror::Error)]
#[error("the BGP speaker is not running")]
pub struct SpeakerGone;

impl SpeakerHandle {
    /// Adds a peer and starts its session (and, for a port, its router
    /// advertisements); its id, or `None` when its remote is already
    /// configured (nothing is added).
    pub async fn add_peer(
        &self,
        config: crate::speaker::PeerConfig,
    ) -> Result<Option<PeerId>, SpeakerGone> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::AddPeer(Box::new(config), reply))
            .await
            .map_err(|_| SpeakerGone)?;
        answer.await.map_err(|_| SpeakerGone)
    }

    pub async fn originate(&self, key: RouteKey, route: LocalRoute) -> Result<(), SpeakerGone> {
        self.commands
            .send(Command::Originate { key, route })
            .await
            .map_err(|_| SpeakerGone)
    }

    pub async fn withdraw(&self, key: RouteKey) -> Result<(), SpeakerGone> {
        self.commands
            .send(Command::Withdraw { key })
            .await
            .map_err(|_| SpeakerGone)
    }

    pub async fn peers(&self) -> Result<Vec<PeerView>, SpeakerGone> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Peers(reply))
            .await
            .map_err(|_| SpeakerGone)?;
        answer.await.map_err(|_| SpeakerGone)
    }

    pub async fn routes(&self, family: Option<Family>) -> Result<Vec<RouteView>, SpeakerGone> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(Command::Routes(family, reply))
            .await
            .map_err(|_| SpeakerGone)?;
        answer.await.map_err(|_| SpeakerGone)
    }
}

/// A speaker ready to run, and the handle to reach it.
#[derive(Debug)]
pub struct Driver {
    speaker: Speaker,
    config: DriverConfig,
    commands: mpsc::Receiver<Command>,
}

impl Driver {
    pub fn new(speaker: Speaker, config: DriverConfig) -> (Driver, SpeakerHandle) {
        let (tx, commands) = mpsc::channel(1024);
        (
            Driver {
                speaker,
                config,
                commands,
            },
            SpeakerHandle { commands: tx },
        )
    }

    /// Runs until cancelled: then every session is closed with Cease.
    pub async fn run(
        self,
        mut sink: impl RouteSink,
        cancel: CancellationToken,
    ) -> std::io::Result<()> {
        let Driver {
            speaker,
            config,
            mut commands,
        } = self;
        let listener = match config.listen {
            Some(address) => Some(listen(address)?),
            None => None,
        };
        let mut state = State {
            speaker,
            config,
            connections: HashMap::new(),
            next_conn: 1,
            learned: HashMap::new(),
            connecting: HashSet::new(),
        };
        let (events_tx, mut events) = mpsc::channel(4096);
        let (connected_tx, mut connected) = mpsc::channel(64);
        let (heard_tx, mut heard) = mpsc::channel(64);
        let mut interfaces: Vec<String> = state
            .speaker
            .peers()
            .filter_map(|(_, p)| match &p.remote {
                Remote::Interface(name) => Some(name.clone()),
                Remote::Address(_) => None,
            })
            .collect();
        for interface in &interfaces {
            tokio::spawn(ra::run(
                interface.clone(),
                state.config.advertisement_interval,
                heard_tx.clone(),
                cancel.child_token(),
            ));
        }
        let peers: Vec<PeerId> = state.speaker.peers().map(|(id, _)| id).collect();
        for peer in peers {
            let out = state.speaker.handle(
                Instant::now(),
                Input::Peer {
                    peer,
                    event: Event::Start,
                },
            );
            state.carry_out(out, &mut sink, &connected_tx);
        }
        loop {
            let deadline = state
                .speaker
                .next_deadline()
                .map(tokio::time::Instant::from_std)
                .unwrap_or_else(|| tokio::time::Instant::now() + Duration::from_secs(3600));
            let accept = async {
                match &listener {
                    Some(listener) => listener.accept().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                () = cancel.cancelled() => {
                    let peers: Vec<PeerId> = state.speaker.peers().map(|(id, _)| id).collect();
                    for peer in peers {
                        let out = state.speaker.handle(Instant::now(), Input::Peer { peer, event: Event::Stop });
                        state.carry_out(out, &mut sink, &connected_tx);
                    }
                    // Give the writers a moment to send the NOTIFICATIONs.
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    return Ok(());
                }
                accepted = accept => match accepted {
                    Ok((stream, from)) => match state.peer_of(from, &interfaces) {
                        Some(peer) => state.attach(peer, stream, false, &events_tx, &mut sink, &connected_tx),
                        None => tracing::info!(%from, "BGP connection from an unconfigured address refused"),
                    },
                    Err(error) => tracing::warn!(%error, "accepting a BGP connection"),
                },
                Some((peer, conn, event)) = events.recv() => {
                    let event = match event {
                        ConnectionEvent::Message(message) => Event::Received { conn, message },
                        ConnectionEvent::Malformed(notification) => Event::Malformed { conn, notification },
                        ConnectionEvent::Closed => {
                            if let Some(connection) = state.connections.remove(&(peer, conn)) {
                                connection.close();
                            }
                            Event::Closed { conn }
                        }
                    };
                    let out = state.speaker.handle(Instant::now(), Input::Peer { peer, event });
                    state.carry_out(out, &mut sink, &connected_tx);
                }
                Some((peer, result)) = connected.recv() => {
                    state.connecting.remove(&peer);
                    match result {
                        Ok(stream) => state.attach(peer, stream, true, &events_tx, &mut sink, &connected_tx),
                        Err(error) => {
                            tracing::debug!(peer = peer.0, %error, "BGP connection attempt failed");
                            let out = state.speaker.handle(Instant::now(), Input::Peer { peer, event: Event::ConnectFailed });
                            state.carry_out(out, &mut sink, &connected_tx);
                        }
                    }
                }
                Some(ra::Heard { interface, address }) = heard.recv() => {
                    let new = state.learned.insert(interface.clone(), address) != Some(address);
                    if new {
                        tracing::info!(%interface, %address, "unnumbered BGP peer heard");
                    }
                    // A newly heard peer is tried at once, not after back-off.
                    if let Some(peer) = state.speaker.peer_for(&Remote::Interface(interface))
                        && new
                        && !state.connections.keys().any(|(p, _)| *p == peer)
                    {
                        state.connect(peer, &connected_tx);
                    }
                }
                Some(command) = commands.recv() => {
                    let now = Instant::now();
                    match command {
                        Command::AddPeer(config, reply) => {
                            if state.speaker.peer_for(&config.remote).is_some() {
                                let _ = reply.send(None);
                                continue;
                            }
                            if let Remote::Interface(name) = &config.remote {
                                interfaces.push(name.clone());
                                tokio::spawn(ra::run(
                                    name.clone(),
                                    state.config.advertisement_interval,
                                    heard_tx.clone(),
                                    cancel.child_token(),
                                ));
                            }
                            tracing::info!(peer = %config.remote, "BGP peer added");
                            let peer = state.speaker.add_peer(*config);
                            let _ = reply.send(Some(peer));
                            let out = state.speaker.handle(now, Input::Peer { peer, event: Event::Start });
                            state.carry_out(out, &mut sink, &connected_tx);
                        }
                        Command::Originate { key, route } => {
                            let out = state.speaker.handle(now, Input::Originate { key, route });
                            state.carry_out(out, &mut sink, &connected_tx);
                        }
                        Command::Withdraw { key } => {
                            let out = state.speaker.handle(now, Input::Withdraw { key });
                            state.carry_out(out, &mut sink, &connected_tx);
                        }
                        Command::Peers(reply) => {
                            let _ = reply.send(state.speaker.view(now));
                        }
                        Command::Routes(family, reply) => {
                            let _ = reply.send(route_views(&state.speaker, family));
                        }
                    }
                }
                () = tokio::time::sleep_until(deadline) => {
                    let out = state.speaker.handle(Instant::now(), Input::Tick);
                    state.carry_out(out, &mut sink, &connected_tx);
                }
            }
        }
    }
}

type ConnectResult = (PeerId, std::io::Result<TcpStream>);

struct State {
    speaker: Speaker,
    config: DriverConfig,
    connections: HashMap<(PeerId, ConnId), Connection>,
    next_conn: ConnId,
    /// Link-local addresses heard per unnumbered port.
    learned: HashMap<String, Ipv6Addr>,
    connecting: HashSet<PeerId>,
}

impl State {
    fn carry_out(
        &mut self,
        outputs: Vec<Output>,
        sink: &mut impl RouteSink,
        connected: &mpsc::Sender<ConnectResult>,
    ) {
        for output in outputs {
            match output {
                Output::Connect { peer } => self.connect(peer, connected),
                Output::Send {
                    peer,
                    conn,
                    message,
                } => {
                    let full = match self.connections.get(&(peer, conn)) {
                        Some(connection) => connection.writer.try_send(message).is_err(),
                        None => false,
                    };
                    if full {
                        tracing::warn!(peer = peer.0, "BGP peer does not read; closing");
                        if let Some(connection) = self.connections.remove(&(peer, conn)) {
                            connection.close();
                        }
                        // The session learns at once, not by its hold timer,
                        // and drops the peer's routes (it is stuck, not
                        // restarting).
                        let out = self.speaker.handle(
                            Instant::now(),
                            Input::Peer {
                                peer,
                                event: Event::Reset {
                                    conn,
                                    notification: crate::session::notification(
                                        rustbgpd_wire::NotificationCode::Cease,
                                        rustbgpd_wire::notification::cease_subcode::OUT_OF_RESOURCES,
                                    ),
                                    reason: "the peer does not read what is sent".into(),
                                },
                            },
                        );
                        self.carry_out(out, sink, connected);
                    }
                }
                Output::Close { peer, conn } => {
                    if let Some(connection) = self.connections.remove(&(peer, conn)) {
                        connection.close();
                    }
                }
                Output::Routes(changes) => sink.apply(changes),
                Output::PeerUp { .. } => {}
                Output::PeerDown { peer, reason } => {
                    tracing::info!(peer = peer.0, %reason, "BGP peer down");
                }
                Output::Discarded { peer, reason } => {
                    tracing::debug!(peer = peer.0, %reason, "BGP routes withdrawn on receipt");
                }
            }
        }
    }

    /// Starts a connection attempt to `peer`, if its address is known.
    fn connect(&mut self, peer: PeerId, connected: &mpsc::Sender<ConnectResult>) {
        if !self.connecting.insert(peer) {
            return;
        }
        let remote = self
            .speaker
            .peers()
            .find(|(id, _)| *id == peer)
            .map(|(_, p)| p.remote.clone());
        let address = match remote {
            Some(Remote::Address(ip)) => Some(SocketAddr::new(ip, self.config.peer_port)),
            Some(Remote::Interface(name)) => match (self.learned.get(&name), ra::ifindex(&name)) {
                (Some(ll), Ok(index)) => Some(SocketAddr::V6(SocketAddrV6::new(
                    *ll,
                    self.config.peer_port,
                    0,
                    index,
                ))),
                _ => None,
            },
            None => None,
        };
        let connected = connected.clone();
        tokio::spawn(async move {
            let result = match address {
                Some(address) => tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
                    .await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "connect timed out",
                        ))
                    }),
                None => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "peer address not known yet (no router advertisement heard)",
                )),
            };
            let _ = connected.send((peer, result)).await;
        });
    }

    /// The configured peer a connection from `from` belongs to.
    fn peer_of(&mut self, from: SocketAddr, interfaces: &[String]) -> Option<PeerId> {
        match from {
            SocketAddr::V6(v6) if v6.ip().is_unicast_link_local() => {
                let interface = ra::interface_of(v6.scope_id(), interfaces)?;
                let peer = self
                    .speaker
                    .peer_for(&Remote::Interface(interface.clone()))?;
                self.learned.insert(interface, *v6.ip());
                Some(peer)
            }
            SocketAddr::V6(v6) => match v6.ip().to_ipv4_mapped() {
                Some(v4) => self.speaker.peer_for(&Remote::Address(IpAddr::V4(v4))),
                None => self
                    .speaker
                    .peer_for(&Remote::Address(IpAddr::V6(*v6.ip()))),
            },
            SocketAddr::V4(v4) => self
                .speaker
                .peer_for(&Remote::Address(IpAddr::V4(*v4.ip()))),
        }
    }

    fn attach(
        &mut self,
        peer: PeerId,
        stream: TcpStream,
        outgoing: bool,
        events: &mpsc::Sender<(PeerId, ConnId, ConnectionEvent)>,
        sink: &mut impl RouteSink,
        connected: &mpsc::Sender<ConnectResult>,
    ) {
        let conn = self.next_conn;
        self.next_conn += 1;
        let connection = match Connection::start(stream, peer, conn, events.clone()) {
            Ok(connection) => connection,
            Err(error) => {
                tracing::debug!(%error, "BGP connection lost at once");
                return;
            }
        };
        let (local, remote) = (unmap(connection.local.ip()), unmap(connection.remote.ip()));
        self.connections.insert((peer, conn), connection);
        let out = self.speaker.handle(
            Instant::now(),
            Input::Peer {
                peer,
                event: Event::Connected {
                    conn,
                    outgoing,
                    local,
                    remote,
                },
            },
        );
        self.carry_out(out, sink, connected);
    }
}

fn unmap(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

fn listen(address: SocketAddr) -> std::io::Result<TcpListener> {
    let domain = if address.is_ipv6() {
        socket2::Domain::IPV6
    } else {
        socket2::Domain::IPV4
    };
    let socket = socket2::Socket::new(domain, socket2::Type::STREAM, Some(socket2::Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    if address.is_ipv6() {
        // One socket for IPv4 and IPv6 neighbours.
        socket.set_only_v6(false)?;
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(64)?;
    TcpListener::from_std(std::net::TcpListener::from(socket))
}

fn route_views(speaker: &Speaker, family: Option<Family>) -> Vec<RouteView> {
    let name = |source: Source| match source {
        Source::Local => "local".to_string(),
        Source::Peer(id) => speaker
            .peers()
            .find(|(p, _)| *p == id)
            .map(|(_, c)| c.remote.to_string())
            .unwrap_or_default(),
    };
    let rib = speaker.rib();
    let mut keys: Vec<&RouteKey> = rib
        .keys()
        .filter(|k| family.is_none_or(|f| k.family() == f))
        .collect();
    keys.sort();
    keys.into_iter()
        .map(|key| {
            let selected = rib.selected(key);
            let paths = rib
                .paths(key)
                .iter()
                .map(|path| PathView {
                    selected: selected.iter().any(|s| s.source == path.source),
                    best: selected.first().is_some_and(|s| s.source == path.source),
                    from: name(path.source),
                    next_hop: path.next_hop.to_string(),
                    as_path: path.attributes.as_path_flat(),
                    router_mac: path.attributes.router_mac().map(|m| {
                        m.iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<Vec<_>>()
                            .join(":")
                    }),
                })
                .collect();
            RouteView {
                family: key.family(),
                route: key.to_string(),
                vni: rib.paths(key).first().and_then(|p| p.vni()),
                paths,
            }
        })
        .collect()
}
