//! `metalmesh-installer`: runs inside each server from its PXE initramfs (or,
//! with `--simulate`, in a network namespace against a disk-image file).
//!
//! It takes an address on the provisioning network (DHCP), reads the
//! hardware, announces the machine's UUID over LLDP on every NIC, registers
//! with its leaf, wipes the disks, reports `Waiting` and heartbeats until the
//! leaf hands it an allocation; then it streams the image onto the first
//! disk (checking its SHA-256), writes host name, network, SSH keys and user
//! data into the new root, reports `Booting New Kernel` and kexecs the
//! installed kernel. Any fatal error is reported as `Crashed` with its text,
//! then the machine reboots. Blocking I/O only: no async runtime.

pub mod announce;
pub mod api;
pub mod client;
pub mod configure;
pub mod dhcp;
pub mod disk;
pub mod hardware;

use api::{Allocation, Directive, EventReport, Registration};
use std::cell::RefCell;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

/// The leaf's HTTP port (boot files and the installer API).
pub const LEAF_HTTP_PORT: u16 = 8070;
/// Attempts for calls that must get through (about five minutes).
const ATTEMPTS: u32 = 60;

/// How the installer was started.
#[derive(Debug, Clone)]
pub struct Options {
    /// The leaf's base URL; default: `http://<DHCP server>:8070`.
    pub leaf: Option<String>,
    /// NIC to take the provisioning address on; default: the first with carrier.
    pub interface: Option<String>,
    pub heartbeat: Duration,
    pub sources: hardware::Sources,
    pub simulate: Option<Simulate>,
    /// Scratch directory (mount point, copied kernel).
    pub work_dir: PathBuf,
}

/// `--simulate`: a namespace machine with a disk-image file.
#[derive(Debug, Clone)]
pub struct Simulate {
    pub uuid: String,
    pub disk: PathBuf,
}

/// Why an installation attempt ended.
#[derive(Debug)]
pub enum Outcome {
    /// The machine should reboot (planned, reclaimed, or after a crash).
    Reboot,
}

fn log(message: &str) {
    eprintln!("metalmesh-installer: {message}");
}

/// Runs until the machine reboots (simulated: returns, and the caller
/// starts over as a rebooted machine would).
pub fn run_once(options: &Options) -> Outcome {
    let interface = match dhcp::choose_interface(options.interface.as_deref()) {
        Ok(interface) => interface,
        Err(error) => {
            log(&format!("no NIC to boot from: {error}"));
            std::thread::sleep(Duration::from_secs(5));
            return Outcome::Reboot;
        }
    };
    let dhcp = match dhcp::acquire(&interface, &options.work_dir) {
        Ok(dhcp) => dhcp,
        Err(error) => {
            log(&format!("DHCP on {interface}: {error}"));
            std::thread::sleep(Duration::from_secs(2));
            return Outcome::Reboot;
        }
    };
    let leaf = options
        .leaf
        .clone()
        .unwrap_or_else(|| format!("http://{}:{LEAF_HTTP_PORT}", dhcp.server));
    let disks = options.simulate.as_ref().map(|s| vec![s.disk.clone()]);
    let mut hardware = options.sources.read(disks.as_deref());
    if let Some(simulate) = &options.simulate {
        hardware.uuid = simulate.uuid.clone();
    }
    if hardware.uuid.is_empty() {
        log("the firmware reports no system UUID; cannot register");
        std::thread::sleep(Duration::from_secs(30));
        return Outcome::Reboot;
    }
    let uuid = hardware.uuid.clone();
    log(&format!(
        "machine {uuid}, leaf {leaf}, {} disk(s), {} NIC(s)",
        hardware.disks.len(),
        hardware.nics.len()
    ));
    announce::start(
        uuid.clone(),
        uuid.clone(),
        hardware
            .nics
            .iter()
            .filter_map(|nic| {
                Some(announce::AnnouncePort {
                    name: nic.name.clone(),
                    ifindex: metalmesh_packet_socket::interface_index(&nic.name).ok()?,
                    mac: metalmesh_lldp::parse_mac(&nic.mac)?,
                })
            })
            .collect(),
    );
    let Some(mac) = hardware
        .nics
        .iter()
        .find(|nic| nic.name == interface)
        .map(|nic| nic.mac.clone())
    else {
        // The installed system would not know which NIC to configure.
        log(&format!(
            "{interface} is not an Ethernet NIC of this machine"
        ));
        std::thread::sleep(Duration::from_secs(30));
        return Outcome::Reboot;
    };
    let session = Session {
        dhcp: RefCell::new(Some(dhcp)),
        leaf,
        uuid,
        mac,
        interface,
        options: options.clone(),
        disks: hardware.disks.iter().map(hardware::disk_path).collect(),
        reboot_asked: std::cell::Cell::new(false),
    };
    session.lifecycle(Registration {
        hardware,
        installer: env!("CARGO_PKG_VERSION").to_string(),
    })
}

