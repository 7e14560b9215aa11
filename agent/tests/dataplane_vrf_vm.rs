//! VRF-device mode, proven where VRF devices exist: a qemu VM running
//! Debian's kernel (with its vrf, vxlan, bridge and veth modules) builds two
//! leaves and four tenant machines in namespaces; the agents detect VRF
//! devices, render both tenants as VRFs with VXLAN, and the VM checks
//! reachability across leaves, isolation between tenants and drift repair
//! (`scripts/build-vrf-vm` holds the in-VM script). The same VM runs the
//! leaves with BGP: both through their FRR (`backend = "frr"`, zebra
//! installing the type-5 routes), and one native, one FRR.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use metalmesh_testbed::testing::ok;

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");

/// Boots the VM in `mode` (see `scripts/build-vrf-vm`) and checks that it
/// passed; its console, without kernel lines.
fn boot(mode: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let build = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/build-vrf-vm");
    let out = Command::new(&build)
        .arg(AGENT)
        .arg(dir.path())
        .arg(mode)
        .output()
        .unwrap();
    ok(&out);
    let console = dir.path().join("console.log");
    let mut qemu = Command::new("qemu-system-x86_64")
        .args([
            "-machine",
            "pc",
            "-accel",
            "tcg",
            "-m",
            "1024",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-kernel")
        .arg(dir.path().join("vmlinuz"))
        .arg("-initrd")
        .arg(dir.path().join("vrf-vm.img"))
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .spawn()
        .unwrap();
    // The VM powers itself off when done; bound the wait all the same.
    let deadline = std::time::Instant::now() + Duration::from_secs(420);
    while qemu.try_wait().unwrap().is_none() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(500));
    }
    let _ = qemu.kill();
    let _ = qemu.wait();
    let log = String::from_utf8_lossy(&std::fs::read(&console).unwrap_or_default()).into_owned();
    let tail: Vec<&str> = log.lines().filter(|l| !l.starts_with('[')).collect();
    // A check that failed says so, and nothing after it may pass the test.
    let failed: Vec<&str> = log.lines().filter(|l| l.contains("VRF-VM: FAIL")).collect();
    assert!(
        failed.is_empty(),
        "VM ({mode}) reported {failed:?}:\n{}",
        tail.join("\n")
    );
    assert_eq!(
        log.lines()
            .filter(|l| l.trim_end() == "VRF-VM: PASS")
            .count(),
        1,
        "VM ({mode}) did not pass:\n{}",
        tail[tail.len().saturating_sub(60)..].join("\n")
    );
    assert!(
        log.lines()
            .any(|l| l.contains("kernel mode") && l.trim_end().ends_with("VrfDevice")),
        "{}",
        tail.join("\n")
    );
    tail.join("\n")
}

#[test]
fn vrf_device_mode_in_a_debian_kernel_vm() {
    boot("native");
}

/// The VM's line about `leaf`'s route to the other leaf's tenant machine.
fn tenant_route<'a>(console: &'a str, leaf: &str) -> &'a str {
    console
        .lines()
        .find(|l| l.starts_with(&format!("{leaf}: 10.0.1.")))
        .unwrap_or_else(|| panic!("no route of {leaf} reported:\n{console}"))
}

#[test]
fn two_frr_leaves_configured_by_their_agents_carry_tenants() {
    let console = boot("frr");
    for leaf in ["leaf1", "leaf2"] {
        let route = tenant_route(&console, leaf);
        assert!(route.contains("proto bgp"), "not zebra's: {route}");
    }
}

#[test]
fn a_native_leaf_and_an_frr_leaf_carry_tenants() {
    let console = boot("mixed");
    let native = tenant_route(&console, "leaf1");
    assert!(native.contains("proto 245"), "not the agent's: {native}");
    let frr = tenant_route(&console, "leaf2");
    assert!(frr.contains("proto bgp"), "not zebra's: {frr}");
}
