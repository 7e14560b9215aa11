//! The metalmesh BGP speaker: an I/O-free session state machine, RIBs and best
//! path selection for IPv4/IPv6 unicast and L2VPN EVPN, with unnumbered peers.
//! It knows neither the agent nor the inventory: kernel route installation
//! and configuration come in through traits and types defined here.