struct Session {
    /// The running DHCP client; gone once the installed system "boots".
    dhcp: RefCell<Option<dhcp::DhcpClient>>,
    leaf: String,
    uuid: String,
    mac: String,
    interface: String,
    options: Options,
    disks: Vec<PathBuf>,
    /// The leaf answered a report with a reboot (its install watchdog saw
    /// no progress): the installation stops at its next step.
    reboot_asked: std::cell::Cell<bool>,
}

impl Session {
    fn url(&self, path: &str) -> String {
        format!("{}/v1/machines/{}{path}", self.leaf, self.uuid)
    }

    fn event(&self, event: &str, message: &str) {
        let report = EventReport {
            event: event.to_string(),
            message: message.to_string(),
        };
        match client::post_json_retrying(&self.url("/events"), &report, ATTEMPTS) {
            Ok(directive) => self.note(&directive),
            Err(error) => log(&format!("reporting {event}: {error}")),
        }
    }

    /// Remembers a reboot the leaf asked for in answer to a report.
    fn note(&self, directive: &Directive) {
        if *directive == Directive::Reboot {
            log("the leaf asks for a reboot");
            self.reboot_asked.set(true);
        }
    }

    /// A progress report: one attempt, so a slow leaf never holds up the
    /// image stream (the next report or event carries on).
    fn progress(&self, message: &str) {
        let report = EventReport {
            event: "Installing".to_string(),
            message: message.to_string(),
        };
        match client::post_json(&self.url("/events"), &report) {
            Ok(directive) => self.note(&directive),
            Err(error) => log(&format!("progress report: {error}")),
        }
    }

    /// Reports `Crashed` with the reason and reboots.
    fn crash(&self, reason: &str) -> Outcome {
        log(&format!("fatal: {reason}"));
        self.event("Crashed", reason);
        Outcome::Reboot
    }

    fn lifecycle(&self, registration: Registration) -> Outcome {
        self.event("Preparing", "installer started");
        let register_url = format!("{}/v1/machines/register", self.leaf);
        let mut directive: Directive =
            match client::post_json_retrying(&register_url, &registration, ATTEMPTS) {
                Ok(directive) => directive,
                Err(error) => return self.crash(&format!("registration failed: {error}")),
            };
        loop {
            match directive {
                Directive::Wipe { mode } => {
                    let mut done = Vec::new();
                    for disk in &self.disks {
                        match disk::wipe(disk, mode) {
                            Ok(carried_out) => {
                                done.push(format!("{} ({})", disk.display(), carried_out.as_str()))
                            }
                            Err(error) => {
                                return self.crash(&format!("wiping {}: {error}", disk.display()));
                            }
                        }
                    }
                    log(&format!(
                        "disks wiped: {}; waiting for an allocation",
                        done.join(", ")
                    ));
                    self.event("Waiting", &format!("disks wiped: {}", done.join(", ")));
                }
                Directive::Install { allocation } => return self.install(&allocation),
                Directive::Reboot => {
                    log("the leaf asks for a reboot");
                    return Outcome::Reboot;
                }
                Directive::Wait | Directive::None => {}
            }
            // The leaf holds a heartbeat open until it has something to say
            // (or a few seconds passed); only a quick answer needs a pause.
            let started = std::time::Instant::now();
            directive = match client::post_json(&self.url("/heartbeat"), &serde_json::json!({})) {
                Ok(directive) => directive,
                Err(error) => {
                    log(&format!("heartbeat: {error}"));
                    Directive::Wait
                }
            };
            if directive == Directive::Wait {
                std::thread::sleep(self.options.heartbeat.saturating_sub(started.elapsed()));
            }
        }
    }

    fn install(&self, allocation: &Allocation) -> Outcome {
        log(&format!(
            "installing {} as {} ({})",
            allocation.image, allocation.hostname, allocation.ip
        ));
        self.event(
            "Installing",
            &format!("wiping disks, then streaming {}", allocation.image),
        );
        let Some(target) = self.disks.first() else {
            return self.crash("no disk to install to");
        };
        // Before an install, signatures only: the image overwrites the
        // start of the disk, and the full wipe (if any) was the reclaim's.
        for disk in &self.disks {
            if let Err(error) = disk::wipe(disk, disk::WipeMode::Signatures) {
                return self.crash(&format!("wiping {}: {error}", disk.display()));
            }
        }
        if let Err(error) = self.stream_image(allocation, target) {
            return self.crash(&error);
        }
        if self.reboot_asked.get() {
            return Outcome::Reboot;
        }
        let mount_dir = self.options.work_dir.join("root");
        let boot_dir = self.options.work_dir.join("boot");
        let (kernel, initrd, cmdline) = match (|| {
            let root = configure::MountedRoot::mount(target, &mount_dir)?;
            root.configure(&self.uuid, &self.mac, allocation, LEAF_HTTP_PORT)?;
            let boot = root.boot_files(&boot_dir)?;
            root.unmount()?;
            Ok::<_, configure::ConfigureError>(boot)
        })() {
            Ok(found) => found,
            Err(error) => return self.crash(&format!("configuring the installed system: {error}")),
        };
        self.event(
            "Booting New Kernel",
            &format!("{} {}/32", allocation.hostname, allocation.ip),
        );
        match &self.options.simulate {
            Some(_) => self.simulated_boot(&allocation.hostname, allocation),
            None => {
                let append = format!("{cmdline} metalmesh.uuid={}", self.uuid);
                kexec(&kernel, &initrd, append.trim());
                // kexec returned: it failed; a reboot is the fallback.
                Outcome::Reboot
            }
        }
    }

