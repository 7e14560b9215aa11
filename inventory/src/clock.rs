//! Record versions: wall-clock time in NTP64 form (seconds since the UNIX
//! epoch in the upper 32 bits, the fraction in the lower 32) that never goes
//! backwards on one node, even across restarts: the store seeds the clock
//! with the newest version this node wrote, as far as peers would accept it
//! (60 s ahead of the wall clock); a key written while the clock ran further
//! ahead is superseded by the store giving its next write a higher version.

use crate::record::Version;
use std::sync::Mutex;

/// How far a received version may run ahead of the local wall clock before it
/// is distrusted: 60 s in version units (2^32 per second).
pub const MAX_DRIFT_VERSION: u64 = 60 << 32;

/// The wall clock as a version (drivers read it; the cores are handed it).
pub fn now_version() -> Version {
    version_at(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// A time since the Unix epoch as a version.
pub fn version_at(since_epoch: std::time::Duration) -> Version {
    (since_epoch.as_secs() << 32) | ((u64::from(since_epoch.subsec_nanos()) << 32) / 1_000_000_000)
}

/// One node's version source.
#[derive(Debug, Default)]
pub struct Clock {
    last: Mutex<Version>,
}

impl Clock {
    pub fn new() -> Clock {
        Clock::default()
    }

    /// Moves the clock past `version`, but never further than peers accept
    /// (a clock once far ahead must not push every later write out of
    /// their reach). `now` is the wall clock as a version.
    pub fn observe(&self, version: Version, now: Version) {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        let reachable = now.saturating_add(MAX_DRIFT_VERSION);
        *last = (*last).max(version.min(reachable));
    }

    /// A fresh version, strictly greater than every earlier and observed
    /// one; `now` is the wall clock as a version.
    pub fn next(&self, now: Version) -> Version {
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        *last = if now > *last {
            now
        } else {
            last.saturating_add(1)
        };
        *last
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_stay_past_observed_ones() {
        let clock = Clock::new();
        let now = 1_000 << 32;
        let first = clock.next(now);
        let second = clock.next(now);
        assert!(second > first);
        let future = second + (1 << 32) * 5; // five seconds ahead
        clock.observe(future, now);
        assert!(clock.next(now) > future);
        // Time is an input: the same inputs give the same versions.
        let again = Clock::new();
        assert_eq!(again.next(now), first);
    }

    #[test]
    fn a_seed_far_ahead_is_followed_only_as_far_as_peers_accept() {
        let clock = Clock::new();
        let now = 1_000 << 32;
        let seed = now + (30 << 32); // 30 s ahead: followed
        clock.observe(seed, now);
        assert!(clock.next(now) > seed);
        let far = now + (3600 << 32); // an hour ahead: capped
        clock.observe(far, now);
        let next = clock.next(now);
        assert!(next < far && next <= now + MAX_DRIFT_VERSION + 1000);
    }

    #[test]
    fn the_wall_clock_is_seconds_and_fraction() {
        let version = now_version();
        let seconds = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs();
        assert!((version >> 32).abs_diff(seconds) <= 1);
    }
}
