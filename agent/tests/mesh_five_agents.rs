//! The inventory mesh between five leaf agents of the testbed (QUIC with
//! mutual TLS over the FRR fabric): every agent's records reach all others;
//! an agent killed with SIGKILL catches up after restart; two groups cut
//! apart by nftables converge to identical replicas once healed; a node with
//! a certificate from another CA is refused and logged; a node revoked by
//! the operator is cut off by all others within 5 s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use metalmesh_testbed::testing::{
    Guard, agent_on, cli, eventually, ok, run, spawn_detached_in, up,
};

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");
const LEAVES: [u32; 5] = [1, 2, 3, 4, 5];

/// `(kind, key, origin, version, value)` of every record in a leaf's replica.
fn replica(run_dir: &Path, leaf: u32) -> Option<BTreeSet<String>> {
    let out = agent_on(
        run_dir,
        AGENT,
        &format!("leaf{leaf}"),
        &["mesh", "records", "-o", "json"],
    );
    if !out.status.success() {
        return None;
    }
    let records: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).ok()?;
    Some(records.iter().map(|r| r.to_string()).collect())
}

fn members(run_dir: &Path, leaf: u32) -> Vec<String> {
    let out = agent_on(
        run_dir,
        AGENT,
        &format!("leaf{leaf}"),
        &["mesh", "members", "-o", "json"],
    );
    // A failed call is a failure, not "no members": negative checks below
    // would otherwise pass on an agent that does not answer.
    assert!(
        out.status.success(),
        "leaf{leaf}: mesh members: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let value: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("leaf{leaf}: mesh members output: {e}"));
    value["members"]
        .as_array()
        .map(|members| {
            members
                .iter()
                .filter(|m| m["state"] == "alive")
                .map(|m| m["name"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

fn has_port(replica: &BTreeSet<String>, key: &str) -> bool {
    replica
        .iter()
        .any(|r| r.contains(&format!("\"key\":\"{key}\"")) && !r.contains("\"value\":null"))
}

fn all_identical(run_dir: &Path) -> Option<BTreeSet<String>> {
    let first = replica(run_dir, 1)?;
    LEAVES[1..]
        .iter()
        .all(|leaf| replica(run_dir, *leaf).as_ref() == Some(&first))
        .then_some(first)
}

fn add_port(leaf: u32, name: &str) {
    let ns = format!("mm-leaf{leaf}");
    let peer = format!("{name}p");
    let out = run(
        "ip",
        &[
            "-n", &ns, "link", "add", name, "type", "veth", "peer", "name", &peer,
        ],
    );
    ok(&out);
}

/// Drops mesh traffic between this leaf and the given loopbacks.
fn cut(leaf: u32, others: &[u32]) {
    let addresses = others
        .iter()
        .map(|o| format!("10.255.0.{o}"))
        .collect::<Vec<_>>()
        .join(", ");
    let rules = format!(
        "table inet mmcut {{ chain input {{ type filter hook input priority 0; ip saddr {{ {addresses} }} udp dport 7946 drop; }}; \
         chain output {{ type filter hook output priority 0; ip daddr {{ {addresses} }} udp dport 7946 drop; }}; }}"
    );
    let out = run(
        "ip",
        &["netns", "exec", &format!("mm-leaf{leaf}"), "nft", &rules],
    );
    ok(&out);
}

fn heal(leaf: u32) {
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            &format!("mm-leaf{leaf}"),
            "nft",
            "delete table inet mmcut",
        ],
    );
    ok(&out);
}

#[test]
fn five_agents_replicate_recover_and_refuse_strangers() {
    let guard = Guard::new();
    let run_dir = &guard.run_dir;
    let _testbed = up(run_dir, 5, 0, 0);

    // Every agent sees the four others and holds every switch's records.
    assert!(
        eventually(Duration::from_secs(30), || LEAVES
            .iter()
            .all(|leaf| members(run_dir, *leaf).len() == 4)),
        "members: {:?}",
        LEAVES.map(|leaf| members(run_dir, leaf))
    );
    assert!(
        eventually(Duration::from_secs(15), || all_identical(run_dir)
            .is_some_and(|records| {
                LEAVES.iter().all(|leaf| {
                    records
                        .iter()
                        .any(|r| r.contains(&format!("\"key\":\"leaf{leaf}\"")))
                })
            })),
        "replicas differ"
    );

    // SIGKILL one agent; records change elsewhere meanwhile; after restart it
    // holds everything and its own records are still there.
    let out = cli(
        run_dir,
        &["kill", "leaf1", "--daemon", "agent", "--signal", "KILL"],
    );
    ok(&out);
    add_port(2, "mmtest2");
    add_port(3, "mmtest3");
    assert!(eventually(Duration::from_secs(10), || {
        replica(run_dir, 4)
            .is_some_and(|r| has_port(&r, "leaf2/mmtest2") && has_port(&r, "leaf3/mmtest3"))
    }));
    let out = cli(run_dir, &["start", "leaf1", "--daemon", "agent"]);
    ok(&out);
    assert!(
        eventually(Duration::from_secs(20), || all_identical(run_dir)
            .is_some_and(
                |r| has_port(&r, "leaf2/mmtest2") && has_port(&r, "leaf3/mmtest3")
            )),
        "leaf1 did not catch up after its restart"
    );

    // Partition {leaf1, leaf2} from {leaf3, leaf4, leaf5}, change both sides.
    for leaf in [1, 2] {
        cut(leaf, &[3, 4, 5]);
    }
    for leaf in [3, 4, 5] {
        cut(leaf, &[1, 2]);
    }
    assert!(
        eventually(Duration::from_secs(30), || members(run_dir, 1).len() == 1
            && members(run_dir, 4).len() == 2),
        "the partition did not show in membership"
    );
    add_port(1, "mmleft");
    add_port(4, "mmright");
    assert!(eventually(Duration::from_secs(10), || {
        replica(run_dir, 2).is_some_and(|r| has_port(&r, "leaf1/mmleft"))
            && replica(run_dir, 5).is_some_and(|r| has_port(&r, "leaf4/mmright"))
    }));
    rounds_pass(run_dir, &[1, 2, 3, 4, 5], 30);
    assert!(
        !has_port(&replica(run_dir, 1).unwrap(), "leaf4/mmright"),
        "the cut leaked"
    );
    assert!(
        !has_port(&replica(run_dir, 5).unwrap(), "leaf1/mmleft"),
        "the cut leaked"
    );
    for leaf in LEAVES {
        heal(leaf);
    }
    assert!(
        eventually(Duration::from_secs(30), || all_identical(run_dir)
            .is_some_and(
                |r| has_port(&r, "leaf1/mmleft") && has_port(&r, "leaf4/mmright")
            )),
        "replicas differ after the partition healed"
    );
    assert!(
        eventually(Duration::from_secs(30), || LEAVES
            .iter()
            .all(|leaf| members(run_dir, *leaf).len() == 4)),
        "membership did not heal: {:?}",
        LEAVES.map(|leaf| members(run_dir, leaf))
    );

    // A node whose certificate comes from another CA is refused and logged,
    // and nothing of it enters the replicas.
    let rogue = guard.scratch.join("rogue");
    let metalmesh = Path::new(AGENT).with_file_name("metalmesh");
    for args in [
        vec!["ca", "init", "--dir", rogue.to_str().unwrap()],
        vec![
            "ca",
            "issue",
            "--node",
            "rogue",
            "--role",
            "leaf",
            "--ca-dir",
            rogue.to_str().unwrap(),
            "--out",
            rogue.to_str().unwrap(),
        ],
    ] {
        let out = run(metalmesh.to_str().unwrap(), &args);
        ok(&out);
    }
    let config = rogue.join("agent.toml");
    std::fs::write(
        &config,
        format!(
            "state_dir = {state:?}\n[switch]\nname = \"rogue\"\nloopback = \"10.254.0.2\"\nasn = 4200000099\n\
             [lldp]\nenabled = false\n[admin]\nsocket = {socket:?}\n\
             [mesh]\nseeds = [\"10.255.0.1\"]\nca = {ca:?}\ncert = {cert:?}\nkey = {key:?}\n",
            state = rogue.join("state"),
            socket = rogue.join("agent.sock"),
            ca = rogue.join("ca.pem"),
            cert = rogue.join("rogue.pem"),
            key = rogue.join("rogue.key"),
        ),
    )
    .unwrap();
    spawn_detached_in(
        "mm-api",
        &[
            AGENT.as_ref(),
            "run".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
        ],
        &rogue.join("agent.log"),
    );
    let leaf1_log = run_dir.join("nodes/leaf1/agent/agent.log");
    assert!(
        eventually(Duration::from_secs(20), || std::fs::read_to_string(
            &leaf1_log
        )
        .unwrap()
        .lines()
        .any(|l| l.contains("mesh peer refused") && l.contains("10.254.0.2"))),
        "leaf1 did not log the refusal"
    );
    // Refused again and again, while the others keep talking.
    assert!(
        eventually(Duration::from_secs(30), || std::fs::read_to_string(
            &leaf1_log
        )
        .unwrap()
        .lines()
        .filter(|l| l.contains("mesh peer refused") && l.contains("10.254.0.2"))
        .count()
            >= 3),
        "the rogue stopped trying"
    );
    rounds_pass(run_dir, &LEAVES, 20);
    for leaf in LEAVES {
        assert!(!members(run_dir, leaf).contains(&"rogue".to_string()));
        assert!(
            !replica(run_dir, leaf)
                .unwrap()
                .iter()
                .any(|r| r.contains("rogue"))
        );
    }

    // An operator revokes leaf5 and hands the revocation to leaf1: every
    // other agent cuts leaf5 off within 5 s; what it wrote before stays
    // (marked), what it writes after is refused.
    let ca_dir = run_dir.join("mesh-ca");
    let out = run(
        metalmesh.to_str().unwrap(),
        &[
            "ca",
            "revoke",
            "--node",
            "leaf5",
            "--ca-dir",
            ca_dir.to_str().unwrap(),
            "--reason",
            "test",
        ],
    );
    ok(&out);
    let revocation = ca_dir.join("revoked/leaf5.json");
    let started = std::time::Instant::now();
    let out = agent_on(
        run_dir,
        AGENT,
        "leaf1",
        &["mesh", "revoke", revocation.to_str().unwrap()],
    );
    ok(&out);
    let revoked_everywhere = |run_dir: &Path| {
        [1, 2, 3, 4].iter().all(|leaf| {
            !members(run_dir, *leaf).contains(&"leaf5".to_string())
                && health(run_dir, *leaf)["revoked"]
                    .as_array()
                    .is_some_and(|r| r.iter().any(|n| n == "leaf5"))
        })
    };
    assert!(
        eventually(Duration::from_secs(5), || revoked_everywhere(run_dir)),
        "leaf5 not cut off within 5 s: {:?}",
        [1, 2, 3, 4].map(|leaf| members(run_dir, leaf))
    );
    println!("leaf5 cut off everywhere after {:?}", started.elapsed());
    add_port(5, "mmlate");
    rounds_pass(run_dir, &[1, 2, 3, 4], 30);
    for leaf in [1, 2, 3, 4] {
        let records = marked_records(run_dir, leaf);
        let switch5 = records
            .iter()
            .find(|r| r["id"]["kind"] == "switch" && r["id"]["key"] == "leaf5")
            .unwrap_or_else(|| panic!("leaf{leaf} lost leaf5's switch record"));
        assert_eq!(switch5["revoked_origin"], true);
        assert!(
            !records.iter().any(|r| r["id"]["key"] == "leaf5/mmlate"),
            "leaf{leaf} took a record leaf5 wrote after its revocation"
        );
    }
}

/// `mesh members -o json`'s health section of a leaf.
/// Messages a leaf's mesh has sent since it started.
fn messages_out(run_dir: &Path, leaf: u32) -> u64 {
    health(run_dir, leaf)["messages_out"].as_u64().unwrap()
}

/// Waits until each of `leaves` has sent `more` messages since now: gossip
/// and anti-entropy rounds in which anything that could travel would have
/// (a negative check's window, counted instead of slept).
fn rounds_pass(run_dir: &Path, leaves: &[u32], more: u64) {
    let start: Vec<u64> = leaves.iter().map(|l| messages_out(run_dir, *l)).collect();
    assert!(
        eventually(Duration::from_secs(30), || leaves
            .iter()
            .zip(&start)
            .all(|(l, s)| messages_out(run_dir, *l) >= s + more)),
        "the mesh went quiet: {leaves:?} sent fewer than {more} messages"
    );
}

fn health(run_dir: &Path, leaf: u32) -> serde_json::Value {
    let out = agent_on(
        run_dir,
        AGENT,
        &format!("leaf{leaf}"),
        &["mesh", "members", "-o", "json"],
    );
    ok(&out);
    let value: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    value["health"].clone()
}

/// A leaf's records as `mesh records -o json` shows them (with the
/// revoked-origin mark).
fn marked_records(run_dir: &Path, leaf: u32) -> Vec<serde_json::Value> {
    let out = agent_on(
        run_dir,
        AGENT,
        &format!("leaf{leaf}"),
        &["mesh", "records", "-o", "json"],
    );
    ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}
