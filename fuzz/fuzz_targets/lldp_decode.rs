//! Any byte string given to the LLDP decoder yields a frame or an error, never
//! a panic; whatever decodes and re-encodes decodes to the same frame.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metalmesh_lldp::Frame;

fuzz_target!(|data: &[u8]| {
    if let Ok(frame) = Frame::decode(data) {
        if let Ok(bytes) = frame.encode() {
            let again = Frame::decode(&bytes).expect("re-encoded frame must decode");
            assert_eq!(again, frame);
        }
    }
});
