//! The agent's own BGP speaker on both leaves against real FRR spines:
//! unnumbered sessions come up from router advertisements, leaf loopbacks
//! reach each other over both spines (ECMP, IPv4 via IPv6 link-local next
//! hops), the type-5 routes the leaves originate show up decoded on the
//! spines, tenant machines on different racks reach each other with no
//! `[[vrf.remote]]` anywhere while another tenant cannot, a stopped spine
//! is noticed by the hold timer and traffic stays up over the other, a
//! killed spine and a fabric link set down fail over and come back, and
//! an agent killed and restarted leaves the kernel's routes as they were
//! while the spines keep its underlay routes (graceful restart).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use metalmesh_testbed::testing::{
    Guard, agent_on, cli, eventually, in_netns, ok, ping, route_machine, run,
};
use metalmesh_testbed::{LeafBgp, Overrides, Quiet, Testbed, Topology};

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");

/// Tenant A on port m{leaf}-1, tenant B on m{leaf}-2; no remote routes.
fn intents(leaf: u32) -> String {
    format!(
        r#"[[vrf]]
name = "tenant-a"
vni = 10001
table = 1001
prefixes = ["10.0.1.0/24"]
[[vrf.port]]
name = "m{leaf}-1"
addresses = ["10.0.1.{leaf}1"]

[[vrf]]
name = "tenant-b"
vni = 10002
table = 1002
prefixes = ["10.0.2.0/24"]
[[vrf.port]]
name = "m{leaf}-2"
addresses = ["10.0.2.{leaf}2"]
"#
    )
}

fn in_ns(node: &str, argv: &[&str]) -> String {
    in_netns(&format!("mm-{node}"), argv)
}

/// leaf1's route to leaf2's loopback.
fn route_to_leaf2() -> String {
    in_ns("leaf1", &["ip", "route", "show", "10.255.0.2"])
}

/// Whether that route goes through exactly these spines.
fn via_spines(spines: &[&str]) -> bool {
    let route = route_to_leaf2();
    route.matches("via inet6").count() == spines.len()
        && spines.iter().all(|s| route.contains(&format!("dev {s}")))
}

