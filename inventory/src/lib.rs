//! metalmesh's inventory: the data model of the data center (switches, ports,
//! machines, leases, and the API-owned records), the node-local store, and the
//! gossip mesh that replicates every record to every node. It is the base of
//! the layering and imports no other metalmesh crate.
