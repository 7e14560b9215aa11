//! Writing the machine's identity into the freshly installed root: host
//! name, network, phone-home address, SSH keys and user data; and fetching
//! the installed kernel to boot.

use crate::api::Allocation;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The gateway every routed machine port has (the leaf's side of the /32).
pub const GATEWAY: &str = "169.254.0.1";

#[derive(Debug, thiserror::Error)]
pub enum ConfigureError {
    #[error("{what}: {detail}")]
    Command { what: String, detail: String },
    #[error("{path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("the image has no {0}")]
    Missing(String),
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> ConfigureError + '_ {
    move |source| ConfigureError::Io {
        path: path.display().to_string(),
        source,
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), ConfigureError> {
    let what = format!("{program} {}", args.join(" "));
    let output =
        Command::new(program)
            .args(args)
            .output()
            .map_err(|e| ConfigureError::Command {
                what: what.clone(),
                detail: e.to_string(),
            })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(ConfigureError::Command {
            what,
            detail: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Where the installed system phones home: the leaf through its gateway
/// address on the tenant network.
pub fn phone_home_url(uuid: &str, port: u16) -> String {
    format!("http://{GATEWAY}:{port}/v1/machines/{uuid}/phone-home")
}

/// The installed root, mounted for as long as this lives.
#[derive(Debug)]
pub struct MountedRoot {
    pub dir: PathBuf,
}

impl MountedRoot {
    /// Mounts the filesystem on `disk` (a block device, or a file through a
    /// loop device) at `dir`.
    pub fn mount(disk: &Path, dir: &Path) -> Result<MountedRoot, ConfigureError> {
        fs::create_dir_all(dir).map_err(io(dir))?;
        let disk_text = disk.display().to_string();
        let dir_text = dir.display().to_string();
        let mut args = vec!["-t", "ext4"];
        if !disk_text.starts_with("/dev/") {
            args.extend(["-o", "loop"]);
        }
        args.extend([disk_text.as_str(), dir_text.as_str()]);
        run("mount", &args)?;
        Ok(MountedRoot {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.dir.join(relative.trim_start_matches('/'))
    }

    fn write(&self, relative: &str, text: &str, mode: u32) -> Result<(), ConfigureError> {
        let path = self.path(relative);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io(parent))?;
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&path)
            .map_err(io(&path))?;
        file.write_all(text.as_bytes()).map_err(io(&path))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode)).map_err(io(&path))
    }

    /// Writes what makes the installed system this machine.
    pub fn configure(
        &self,
        uuid: &str,
        mac: &str,
        allocation: &Allocation,
        phone_home_port: u16,
    ) -> Result<(), ConfigureError> {
        self.write(
            "/etc/hostname",
            &format!("{}\n", allocation.hostname),
            0o644,
        )?;
        self.write(
            "/etc/metalmesh/network",
            &format!(
                "MAC={mac}\nADDRESS={}/32\nGATEWAY={GATEWAY}\n",
                allocation.ip
            ),
            0o644,
        )?;
        self.write(
            "/etc/metalmesh/machine",
            &format!(
                "UUID={uuid}\nPHONE_HOME={}\n",
                phone_home_url(uuid, phone_home_port)
            ),
            0o644,
        )?;
        let ssh = self.path("/root/.ssh");
        fs::create_dir_all(&ssh).map_err(io(&ssh))?;
        fs::set_permissions(&ssh, fs::Permissions::from_mode(0o700)).map_err(io(&ssh))?;
        let mut keys = allocation.ssh_keys.join("\n");
        if !keys.is_empty() {
            keys.push('\n');
        }
        self.write("/root/.ssh/authorized_keys", &keys, 0o600)?;
        self.write("/etc/metalmesh/user-data", &allocation.user_data, 0o600)?;
        Ok(())
    }

    /// Copies the installed kernel and initramfs to `into` (they must
    /// outlive the mount) and returns their paths and the kernel command line.
    pub fn boot_files(&self, into: &Path) -> Result<(PathBuf, PathBuf, String), ConfigureError> {
        fs::create_dir_all(into).map_err(io(into))?;
        let mut copied = Vec::new();
        for name in ["vmlinuz", "initrd.img"] {
            let source = self.path(&format!("/boot/{name}"));
            if !source.is_file() {
                return Err(ConfigureError::Missing(format!("/boot/{name}")));
            }
            let target = into.join(name);
            fs::copy(&source, &target).map_err(io(&source))?;
            copied.push(target);
        }
        let cmdline = fs::read_to_string(self.path("/boot/cmdline"))
            .map(|text| text.trim().to_string())
            .unwrap_or_default();
        let initrd = copied.pop().unwrap_or_default();
        let kernel = copied.pop().unwrap_or_default();
        Ok((kernel, initrd, cmdline))
    }

    /// Unmounts (also done, best effort, on drop).
    pub fn unmount(self) -> Result<(), ConfigureError> {
        let dir = self.dir.display().to_string();
        std::mem::forget(self);
        run("umount", &[&dir])
    }
}

impl Drop for MountedRoot {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.dir).output();
    }
}
