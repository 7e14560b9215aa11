//! The machine lifecycle end to end with `metalmesh-installer --simulate` in
//! the testbed's namespace machines (real DHCP from the leaf, LLDP from the
//! machine, the installer API over HTTP, the real OS image written to a disk
//! file, the port moved into the tenant VRF, phone home over it): register →
//! Waiting → allocate → Phoned Home → free → Waiting with the disk wiped;
//! 20 machines installing at once; SIGKILL of the agent while a machine
//! installs; bad requests refused.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::{DISK_BYTES, uuid};
use metalmesh_testbed::Testbed;
use metalmesh_testbed::testing::{Guard, cli, eventually, ok, run, script};
fn up(guard: &Guard, machines: u32) -> Testbed {
    script("build-os-image", &[]);
    let testbed = metalmesh_testbed::testing::up(&guard.run_dir, 1, machines, 0);
    common::tenant_a(&guard.run_dir, &guard.scratch);
    testbed
}

fn agent(guard: &Guard, args: &[&str]) -> std::process::Output {
    common::agent(&guard.run_dir, args)
}

fn start_installer(guard: &Guard, index: u32) -> PathBuf {
    common::start_installer(&guard.scratch, 1, index)
}

fn machines(guard: &Guard) -> Vec<serde_json::Value> {
    let out = agent(guard, &["machines", "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn machine(guard: &Guard, uuid: &str) -> Option<serde_json::Value> {
    machines(guard).into_iter().find(|m| m["uuid"] == uuid)
}

fn state(guard: &Guard, uuid: &str) -> String {
    machine(guard, uuid)
        .and_then(|m| m["state"].as_str().map(str::to_string))
        .unwrap_or_default()
}

fn events(guard: &Guard, uuid: &str) -> Vec<String> {
    common::events(&guard.run_dir, uuid)
}

fn allocate(guard: &Guard, uuid: &str, ip: &str, hostname: &str) -> std::process::Output {
    common::allocate_local(
        &guard.run_dir,
        uuid,
        ip,
        hostname,
        &[
            "--ssh-key",
            "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIMetalmeshTestKey test@metalmesh",
        ],
    )
}

fn debugfs_cat(disk: &Path, file: &str) -> String {
    let out = run(
        "debugfs",
        &["-R", &format!("cat {file}"), disk.to_str().unwrap()],
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn head_is_zero(disk: &Path) -> bool {
    let bytes = std::fs::read(disk).unwrap();
    bytes[..1024 * 1024].iter().all(|b| *b == 0)
        && bytes[bytes.len() - 1024 * 1024..].iter().all(|b| *b == 0)
}

#[test]
fn one_machine_registers_installs_phones_home_and_is_reclaimed() {
    let guard = Guard::new();
    let _testbed = up(&guard, 2);
    let id = uuid(1, 1);
    let disk = start_installer(&guard, 1);

    assert!(
        eventually(Duration::from_secs(30), || state(&guard, &id) == "Waiting"),
        "not Waiting: {:?}\n{}",
        machine(&guard, &id),
        std::fs::read_to_string(guard.scratch.join("m1-1.log")).unwrap_or_default()
    );
    assert!(eventually(Duration::from_secs(15), || machine(&guard, &id)
        .is_some_and(|m| m["port"] == "m1-1")));
    let m = machine(&guard, &id).unwrap();
    let hardware = &m["hardware"];
    assert_eq!(hardware["uuid"], id);
    assert_eq!(hardware["disks"][0]["name"], disk.to_str().unwrap());
    assert_eq!(hardware["disks"][0]["size_bytes"], DISK_BYTES);
    assert_eq!(hardware["nics"][0]["mac"], "52:54:00:6d:01:01");
    assert_eq!(m["unknown_mac"], false);
    assert!(head_is_zero(&disk), "the disk was not wiped before Waiting");

    // A machine this leaf does not know is refused, and so is an address
    // outside every tenant VRF.
    let out = allocate(&guard, &uuid(1, 2), "10.0.1.12", "web-2");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no machine"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = allocate(&guard, &id, "10.0.9.11", "web-1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no tenant VRF"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same allocation twice at once (a caller retrying after a lost
    // answer): one commit, both told so. A different one is refused.
    let (first, second) = std::thread::scope(|scope| {
        let a = scope.spawn(|| allocate(&guard, &id, "10.0.1.11", "web-1"));
        let b = scope.spawn(|| allocate(&guard, &id, "10.0.1.11", "web-1"));
        (a.join().unwrap(), b.join().unwrap())
    });
    ok(&first);
    ok(&second);
    let refused = allocate(&guard, &id, "10.0.1.12", "web-2");
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("already allocated"),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );
    for out in [&first, &second] {
        let told = String::from_utf8_lossy(&out.stdout);
        assert!(
            told.contains("web-1") && told.contains("10.0.1.11"),
            "{told}"
        );
    }

    assert!(
        eventually(Duration::from_secs(40), || state(&guard, &id)
            == "Phoned Home"),
        "no phone home: {:?}\n{}",
        events(&guard, &id),
        std::fs::read_to_string(guard.scratch.join("m1-1.log")).unwrap_or_default()
    );
    // The installed root on the disk carries the allocation.
    assert_eq!(debugfs_cat(&disk, "/etc/hostname").trim(), "web-1");
    assert!(debugfs_cat(&disk, "/etc/metalmesh/network").contains("ADDRESS=10.0.1.11/32"));
    assert!(debugfs_cat(&disk, "/root/.ssh/authorized_keys").contains("test@metalmesh"));
    // The mesh carries the SSH key's digest, not the key: only this leaf
    // keeps it, in its owner-only store.
    let out = agent(
        &guard,
        &["mesh", "records", "--kind", "machine", "-o", "json"],
    );
    ok(&out);
    let gossiped = String::from_utf8_lossy(&out.stdout);
    assert!(gossiped.contains("secrets_sha256"), "{gossiped}");
    assert!(!gossiped.contains("MetalmeshTestKey"), "{gossiped}");
    let state_dir = guard.run_dir.join("nodes/leaf1/agent/state");
    for (path, mode) in [
        (state_dir.clone(), 0o700),
        (state_dir.join("inventory.db"), 0o600),
    ] {
        use std::os::unix::fs::PermissionsExt as _;
        let found = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(found, mode, "{}", path.display());
    }
    // The machine is on the tenant network, routed by the leaf.
    let routes = agent(&guard, &["routes", "--vrf", "tenant-a"]);
    assert!(String::from_utf8_lossy(&routes.stdout).contains("10.0.1.11"));

    let out = agent(&guard, &["machine", "free", &id]);
    ok(&out);
    assert!(
        eventually(Duration::from_secs(40), || state(&guard, &id) == "Waiting"),
        "not back to Waiting: {:?}",
        events(&guard, &id)
    );
    assert!(head_is_zero(&disk), "the reclaimed disk was not wiped");
    assert!(debugfs_cat(&disk, "/etc/hostname").trim().is_empty());
    let routes = agent(&guard, &["routes", "--vrf", "tenant-a"]);
    assert!(routes.status.success());
    assert!(!String::from_utf8_lossy(&routes.stdout).contains("10.0.1.11"));
    assert_eq!(
        events(&guard, &id),
        [
            "Preparing",
            "Registering",
            "Waiting",
            "Installing",
            "Booting New Kernel",
            "Phoned Home",
            "Machine Reclaim",
            "Preparing",
            "Registering",
            "Waiting"
        ]
    );
}

#[test]
fn twenty_machines_reach_waiting_and_install_concurrently() {
    let guard = Guard::new();
    let _testbed = up(&guard, 20);
    let disks: Vec<PathBuf> = (1..=20)
        .map(|index| start_installer(&guard, index))
        .collect();
    let all_in = |wanted: &str| {
        let list = machines(&guard);
        list.len() == 20
            && list
                .iter()
                .all(|m| m["state"] == wanted && !m["port"].is_null())
    };
    assert!(
        eventually(Duration::from_secs(90), || all_in("Waiting")),
        "{:?}",
        machines(&guard)
            .iter()
            .map(|m| (m["uuid"].clone(), m["state"].clone()))
            .collect::<Vec<_>>()
    );
    let guard_ref = &guard;
    std::thread::scope(|scope| {
        for index in 1..=20u32 {
            scope.spawn(move || {
                let out = allocate(
                    guard_ref,
                    &uuid(1, index),
                    &format!("10.0.1.{}", 10 + index),
                    &format!("node-{index}"),
                );
                ok(&out);
            });
        }
    });
    assert!(
        eventually(Duration::from_secs(180), || all_in("Phoned Home")),
        "{:?}",
        machines(&guard)
            .iter()
            .map(|m| (m["uuid"].clone(), m["state"].clone()))
            .collect::<Vec<_>>()
    );
    let routes = String::from_utf8_lossy(&agent(&guard, &["routes", "--vrf", "tenant-a"]).stdout)
        .into_owned();
    for index in 1..=20 {
        assert!(
            routes.contains(&format!("10.0.1.{}", 10 + index)),
            "{routes}"
        );
    }
    // Each disk holds its own machine's allocation, not a neighbour's:
    // concurrent installs must not cross.
    for (index, disk) in (1..=20u32).zip(&disks) {
        assert_eq!(
            debugfs_cat(disk, "/etc/hostname").trim(),
            format!("node-{index}"),
            "disk of m1-{index}"
        );
        assert!(
            debugfs_cat(disk, "/etc/metalmesh/network")
                .contains(&format!("ADDRESS=10.0.1.{}/32", 10 + index)),
            "disk of m1-{index}"
        );
    }
}

#[test]
fn agent_killed_during_installing_loses_nothing() {
    let guard = Guard::new();
    let _testbed = up(&guard, 1);
    let id = uuid(1, 1);
    start_installer(&guard, 1);
    assert!(eventually(Duration::from_secs(30), || state(&guard, &id)
        == "Waiting"
        && machine(&guard, &id).is_some_and(|m| m["port"] == "m1-1")));
    // Slow the image down on its way to the machine so installing lasts.
    let out = run(
        "ip",
        &[
            "netns", "exec", "mm-leaf1", "tc", "qdisc", "add", "dev", "m1-1", "root", "tbf",
            "rate", "40mbit", "burst", "64kb", "latency", "500ms",
        ],
    );
    ok(&out);
    let out = allocate(&guard, &id, "10.0.1.11", "db-1");
    ok(&out);
    assert!(eventually(Duration::from_secs(20), || state(&guard, &id)
        == "Installing"));
    let installer_log =
        || std::fs::read_to_string(guard.scratch.join("m1-1.log")).unwrap_or_default();
    let logged_before_kill = installer_log().len();
    let retried_since_kill = || {
        installer_log()
            .get(logged_before_kill..)
            .is_some_and(|log| log.contains("retrying") || log.contains("attempt"))
    };
    let out = cli(
        &guard.run_dir,
        &["kill", "leaf1", "--daemon", "agent", "--signal", "KILL"],
    );
    ok(&out);
    // Back only once the installer has had to retry against the dead agent.
    assert!(
        eventually(Duration::from_secs(30), retried_since_kill),
        "the installer never noticed the agent was gone:\n{}",
        installer_log()
    );
    let out = cli(&guard.run_dir, &["start", "leaf1", "--daemon", "agent"]);
    ok(&out);
    let _ = run(
        "ip",
        &[
            "netns", "exec", "mm-leaf1", "tc", "qdisc", "del", "dev", "m1-1", "root",
        ],
    );
    assert!(
        eventually(Duration::from_secs(90), || state(&guard, &id)
            == "Phoned Home"),
        "{:?}\n{}",
        events(&guard, &id),
        std::fs::read_to_string(guard.scratch.join("m1-1.log")).unwrap_or_default()
    );
    assert_eq!(
        events(&guard, &id),
        [
            "Preparing",
            "Registering",
            "Waiting",
            "Installing",
            "Booting New Kernel",
            "Phoned Home"
        ]
    );
}

fn post(guard: &Guard, path: &str, body: &str) -> (u16, String) {
    let file = guard.scratch.join("body");
    std::fs::write(&file, body).unwrap();
    let data = format!("@{}", file.display());
    let out = run(
        "ip",
        &[
            "netns",
            "exec",
            "mm-leaf1",
            "curl",
            "-s",
            "-o",
            "-",
            "-w",
            "\n%{http_code}",
            "-X",
            "POST",
            "-H",
            "Content-Type: application/json",
            "--data-binary",
            &data,
            &format!("http://10.100.1.1:8070{path}"),
        ],
    );
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or((&text, "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

#[test]
fn bad_images_and_bad_requests_are_refused() {
    let guard = Guard::new();
    let _testbed = up(&guard, 1);
    let id = uuid(1, 1);
    // An image whose published checksum is wrong.
    let images = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/boot/images");
    std::fs::copy(
        images.join("testbed-default.img"),
        images.join("test-bad-checksum.img"),
    )
    .unwrap();
    std::fs::write(
        images.join("test-bad-checksum.img.sha256"),
        format!("{}  test-bad-checksum.img\n", "0".repeat(64)),
    )
    .unwrap();
    let disk = start_installer(&guard, 1);
    assert!(eventually(Duration::from_secs(30), || state(&guard, &id)
        == "Waiting"
        && machine(&guard, &id).is_some_and(|m| m["port"] == "m1-1")));
    let out = agent(
        &guard,
        &[
            "machine",
            "allocate",
            &id,
            "--image",
            "test-bad-checksum",
            "--ip",
            "10.0.1.11",
            "--hostname",
            "bad-1",
        ],
    );
    ok(&out);
    assert!(eventually(Duration::from_secs(30), || {
        let out = agent(&guard, &["machine", "events", &id, "-o", "json"]);
        String::from_utf8_lossy(&out.stdout).contains("checksum mismatch")
    }));
    let history = events(&guard, &id);
    assert!(history.contains(&"Crashed".to_string()), "{history:?}");
    assert!(
        !history
            .iter()
            .any(|e| e == "Booting New Kernel" || e == "Phoned Home"),
        "{history:?}"
    );
    assert!(
        head_is_zero(&disk),
        "a half-written image was left on the disk"
    );
    let out = agent(&guard, &["machine", "free", &id]);
    ok(&out);
    assert!(eventually(Duration::from_secs(40), || state(&guard, &id) == "Waiting"));
    // The machine's installer stops (power off): only its namespace's processes.
    let _ = run("sh", &["-c", "ip netns pids mm-m1-1 | xargs -r kill -9"]);

    // Unknown image and non-waiting machines are refused with the reason.
    let out = agent(
        &guard,
        &[
            "machine",
            "allocate",
            &id,
            "--image",
            "no-such-image",
            "--ip",
            "10.0.1.11",
            "--hostname",
            "x",
        ],
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("unknown image"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = agent(&guard, &["machine", "free", &id]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("not allocated"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // A registration from an address holding no lease of this leaf (here:
    // the leaf itself) speaks for no port, and is refused.
    let stranger = "6d6d0000-0000-4000-8000-0000000000ff";
    let (code, body) = post(
        &guard,
        "/v1/machines/register",
        &format!(
            r#"{{"hardware":{{"uuid":"{stranger}","cpus":1,"memory_bytes":1,"disks":[],"nics":[{{"name":"eth0","mac":"02:00:00:00:00:99","up":true}}]}}}}"#
        ),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("holds no lease"), "{body}");
    assert!(machine(&guard, stranger).is_none());
    // Malformed requests get 4xx with a reason, and nothing is recorded.
    let (code, body) = post(&guard, "/v1/machines/register", "{not json");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("malformed"), "{body}");
    let (code, _) = post(
        &guard,
        "/v1/machines/not-a-uuid/events",
        r#"{"event":"Crashed"}"#,
    );
    assert_eq!(code, 400);
    let (code, body) = post(
        &guard,
        &format!("/v1/machines/{id}/events"),
        r#"{"event":"Phoned Home"}"#,
    );
    assert_eq!(code, 400, "{body}");
    // Who calls is checked before what is asked: a caller without a lease
    // learns nothing about which machines exist.
    let (code, _) = post(
        &guard,
        "/v1/machines/6d6d0000-0000-4000-8000-0000000000fe/heartbeat",
        "{}",
    );
    assert_eq!(code, 403);
    let (code, _) = post(&guard, "/v1/machines/register", &"x".repeat(300_000));
    assert!(code == 413 || code == 400, "{code}");
    assert_eq!(machines(&guard).len(), 1);
    let _ = std::fs::remove_file(images.join("test-bad-checksum.img"));
    let _ = std::fs::remove_file(images.join("test-bad-checksum.img.sha256"));
}
