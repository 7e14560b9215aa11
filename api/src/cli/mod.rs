//! The `metalmesh` command line. One module per noun.

pub mod ca;
pub mod client;
pub mod contexts;
pub mod device_login;
pub mod resources;
