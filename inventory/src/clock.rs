//! Record versions from a hybrid logical clock: wall-clock time in NTP64 form
//! that never goes backwards and never repeats on one node, even across
//! restarts (the store seeds the clock with the newest version it holds).

use crate::record::Version;
use std::time::Duration;
use uhlc::{HLC, HLCBuilder, ID, NTP64, Timestamp};

/// How far a remote timestamp may run ahead of the local wall clock before it
/// is distrusted.
const MAX_DRIFT: Duration = Duration::from_secs(60);

/// [`MAX_DRIFT`] in version units (NTP64: 2^32 per second).
pub const MAX_DRIFT_VERSION: u64 = 60 << 32;

/// The wall clock as a version.
pub fn now_version() -> Version {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    NTP64::from(now).as_u64()
}

pub struct Clock {
    hlc: HLC,
    id: ID,
}

impl Clock {
    /// A clock for the node called `origin`.
    pub fn new(origin: &str) -> Clock {
        let id = node_id(origin);
        let hlc = HLCBuilder::new()
            .with_id(id)
            .with_max_delta(MAX_DRIFT)
            .build();
        Clock { hlc, id }
    }

    /// Moves the clock past `version` (used at start with the newest version
    /// this node ever wrote, so a clock that stepped back cannot reuse one).
    pub fn observe(&self, version: Version) {
        let timestamp = Timestamp::new(NTP64(version), self.id);
        // A version too far in the future is ignored rather than trusted.
        let _ = self.hlc.update_with_timestamp(&timestamp);
    }

    /// A fresh version, strictly greater than every earlier one.
    pub fn next(&self) -> Version {
        self.hlc.new_timestamp().get_time().as_u64()
    }
}

impl std::fmt::Debug for Clock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Clock").field("id", &self.id).finish()
    }
}

fn node_id(origin: &str) -> ID {
    let hash = crate::record::fingerprint(
        &crate::record::RecordKey::new(crate::record::RecordKind::Switch, origin),
        0,
    );
    // An all-zero ID is invalid; the hash is never zero in practice, but make
    // sure.
    ID::try_from(hash.max(1).to_le_bytes()).unwrap_or_else(|_| ID::rand())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_increase_and_stay_past_observed_ones() {
        let clock = Clock::new("leaf1");
        let first = clock.next();
        let second = clock.next();
        assert!(second > first);
        let future = second + (1 << 32) * 5; // five seconds ahead
        clock.observe(future);
        assert!(clock.next() > future);
    }
}
