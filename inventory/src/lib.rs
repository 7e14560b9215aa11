//! metalmesh's inventory: the data model of the data center (switches, ports,
//! machines, leases, and the API-owned records), the node-local store, and the
//! gossip mesh that replicates every record to every node. It is the base of
//! the layering and imports no other metalmesh crate.
//!
//! - [`record`]: the replicated unit `(kind, key, origin, version, value)`.
//! - [`model`]: typed values carried by records.
//! - [`clock`]: record versions (monotonic wall-clock time per node).
//! - [`store`]: the node-local SQLite replica with change subscriptions.
//! - [`pki`]: the mesh certificate authority.
//! - [`mesh`]: SWIM membership, dissemination and anti-entropy over QUIC.
//! - [`sim`]: a deterministic in-process network to run many mesh nodes.

pub mod clock;
pub mod digest;
pub mod mesh;
pub mod model;
pub mod pki;
pub mod record;
pub mod replica;
pub mod sim;
pub mod store;

pub use record::{Record, RecordKey, RecordKind, Version};
pub use store::{Store, StoreError};
