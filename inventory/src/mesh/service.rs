//! The mesh on real sockets: one QUIC endpoint (mutual TLS) carries every
//! message as one unidirectional stream, and commands as bidirectional
//! streams. One task owns the [`MeshNode`] and the store; connection readers,
//! per-peer writers and timers talk to it over channels.
//!
//! Who may reach it: nodes with a certificate of the mesh CA that states a
//! role and is not revoked ([`tls::Admission`]). What one of them can cost
//! this node is bounded per peer name: [`MAX_CONNECTIONS_PER_PEER`]
//! connections, [`MAX_STREAMS_PER_CONNECTION`] streams, and
//! [`MeshSettings::peer_byte_budget`] bytes of received messages waiting for the protocol
//! task (its readers wait beyond that, which holds back only its own
//! streams). A message whose sender claims another name, or an address its
//! certificate does not allow, is dropped; all of it is counted per peer.

use crate::mesh::message::{Envelope, MAX_MESSAGE_BYTES, decode, encode};
use crate::mesh::node::{Action, Input, MeshNode, Timer, Tuning};
use crate::mesh::peer::Peer;
use crate::mesh::tls;
use crate::pki::NodeCredentials;
use crate::store::Store;
use crate::trust::TrustCounters;
use crate::trust::certificate::CertificateFacts;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Messages queued per peer before new ones are dropped (SWIM tolerates
/// loss; anti-entropy repairs dropped records).
const PEER_QUEUE: usize = 512;
/// Connections one peer name may hold open to this node at a time.
pub const MAX_CONNECTIONS_PER_PEER: usize = 4;
/// Concurrent message streams per connection.
pub const MAX_STREAMS_PER_CONNECTION: u32 = 64;
/// Received bytes of one peer queued for the protocol task by default
/// (each message charged at least [`MIN_MESSAGE_CHARGE`]).
pub const PEER_BYTE_BUDGET: usize = 16 * 1024 * 1024;
const MIN_MESSAGE_CHARGE: usize = 4096;
/// How often revocations and the credential files are looked at.
const HOUSEKEEPING: Duration = Duration::from_secs(1);
/// Largest command or reply.
const MAX_COMMAND_BYTES: usize = 1024 * 1024;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
/// Longest a peer may take to deliver one message stream.
const STREAM_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a command may take, from reading it to answering it.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("mesh TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("mesh endpoint on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("no mesh member named {0}")]
    UnknownMember(String),
    #[error("mesh peer {peer}: {detail}")]
    Peer { peer: String, detail: String },
    /// The peer answered the command with a refusal.
    #[error("mesh peer {peer}: {reason}")]
    Refused { peer: String, reason: String },
    /// The command was sent whole, then the connection ended before the
    /// reply: the peer may have acted on it.
    #[error("mesh peer {peer}: connection lost after the command was sent ({detail})")]
    Interrupted { peer: String, detail: String },
    /// No answer in time: the peer may still act on the command.
    #[error("mesh peer {peer}: no reply within {after:?}")]
    TimedOut { peer: String, after: Duration },
    #[error("the mesh service is not running")]
    Stopped,
    #[error("mesh credentials: {0}")]
    Credentials(#[from] crate::pki::PkiError),
    #[error("mesh trust: {0}")]
    Trust(#[from] crate::trust::TrustError),
    #[error("the inventory store is not signed (open it with Store::open_signed)")]
    UnsignedStore,
    #[error("inventory store: {0}")]
    Store(#[from] crate::store::StoreError),
}

/// The files a node's credentials come from, to pick up a renewed
/// certificate (or a new CA bundle) without a restart.
#[derive(Debug, Clone)]
pub struct CredentialFiles {
    pub ca: std::path::PathBuf,
    pub cert: std::path::PathBuf,
    pub key: std::path::PathBuf,
}

impl CredentialFiles {
    fn stamp(&self) -> Vec<Option<SystemTime>> {
        [&self.ca, &self.cert, &self.key]
            .iter()
            .map(|path| std::fs::metadata(path).and_then(|m| m.modified()).ok())
            .collect()
    }
}

/// Where this node listens and whom it asks to join.
#[derive(Debug, Clone)]
pub struct MeshSettings {
    pub name: String,
    pub listen: SocketAddr,
    /// The address other nodes reach this one at.
    pub advertise: SocketAddr,
    pub seeds: Vec<SocketAddr>,
    pub tuning: Tuning,
    /// Where the credentials were loaded from, to reload them on change.
    pub credential_files: Option<CredentialFiles>,
    /// Bytes of one peer's messages that may wait for the protocol task
    /// ([`PEER_BYTE_BUDGET`] unless set; at least one largest message).
    pub peer_byte_budget: usize,
}

/// A member as `mesh members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    pub addr: SocketAddr,
    pub state: String,
    /// What this node refused or held back of it.
    #[serde(default)]
    pub counters: PeerCounters,
}

/// Per peer name: what was refused or shed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerCounters {
    pub messages: u64,
    /// Undecodable, oversized, late or of another wire version.
    pub malformed: u64,
    /// Sender name or advertised address not the certificate's.
    pub impersonation: u64,
    /// Connections refused over [`MAX_CONNECTIONS_PER_PEER`].
    pub connections_refused: u64,
    /// Times its reader waited for its byte budget.
    pub throttled: u64,
    /// Dialled for one member, answered with another's certificate.
    pub wrong_certificate: u64,
    /// Most bytes of its messages ever waiting for the protocol task at
    /// once (at most its byte budget).
    pub queued_bytes_high_water: u64,
}

/// The mesh as `mesh members -o json` shows it: members, peers that are not
/// members (refused ones included), and the store's refusals by reason.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MeshHealth {
    pub peers: BTreeMap<String, PeerCounters>,
    pub records: Option<TrustCounters>,
    pub revoked: Vec<String>,
    /// Message bytes received from and sent to peers since start.
    #[serde(default)]
    pub bytes_in: u64,
    #[serde(default)]
    pub bytes_out: u64,
    /// Messages sent (one QUIC stream each) since start.
    #[serde(default)]
    pub messages_out: u64,
    /// What QUIC put on the wire for the open connections: UDP payload
    /// bytes and datagrams sent (handshakes, acknowledgements and
    /// retransmissions included).
    #[serde(default)]
    pub udp_bytes_out: u64,
    #[serde(default)]
    pub udp_datagrams_out: u64,
}

