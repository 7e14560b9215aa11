//! The API node and the development OIDC issuer of a testbed (`up --api`):
//! both run in `mm-api` as testbed daemons (`kill api` / `start api`), the
//! API node with an `api` mesh certificate of the testbed's CA, which also
//! serves its HTTPS.

use crate::daemon::DaemonSpec;
use crate::error::Error;
use crate::plan::{API_ADDRESS, API_SIDE, Node, Plan, Role, RunDir};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

/// The API's HTTPS port.
pub const API_PORT: u16 = 8443;
/// The development issuer's HTTP port.
pub const ISSUER_PORT: u16 = 8080;
/// The image server's HTTP port: a plain static web server (Python's) in
/// front of the testbed's images directory, standing for wherever an
/// operator keeps OS images. Leaves download from it on first use.
pub const IMAGE_PORT: u16 = 8081;
/// The API node's `/metrics` (its default, on the namespace's loopback).
pub const API_METRICS_PORT: u16 = 9470;
/// Prometheus's web UI and API (`up --prometheus`), on the host link.
pub const PROMETHEUS_PORT: u16 = 9090;

/// The URL of image file `file` on the testbed's image server.
pub fn image_url(file: &str) -> String {
    format!("http://{API_ADDRESS}:{IMAGE_PORT}/{file}")
}

/// Where the development issuer keeps its keys.
pub fn issuer_dir(run_dir: &Path) -> PathBuf {
    run_dir.join("issuer")
}

fn dir(run: &RunDir) -> PathBuf {
    run.node_dir("api").join("api")
}

pub fn url() -> String {
    format!("https://{API_ADDRESS}:{API_PORT}")
}

/// The testbed's OS image as the API defines it: its URL on the image
/// server and its SHA-256 (from `scripts/build-os-image`).
pub fn os_image() -> Result<(String, String), Error> {
    let file = crate::agent::boot_dir()
        .join("images")
        .join("testbed-default.img.sha256");
    let text = std::fs::read_to_string(&file).map_err(|e| Error::io(&file, e))?;
    let sha256 = text
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string();
    Ok((image_url("testbed-default.img"), sha256))
}

/// What `metalmesh-testbed env` prints: where the CLI finds the API, and
/// the OS image to define in it (`metalmesh image create`).
pub fn cli_env(run_dir: &Path) -> Vec<(&'static str, String)> {
    let (image_url, image_sha256) = os_image().unwrap_or_default();
    vec![
        ("METALMESH_TESTBED_IMAGE_URL", image_url),
        ("METALMESH_TESTBED_IMAGE_SHA256", image_sha256),
        ("METALMESH_API", url()),
        (
            "METALMESH_CA",
            run_dir.join("mesh-ca").join("ca.pem").display().to_string(),
        ),
    ]
}

fn path(p: &Path) -> String {
    p.display().to_string()
}

/// `api.toml` of the testbed's API node.
pub(crate) fn config(plan: &Plan, run: &RunDir) -> String {
    let seeds: Vec<String> = plan
        .nodes
        .iter()
        .filter(|n| n.role == Role::Leaf)
        .map(|n| format!("\"{}\"", n.loopback))
        .collect();
    let dir = dir(run);
    let mut conf = String::new();
    let _ = writeln!(
        conf,
        "# metalmesh-api of the testbed (written by metalmesh-testbed)"
    );
    let _ = writeln!(conf, "name = \"api\"");
    let _ = writeln!(conf, "state_dir = {:?}", path(&dir.join("state")));
    let _ = writeln!(conf, "\n[http]\nlisten = \"{API_ADDRESS}:{API_PORT}\"");
    let _ = writeln!(conf, "cert = {:?}", path(&dir.join("api-https.pem")));
    let _ = writeln!(conf, "key = {:?}", path(&dir.join("api-https.key")));
    let _ = writeln!(
        conf,
        "\n[oidc]\nissuer = \"http://{API_ADDRESS}:{ISSUER_PORT}\"\naudience = \"{}\"\n# The development issuer serves plain HTTP; never in production.\nallow_http_issuer = true",
        crate::issuer::AUDIENCE
    );
    let _ = writeln!(conf, "\n[mesh]\nadvertise = \"{API_ADDRESS}:7946\"");
    let _ = writeln!(conf, "seeds = [{}]", seeds.join(", "));
    let _ = writeln!(
        conf,
        "ca = {:?}",
        path(&crate::agent::mesh_ca_dir(run).join("ca.pem"))
    );
    let _ = writeln!(conf, "cert = {:?}", path(&dir.join("mesh/api.pem")));
    let _ = writeln!(conf, "key = {:?}", path(&dir.join("mesh/api.key")));
    conf
}

/// Where Prometheus (`up --prometheus`) keeps its configuration and data.
fn prometheus_dir(run: &RunDir) -> PathBuf {
    dir(run).join("prometheus")
}

/// Prometheus's configuration: the API node and every agent, every 5 s.
pub(crate) fn prometheus_config(plan: &Plan) -> String {
    let mut conf = String::new();
    let _ = writeln!(
        conf,
        "# Prometheus of the testbed (written by metalmesh-testbed)"
    );
    let _ = writeln!(
        conf,
        "global:\n  scrape_interval: 5s\n  evaluation_interval: 5s"
    );
    let _ = writeln!(conf, "scrape_configs:");
    let _ = writeln!(conf, "  - job_name: metalmesh-api\n    static_configs:");
    let _ = writeln!(conf, "      - targets: [\"127.0.0.1:{API_METRICS_PORT}\"]");
    let _ = writeln!(conf, "  - job_name: metalmesh-agent\n    static_configs:");
    for leaf in plan.nodes.iter().filter(|n| n.role == Role::Leaf) {
        let _ = writeln!(
            conf,
            "      - targets: [\"{}:{}\"]\n        labels:\n          leaf: {}",
            leaf.loopback,
            crate::agent::METRICS_PORT,
            leaf.name
        );
    }
    conf
}

