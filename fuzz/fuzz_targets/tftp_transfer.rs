//! The TFTP transfer state machine under any sequence of ACKs and
//! timeouts, for any file size, block size and window: it never panics,
//! acknowledged blocks only grow and never pass the last block, every
//! window lies within the file, the transfer ends exactly when the last
//! block is acknowledged, and a silent client is given up on.
//!
//! Input: `[size: u32 LE][blksize: u16 LE][window: u8]` then events: an
//! event byte `0` is a timeout, else an ACK `byte - 1` blocks past the
//! window's base (wrapping like wire numbers), or raw with the high bit.
#![no_main]

use libfuzzer_sys::fuzz_target;
use metalmesh_provisioning::tftp::window::{Ack, MAX_RETRIES, Window};

fuzz_target!(|data: &[u8]| {
    let [s0, s1, s2, s3, b0, b1, w, events @ ..] = data else { return };
    let size = u64::from(u32::from_le_bytes([*s0, *s1, *s2, *s3]));
    let blksize = usize::from(u16::from_le_bytes([*b0, *b1])).clamp(8, 65464);
    let windowsize = u16::from(*w % 64) + 1;
    let mut window = Window::new(size, blksize, windowsize);
    assert_eq!(window.blocks(), size / blksize as u64 + 1);
    let mut timeouts = 0u32;
    for (i, event) in events.iter().enumerate() {
        if window.is_done() {
            assert_eq!(window.acked(), window.blocks());
            assert!(window.to_send().is_empty());
            return;
        }
        let sent = window.to_send();
        assert!(!sent.is_empty());
        assert!(*sent.start() == window.acked() + 1 && *sent.end() <= window.blocks());
        assert!(sent.end() - sent.start() < u64::from(windowsize));
        let before = window.acked();
        if *event == 0 {
            timeouts += 1;
            assert_eq!(window.on_timeout(), timeouts <= MAX_RETRIES);
            if timeouts > MAX_RETRIES {
                return;
            }
            continue;
        }
        let wire = if event & 0x80 != 0 {
            u16::from_le_bytes([*event, events.get(i + 1).copied().unwrap_or(0)])
        } else {
            Window::wire(before + u64::from(event - 1))
        };
        let accepted = window.accepts(wire);
        match window.on_ack(wire) {
            Ack::Advanced => {
                assert!(accepted && window.acked() > before && window.acked() <= *sent.end());
                assert_eq!(Window::wire(window.acked()), wire);
                timeouts = 0;
            }
            Ack::GapReported => assert!(accepted && window.acked() == before && wire == Window::wire(before)),
            Ack::Ignored => assert!(!accepted && window.acked() == before),
        }
    }
});