/// A command another node sent to this one (the API node asks a rack agent
/// to act), to be answered through `reply`.
#[derive(Debug)]
pub struct Command {
    pub from: String,
    /// The sender's role, from its certificate: what a handler decides on.
    pub role: Option<crate::trust::Role>,
    pub op: String,
    pub body: serde_json::Value,
    pub reply: oneshot::Sender<Result<serde_json::Value, String>>,
}

#[derive(Debug, Serialize, Deserialize)]
struct CommandFrame {
    op: String,
    body: serde_json::Value,
}

#[derive(Debug, Serialize, Deserialize)]
enum ReplyFrame {
    Ok(serde_json::Value),
    Err(String),
}

/// What other tasks see of the running mesh.
#[derive(Debug, Clone, Default)]
pub struct MeshView {
    inner: Arc<Mutex<ViewState>>,
}

#[derive(Debug, Default)]
struct ViewState {
    members: Vec<MemberInfo>,
    health: MeshHealth,
    connections: Option<Arc<Connections>>,
}

impl MeshView {
    pub fn members(&self) -> Vec<MemberInfo> {
        self.lock().members.clone()
    }

    pub fn health(&self) -> MeshHealth {
        self.lock().health.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ViewState> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends a command to member `node` and waits for its reply.
    pub async fn request(
        &self,
        node: &str,
        op: &str,
        body: serde_json::Value,
        timeout: Duration,
    ) -> Result<serde_json::Value, MeshError> {
        let (addr, connections) = {
            let state = self.lock();
            let member = state
                .members
                .iter()
                .find(|member| member.name == node)
                .ok_or_else(|| MeshError::UnknownMember(node.to_string()))?;
            let connections = state.connections.clone().ok_or(MeshError::Stopped)?;
            (member.addr, connections)
        };
        let peer_error = |detail: String| MeshError::Peer {
            peer: node.to_string(),
            detail,
        };
        let exchange = async {
            let connection = connections.get(addr).await.map_err(peer_error)?;
            // The address came from gossip: only the named node's own
            // certificate may answer a command meant for it.
            let answering = peer_name(&connection).unwrap_or_default();
            if answering != node {
                return Err(peer_error(format!(
                    "{addr} presents the certificate of {answering:?}, not {node:?}"
                )));
            }
            let (mut send, mut receive) = connection
                .open_bi()
                .await
                .map_err(|e| peer_error(e.to_string()))?;
            let frame = serde_json::to_vec(&CommandFrame {
                op: op.to_string(),
                body,
            })
            .map_err(|e| peer_error(e.to_string()))?;
            send.write_all(&frame)
                .await
                .map_err(|e| peer_error(e.to_string()))?;
            send.finish().map_err(|e| peer_error(e.to_string()))?;
            // From here the peer may have the whole command: losing the
            // connection no longer means it was not carried out.
            let reply = receive.read_to_end(MAX_COMMAND_BYTES).await.map_err(|e| {
                MeshError::Interrupted {
                    peer: node.to_string(),
                    detail: e.to_string(),
                }
            })?;
            match serde_json::from_slice::<ReplyFrame>(&reply)
                .map_err(|e| peer_error(format!("bad reply: {e}")))?
            {
                ReplyFrame::Ok(value) => Ok(value),
                ReplyFrame::Err(reason) => Err(MeshError::Refused {
                    peer: node.to_string(),
                    reason,
                }),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| MeshError::TimedOut {
                peer: node.to_string(),
                after: timeout,
            })?
    }
}

/// Open connections by address, dialled on first use, and what each peer
/// name holds and is charged. Each address has its own slot, so dialling
/// an unreachable peer does not hold up the others.
#[derive(Debug)]
struct Connections {
    endpoint: quinn::Endpoint,
    /// What this node dials with (replaced when its credentials change).
    client: Mutex<quinn::ClientConfig>,
    slots: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
    peers: Mutex<HashMap<String, Arc<PeerState>>>,
    byte_budget: usize,
    /// Message bytes received and sent (gossip and records), for metrics.
    bytes_in: std::sync::atomic::AtomicU64,
    bytes_out: std::sync::atomic::AtomicU64,
    messages_out: std::sync::atomic::AtomicU64,
}

#[derive(Debug)]
struct PeerState {
    budget: Arc<tokio::sync::Semaphore>,
    counters: Mutex<PeerCounters>,
    /// Its connections, to close them on revocation; `true` marks the ones
    /// it dialled (only those count against [`MAX_CONNECTIONS_PER_PEER`]).
    live: Mutex<Vec<(quinn::Connection, bool)>>,
}

fn locked<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl Connections {
    fn new(
        endpoint: quinn::Endpoint,
        client: quinn::ClientConfig,
        byte_budget: usize,
    ) -> Connections {
        Connections {
            byte_budget: byte_budget.max(MAX_MESSAGE_BYTES),
            endpoint,
            client: Mutex::new(client),
            slots: Mutex::new(HashMap::new()),
            peers: Mutex::new(HashMap::new()),
            bytes_in: std::sync::atomic::AtomicU64::new(0),
            bytes_out: std::sync::atomic::AtomicU64::new(0),
            messages_out: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// UDP payload bytes and datagrams QUIC sent on the open connections.
    fn udp_out(&self) -> (u64, u64) {
        locked(&self.peers)
            .values()
            .flat_map(|peer| locked(&peer.live).clone())
            .map(|(c, _)| c)
            .filter(|c| c.close_reason().is_none())
            .map(|c| {
                let udp = c.stats().udp_tx;
                (udp.bytes, udp.datagrams)
            })
            .fold((0, 0), |(b, d), (bytes, datagrams)| {
                (b + bytes, d + datagrams)
            })
    }

    fn peer(&self, name: &str) -> Arc<PeerState> {
        Arc::clone(
            locked(&self.peers)
                .entry(name.to_string())
                .or_insert_with(|| {
                    Arc::new(PeerState {
                        budget: Arc::new(tokio::sync::Semaphore::new(self.byte_budget)),
                        counters: Mutex::new(PeerCounters::default()),
                        live: Mutex::new(Vec::new()),
                    })
                }),
        )
    }

    fn count(&self, name: &str, bump: impl FnOnce(&mut PeerCounters)) {
        bump(&mut locked(&self.peer(name).counters));
    }

    fn counters(&self) -> BTreeMap<String, PeerCounters> {
        locked(&self.peers)
            .iter()
            .map(|(name, peer)| (name.clone(), *locked(&peer.counters)))
            .collect()
    }

    /// Records a connection of `name`; an inbound one is refused (`false`)
    /// when the name has dialled [`MAX_CONNECTIONS_PER_PEER`] open ones
    /// already. The connections this node dialled do not count: they are
    /// one per address, and closed when the member goes down.
    fn register(&self, name: &str, connection: &quinn::Connection, inbound: bool) -> bool {
        let peer = self.peer(name);
        let mut live = locked(&peer.live);
        live.retain(|(c, _)| c.close_reason().is_none());
        let dialled_by_peer = live.iter().filter(|(_, inbound)| *inbound).count();
        if inbound && dialled_by_peer >= MAX_CONNECTIONS_PER_PEER {
            drop(live);
            self.count(name, |c| c.connections_refused += 1);
            return false;
        }
        live.push((connection.clone(), inbound));
        true
    }

    /// Closes every connection whose certificate `admission` no longer
    /// admits (a revoked node); returns the peer names cut off.
    fn close_refused(&self, admission: &tls::Admission) -> Vec<String> {
        let peers: Vec<(String, Arc<PeerState>)> = locked(&self.peers)
            .iter()
            .map(|(name, peer)| (name.clone(), Arc::clone(peer)))
            .collect();
        let mut cut = Vec::new();
        for (name, peer) in peers {
            let mut live = locked(&peer.live);
            live.retain(|(connection, _)| {
                let refusal = peer_certificate(connection)
                    .and_then(|certificate| admission.refusal(&certificate));
                match refusal {
                    Some(reason) => {
                        connection.close(quinn::VarInt::from_u32(3), b"revoked");
                        tracing::warn!(peer = %name, %reason, "mesh connection closed");
                        false
                    }
                    None => connection.close_reason().is_none(),
                }
            });
            if live.is_empty() && !cut.contains(&name) {
                cut.push(name);
            }
        }
        cut
    }

    /// Closes the connections this node dialled to `addr`: a member that
    /// went down is dialled afresh when it comes back. (`live` holds a
    /// handle of each, so dropping the slot alone would keep them open,
    /// kept alive by keep-alives, for as long as the process runs.)
    fn forget(&self, addr: SocketAddr) {
        locked(&self.slots).remove(&addr);
        let peers: Vec<Arc<PeerState>> = locked(&self.peers).values().cloned().collect();
        for peer in peers {
            locked(&peer.live).retain(|(connection, inbound)| {
                if !inbound && connection.remote_address() == addr {
                    connection.close(quinn::VarInt::from_u32(0), b"member down");
                    return false;
                }
                true
            });
        }
    }

    async fn get(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let slot_handle = Arc::clone(locked(&self.slots).entry(addr).or_default());
        let mut slot = slot_handle.lock().await;
        if let Some(connection) = slot.as_ref()
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        // The name is not used for verification (see `tls`), only for SNI.
        let client = locked(&self.client).clone();
        let connecting = self
            .endpoint
            .connect_with(client, addr, "metalmesh-node")
            .map_err(|e| e.to_string())?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no handshake within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
        if let Some(name) = peer_name(&connection) {
            self.register(&name, &connection, false);
        }
        // Forgotten while dialling (the member went down): not kept.
        let current = locked(&self.slots).get(&addr).cloned();
        if !current.is_some_and(|current| Arc::ptr_eq(&current, &slot_handle)) {
            connection.close(quinn::VarInt::from_u32(0), b"member down");
            return Err("the member went down while it was dialled".into());
        }
        *slot = Some(connection.clone());
        Ok(connection)
    }
}

/// Runs the mesh until `cancel`. Commands from other nodes arrive on
/// `commands`.
pub async fn run(
    settings: MeshSettings,
    credentials: Arc<NodeCredentials>,
    store: Store,
    view: MeshView,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
) -> Result<(), MeshError> {
    // Peers check every sender against its certificate: a node running
    // under another name would be refused by all of them.
    credentials.check_node_name(&settings.name)?;
    if store.trust_counters().is_none() {
        return Err(MeshError::UnsignedStore);
    }
    let admission = tls::Admission::default();
    admission.set_revoked(store.revoked());
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(10))
                .unwrap_or(quinn::VarInt::from_u32(10_000).into()),
        ))
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        // What a peer may have in flight, unread, per connection.
        .receive_window(quinn::VarInt::from_u32(8 * 1024 * 1024))
        .stream_receive_window(quinn::VarInt::from_u32(MAX_MESSAGE_BYTES as u32));
    let transport = Arc::new(transport);
    let (server, client) = endpoint_configs(&credentials, &admission, &transport)?;
    let endpoint =
        quinn::Endpoint::server(server, settings.listen).map_err(|source| MeshError::Bind {
            addr: settings.listen,
            source,
        })?;
    let connections = Arc::new(Connections::new(
        endpoint.clone(),
        client,
        settings.peer_byte_budget,
    ));
    view.lock().connections = Some(Arc::clone(&connections));

    let bump = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0);
    let identity = Peer {
        name: settings.name.clone(),
        addr: settings.advertise,
        bump,
    };
    tracing::info!(%identity, listen = %settings.listen, seeds = ?settings.seeds, "mesh starting");
    let mut node = MeshNode::new(
        identity,
        settings.seeds.clone(),
        store.clone(),
        settings.tuning.clone(),
        bump,
    );

