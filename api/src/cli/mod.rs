//! The `metalmesh` command line. One module per noun.

pub mod ca;
pub mod client;
pub mod contexts;
pub mod resources;
