//! qemu virtual machines: a real x86 PC with iPXE network firmware, a virtio
//! disk and NIC on a tap device in its leaf's provisioning bridge, and a serial
//! console that is both logged to a file and reachable on a unix socket.

use std::path::Path;

use crate::daemon::DaemonSpec;
use crate::plan::{Machine, RunDir};

pub(crate) const QEMU: &str = "qemu-system-x86_64";
/// iPXE option ROM for virtio-net from Debian's `ipxe-qemu` (legacy PXE + EFI);
/// qemu loads it by default from its firmware path.
pub(crate) const VIRTIO_NET_ROM: &str = "/usr/lib/ipxe/qemu/efi-virtio.rom";
/// SeaBIOS's `etc/sercon-port` value: the I/O port of COM1 (0x3f8), as a
/// little-endian 16-bit integer.
pub(crate) const SERCON_PORT: [u8; 2] = 0x3f8u16.to_le_bytes();
/// Size of each machine's virtual disk (sparse).
pub(crate) const DISK_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// The qemu daemon of one machine. TCG only: this machine kind has no usable KVM.
pub(crate) fn daemon(
    machine: &Machine,
    run: &RunDir,
    memory_mb: u32,
    namespace: &str,
) -> DaemonSpec {
    let dir = run.machine_dir(&machine.name);
    let pidfile = dir.join("qemu.pid");
    let p = |path: &Path| path.display().to_string();
    let argv = vec![
        QEMU.to_string(),
        "-name".into(),
        machine.name.clone(),
        "-machine".into(),
        "pc".into(),
        "-accel".into(),
        "tcg".into(),
        "-m".into(),
        memory_mb.to_string(),
        "-smp".into(),
        "1".into(),
        "-nodefaults".into(),
        "-display".into(),
        "none".into(),
        "-smbios".into(),
        format!(
            "type=1,manufacturer=metalmesh,product=testbed-vm,serial={},uuid={}",
            machine.name, machine.uuid
        ),
        "-chardev".into(),
        format!(
            "socket,id=console,path={},server=on,wait=off,logfile={},logappend=on",
            p(&run.console_socket(&machine.name)),
            p(&run.console_log(&machine.name))
        ),
        "-serial".into(),
        "chardev:console".into(),
        "-qmp".into(),
        format!(
            "unix:{},server=on,wait=off",
            p(&run.qmp_socket(&machine.name))
        ),
        "-drive".into(),
        format!("file={},format=raw,if=virtio", p(&run.disk(&machine.name))),
        "-netdev".into(),
        format!(
            "tap,id=pxe,ifname={},script=no,downscript=no",
            machine.switch_port
        ),
        "-device".into(),
        format!("virtio-net-pci,netdev=pxe,mac={}", machine.mac),
        // Network first, always: the leaf decides what the machine boots.
        // A machine that found nothing to boot retries after 5 s, as real
        // servers in a PXE cloud do, instead of SeaBIOS's default minute.
        "-boot".into(),
        "order=n,reboot-timeout=5000".into(),
        // SeaBIOS mirrors its text console (and so iPXE's messages) to the
        // serial port: the console log shows the firmware at work.
        "-vga".into(),
        "std".into(),
        "-fw_cfg".into(),
        format!(
            "name=etc/sercon-port,file={}",
            p(&sercon_file(run, machine))
        ),
        "-daemonize".into(),
        "-pidfile".into(),
        p(&pidfile),
    ];
    DaemonSpec {
        name: "qemu".into(),
        namespace: namespace.to_string(),
        argv,
        pidfile,
        output: dir.join("qemu.log"),
        detach: false,
    }
}

/// File holding [`SERCON_PORT`] for qemu's `-fw_cfg`.
pub(crate) fn sercon_file(run: &RunDir, machine: &Machine) -> std::path::PathBuf {
    run.machine_dir(&machine.name).join("sercon-port.bin")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::Plan;
    use crate::topology::Topology;

    #[test]
    fn vm_boots_from_network_with_its_mac_and_uuid() {
        let plan = Plan::new(&Topology {
            vm_machines: 1,
            ..Topology::default()
        });
        let machine = plan.machine("m1-1").unwrap();
        let spec = daemon(machine, &RunDir::new("/r"), 512, "mm-leaf1");
        let line = spec.argv.join(" ");
        assert!(line.contains("mac=52:54:00:6d:01:01"), "{line}");
        assert!(line.contains("ifname=m1-1"), "{line}");
        assert!(
            line.contains("uuid=6d6d0000-0000-4000-8000-000001000001"),
            "{line}"
        );
        assert!(
            line.contains("logfile=/r/machines/m1-1/console.log"),
            "{line}"
        );
        assert!(line.contains("-accel tcg"), "{line}");
        assert_eq!(spec.namespace, "mm-leaf1");
    }
}
