//! metalmesh's API node and the `metalmesh` CLI. The REST server joins the
//! inventory mesh and forwards decisions to rack agents; today the crate
//! holds the CLI's mesh CA commands (`metalmesh ca init|issue`).

pub mod cli;
