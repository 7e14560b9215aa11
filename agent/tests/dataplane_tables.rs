//! The dataplane reconciler on this kernel (no VRF devices: routing tables
//! and rules), two leaves of the testbed joined by the FRR fabric, static
//! intents: tenant machines reach each other over VXLAN, tenants are
//! isolated, drift is reverted within a second, unmanaged objects are left
//! alone, ports move between the provisioning bridge and a VRF, a restart
//! changes nothing, and a bad VRF is rejected while the rest keeps working:
//! a reused VNI, a missing port, a table another program uses. An
//! operator's interface carrying the tenant gateway address is not taken
//! over.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use metalmesh_testbed::testing::{
    Guard, agent_on, cli, eventually, in_netns, ok, ping, route_machine, run, up,
};

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");

fn intents(leaf: u32, extra: &str) -> String {
    let other = 3 - leaf;
    format!(
        r#"[[vrf]]
name = "tenant-a"
vni = 10001
table = 1001
prefixes = ["10.0.1.0/24"]
[[vrf.port]]
name = "m{leaf}-1"
addresses = ["10.0.1.{leaf}1"]
[[vrf.remote]]
prefix = "10.0.1.{other}1/32"
vtep = "10.255.0.{other}"

[[vrf]]
name = "tenant-b"
vni = 10002
table = 1002
prefixes = ["10.0.2.0/24"]
[[vrf.port]]
name = "m{leaf}-2"
addresses = ["10.0.2.{leaf}2"]
[[vrf.remote]]
prefix = "10.0.2.{other}2/32"
vtep = "10.255.0.{other}"
{extra}"#
    )
}

fn apply(run_dir: &Path, scratch: &Path, leaf: u32, text: &str) -> Output {
    let file = scratch.join(format!("leaf{leaf}.toml"));
    std::fs::write(&file, text).unwrap();
    agent_on(
        run_dir,
        AGENT,
        &format!("leaf{leaf}"),
        &["dataplane", "apply", file.to_str().unwrap()],
    )
}

