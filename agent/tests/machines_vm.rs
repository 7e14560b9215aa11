//! A qemu machine's whole life against a leaf of the testbed: real firmware
//! PXE and iPXE boot into the real kernel and initramfs with the static
//! metalmesh-installer, registration with the hardware the VM really has,
//! allocation, the OS image streamed onto the virtual disk, kexec into the
//! installed kernel, phone home over the tenant VRF, and reclaim back to
//! Waiting with the disk wiped. The event sequence is asserted exactly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use metalmesh_testbed::testing::{Guard, eventually, ok, script, up};

const UUID: &str = "6d6d0000-0000-4000-8000-000001000001";

fn agent(guard: &Guard, args: &[&str]) -> std::process::Output {
    common::agent(&guard.run_dir, args)
}

fn describe(guard: &Guard) -> serde_json::Value {
    let out = agent(guard, &["machine", "describe", UUID, "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

fn console(guard: &Guard) -> String {
    String::from_utf8_lossy(
        &std::fs::read(guard.run_dir.join("machines/m1-1/console.log")).unwrap_or_default(),
    )
    .into_owned()
}

fn events(guard: &Guard) -> Vec<String> {
    common::events(&guard.run_dir, UUID)
}

#[test]
fn qemu_machine_is_installed_phones_home_and_is_reclaimed() {
    let guard = Guard::new();
    script("build-boot", &[]);
    let _testbed = up(&guard.run_dir, 1, 0, 1);
    common::tenant_a(&guard.run_dir, &guard.scratch);

    // Power-on → Waiting, with the hardware qemu gives the VM.
    assert!(
        eventually(Duration::from_secs(90), || describe(&guard)["state"]
            == "Waiting"
            && describe(&guard)["port"] == "m1-1"),
        "not Waiting: {}\n{}",
        describe(&guard),
        console(&guard)
    );
    let machine = describe(&guard);
    let hardware = &machine["hardware"];
    assert_eq!(hardware["uuid"], UUID);
    assert_eq!(hardware["vendor"], "metalmesh");
    assert_eq!(hardware["product"], "testbed-vm");
    assert_eq!(hardware["serial"], "m1-1");
    assert_eq!(hardware["disks"][0]["name"], "vda");
    assert_eq!(
        hardware["disks"][0]["size_bytes"],
        2u64 * 1024 * 1024 * 1024
    );
    assert_eq!(hardware["nics"][0]["mac"], "52:54:00:6d:01:01");
    assert_eq!(hardware["nics"][0]["up"], true);
    assert_eq!(machine["unknown_mac"], false);

    let out = agent(
        &guard,
        &[
            "machine",
            "allocate",
            UUID,
            "--image",
            "testbed-default",
            "--ip",
            "10.0.1.11",
            "--hostname",
            "web-1",
        ],
    );
    ok(&out);
    assert!(
        eventually(Duration::from_secs(90), || describe(&guard)["state"]
            == "Phoned Home"),
        "no phone home: {:?}\n{}",
        events(&guard),
        console(&guard)
    );
    // The serial console shows the installed system running as allocated.
    assert!(
        console(&guard).contains("metalmesh-os: web-1 running with 10.0.1.11/32"),
        "{}",
        console(&guard)
    );

    let out = agent(&guard, &["machine", "free", UUID]);
    ok(&out);
    assert!(
        eventually(Duration::from_secs(120), || describe(&guard)["state"]
            == "Waiting"),
        "not back to Waiting: {:?}\n{}\nagent log:\n{}",
        events(&guard),
        console(&guard),
        agent_log_tail(&guard)
    );
    let disk = std::fs::read(guard.run_dir.join("machines/m1-1/disk.raw")).unwrap();
    assert!(
        disk[..1024 * 1024].iter().all(|b| *b == 0),
        "the reclaimed disk was not wiped"
    );
    assert!(disk[disk.len() - 1024 * 1024..].iter().all(|b| *b == 0));
    assert_eq!(
        events(&guard),
        [
            "PXE Booting",
            "Preparing",
            "Registering",
            "Waiting",
            "Installing",
            "Booting New Kernel",
            "Phoned Home",
            "Machine Reclaim",
            "PXE Booting",
            "Preparing",
            "Registering",
            "Waiting"
        ]
    );
}

/// The last lines of leaf1's agent log, for failure messages.
fn agent_log_tail(guard: &Guard) -> String {
    let log = std::fs::read_to_string(guard.run_dir.join("nodes/leaf1/agent/agent.log"))
        .unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(60)..].join("\n")
}
