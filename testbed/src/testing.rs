//! Helpers for integration tests that run on the testbed (this crate's and
//! the other crates'). Such tests build real namespaces and run real daemons,
//! so they need root (CI runs as root). Failures panic: these are test aids.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::new_without_default)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use crate::{Quiet, Testbed};

/// Tears the testbed down when the test ends, pass or fail.
#[derive(Debug)]
pub struct Guard {
    pub run_dir: PathBuf,
    /// A scratch directory that lives as long as the guard.
    pub scratch: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Guard {
    /// A fresh run directory; anything a crashed earlier run left is removed first.
    pub fn new() -> Guard {
        assert!(
            nix::unistd::geteuid().is_root(),
            "testbed integration tests need root (network namespaces)"
        );
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = tmp.path().join("run");
        let scratch = tmp.path().join("scratch");
        std::fs::create_dir_all(&scratch).unwrap();
        Testbed::down(&run_dir, &mut Quiet).unwrap();
        Guard {
            run_dir,
            scratch,
            _tmp: tmp,
        }
    }
}

/// A scratch directory for tests that need neither root nor the testbed
/// (configuration errors, CLI messages): they run in `scripts/test --quick`
/// as any user.
#[derive(Debug)]
pub struct Scratch {
    pub path: PathBuf,
    _tmp: tempfile::TempDir,
}

impl Scratch {
    pub fn new() -> Scratch {
        let tmp = tempfile::tempdir().unwrap();
        Scratch {
            path: tmp.path().to_path_buf(),
            _tmp: tmp,
        }
    }
}

impl Default for Scratch {
    fn default() -> Self {
        Scratch::new()
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if std::thread::panicking() {
            keep_logs(&self.run_dir);
        }
        if let Err(error) = Testbed::down(&self.run_dir, &mut Quiet) {
            eprintln!("cleanup failed: {error}");
        }
    }
}

/// A failed test's daemon logs outlive its testbed: copied to
/// `target/test-artifacts/failed/<test>/`, and the end of each agent's log
/// printed, so that a CI failure can be read without a rerun.
fn keep_logs(run_dir: &Path) {
    let test = std::thread::current()
        .name()
        .unwrap_or("unnamed")
        .replace("::", "-");
    let Some(target) = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.ancestors().nth(3).map(Path::to_path_buf))
    else {
        return;
    };
    let kept = target.join("test-artifacts/failed").join(test);
    let _ = std::fs::remove_dir_all(&kept);
    let Ok(nodes) = std::fs::read_dir(run_dir.join("nodes")) else {
        return;
    };
    for node in nodes.flatten() {
        for daemon in ["agent", "frr"] {
            let Ok(files) = std::fs::read_dir(node.path().join(daemon)) else {
                continue;
            };
            for file in files.flatten() {
                let name = file.file_name().to_string_lossy().into_owned();
                if !name.ends_with(".log") {
                    continue;
                }
                let to = kept.join(node.file_name()).join(&name);
                if std::fs::create_dir_all(kept.join(node.file_name())).is_ok() {
                    let _ = std::fs::copy(file.path(), &to);
                }
                if daemon == "agent" && name == "agent.log" {
                    let text = std::fs::read_to_string(file.path()).unwrap_or_default();
                    let lines: Vec<&str> = text.lines().collect();
                    let tail = &lines[lines.len().saturating_sub(20)..];
                    eprintln!(
                        "--- last lines of {}'s agent log ---\n{}",
                        node.file_name().to_string_lossy(),
                        tail.join("\n")
                    );
                }
            }
        }
    }
    eprintln!("daemon logs kept in {}", kept.display());
}

/// The `metalmesh-testbed` binary of this build (next to the test binary).
pub fn testbed_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    exe.ancestors()
        .skip(1)
        .take(2)
        .map(|dir| dir.join("metalmesh-testbed"))
        .find(|p| p.is_file())
        .expect("metalmesh-testbed binary not built")
}

/// Brings up a testbed of `racks` leaves with `machines` namespace and
/// `vms` qemu machines per rack, and waits for the fabric to converge.
pub fn up(run_dir: &Path, racks: u32, machines: u32, vms: u32) -> crate::Testbed {
    up_with(
        run_dir,
        &crate::Overrides {
            racks: Some(racks),
            machines_per_rack: Some(machines),
            vm_machines: Some(vms),
            ..crate::Overrides::default()
        },
    )
}

/// [`up`] with any overrides (e.g. `api: true` for the API node).
pub fn up_with(run_dir: &Path, overrides: &crate::Overrides) -> crate::Testbed {
    let topology = crate::Topology::load(None, overrides).unwrap();
    let testbed = crate::Testbed::up(run_dir, &topology, &mut Quiet).unwrap();
    testbed
        .wait_converged(Duration::from_secs(60), &mut Quiet)
        .unwrap();
    testbed
}

