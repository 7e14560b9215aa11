//! Running the host's tools (`ip`, `ip netns exec`, `vtysh`) with errors that
//! say which command failed and what it printed.

use std::ffi::OsStr;
use std::process::{Command, Output, Stdio};

use crate::error::Error;

/// Renders a command line for messages.
pub(crate) fn display(program: &str, args: &[impl AsRef<OsStr>]) -> String {
    let mut line = program.to_string();
    for arg in args {
        line.push(' ');
        line.push_str(&arg.as_ref().to_string_lossy());
    }
    line
}

/// Runs a command to completion; fails with its stderr unless it exits 0.
pub(crate) fn run(program: &str, args: &[impl AsRef<OsStr>]) -> Result<String, Error> {
    let output = output(program, args)?;
    if output.status.success() {
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    } else {
        Err(Error::Command {
            command: display(program, args),
            status: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Runs a command and returns its raw output whatever its exit status.
pub(crate) fn output(program: &str, args: &[impl AsRef<OsStr>]) -> Result<Output, Error> {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|source| Error::Spawn {
            command: display(program, args),
            source,
        })
}

/// Runs `args` inside network namespace `namespace`.
pub(crate) fn in_netns(namespace: &str, args: &[&str]) -> Result<String, Error> {
    let mut full = vec!["netns", "exec", namespace];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Applies several `ip` commands in one process (`ip -batch`), inside a
/// namespace when one is given. Much faster than one `ip` per command.
pub(crate) fn ip_batch(namespace: Option<&str>, commands: &[String]) -> Result<(), Error> {
    if commands.is_empty() {
        return Ok(());
    }
    let mut args: Vec<&str> = Vec::new();
    if let Some(ns) = namespace {
        args.extend(["-n", ns]);
    }
    args.extend(["-batch", "-"]);
    let mut child = Command::new("ip")
        .args(&args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| Error::Spawn {
            command: display("ip", &args),
            source,
        })?;
    let script = commands.join("\n") + "\n";
    if let Some(mut stdin) = child.stdin.take() {
        use std::io::Write as _;
        stdin
            .write_all(script.as_bytes())
            .map_err(|source| Error::Spawn {
                command: display("ip", &args),
                source,
            })?;
    }
    let output = child.wait_with_output().map_err(|source| Error::Spawn {
        command: display("ip", &args),
        source,
    })?;
    if output.status.success() {
        Ok(())
    } else {
        Err(Error::Command {
            command: format!("{} <<< {}", display("ip", &args), commands.join("; ")),
            status: output.status.code(),
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_string(),
        })
    }
}

/// Whether an executable is present: an absolute path, or a name on `PATH`.
pub(crate) fn have_program(program: &str) -> bool {
    if program.contains('/') {
        return std::path::Path::new(program).is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Network namespaces that exist now.
pub(crate) fn list_netns() -> Result<Vec<String>, Error> {
    let out = run("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Process IDs inside a network namespace.
pub(crate) fn netns_pids(namespace: &str) -> Vec<i32> {
    run("ip", &["netns", "pids", namespace])
        .map(|out| out.lines().filter_map(|l| l.trim().parse().ok()).collect())
        .unwrap_or_default()
}
