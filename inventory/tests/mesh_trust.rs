//! Trust inside the mesh, over real QUIC on loopback: a node holding a valid
//! leaf certificate tries to forge other racks' records, API records and
//! signatures, to plant records for a node that lost its database, to take
//! another member's address, and to flood; a revoked node is cut off; a
//! node of a newer build writes a kind the others do not know; a node's
//! certificate is renewed while it runs.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use metalmesh_inventory::mesh::message::{MAX_MESSAGE_BYTES, WIRE_VERSION};
use metalmesh_inventory::mesh::service::CredentialFiles;
use metalmesh_inventory::mesh::{Envelope, Message, Peer};
use metalmesh_inventory::pki::{self, IssuedPem, NodeCredentials};
use metalmesh_inventory::record::{Record, RecordKey};
use metalmesh_inventory::trust::{Role, Signer, Trust};
use metalmesh_inventory::{RecordKind, Store};
use std::net::SocketAddr;
use std::time::Duration;
use support::{
    Node, addr, eventually, issue, issue_as, raw_client, send_raw, start, start_budgeted,
    start_with,
};

/// A node as an attacker runs it: its own valid certificate and key, a raw
/// connection per target, and whatever it chooses to say.
struct Rogue {
    name: String,
    trust: Trust,
    identity: IssuedPem,
}

impl Rogue {
    fn new(ca: &IssuedPem, name: &str, role: Role) -> Rogue {
        let identity = issue_as(ca, name, role);
        let credentials = NodeCredentials::from_pem(&ca.cert, &identity).unwrap();
        Rogue {
            name: name.to_string(),
            trust: Trust::from_credentials(&credentials).unwrap(),
            identity,
        }
    }

    fn record(&self, kind: RecordKind, key: &str, origin: &str, value: &str) -> Record {
        let mut record = Record {
            id: RecordKey::new(kind, key),
            origin: origin.to_string(),
            version: metalmesh_inventory::clock::now_version(),
            value: Some(value.to_string()),
            signature: Vec::new(),
        };
        self.trust.signer.sign(&mut record);
        record
    }

    fn node_record(&self) -> Record {
        let value = serde_json::to_string(&self.trust.node_record).unwrap();
        self.record(RecordKind::Node, &self.name, &self.name, &value)
    }

    /// An envelope from this node as it connects from 127.0.0.1.
    fn envelope(&self, message: Message) -> Envelope {
        Envelope {
            version: WIRE_VERSION,
            from: Peer {
                name: self.name.clone(),
                addr: "127.0.0.1:17946".parse().unwrap(),
                bump: 1,
            },
            message,
        }
    }

    async fn connect(&self, ca: &IssuedPem, target: SocketAddr) -> quinn::Connection {
        raw_client(ca, &self.identity, true, target).await.unwrap()
    }
}

fn mesh(dir: &std::path::Path, ca: &IssuedPem, first: u8, count: u8) -> Vec<Node> {
    let seeds = vec![addr(first)];
    (first..first + count)
        .map(|i| start(dir, i, ca, &issue(ca, &format!("node{i}")), seeds.clone()))
        .collect()
}

async fn all_members(nodes: &[Node]) {
    let others = nodes.len() - 1;
    eventually("every node a member", Duration::from_secs(15), || {
        nodes.iter().all(|n| n.view.members().len() == others)
    })
    .await;
}

fn holds(store: &Store, kind: RecordKind, key: &str) -> bool {
    store
        .get(&RecordKey::new(kind, key))
        .unwrap()
        .is_some_and(|r| r.value.is_some())
}

