//! The `metalmesh` command line. One module per noun.

pub mod ca;
