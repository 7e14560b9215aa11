//! The user's story through the API node, with the real binaries: a
//! testbed of two racks with the API node and the development OIDC issuer
//! in `mm-api`; a namespace machine per rack running the installer. Through
//! the `metalmesh` CLI only: an admin creates a project, its member a
//! private network; one machine is allocated in each rack, both phone home
//! and ping each other across racks over EVPN; another project's member
//! sees neither and cannot free them; freeing one returns it to Waiting.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::api::{
    IMAGE, agent_on, allocate_and_wait, alpha_and_web, json, machines, metalmesh, testbed, token,
    two_racks_waiting, up_with_api,
};
use common::{start_installer, uuid};
use metalmesh_testbed::testing::{Guard, eventually, ok, ping};
use std::process::Output;
use std::time::Duration;

#[test]
fn a_project_allocates_a_machine_per_rack_through_the_api_and_they_talk() {
    let guard = Guard::new();
    let run_dir = &guard.run_dir;
    let (_testbed, (admin, alice, bob)) = two_racks_waiting(&guard);
    let network = alpha_and_web(run_dir, &admin, &alice);
    ok(&metalmesh(run_dir, &admin, &["project", "create", "beta"]));
    assert!(
        network["prefixes"][0].as_str().unwrap().ends_with("/24"),
        "{network}"
    );

    let mut addresses = Vec::new();
    for rack in ["rack1", "rack2"] {
        let machine = allocate_and_wait(
            run_dir,
            &alice,
            "alpha",
            "web",
            &format!("web-{rack}"),
            &[
                "--rack",
                rack,
                "--ssh-key",
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIApiTestKey alice@alpha",
            ],
        );
        assert_eq!(machine["state"], "Phoned Home", "{machine}");
        assert_eq!(machine["rack"], rack);
        addresses.push(machine["ip"].as_str().unwrap().to_string());
    }
    // The machines (configured by their installers) reach each other
    // across racks: EVPN type 5 between the leaves' native speakers.
    assert!(
        eventually(Duration::from_secs(30), || ping("m1-1", &addresses[1])),
        "m1-1 cannot reach {} in rack 2",
        addresses[1]
    );

    // The table shows hardware, state, liveliness, rack and IP.
    let table = metalmesh(run_dir, &alice, &["machine", "ls"]);
    ok(&table);
    let table = String::from_utf8_lossy(&table.stdout).to_string();
    for expected in [
        "HARDWARE",
        " CPU ",
        "Phoned Home",
        "Alive",
        "rack1",
        "rack2",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain(addresses.iter().cloned())
    {
        assert!(table.contains(&expected), "{expected} missing:\n{table}");
    }

    // Each leaf downloaded the image from the image server, checked it,
    // and its installer fetched it from the leaf's cache by checksum.
    let (_, sha256) = metalmesh_testbed::api::os_image().unwrap();
    for (leaf, rack) in [("leaf1", 1), ("leaf2", 2)] {
        let described = json(&agent_on(
            run_dir,
            leaf,
            &["machine", "describe", &uuid(rack, 1), "-o", "json"],
        ));
        let url = described["allocation"]["image_url"]
            .as_str()
            .unwrap_or_default();
        assert!(
            url.ends_with(&format!("/images/{sha256}.img")),
            "{described}"
        );
    }

    // Another project's member sees neither and cannot free them.
    let seen_by_bob = machines(run_dir, &bob);
    assert!(
        seen_by_bob.iter().all(|m| m["project"].is_null()),
        "{seen_by_bob:?}"
    );
    let out = metalmesh(run_dir, &bob, &["machine", "free", &uuid(1, 1)]);
    assert!(!out.status.success());
    assert_eq!(out.status.code(), Some(2), "{out:?}");

    // Freed, the machine is wiped and returns to Waiting; its address is
    // free again.
    ok(&metalmesh(
        run_dir,
        &alice,
        &["machine", "free", &uuid(1, 1)],
    ));
    assert!(
        eventually(Duration::from_secs(90), || machines(run_dir, &alice)
            .iter()
            .any(|m| m["uuid"] == uuid(1, 1)
                && m["state"] == "Waiting"
                && m["project"].is_null())),
        "not back to Waiting: {:?}",
        machines(run_dir, &alice)
    );
}

#[test]
fn racks_keep_working_while_the_api_is_down_and_it_sees_all_of_it_after() {
    let guard = Guard::new();
    let run_dir = &guard.run_dir;
    let _testbed = up_with_api(run_dir, 1, 3);
    let admin = token(run_dir, "ada", "admin", None);
    let alice = token(run_dir, "alice", "edit", Some("alpha"));
    start_installer(&guard.scratch, 1, 1);
    assert!(
        eventually(Duration::from_secs(90), || machines(run_dir, &admin)
            .iter()
            .any(|m| m["state"] == "Waiting")),
        "no machine Waiting through the API"
    );
    let network = alpha_and_web(run_dir, &admin, &alice);
    let allocated = json(&metalmesh(
        run_dir,
        &alice,
        &[
            "machine",
            "allocate",
            "--project",
            "alpha",
            "--network",
            "web",
            "--hostname",
            "a1",
            "--image",
            IMAGE,
            "--wait",
            "--timeout-secs",
            "180",
            "-o",
            "json",
        ],
    ));
    assert_eq!(allocated["state"], "Phoned Home");

    // The API goes down. A new machine boots, registers and waits; the
    // allocated one is freed and reclaimed; a rack-local allocation takes
    // the address the API would have handed out next.
    ok(&testbed(run_dir, &["kill", "api"]));
    assert!(
        !metalmesh(run_dir, &admin, &["machine", "ls"])
            .status
            .success()
    );
    start_installer(&guard.scratch, 1, 2);
    let waiting = |uuid: &str| {
        let out = agent_on(run_dir, "leaf1", &["machines", "-o", "json"]);
        let all: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap_or_default();
        all.iter()
            .any(|m| m["uuid"] == uuid && m["state"] == "Waiting")
    };
    assert!(
        eventually(Duration::from_secs(90), || waiting(&uuid(1, 2))),
        "a machine did not reach Waiting with the API down"
    );
    ok(&agent_on(
        run_dir,
        "leaf1",
        &["machine", "free", &uuid(1, 1)],
    ));
    assert!(
        eventually(Duration::from_secs(90), || waiting(&uuid(1, 1))),
        "a freed machine was not reclaimed with the API down"
    );
    let prefix = network["prefixes"][0].as_str().unwrap();
    let base: std::net::Ipv4Addr = prefix.split('/').next().unwrap().parse().unwrap();
    let taken = std::net::Ipv4Addr::from(u32::from(base) + 2).to_string();
    ok(&agent_on(
        run_dir,
        "leaf1",
        &[
            "machine",
            "allocate",
            &uuid(1, 2),
            "--image",
            "testbed-default",
            "--ip",
            &taken,
            "--hostname",
            "local-1",
        ],
    ));

    // Back up, the API shows all of it and does not hand out that address.
    ok(&testbed(run_dir, &["start", "api"]));
    assert!(
        eventually(Duration::from_secs(60), || {
            let all = machines(run_dir, &admin);
            all.iter()
                .any(|m| m["uuid"] == uuid(1, 2) && m["ip"] == taken.as_str())
                && all.iter().any(|m| {
                    m["uuid"] == uuid(1, 1) && m["state"] == "Waiting" && m["project"].is_null()
                })
        }),
        "the API does not show what happened while it was down: {:?}",
        machines(run_dir, &admin)
    );
    let again = json(&metalmesh(
        run_dir,
        &alice,
        &[
            "machine",
            "allocate",
            "--project",
            "alpha",
            "--network",
            "web",
            "--hostname",
            "a2",
            "--image",
            IMAGE,
            "-o",
            "json",
        ],
    ));
    assert_eq!(again["uuid"], uuid(1, 1).as_str());
    assert_ne!(
        again["ip"],
        taken.as_str(),
        "the API handed out an address taken meanwhile"
    );
    let first = allocated["ip"].as_str().unwrap();
    assert_eq!(
        again["ip"], first,
        "the freed address should be the lowest free one"
    );
}

#[test]
fn a_hundred_concurrent_allocations_share_fifty_machines_exactly() {
    let guard = Guard::new();
    let run_dir = &guard.run_dir;
    let per_rack = 25;
    let _testbed = up_with_api(run_dir, 2, per_rack);
    for rack in [1, 2] {
        for index in 1..=per_rack {
            start_installer(&guard.scratch, rack, index);
        }
    }
    let admin = token(run_dir, "ada", "admin", None);
    let alice = token(run_dir, "alice", "edit", Some("alpha"));
    assert!(
        eventually(Duration::from_secs(180), || {
            let all = machines(run_dir, &admin);
            all.iter().filter(|m| m["state"] == "Waiting").count() == 50
        }),
        "not 50 machines Waiting: {}",
        machines(run_dir, &admin).len()
    );
    alpha_and_web(run_dir, &admin, &alice);
    let outcomes: Vec<Output> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..100)
            .map(|i| {
                let alice = &alice;
                scope.spawn(move || {
                    metalmesh(
                        run_dir,
                        alice,
                        &[
                            "machine",
                            "allocate",
                            "--project",
                            "alpha",
                            "--network",
                            "web",
                            "--hostname",
                            &format!("n{i}"),
                            "--image",
                            IMAGE,
                            "-o",
                            "json",
                        ],
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let (won, lost): (Vec<&Output>, Vec<&Output>) =
        outcomes.iter().partition(|out| out.status.success());
    let api_log =
        std::fs::read_to_string(run_dir.join("nodes/api/api/api.log")).unwrap_or_default();
    if won.len() != 50 {
        // Why the others lost, grouped by answer, and what the API did.
        let mut reasons: std::collections::BTreeMap<String, usize> = Default::default();
        for out in &lost {
            *reasons
                .entry(String::from_utf8_lossy(&out.stderr).trim().to_string())
                .or_default() += 1;
        }
        let notable: Vec<&str> = api_log
            .lines()
            .filter(|l| l.contains("WARN") || l.contains("ERROR") || l.contains("refused"))
            .take(80)
            .collect();
        panic!(
            "{} allocations succeeded; the others were answered {reasons:#?}\nAPI log:\n{}",
            won.len(),
            notable.join("\n")
        );
    }
    for out in &lost {
        let stderr = String::from_utf8_lossy(&out.stderr);
        if !stderr.contains("no machine available") {
            let tail: Vec<&str> = api_log.lines().rev().take(60).collect();
            eprintln!("API log (newest first):\n{}", tail.join("\n"));
        }
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert!(stderr.contains("no machine available"), "{stderr}");
    }
    let allocated: Vec<serde_json::Value> = won.iter().map(|out| json(out)).collect();
    let uuids: std::collections::BTreeSet<&str> = allocated
        .iter()
        .map(|m| m["uuid"].as_str().unwrap())
        .collect();
    let ips: std::collections::BTreeSet<&str> = allocated
        .iter()
        .map(|m| m["ip"].as_str().unwrap())
        .collect();
    assert_eq!(
        (uuids.len(), ips.len()),
        (50, 50),
        "a machine or an address twice"
    );
    // The replica agrees: 50 machines of alpha, 50 distinct addresses.
    assert!(
        eventually(Duration::from_secs(30), || {
            let all = machines(run_dir, &alice);
            let mine: Vec<&serde_json::Value> =
                all.iter().filter(|m| m["project"] == "alpha").collect();
            let addresses: std::collections::BTreeSet<String> =
                mine.iter().map(|m| m["ip"].to_string()).collect();
            mine.len() == 50 && addresses.len() == 50
        }),
        "the replica does not show 50 distinct allocations"
    );
}
