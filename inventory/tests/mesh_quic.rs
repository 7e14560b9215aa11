//! The mesh over real QUIC sockets on loopback: replication between nodes,
//! commands, and refusal of peers without a mesh-CA certificate and of
//! malformed messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use metalmesh_inventory::mesh::service::{self, MeshSettings, MeshView};
use metalmesh_inventory::mesh::tls;
use metalmesh_inventory::mesh::{Envelope, Message, Peer, Tuning};
use metalmesh_inventory::pki::{self, IssuedPem, NodeCredentials, NodeIdentity};
use metalmesh_inventory::replica::Replica;
use metalmesh_inventory::trust::{Role, Trust};
use metalmesh_inventory::{RecordKind, Store};
use quinn::crypto::rustls::QuicClientConfig;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};
use time::OffsetDateTime;
use tokio_util::sync::CancellationToken;

struct Node {
    store: Store,
    view: MeshView,
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

fn addr(index: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 20 + index], 17946))
}

fn issue(ca: &IssuedPem, name: &str) -> IssuedPem {
    issue_as(ca, name, Role::Leaf)
}

fn issue_as(ca: &IssuedPem, name: &str, role: Role) -> IssuedPem {
    let now = OffsetDateTime::now_utc();
    pki::issue_node(
        ca,
        &NodeIdentity::new(name, role),
        now - time::Duration::hours(1),
        now + time::Duration::days(1),
    )
    .unwrap()
}

fn start(
    dir: &std::path::Path,
    index: u8,
    ca: &IssuedPem,
    node: &IssuedPem,
    seeds: Vec<SocketAddr>,
) -> Node {
    let name = format!("node{index}");
    let credentials = Arc::new(NodeCredentials::from_pem(&ca.cert, node).unwrap());
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
        credential_files: None,
    };
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

async fn eventually(what: &str, limit: Duration, mut check: impl FnMut() -> bool) {
    let start = Instant::now();
    while !check() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A raw QUIC client with the given TLS identity, to talk to a node directly.
async fn raw_client(
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_replicate_commands_answer_and_strangers_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::generate_ca("test").unwrap();
    let seeds = vec![addr(1)];
    let nodes: Vec<Node> = (1..=3)
        .map(|i| {
            start(
                dir.path(),
                i,
                &ca,
                &issue(&ca, &format!("node{i}")),
                seeds.clone(),
            )
        })
        .collect();

    eventually("three members", Duration::from_secs(10), || {
        nodes.iter().all(|n| n.view.members().len() == 2)
    })
    .await;

    // Every node's records reach every other node.
    for (i, node) in nodes.iter().enumerate() {
        node.store
            .put_local(
                RecordKind::Switch,
                &format!("node{}", i + 1),
                Some(format!("{{\"n\":{i}}}")),
            )
            .unwrap();
    }
    eventually("records everywhere", Duration::from_secs(5), || {
        nodes
            .iter()
            .all(|n| n.store.list(Some(RecordKind::Switch)).unwrap().len() == 3)
    })
    .await;
    let digest = nodes[0].store.root_digest();
    eventually("identical replicas", Duration::from_secs(5), || {
        nodes.iter().all(|n| n.store.root_digest() == digest)
    })
    .await;

    // A command and its reply.
    let reply = nodes[0]
        .view
        .request(
            "node2",
            "describe",
            serde_json::json!({"x": 1}),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(reply["from"], "node1");
    assert_eq!(reply["op"], "describe");
    assert!(
        nodes[0]
            .view
            .request(
                "node9",
                "describe",
                serde_json::Value::Null,
                Duration::from_secs(1)
            )
            .await
            .is_err()
    );

    // Certificates from another CA, expired ones, and none at all are refused.
    let other_ca = pki::generate_ca("other").unwrap();
    let foreign = issue(&other_ca, "node7");
    let error = raw_client(&other_ca, &foreign, true, addr(1))
        .await
        .unwrap_err();
    // Each refusal is the certificate check, not some other failure.
    assert!(error.contains("UnknownIssuer"), "{error}");
    let now = OffsetDateTime::now_utc();
    let expired = pki::issue_node(
        &ca,
        &NodeIdentity::new("node8", Role::Leaf),
        now - time::Duration::days(10),
        now - time::Duration::days(1),
    )
    .unwrap();
    let error = raw_client(&ca, &expired, true, addr(1)).await.unwrap_err();
    assert!(error.contains("certificate expired"), "{error}");
    let error = raw_client(&ca, &issue(&ca, "node9"), false, addr(1))
        .await
        .unwrap_err();
    assert!(error.contains("peer sent no certificates"), "{error}");
    // A node of another mesh running next to ours never joins it.
    let stranger = start(dir.path(), 7, &other_ca, &foreign, seeds.clone());
    stranger
        .store
        .put_local(RecordKind::Switch, "node7", Some("{}".into()))
        .unwrap();

    // Garbage, a lying sender and an oversized message from a valid peer
    // are dropped; the node keeps working.
    let valid = issue(&ca, "node6");
    let connection = raw_client(&ca, &valid, true, addr(1)).await.unwrap();
    let mut garbage = connection.open_uni().await.unwrap();
    garbage.write_all(&[0xff; 100]).await.unwrap();
    garbage.finish().unwrap();
    let liar = Envelope {
        version: metalmesh_inventory::mesh::message::WIRE_VERSION,
        from: Peer {
            name: "node2".into(),
            addr: addr(2),
            bump: 1,
        },
        message: Message::Records(vec![metalmesh_inventory::Record {
            id: metalmesh_inventory::RecordKey::new(RecordKind::Switch, "forged"),
            origin: "node2".into(),
            version: 1,
            value: Some("{}".into()),
            signature: Vec::new(),
        }]),
    };
    let mut lie = connection.open_uni().await.unwrap();
    lie.write_all(&metalmesh_inventory::mesh::message::encode(&liar))
        .await
        .unwrap();
    lie.finish().unwrap();
    let mut huge = connection.open_uni().await.unwrap();
    let _ = huge.write_all(&vec![0u8; 5 * 1024 * 1024]).await;
    let _ = huge.finish();

    nodes[2]
        .store
        .put_local(RecordKind::Port, "node3/swp1", Some("{}".into()))
        .unwrap();
    eventually("a record after the garbage", Duration::from_secs(5), || {
        nodes[0].store.list(Some(RecordKind::Port)).unwrap().len() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in &nodes {
        let names: Vec<String> = node.view.members().into_iter().map(|m| m.name).collect();
        assert!(!names.contains(&"node7".to_string()), "{names:?}");
        let switches = node.store.list(Some(RecordKind::Switch)).unwrap();
        assert_eq!(switches.len(), 3, "{switches:?}");
    }
    assert!(stranger.view.members().is_empty());

    for node in nodes.into_iter().chain([stranger]) {
        node.cancel.cancel();
        node.task.await.unwrap();
    }
}
