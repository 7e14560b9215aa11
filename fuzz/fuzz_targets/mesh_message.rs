//! Any bytes a mesh peer sends decode to a message or an error, never a
//! panic; a decoded message re-encodes to the same message; and feeding it
//! to a mesh node (in-memory replica) never panics either.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metalmesh_inventory::mesh::message::{decode, encode};
use metalmesh_inventory::mesh::{Input, MeshNode, Peer, Tuning};
use metalmesh_inventory::replica::MemoryReplica;
use metalmesh_inventory::trust::Keyring;
use std::sync::Arc;

fuzz_target!(|data: &[u8]| {
    if let Ok(envelope) = decode(data) {
        let again = decode(&encode(&envelope)).expect("re-encoded message must decode");
        assert_eq!(again, envelope);
        let me = Peer {
            name: "leaf1".into(),
            addr: "10.255.0.1:7946".parse().unwrap(),
            bump: 1,
        };
        let keyring = Keyring::pinned("leaf1", Arc::default());
        let mut node = MeshNode::new(me, Vec::new(), MemoryReplica::new(keyring), Tuning::default(), 1);
        let _ = node.start();
        let _ = node.handle(0, Input::Received(envelope));
    }
});
