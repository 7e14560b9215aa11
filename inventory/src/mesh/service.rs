//! The mesh on real sockets: one QUIC endpoint (mutual TLS) carries every
//! message as one unidirectional stream, and commands as bidirectional
//! streams. One task owns the [`MeshNode`] and the store; connection readers,
//! per-peer writers and timers talk to it over bounded channels.

use crate::mesh::message::{Envelope, MAX_MESSAGE_BYTES, decode, encode};
use crate::mesh::node::{Action, Input, MeshNode, Timer, Tuning};
use crate::mesh::peer::Peer;
use crate::mesh::tls;
use crate::pki::NodeCredentials;
use crate::store::Store;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::{broadcast, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

/// Messages queued per peer before new ones are dropped (SWIM tolerates
/// loss; anti-entropy repairs dropped records).
const PEER_QUEUE: usize = 512;
/// Inbound messages queued for the protocol task; readers wait when full,
/// which pushes back on the senders' streams.
const INBOUND_QUEUE: usize = 1024;
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
    #[error("the mesh service is not running")]
    Stopped,
    #[error("mesh credentials: {0}")]
    Credentials(#[from] crate::pki::PkiError),
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
}

/// A member as `mesh members` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    pub name: String,
    pub addr: SocketAddr,
    pub state: String,
}

/// A command another node sent to this one (the API node asks a rack agent
/// to act), to be answered through `reply`.
#[derive(Debug)]
pub struct Command {
    pub from: String,
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
    connections: Option<Arc<Connections>>,
}

impl MeshView {
    pub fn members(&self) -> Vec<MemberInfo> {
        self.lock().members.clone()
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
            let reply = receive
                .read_to_end(MAX_COMMAND_BYTES)
                .await
                .map_err(|e| peer_error(e.to_string()))?;
            match serde_json::from_slice::<ReplyFrame>(&reply)
                .map_err(|e| peer_error(format!("bad reply: {e}")))?
            {
                ReplyFrame::Ok(value) => Ok(value),
                ReplyFrame::Err(message) => Err(peer_error(message)),
            }
        };
        tokio::time::timeout(timeout, exchange)
            .await
            .map_err(|_| peer_error(format!("no reply within {timeout:?}")))?
    }
}

/// Open connections by address, dialled on first use. Each address has its
/// own slot, so dialling an unreachable peer does not hold up the others.
#[derive(Debug)]
struct Connections {
    endpoint: quinn::Endpoint,
    slots: Mutex<HashMap<SocketAddr, Arc<tokio::sync::Mutex<Option<quinn::Connection>>>>>,
}

impl Connections {
    /// Drops the connection to `addr` (closed once no stream uses it).
    fn forget(&self, addr: SocketAddr) {
        self.slots
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .remove(&addr);
    }

