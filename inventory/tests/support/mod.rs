//! Real mesh nodes on loopback QUIC, and raw clients to talk to them as a
//! peer (well-behaved or not) would.
#![allow(clippy::unwrap_used, clippy::expect_used, dead_code, unreachable_pub)]

use metalmesh_inventory::Store;
use metalmesh_inventory::mesh::service::{self, CredentialFiles, MeshSettings, MeshView};
use metalmesh_inventory::mesh::tls;
use metalmesh_inventory::mesh::{Envelope, Tuning};
use metalmesh_inventory::pki::{self, IssuedPem, NodeCredentials, NodeIdentity};
use metalmesh_inventory::trust::{Role, Trust};
use quinn::crypto::rustls::QuicClientConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

pub struct Node {
    pub store: Store,
    pub view: MeshView,
    pub cancel: CancellationToken,
    pub task: tokio::task::JoinHandle<()>,
}

pub fn addr(index: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 20 + index], 17946))
}

pub fn issue(ca: &IssuedPem, name: &str) -> IssuedPem {
    issue_as(ca, name, Role::Leaf)
}

pub fn issue_as(ca: &IssuedPem, name: &str, role: Role) -> IssuedPem {
    let now = OffsetDateTime::now_utc();
    pki::issue_node(
        ca,
        &NodeIdentity::new(name, role),
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )
    .unwrap()
}

pub fn start(
    dir: &std::path::Path,
    index: u8,
    ca: &IssuedPem,
    node: &IssuedPem,
    seeds: Vec<SocketAddr>,
) -> Node {
    let credentials = NodeCredentials::from_pem(&ca.cert, node).unwrap();
    start_with(dir, index, credentials, seeds, None)
}

/// Node `node<index>` with these credentials; with `files`, it watches
/// them for renewal.
pub fn start_with(
    dir: &std::path::Path,
    index: u8,
    credentials: NodeCredentials,
    seeds: Vec<SocketAddr>,
    files: Option<CredentialFiles>,
) -> Node {
    start_budgeted(
        dir,
        index,
        credentials,
        seeds,
        files,
        service::PEER_BYTE_BUDGET,
    )
}

/// [`start_with`], with a byte budget per peer.
pub fn start_budgeted(
    dir: &std::path::Path,
    index: u8,
    credentials: NodeCredentials,
    seeds: Vec<SocketAddr>,
    files: Option<CredentialFiles>,
    peer_byte_budget: usize,
) -> Node {
    let name = format!("node{index}");
    let credentials = Arc::new(credentials);
    let trust = Trust::from_credentials(&credentials).unwrap();
    let store = Store::open_signed(&dir.join(format!("{name}.db")), trust).unwrap();
    let view = MeshView::default();
    let cancel = CancellationToken::new();
    let (commands_tx, mut commands) = tokio::sync::mpsc::channel::<service::Command>(8);
    tokio::spawn(async move {
        while let Some(command) = commands.recv().await {
            let answer =
                serde_json::json!({"op": command.op, "from": command.from, "body": command.body});
            let _ = command.reply.send(Ok(answer));
        }
    });
    let settings = MeshSettings {
        name,
        listen: addr(index),
        advertise: addr(index),
        seeds,
        tuning: Tuning {
            anti_entropy_interval: Duration::from_millis(300),
            rejoin_interval: Duration::from_secs(1),
            ..Tuning::default()
        },
        credential_files: files,
        peer_byte_budget,
    };
    // A node restarted on its address: the stopped one's endpoint lets go
    // of the UDP socket a moment after its task ended (its driver drains).
    for _ in 0..100 {
        if std::net::UdpSocket::bind(settings.listen).is_ok() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let task = {
        let (store, view, cancel) = (store.clone(), view.clone(), cancel.clone());
        tokio::spawn(async move {
            service::run(settings, credentials, store, view, commands_tx, cancel)
                .await
                .unwrap();
        })
    };
    Node {
        store,
        view,
        cancel,
        task,
    }
}

pub async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw QUIC client with the given TLS identity, to talk to a node directly.
pub async fn raw_client(
    ca: &IssuedPem,
    identity: &IssuedPem,
    present: bool,
    target: SocketAddr,
) -> Result<quinn::Connection, String> {
    let credentials = NodeCredentials::from_pem(&ca.cert, identity).unwrap();
    let crypto = QuicClientConfig::try_from(
        tls::client_config(&credentials, present, &tls::Admission::default()).unwrap(),
    )
    .unwrap();
    let mut endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
    let connection = endpoint
        .connect(target, "metalmesh-node")
        .map_err(|e| e.to_string())?
        .await
        .map_err(|e| e.to_string())?;
    // With TLS 1.3 the server judges the client's certificate after the
    // client considers the handshake done: a refused client sees the
    // connection closed on its first use.
    let mut stream = connection.open_uni().await.map_err(|e| e.to_string())?;
    stream.write_all(b"").await.map_err(|e| e.to_string())?;
    stream.finish().map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    match connection.close_reason() {
        Some(reason) => Err(reason.to_string()),
        None => Ok(connection),
    }
}

/// Sends one envelope on its own stream, as a node does.
pub async fn send_raw(connection: &quinn::Connection, envelope: &Envelope) {
    let mut stream = connection.open_uni().await.unwrap();
    stream
        .write_all(&metalmesh_inventory::mesh::message::encode(envelope))
        .await
        .unwrap();
    stream.finish().unwrap();
}
