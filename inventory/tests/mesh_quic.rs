//! The mesh over real QUIC sockets on loopback: replication between nodes,
//! commands, and refusal of peers without a mesh-CA certificate and of
//! malformed messages.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use metalmesh_inventory::RecordKind;
use metalmesh_inventory::mesh::{Envelope, Message, Peer};
use metalmesh_inventory::pki::{self, NodeIdentity};
use metalmesh_inventory::replica::Replica;
use metalmesh_inventory::trust::Role;
use std::time::Duration;
use support::{Node, addr, eventually, issue, raw_client, start};
use time::OffsetDateTime;

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

    // The gossip simulator charges each message its encoded size plus a
    // flat 60 bytes (`sim::PACKET_OVERHEAD_BYTES`). Checked once against
    // what QUIC really sends: 200 records written on node1 and replicated,
    // node1's message bytes as the simulator would count them against its
    // UDP bytes plus 28 bytes of IPv4 and UDP header per datagram.
    let settle = Duration::from_millis(2500);
    tokio::time::sleep(settle).await;
    let before = nodes[0].view.health();
    for i in 0..200 {
        nodes[0]
            .store
            .put_local(
                RecordKind::Port,
                &format!("node1/swp{i}"),
                Some(format!("{{\"mtu\":{i}}}")),
            )
            .unwrap();
    }
    eventually("200 records everywhere", Duration::from_secs(10), || {
        nodes
            .iter()
            .all(|n| n.store.list(Some(RecordKind::Port)).unwrap().len() == 200)
    })
    .await;
    tokio::time::sleep(settle).await;
    let after = nodes[0].view.health();
    let charged = (after.bytes_out - before.bytes_out)
        + metalmesh_inventory::sim::PACKET_OVERHEAD_BYTES as u64
            * (after.messages_out - before.messages_out);
    let on_wire = after.udp_bytes_out.saturating_sub(before.udp_bytes_out)
        + 28 * after
            .udp_datagrams_out
            .saturating_sub(before.udp_datagrams_out);
    let ratio = on_wire as f64 / charged.max(1) as f64;
    println!(
        "node1 sent {} messages, {charged} bytes as the simulator counts them, {on_wire} on the wire ({ratio:.2}x)",
        after.messages_out - before.messages_out
    );
    assert!(
        after.udp_bytes_out > before.udp_bytes_out && after.messages_out > before.messages_out,
        "no traffic counted: {before:?} -> {after:?}"
    );
    assert!(
        (0.5..=2.0).contains(&ratio),
        "the simulator's byte model is off by {ratio:.2}x against real QUIC ({charged} charged, {on_wire} sent)"
    );

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
    // That was the stranger refusing our node; now our node refusing the
    // stranger, which trusts our CA but presents another CA's certificate.
    let error = raw_client(&ca, &foreign, true, addr(1)).await.unwrap_err();
    assert!(
        error.contains("aborted by peer") && error.contains("UnknownIssuer"),
        "{error}"
    );
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
        nodes[0]
            .store
            .list(Some(RecordKind::Port))
            .unwrap()
            .iter()
            .any(|r| r.id.key == "node3/swp1")
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
