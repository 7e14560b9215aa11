//! A qemu machine with Debian's iPXE firmware PXE-boots on its leaf's
//! provisioning bridge: a capture on `mm-pxe` sees its DHCPDISCOVER.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::BufRead;
use std::process::{Command, Stdio};
use std::time::Instant;

use metalmesh_testbed::testing::{Guard, assert_nothing_left, cli, stderr};
use metalmesh_testbed::{MachineKind, Overrides, Quiet, Testbed, Topology};

#[test]
fn vm_firmware_sends_dhcpdiscover_on_mm_pxe() {
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
    let testbed = Testbed::up(&guard.run_dir, &topology, &mut Quiet).unwrap();
    let machine = testbed.plan().machine("m1-1").unwrap().clone();
    assert_eq!(machine.kind, MachineKind::Vm);

    // Power the machine off, start the capture, power it on: the capture
    // cannot miss the firmware's first DISCOVER.
    let off = cli(&guard.run_dir, &["kill", "m1-1"]);
    assert!(off.status.success(), "{}", stderr(&off));
    let filter = format!(
        "ether src {} and udp src port 68 and udp dst port 67 and udp[8] = 1",
        machine.mac
    );
    let mut capture = Command::new("ip")
        .args([
            "netns", "exec", "mm-leaf1", "timeout", "90", "tcpdump", "-l", "-n", "-v",
        ])
        .args(["-i", "mm-pxe", "-c", "1", &filter])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // tcpdump prints "listening on" once its socket is open.
    let mut stderr_lines = std::io::BufReader::new(capture.stderr.take().unwrap()).lines();
    let ready = stderr_lines
        .by_ref()
        .take(20)
        .map_while(Result::ok)
        .any(|line| line.contains("listening on"));
    assert!(ready, "tcpdump never started listening");
    let rest_of_stderr = std::thread::spawn(move || {
        stderr_lines
            .map_while(Result::ok)
            .collect::<Vec<_>>()
            .join("\n")
    });
    let powered_on = Instant::now();
    let on = cli(&guard.run_dir, &["start", "m1-1"]);
    assert!(on.status.success(), "{}", stderr(&on));
    let output = capture.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let errors = rest_of_stderr.join().unwrap_or_default();
    assert!(
        output.status.success(),
        "no DHCPDISCOVER from {} within 90 s: {text}{errors}",
        machine.mac,
    );
    assert!(
        text.contains("DHCP-Message (53), length 1: Discover"),
        "{text}"
    );
    eprintln!(
        "DHCPDISCOVER {:.1} s after power-on",
        powered_on.elapsed().as_secs_f64()
    );

    // The serial console log shows the firmware (SeaBIOS mirrors to COM1).
    let log = cli(&guard.run_dir, &["console", "m1-1", "--log"]);
    assert!(log.status.success(), "{}", stderr(&log));
    assert!(String::from_utf8_lossy(&log.stdout).contains("iPXE"));
    let status = testbed.status();
    let m = status.machines.iter().find(|m| m.name == "m1-1").unwrap();
    assert!(m.running);
    assert!(m.console_log.as_deref().unwrap().ends_with("console.log"));

    let down = cli(&guard.run_dir, &["down"]);
    assert!(down.status.success(), "{}", stderr(&down));
    assert_nothing_left(&guard.run_dir);
}