    /// Streams the image, retrying interrupted transfers (the leaf may be
    /// restarting); a wrong checksum is fatal at once.
    fn stream_image(
        &self,
        allocation: &Allocation,
        target: &std::path::Path,
    ) -> Result<(), String> {
        let mut last_error = String::new();
        for attempt in 1..=5 {
            let mut response = match client::request("GET", &allocation.image_url, None) {
                Ok(response) if response.status == 200 => response,
                // The leaf restarting or overloaded: try again.
                Ok(response) if response.status >= 500 => {
                    last_error = format!("HTTP {}", response.status);
                    log(&format!("image download attempt {attempt}: {last_error}"));
                    std::thread::sleep(Duration::from_secs(2));
                    continue;
                }
                Ok(response) => {
                    return Err(format!(
                        "image {}: HTTP {}",
                        allocation.image_url, response.status
                    ));
                }
                Err(error) => {
                    last_error = error.to_string();
                    log(&format!("image download attempt {attempt}: {error}"));
                    std::thread::sleep(Duration::from_secs(2));
                    continue;
                }
            };
            let size = response.content_length;
            let result = disk::write_image(
                &mut response,
                size,
                target,
                &allocation.image_sha256,
                |written, total| {
                    let text = match total {
                        Some(total) => format!("written {} of {} MiB", written >> 20, total >> 20),
                        None => format!("written {} MiB", written >> 20),
                    };
                    self.progress(&text);
                },
            );
            match result {
                Ok(_) => return Ok(()),
                Err(
                    error @ (disk::DiskError::Checksum { .. } | disk::DiskError::TooLarge { .. }),
                ) => return Err(error.to_string()),
                Err(error) => {
                    last_error = error.to_string();
                    log(&format!("image download attempt {attempt}: {error}"));
                    std::thread::sleep(Duration::from_secs(2));
                }
            }
        }
        Err(format!("image {}: {last_error}", allocation.image_url))
    }

    /// `--simulate`: what the installed system does at boot, done here
    /// instead of kexec: configure the NIC as the allocation says (what the
    /// installed root was given) and phone home until told to reboot.
    fn simulated_boot(&self, hostname: &str, allocation: &Allocation) -> Outcome {
        log(&format!("simulated boot of {hostname}"));
        // The installer's DHCP client ends here, as it does at kexec.
        self.dhcp.borrow_mut().take();
        let nic = self.interface.as_str();
        let address = format!("{}/32", allocation.ip);
        for args in [
            vec!["addr", "flush", "dev", nic],
            vec!["addr", "add", address.as_str(), "dev", nic],
            vec![
                "route",
                "add",
                "default",
                "via",
                configure::GATEWAY,
                "dev",
                nic,
                "onlink",
            ],
        ] {
            let _ = Command::new("ip").args(&args).output();
        }
        let url = configure::phone_home_url(&self.uuid, LEAF_HTTP_PORT);
        loop {
            match client::post_json::<_, Directive>(
                &url,
                &serde_json::json!({"hostname": hostname}),
            ) {
                Ok(Directive::Reboot) => {
                    log("phone home: the leaf asks for a reboot (reclaim)");
                    let _ = Command::new("ip")
                        .args(["addr", "flush", "dev", nic])
                        .output();
                    let _ = Command::new("ip")
                        .args(["route", "flush", "dev", nic])
                        .output();
                    return Outcome::Reboot;
                }
                Ok(_) => {}
                Err(error) => log(&format!("phone home: {error}")),
            }
            std::thread::sleep(self.options.heartbeat);
        }
    }
}

/// Loads and boots the installed kernel; returns only if that failed.
fn kexec(kernel: &std::path::Path, initrd: &std::path::Path, append: &str) {
    // `--no-checks`: the image was verified against its checksum as it
    // was streamed; purgatory re-hashing the loaded kernel and initramfs
    // at `kexec -e` guards only against memory corruption in the second
    // between load and execute, and costs seconds on slow CPUs.
    let load = Command::new("kexec")
        .arg("-l")
        .arg("--no-checks")
        .arg(kernel)
        .arg(format!("--initrd={}", initrd.display()))
        .arg(format!("--append={append}"))
        .output();
    match load {
        Ok(output) if output.status.success() => {
            let _ = Command::new("sync").output();
            let executed = Command::new("kexec").arg("-e").output();
            log(&format!("kexec -e returned: {executed:?}"));
        }
        Ok(output) => log(&format!(
            "kexec -l failed: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        )),
        Err(error) => log(&format!("kexec: {error}")),
    }
}

/// Reboots a real machine (never returns on success).
pub fn reboot() {
    let _ = Command::new("sync").output();
    let _ = Command::new("reboot").arg("-f").output();
    // Without a reboot command, the kernel's sysrq is the last resort.
    let _ = std::fs::write("/proc/sysrq-trigger", "b");
}