    let (inbound_tx, mut inbound) = mpsc::unbounded_channel::<Inbound>();
    let (timer_tx, mut timers) = mpsc::unbounded_channel::<Timer>();
    let tasks = CancellationToken::new();
    let _stop_tasks = tasks.clone().drop_guard();
    // Every task holds the endpoint (its socket) or the store: shutdown
    // waits for them, so a restarted node can bind its address again.
    let tracker = tokio_util::task::TaskTracker::new();
    tracker.spawn(accept_loop(
        tracker.clone(),
        endpoint.clone(),
        Arc::clone(&connections),
        inbound_tx,
        commands,
        tasks.clone(),
    ));
    let mut changes = store.subscribe();
    let mut driver = Driver {
        timer_tx,
        tasks: tasks.clone(),
        tracker: tracker.clone(),
        connections: Arc::clone(&connections),
        writers: HashMap::new(),
        view: view.clone(),
        view_refreshed: None,
    };
    let actions = node.start();
    driver.perform(&mut node, actions);
    let mut housekeeping = tokio::time::interval(HOUSEKEEPING);
    let mut credential_stamp = settings
        .credential_files
        .as_ref()
        .map(CredentialFiles::stamp);

    loop {
        let input = tokio::select! {
            () = cancel.cancelled() => break,
            Some(inbound) = inbound.recv() => {
                // The budget is given back once the message is handled.
                let Inbound { envelope, charge: _charge } = inbound;
                let now = crate::clock::now_version();
                let actions = crate::store::blocking(|| node.handle(now, Input::Received(envelope)));
                driver.perform(&mut node, actions);
                continue;
            }
            Some(timer) = timers.recv() => Input::Timer(timer),
            _ = housekeeping.tick() => {
                enforce_revocations(&store, &admission, &connections);
                if let (Some(files), Some(stamp)) = (&settings.credential_files, &mut credential_stamp) {
                    let now_stamp = files.stamp();
                    if now_stamp != *stamp {
                        *stamp = now_stamp;
                        match reload_credentials(files, &settings.name, &admission, &transport, &connections, &store) {
                            Ok(()) => tracing::info!(cert = %files.cert.display(), "mesh credentials reloaded"),
                            Err(error) => tracing::error!(%error, "mesh credentials changed but cannot be used; keeping the previous ones"),
                        }
                    }
                }
                driver.refresh_health(&store);
                continue;
            }
            change = changes.recv() => match change {
                Ok(record) => {
                    if record.id.kind == crate::record::RecordKind::Revocation {
                        enforce_revocations(&store, &admission, &connections);
                        let now = crate::clock::now_version();
                        let input = Input::Revoked(record.id.key.clone());
                        let actions = crate::store::blocking(|| node.handle(now, input));
                        driver.perform(&mut node, actions);
                    }
                    // This node's writes, and CA records handed to it (a
                    // revocation imported by an operator), are pushed;
                    // others' records spread from where they were received.
                    if record.origin == settings.name || record.origin == crate::trust::CA_ORIGIN {
                        Input::Published(vec![record])
                    } else {
                        continue;
                    }
                }
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    // Anti-entropy delivers what is not pushed now.
                    tracing::warn!(missed, "mesh fell behind the store's change feed");
                    continue;
                }
                Err(broadcast::error::RecvError::Closed) => break,
            },
        };
        let now = crate::clock::now_version();
        let actions = crate::store::blocking(|| node.handle(now, input));
        driver.perform(&mut node, actions);
    }
    let actions = node.leave();
    driver.perform(&mut node, actions);
    // Give the goodbye a moment to leave before the endpoint closes.
    tokio::time::sleep(Duration::from_millis(100)).await;
    endpoint.close(quinn::VarInt::from_u32(0), b"shutting down");
    view.lock().connections = None;
    tasks.cancel();
    tracker.close();
    drop(driver);
    drop(connections);
    if tokio::time::timeout(Duration::from_secs(3), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            left = tracker.len(),
            "mesh tasks still running after shutdown"
        );
    }
    endpoint.wait_idle().await;
    Ok(())
}