    async fn get(&self, addr: SocketAddr) -> Result<quinn::Connection, String> {
        let slot = {
            let mut slots = self
                .slots
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            Arc::clone(slots.entry(addr).or_default())
        };
        let mut slot = slot.lock().await;
        if let Some(connection) = slot.as_ref()
            && connection.close_reason().is_none()
        {
            return Ok(connection.clone());
        }
        // The name is not used for verification (see `tls`), only for SNI.
        let connecting = self
            .endpoint
            .connect(addr, "metalmesh-node")
            .map_err(|e| e.to_string())?;
        let connection = tokio::time::timeout(CONNECT_TIMEOUT, connecting)
            .await
            .map_err(|_| format!("no handshake within {CONNECT_TIMEOUT:?}"))?
            .map_err(|e| e.to_string())?;
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
    let mut transport = quinn::TransportConfig::default();
    transport
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_secs(10))
                .unwrap_or(quinn::VarInt::from_u32(10_000).into()),
        ))
        .keep_alive_interval(Some(Duration::from_secs(2)))
        .max_concurrent_uni_streams(quinn::VarInt::from_u32(1024))
        .max_concurrent_bidi_streams(quinn::VarInt::from_u32(64));
    let transport = Arc::new(transport);
    let server_crypto = QuicServerConfig::try_from(tls::server_config(&credentials)?)
        .map_err(|e| tls::TlsError::Verifier(e.to_string()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(server_crypto));
    server.transport_config(Arc::clone(&transport));
    let client_crypto = QuicClientConfig::try_from(tls::client_config(&credentials, true)?)
        .map_err(|e| tls::TlsError::Verifier(e.to_string()))?;
    let mut client = quinn::ClientConfig::new(Arc::new(client_crypto));
    client.transport_config(transport);
    let mut endpoint =
        quinn::Endpoint::server(server, settings.listen).map_err(|source| MeshError::Bind {
            addr: settings.listen,
            source,
        })?;
    endpoint.set_default_client_config(client);
    let connections = Arc::new(Connections {
        endpoint: endpoint.clone(),
        slots: Mutex::new(HashMap::new()),
    });
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

    let (inbound_tx, mut inbound) = mpsc::channel::<Envelope>(INBOUND_QUEUE);
    let (timer_tx, mut timers) = mpsc::unbounded_channel::<Timer>();
    let tasks = CancellationToken::new();
    let _stop_tasks = tasks.clone().drop_guard();
    tokio::spawn(accept_loop(
        endpoint.clone(),
        inbound_tx,
        commands,
        tasks.clone(),
    ));
    let mut changes = store.subscribe();
    let mut driver = Driver {
        timer_tx,
        tasks: tasks.clone(),
        connections,
        writers: HashMap::new(),
        view: view.clone(),
        view_refreshed: None,
    };
    let actions = node.start();
    driver.perform(&mut node, actions);

    loop {
        let input = tokio::select! {
            () = cancel.cancelled() => break,
            Some(envelope) = inbound.recv() => Input::Received(envelope),
            Some(timer) = timers.recv() => Input::Timer(timer),
            change = changes.recv() => match change {
                Ok(record) if record.origin == settings.name => Input::Published(vec![record]),
                Ok(_) => continue,
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
    Ok(())
}

struct Driver {
    timer_tx: mpsc::UnboundedSender<Timer>,
    tasks: CancellationToken,
    connections: Arc<Connections>,
    writers: HashMap<SocketAddr, mpsc::Sender<Vec<u8>>>,
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
                Action::Send { to, envelope } => self.send(to.addr, encode(&envelope)),
                Action::Schedule { after, timer } => {
                    let timer_tx = self.timer_tx.clone();
                    let tasks = self.tasks.clone();
                    tokio::spawn(async move {
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
            let mut members: Vec<MemberInfo> = node
                .members()
                .into_iter()
                .map(|(peer, state)| MemberInfo {
                    name: peer.name,
                    addr: peer.addr,
                    state: format!("{state:?}").to_lowercase(),
                })
                .collect();
            members.sort_by(|a, b| a.name.cmp(&b.name));
            self.view.lock().members = members;
        }
    }

    fn send(&mut self, addr: SocketAddr, bytes: Vec<u8>) {
        let writer = self.writers.entry(addr).or_insert_with(|| {
            let (tx, rx) = mpsc::channel(PEER_QUEUE);
            tokio::spawn(peer_writer(
                addr,
                rx,
                Arc::clone(&self.connections),
                self.tasks.clone(),
            ));
            tx
        });
        if let Err(mpsc::error::TrySendError::Full(_)) = writer.try_send(bytes) {
            tracing::debug!(%addr, "mesh peer queue full; message dropped");
        }
    }
}

/// Sends queued messages to one peer, one stream each, reconnecting as needed.
async fn peer_writer(
    addr: SocketAddr,
    mut queue: mpsc::Receiver<Vec<u8>>,
    connections: Arc<Connections>,
    cancel: CancellationToken,
) {
    let mut last_error: Option<String> = None;
    loop {
        let bytes = tokio::select! {
            () = cancel.cancelled() => return,
            bytes = queue.recv() => match bytes { Some(b) => b, None => return },
        };
        let result = async {
            let connection = connections.get(addr).await?;
            let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
            stream.write_all(&bytes).await.map_err(|e| e.to_string())?;
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
    endpoint: quinn::Endpoint,
    inbound: mpsc::Sender<Envelope>,
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
        tokio::spawn(async move {
            let remote = incoming.remote_address();
            let connection = match incoming.await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%remote, %error, "mesh peer refused");
                    return;
                }
            };
            let Some(name) = peer_name(&connection) else {
                tracing::warn!(%remote, "mesh peer refused: certificate without a name");
                connection.close(quinn::VarInt::from_u32(1), b"no name");
                return;
            };
            tracing::debug!(%remote, %name, "mesh connection accepted");
            serve_connection(connection, name, inbound, commands, cancel).await;
        });
    }
}

fn peer_name(connection: &quinn::Connection) -> Option<String> {
    let identity = connection.peer_identity()?;
    let chain = identity
        .downcast::<Vec<rustls_pki_types::CertificateDer<'static>>>()
        .ok()?;
    tls::certificate_name(chain.first()?)
}

async fn serve_connection(
    connection: quinn::Connection,
    name: String,
    inbound: mpsc::Sender<Envelope>,
    commands: mpsc::Sender<Command>,
    cancel: CancellationToken,
) {
    let remote = connection.remote_address();
    loop {
        tokio::select! {
            () = cancel.cancelled() => return,
            stream = connection.accept_uni() => {
                let mut stream = match stream { Ok(s) => s, Err(_) => return };
                // A peer trickling one stream must not stall its connection for long.
                let bytes = match tokio::time::timeout(STREAM_TIMEOUT, stream.read_to_end(MAX_MESSAGE_BYTES)).await {
                    Ok(Ok(bytes)) => bytes,
                    Ok(Err(error)) => {
                        tracing::warn!(%remote, peer = %name, %error, "mesh message dropped");
                        continue;
                    }
                    Err(_) => {
                        tracing::warn!(%remote, peer = %name, "mesh message dropped: not complete within {STREAM_TIMEOUT:?}");
                        let _ = stream.stop(quinn::VarInt::from_u32(2));
                        continue;
                    }
                };
                match decode(&bytes) {
                    Ok(envelope) if envelope.from.name == name => {
                        if inbound.send(envelope).await.is_err() {
                            return;
                        }
                    }
                    Ok(envelope) => tracing::warn!(
                        %remote, peer = %name, claimed = %envelope.from.name,
                        "mesh message dropped: sender name differs from its certificate"
                    ),
                    Err(error) => {
                        tracing::warn!(%remote, peer = %name, %error, "mesh message dropped")
                    }
                }
            }
            stream = connection.accept_bi() => {
                let (send, receive) = match stream { Ok(s) => s, Err(_) => return };
                tokio::spawn(answer_command(name.clone(), send, receive, commands.clone()));
            }
        }
    }
}

async fn answer_command(
    from: String,
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
