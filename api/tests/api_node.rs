//! The API node on loopback against real peers: the testbed's development
//! OIDC issuer over HTTP (discovery, JWKS, key rotation), a leaf mesh node
//! over QUIC that must accept what the API writes, and HTTPS with the mesh
//! CA. Checks authentication (forged, expired, wrong audience or issuer,
//! no role), authorisation (roles, project membership), and that projects
//! and networks reach the leaf's replica signed by the API.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use metalmesh_api::cli::client::ApiClient;
use metalmesh_api::node::config::ApiConfig;
use metalmesh_inventory::pki::{self, IssuedPem, NodeCredentials};
use metalmesh_inventory::trust::{Role, Trust};
use metalmesh_inventory::{RecordKind, Store};
use metalmesh_testbed::issuer::{self, AUDIENCE, TokenRequest};
use serde_json::json;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

const API_IP: [u8; 4] = [127, 0, 0, 151];
const LEAF_IP: [u8; 4] = [127, 0, 0, 152];
const ISSUER: &str = "127.0.0.153:18080";

fn issue(ca: &IssuedPem, name: &str, role: Role, ip: [u8; 4]) -> IssuedPem {
    support::issue(ca, name, role, ip).unwrap()
}

fn token(dir: &Path, subject: &str, role: &str, projects: &[&str]) -> String {
    support::token(dir, subject, role, projects).unwrap()
}

/// A leaf as the mesh sees it (its own replica and mesh service).
fn leaf(dir: &Path, ca: &IssuedPem, cancel: &CancellationToken) -> Store {
    let identity = issue(ca, "leaf1", Role::Leaf, LEAF_IP);
    let credentials = Arc::new(NodeCredentials::from_pem(&ca.cert, &identity).unwrap());
    let trust = Trust::from_credentials(&credentials).unwrap();
    let store = Store::open_signed(&dir.join("leaf1.db"), trust).unwrap();
    let (commands_tx, _commands) = tokio::sync::mpsc::channel(8);
    support::spawn_mesh_node(
        "leaf1",
        SocketAddr::from((LEAF_IP, 17946)),
        SocketAddr::from((API_IP, 17946)),
        credentials,
        store.clone(),
        commands_tx,
        cancel,
    );
    store
}

async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    for _ in 0..200 {
        if check() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what}: not within 10 s");
}

/// Runs a blocking client call off the runtime.
async fn call<T: Send + 'static>(work: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(work).await.unwrap()
}

