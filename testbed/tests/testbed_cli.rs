//! Bad input to the testbed CLI: a clear message, a non-zero exit, and
//! nothing half-created.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use metalmesh_testbed::testing::{Guard, assert_nothing_left, cli, mm_namespaces, stderr};

#[test]
fn unknown_flag_is_rejected() {
    let guard = Guard::new();
    let out = cli(&guard.run_dir, &["up", "--rackz", "2"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--rackz"), "{}", stderr(&out));
    assert!(mm_namespaces().is_empty());
}

#[test]
fn broken_topology_file_names_line_and_key() {
    let guard = Guard::new();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("topology.toml");
    std::fs::write(&path, "racks = 2\nspines = 2\nvm_machinez = 1\n").unwrap();
    let out = cli(
        &guard.run_dir,
        &["up", "--topology", path.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("line 3") && message.contains("vm_machinez"),
        "{message}"
    );
    assert!(message.contains("topology.toml"), "{message}");
    assert_nothing_left(&guard.run_dir);

    std::fs::write(&path, "racks = 2\n\n[leaves.leaf1]\nbgp = \"bird\"\n").unwrap();
    let out = cli(
        &guard.run_dir,
        &["up", "--topology", path.to_str().unwrap()],
    );
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(
        message.contains("line 4") && message.contains("bgp"),
        "{message}"
    );
    assert_nothing_left(&guard.run_dir);

    let out = cli(
        &guard.run_dir,
        &["up", "--topology", "/nonexistent/topology.toml"],
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("/nonexistent/topology.toml"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn commands_on_a_testbed_that_is_not_up() {
    let guard = Guard::new();
    for args in [
        vec!["status"],
        vec!["exec", "leaf1", "--", "true"],
        vec!["kill", "leaf1"],
        vec!["console", "m1-1"],
    ] {
        let out = cli(&guard.run_dir, &args);
        assert!(!out.status.success(), "{args:?}");
        assert!(
            stderr(&out).contains("not up"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    // down with nothing up succeeds.
    let out = cli(&guard.run_dir, &["down"]);
    assert!(out.status.success(), "{}", stderr(&out));
}

#[test]
fn failed_up_leaves_nothing_behind() {
    let guard = Guard::new();
    // A namespace that collides with the plan makes `up` refuse before it creates anything.
    let status = std::process::Command::new("ip")
        .args(["netns", "add", "mm-leaf1"])
        .status()
        .unwrap();
    assert!(status.success());
    let out = cli(&guard.run_dir, &["up", "--racks", "1"]);
    assert!(!out.status.success());
    assert!(stderr(&out).contains("leftover"), "{}", stderr(&out));
    assert!(!guard.run_dir.join("state.json").exists());
    let out = cli(&guard.run_dir, &["down"]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_nothing_left(&guard.run_dir);
}

#[test]
fn qemu_machines_without_boot_artifacts_are_refused() {
    let guard = Guard::new();
    let empty = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(metalmesh_testbed::testing::testbed_binary())
        .arg("--run-dir")
        .arg(&guard.run_dir)
        .args(["up", "--racks", "1", "--vm-machines", "1", "--no-wait"])
        .env("METALMESH_BOOT_DIR", empty.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let message = stderr(&out);
    assert!(message.contains("scripts/build-boot"), "{message}");
    assert!(message.contains("vmlinuz"), "{message}");
    assert!(mm_namespaces().is_empty(), "nothing was built");
}

#[test]
fn down_leaves_a_running_benchmarks_namespaces_alone() {
    let guard = Guard::new();
    let bench = "mm-bench-probe";
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", bench])
        .output();
    let added = std::process::Command::new("ip")
        .args(["netns", "add", bench])
        .output()
        .unwrap();
    assert!(added.status.success());
    let down = cli(&guard.run_dir, &["down"]);
    let survived = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .unwrap();
    let _ = std::process::Command::new("ip")
        .args(["netns", "del", bench])
        .output();
    assert!(down.status.success(), "{}", stderr(&down));
    assert!(
        String::from_utf8_lossy(&survived.stdout).contains(bench),
        "down removed a benchmark's namespace"
    );
}
