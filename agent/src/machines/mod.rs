//! The machines cabled to this leaf: their lifecycle (register, wait,
//! install, phone home, reclaim), persisted in the inventory store, and the
//! operator's rack-local commands (`machines`, `machine allocate|free|…`).
//!
//! - [`lifecycle`]: one machine's state machine (events, liveliness, crash
//!   loops, failed reclaims, the install watchdog).
//! - [`core`]: every machine of the leaf, I/O-free: `handle(now, Input) ->
//!   Outcome`.
//! - [`record`]: the stored record (the mesh's machine model plus the
//!   lifecycle's state).
//! - [`task`]: the tokio driver that does the core's I/O.
//! - [`durations`]: power-on → Waiting and allocate → Phoned Home, for the
//!   metrics.

pub mod core;
pub mod durations;
pub mod lifecycle;
pub mod record;
pub mod task;
