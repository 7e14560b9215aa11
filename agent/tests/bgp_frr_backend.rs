//! `[bgp] backend = "frr"` against a real FRR: leaf2's zebra and bgpd are
//! started by the testbed with nothing of BGP configured, and its agent
//! writes the fabric sessions, the loopback and each tenant into FRR
//! through vtysh. Sessions to both spines come up and the loopbacks route;
//! a tenant VRF and a machine /32 added and removed change FRR's running
//! configuration by exactly their lines, with no session reset; FRR
//! refusing a command and bgpd stopped show in `status`, are retried, and
//! disturb nothing else.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use metalmesh_testbed::testing::{Guard, agent_on, cli, eventually, in_netns, ok};
use metalmesh_testbed::{Overrides, Quiet, Testbed, Topology};

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");
const ASN: &str = "4200000002";

fn vtysh(run_dir: &Path, command: &str) -> String {
    let out = cli(run_dir, &["exec", "leaf2", "--", "vtysh", "-c", command]);
    ok(&out)
}

/// Configuration commands typed by an operator on leaf2's FRR.
fn by_hand(run_dir: &Path, commands: &[&str]) {
    let mut args = vec!["exec", "leaf2", "--", "vtysh", "-c", "configure terminal"];
    for command in commands {
        args.extend(["-c", command]);
    }
    ok(&cli(run_dir, &args));
}

/// FRR's running configuration as `context / … / line` strings: every
/// line with the contexts it sits in (FRR indents one space per level).
fn running(run_dir: &Path) -> BTreeSet<String> {
    let text = vtysh(run_dir, "show running-config");
    let mut path: Vec<(usize, String)> = Vec::new();
    let mut lines = BTreeSet::new();
    for raw in text.lines() {
        let line = raw.trim();
        let depth = raw.len() - raw.trim_start().len();
        if line.is_empty() || line == "!" || line == "end" || line.starts_with("exit") {
            continue;
        }
        while path.last().is_some_and(|(d, _)| *d >= depth) {
            path.pop();
        }
        let mut full: Vec<&str> = path.iter().map(|(_, t)| t.as_str()).collect();
        full.push(line);
        lines.insert(full.join(" / "));
        path.push((depth, line.to_string()));
    }
    lines
}

/// What changed between two configurations: `+ line` and `- line`.
fn changes(before: &BTreeSet<String>, after: &BTreeSet<String>) -> BTreeSet<String> {
    after
        .difference(before)
        .map(|l| format!("+ {l}"))
        .chain(before.difference(after).map(|l| format!("- {l}")))
        .collect()
}

fn agent_json(run_dir: &Path, args: &[&str]) -> serde_json::Value {
    let out = agent_on(run_dir, AGENT, "leaf2", args);
    serde_json::from_slice(ok(&out).as_bytes()).unwrap()
}

fn frr_status(run_dir: &Path) -> serde_json::Value {
    agent_json(run_dir, &["status", "-o", "json"])["frr"].clone()
}

/// Waits until the agent has applied `applies` passes and FRR is in sync.
fn synced_after(run_dir: &Path, applies: u64) -> bool {
    eventually(Duration::from_secs(20), || {
        let status = frr_status(run_dir);
        status["in_sync"] == true && status["applies"].as_u64() >= Some(applies)
    })
}

fn apply(run_dir: &Path, scratch: &Path, intents: &str) {
    let file = scratch.join("intents.toml");
    std::fs::write(&file, intents).unwrap();
    let out = agent_on(
        run_dir,
        AGENT,
        "leaf2",
        &["dataplane", "apply", file.to_str().unwrap()],
    );
    ok(&out);
}

fn tenant(vni: u32, table: u32, ports: &[(&str, &str)]) -> String {
    let mut text = format!(
        "[[vrf]]\nname = \"t{vni}\"\nvni = {vni}\ntable = {table}\nprefixes = [\"10.{}.0.0/16\"]\n",
        vni % 200
    );
    for (port, address) in ports {
        text.push_str(&format!(
            "[[vrf.port]]\nname = \"{port}\"\naddresses = [\"{address}\"]\n"
        ));
    }
    text
}

/// Per spine session: (times established, times dropped).
fn session_counts(run_dir: &Path) -> Vec<(String, u64, u64)> {
    let json: serde_json::Value =
        serde_json::from_str(&vtysh(run_dir, "show bgp neighbors json")).unwrap();
    ["spine1", "spine2"]
        .iter()
        .map(|spine| {
            let peer = &json[*spine];
            (
                spine.to_string(),
                peer["connectionsEstablished"].as_u64().unwrap_or(0),
                peer["connectionsDropped"].as_u64().unwrap_or(0),
            )
        })
        .collect()
}

fn adjacency_changes(run_dir: &Path) -> usize {
    std::fs::read_to_string(run_dir.join("nodes/leaf2/frr/bgpd.log"))
        .unwrap_or_default()
        .lines()
        .filter(|l| l.contains("ADJCHANGE"))
        .count()
}

