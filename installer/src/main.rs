//! `metalmesh-installer`: the in-machine installer (see the library's
//! crate documentation). Built as a static binary for the
//! PXE initramfs.

use metalmesh_installer::{self as installer, Options, Outcome, Simulate, hardware};
use std::path::PathBuf;
use std::time::Duration;

const USAGE: &str = "usage: metalmesh-installer [--leaf URL] [--interface NIC] [--heartbeat-ms N]
                           [--simulate --uuid UUID --disk FILE] [--work-dir DIR]";

fn main() {
    let mut options = Options {
        leaf: None,
        interface: None,
        heartbeat: Duration::from_secs(2),
        sources: hardware::Sources::default(),
        simulate: None,
        work_dir: PathBuf::from("/run/metalmesh-installer"),
    };
    let (mut simulate, mut uuid, mut disk) = (false, None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let mut value = |name: &str| {
            args.next().unwrap_or_else(|| {
                eprintln!("metalmesh-installer: {name} needs a value\n{USAGE}");
                std::process::exit(2)
            })
        };
        match arg.as_str() {
            "--leaf" => options.leaf = Some(value("--leaf")),
            "--interface" => options.interface = Some(value("--interface")),
            "--heartbeat-ms" => {
                let text = value("--heartbeat-ms");
                let Ok(ms) = text.parse::<u64>() else {
                    eprintln!("metalmesh-installer: --heartbeat-ms {text} is not a number");
                    std::process::exit(2)
                };
                options.heartbeat = Duration::from_millis(ms.max(100));
            }
            "--simulate" => simulate = true,
            "--uuid" => uuid = Some(value("--uuid").to_lowercase()),
            "--disk" => disk = Some(PathBuf::from(value("--disk"))),
            "--work-dir" => options.work_dir = PathBuf::from(value("--work-dir")),
            "--help" | "-h" => {
                println!("{USAGE}");
                return;
            }
            other => {
                eprintln!("metalmesh-installer: unknown argument {other}\n{USAGE}");
                std::process::exit(2)
            }
        }
    }
    if simulate {
        let (Some(uuid), Some(disk)) = (uuid, disk) else {
            eprintln!("metalmesh-installer: --simulate needs --uuid and --disk\n{USAGE}");
            std::process::exit(2)
        };
        if !disk.is_file() {
            eprintln!(
                "metalmesh-installer: disk image {} does not exist",
                disk.display()
            );
            std::process::exit(2)
        }
        options.simulate = Some(Simulate { uuid, disk });
    }
    loop {
        match installer::run_once(&options) {
            Outcome::Reboot if options.simulate.is_some() => {
                eprintln!("metalmesh-installer: simulated reboot");
                std::thread::sleep(Duration::from_secs(1));
            }
            Outcome::Reboot => {
                installer::reboot();
                std::thread::sleep(Duration::from_secs(60));
            }
        }
    }
}
