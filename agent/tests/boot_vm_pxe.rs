//! A qemu machine with Debian's iPXE firmware boots from its leaf: DHCP from
//! the agent, the iPXE script, kernel and initramfs over HTTP, and the
//! initramfs runs (its serial console says so).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use metalmesh_testbed::testing::{Guard, cli, eventually, ok, script};
use metalmesh_testbed::{Overrides, Quiet, Testbed, Topology};
use serde_json::Value;

const AGENT: &str = env!("CARGO_BIN_EXE_metalmesh-agent");

#[test]
fn qemu_machine_pxe_boots_the_initramfs() {
    script("build-boot", &[]);
    let guard = Guard::new();
    let topology = Topology::load(
        None,
        &Overrides {
            racks: Some(1),
            vm_machines: Some(1),
            ..Overrides::default()
        },
    )
    .unwrap();
    let started = Instant::now();
    let testbed = Testbed::up(&guard.run_dir, &topology, &mut Quiet).unwrap();
    let console = |run_dir: &Path| {
        String::from_utf8_lossy(&cli(run_dir, &["console", "m1-1", "--log"]).stdout).into_owned()
    };
    assert!(
        eventually(Duration::from_secs(150), || console(&guard.run_dir)
            .contains("METALMESH-INITRAMFS-OK")),
        "the initramfs never ran; console:\n{}",
        console(&guard.run_dir)
    );
    eprintln!(
        "power-on to initramfs: {:.1} s",
        started.elapsed().as_secs_f64()
    );
    let log = console(&guard.run_dir);
    assert!(log.contains("iPXE"), "firmware output missing");
    assert!(
        log.contains("metalmesh.mac=52:54:00:6d:01:01"),
        "kernel command line from our script missing"
    );

    // The lease was handed to the firmware's iPXE and is durable in the agent's store.
    let out = cli(
        &guard.run_dir,
        &["exec", "leaf1", "--", AGENT, "leases", "-o", "json"],
    );
    ok(&out);
    let leases: Value = serde_json::from_slice(&out.stdout).unwrap();
    let lease = leases
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["mac"] == "52:54:00:6d:01:01")
        .cloned()
        .expect("no lease for the machine");
    assert_eq!(lease["state"], "bound");
    // The initramfs's installer renews the lease with udhcpc right after
    // boot, so the stored kind is the latest client's.
    assert!(
        lease["client_kind"] == "ipxe" || lease["client_kind"] == "plain",
        "{lease}"
    );
    assert!(lease["ip"].as_str().unwrap().starts_with("10.100.1."));
    let agent_log =
        std::fs::read_to_string(guard.run_dir.join("nodes/leaf1/agent/agent.log")).unwrap();
    assert!(
        agent_log.lines().any(|line| line.contains("PXE Booting")
            && line.contains("52:54:00:6d:01:01")
            && line.contains("ipxe")),
        "no PXE Booting event from the firmware's iPXE"
    );
    assert!(
        agent_log.contains("uri=/boot/vmlinuz status=200"),
        "kernel not fetched over HTTP"
    );
    assert!(agent_log.contains("uri=/boot/initramfs.img status=200"));
    drop(testbed);
}
