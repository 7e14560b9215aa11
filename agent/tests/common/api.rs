//! Helpers of the testbed tests that go through the API node: the
//! `metalmesh` CLI on the host, testbed tokens, the OS image defined in the
//! API, and a project with a network.

use std::path::Path;
use std::process::Output;

use metalmesh_testbed::testing::{ok, run, script};

use super::AGENT;

/// `metalmesh ARGS` run on the host (which reaches the testbed's API over
/// its own link), as the token's holder.
pub(crate) fn metalmesh(run_dir: &Path, token: &str, args: &[&str]) -> Output {
    let cli = Path::new(AGENT).with_file_name("metalmesh");
    let mut argv: Vec<String> = Vec::new();
    for (name, value) in metalmesh_testbed::api::cli_env(run_dir) {
        argv.push(format!("{name}={value}"));
    }
    argv.push(format!("METALMESH_TOKEN={token}"));
    argv.push(cli.display().to_string());
    argv.extend(args.iter().map(|a| a.to_string()));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    run("env", &argv)
}

pub(crate) fn token(run_dir: &Path, subject: &str, role: &str, project: Option<&str>) -> String {
    let testbed = Path::new(AGENT).with_file_name("metalmesh-testbed");
    let mut args = vec![
        "--run-dir",
        run_dir.to_str().unwrap(),
        "token",
        "--subject",
        subject,
        "--role",
        role,
    ];
    if let Some(project) = project {
        args.extend(["--project", project]);
    }
    let out = run(testbed.to_str().unwrap(), &args);
    ok(&out);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

pub(crate) fn machines(run_dir: &Path, token: &str) -> Vec<serde_json::Value> {
    let out = metalmesh(run_dir, token, &["machine", "ls", "-o", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

pub(crate) fn json(out: &Output) -> serde_json::Value {
    ok(out);
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

/// A testbed with the API node, `racks` racks of `machines` namespace
/// machines each, and the OS images the installers write.
pub(crate) fn up_with_api(run_dir: &Path, racks: u32, machines: u32) -> metalmesh_testbed::Testbed {
    script("build-os-image", &[]);
    metalmesh_testbed::testing::up_with(
        run_dir,
        &metalmesh_testbed::Overrides {
            racks: Some(racks),
            machines_per_rack: Some(machines),
            api: true,
            ..metalmesh_testbed::Overrides::default()
        },
    )
}

/// The OS image in the API: leaves download it from the testbed's image
/// server on first use and check its checksum.
pub(crate) const IMAGE: &str = "testbed-os";

pub(crate) fn define_image(run_dir: &Path, admin: &str) {
    let (url, sha256) = metalmesh_testbed::api::os_image().unwrap();
    ok(&metalmesh(
        run_dir,
        admin,
        &["image", "create", IMAGE, "--url", &url, "--sha256", &sha256],
    ));
}

/// Project `alpha`, made by the admin, and its network `web`, made by its
/// member; the network as the API answered.
pub(crate) fn alpha_and_web(run_dir: &Path, admin: &str, member: &str) -> serde_json::Value {
    define_image(run_dir, admin);
    ok(&metalmesh(run_dir, admin, &["project", "create", "alpha"]));
    json(&metalmesh(
        run_dir,
        member,
        &[
            "network",
            "create",
            "web",
            "--project",
            "alpha",
            "-o",
            "json",
        ],
    ))
}

/// `metalmesh-agent ARGS` on a leaf.
pub(crate) fn agent_on(run_dir: &Path, leaf: &str, args: &[&str]) -> Output {
    metalmesh_testbed::testing::agent_on(run_dir, AGENT, leaf, args)
}

pub(crate) fn testbed(run_dir: &Path, args: &[&str]) -> Output {
    let binary = Path::new(AGENT).with_file_name("metalmesh-testbed");
    let mut argv = vec!["--run-dir", run_dir.to_str().unwrap()];
    argv.extend_from_slice(args);
    run(binary.to_str().unwrap(), &argv)
}

/// Two racks with the API node, a namespace machine per rack running the
/// installer, both Waiting as the API shows them; the users' tokens
/// (admin, alice, bob). The testbed stays up while the returned handle
/// lives.
pub(crate) fn two_racks_waiting(
    guard: &metalmesh_testbed::testing::Guard,
) -> (metalmesh_testbed::Testbed, (String, String, String)) {
    let run_dir = &guard.run_dir;
    let testbed = up_with_api(run_dir, 2, 1);
    for rack in [1, 2] {
        super::start_installer(&guard.scratch, rack, 1);
    }
    let users = users(run_dir);
    assert!(
        all_waiting(run_dir, &users.0, 2, std::time::Duration::from_secs(90)),
        "machines not Waiting through the API: {:?}",
        machines(run_dir, &users.0)
    );
    (testbed, users)
}

/// Tokens of the story's users: an admin, alice (edit, project alpha) and
/// bob (edit, project beta).
pub(crate) fn users(run_dir: &Path) -> (String, String, String) {
    (
        token(run_dir, "ada", "admin", None),
        token(run_dir, "alice", "edit", Some("alpha")),
        token(run_dir, "bob", "edit", Some("beta")),
    )
}

/// Waits until the API shows `count` machines, all Waiting.
pub(crate) fn all_waiting(
    run_dir: &Path,
    admin: &str,
    count: usize,
    within: std::time::Duration,
) -> bool {
    metalmesh_testbed::testing::eventually(within, || {
        let all = machines(run_dir, admin);
        all.len() == count && all.iter().all(|m| m["state"] == "Waiting")
    })
}

/// `metalmesh machine allocate` of the OS image into `project`'s
/// `network`, waiting until it phoned home; `pick` chooses the machine
/// (`--machine UUID` or `--rack R`) and adds any other flags. The machine
/// as the API shows it then.
pub(crate) fn allocate_and_wait(
    run_dir: &Path,
    token: &str,
    project: &str,
    network: &str,
    hostname: &str,
    pick: &[&str],
) -> serde_json::Value {
    let mut args = vec![
        "machine",
        "allocate",
        "--project",
        project,
        "--network",
        network,
        "--hostname",
        hostname,
        "--image",
        IMAGE,
        "--wait",
        "--timeout-secs",
        "240",
        "-o",
        "json",
    ];
    args.extend_from_slice(pick);
    json(&metalmesh(run_dir, token, &args))
}
