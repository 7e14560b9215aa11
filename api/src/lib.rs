//! metalmesh's API node and the `metalmesh` CLI.
//!
//! - [`node`]: the API node (`metalmesh-api`): REST over HTTPS with OIDC,
//!   a member of the inventory mesh with the `api` role.
//! - [`cli`]: the `metalmesh` command line (the mesh CA, and the API's
//!   nouns and verbs).

pub mod cli;
pub mod node;
