//! Hardware inventory from sysfs and procfs: DMI identity, CPUs, memory,
//! disks and NICs.

use crate::api::{Disk, Hardware, Nic};
use std::path::{Path, PathBuf};

/// Where to read from: `/` on a real machine, a prepared tree in tests.
#[derive(Debug, Clone)]
pub struct Sources {
    pub root: PathBuf,
}

impl Default for Sources {
    fn default() -> Sources {
        Sources {
            root: PathBuf::from("/"),
        }
    }
}

/// A sysfs value, trimmed, with control characters (the leaf refuses them)
/// replaced by spaces.
fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path)
        .map(|text| {
            text.trim()
                .chars()
                .map(|c| if c.is_control() { ' ' } else { c })
                .collect()
        })
        .unwrap_or_default()
}

impl Sources {
    fn path(&self, relative: &str) -> PathBuf {
        self.root.join(relative.trim_start_matches('/'))
    }

    /// The SMBIOS system UUID, lower case; empty when the firmware has none.
    pub fn uuid(&self) -> String {
        read_trimmed(&self.path("/sys/class/dmi/id/product_uuid")).to_lowercase()
    }

    /// Reads everything. `disks`: the disks to report (and later wipe and
    /// install to); `None` means every real disk the kernel lists.
    pub fn read(&self, disks: Option<&[PathBuf]>) -> Hardware {
        let dmi = |name: &str| read_trimmed(&self.path(&format!("/sys/class/dmi/id/{name}")));
        Hardware {
            uuid: self.uuid(),
            vendor: dmi("sys_vendor"),
            product: dmi("product_name"),
            serial: dmi("product_serial"),
            cpus: self.cpus(),
            memory_bytes: self.memory_bytes(),
            disks: match disks {
                Some(files) => files.iter().map(|f| file_disk(f)).collect(),
                None => self.block_disks(),
            },
            nics: self.nics(),
        }
    }

    fn cpus(&self) -> u32 {
        let text = std::fs::read_to_string(self.path("/proc/cpuinfo")).unwrap_or_default();
        let count = text.lines().filter(|l| l.starts_with("processor")).count();
        u32::try_from(count.max(1)).unwrap_or(u32::MAX)
    }

    fn memory_bytes(&self) -> u64 {
        let text = std::fs::read_to_string(self.path("/proc/meminfo")).unwrap_or_default();
        text.lines()
            .find_map(|line| line.strip_prefix("MemTotal:"))
            .and_then(|rest| rest.split_whitespace().next())
            .and_then(|kib| kib.parse::<u64>().ok())
            .map_or(0, |kib| kib.saturating_mul(1024))
    }

    /// Disks the kernel lists, without loop, ram, optical and device-mapper
    /// devices.
    fn block_disks(&self) -> Vec<Disk> {
        let mut disks = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.path("/sys/block")) else {
            return disks;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if ["loop", "ram", "sr", "dm-", "zram", "md", "nbd"]
                .iter()
                .any(|prefix| name.starts_with(prefix))
            {
                continue;
            }
            let dir = entry.path();
            let sectors: u64 = read_trimmed(&dir.join("size")).parse().unwrap_or(0);
            if sectors == 0 {
                continue;
            }
            let serial = match read_trimmed(&dir.join("device/serial")) {
                s if s.is_empty() => read_trimmed(&dir.join("serial")),
                s => s,
            };
            disks.push(Disk {
                name: name.clone(),
                size_bytes: sectors.saturating_mul(512),
                model: read_trimmed(&dir.join("device/model")),
                serial,
            });
        }
        disks.sort_by(|a, b| a.name.cmp(&b.name));
        disks
    }

    fn nics(&self) -> Vec<Nic> {
        let mut nics = Vec::new();
        let Ok(entries) = std::fs::read_dir(self.path("/sys/class/net")) else {
            return nics;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let dir = entry.path();
            // Only Ethernet (type 1) with a real address.
            if name == "lo" || read_trimmed(&dir.join("type")) != "1" {
                continue;
            }
            let mac = read_trimmed(&dir.join("address")).to_lowercase();
            if mac.is_empty() || mac == "00:00:00:00:00:00" {
                continue;
            }
            nics.push(Nic {
                name,
                mac,
                up: read_trimmed(&dir.join("carrier")) == "1",
            });
        }
        nics.sort_by(|a, b| a.name.cmp(&b.name));
        nics
    }
}

fn file_disk(path: &Path) -> Disk {
    Disk {
        name: path.display().to_string(),
        size_bytes: std::fs::metadata(path).map(|m| m.len()).unwrap_or(0),
        model: "disk image file".into(),
        serial: String::new(),
    }
}

/// The kernel name of a disk as a device path (`vda` → `/dev/vda`), or the
/// file path itself for simulated disks.
pub fn disk_path(disk: &Disk) -> PathBuf {
    if disk.name.starts_with('/') {
        PathBuf::from(&disk.name)
    } else {
        PathBuf::from("/dev").join(&disk.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_machine_from_sysfs_and_procfs() {
        let root = tempfile::tempdir().unwrap();
        let put = |path: &str, text: &str| {
            let file = root.path().join(path.trim_start_matches('/'));
            std::fs::create_dir_all(file.parent().unwrap()).unwrap();
            std::fs::write(file, text).unwrap();
        };
        put(
            "/sys/class/dmi/id/product_uuid",
            "6D6D0000-0000-4000-8000-000001000001\n",
        );
        put("/sys/class/dmi/id/sys_vendor", "QEMU\n");
        put(
            "/proc/cpuinfo",
            "processor\t: 0\nmodel name: x\n\nprocessor\t: 1\n",
        );
        put(
            "/proc/meminfo",
            "MemTotal:        2048000 kB\nMemFree: 1 kB\n",
        );
        put("/sys/block/vda/size", "4194304\n");
        put("/sys/block/vda/serial", "disk-1\n");
        put("/sys/block/loop0/size", "100\n");
        put("/sys/class/net/eth0/type", "1\n");
        put("/sys/class/net/eth0/address", "52:54:00:6D:01:01\n");
        put("/sys/class/net/eth0/carrier", "1\n");
        put("/sys/class/net/lo/type", "772\n");
        let hardware = Sources {
            root: root.path().to_path_buf(),
        }
        .read(None);
        assert_eq!(hardware.uuid, "6d6d0000-0000-4000-8000-000001000001");
        assert_eq!(hardware.vendor, "QEMU");
        assert_eq!(hardware.cpus, 2);
        assert_eq!(hardware.memory_bytes, 2_048_000 * 1024);
        assert_eq!(hardware.disks.len(), 1);
        assert_eq!(hardware.disks[0].size_bytes, 2 * 1024 * 1024 * 1024);
        assert_eq!(hardware.disks[0].serial, "disk-1");
        assert_eq!(hardware.nics.len(), 1);
        assert_eq!(hardware.nics[0].mac, "52:54:00:6d:01:01");
        assert!(hardware.nics[0].up);
    }
}
