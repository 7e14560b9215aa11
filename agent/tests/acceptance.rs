//! The user story end to end, as `scripts/demo` tells it, in the testbed:
//! two racks, a qemu machine that really PXE-boots (iPXE firmware, the
//! installer initramfs, the OS image downloaded by its leaf from the image
//! server) and a namespace machine per rack; through the `metalmesh` CLI
//! only: an image, projects, a private network, allocations in both racks,
//! the route on the remote leaf, tenant traffic over EVPN, another
//! project's machine kept out; then the API node killed while the qemu
//! machine is freed rack-locally and PXE-boots back to Waiting, and the API,
//! started again, showing all of it.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::api::{
    agent_on, all_waiting, allocate_and_wait, alpha_and_web, json, machines, metalmesh, testbed,
    users,
};
use common::{start_installer, uuid};
use metalmesh_testbed::testing::{Guard, eventually, ok, ping, script};
use std::path::Path;
use std::time::{Duration, Instant};

/// The machine's state as the API shows it.
fn state(run_dir: &Path, token: &str, uuid: &str) -> String {
    machines(run_dir, token)
        .iter()
        .find(|m| m["uuid"] == uuid)
        .and_then(|m| m["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

/// Whether `leaf`'s routing table `table` has a route to `ip`.
fn routed(leaf: &str, table: u64, ip: &str) -> bool {
    let out = std::process::Command::new("ip")
        .args(["-n", &format!("mm-{leaf}"), "route", "show", "table"])
        .arg(table.to_string())
        .arg(ip)
        .output()
        .unwrap();
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// A daemon's `/metrics` in its namespace, in the classic text format
/// (curl asks for no other).
fn scrape(namespace: &str, url: &str) -> String {
    let out = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            namespace,
            "curl",
            "-sSf",
            "--max-time",
            "10",
            url,
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{url} in {namespace}: {out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// `promtool check metrics` (Prometheus's linter) passes on `exposition`.
fn promtool_check(node: &str, exposition: &str) {
    use std::io::Write as _;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/setup installs Debian's prometheus)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool rejects {node}'s metrics: {}{}\n{exposition}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample line starting with `series` (0 when absent).
fn sample(exposition: &str, series: &str) -> f64 {
    exposition
        .lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' '))
        .and_then(|value| value.trim().parse().ok())
        .unwrap_or(0.0)
}

/// Asks the testbed's Prometheus (from the host, as a user would) until
/// `done` accepts the answer or 60 s pass; returns the last answer.
fn prometheus_query(query: &str, done: impl Fn(&str) -> bool) -> String {
    let mut answer = String::new();
    for _ in 0..60 {
        let out = std::process::Command::new("curl")
            .args(["-sfG", "--max-time", "5"])
            .arg(format!(
                "http://10.254.1.2:{}/api/v1/query",
                metalmesh_testbed::api::PROMETHEUS_PORT
            ))
            .arg("--data-urlencode")
            .arg(format!("query={query}"))
            .output()
            .unwrap();
        answer = String::from_utf8_lossy(&out.stdout).to_string();
        if done(&answer) {
            break;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    answer
}

fn console(run_dir: &Path, machine: &str) -> String {
    std::fs::read_to_string(run_dir.join(format!("machines/{machine}/console.log")))
        .unwrap_or_default()
}

#[test]
fn the_user_story_from_power_on_to_tenant_traffic_and_with_the_api_down() {
    let guard = Guard::new();
    let run_dir = &guard.run_dir;
    script("build-boot", &[]);
    let testbed_handle = metalmesh_testbed::testing::up_with(
        run_dir,
        &metalmesh_testbed::Overrides {
            racks: Some(2),
            machines_per_rack: Some(1),
            rack_vm_machines: vec![(1, 1)],
            api: true,
            prometheus: true,
            ..metalmesh_testbed::Overrides::default()
        },
    );
    let powered = Instant::now();
    for rack in [1, 2] {
        start_installer(&guard.scratch, rack, 1);
    }
    let vm = uuid(1, 2);
    let (admin, alice, bob) = users(run_dir);

    // Power-on → Waiting, the qemu machine through its firmware's PXE boot.
    assert!(
        all_waiting(run_dir, &admin, 3, Duration::from_secs(240)),
        "not all Waiting: {:?}\n{}",
        machines(run_dir, &admin),
        console(run_dir, "m1-2")
    );
    eprintln!(
        "power-on -> Waiting (all three): {:.1} s",
        powered.elapsed().as_secs_f64()
    );
    let network = alpha_and_web(run_dir, &admin, &alice);
    let table = network["table"].as_u64().unwrap();

    // The qemu machine in rack 1 and the namespace machine in rack 2.
    let mut addresses = Vec::new();
    for (machine, name) in [(vm.clone(), "web-vm"), (uuid(2, 1), "web-ns")] {
        let allocated = Instant::now();
        let shown = allocate_and_wait(
            run_dir,
            &alice,
            "alpha",
            "web",
            name,
            &["--machine", &machine],
        );
        assert_eq!(
            shown["state"],
            "Phoned Home",
            "{shown}\n{}",
            console(run_dir, "m1-2")
        );
        eprintln!(
            "{name}: allocate -> Phoned Home {:.1} s",
            allocated.elapsed().as_secs_f64()
        );
        addresses.push(shown["ip"].as_str().unwrap().to_string());
    }
    // Each machine's route reached the other rack's leaf (EVPN type 5).
    assert!(
        eventually(Duration::from_secs(30), || routed(
            "leaf2",
            table,
            &addresses[0]
        ) && routed(
            "leaf1",
            table,
            &addresses[1]
        )),
        "routes missing on the remote leaves"
    );
    assert!(
        console(run_dir, "m1-2").contains(&format!("web-vm running with {}/32", addresses[0])),
        "{}",
        console(run_dir, "m1-2")
    );
    // Tenant traffic between the racks; another project's machine is out.
    assert!(
        eventually(Duration::from_secs(30), || ping("m2-1", &addresses[0])),
        "the namespace machine in rack 2 cannot reach the qemu machine"
    );
    ok(&metalmesh(run_dir, &admin, &["project", "create", "beta"]));
    ok(&metalmesh(
        run_dir,
        &bob,
        &["network", "create", "db", "--project", "beta"],
    ));
    let db = allocate_and_wait(
        run_dir,
        &bob,
        "beta",
        "db",
        "db-1",
        &["--machine", &uuid(1, 1)],
    );
    assert_eq!(db["state"], "Phoned Home", "{db}");
    assert!(
        !ping("m1-1", &addresses[0]),
        "beta's machine reaches alpha's"
    );
    assert!(
        !ping("m1-1", &addresses[1]),
        "beta's machine reaches alpha's"
    );

    // Every daemon's metrics pass Prometheus's own checker, and the
    // testbed's Prometheus (`up --prometheus`) scrapes them all.
    let mut expositions = std::collections::BTreeMap::new();
    for (node, namespace, url) in testbed_handle.metrics_endpoints() {
        let exposition = scrape(&namespace, &url);
        promtool_check(&node, &exposition);
        expositions.insert(node, exposition);
    }
    assert_eq!(expositions.len(), 3, "{:?}", expositions.keys());
    // leaf1's show the story: DHCP, TFTP and HTTP served the qemu
    // machine's boot and the image; its boot and both installations in
    // rack 1 are in the histograms.
    let leaf1 = &expositions["leaf1"];
    for expected in [
        "metalmesh_agent_machines{state=\"Phoned Home\",liveliness=\"Alive\"} 2",
        "metalmesh_agent_dhcp_messages_total{kind=\"ack\"}",
        "metalmesh_agent_tftp_transfers_total{outcome=\"completed\"}",
        "metalmesh_agent_bgp_sessions{peer=\"spine1\",state=\"Established\"} 1",
        "metalmesh_agent_mesh_members{state=\"alive\"}",
    ] {
        assert!(
            leaf1.lines().any(|line| line.starts_with(expected)),
            "no sample line starts with {expected}:\n{leaf1}"
        );
    }
    assert!(
        sample(
            leaf1,
            "metalmesh_agent_http_requests_total{route=\"boot\",code=\"2xx\"}"
        ) >= 2.0,
        "{leaf1}"
    );
    assert!(
        sample(
            leaf1,
            "metalmesh_agent_http_sent_bytes_total{route=\"images\"}"
        ) > 0.0,
        "{leaf1}"
    );
    assert!(
        sample(leaf1, "metalmesh_agent_power_on_to_waiting_seconds_count") >= 1.0,
        "{leaf1}"
    );
    // DHCP leases and pool, the replica by kind, mesh traffic, BGP updates
    // and the dataplane's pass durations.
    for (series, at_least) in [
        ("metalmesh_agent_dhcp_leases{state=\"bound\"}", 1.0),
        ("metalmesh_agent_dhcp_pool_addresses", 151.0),
        ("metalmesh_agent_mesh_records{kind=\"machine\"}", 3.0),
        ("metalmesh_agent_mesh_bytes_total{direction=\"in\"}", 1.0),
        ("metalmesh_agent_mesh_bytes_total{direction=\"out\"}", 1.0),
        (
            "metalmesh_agent_bgp_updates_received_total{peer=\"spine1\"}",
            1.0,
        ),
        ("metalmesh_agent_dataplane_pass_duration_seconds_count", 1.0),
    ] {
        assert!(
            sample(leaf1, series) >= at_least,
            "{series} below {at_least}:\n{leaf1}"
        );
    }
    assert_eq!(
        sample(
            leaf1,
            "metalmesh_agent_allocate_to_phoned_home_seconds_count"
        ),
        2.0,
        "{leaf1}"
    );
    assert!(
        sample(leaf1, "metalmesh_agent_allocate_to_phoned_home_seconds_sum") > 1.0,
        "{leaf1}"
    );
    assert!(
        sample(&expositions["api"], "metalmesh_api_machines_allocated") >= 3.0,
        "{}",
        expositions["api"]
    );
    let installs = prometheus_query(
        "sum(metalmesh_agent_allocate_to_phoned_home_seconds_count)",
        |answer| answer.contains("\"3\"]"),
    );
    let up = prometheus_query("up", |answer| answer.matches("\"1\"]").count() == 3);
    assert_eq!(
        up.matches("\"1\"]").count(),
        3,
        "not every daemon up for Prometheus: {up}"
    );
    assert!(
        installs.contains("\"3\"]"),
        "Prometheus did not see 3 installations: {installs}"
    );

    // The API node down: the qemu machine is freed rack-locally, wiped,
    // PXE-boots again and waits; the racks need no API for it.
    ok(&testbed(run_dir, &["kill", "api"]));
    ok(&agent_on(run_dir, "leaf1", &["machine", "free", &vm]));
    assert!(
        eventually(Duration::from_secs(240), || {
            let out = agent_on(
                run_dir,
                "leaf1",
                &["machine", "describe", &vm, "-o", "json"],
            );
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .is_ok_and(|m| m["state"] == "Waiting" && m["allocation"].is_null())
        }),
        "the freed qemu machine did not come back to Waiting\n{}",
        console(run_dir, "m1-2")
    );
    ok(&testbed(run_dir, &["start", "api"]));
    assert!(
        eventually(Duration::from_secs(60), || state(run_dir, &admin, &vm)
            == "Waiting"
            && machines(run_dir, &admin)
                .iter()
                .any(|m| m["uuid"] == vm.as_str() && m["project"].is_null())),
        "the API does not show the reclaimed machine: {:?}",
        machines(run_dir, &admin)
    );
    // Its address is free again: the next allocation of alpha gets it.
    let out = metalmesh(
        run_dir,
        &alice,
        &[
            "ip",
            "acquire",
            "--project",
            "alpha",
            "--network",
            "web",
            "--ip",
            &addresses[0],
            "-o",
            "json",
        ],
    );
    assert_eq!(json(&out)["address"], addresses[0].as_str());
}
