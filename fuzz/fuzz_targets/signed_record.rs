//! Any bytes decode to a record or an error, never a panic; a record the
//! keyring admits was signed, field for field, by a key its origin holds and
//! fits the writer table; and a replica applying it never panics.
//!
//! The keyring pins two nodes whose keys come from fixed seeds (the same as
//! the checked-in seeds use, see `trust::signing` tests): `leaf1` (leaf)
//! from `[1; 32]` and `api` (api) from `[2; 32]`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metalmesh_inventory::record::Record;
use metalmesh_inventory::replica::{MemoryReplica, Replica};
use metalmesh_inventory::trust::{Keyring, KnownNode, Role, Signer, rules};
use std::collections::HashMap;
use std::sync::{Arc, OnceLock};

fn nodes() -> Arc<HashMap<String, KnownNode>> {
    static NODES: OnceLock<Arc<HashMap<String, KnownNode>>> = OnceLock::new();
    Arc::clone(NODES.get_or_init(|| {
        let known = |seed: u8, role| KnownNode {
            role,
            keys: vec![Signer::from_seed(&[seed; 32]).public_key().clone()],
            addresses: Vec::new(),
            issued: 0,
        };
        Arc::new(HashMap::from([
            ("leaf1".to_string(), known(1, Role::Leaf)),
            ("api".to_string(), known(2, Role::Api)),
        ]))
    }))
}

fuzz_target!(|data: &[u8]| {
    let Ok(record) = postcard::from_bytes::<Record>(data) else {
        return;
    };
    let mut keyring = Keyring::pinned("leaf9", nodes());
    if keyring.check(&record, 0).is_ok() {
        let node = keyring
            .node(&record.origin)
            .expect("admitted from an origin the keyring knows");
        assert!(
            node.keys.iter().any(|key| key.verify(&record)),
            "admitted without a valid signature: {record:?}"
        );
        assert!(rules::check(record.id.kind, &record.id.key, &record.origin, node.role).is_ok());
    }
    let mut replica = MemoryReplica::new(Keyring::pinned("leaf9", nodes()));
    let now = metalmesh_inventory::clock::now_version();
    let _ = replica.apply(vec![record], now);
});