/// A received message and the part of its sender's byte budget it holds.
struct Inbound {
    envelope: Envelope,
    charge: tokio::sync::OwnedSemaphorePermit,
}

fn endpoint_configs(
    credentials: &NodeCredentials,
    admission: &tls::Admission,
    transport: &Arc<quinn::TransportConfig>,
) -> Result<(quinn::ServerConfig, quinn::ClientConfig), MeshError> {
    let server_crypto = QuicServerConfig::try_from(tls::server_config(credentials, admission)?)
        .map_err(|e| tls::TlsError::Verifier(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(Arc::clone(transport));
    let client_crypto =
        QuicClientConfig::try_from(tls::client_config(credentials, true, admission)?)
            .map_err(|e| tls::TlsError::Verifier(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(Arc::clone(transport));
    Ok((server, client))
}

/// Takes in changed credential files: new connections use them, and the
/// store signs with the new key (rewriting this node's records under it
/// when the key changed). Anything wrong leaves the running ones in place.
fn reload_credentials(
    files: &CredentialFiles,
    name: &str,
    admission: &tls::Admission,
    transport: &Arc<quinn::TransportConfig>,
    connections: &Connections,
    store: &Store,
) -> Result<(), MeshError> {
    let credentials = NodeCredentials::load(&files.ca, &files.cert, &files.key)?;
    credentials.check_node_name(name)?;
    let trust = crate::trust::Trust::from_credentials(&credentials)?;
    let (server, client) = endpoint_configs(&credentials, admission, transport)?;
    crate::store::blocking(|| store.install_trust(trust))?;
    connections.endpoint.set_server_config(Some(server));
    *locked(&connections.client) = client;
    Ok(())
}

/// Brings the TLS admission up to the revocations the store holds and cuts
/// off connections of revoked nodes.
fn enforce_revocations(store: &Store, admission: &tls::Admission, connections: &Connections) {
    let revoked = store.revoked();
    admission.set_revoked(revoked);
    connections.close_refused(admission);
}

struct Driver {
    timer_tx: mpsc::UnboundedSender<Timer>,
    tasks: CancellationToken,
    tracker: tokio_util::task::TaskTracker,
    connections: Arc<Connections>,
    writers: HashMap<SocketAddr, mpsc::Sender<(String, Vec<u8>)>>,
    view: MeshView,
    /// When the view's member list was last rebuilt.
    view_refreshed: Option<std::time::Instant>,
}

/// How stale the member states in [`MeshView`] may get (SWIM reports joins
/// and departures, not alive/suspect changes).
const VIEW_REFRESH: Duration = Duration::from_secs(1);

impl Driver {
    fn perform(&mut self, node: &mut MeshNode<Store>, actions: Vec<Action>) {
        let mut membership_changed = false;
        for action in actions {
            match action {
                Action::Send { to, envelope } => self.send(&to, encode(&envelope)),
                Action::Schedule { after, timer } => {
                    let timer_tx = self.timer_tx.clone();
                    let tasks = self.tasks.clone();
                    self.tracker.spawn(async move {
                        tokio::select! {
                            () = tasks.cancelled() => {}
                            () = tokio::time::sleep(after) => { let _ = timer_tx.send(timer); }
                        }
                    });
                }
                Action::MemberUp(peer) => {
                    tracing::info!(member = %peer, "mesh member up");
                    membership_changed = true;
                }
                Action::MemberDown(peer) => {
                    tracing::warn!(member = %peer, "mesh member down");
                    membership_changed = true;
                    // Its writer task and connection go with it (a member
                    // that comes back gets new ones), so churn leaves nothing.
                    self.writers.remove(&peer.addr);
                    self.connections.forget(peer.addr);
                }
                Action::Applied(records) => {
                    tracing::debug!(count = records.len(), "records received");
                }
                Action::Refused { from, reason } => {
                    tracing::warn!(peer = %from, %reason, "mesh message refused");
                }
            }
        }
        let due = self
            .view_refreshed
            .is_none_or(|at| at.elapsed() >= VIEW_REFRESH);
        if membership_changed || due {
            self.view_refreshed = Some(std::time::Instant::now());
            let counters = self.connections.counters();
            let mut members: Vec<MemberInfo> = node
                .members()
                .into_iter()
                .map(|(peer, state)| MemberInfo {
                    counters: counters.get(&peer.name).copied().unwrap_or_default(),
                    name: peer.name,
                    addr: peer.addr,
                    state: format!("{state:?}").to_lowercase(),
                })
                .collect();
            members.sort_by(|a, b| a.name.cmp(&b.name));
            self.view.lock().members = members;
        }
    }

    fn refresh_health(&mut self, store: &Store) {
        let health = MeshHealth {
            peers: self.connections.counters(),
            records: store.trust_counters(),
            revoked: store.revoked().into_keys().collect(),
            bytes_in: self
                .connections
                .bytes_in
                .load(std::sync::atomic::Ordering::Relaxed),
            bytes_out: self
                .connections
                .bytes_out
                .load(std::sync::atomic::Ordering::Relaxed),
            messages_out: self
                .connections
                .messages_out
                .load(std::sync::atomic::Ordering::Relaxed),
            udp_bytes_out: 0,
            udp_datagrams_out: 0,
        };
        let (udp_bytes_out, udp_datagrams_out) = self.connections.udp_out();
        let health = MeshHealth {
            udp_bytes_out,
            udp_datagrams_out,
            ..health
        };
        self.view.lock().health = health;
    }

    fn send(&mut self, to: &Peer, bytes: Vec<u8>) {
        let addr = to.addr;
        let writer = self.writers.entry(addr).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            self.tracker.spawn(peer_writer(
                addr,
                rx,
                Arc::clone(&self.connections),
                self.tasks.clone(),
            ));
            tx
        });
        if let Err(mpsc::error::TrySendError::Full(_)) = writer.try_send((to.name.clone(), bytes)) {
            tracing::debug!(%addr, "mesh peer queue full; message dropped");
        }
    }
}

/// Sends queued messages to one peer, one stream each, reconnecting as
/// needed. A message meant for a named member goes only to a connection
/// whose certificate names that member (an address learned from gossip
/// proves nothing).
async fn peer_writer(
    addr: SocketAddr,
    mut queue: mpsc::Receiver<(String, Vec<u8>)>,
    connections: Arc<Connections>,
    cancel: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    loop {
        let (expected, bytes) = tokio::select! {
            () = cancel.cancelled() => return,
            bytes = queue.recv() => match bytes { Some(b) => b, None => return },
        };
        let result = async {
            let connection = connections.get(addr).await?;
            let answering = peer_name(&connection).unwrap_or_default();
            if !expected.is_empty() && answering != expected {
                connections.count(&expected, |c| c.wrong_certificate += 1);
                return Err(format!(
                    "{addr} presents the certificate of {answering:?}, not {expected:?}"
                ));
            }
            let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
            stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
            connections
                .bytes_out
                .fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
            connections
                .messages_out
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            stream.finish().map_err(|e| e.to_string())
        }
        .await;
        match result {
            Ok(()) => last_error = None,
            Err(error) => {
                // Log a failing peer once per failure streak, not per message.
                if last_error.as_ref() != Some(&error) {
                    tracing::warn!(%addr, %error, "cannot reach mesh peer");
                    last_error = Some(error);
                }
            }
        }
    }
}

async fn accept_loop(
    tracker: tokio_util::task::TaskTracker,
    endpoint: quinn::Endpoint,
    connections: Arc<Connections>,
    inbound: mpsc::UnboundedSender<Inbound>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
) {
    loop {
        let incoming = tokio::select! {
            () = cancel.cancelled() => return,
            incoming = endpoint.accept() => match incoming { Some(i) => i, None => return },
        };
        let inbound = inbound.clone();
        let commands = commands.clone();
        let cancel = cancel.clone();
        let connections = Arc::clone(&connections);
        let inner_tracker = tracker.clone();
        tracker.spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%remote, %error, "mesh peer refused");
                    return;
                }
            };
            let Some(facts) = peer_certificate(&connection)
                .and_then(|certificate| crate::trust::certificate::read(certificate.as_ref()).ok())
            else {
                tracing::warn!(%remote, "mesh peer refused: certificate without a name");
                connection.close(quinn::VarInt::from_u32(1), b"no name");
                return;
            };
            if !connections.register(&facts.name, &connection, true) {
                tracing::warn!(%remote, peer = %facts.name, "mesh peer refused: too many connections");
                connection.close(quinn::VarInt::from_u32(4), b"too many connections");
                return;
            }
            tracing::debug!(%remote, name = %facts.name, "mesh connection accepted");
            serve_connection(inner_tracker, connection, facts, connections, inbound, commands, cancel).await;
        });
    }
}

