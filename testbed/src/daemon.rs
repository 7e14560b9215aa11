//! Background daemons of the testbed (FRR, qemu, later the agent): started
//! inside a node's namespace, tracked through their pid files, stopped and
//! started again with the same arguments and state.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::error::Error;

/// How long a daemonising program may take to detach and write its pid file.
const START_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a daemon may take to exit after SIGTERM before it gets SIGKILL.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything needed to (re)start one daemon.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DaemonSpec {
    /// Short name: `zebra`, `bgpd`, `qemu`, `agent`.
    pub name: String,
    /// Namespace it runs in.
    pub namespace: String,
    /// Program and arguments. The program writes `pidfile` (with its own pid).
    pub argv: Vec<String>,
    /// The program stays in the foreground: the testbed detaches it into its
    /// own session. Otherwise it daemonises itself (FRR's `-d`, qemu's `-daemonize`).
    #[serde(default)]
    pub detach: bool,
    pub pidfile: PathBuf,
    /// File that collects the program's standard output and error.
    pub output: PathBuf,
}

impl DaemonSpec {
    /// Starts the daemon unless it is already running; returns its pid.
    pub fn start(&self) -> Result<i32, Error> {
        if let Some(pid) = self.running_pid() {
            return Ok(pid);
        }
        // A stale pid file from a killed daemon would be mistaken for the new one.
        let _ = std::fs::remove_file(&self.pidfile);
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.output)
            .map_err(|source| Error::io(&self.output, source))?;
        let log_err = log
            .try_clone()
            .map_err(|source| Error::io(&self.output, source))?;
        let mut args = vec!["netns".to_string(), "exec".into(), self.namespace.clone()];
        args.extend(self.argv.iter().cloned());
        // `setsid -f` forks the foreground daemon into its own session and
        // returns at once, so it is reparented to init like a self-daemonised one.
        let program = if self.detach {
            args.insert(0, "ip".into());
            args.insert(0, "-f".into());
            "setsid"
        } else {
            "ip"
        };
        let command = crate::sys::display(program, &args);
        let mut child = Command::new(program)
            .args(&args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = child.try_wait().map_err(|source| Error::Spawn {
                command: command.clone(),
                source,
            })? {
                if !status.success() {
                    return Err(Error::DaemonFailed {
                        daemon: self.name.clone(),
                        namespace: self.namespace.clone(),
                        detail: format!("exited with {status}; see {}", self.output.display()),
                    });
                }
                break;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::DaemonFailed {
                    daemon: self.name.clone(),
                    namespace: self.namespace.clone(),
                    detail: format!("did not detach within {START_TIMEOUT:?}"),
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        while Instant::now() < deadline {
            if let Some(pid) = self.running_pid() {
                return Ok(pid);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(Error::DaemonFailed {
            daemon: self.name.clone(),
            namespace: self.namespace.clone(),
            detail: format!(
                "no live process behind {} after start; see {}",
                self.pidfile.display(),
                self.output.display()
            ),
        })
    }

    /// The pid of the running daemon, if its pid file names a live process
    /// that is really this daemon (pids get reused).
    pub fn running_pid(&self) -> Option<i32> {
        let pid: i32 = std::fs::read_to_string(&self.pidfile)
            .ok()?
            .trim()
            .parse()
            .ok()?;
        is_our_process(pid, &self.pidfile).then_some(pid)
    }

    /// Sends `signal` and waits until the daemon is gone. SIGTERM escalates to
    /// SIGKILL when the daemon does not exit in time. Not running is success.
    pub fn stop(&self, signal: Signal) -> Result<(), Error> {
        let Some(pid) = self.running_pid() else {
            return Ok(());
        };
        let target = Pid::from_raw(pid);
        let _ = kill(target, signal);
        // Only stopping signals are waited for (and escalated); HUP, USR1 …
        // are delivered and the daemon keeps running.
        if !matches!(signal, Signal::SIGTERM | Signal::SIGINT | Signal::SIGKILL) {
            return Ok(());
        }
        if wait_gone(pid, STOP_TIMEOUT) {
            return Ok(());
        }
        tracing::warn!(daemon = %self.name, namespace = %self.namespace, pid, "did not stop; sending SIGKILL");
        let _ = kill(target, Signal::SIGKILL);
        if wait_gone(pid, STOP_TIMEOUT) {
            Ok(())
        } else {
            Err(Error::DaemonFailed {
                daemon: self.name.clone(),
                namespace: self.namespace.clone(),
                detail: format!("pid {pid} survived SIGKILL"),
            })
        }
    }
}

/// Whether `pid` is alive and its command line mentions `marker` (every
/// daemon's argv contains its own pid file path).
fn is_our_process(pid: i32, marker: &Path) -> bool {
    let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
        return false;
    };
    // Zombies keep no command line; a live daemon always has one.
    let marker = marker.to_string_lossy();
    cmdline
        .split(|b| *b == 0)
        .any(|arg| String::from_utf8_lossy(arg).contains(marker.as_ref()))
}

/// Whether `pid` exists and has not exited: a dying process loses its
/// command line before it closes its sockets, so only the state tells.
fn is_alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    if !matches!(state, None | Some('Z') | Some('X') | Some('x')) {
        return true;
    }
    // A zombie leader can still have threads exiting, holding the process's
    // files (its sockets) open: alive until it is the last one.
    std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|tasks| tasks.count() > 1)
}

fn wait_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if !is_alive(pid) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// Kills every process in a namespace (SIGTERM, then SIGKILL) and waits for them.
pub(crate) fn kill_all_in_netns(namespace: &str) {
    let pids = crate::sys::netns_pids(namespace);
    if pids.is_empty() {
        return;
    }
    for pid in &pids {
        let _ = kill(Pid::from_raw(*pid), Signal::SIGTERM);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !crate::sys::netns_pids(namespace).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
    for pid in crate::sys::netns_pids(namespace) {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline && !crate::sys::netns_pids(namespace).is_empty() {
        std::thread::sleep(Duration::from_millis(50));
    }
}
