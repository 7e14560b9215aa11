//! The metalmesh API node (REST, OIDC, IPAM, allocation) and the `metalmesh`
//! CLI. It reaches rack agents only over the inventory mesh.