/// Prometheus in `mm-api`. It writes no pid file: a shell writes its own
/// pid and execs Prometheus under a name that carries the pid file's path,
/// which is how the testbed recognises its daemons.
fn prometheus_daemon(node: &Node, run: &RunDir) -> DaemonSpec {
    let dir = prometheus_dir(run);
    let pidfile = dir.join("prometheus.pid");
    DaemonSpec {
        name: "prometheus".into(),
        namespace: node.namespace(),
        argv: vec![
            "bash".into(),
            "-c".into(),
            "echo $$ > \"$1\"; exec -a \"prometheus $1\" prometheus --config.file=\"$2\" \
             --storage.tsdb.path=\"$3\" --web.listen-address=\"$4\""
                .into(),
            "prometheus".into(),
            path(&pidfile),
            path(&dir.join("prometheus.yml")),
            path(&dir.join("data")),
            format!("{API_SIDE}:{PROMETHEUS_PORT}"),
        ],
        pidfile,
        output: dir.join("prometheus.log"),
        detach: true,
    }
}

/// The issuer and the API node (and Prometheus, when asked for).
pub(crate) fn daemons(plan: &Plan, node: &Node, run: &RunDir) -> Result<Vec<DaemonSpec>, Error> {
    let api = crate::agent::find_binary(
        "metalmesh-api",
        "METALMESH_API_BIN",
        "metalmesh-api: cargo build --bin metalmesh-api",
    )?;
    let testbed = crate::agent::find_binary(
        "metalmesh-testbed",
        "METALMESH_TESTBED_BIN",
        "metalmesh-testbed: cargo build --bin metalmesh-testbed",
    )?;
    let dir = dir(run);
    Ok([
        DaemonSpec {
            name: "issuer".into(),
            namespace: node.namespace(),
            argv: vec![
                path(&testbed),
                "issuer".into(),
                "--dir".into(),
                path(&issuer_dir(&run.root)),
                "--listen".into(),
                format!("{API_ADDRESS}:{ISSUER_PORT}"),
                "--pidfile".into(),
                path(&dir.join("issuer.pid")),
            ],
            pidfile: dir.join("issuer.pid"),
            output: dir.join("issuer.log"),
            detach: true,
        },
        DaemonSpec {
            name: "images".into(),
            namespace: node.namespace(),
            // Python's standard library server; the pid file path is in its
            // command line, which is how the testbed recognises its daemons.
            argv: vec![
                "python3".into(),
                "-c".into(),
                "import functools, http.server, os, sys\n\
                 open(sys.argv[1], 'w').write(str(os.getpid()))\n\
                 handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=sys.argv[2])\n\
                 http.server.ThreadingHTTPServer((sys.argv[3], int(sys.argv[4])), handler).serve_forever()"
                    .into(),
                path(&dir.join("images.pid")),
                path(&crate::agent::boot_dir().join("images")),
                API_ADDRESS.to_string(),
                IMAGE_PORT.to_string(),
            ],
            pidfile: dir.join("images.pid"),
            output: dir.join("images.log"),
            detach: true,
        },
        DaemonSpec {
            name: "api".into(),
            namespace: node.namespace(),
            argv: vec![
                path(&api),
                "run".into(),
                "--config".into(),
                path(&dir.join("api.toml")),
                "--pidfile".into(),
                path(&dir.join("api.pid")),
            ],
            pidfile: dir.join("api.pid"),
            output: dir.join("api.log"),
            detach: true,
        },
    ]
    .into_iter()
    .chain(plan.topology.prometheus.then(|| prometheus_daemon(node, run)))
    .collect())
}

/// The issuer's keys, the API's certificate (made with the `metalmesh`
/// CLI as an operator would) and its configuration.
pub(crate) fn prepare(plan: &Plan, run: &RunDir) -> Result<(), Error> {
    let dir = dir(run);
    std::fs::create_dir_all(dir.join("mesh")).map_err(|e| Error::io(&dir, e))?;
    crate::issuer::create(
        &issuer_dir(&run.root),
        &format!("http://{API_ADDRESS}:{ISSUER_PORT}"),
    )
    .map_err(|e| Error::io(&issuer_dir(&run.root), std::io::Error::other(e.to_string())))?;
    let cli = crate::agent::cli_binary()?;
    let ca = |issue: &[&str], out: &Path| {
        let mut args = vec!["ca"];
        args.extend_from_slice(issue);
        let (ca_dir, out) = (path(&crate::agent::mesh_ca_dir(run)), path(out));
        let address = API_ADDRESS.to_string();
        args.extend(["--address", &address, "--ca-dir", &ca_dir, "--out", &out]);
        crate::sys::run(&path(&cli), &args)
    };
    ca(
        &["issue", "--node", "api", "--role", "api"],
        &dir.join("mesh"),
    )?;
    // Browsers need an ECDSA key for the web view (the mesh's is Ed25519).
    ca(&["issue-https", "--name", "api"], &dir)?;
    let config_path = dir.join("api.toml");
    std::fs::write(&config_path, config(plan, run)).map_err(|e| Error::io(&config_path, e))?;
    if plan.topology.prometheus {
        let dir = prometheus_dir(run);
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        let path = dir.join("prometheus.yml");
        std::fs::write(&path, prometheus_config(plan)).map_err(|e| Error::io(&path, e))?;
    }
    Ok(())
}
