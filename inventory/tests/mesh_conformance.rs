//! Record-and-replay conformance of the mesh node (SWIM membership,
//! dissemination, anti-entropy): each case under
//! `tests/conformance/mesh/<case>/` lists timed inputs to one node
//! (`input.jsonl`) and the actions it must answer each with
//! (`expected.jsonl`). No sockets, no clock, a fixed random seed: the node
//! is handed everything. `METALMESH_CONFORMANCE_REWRITE=1` rewrites the
//! expected files after an intended change (see `metalmesh_conformance`).
//!
//! An input line is one of
//! - `{"now": V, "start": true}`: the node starts (announces, arms timers);
//! - `{"now": V, "input": <Input>}`: any input as the transport hands it;
//! - `{"now": V, "swim": {"from": <Peer>, "header": <foca header>}}`: a
//!   SWIM packet, encoded here so cases stay readable.
//!
//! Records in inputs are signed by the harness with their origin's key
//! (derived from its name, see [`NODES`]) unless they carry a signature or
//! the line says `"unsigned": true`.
//!
//! In the outputs a SWIM packet is shown decoded (its header, and how many
//! bytes of member updates follow) for the same reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use foca::{Codec as _, PostcardCodec};
use metalmesh_inventory::mesh::message::{Envelope, Message, WIRE_VERSION};
use metalmesh_inventory::mesh::node::{Action, Input, MeshNode, Tuning};
use metalmesh_inventory::mesh::peer::Peer;
use metalmesh_inventory::record::Version;
use metalmesh_inventory::replica::MemoryReplica;
use metalmesh_inventory::trust::{Keyring, KnownNode, Role, Signer};
use serde::Deserialize;
use serde_json::{Value, json};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct Line {
    now: Version,
    #[serde(default)]
    start: bool,
    #[serde(default)]
    input: Option<Input>,
    #[serde(default)]
    swim: Option<SwimLine>,
    /// Leave the input's records unsigned (otherwise the harness signs
    /// every record that carries no signature with its origin's key).
    #[serde(default)]
    unsigned: bool,
}

#[derive(Debug, Deserialize)]
struct SwimLine {
    from: Peer,
    header: foca::Header<Peer>,
}

/// The nodes cases speak for, with their roles. Keys are derived from the
/// names, so signatures (and the expected outputs) are the same every run.
const NODES: [(&str, Role); 4] = [
    ("leaf-a", Role::Leaf),
    ("leaf-b", Role::Leaf),
    ("leaf-c", Role::Leaf),
    ("api", Role::Api),
];

fn signer(name: &str) -> Signer {
    let mut seed = [0u8; 32];
    for (slot, byte) in seed.iter_mut().zip(name.bytes()) {
        *slot = byte;
    }
    Signer::from_seed(&seed)
}

/// Signs, with its origin's key, every record of `input` that has no
/// signature.
fn sign_records(input: &mut Input) {
    let records = match input {
        Input::Published(records) => records,
        Input::Received(Envelope {
            message: Message::Records(records) | Message::SyncRecords(records),
            ..
        }) => records,
        _ => return,
    };
    for record in records.iter_mut().filter(|r| r.signature.is_empty()) {
        signer(&record.origin).sign(record);
    }
}

/// The node every case drives.
fn node() -> MeshNode<MemoryReplica> {
    let keys: HashMap<String, KnownNode> = NODES
        .iter()
        .map(|(name, role)| {
            let node = KnownNode {
                role: *role,
                keys: vec![signer(name).public_key().clone()],
                addresses: Vec::new(),
                issued: 0,
            };
            (name.to_string(), node)
        })
        .collect();
    let identity = Peer {
        name: "leaf-a".into(),
        addr: "10.0.0.1:7946".parse().unwrap(),
        bump: 1,
    };
    let seeds = vec!["10.0.0.2:7946".parse().unwrap()];
    MeshNode::new(
        identity,
        seeds,
        MemoryReplica::new(Keyring::pinned("leaf-a", Arc::new(keys))),
        Tuning::default(),
        7,
    )
}

fn encode_swim(header: &foca::Header<Peer>) -> Vec<u8> {
    let mut bytes = Vec::new();
    PostcardCodec.encode_header(header, &mut bytes).unwrap();
    bytes
}

/// An action as JSON, with SWIM bytes decoded.
fn show(action: &Action) -> Value {
    let mut value = serde_json::to_value(action).expect("actions serialise");
    if let Action::Send {
        envelope: Envelope {
            message: Message::Swim(bytes),
            ..
        },
        ..
    } = action
    {
        let mut rest = &bytes[..];
        let decoded = match foca::Codec::<Peer>::decode_header(&mut PostcardCodec, &mut rest) {
            Ok(header) => json!({ "header": header, "update_bytes": rest.len() }),
            Err(error) => json!({ "undecodable": error.to_string() }),
        };
        value["send"]["envelope"]["message"] = json!({ "swim": decoded });
    }
    value
}

fn replay(case: &Path) -> Vec<String> {
    let mut node = node();
    let mut out = Vec::new();
    for (number, raw) in metalmesh_conformance::lines(&case.join("input.jsonl"))
        .iter()
        .enumerate()
    {
        let at = || format!("{}:{}", case.display(), number + 1);
        let line: Line = serde_json::from_str(raw).unwrap_or_else(|e| panic!("{}: {e}", at()));
        let actions = if line.start {
            node.start()
        } else if let Some(swim) = line.swim {
            let envelope = Envelope {
                version: WIRE_VERSION,
                from: swim.from,
                message: Message::Swim(encode_swim(&swim.header)),
            };
            node.handle(line.now, Input::Received(envelope))
        } else {
            let mut input = line.input.unwrap_or_else(|| panic!("{}: no input", at()));
            if !line.unsigned {
                sign_records(&mut input);
            }
            node.handle(line.now, input)
        };
        let shown: Vec<Value> = actions.iter().map(show).collect();
        out.push(serde_json::to_string(&shown).expect("json"));
    }
    out
}

fn cases() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/conformance/mesh");
    metalmesh_conformance::cases(&root, 5)
}

#[test]
fn mesh_node_conformance() {
    metalmesh_conformance::check(&cases(), replay);
}

/// The check above can fail: a changed expected line is caught.
#[test]
fn a_changed_expected_line_is_caught() {
    metalmesh_conformance::assert_a_changed_line_is_caught(
        &cases(),
        replay,
        &[
            "[]",
            r#"[{"member_down": {"name": "x", "addr": "10.0.0.9:1", "bump": 0}}]"#,
        ],
    );
}
