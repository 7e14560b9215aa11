//! `metalmesh-agent`: the daemon that runs on every leaf switch.
//!
//! It composes the other libraries: link discovery (LLDP), boot services and
//! the machine lifecycle from `metalmesh-provisioning`, the dataplane
//! reconciler, the BGP speaker from `metalmesh-bgp`, and the inventory mesh
//! from `metalmesh-inventory`. See `ARCHITECTURE.md` §1 and `docs/agent.md`.
