//! Errors of the testbed, each with enough context to act on.

use std::path::{Path, PathBuf};

use crate::topology::TopologyError;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("metalmesh-testbed must run as root (it creates network namespaces)")]
    NotRoot,
    #[error("`{program}` is missing (package {package}); run scripts/setup")]
    MissingProgram {
        program: String,
        package: &'static str,
    },
    #[error("the testbed is already up (state in {run_dir}); run `metalmesh-testbed down` first")]
    AlreadyUp { run_dir: PathBuf },
    #[error(
        "leftover testbed namespaces exist ({namespaces}); run `metalmesh-testbed down` to remove them"
    )]
    Leftovers { namespaces: String },
    #[error(
        "another testbed is up on this host (run dir {run_dir}, its daemons running); it owns the \
         `mm-*` namespaces, so nothing was touched: wait for it, or run \
         `metalmesh-testbed --run-dir {run_dir} down`"
    )]
    HeldByAnother { run_dir: PathBuf },
    #[error("the testbed is not up (no state in {run_dir}); run `metalmesh-testbed up`")]
    NotUp { run_dir: PathBuf },
    #[error("unknown node `{name}`; nodes are: {known}")]
    UnknownNode { name: String, known: String },
    #[error("unknown machine `{name}`; machines are: {known}")]
    UnknownMachine { name: String, known: String },
    #[error("{what}")]
    Unsupported { what: String },
    #[error("`{command}` failed ({}): {stderr}", status.map_or("killed by a signal".to_string(), |c| format!("exit {c}")))]
    Command {
        command: String,
        status: Option<i32>,
        stderr: String,
    },
    #[error("cannot run `{command}`: {source}")]
    Spawn {
        command: String,
        source: std::io::Error,
    },
    #[error("{daemon} in {namespace}: {detail}")]
    DaemonFailed {
        daemon: String,
        namespace: String,
        detail: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is unreadable ({detail}); run `metalmesh-testbed down` to reset")]
    BadState { path: PathBuf, detail: String },
    #[error(
        "qemu machines need the boot artifacts, and {} is missing; run scripts/build-boot (or set METALMESH_BOOT_DIR)",
        missing.display()
    )]
    MissingBootArtifacts { missing: PathBuf },
    #[error("timed out after {seconds} s waiting for {what}")]
    Timeout { what: String, seconds: u64 },
}

impl Error {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}
