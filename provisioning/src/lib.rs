//! Boot services run by the leaf agent for its rack (DHCPv4, TFTP, HTTP boot,
//! iPXE scripts), the machine lifecycle state machine, and the in-machine
//! installer.
