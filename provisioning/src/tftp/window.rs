//! Where a read transfer stands, free of I/O (RFC 1350, RFC 7440 windows):
//! which blocks to send next, what an ACK does, when to give up. The
//! service sends and waits; this decides — so it can be driven by a fuzzer
//! and by tests that cross block 65,535, where wire block numbers wrap.

/// Retransmissions of one window before the transfer is abandoned.
pub const MAX_RETRIES: u32 = 6;

/// One transfer's progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    blocks: u64,
    windowsize: u16,
    acked: u64,
    retries: u32,
    /// A gap report (an ACK of the window's base) was answered in this
    /// window already.
    gap_reported: bool,
}

/// What an ACK did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Blocks up to it are acknowledged: send the next window.
    Advanced,
    /// The client missed a block of the window (RFC 7440): send the window
    /// again, at once, once per window — more would be the Sorcerer's
    /// Apprentice (RFC 1123 4.2.3.1).
    GapReported,
    /// Stale, duplicate or out of the window: nothing to do.
    Ignored,
}

impl Window {
    /// A transfer of `size` bytes in blocks of `blksize` (at least 1),
    /// `windowsize` blocks at a time (at least 1). Blocks are numbered from
    /// 1; the last one is shorter than `blksize`, maybe empty.
    pub fn new(size: u64, blksize: usize, windowsize: u16) -> Window {
        Window {
            blocks: size / blksize.max(1) as u64 + 1,
            windowsize: windowsize.max(1),
            acked: 0,
            retries: 0,
            gap_reported: false,
        }
    }

    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    pub fn acked(&self) -> u64 {
        self.acked
    }

    pub fn is_done(&self) -> bool {
        self.acked >= self.blocks
    }

    /// The blocks of the current window (empty when done).
    pub fn to_send(&self) -> std::ops::RangeInclusive<u64> {
        self.acked + 1..=self.window_end()
    }

    fn window_end(&self) -> u64 {
        (self.acked + u64::from(self.windowsize)).min(self.blocks)
    }

    /// A block's number on the wire (its low 16 bits).
    pub fn wire(block: u64) -> u16 {
        block as u16
    }

    /// Whether an ACK of wire block `wire` means something now; the service
    /// keeps waiting through the others.
    pub fn accepts(&self, wire: u16) -> bool {
        let delta = u64::from(wire.wrapping_sub(self.acked as u16));
        let gap_allowed = self.windowsize > 1 && !self.gap_reported;
        (delta >= 1 && delta <= self.window_end() - self.acked) || (delta == 0 && gap_allowed)
    }

    pub fn on_ack(&mut self, wire: u16) -> Ack {
        if self.is_done() || !self.accepts(wire) {
            return Ack::Ignored;
        }
        let delta = u64::from(wire.wrapping_sub(self.acked as u16));
        if delta == 0 {
            self.gap_reported = true;
            return Ack::GapReported;
        }
        self.acked += delta;
        self.retries = 0;
        self.gap_reported = false;
        Ack::Advanced
    }

    /// No accepted ACK in time: true to send the window again, false when
    /// the client is given up on.
    pub fn on_timeout(&mut self) -> bool {
        self.retries += 1;
        self.retries <= MAX_RETRIES
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lock_step_transfer_crosses_block_65535() {
        // 70,000 blocks of 8 bytes: wire numbers wrap after 65,535.
        let mut window = Window::new(70_000 * 8 - 3, 8, 1);
        assert_eq!(window.blocks(), 70_000);
        while !window.is_done() {
            let block = *window.to_send().start();
            assert_eq!(window.to_send(), block..=block);
            assert_eq!(window.on_ack(Window::wire(block)), Ack::Advanced);
        }
        assert_eq!(Window::wire(65_536), 0);
        assert_eq!(window.acked(), 70_000);
        assert_eq!(window.on_ack(4464), Ack::Ignored);
    }

    #[test]
    fn windows_wrap_and_acks_move_only_forward() {
        let mut window = Window::new(65_530 * 512, 512, 16);
        while window.acked() < 65_520 {
            let last = *window.to_send().end();
            assert_eq!(window.on_ack(Window::wire(last)), Ack::Advanced);
        }
        // The window 65,521..=65,531 straddles 65,535 → 0.
        assert_eq!(window.to_send(), 65_521..=65_531);
        assert!(!window.accepts(Window::wire(65_532)));
        assert_eq!(window.on_ack(Window::wire(65_518)), Ack::Ignored, "stale");
        assert_eq!(window.on_ack(Window::wire(65_520)), Ack::GapReported);
        assert_eq!(
            window.on_ack(Window::wire(65_520)),
            Ack::Ignored,
            "once per window"
        );
        assert_eq!(window.on_ack(Window::wire(65_525)), Ack::Advanced);
        assert_eq!(window.on_ack(Window::wire(65_531)), Ack::Advanced);
        assert!(window.is_done());
    }

    #[test]
    fn a_silent_client_is_given_up_on() {
        let mut window = Window::new(10, 512, 1);
        for _ in 0..MAX_RETRIES {
            assert!(window.on_timeout());
        }
        assert!(!window.on_timeout());
    }
}