/// Runs `argv` inside `namespace` (`ip netns exec`); its standard output.
pub fn in_netns(namespace: &str, argv: &[&str]) -> String {
    let mut full = vec!["netns", "exec", namespace];
    full.extend_from_slice(argv);
    String::from_utf8_lossy(&run("ip", &full).stdout).into_owned()
}

/// Whether one ping from the testbed node or machine `from` (namespace
/// `mm-<from>`) to `to` is answered within a second.
pub fn ping(from: &str, to: &str) -> bool {
    let ns = format!("mm-{from}");
    run("ip", &["netns", "exec", &ns, "ping", "-c1", "-W1", to])
        .status
        .success()
}

/// Runs `ip ARGS`, which must succeed (the error names the arguments).
pub fn ip(args: &[&str]) {
    let out = run("ip", args);
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Gives a namespace machine (`m1-1`, …) the address a routed port of its
/// leaf expects: `ip`/32 on its `eth0`, default route via the tenant
/// gateway 169.254.0.1 (what a machine installed into a VRF is told).
pub fn route_machine(machine: &str, ip: &str) {
    let ns = format!("mm-{machine}");
    let address = format!("{ip}/32");
    let commands: [&[&str]; 2] = [
        &["-n", &ns, "addr", "add", &address, "dev", "eth0"],
        &[
            "-n",
            &ns,
            "route",
            "add",
            "default",
            "via",
            "169.254.0.1",
            "dev",
            "eth0",
            "onlink",
        ],
    ];
    for args in commands {
        let out = run("ip", args);
        assert!(
            out.status.success(),
            "ip {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// Runs one of the repository's `scripts/` (e.g. `build-boot`), which must succeed.
pub fn script(name: &str, args: &[&str]) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../scripts")
        .join(name);
    let out = Command::new(&path).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        path.display(),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts that a command succeeded (showing its output if not) and
/// returns its standard output.
pub fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `metalmesh-agent ARGS` on `leaf` of the testbed (through `exec`).
pub fn agent_on(run_dir: &Path, agent: &str, leaf: &str, args: &[&str]) -> Output {
    let mut full = vec!["exec", leaf, "--", agent];
    full.extend_from_slice(args);
    cli(run_dir, &full)
}

/// Runs the `metalmesh-testbed` binary with a run directory.
pub fn cli(run_dir: &Path, args: &[&str]) -> Output {
    Command::new(testbed_binary())
        .arg("--run-dir")
        .arg(run_dir)
        .args(args)
        .output()
        .unwrap()
}

/// Starts `argv` inside `namespace`, detached into its own session (it
/// outlives the test process), its output appended to `log`. A pipe would
/// keep a waiting `output()` open for as long as the daemon runs.
pub fn spawn_detached_in(namespace: &str, argv: &[&std::ffi::OsStr], log: &Path) {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .unwrap();
    let status = Command::new("setsid")
        .args(["-f", "ip", "netns", "exec", namespace])
        .args(argv)
        .stdin(std::process::Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .status()
        .unwrap();
    assert!(status.success(), "cannot start {argv:?} in {namespace}");
}

/// Runs a command and returns its output, panicking if it cannot start.
pub fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program).args(args).output().unwrap()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Polls `check` every 200 ms until it holds or `timeout` passes.
pub fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Namespaces with the testbed's prefix that exist now.
pub fn mm_namespaces() -> Vec<String> {
    let out = Command::new("ip").args(["netns", "list"]).output().unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with("mm-") && !n.starts_with(crate::plan::BENCH_NAMESPACE_PREFIX))
        .map(str::to_string)
        .collect()
}

/// Processes whose command line mentions `needle`.
pub fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        if let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) {
            let line = String::from_utf8_lossy(&cmdline).replace('\0', " ");
            if line.contains(needle) {
                found.push(format!("{}: {line}", name.to_string_lossy()));
            }
        }
    }
    found
}

/// Asserts that nothing of a testbed remains: namespaces, processes, run files.
pub fn assert_nothing_left(run_dir: &Path) {
    assert_eq!(
        mm_namespaces(),
        Vec::<String>::new(),
        "namespaces left behind"
    );
    let run = run_dir.display().to_string();
    assert_eq!(
        processes_mentioning(&run),
        Vec::<String>::new(),
        "processes left behind"
    );
    assert!(
        !run_dir.join("state.json").exists(),
        "state file left behind"
    );
    assert!(!run_dir.join("nodes").exists() && !run_dir.join("machines").exists());
}