fn vtysh(run_dir: &Path, node: &str, command: &str) -> String {
    let out = cli(run_dir, &["exec", node, "--", "vtysh", "-c", command]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The routes the agent owns in leaf1's main table, one line each, sorted
/// (the kernel lists equal-cost next hops in the order they were written).
fn bgp_routes(node: &str) -> Vec<String> {
    let text = in_ns(node, &["ip", "-o", "route", "show", "proto", "bgp"]);
    let mut lines: Vec<String> = text
        .lines()
        .map(|l| {
            let mut hops: Vec<&str> = l.split("nexthop").map(str::trim).collect();
            hops[1..].sort_unstable();
            hops.join(" nexthop ")
        })
        .collect();
    lines.sort();
    lines
}

fn agent_json(run_dir: &Path, leaf: &str, args: &[&str]) -> serde_json::Value {
    let out = agent_on(run_dir, AGENT, leaf, args);
    ok(&out);
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn native_leaves_route_underlay_and_tenants_with_frr_spines() {
    let guard = Guard::new();
    let topology = Topology::load(
        None,
        &Overrides {
            racks: Some(2),
            machines_per_rack: Some(2),
            leaf_bgp: Some(LeafBgp::Native),
            ..Overrides::default()
        },
    )
    .unwrap();
    let testbed = Testbed::up(&guard.run_dir, &topology, &mut Quiet).unwrap();
    testbed
        .wait_converged(Duration::from_secs(60), &mut Quiet)
        .unwrap();

    // Sessions, seen from both ends: the leaves' from their agents.
    let status = testbed.status();
    for leaf in ["leaf1", "leaf2"] {
        let node = status.node(leaf).unwrap();
        assert!(
            node.daemons.iter().all(|d| d.name == "agent"),
            "no FRR on {leaf}"
        );
        assert_eq!(node.bgp.len(), 2);
        for session in &node.bgp {
            assert_eq!(session.state, "Established", "{leaf}: {session:?}");
            assert_eq!(session.remote_as, Some(4_210_000_000));
        }
        for spine in ["spine1", "spine2"] {
            let session = status
                .node(spine)
                .unwrap()
                .bgp
                .iter()
                .find(|s| s.peer == leaf)
                .cloned();
            assert_eq!(session.unwrap().state, "Established", "{spine}–{leaf}");
        }
    }
    let neighbors = agent_json(&guard.run_dir, "leaf1", &["bgp", "neighbors", "-o", "json"]);
    let negotiated = &neighbors[0]["negotiated"];
    assert_eq!(negotiated["extended_next_hop"], true, "{neighbors}");
    let families: Vec<&str> = negotiated["families"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|f| f.as_str())
        .collect();
    assert!(
        families.contains(&"ipv4-unicast") && families.contains(&"l2vpn-evpn"),
        "{families:?}"
    );

    // Loopbacks over both spines: IPv4 via IPv6 link-local next hops.
    assert!(
        eventually(Duration::from_secs(15), || {
            let route = in_ns("leaf1", &["ip", "route", "show", "10.255.0.2"]);
            route.contains("proto bgp")
                && route.matches("via inet6 fe80::").count() == 2
                && route.contains("dev spine1")
                && route.contains("dev spine2")
        }),
        "{}",
        in_ns("leaf1", &["ip", "route", "show", "10.255.0.2"])
    );
    assert!(eventually(Duration::from_secs(10), || {
        run(
            "ip",
            &[
                "netns",
                "exec",
                "mm-leaf1",
                "ping",
                "-c1",
                "-W1",
                "-I",
                "10.255.0.1",
                "10.255.0.2",
            ],
        )
        .status
        .success()
    }));
    let spine_view = vtysh(
        &guard.run_dir,
        "spine1",
        "show bgp ipv4 unicast 10.255.0.1/32 json",
    );
    let spine_view: serde_json::Value = serde_json::from_str(&spine_view).unwrap();
    assert_eq!(
        spine_view["paths"][0]["aspath"]["string"], "4200000001",
        "{spine_view}"
    );

    // Tenants: intents with ports only; the remote routes come from BGP.
    for leaf in [1, 2] {
        let file = guard.scratch.join(format!("leaf{leaf}.toml"));
        std::fs::write(&file, intents(leaf)).unwrap();
        ok(&agent_on(
            &guard.run_dir,
            AGENT,
            &format!("leaf{leaf}"),
            &["dataplane", "apply", file.to_str().unwrap()],
        ));
    }
    for (machine, ip) in [
        ("m1-1", "10.0.1.11"),
        ("m2-1", "10.0.1.21"),
        ("m1-2", "10.0.2.12"),
        ("m2-2", "10.0.2.22"),
    ] {
        route_machine(machine, ip);
    }
    assert!(
        eventually(Duration::from_secs(10), || ping("m1-1", "10.0.1.21")),
        "tenant A across racks"
    );
    assert!(
        eventually(Duration::from_secs(10), || ping("m2-2", "10.0.2.12")),
        "tenant B across racks"
    );
    assert!(!ping("m1-2", "10.0.1.21"), "tenant B reaches tenant A");
    assert!(!ping("m2-1", "10.0.2.12"), "tenant A reaches tenant B");
    let stored = std::fs::read_to_string(
        guard
            .run_dir
            .join("nodes/leaf1/agent/state/dataplane-intents.toml"),
    )
    .unwrap();
    assert!(
        !stored.contains("[[vrf.remote]]") && !stored.contains("vtep"),
        "no [[vrf.remote]] anywhere: {stored}"
    );
    let learned = in_ns("leaf1", &["ip", "route", "show", "table", "1001"]);
    assert!(learned.contains("10.0.1.21 via 10.255.0.2"), "{learned}");

    // The spines decode what the leaves originate: RD, RT, VXLAN, router MAC, VNI.
    let detail = vtysh(
        &guard.run_dir,
        "spine1",
        "show bgp l2vpn evpn route detail type prefix",
    );
    assert!(
        detail.contains("Route Distinguisher: 10.255.0.1:10001"),
        "{detail}"
    );
    assert!(
        detail.contains("[5]:[0]:[32]:[10.0.1.11] VNI 10001"),
        "{detail}"
    );
    assert!(
        detail.contains("RT:59905:10001 ET:8 Rmac:02:6d:0a:ff:00:01"),
        "{detail}"
    );
    assert!(
        detail.contains("[5]:[0]:[32]:[10.0.2.22] VNI 10002"),
        "{detail}"
    );
    let routes = agent_json(
        &guard.run_dir,
        "leaf2",
        &["bgp", "routes", "--vrf", "tenant-a", "-o", "json"],
    );
    let routes = routes.as_array().unwrap();
    assert!(routes.iter().all(|r| r["vni"] == 10001), "{routes:?}");
    assert!(
        routes
            .iter()
            .any(|r| r["route"] == "[5]:[10.255.0.1:10001]:[0]:[10.0.1.11/32]")
    );

    // A spine's bgpd stops answering: the hold timer (3 s) takes its
    // sessions down, the underlay keeps the other spine, tenants keep talking.
    let bgpd = testbed
        .daemons_of("spine1")
        .iter()
        .find(|d| d.name == "bgpd")
        .unwrap();
    let pid = bgpd.running_pid().unwrap();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();
    let stopped = Instant::now();
    assert!(
        eventually(Duration::from_secs(8), || {
            let neighbors =
                agent_json(&guard.run_dir, "leaf1", &["bgp", "neighbors", "-o", "json"]);
            neighbors[0]["state"] != "Established"
                && neighbors[0]["stats"]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("hold timer expired"))
        }),
        "hold timer did not expire"
    );
    assert!(
        stopped.elapsed() >= Duration::from_secs(2),
        "down before the hold time"
    );
    assert!(
        eventually(Duration::from_secs(3), || via_spines(&["spine2"])),
        "{}",
        route_to_leaf2()
    );
    assert!(
        eventually(Duration::from_secs(3), || ping("m1-1", "10.0.1.21")),
        "tenant traffic over spine2"
    );
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGCONT,
    )
    .unwrap();
    assert!(
        eventually(Duration::from_secs(30), || via_spines(&[
            "spine1", "spine2"
        ])),
        "spine1 back in the ECMP set"
    );

    // A spine's bgpd killed: its connections end at once and FRR keeps no
    // forwarding state (it offers none), so its paths go at once; traffic
    // moves to the other spine within 3 s. Restarted, it joins the ECMP set.
    ok(&cli(
        &guard.run_dir,
        &["kill", "spine2", "--daemon", "bgpd", "--signal", "KILL"],
    ));
    let killed = Instant::now();
    assert!(eventually(Duration::from_secs(3), || via_spines(&[
        "spine1"
    ])));
    assert!(eventually(Duration::from_secs(3), || ping(
        "m1-1",
        "10.0.1.21"
    )));
    assert!(
        killed.elapsed() < Duration::from_secs(3),
        "recovery took {:?}",
        killed.elapsed()
    );
    ok(&cli(
        &guard.run_dir,
        &["start", "spine2", "--daemon", "bgpd"],
    ));
    assert!(
        eventually(Duration::from_secs(30), || via_spines(&[
            "spine1", "spine2"
        ])),
        "spine2 back in the ECMP set"
    );

    // A fabric link down: the session on it ends by hold timer (3 s) and
    // the path goes; up again, the session and the path come back.
    assert!(
        run("ip", &["-n", "mm-leaf1", "link", "set", "spine1", "down"])
            .status
            .success()
    );
    assert!(eventually(Duration::from_secs(8), || via_spines(&[
        "spine2"
    ])));
    assert!(eventually(Duration::from_secs(3), || ping(
        "m1-1",
        "10.0.1.21"
    )));
    assert!(
        run("ip", &["-n", "mm-leaf1", "link", "set", "spine1", "up"])
            .status
            .success()
    );
    assert!(
        eventually(Duration::from_secs(30), || via_spines(&[
            "spine1", "spine2"
        ])),
        "spine1 back after the link came up"
    );

    // An agent killed and restarted: the kernel keeps its routes throughout,
    // the speaker learns them again, nothing changes.
    let before = bgp_routes("leaf1");
    let before_tenant = in_ns("leaf1", &["ip", "route", "show", "table", "1001"]);
    ok(&cli(
        &guard.run_dir,
        &["kill", "leaf1", "--daemon", "agent", "--signal", "KILL"],
    ));
    assert_eq!(bgp_routes("leaf1"), before, "routes gone with the agent");
    // The spines keep leaf1's underlay routes while it restarts (graceful
    // restart, FRR as helper): leaf2 still reaches leaf1's VTEP. (FRR 8.4
    // keeps no EVPN routes of a restarting peer: tenant routes to leaf1
    // come back with its session, about a second later.)
    std::thread::sleep(Duration::from_secs(2));
    assert!(in_ns("leaf2", &["ip", "route", "show", "10.255.0.1"]).contains("proto bgp"));
    assert!(
        run(
            "ip",
            &[
                "netns",
                "exec",
                "mm-leaf2",
                "ping",
                "-c1",
                "-W1",
                "-I",
                "10.255.0.2",
                "10.255.0.1"
            ]
        )
        .status
        .success(),
        "leaf2 lost leaf1's loopback while leaf1's agent restarts"
    );
    assert!(
        cli(&guard.run_dir, &["start", "leaf1", "--daemon", "agent"])
            .status
            .success()
    );
    assert!(eventually(Duration::from_secs(20), || {
        let neighbors = agent_on(
            &guard.run_dir,
            AGENT,
            "leaf1",
            &["bgp", "summary", "-o", "json"],
        );
        serde_json::from_slice::<serde_json::Value>(&neighbors.stdout).is_ok_and(|n| {
            n["peers"]
                .as_array()
                .is_some_and(|p| p.iter().all(|s| s["state"] == "Established"))
        })
    }));
    assert!(eventually(Duration::from_secs(10), || bgp_routes("leaf1")
        == before
        && in_ns("leaf1", &["ip", "route", "show", "table", "1001"])
            == before_tenant));
    assert!(ping("m1-1", "10.0.1.21"));

    // A machine leaves its tenant: its type-5 route is withdrawn everywhere.
    let only_a = intents(1)
        .split("[[vrf]]\nname = \"tenant-b\"")
        .next()
        .unwrap()
        .to_string();
    let file = guard.scratch.join("leaf1-only-a.toml");
    std::fs::write(&file, only_a).unwrap();
    ok(&agent_on(
        &guard.run_dir,
        AGENT,
        "leaf1",
        &["dataplane", "apply", file.to_str().unwrap()],
    ));
    assert!(eventually(Duration::from_secs(5), || {
        !vtysh(
            &guard.run_dir,
            "spine2",
            "show bgp l2vpn evpn route type prefix",
        )
        .contains("10.0.2.12")
            && !in_ns("leaf2", &["ip", "route", "show", "table", "1002"]).contains("10.0.2.12")
    }));
    assert!(ping("m1-1", "10.0.1.21"), "tenant A unaffected");
    drop(testbed);
}
