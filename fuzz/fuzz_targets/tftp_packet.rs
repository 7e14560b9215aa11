//! Any datagram given to the TFTP decoder yields a packet or an error, never a
//! panic; decoded packets re-encode to the same packet.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metalmesh_provisioning::tftp::Packet;

fuzz_target!(|data: &[u8]| {
    if let Ok(packet) = Packet::decode(data) {
        let again = Packet::decode(&packet.encode()).expect("re-encoded packet must decode");
        assert_eq!(again, packet);
    }
});
