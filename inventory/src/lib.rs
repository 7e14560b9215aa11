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
//! - [`trust`]: who may write what, record signatures, revocation.
//! - [`mesh`]: SWIM membership, dissemination and anti-entropy over QUIC.
//! - [`sim`]: a deterministic in-process network to run many mesh nodes.
//!
//! Everything but the model, records and digests needs the default `node`
//! feature; the in-machine installer builds without it.

pub mod clock;
pub mod digest;
#[cfg(feature = "node")]
pub mod mesh;
pub mod model;
#[cfg(feature = "node")]
pub mod pki;
pub mod record;
pub mod replica;
#[cfg(feature = "node")]
pub mod sim;
#[cfg(feature = "node")]
pub mod store;
pub mod trust;

pub use record::{Record, RecordKey, RecordKind, Version};
#[cfg(feature = "node")]
pub use store::{Store, StoreError};