/// A change by hand in leaf1's namespace, which must succeed.
fn drift(args: &[&str]) {
    let mut full = vec!["netns", "exec", "mm-leaf1"];
    full.extend_from_slice(args);
    let out = run("ip", &full);
    assert!(
        out.status.success(),
        "drift {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn leaf1(args: &[&str]) -> String {
    in_netns("mm-leaf1", args)
}

/// Everything the kernel of leaf1 holds that the dataplane could touch.
fn dump() -> String {
    [
        leaf1(&["ip", "-o", "link", "show"]),
        leaf1(&["ip", "-d", "-o", "link", "show", "type", "vxlan"])
            .lines()
            .map(|l| {
                let vxlan = l.split(" vxlan ").nth(1).unwrap_or_default();
                // Bridge-port timers tick on their own; the VXLAN settings are what counts.
                vxlan
                    .split(" bridge_slave")
                    .next()
                    .unwrap_or_default()
                    .to_string()
            })
            .collect::<Vec<_>>()
            .join("\n"),
        leaf1(&["ip", "addr", "show"]),
        leaf1(&["ip", "rule", "show"]),
        leaf1(&["ip", "route", "show", "table", "all"]),
        leaf1(&["ip", "neigh", "show", "nud", "permanent"]),
        // A device's own multicast list is kept in the order sockets joined
        // it: the LLDP socket joins again after a restart, so order is noise.
        {
            let mut fdb: Vec<String> = leaf1(&["bridge", "fdb", "show"])
                .lines()
                .map(str::to_string)
                .collect();
            fdb.sort();
            fdb.join("\n")
        },
    ]
    .join("\n")
    // Counters and ages change on their own; they are not configuration.
    .lines()
    .filter(|l| !l.contains("used") && !l.contains("RX:") && !l.contains("TX:"))
    .collect::<Vec<_>>()
    .join("\n")
}

/// Where two dumps part: the lines only one has, marked `-` (before) and
/// `+` (after), or else the first line whose place differs.
fn line_diff(before: &str, after: &str) -> String {
    let gone = before.lines().filter(|l| !after.lines().any(|a| a == *l));
    let new = after.lines().filter(|l| !before.lines().any(|b| b == *l));
    let mut out: Vec<String> = gone
        .map(|l| format!("- {l}"))
        .chain(new.map(|l| format!("+ {l}")))
        .collect();
    if out.is_empty() {
        let at = before
            .lines()
            .zip(after.lines())
            .position(|(b, a)| b != a)
            .unwrap_or(0);
        out.push(format!("same lines, other order from line {at}:"));
        out.extend(before.lines().skip(at).take(6).map(|l| format!("- {l}")));
        out.extend(after.lines().skip(at).take(6).map(|l| format!("+ {l}")));
    }
    out.join("\n")
}

#[test]
fn tenants_over_vxlan_in_routing_table_mode() {
    let guard = Guard::new();
    let testbed = up(&guard.run_dir, 2, 2, 0);
    let status = agent_on(&guard.run_dir, AGENT, "leaf1", &["status", "-o", "json"]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    // The testbed forces routing-table mode (`switch.kernel_mode`), so this
    // test means the same on a kernel with VRF devices.
    assert_eq!(status["kernel_mode"], "routing_tables");

    for leaf in [1, 2] {
        let out = apply(&guard.run_dir, &guard.scratch, leaf, &intents(leaf, ""));
        ok(&out);
    }
    for (machine, ip) in [
        ("m1-1", "10.0.1.11"),
        ("m2-1", "10.0.1.21"),
        ("m1-2", "10.0.2.12"),
        ("m2-2", "10.0.2.22"),
    ] {
        route_machine(machine, ip);
    }

    // Same tenant across leaves over VXLAN; the gateway answers; tenants are isolated.
    assert!(
        eventually(Duration::from_secs(10), || ping("m1-1", "10.0.1.21")),
        "tenant A across leaves"
    );
    assert!(
        eventually(Duration::from_secs(10), || ping("m2-2", "10.0.2.12")),
        "tenant B across leaves"
    );
    assert!(ping("m1-1", "169.254.0.1"));
    for (from, to) in [
        ("m1-1", "10.0.2.22"),
        ("m1-1", "10.0.2.12"),
        ("m2-2", "10.0.1.11"),
        ("m1-2", "10.0.1.21"),
    ] {
        assert!(!ping(from, to), "{from} reached {to} across tenants");
    }

    // Unmanaged objects, even in a tenant's table, are left alone.
    assert!(
        run(
            "ip",
            &[
                "-n",
                "mm-leaf1",
                "link",
                "add",
                "unmanaged0",
                "type",
                "bridge"
            ]
        )
        .status
        .success()
    );
    assert!(
        run(
            "ip",
            &[
                "-n",
                "mm-leaf1",
                "route",
                "add",
                "192.0.2.0/24",
                "dev",
                "lo",
                "table",
                "1001"
            ]
        )
        .status
        .success()
    );

    // Drift, once the agent has taken in the unmanaged route: a rule, a
    // route, the VXLAN device deleted by hand, a route changed.
    assert!(eventually(Duration::from_secs(5), || {
        let diff = agent_on(&guard.run_dir, AGENT, "leaf1", &["dataplane", "diff"]);
        String::from_utf8_lossy(&diff.stdout).trim() == "in sync"
    }));
    // Each change by hand must itself succeed, or the test would pass
    // without any drift to repair; the agent counts the passes that found
    // and repaired drift.
    let repaired = || {
        let out = agent_on(&guard.run_dir, AGENT, "leaf1", &["status", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["dataplane"]
            ["drift_repaired"]
            .as_u64()
            .unwrap()
    };
    let repaired_before = repaired();
    drift(&[
        "ip", "rule", "del", "iif", "m1-1", "lookup", "1001", "prio", "20000",
    ]);
    drift(&["ip", "route", "del", "10.0.1.21/32", "table", "1001"]);
    drift(&["ip", "link", "del", "mm-vx10002"]);
    drift(&[
        "ip",
        "route",
        "replace",
        "10.0.1.11/32",
        "dev",
        "m1-2",
        "table",
        "1001",
        "proto",
        "245",
    ]);
    assert!(
        eventually(Duration::from_secs(1), || {
            leaf1(&["ip", "rule", "show"]).contains("iif m1-1 lookup 1001")
                && leaf1(&["ip", "route", "show", "table", "1001"])
                    .contains("10.0.1.21 via 10.255.0.2 dev mm-br10001")
                && leaf1(&["ip", "route", "show", "table", "1001"]).contains("10.0.1.11 dev m1-1")
                && leaf1(&["ip", "-br", "link", "show"]).contains("mm-vx10002")
        }),
        "drift not reverted within 1 s:\n{}",
        dump()
    );
    assert!(
        eventually(Duration::from_secs(5), || repaired() > repaired_before),
        "the repair was not counted as drift"
    );
    assert!(
        eventually(Duration::from_secs(5), || ping("m1-2", "10.0.2.22")),
        "tenant B after the VXLAN device came back"
    );
    assert!(leaf1(&["ip", "-br", "link", "show"]).contains("unmanaged0"));
    assert!(leaf1(&["ip", "route", "show", "table", "1001"]).contains("192.0.2.0/24 dev lo"));

    // Move m1-2 back to the provisioning bridge (drop tenant B here) and back into its VRF.
    let only_a = intents(1, "")
        .split("[[vrf]]\nname = \"tenant-b\"")
        .next()
        .unwrap()
        .to_string();
    assert!(
        apply(&guard.run_dir, &guard.scratch, 1, &only_a)
            .status
            .success()
    );
    assert!(
        eventually(Duration::from_secs(3), || {
            leaf1(&["ip", "-d", "link", "show", "m1-2"]).contains("master mm-pxe")
                && !leaf1(&["ip", "addr", "show", "m1-2"]).contains("169.254.0.1")
                && !leaf1(&["ip", "rule", "show"]).contains("lookup 1002")
                && !leaf1(&["ip", "-br", "link", "show"]).contains("mm-br10002")
        }),
        "m1-2 did not return to mm-pxe:\n{}",
        dump()
    );
    assert!(
        ping("m1-1", "10.0.1.21"),
        "tenant A must not flap when B goes"
    );
    assert!(
        apply(&guard.run_dir, &guard.scratch, 1, &intents(1, ""))
            .status
            .success()
    );
    assert!(
        eventually(Duration::from_secs(5), || ping("m1-2", "10.0.2.22")),
        "m1-2 routed again"
    );

    // A restart of the agent changes nothing in the kernel. (Carrier of the
    // provisioning bridge settles a moment after its last port left: wait
    // for two equal dumps.)
    assert!(eventually(Duration::from_secs(10), || {
        let first = dump();
        std::thread::sleep(Duration::from_millis(300));
        first == dump()
    }));
    let before = dump();
    let kill = cli(
        &guard.run_dir,
        &["kill", "leaf1", "--daemon", "agent", "--signal", "KILL"],
    );
    ok(&kill);
    assert!(
        cli(&guard.run_dir, &["start", "leaf1", "--daemon", "agent"])
            .status
            .success()
    );
    assert!(eventually(Duration::from_secs(10), || {
        let out = agent_on(&guard.run_dir, AGENT, "leaf1", &["status", "-o", "json"]);
        serde_json::from_slice::<serde_json::Value>(&out.stdout)
            .is_ok_and(|s| s["dataplane"]["passes"].as_u64() >= Some(2))
    }));
    std::thread::sleep(Duration::from_millis(500));
    let after = dump();
    assert!(
        before == after,
        "restarting the agent changed the kernel:\n{}",
        line_diff(&before, &after)
    );
    let diff = agent_on(&guard.run_dir, AGENT, "leaf1", &["dataplane", "diff"]);
    assert_eq!(String::from_utf8_lossy(&diff.stdout).trim(), "in sync");

    // Bad input: a VRF reusing a VNI is rejected, clearly; the others keep working.
    let bad = intents(
        1,
        "\n[[vrf]]\nname = \"tenant-c\"\nvni = 10001\ntable = 1003\nprefixes = [\"10.0.3.0/24\"]\n",
    );
    let out = apply(&guard.run_dir, &guard.scratch, 1, &bad);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("VRF `tenant-c` rejected: VNI 10001 is already used by VRF `tenant-a`"),
        "{stderr}"
    );
    let missing_port = intents(
        1,
        "\n[[vrf]]\nname = \"tenant-d\"\nvni = 10004\ntable = 1004\nprefixes = [\"10.0.4.0/24\"]\n[[vrf.port]]\nname = \"swp99\"\n",
    );
    let out = apply(&guard.run_dir, &guard.scratch, 1, &missing_port);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr)
            .contains("VRF `tenant-d` rejected: port `swp99` does not exist"),
        "{out:?}"
    );

    // A table another program's route is in: refused with the reason.
    drift(&[
        "ip",
        "route",
        "add",
        "198.51.100.0/24",
        "dev",
        "lo",
        "table",
        "1005",
    ]);
    let foreign_table = intents(
        1,
        "\n[[vrf]]\nname = \"tenant-e\"\nvni = 10005\ntable = 1005\nprefixes = [\"10.0.5.0/24\"]\n",
    );
    let out = apply(&guard.run_dir, &guard.scratch, 1, &foreign_table);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains(
            "VRF `tenant-e` rejected: routing table 1005 holds routes or rules of another program"
        ),
        "{out:?}"
    );
    // None of the rejected VRFs left anything behind.
    std::thread::sleep(Duration::from_millis(500));
    let state = dump();
    for absent in [
        "mm-br10004",
        "mm-br10005",
        "lookup 1004",
        "lookup 1005",
        "mm-br10003",
    ] {
        assert!(!state.contains(absent), "{absent} present:\n{state}");
    }
    assert!(leaf1(&["ip", "route", "show", "table", "1005"]).contains("198.51.100.0/24 dev lo"));

    // An operator's interface carrying 169.254.0.1/32 is not the agent's:
    // never stripped, though no intent routes it.
    ok(&apply(&guard.run_dir, &guard.scratch, 1, &intents(1, "")));
    drift(&["ip", "link", "add", "operator0", "type", "bridge"]);
    drift(&["ip", "addr", "add", "169.254.0.1/32", "dev", "operator0"]);
    let passes = |out: Output| {
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["dataplane"]["passes"]
            .as_u64()
            .unwrap()
    };
    let before = passes(agent_on(
        &guard.run_dir,
        AGENT,
        "leaf1",
        &["status", "-o", "json"],
    ));
    assert!(eventually(Duration::from_secs(15), || passes(agent_on(
        &guard.run_dir,
        AGENT,
        "leaf1",
        &["status", "-o", "json"]
    )) >= before + 2));
    assert!(
        leaf1(&["ip", "addr", "show", "dev", "operator0"]).contains("169.254.0.1/32"),
        "the agent took over an operator's interface"
    );
    let diff = agent_on(&guard.run_dir, AGENT, "leaf1", &["dataplane", "diff"]);
    assert_eq!(String::from_utf8_lossy(&diff.stdout).trim(), "in sync");
    assert!(ping("m1-1", "10.0.1.21") && ping("m1-2", "10.0.2.22"));
    drop(testbed);
}
