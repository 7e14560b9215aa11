//! Record-and-replay conformance of the machine core: each case under
//! `tests/conformance/machines/<case>/` is a list of timed inputs
//! (`input.jsonl`) and the outcome the core must produce for each
//! (`expected.jsonl`). No root, no network, no clock: the core is handed
//! everything. After an intended change of behaviour,
//! `METALMESH_CONFORMANCE_REWRITE=1 cargo nextest run -p metalmesh-agent
//! --test machines_conformance` rewrites the expected files (see
//! `metalmesh_conformance`); review the diff before committing it.
//!
//! Besides core inputs, a line may be `{"now": T, "restart": true}`: the
//! agent restarts, and a new core loads the records written so far (as the
//! store would hold them).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use metalmesh_agent::machines::core::{CoreSettings, Input, MachineCore, Outcome};
use metalmesh_agent::machines::lifecycle::Thresholds;
use metalmesh_agent::machines::record::MachineRecord;
use serde::Deserialize;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    now: u64,
    #[serde(default)]
    input: Option<Input>,
    #[serde(default)]
    restart: bool,
}

fn settings() -> CoreSettings {
    CoreSettings {
        switch: "leaf1".into(),
        thresholds: Thresholds {
            history: 50,
            dead_after_ms: 60_000,
            reboot_waiting_after_ms: 86_400_000,
            crash_loop_cycles: 3,
            reclaim_timeout_ms: 900_000,
            install_timeout_ms: 600_000,
            install_retries: 2,
        },
        leases_known: true,
        // The recorded cases predate port bindings; the core's unit tests
        // cover callers identified by port.
        ports_known: false,
        wipe: Default::default(),
    }
}

/// Replays one case; returns each line's outcome as JSON.
fn replay(case: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(case.join("input.jsonl")).expect("input.jsonl");
    let mut core = MachineCore::new(settings(), Vec::new());
    // The store as the driver would leave it: the newest record per machine.
    let mut stored: BTreeMap<String, MachineRecord> = BTreeMap::new();
    let mut facts: Vec<Input> = Vec::new();
    let mut out = Vec::new();
    for (number, raw) in text.lines().enumerate() {
        if raw.trim().is_empty() {
            continue;
        }
        let line: Line = serde_json::from_str(raw)
            .unwrap_or_else(|e| panic!("{}:{}: {e}", case.display(), number + 1));
        let outcome = if line.restart {
            core = MachineCore::new(settings(), stored.values().cloned().collect());
            // The driver hands the facts it observes to every new core.
            let mut outcome = Outcome::default();
            for fact in &facts {
                let step = core.handle(line.now, fact.clone());
                outcome.ports = step.ports.or(outcome.ports);
            }
            outcome
        } else {
            let input = line
                .input
                .unwrap_or_else(|| panic!("{}:{}: no input", case.display(), number + 1));
            if matches!(input, Input::Neighbors(_) | Input::Vrfs(_)) {
                facts.retain(|f| std::mem::discriminant(f) != std::mem::discriminant(&input));
                facts.push(input.clone());
            }
            core.handle(line.now, input)
        };
        for record in &outcome.writes {
            stored.insert(record.machine.uuid.clone(), record.clone());
        }
        out.push(serde_json::to_string(&outcome).expect("outcomes serialise"));
    }
    out
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/machines");
    metalmesh_conformance::cases(&root, 6)
}

#[test]
fn machine_core_conformance() {
    metalmesh_conformance::check(&cases(), replay);
}

/// The check above can fail: a changed expected line is caught.
#[test]
fn a_changed_expected_line_is_caught() {
    metalmesh_conformance::assert_a_changed_line_is_caught(
        &cases(),
        replay,
        &[r#"{"answers": [[99, {"Ok": {"action": "reboot"}}]]}"#],
    );
}

/// The core stays I/O-free: no runtime, file, database or clock in the
/// modules it is made of (the driver, `task.rs`, does all of that).
#[test]
fn the_machine_core_does_no_io() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/machines");
    for file in ["core.rs", "lifecycle.rs", "record.rs"] {
        let source = std::fs::read_to_string(dir.join(file)).expect("source");
        for banned in [
            "tokio",
            "std::fs",
            "rusqlite",
            "SystemTime",
            "Instant::now",
            "std::net::UdpSocket",
            "std::thread",
        ] {
            assert!(
                !source.contains(banned),
                "src/machines/{file} uses `{banned}`: the machine core must stay I/O-free"
            );
        }
    }
}
