//! The API's resources and allocation rules against simulated racks over
//! the real mesh (see `support`): images and sizes (admins only, checked
//! input), shared networks with a given prefix and overlap refusal, IPs
//! acquired, attached, kept and released, size- and partition-constrained
//! allocation, placement tags spreading machines across racks, idempotency
//! keys, reservations and locks, machine filters, and failed requests that
//! leave nothing behind.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

/// Runs a Prometheus server scraping `target` every second and returns
/// its answer to `metalmesh_api_requests_total` once it has one (at most
/// 30 s); fails when the target is not `up`.
async fn scrape_with_prometheus(dir: &std::path::Path, target: &str) -> String {
    let target = target
        .trim_start_matches("http://")
        .trim_end_matches("/metrics")
        .to_string();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: api\n    static_configs:\n      - targets: ['{target}']\n"
        ),
    )
    .unwrap();
    let listen = "127.0.17.5:19090";
    let mut server = std::process::Command::new("prometheus")
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.join("tsdb").display()
        ))
        .arg(format!("--web.listen-address={listen}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("prometheus (scripts/setup installs Debian's package)");
    let query = move |q: &str| {
        let url = format!("http://{listen}/api/v1/query?query={q}");
        ureq::get(&url)
            .call()
            .ok()
            .and_then(|r| r.into_string().ok())
            .unwrap_or_default()
    };
    let mut answer = String::new();
    for _ in 0..60 {
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        answer = tokio::task::spawn_blocking(move || query("metalmesh_api_requests_total"))
            .await
            .unwrap();
        if answer.contains("/v1/") {
            break;
        }
    }
    let up = tokio::task::spawn_blocking(move || query("up"))
        .await
        .unwrap();
    let _ = server.kill();
    let _ = server.wait();
    assert!(up.contains("\"1\"]"), "the target is not up: {up}");
    answer
}

use metalmesh_api::cli::client::{ApiClient, ClientError};
use metalmesh_inventory::model::{Disk, Hardware};
use serde_json::{Value, json};
use support::{Addresses, RackSpec};

type Answer = Result<Value, ClientError>;

fn hardware(cpus: u32, memory_gib: u64, disk_gib: u64) -> Option<Hardware> {
    Some(Hardware {
        cpus,
        memory_bytes: memory_gib << 30,
        disks: vec![Disk {
            name: "vda".into(),
            size_bytes: disk_gib << 30,
            ..Disk::default()
        }],
        ..Hardware::default()
    })
}

fn status(result: &Answer) -> u16 {
    match result {
        Ok(_) => 200,
        Err(error) => error.status().unwrap_or(0),
    }
}

/// Runs client calls off the runtime.
fn on<F: FnOnce(&ApiClient) -> Answer + Send + 'static>(
    client: &ApiClient,
    work: F,
) -> impl std::future::Future<Output = Answer> + use<F> {
    let client = client.clone();
    async move {
        tokio::task::spawn_blocking(move || work(&client))
            .await
            .unwrap()
    }
}

async fn post(client: &ApiClient, path: &'static str, body: Value) -> Answer {
    on(client, move |c| c.post(path, &body)).await
}

async fn get(client: &ApiClient, path: String) -> Value {
    on(client, move |c| c.get(&path)).await.unwrap()
}

/// `path` once `check` holds (the API's replica trails the racks' answers
/// by milliseconds); at most 10 s.
async fn until(client: &ApiClient, path: &str, check: impl Fn(&Value) -> bool) -> Value {
    let mut last = Value::Null;
    for _ in 0..100 {
        last = get(client, path.to_string()).await;
        if check(&last) {
            return last;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    panic!("{path}: not as expected within 10 s: {last}");
}

fn field(result: &Answer) -> String {
    format!("{result:?}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resources_and_allocation_rules_hold() {
    let dir = tempfile::tempdir().unwrap();
    let racks = [
        RackSpec {
            name: "rack1".into(),
            partition: "p1".into(),
            machines: vec![
                (
                    "00000000-0000-4000-8000-0000000000a1".into(),
                    hardware(8, 32, 500),
                ),
                (
                    "00000000-0000-4000-8000-0000000000a2".into(),
                    hardware(2, 4, 100),
                ),
                (
                    "00000000-0000-4000-8000-0000000000a3".into(),
                    hardware(8, 32, 500),
                ),
            ],
        },
        RackSpec {
            name: "rack2".into(),
            partition: "p1".into(),
            machines: vec![
                (
                    "00000000-0000-4000-8000-0000000000b1".into(),
                    hardware(8, 32, 500),
                ),
                (
                    "00000000-0000-4000-8000-0000000000b2".into(),
                    hardware(2, 4, 100),
                ),
            ],
        },
        RackSpec {
            name: "rack3".into(),
            partition: "p2".into(),
            machines: vec![(
                "00000000-0000-4000-8000-0000000000c1".into(),
                hardware(2, 4, 100),
            )],
        },
    ];
    let deployment = support::start(dir.path(), Addresses { base: [127, 0, 17] }, &racks, "")
        .await
        .unwrap();
    let tokens = &deployment.issuer_dir;
    let admin = deployment
        .client(&support::token(tokens, "ada", "admin", &[]).unwrap())
        .unwrap();
    let alice = deployment
        .client(&support::token(tokens, "alice", "edit", &["alpha"]).unwrap())
        .unwrap();
    let bob = deployment
        .client(&support::token(tokens, "bob", "edit", &["beta"]).unwrap())
        .unwrap();
    for project in ["alpha", "beta"] {
        post(&admin, "/v1/projects", json!({"name": project}))
            .await
            .unwrap();
    }

    // Images and sizes: admins only, checked input, no duplicates.
    let image = json!({"name": "debian-12", "url": "https://images.example/debian-12.img", "sha256": "ab".repeat(32)});
    assert_eq!(
        status(&post(&alice, "/v1/images", image.clone()).await),
        403
    );
    post(&admin, "/v1/images", image.clone()).await.unwrap();
    assert_eq!(status(&post(&admin, "/v1/images", image).await), 409);
    for (body, name) in [
        (
            json!({"name": "x", "url": "ftp://a/b", "sha256": "ab".repeat(32)}),
            "url",
        ),
        (
            json!({"name": "x", "url": "http://a/b", "sha256": "abc"}),
            "sha256",
        ),
        (
            json!({"name": ".x", "url": "http://a/b", "sha256": "ab".repeat(32)}),
            "name",
        ),
    ] {
        let result = post(&admin, "/v1/images", body).await;
        assert_eq!(status(&result), 400, "{result:?}");
        assert!(field(&result).contains(name), "{result:?}");
    }
    post(
        &admin,
        "/v1/sizes",
        json!({"name": "big", "min_cpus": 8, "min_memory_bytes": 16u64 << 30}),
    )
    .await
    .unwrap();
    post(&admin, "/v1/sizes", json!({"name": "small", "max_cpus": 4}))
        .await
        .unwrap();
    let inverted = post(
        &admin,
        "/v1/sizes",
        json!({"name": "odd", "min_cpus": 8, "max_cpus": 2}),
    )
    .await;
    assert_eq!(status(&inverted), 409, "{inverted:?}");

    // Machines carry their size and partition; filters combine.
    until(&alice, "/v1/machines?size=big", |m| {
        m.as_array().unwrap().len() == 3
    })
    .await;
    let p2 = get(&alice, "/v1/machines?partition=p2&size=small".into()).await;
    assert_eq!(p2.as_array().unwrap().len(), 1, "{p2}");
    let unknown = on(&alice, |c| c.get("/v1/machines?colour=red")).await;
    assert_eq!(status(&unknown), 400);
    let partitions = get(&alice, "/v1/partitions".into()).await;
    assert_eq!(partitions[0]["name"], "p1");
    assert_eq!(partitions[0]["racks"]["rack2"], json!(["rack2"]));

    // Networks: a private one by a member; a shared one by an admin with
    // its own prefix; overlaps refused.
    post(
        &alice,
        "/v1/networks",
        json!({"project": "alpha", "name": "web"}),
    )
    .await
    .unwrap();
    let shared = json!({"name": "storage", "shared": true, "prefix": "192.168.100.0/24"});
    assert_eq!(
        status(&post(&alice, "/v1/networks", shared.clone()).await),
        403
    );
    post(&admin, "/v1/networks", shared).await.unwrap();
    let overlap = post(
        &admin,
        "/v1/networks",
        json!({"name": "other", "shared": true, "prefix": "192.168.100.128/25"}),
    )
    .await;
    assert_eq!(status(&overlap), 409, "{overlap:?}");
    assert!(field(&overlap).contains("prefix"));
    let orphan = post(&alice, "/v1/networks", json!({"name": "lost"})).await;
    assert_eq!(status(&orphan), 409, "{orphan:?}");
    post(
        &admin,
        "/v1/networks",
        json!({"project": "alpha", "name": "tiny", "prefix": "10.99.0.0/30"}),
    )
    .await
    .unwrap();

    // Bad allocations: named field, nothing left behind.
    let base = json!({"project": "alpha", "network": "web", "hostname": "h", "image": "debian-12"});
    let with = |extra: Value| {
        let mut body = base.clone();
        body.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        body
    };
    for (extra, code, name) in [
        (json!({"image": "windows"}), 404, "image"),
        (json!({"size": "huge"}), 404, "size"),
        (json!({"partition": "mars"}), 404, "partition"),
        (json!({"network": "storage-x"}), 404, "network"),
        (json!({"colour": "red"}), 400, "colour"),
    ] {
        let result = post(&alice, "/v1/machines/allocate", with(extra)).await;
        assert_eq!(status(&result), code, "{result:?}");
        assert!(field(&result).contains(name), "{result:?}");
    }
    let garbage = on(&alice, |c| {
        c.post("/v1/machines/allocate", &json!("not an object"))
    })
    .await;
    assert_eq!(status(&garbage), 400);
    assert_eq!(get(&alice, "/v1/ips".into()).await, json!([]));

    // A size picks only fitting machines; placement tags spread across
    // racks (without them both would land in rack1, first by name).
    let mut racks_of_db = Vec::new();
    for n in 0..2 {
        let machine = post(
            &alice,
            "/v1/machines/allocate",
            with(json!({"hostname": format!("db{n}"), "size": "big", "tags": ["db"], "placement_tags": ["db"]})),
        )
        .await
        .unwrap();
        assert_eq!(machine["size"], "big", "{machine}");
        racks_of_db.push(machine["rack"].as_str().unwrap().to_string());
    }
    racks_of_db.sort();
    assert_eq!(racks_of_db, ["rack1", "rack2"]);
    until(&alice, "/v1/machines?tag=db", |m| {
        m.as_array().unwrap().len() == 2
    })
    .await;

    // Idempotency: a retry returns the same machine and allocates nothing more.
    let keyed = with(json!({"hostname": "once", "partition": "p1"}));
    let first = {
        let body = keyed.clone();
        on(&alice, move |c| {
            c.post_idempotent("/v1/machines/allocate", &body, Some("req-1"))
        })
        .await
        .unwrap()
    };
    let again = {
        let body = keyed.clone();
        on(&alice, move |c| {
            c.post_idempotent("/v1/machines/allocate", &body, Some("req-1"))
        })
        .await
        .unwrap()
    };
    assert_eq!(first["uuid"], again["uuid"]);
    let allocated = |m: &Value| {
        m.as_array()
            .unwrap()
            .iter()
            .filter(|m| !m["project"].is_null())
            .count()
    };
    until(&admin, "/v1/machines", |m| allocated(m) == 3).await;
    // Still three a moment later: the retry allocated nothing.
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(allocated(&get(&admin, "/v1/machines".into()).await), 3);

    // Reservations (admins): kept for beta, then locked.
    let c1 = "00000000-0000-4000-8000-0000000000c1";
    let reserve = |who: &ApiClient, body: Value| {
        on(who, move |c| {
            c.put(&format!("/v1/machines/{c1}/reservation"), &body)
        })
    };
    assert_eq!(
        status(&reserve(&alice, json!({"project": "alpha"})).await),
        403
    );
    reserve(&admin, json!({"project": "beta", "reason": "beta's db"}))
        .await
        .unwrap();
    let refused = post(
        &alice,
        "/v1/machines/allocate",
        with(json!({"machine": c1})),
    )
    .await;
    assert_eq!(status(&refused), 409, "{refused:?}");
    assert!(field(&refused).contains("no machine available"));
    let storage = json!({"project": "beta", "network": "storage", "hostname": "s", "image": "debian-12", "machine": c1});
    let on_shared = post(&bob, "/v1/machines/allocate", storage).await.unwrap();
    assert!(
        on_shared["ip"]
            .as_str()
            .unwrap()
            .starts_with("192.168.100."),
        "{on_shared}"
    );
    reserve(&admin, json!({"locked": true, "reason": "disk swap"}))
        .await
        .unwrap();
    let locked = on(&bob, move |c| {
        c.post(&format!("/v1/machines/{c1}/free"), &json!({}))
    })
    .await;
    assert_eq!(status(&locked), 409, "{locked:?}");
    on(&admin, move |c| {
        c.delete(&format!("/v1/machines/{c1}/reservation"))
    })
    .await
    .unwrap();
    on(&bob, move |c| {
        c.post(&format!("/v1/machines/{c1}/free"), &json!({}))
    })
    .await
    .unwrap();

    // IPs: acquired by a project, invisible to others, attached to an
    // allocation, kept when the machine is freed, then released.
    let ip = post(
        &alice,
        "/v1/ips",
        json!({"project": "alpha", "network": "web", "name": "vip"}),
    )
    .await
    .unwrap();
    let address = ip["address"].as_str().unwrap().to_string();
    assert_eq!(get(&bob, "/v1/ips".into()).await, json!([]));
    let stolen = post(
        &bob,
        "/v1/ips",
        json!({"project": "alpha", "network": "web"}),
    )
    .await;
    assert_eq!(status(&stolen), 403);
    let machine = post(
        &alice,
        "/v1/machines/allocate",
        with(json!({"hostname": "vip", "ip": address})),
    )
    .await
    .unwrap();
    assert_eq!(machine["ip"], address.as_str());
    let uuid = machine["uuid"].as_str().unwrap().to_string();
    let busy = {
        let address = address.clone();
        on(&alice, move |c| c.delete(&format!("/v1/ips/{address}"))).await
    };
    assert_eq!(status(&busy), 409, "{busy:?}");
    {
        let uuid = uuid.clone();
        on(&alice, move |c| {
            c.post(&format!("/v1/machines/{uuid}/free"), &json!({}))
        })
        .await
        .unwrap();
    }
    // Kept for the project, attached to nothing.
    until(&alice, "/v1/ips", |ips| {
        let kept: Vec<&Value> = ips
            .as_array()
            .unwrap()
            .iter()
            .filter(|ip| ip["address"] == address.as_str())
            .collect();
        kept.len() == 1 && kept[0]["acquired"] == true && kept[0]["machine"].is_null()
    })
    .await;
    {
        let address = address.clone();
        on(&alice, move |c| c.delete(&format!("/v1/ips/{address}")))
            .await
            .unwrap();
    }

    // An exhausted network: a /30 has two host addresses.
    for _ in 0..2 {
        post(
            &alice,
            "/v1/ips",
            json!({"project": "alpha", "network": "tiny"}),
        )
        .await
        .unwrap();
    }
    let full = post(
        &alice,
        "/v1/ips",
        json!({"project": "alpha", "network": "tiny"}),
    )
    .await;
    assert_eq!(status(&full), 409, "{full:?}");
    assert!(field(&full).contains("no free address"));

    // The metrics count what happened, by route template, and Prometheus's
    // own checker accepts the exposition.
    let exposition = {
        let url = deployment.metrics_url.clone();
        tokio::task::spawn_blocking(move || ureq::get(&url).call().unwrap().into_string().unwrap())
            .await
            .unwrap()
    };
    for expected in [
        "metalmesh_api_requests_total{route=\"/v1/machines/allocate\",method=\"POST\",status=\"200\"}",
        "metalmesh_api_requests_total{route=\"/v1/machines/allocate\",method=\"POST\",status=\"404\"}",
        "metalmesh_api_request_duration_seconds_bucket{",
        "metalmesh_api_machines{state=\"Waiting\",liveliness=\"Alive\"}",
        "metalmesh_api_machines_allocated ",
    ] {
        assert!(
            exposition.lines().any(|line| line.starts_with(expected)),
            "no sample line starts with {expected}:\n{exposition}"
        );
    }
    assert!(
        !exposition.contains("/v1/machines/0000"),
        "a raw path became a label:\n{exposition}"
    );
    // Prometheus itself (Debian's package, installed by scripts/setup)
    // scrapes the endpoint and answers queries over what it took.
    let scraped = scrape_with_prometheus(dir.path(), &deployment.metrics_url).await;
    assert!(
        scraped.contains("\"/v1/machines/allocate\""),
        "Prometheus has no allocate requests: {scraped}"
    );

    // Every change is in the audit log.
    let audit = get(&admin, "/v1/audit".into()).await;
    let actions: Vec<&str> = audit
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|e| e["action"].as_str())
        .collect();
    for action in [
        "image.create",
        "size.create",
        "machine.reserve",
        "ip.acquire",
        "ip.release",
        "machine.free",
    ] {
        assert!(actions.contains(&action), "{action} not in {actions:?}");
    }
}