#[test]
fn the_agent_configures_the_leafs_frr_line_by_line() {
    let guard = Guard::new();
    let run_dir = &guard.run_dir;
    let file = guard.scratch.join("topology.toml");
    std::fs::write(
        &file,
        "racks = 2\nmachines_per_rack = 2\n[leaves.leaf2]\nbgp = \"frr\"\n",
    )
    .unwrap();
    let topology = Topology::load(Some(&file), &Overrides::default()).unwrap();
    let testbed = Testbed::up(run_dir, &topology, &mut Quiet).unwrap();
    testbed
        .wait_converged(Duration::from_secs(90), &mut Quiet)
        .unwrap();

    // The testbed gave FRR no BGP; the agent did.
    let bgpd_conf = std::fs::read_to_string(run_dir.join("nodes/leaf2/frr/bgpd.conf")).unwrap();
    assert!(!bgpd_conf.contains("router bgp"), "{bgpd_conf}");
    let base = running(run_dir);
    for line in [
        format!("router bgp {ASN} / bgp router-id 10.255.0.2"),
        format!("router bgp {ASN} / neighbor spine1 interface peer-group mm-fabric"),
        format!("router bgp {ASN} / neighbor spine2 interface peer-group mm-fabric"),
        format!("router bgp {ASN} / address-family ipv4 unicast / network 10.255.0.2/32"),
        format!("router bgp {ASN} / address-family l2vpn evpn / advertise-all-vni"),
    ] {
        assert!(base.contains(&line), "missing {line:?} in {base:#?}");
    }
    let status = testbed.status();
    for session in &status.node("leaf2").unwrap().bgp {
        assert_eq!(session.state, "Established", "{session:?}");
    }
    // `bgp summary` works on this backend too.
    let summary = agent_json(run_dir, &["bgp", "summary", "-o", "json"]);
    let peers = summary["peers"].as_array().unwrap();
    assert_eq!(peers.len(), 2, "{summary}");
    assert!(
        peers.iter().all(|p| p["state"] == "Established"),
        "{summary}"
    );
    // The sessions FRR reports reach the mesh: leaf1 holds leaf2's record
    // with them (what the API node and the web view show).
    assert!(
        eventually(Duration::from_secs(20), || {
            let out = agent_on(
                run_dir,
                AGENT,
                "leaf1",
                &["mesh", "records", "--kind", "switch", "-o", "json"],
            );
            let records: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or_default();
            records.as_array().into_iter().flatten().any(|record| {
                record["id"]["key"] == "leaf2"
                    && record["value"].as_str().is_some_and(|value| {
                        let switch: serde_json::Value =
                            serde_json::from_str(value).unwrap_or_default();
                        switch["bgp_sessions"].as_array().is_some_and(|sessions| {
                            sessions.len() == 2
                                && sessions.iter().all(|s| s["state"] == "Established")
                        })
                    })
            })
        }),
        "leaf2's sessions did not reach the mesh"
    );
    // The loopbacks route both ways over the fabric FRR was told about.
    assert!(eventually(Duration::from_secs(20), || {
        in_netns("mm-leaf1", &["ip", "route", "show", "10.255.0.2"]).contains("via")
            && in_netns("mm-leaf2", &["ip", "route", "show", "10.255.0.1"]).contains("via")
    }));
    let pinged = in_netns(
        "mm-leaf2",
        &["ping", "-c1", "-W2", "-I", "10.255.0.2", "10.255.0.1"],
    );
    assert!(pinged.contains("1 received"), "{pinged}");

    let sessions = session_counts(run_dir);
    let adjacencies = adjacency_changes(run_dir);
    let applies = frr_status(run_dir)["applies"].as_u64().unwrap();

    // A tenant VRF: exactly its lines.
    apply(
        run_dir,
        &guard.scratch,
        &tenant(10001, 1001, &[("m2-1", "10.1.0.21")]),
    );
    assert!(
        synced_after(run_dir, applies + 1),
        "{}",
        frr_status(run_dir)
    );
    let with_vrf = running(run_dir);
    let vrf = format!("router bgp {ASN} vrf mm-vrf10001");
    assert_eq!(
        changes(&base, &with_vrf),
        BTreeSet::from([
            "+ vrf mm-vrf10001".to_string(),
            "+ vrf mm-vrf10001 / vni 10001".to_string(),
            format!("+ {vrf}"),
            format!("+ {vrf} / bgp router-id 10.255.0.2"),
            format!("+ {vrf} / address-family ipv4 unicast"),
            format!("+ {vrf} / address-family ipv4 unicast / network 10.1.0.21/32"),
            format!("+ {vrf} / address-family l2vpn evpn"),
            format!("+ {vrf} / address-family l2vpn evpn / advertise ipv4 unicast"),
        ])
    );

    // A machine added, then removed: one line each way.
    apply(
        run_dir,
        &guard.scratch,
        &tenant(10001, 1001, &[("m2-1", "10.1.0.21"), ("m2-2", "10.1.0.22")]),
    );
    assert!(synced_after(run_dir, applies + 2));
    let with_machine = running(run_dir);
    assert_eq!(
        changes(&with_vrf, &with_machine),
        BTreeSet::from([format!(
            "+ {vrf} / address-family ipv4 unicast / network 10.1.0.22/32"
        )])
    );
    apply(
        run_dir,
        &guard.scratch,
        &tenant(10001, 1001, &[("m2-1", "10.1.0.21")]),
    );
    assert!(synced_after(run_dir, applies + 3));
    assert_eq!(changes(&with_vrf, &running(run_dir)), BTreeSet::new());

    // The VRF removed: FRR is back where it was.
    apply(run_dir, &guard.scratch, "");
    assert!(synced_after(run_dir, applies + 4));
    assert_eq!(changes(&base, &running(run_dir)), BTreeSet::new());

    // None of that reset a session: the counts from before the tenant.
    assert_eq!(session_counts(run_dir), sessions, "sessions were reset");
    assert_eq!(
        adjacency_changes(run_dir),
        adjacencies,
        "bgpd logged adjacency changes"
    );

    // A line removed by hand comes back at the next pass.
    let router = format!("router bgp {ASN}");
    by_hand(
        run_dir,
        &[
            &router,
            "address-family ipv4 unicast",
            "no network 10.255.0.2/32",
        ],
    );
    assert!(
        eventually(Duration::from_secs(25), || changes(
            &base,
            &running(run_dir)
        )
        .is_empty()),
        "{:?}",
        changes(&base, &running(run_dir))
    );

    // FRR refuses a command: an operator's instance holds the VRF under
    // another AS. The error shows, the other tenant is still applied, and
    // once the operator's instance is gone the agent's goes in.
    by_hand(run_dir, &["router bgp 65099 vrf mm-vrf10003"]);
    let both = format!(
        "{}{}",
        tenant(10001, 1001, &[("m2-1", "10.1.0.21")]),
        tenant(10003, 1003, &[("m2-2", "10.3.0.22")])
    );
    apply(run_dir, &guard.scratch, &both);
    assert!(
        eventually(Duration::from_secs(20), || {
            frr_status(run_dir)["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("mm-vrf10003") && e.contains("65099"))
        }),
        "{}",
        frr_status(run_dir)
    );
    let table = String::from_utf8(agent_on(run_dir, AGENT, "leaf2", &["status"]).stdout).unwrap();
    assert!(table.contains("NOT IN SYNC"), "{table}");
    assert!(running(run_dir).contains(&format!(
        "{vrf} / address-family ipv4 unicast / network 10.1.0.21/32"
    )));
    let diff = ok(&agent_on(run_dir, AGENT, "leaf2", &["dataplane", "diff"]));
    assert!(
        diff.contains("in sync"),
        "the dataplane was disturbed: {diff}"
    );
    by_hand(run_dir, &["no router bgp 65099 vrf mm-vrf10003"]);
    assert!(
        eventually(Duration::from_secs(45), || {
            let status = frr_status(run_dir);
            status["in_sync"] == true && status["last_error"].is_null()
        }),
        "{}",
        frr_status(run_dir)
    );
    assert!(running(run_dir).contains(&format!(
        "router bgp {ASN} vrf mm-vrf10003 / address-family ipv4 unicast / network 10.3.0.22/32"
    )));

    // bgpd stopped: a clear error, retried; restarted empty, it gets
    // everything again and the sessions come back.
    ok(&cli(run_dir, &["kill", "leaf2", "--daemon", "bgpd"]));
    assert!(
        eventually(Duration::from_secs(20), || {
            frr_status(run_dir)["last_error"]
                .as_str()
                .is_some_and(|e| e.contains("not running") || e.contains("does not answer"))
        }),
        "{}",
        frr_status(run_dir)
    );
    let summary = agent_on(run_dir, AGENT, "leaf2", &["bgp", "summary"]);
    assert!(!summary.status.success());
    assert!(
        String::from_utf8_lossy(&summary.stderr).contains("not running"),
        "{}",
        String::from_utf8_lossy(&summary.stderr)
    );
    ok(&cli(run_dir, &["start", "leaf2", "--daemon", "bgpd"]));
    assert!(
        eventually(Duration::from_secs(60), || {
            let status = frr_status(run_dir);
            status["in_sync"] == true
                && running(run_dir).contains(&format!(
                    "router bgp {ASN} vrf mm-vrf10003 / address-family ipv4 unicast / network 10.3.0.22/32"
                ))
        }),
        "{}",
        frr_status(run_dir)
    );
    assert!(eventually(Duration::from_secs(30), || {
        session_counts(run_dir)
            .iter()
            .all(|(_, established, _)| *established >= 1)
            && testbed
                .status()
                .node("leaf2")
                .unwrap()
                .bgp
                .iter()
                .all(|s| s.state == "Established")
    }));
}