async fn stop(nodes: Vec<Node>) {
    for node in nodes {
        node.cancel.cancel();
        node.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_records_are_refused_everywhere_and_victims_keep_publishing() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::generate_ca("test").unwrap();
    let nodes = mesh(dir.path(), &ca, 31, 3);
    all_members(&nodes).await;
    let victim = "node32";
    let rogue = Rogue::new(&ca, "node39", Role::Leaf);
    let stranger = Signer::from_seed(&[9; 32]);
    let mut wrong_key = rogue.record(RecordKind::Port, "node39/swp1", "node39", "{}");
    stranger.sign(&mut wrong_key);
    let mut tampered = rogue.record(RecordKind::Port, "node39/swp2", "node39", "{}");
    tampered.value = Some("{\"up\":false}".into());
    let forged = vec![
        // The rogue's node record is genuine: it is a valid leaf.
        rogue.node_record(),
        rogue.record(
            RecordKind::Machine,
            &format!("{victim}/m-1"),
            "node39",
            "{\"routed\":true}",
        ),
        rogue.record(
            RecordKind::Lease,
            &format!("{victim}/aa:bb:cc:00:00:01"),
            "node39",
            "{}",
        ),
        rogue.record(RecordKind::Network, "tenant-1", "node39", "{\"vni\":7}"),
        rogue.record(
            RecordKind::Lease,
            &format!("{victim}/aa:bb:cc:00:00:02"),
            victim,
            "{}",
        ),
        wrong_key,
        tampered,
    ];
    // Connections are kept open until the end: closing one drops what it
    // has not delivered yet.
    let mut open = Vec::new();
    for target in 31..=33 {
        let connection = rogue.connect(&ca, addr(target)).await;
        open.push(connection.clone());
        send_raw(
            &connection,
            &rogue.envelope(Message::Records(forged.clone())),
        )
        .await;
    }
    eventually(
        "every node counted every forgery",
        Duration::from_secs(5),
        || {
            nodes.iter().all(|node| {
                let c = node.store.trust_counters().unwrap();
                c.wrong_writer >= 3 && c.unknown_signer >= 2 && c.bad_signature >= 1
            })
        },
    )
    .await;
    for node in &nodes {
        let victim_keys = [
            (RecordKind::Machine, format!("{victim}/m-1")),
            (RecordKind::Lease, format!("{victim}/aa:bb:cc:00:00:01")),
            (RecordKind::Lease, format!("{victim}/aa:bb:cc:00:00:02")),
        ];
        for (kind, key) in &victim_keys {
            assert!(!holds(&node.store, *kind, key), "{kind}/{key} was stored");
        }
        assert!(!holds(&node.store, RecordKind::Network, "tenant-1"));
        assert!(!holds(&node.store, RecordKind::Port, "node39/swp1"));
        assert!(holds(&node.store, RecordKind::Node, "node39"));
    }
    // The victim writes the very keys the rogue tried to squat, and they
    // reach everyone.
    let victim_store = &nodes[1].store;
    victim_store
        .put_local(
            RecordKind::Lease,
            &format!("{victim}/aa:bb:cc:00:00:01"),
            Some("{}".into()),
        )
        .unwrap();
    victim_store
        .put_local(
            RecordKind::Machine,
            &format!("{victim}/m-1"),
            Some("{}".into()),
        )
        .unwrap();
    eventually(
        "the victim's records everywhere",
        Duration::from_secs(5),
        || {
            nodes.iter().all(|n| {
                holds(
                    &n.store,
                    RecordKind::Lease,
                    &format!("{victim}/aa:bb:cc:00:00:01"),
                ) && holds(&n.store, RecordKind::Machine, &format!("{victim}/m-1"))
            })
        },
    )
    .await;
    // What was refused shows in the mesh's health.
    let health = nodes[0].view.health();
    assert!(health.records.unwrap().refused() >= 6, "{health:?}");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_that_lost_its_database_gets_back_its_own_records_only() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::generate_ca("test").unwrap();
    let seeds = vec![addr(41)];
    let identities: Vec<IssuedPem> = (41..=43).map(|i| issue(&ca, &format!("node{i}"))).collect();
    let mut nodes: Vec<Node> = (41..=43)
        .zip(&identities)
        .map(|(i, identity)| start(dir.path(), i, &ca, identity, seeds.clone()))
        .collect();
    all_members(&nodes).await;
    nodes[1]
        .store
        .put_local(
            RecordKind::Port,
            "node42/swp1",
            Some("{\"mtu\":9000}".into()),
        )
        .unwrap();
    eventually("the port everywhere", Duration::from_secs(5), || {
        nodes
            .iter()
            .all(|n| holds(&n.store, RecordKind::Port, "node42/swp1"))
    })
    .await;

    // node42 loses its disk and comes back empty.
    let lost = nodes.remove(1);
    lost.cancel.cancel();
    lost.task.await.unwrap();
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(dir.path().join(format!("node42.db{suffix}")));
    }
    let back = start(dir.path(), 42, &ca, &identities[1], seeds.clone());
    // A valid leaf offers it a record "of its own" that it never wrote.
    let rogue = Rogue::new(&ca, "node49", Role::Leaf);
    let planted = rogue.record(
        RecordKind::Machine,
        "node42/m-9",
        "node42",
        "{\"routed\":true}",
    );
    let connection = rogue.connect(&ca, addr(42)).await;
    send_raw(
        &connection,
        &rogue.envelope(Message::SyncRecords(vec![rogue.node_record(), planted])),
    )
    .await;
    eventually("its own port back", Duration::from_secs(10), || {
        holds(&back.store, RecordKind::Port, "node42/swp1")
    })
    .await;
    eventually("the planted record refused", Duration::from_secs(5), || {
        back.store.trust_counters().unwrap().unknown_signer >= 1
    })
    .await;
    assert!(!holds(&back.store, RecordKind::Machine, "node42/m-9"));
    // And it writes on past what it got back.
    let newer = back
        .store
        .put_local(
            RecordKind::Port,
            "node42/swp1",
            Some("{\"mtu\":1500}".into()),
        )
        .unwrap()
        .unwrap();
    eventually("the new write everywhere", Duration::from_secs(5), || {
        nodes.iter().all(|n| {
            n.store
                .get(&newer.id)
                .unwrap()
                .is_some_and(|r| r.version == newer.version)
        })
    })
    .await;
    nodes.push(back);
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_claimed_by_another_member_is_not_taken() {
    use foca::{Codec as _, PostcardCodec};
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::generate_ca("test").unwrap();
    let nodes = mesh(dir.path(), &ca, 51, 3);
    all_members(&nodes).await;
    let rogue = Rogue::new(&ca, "node59", Role::Leaf);
    // SWIM announcements from the rogue, advertising node52's address with
    // a bump that would win any conflict.
    let mut bump = u64::MAX / 2;
    let mut open = Vec::new();
    for target in [51u8, 53] {
        let connection = rogue.connect(&ca, addr(target)).await;
        open.push(connection.clone());
        for _ in 0..5 {
            bump += 1;
            let me = Peer {
                name: "node59".into(),
                addr: addr(52),
                bump,
            };
            let header = foca::Header {
                src: me.clone(),
                src_incarnation: 0,
                dst: Peer {
                    name: format!("node{target}"),
                    addr: addr(target),
                    bump: 0,
                },
                message: foca::Message::Announce,
            };
            let mut bytes = Vec::new();
            PostcardCodec.encode_header(&header, &mut bytes).unwrap();
            let envelope = Envelope {
                version: WIRE_VERSION,
                from: me,
                message: Message::Swim(bytes),
            };
            send_raw(&connection, &envelope).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    for node in [&nodes[0], &nodes[2]] {
        let members = node.view.members();
        let holder = members.iter().find(|m| m.addr == addr(52)).unwrap();
        assert_eq!(holder.name, "node52", "{members:?}");
        assert_eq!(holder.state, "alive", "{members:?}");
        assert!(!members.iter().any(|m| m.name == "node59"), "{members:?}");
        let health = node.view.health();
        assert!(health.peers["node59"].impersonation >= 5, "{health:?}");
    }
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_peer_stays_within_its_budget_while_others_converge() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::generate_ca("test").unwrap();
    // The flooded node holds one largest message per peer at a time.
    let budget = MAX_MESSAGE_BYTES;
    let seeds = vec![addr(61)];
    let credentials = NodeCredentials::from_pem(&ca.cert, &issue(&ca, "node61")).unwrap();
    let mut nodes = vec![start_budgeted(
        dir.path(),
        61,
        credentials,
        seeds.clone(),
        None,
        budget,
    )];
    for i in 62..=63 {
        nodes.push(start(
            dir.path(),
            i,
            &ca,
            &issue(&ca, &format!("node{i}")),
            seeds.clone(),
        ));
    }
    all_members(&nodes).await;
    let rogue = Rogue::new(&ca, "node69", Role::Leaf);
    // Messages just under the size limit, full of records every node must
    // decode and check (and refuse: the rogue may not write them).
    let value = "x".repeat(60 * 1024);
    let records: Vec<Record> = (0..60)
        .map(|i| rogue.record(RecordKind::Lease, &format!("node62/{i}"), "node69", &value))
        .collect();
    let envelope = rogue.envelope(Message::Records(records));
    let bytes = metalmesh_inventory::mesh::message::encode(&envelope);
    assert!(bytes.len() < MAX_MESSAGE_BYTES && bytes.len() > 3 * 1024 * 1024);
    // Four connections are accepted, more are refused.
    let mut connections = Vec::new();
    let mut refused = 0;
    for _ in 0..6 {
        match raw_client(&ca, &rogue.identity, true, addr(61)).await {
            Ok(connection) => connections.push(connection),
            Err(_) => refused += 1,
        }
    }
    assert_eq!(connections.len(), 4, "{refused} refused");
    send_raw(
        &connections[0],
        &rogue.envelope(Message::Records(vec![rogue.node_record()])),
    )
    .await;
    let flood = {
        let connections = connections.clone();
        tokio::spawn(async move {
            let deadline = tokio::time::Instant::now() + Duration::from_secs(8);
            let mut sent = 0u32;
            // One message per connection at once, until the deadline or
            // 200 messages.
            while tokio::time::Instant::now() < deadline && sent < 200 {
                let mut batch = Vec::new();
                for connection in &connections {
                    let connection = connection.clone();
                    let bytes = bytes.clone();
                    batch.push(tokio::spawn(async move {
                        let Ok(mut stream) = connection.open_uni().await else {
                            return;
                        };
                        let _ = stream.write_all(&bytes).await;
                        let _ = stream.finish();
                    }));
                }
                for task in batch {
                    let _ = task.await;
                }
                sent += 4;
            }
            sent
        })
    };
    // Meanwhile the others' writes keep reaching the flooded node.
    for i in 0..5 {
        let key = format!("node63/swp{i}");
        nodes[2]
            .store
            .put_local(RecordKind::Port, &key, Some("{}".into()))
            .unwrap();
        eventually("a port through the flood", Duration::from_secs(5), || {
            holds(&nodes[0].store, RecordKind::Port, &key)
        })
        .await;
    }
    let sent = flood.await.unwrap();
    assert!(sent >= 8, "the flood did not run");
    let counters = nodes[0].view.health().peers["node69"];
    println!("flood of {sent} messages: {counters:?}");
    assert!(counters.messages > 0, "{counters:?}");
    assert!(counters.connections_refused >= 2, "{counters:?}");
    assert!(
        counters.throttled > 0,
        "the budget never held the flood back: {counters:?}"
    );
    assert!(
        counters.queued_bytes_high_water as usize <= budget,
        "{counters:?}"
    );
    assert!(nodes[0].store.trust_counters().unwrap().wrong_writer > 0);
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_only_a_newer_node_knows_is_stored_and_relayed() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::generate_ca("test").unwrap();
    let mut nodes = mesh(dir.path(), &ca, 71, 3);
    all_members(&nodes).await;
    // node72 runs a build with a "flavor" kind; this build does not know it.
    let flavor = RecordKind::from_name("flavor").unwrap();
    assert!(!flavor.is_known());
    nodes[1]
        .store
        .put_local(flavor, "node72/large", Some("{\"cpus\":64}".into()))
        .unwrap();
    nodes[1]
        .store
        .put_local(RecordKind::Port, "node72/swp1", Some("{}".into()))
        .unwrap();
    eventually(
        "both records on the older nodes",
        Duration::from_secs(5),
        || {
            [&nodes[0], &nodes[2]].iter().all(|n| {
                holds(&n.store, flavor, "node72/large")
                    && holds(&n.store, RecordKind::Port, "node72/swp1")
            })
        },
    )
    .await;
    assert!(nodes[0].store.trust_counters().unwrap().opaque_stored >= 1);
    // With the newer node gone, a node joining later still gets the record
    // from the older ones.
    let newer = nodes.remove(1);
    newer.cancel.cancel();
    newer.task.await.unwrap();
    let late = start(dir.path(), 74, &ca, &issue(&ca, "node74"), vec![addr(71)]);
    eventually("relayed to a late joiner", Duration::from_secs(10), || {
        holds(&late.store, flavor, "node72/large")
    })
    .await;
    let digest = nodes[0].store.list(None).unwrap().len();
    assert!(digest > 0);
    nodes.push(late);
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revoked_node_is_cut_off_and_its_old_records_stay() {
    let dir = tempfile::tempdir().unwrap();
    let ca_dir = dir.path().join("ca");
    pki::init_ca_files(&ca_dir, "test").unwrap();
    let ca = IssuedPem {
        cert: std::fs::read_to_string(ca_dir.join("ca.pem")).unwrap(),
        key: std::fs::read_to_string(ca_dir.join("ca.key")).unwrap(),
    };
    let nodes = mesh(dir.path(), &ca, 81, 3);
    all_members(&nodes).await;
    nodes[2]
        .store
        .put_local(RecordKind::Port, "node83/swp1", Some("{}".into()))
        .unwrap();
    eventually("node83's port everywhere", Duration::from_secs(5), || {
        nodes
            .iter()
            .all(|n| holds(&n.store, RecordKind::Port, "node83/swp1"))
    })
    .await;
    let (_, revocation) = pki::revoke_node(&ca_dir, "node83", "key stolen").unwrap();
    // A revocation not signed by the CA is refused.
    let rogue = Rogue::new(&ca, "node89", Role::Leaf);
    let fake = rogue.record(
        RecordKind::Revocation,
        "node81",
        metalmesh_inventory::trust::CA_ORIGIN,
        "{\"node\":\"node81\"}",
    );
    assert!(nodes[0].store.import(vec![fake]).unwrap().is_empty());
    let started = std::time::Instant::now();
    assert_eq!(nodes[0].store.import(vec![revocation]).unwrap().len(), 1);
    eventually("node83 cut off everywhere", Duration::from_secs(5), || {
        [&nodes[0], &nodes[1]].iter().all(|n| {
            n.store.revoked().contains_key("node83")
                && !n
                    .view
                    .members()
                    .iter()
                    .any(|m| m.name == "node83" && m.state == "alive")
        })
    })
    .await;
    let cut_off = started.elapsed();
    // What it writes now stays with it; what it wrote before stays with all.
    nodes[2]
        .store
        .put_local(RecordKind::Port, "node83/swp2", Some("{}".into()))
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    for node in &nodes[..2] {
        assert!(holds(&node.store, RecordKind::Port, "node83/swp1"));
        assert!(!holds(&node.store, RecordKind::Port, "node83/swp2"));
    }
    println!("revoked node cut off after {cut_off:?}");
    stop(nodes).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewed_certificate_is_used_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let ca = pki::generate_ca("test").unwrap();
    let files_dir = dir.path().join("node93");
    std::fs::create_dir_all(&files_dir).unwrap();
    let files = CredentialFiles {
        ca: files_dir.join("ca.pem"),
        cert: files_dir.join("node.pem"),
        key: files_dir.join("node.key"),
    };
    let write = |identity: &IssuedPem| {
        // Key first, then certificate, each replaced whole.
        for (path, text) in [(&files.key, &identity.key), (&files.cert, &identity.cert)] {
            let staged = path.with_extension("new");
            std::fs::write(&staged, text).unwrap();
            std::fs::rename(&staged, path).unwrap();
        }
    };
    std::fs::write(&files.ca, &ca.cert).unwrap();
    let first = issue(&ca, "node93");
    write(&first);
    let mut nodes = mesh(dir.path(), &ca, 91, 2);
    let credentials = NodeCredentials::load(&files.ca, &files.cert, &files.key).unwrap();
    nodes.push(start_with(
        dir.path(),
        93,
        credentials,
        vec![addr(91)],
        Some(files.clone()),
    ));
    all_members(&nodes).await;
    nodes[2]
        .store
        .put_local(RecordKind::Port, "node93/swp1", Some("{}".into()))
        .unwrap();
    eventually("the port everywhere", Duration::from_secs(5), || {
        nodes
            .iter()
            .all(|n| holds(&n.store, RecordKind::Port, "node93/swp1"))
    })
    .await;
    let old_key = nodes[0].store.known_node("node93").unwrap().keys;

    let renewed = issue(&ca, "node93");
    // A modification time the watcher can tell apart on coarse clocks.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    write(&renewed);
    eventually(
        "the new key known to the others",
        Duration::from_secs(10),
        || {
            nodes[0]
                .store
                .known_node("node93")
                .is_some_and(|node| node.keys != old_key)
        },
    )
    .await;
    nodes[2]
        .store
        .put_local(RecordKind::Port, "node93/swp2", Some("{}".into()))
        .unwrap();
    eventually(
        "writes under the new key accepted",
        Duration::from_secs(5),
        || {
            nodes[..2]
                .iter()
                .all(|n| holds(&n.store, RecordKind::Port, "node93/swp2"))
        },
    )
    .await;
    // The old record was rewritten under the new key, so it verifies.
    let swp1 = nodes[0]
        .store
        .get(&RecordKey::new(RecordKind::Port, "node93/swp1"))
        .unwrap()
        .unwrap();
    let known = nodes[0].store.known_node("node93").unwrap();
    eventually("old records signed anew", Duration::from_secs(5), || {
        nodes[0]
            .store
            .get(&swp1.id)
            .unwrap()
            .is_some_and(|r| known.keys.iter().any(|k| k.verify(&r)))
    })
    .await;
    // A broken file is refused and the running credentials stay.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    std::fs::write(&files.cert, "not a certificate").unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    nodes[2]
        .store
        .put_local(RecordKind::Port, "node93/swp3", Some("{}".into()))
        .unwrap();
    eventually("still working", Duration::from_secs(5), || {
        holds(&nodes[0].store, RecordKind::Port, "node93/swp3")
    })
    .await;
    stop(nodes).await;
}