fn peer_certificate(
    connection: &quinn::Connection,
) -> Option<rustls_pki_types::CertificateDer<'static>> {
    let identity = connection.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    chain.first().cloned()
}

fn peer_name(connection: &quinn::Connection) -> Option<String> {
    tls::certificate_name(&peer_certificate(connection)?)
}

/// Whether a member may advertise `addr`: one of its certificate's IP
/// addresses, or (a certificate without any) the address it connects from.
fn may_advertise(facts: &CertificateFacts, remote: SocketAddr, addr: SocketAddr) -> bool {
    if facts.addresses.is_empty() {
        addr.ip() == remote.ip()
    } else {
        facts.addresses.contains(&addr.ip())
    }
}

async fn serve_connection(
    tracker: tokio_util::task::TaskTracker,
    connection: quinn::Connection,
    facts: CertificateFacts,
    connections: Arc<Connections>,
    inbound: mpsc::UnboundedSender<Inbound>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
) {
    let remote = connection.remote_address();
    let name = facts.name.clone();
    let budget = Arc::clone(&connections.peer(&name).budget);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            stream = connection.accept_uni() => {
                let mut stream = match stream { Ok(s) => s, Err(_) => return };
                // A peer trickling one stream must not stall its connection for long.
                let bytes = match tokio::time::timeout(STREAM_TIMEOUT, stream.read_to_end(MAX_MESSAGE_BYTES)).await {
                    Ok(Ok(bytes)) => {
                        connections.bytes_in.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
                        bytes
                    }
                    Ok(Err(error)) => {
                        connections.count(&name, |c| c.malformed += 1);
                        tracing::debug!(%remote, peer = %name, %error, "mesh message dropped");
                        continue;
                    }
                    Err(_) => {
                        connections.count(&name, |c| c.malformed += 1);
                        tracing::debug!(%remote, peer = %name, "mesh message dropped: not complete within {STREAM_TIMEOUT:?}");
                        let _ = stream.stop(quinn::VarInt::from_u32(2));
                        continue;
                    }
                };
                connections.count(&name, |c| c.messages += 1);
                let envelope = match decode(&bytes) {
                    Ok(envelope) => envelope,
                    Err(error) => {
                        connections.count(&name, |c| c.malformed += 1);
                        tracing::debug!(%remote, peer = %name, %error, "mesh message dropped");
                        continue;
                    }
                };
                if envelope.from.name != name || !may_advertise(&facts, remote, envelope.from.addr) {
                    connections.count(&name, |c| c.impersonation += 1);
                    tracing::warn!(
                        %remote, peer = %name, claimed = %envelope.from,
                        "mesh message dropped: sender name or address is not its certificate's"
                    );
                    continue;
                }
                // Charged to the sender until handled: beyond its budget
                // this reader waits, holding back only this peer.
                let charge = u32::try_from(bytes.len().max(MIN_MESSAGE_CHARGE)).unwrap_or(u32::MAX);
                let permit = match Arc::clone(&budget).try_acquire_many_owned(charge) {
                    Ok(permit) => permit,
                    Err(_) => {
                        connections.count(&name, |c| c.throttled += 1);
                        let acquired = tokio::select! {
                            () = cancel.cancelled() => return,
                            permit = Arc::clone(&budget).acquire_many_owned(charge) => permit,
                        };
                        match acquired { Ok(permit) => permit, Err(_) => return }
                    }
                };
                let queued = connections.byte_budget.saturating_sub(budget.available_permits()) as u64;
                connections.count(&name, |c| {
                    c.queued_bytes_high_water = c.queued_bytes_high_water.max(queued);
                });
                if inbound.send(Inbound { envelope, charge: permit }).is_err() {
                    return;
                }
            }
            stream = connection.accept_bi() => {
                let (send, receive) = match stream { Ok(s) => s, Err(_) => return };
                tracker.spawn(answer_command(name.clone(), facts.role, send, receive, commands.clone()));
            }
        }
    }
}

