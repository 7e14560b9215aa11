//! Any file where the DHCP lease store expects its database: opening it
//! succeeds or fails with an error, never a panic, and a file it refuses
//! is left exactly as it was (a damaged store is never reset, a failed
//! migration never half-applied).
#![no_main]

use libfuzzer_sys::fuzz_target;
use metalmesh_provisioning::dhcp::LeaseStore;

fuzz_target!(|data: &[u8]| {
    let dir = tempfile::tempdir().expect("temporary directory");
    let path = dir.path().join("leases.db");
    std::fs::write(&path, data).expect("write");
    match LeaseStore::open(&path) {
        Ok(store) => {
            let _ = store.leases();
            let _ = store.quarantine();
        }
        Err(_) => {
            let after = std::fs::read(&path).expect("read");
            let first_change = after.iter().zip(data).position(|(a, b)| a != b);
            assert!(
                after.len() == data.len() && first_change.is_none(),
                "a refused store was changed: {} bytes → {}, first change at {first_change:?}",
                data.len(),
                after.len()
            );
        }
    }
});
