//! The fabric with real FRR: BGP unnumbered converges, loopbacks are
//! reachable through the spines, nodes can be killed and restarted, and
//! `down` leaves nothing behind.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use metalmesh_testbed::testing::{
    Guard, assert_nothing_left, cli, eventually, mm_namespaces, stderr,
};
use metalmesh_testbed::{Overrides, Quiet, Role, Testbed, Topology};

fn ping(testbed: &Testbed, node: &str, source: &str, target: &str) -> bool {
    let argv: Vec<String> = ["ping", "-c1", "-W1", "-I", source, target]
        .iter()
        .map(|s| s.to_string())
        .collect();
    testbed
        .exec_command(node, &argv)
        .unwrap()
        .output()
        .unwrap()
        .status
        .success()
}

#[test]
fn two_racks_converge_route_and_come_down_clean() {
    let guard = Guard::new();
    let topology = Topology::load(
        None,
        &Overrides {
            racks: Some(2),
            ..Overrides::default()
        },
    )
    .unwrap();
    let testbed = Testbed::up(&guard.run_dir, &topology, &mut Quiet).unwrap();
    testbed
        .wait_converged(Duration::from_secs(60), &mut Quiet)
        .unwrap();

    // Every leaf–spine session, seen from both ends, is Established.
    let status = testbed.status();
    let leaf_spine: Vec<_> = status
        .nodes
        .iter()
        .filter(|n| n.role == Role::Leaf)
        .flat_map(|n| n.bgp.iter().map(move |s| (n.name.clone(), s.clone())))
        .collect();
    assert_eq!(leaf_spine.len(), 4, "{leaf_spine:?}");
    assert!(leaf_spine.iter().all(|(_, s)| s.state == "Established"));
    assert!(
        leaf_spine
            .iter()
            .all(|(_, s)| s.remote_as == Some(4_210_000_000))
    );
    for spine in ["spine1", "spine2"] {
        let node = status.node(spine).unwrap();
        for leaf in ["leaf1", "leaf2"] {
            let session = node.bgp.iter().find(|s| s.peer == leaf).unwrap();
            assert_eq!(session.state, "Established", "{spine}–{leaf}");
        }
    }

    // The JSON status has the documented shape.
    let json = cli(&guard.run_dir, &["status", "-o", "json"]);
    assert!(json.status.success(), "{}", stderr(&json));
    let value: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    let leaf1 = value["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "leaf1")
        .unwrap();
    assert_eq!(leaf1["role"], "leaf");
    assert_eq!(leaf1["namespace"], "mm-leaf1");
    assert_eq!(leaf1["loopback"], "10.255.0.1");
    assert_eq!(leaf1["asn"], 4_200_000_001u64);
    assert_eq!(leaf1["bgp"][0]["state"], "Established");
    assert!(leaf1["bgp"][0]["peer"].is_string());
    assert!(value["machines"].is_array());

    // leaf1's loopback reaches leaf2's through the spines (IPv4 over IPv6 next hops).
    assert!(
        eventually(Duration::from_secs(15), || ping(
            &testbed,
            "leaf1",
            "10.255.0.1",
            "10.255.0.2"
        )),
        "leaf1 loopback cannot reach leaf2 loopback"
    );
    let routes = testbed
        .exec_command(
            "leaf1",
            &[
                "ip".into(),
                "route".into(),
                "show".into(),
                "10.255.0.2".into(),
            ],
        )
        .unwrap()
        .output()
        .unwrap();
    let routes = String::from_utf8_lossy(&routes.stdout);
    assert!(
        routes.contains("proto bgp") && routes.contains("inet6 fe80::"),
        "{routes}"
    );
    // The API node reaches the leaves through the exit router.
    assert!(eventually(Duration::from_secs(15), || ping(
        &testbed,
        "api",
        "10.254.0.2",
        "10.255.0.1"
    )));

    // vtysh through exec reaches the node's own FRR.
    let vtysh = cli(
        &guard.run_dir,
        &["exec", "spine1", "--", "vtysh", "-c", "show bgp summary"],
    );
    assert!(vtysh.status.success(), "{}", stderr(&vtysh));
    assert!(String::from_utf8_lossy(&vtysh.stdout).contains("4210000000"));

    // A second `up` is refused and changes nothing.
    let again = cli(&guard.run_dir, &["up", "--racks", "2"]);
    assert!(!again.status.success());
    assert!(stderr(&again).contains("already up"), "{}", stderr(&again));
    assert!(testbed.status().bgp_counts().0 == testbed.status().bgp_counts().1);

    // exec to an unknown node names the known ones.
    let unknown = cli(&guard.run_dir, &["exec", "leaf9", "--", "true"]);
    assert!(!unknown.status.success());
    assert!(
        stderr(&unknown).contains("unknown node `leaf9`"),
        "{}",
        stderr(&unknown)
    );
    assert!(stderr(&unknown).contains("leaf1"), "{}", stderr(&unknown));

    // kill -9 a leaf: its sessions drop on the spines; start brings them back.
    let kill = cli(&guard.run_dir, &["kill", "leaf1", "--signal", "KILL"]);
    assert!(kill.status.success(), "{}", stderr(&kill));
    assert!(
        testbed
            .daemons_of("leaf1")
            .iter()
            .all(|d| d.running_pid().is_none())
    );
    assert!(eventually(Duration::from_secs(15), || {
        let status = testbed.status();
        let spine = status.node("spine1").unwrap();
        spine
            .bgp
            .iter()
            .any(|s| s.peer == "leaf1" && s.state != "Established")
    }));
    // leaf1's BGP (its agent) is gone but its forwarding is not: the
    // spines keep its routes as stale (graceful restart), and leaf2 still
    // reaches its loopback.
    let stale = cli(
        &guard.run_dir,
        &[
            "exec",
            "spine1",
            "--",
            "vtysh",
            "-c",
            "show bgp ipv4 unicast 10.255.0.1/32",
        ],
    );
    assert!(
        String::from_utf8_lossy(&stale.stdout).contains("(stale)"),
        "{}",
        String::from_utf8_lossy(&stale.stdout)
    );
    assert!(ping(&testbed, "leaf2", "10.255.0.2", "10.255.0.1"));
    let start = cli(&guard.run_dir, &["start", "leaf1"]);
    assert!(start.status.success(), "{}", stderr(&start));
    testbed
        .wait_converged(Duration::from_secs(60), &mut Quiet)
        .unwrap();
    assert!(eventually(Duration::from_secs(15), || ping(
        &testbed,
        "leaf2",
        "10.255.0.2",
        "10.255.0.1"
    )));

    // down removes everything and is idempotent.
    let down = cli(&guard.run_dir, &["down"]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert_nothing_left(&guard.run_dir);
    let down_again = cli(&guard.run_dir, &["down"]);
    assert!(down_again.status.success(), "{}", stderr(&down_again));
}

/// A testbed that is up belongs to its run directory: another run
/// directory's `up` and `down` (a test's guard while a benchmark runs)
/// refuse and name it instead of tearing it down; once its daemons are
/// gone it is a leftover anyone may remove.
#[test]
fn another_run_dir_leaves_a_running_testbed_alone() {
    let guard = Guard::new();
    let topology = Topology::load(
        None,
        &Overrides {
            racks: Some(1),
            spines: Some(1),
            ..Overrides::default()
        },
    )
    .unwrap();
    let testbed = Testbed::up(&guard.run_dir, &topology, &mut Quiet).unwrap();
    let other = guard.scratch.join("other-run");
    let error = Testbed::down(&other, &mut Quiet).unwrap_err().to_string();
    assert!(
        error.contains("another testbed is up")
            && error.contains(&*guard.run_dir.to_string_lossy()),
        "{error}"
    );
    let error = Testbed::up(&other, &topology, &mut Quiet)
        .unwrap_err()
        .to_string();
    assert!(error.contains("another testbed is up"), "{error}");
    // Nothing of the running one was touched.
    testbed
        .wait_converged(Duration::from_secs(30), &mut Quiet)
        .unwrap();
    assert!(eventually(Duration::from_secs(20), || ping(
        &testbed,
        "leaf1",
        "10.255.0.1",
        "10.255.1.1"
    )));
    // Its daemons gone (a killed run), it is a leftover: removed.
    for node in ["leaf1", "spine1", "exit"] {
        for daemon in testbed.daemons_of(node) {
            let _ = daemon.stop(nix::sys::signal::Signal::SIGKILL);
        }
    }
    let report = Testbed::down(&other, &mut Quiet).unwrap();
    assert!(!report.namespaces.is_empty());
    assert_eq!(mm_namespaces(), Vec::<String>::new());
}