async fn answer_command(
    from: String,
    role: Option<crate::trust::Role>,
    mut send: quinn::SendStream,
    mut receive: quinn::RecvStream,
    commands: mpsc::Sender<Command>,
) {
    let reply = async {
        let bytes = receive
            .read_to_end(MAX_COMMAND_BYTES)
            .await
            .map_err(|e| format!("reading command: {e}"))?;
        let frame: CommandFrame =
            serde_json::from_slice(&bytes).map_err(|e| format!("bad command: {e}"))?;
        let (reply, answer) = oneshot::channel();
        commands
            .send(Command {
                from: from.clone(),
                role,
                op: frame.op,
                body: frame.body,
                reply,
            })
            .await
            .map_err(|_| "this node does not take commands".to_string())?;
        answer.await.map_err(|_| "command dropped".to_string())?
    };
    let reply = tokio::time::timeout(COMMAND_TIMEOUT, reply).await;
    let frame = match reply {
        Ok(Ok(value)) => ReplyFrame::Ok(value),
        Ok(Err(message)) => ReplyFrame::Err(message),
        Err(_) => ReplyFrame::Err(format!("no answer within {COMMAND_TIMEOUT:?}")),
    };
    if let Ok(bytes) = serde_json::to_vec(&frame) {
        let _ = send.write_all(&bytes).await;
        let _ = send.finish();
    }
}