fn status(result: &Result<serde_json::Value, metalmesh_api::cli::client::ClientError>) -> u16 {
    match result {
        Ok(_) => 200,
        Err(error) => error.status().unwrap_or(0),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_roles_and_projects_are_enforced_and_records_reach_the_leaves() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // The development issuer.
    let issuer_dir = root.join("issuer");
    issuer::create(&issuer_dir, &format!("http://{ISSUER}")).unwrap();
    {
        let issuer_dir = issuer_dir.clone();
        tokio::spawn(issuer::serve(issuer_dir, ISSUER.parse().unwrap()));
    }
    // The mesh CA, the API node's files and config.
    let ca = pki::generate_ca("test").unwrap();
    let api_dir = root.join("api");
    let mesh_dir = api_dir.join("mesh");
    std::fs::create_dir_all(&mesh_dir).unwrap();
    let api_identity = issue(&ca, "api", Role::Api, API_IP);
    std::fs::write(mesh_dir.join("ca.pem"), &ca.cert).unwrap();
    std::fs::write(mesh_dir.join("node.pem"), &api_identity.cert).unwrap();
    std::fs::write(mesh_dir.join("node.key"), &api_identity.key).unwrap();
    let config = ApiConfig::parse(
        &format!(
            r#"
name = "api"
state_dir = {state:?}
[http]
listen = "127.0.0.151:18443"
[oidc]
issuer = "http://{ISSUER}"
audience = "{AUDIENCE}"
allow_http_issuer = true
[mesh]
listen = "127.0.0.151:17946"
advertise = "127.0.0.151:17946"
seeds = ["127.0.0.152:17946"]
"#,
            state = api_dir.display().to_string()
        ),
        Path::new("api.toml"),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let leaf_store = leaf(root, &ca, &cancel);
    let api = {
        let cancel = cancel.clone();
        tokio::spawn(async move { metalmesh_api::node::run(config, cancel).await })
    };
    let ca_file = mesh_dir.join("ca.pem");
    let client =
        |token: &str| ApiClient::new("https://127.0.0.151:18443", token, Some(&ca_file)).unwrap();
    let admin = client(&token(&issuer_dir, "ada", "admin", &[]));
    // Wait for the API to serve.
    for _ in 0..100 {
        let admin = admin.clone();
        if call(move || admin.get("/v1/whoami")).await.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let whoami = {
        let admin = admin.clone();
        call(move || admin.get("/v1/whoami")).await.unwrap()
    };
    assert_eq!(whoami["subject"], "ada");
    assert_eq!(whoami["role"], "admin");

    // Tokens that must not pass: 401 (403 without a role).
    let other_dir = root.join("other-issuer");
    issuer::create(&other_dir, "http://127.0.0.154:18080").unwrap();
    let forged_dir = root.join("forged");
    issuer::create(&forged_dir, &format!("http://{ISSUER}")).unwrap();
    let mut bad = vec![
        ("no token", String::new(), 401),
        ("garbage", "not.a.token".to_string(), 401),
        (
            "another issuer",
            token(&other_dir, "eve", "admin", &[]),
            401,
        ),
        // Same issuer URL and key id, another key: the signature fails.
        ("forged", token(&forged_dir, "eve", "admin", &[]), 401),
    ];
    for (audience, lifetime, name) in [
        ("someone-else", 600, "wrong audience"),
        (AUDIENCE, -3600, "expired"),
    ] {
        let token = issuer::token(
            &issuer_dir,
            &TokenRequest {
                subject: "eve".into(),
                role: "admin".into(),
                projects: vec![],
                audience: audience.into(),
                lifetime_secs: lifetime,
            },
        )
        .unwrap();
        bad.push((name, token, 401));
    }
    bad.push(("no role", token(&issuer_dir, "eve", "root", &[]), 403));
    for (name, token, expected) in bad {
        let client = client(&token);
        let result = call(move || client.get("/v1/projects")).await;
        assert_eq!(status(&result), expected, "{name}: {result:?}");
    }

    // Projects are created by admins; members change their own only.
    for project in ["alpha", "beta"] {
        let admin = admin.clone();
        let body = json!({"name": project});
        call(move || admin.post("/v1/projects", &body))
            .await
            .unwrap();
    }
    let alpha_editor = client(&token(&issuer_dir, "al", "edit", &["alpha"]));
    let alpha_viewer = client(&token(&issuer_dir, "vi", "view", &["alpha"]));
    let beta_editor = client(&token(&issuer_dir, "bo", "edit", &["beta"]));
    let created = {
        let c = alpha_editor.clone();
        call(move || c.post("/v1/networks", &json!({"project": "alpha", "name": "web"})))
            .await
            .unwrap()
    };
    assert_eq!(created["project"], "alpha");
    assert!(created["prefixes"][0].as_str().unwrap().ends_with("/24"));
    let refused = [
        (
            alpha_viewer.clone(),
            json!({"project": "alpha", "name": "db"}),
            403,
        ),
        (
            beta_editor.clone(),
            json!({"project": "alpha", "name": "db"}),
            403,
        ),
        (
            alpha_editor.clone(),
            json!({"project": "alpha", "name": "web"}),
            409,
        ),
        (
            alpha_editor.clone(),
            json!({"project": "alpha", "name": "Bad Name"}),
            400,
        ),
        (
            alpha_editor.clone(),
            json!({"project": "alpha", "name": "x", "extra": 1}),
            400,
        ),
    ];
    for (client, body, expected) in refused {
        let result = call(move || client.post("/v1/networks", &body)).await;
        assert_eq!(status(&result), expected, "{result:?}");
    }
    let result = {
        let c = alpha_editor.clone();
        call(move || c.post("/v1/projects", &json!({"name": "gamma"}))).await
    };
    assert_eq!(status(&result), 403);
    let seen_by_beta = {
        let c = beta_editor.clone();
        call(move || c.get("/v1/networks")).await.unwrap()
    };
    assert_eq!(seen_by_beta, json!([]));
    let projects_of_beta = {
        let c = beta_editor.clone();
        call(move || c.get("/v1/projects")).await.unwrap()
    };
    assert_eq!(projects_of_beta.as_array().unwrap().len(), 1);
    // Nothing to allocate yet: a clear 409.
    {
        let admin = admin.clone();
        let image = json!({"name": "debian", "url": "http://images.example/debian.img", "sha256": "0".repeat(64)});
        call(move || admin.post("/v1/images", &image))
            .await
            .unwrap();
    }
    let result = {
        let c = alpha_editor.clone();
        let body =
            json!({"project": "alpha", "network": "web", "hostname": "h1", "image": "debian"});
        call(move || c.post("/v1/machines/allocate", &body)).await
    };
    assert_eq!(status(&result), 409, "{result:?}");
    assert!(format!("{result:?}").contains("no machine available"));

    // The leaf holds what the API wrote, checked against the API's key.
    let network_id = created["id"].as_str().unwrap().to_string();
    eventually("the network on the leaf", || {
        leaf_store
            .get(&metalmesh_inventory::RecordKey::new(
                RecordKind::Network,
                &network_id,
            ))
            .unwrap()
            .is_some_and(|r| r.origin == "api" && r.value.is_some())
    })
    .await;
    assert!(
        leaf_store
            .known_node("api")
            .is_some_and(|n| n.role == Role::Api)
    );

    // After the issuer rotates its key, new tokens still pass.
    issuer::rotate(&issuer_dir).unwrap();
    tokio::time::sleep(Duration::from_secs(11)).await;
    let rotated = client(&token(&issuer_dir, "ada", "admin", &[]));
    let result = call(move || rotated.get("/v1/audit")).await.unwrap();
    let actions: Vec<&str> = result
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    assert!(
        actions.contains(&"network.create") && actions.contains(&"project.create"),
        "{actions:?}"
    );

    // The CLI: `login` saves a context (owner-only), later commands use it.
    let home = root.join("home");
    let cli = move |args: &[&str]| {
        let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_metalmesh"));
        for name in [
            "METALMESH_API",
            "METALMESH_TOKEN",
            "METALMESH_CA",
            "METALMESH_CONTEXT",
            "XDG_CONFIG_HOME",
        ] {
            command.env_remove(name);
        }
        command.env("HOME", &home).args(args).output().unwrap()
    };
    let alice_token = token(&issuer_dir, "al", "edit", &["alpha"]);
    let ca_arg = ca_file.display().to_string();
    let (login, networks, unknown) = call(move || {
        let login = cli(&[
            "login",
            "--api",
            "https://127.0.0.151:18443",
            "--ca",
            &ca_arg,
            "--token",
            &alice_token,
            "--as",
            "lab",
        ]);
        let networks = cli(&["network", "ls", "-o", "json"]);
        let unknown = cli(&["--context", "nope", "whoami"]);
        (login, networks, unknown)
    })
    .await;
    assert!(
        login.status.success(),
        "{}",
        String::from_utf8_lossy(&login.stderr)
    );
    assert!(String::from_utf8_lossy(&login.stdout).contains("as al (edit)"));
    let listed: serde_json::Value = serde_json::from_slice(&networks.stdout).unwrap();
    assert_eq!(listed[0]["name"], "web", "{listed}");
    assert!(!unknown.status.success());
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no context \"nope\""));
    {
        use std::os::unix::fs::PermissionsExt as _;
        let config = root.join("home/.config/metalmesh/config");
        assert_eq!(
            std::fs::metadata(config).unwrap().permissions().mode() & 0o777,
            0o600
        );
    }

    // `login --device`: the CLI shows a code; once the issuer's user
    // approves it, the CLI saves the token it got and uses it.
    let device_home = root.join("device-home");
    let mut login = std::process::Command::new(env!("CARGO_BIN_EXE_metalmesh"))
        .env_remove("METALMESH_TOKEN")
        .env("HOME", &device_home)
        .args([
            "login",
            "--device",
            "--timeout-secs",
            "30",
            "--api",
            "https://127.0.0.151:18443",
            "--ca",
            &ca_file.display().to_string(),
            "--as",
            "dev",
        ])
        .stderr(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let prompt = {
        use std::io::BufRead as _;
        let stderr = login.stderr.take().unwrap();
        call(move || {
            let mut line = String::new();
            std::io::BufReader::new(stderr)
                .read_line(&mut line)
                .map(|_| line)
        })
        .await
        .unwrap()
    };
    let code = prompt.trim().rsplit(' ').next().unwrap().to_string();
    assert!(prompt.contains("enter the code"), "{prompt}");
    // A wrong code is refused; the right one lets the CLI finish.
    assert!(issuer::device::approve(&issuer_dir, "BCDF-GHJK", "dee", "edit", &[]).is_err());
    issuer::device::approve(&issuer_dir, &code, "dee", "edit", &["alpha".into()]).unwrap();
    let done = call(move || login.wait_with_output()).await.unwrap();
    assert!(done.status.success(), "{done:?}");
    assert!(
        String::from_utf8_lossy(&done.stdout).contains("as dee (edit)"),
        "{done:?}"
    );
    let me = std::process::Command::new(env!("CARGO_BIN_EXE_metalmesh"))
        .env_remove("METALMESH_TOKEN")
        .env_remove("METALMESH_API")
        .env("HOME", &device_home)
        .args(["whoami"])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&me.stdout).contains("\"dee\""),
        "{me:?}"
    );

    // The OpenAPI document, and a property-based client driven by it:
    // no 5xx, every status and body as documented.
    let document = {
        let c = admin.clone();
        call(move || c.get("/v1/openapi.json")).await.unwrap()
    };
    assert!(document["paths"]["/v1/machines/allocate"]["post"].is_object());
    let schemathesis = std::env::var("METALMESH_SCHEMATHESIS")
        .unwrap_or_else(|_| "/opt/metalmesh-venv/bin/schemathesis".into());
    assert!(
        Path::new(&schemathesis).is_file(),
        "{schemathesis} missing: scripts/setup installs it"
    );
    let admin_token = token(&issuer_dir, "ada", "admin", &[]);
    let ca_path = ca_file.display().to_string();
    let scratch = root.join("schemathesis");
    std::fs::create_dir_all(&scratch).unwrap();
    let output = call(move || {
        // Run in the scratch directory: it keeps a cache where it runs.
        std::process::Command::new(schemathesis)
            .current_dir(&scratch)
            .args([
                "run",
                "https://127.0.0.151:18443/v1/openapi.json",
                "--tls-verify",
                &ca_path,
                "-H",
                &format!("Authorization: Bearer {admin_token}"),
                "--checks",
                "all",
                "--max-examples",
                "25",
                "--generation-deterministic",
                "--no-color",
            ])
            .output()
            .unwrap()
    })
    .await;
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );

    cancel.cancel();
    api.await.unwrap().unwrap();
}
