//! The machines cabled to this leaf: their lifecycle (register, wait,
//! install, phone home, reclaim), persisted in the inventory store, and the
//! operator's rack-local commands (`machines`, `machine allocate|free|…`).

pub mod manager;
pub mod record;
