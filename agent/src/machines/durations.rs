//! How long provisioning takes, as operators measure it: power-on →
//! `Waiting` (a PXE boot into the pool: first boot and every reclaim) and
//! allocate → `Phoned Home` (an installation). Observed when the records
//! that show a transition are stored, into the histograms the agent's
//! `/metrics` exposes.
//!
//! Power-on is the oldest `PXE Booting` since the machine last settled
//! (`Waiting` or `Phoned Home`), so retried PXE attempts count from the
//! first. The allocation time is not part of the stored record; it is kept
//! here, so an agent restart during an installation loses that one
//! observation and nothing else.

use std::collections::HashMap;

use metalmesh_inventory::model::EventKind;
use prometheus_client::metrics::histogram::Histogram;

use super::record::MachineRecord;

/// Upper bounds in seconds: from a fast TCG test machine to a slow server's
/// firmware and a large image.
const BUCKETS: [f64; 14] = [
    5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 90.0, 120.0, 180.0, 300.0, 600.0, 900.0, 1800.0,
];

/// The histograms, shared with the metrics endpoint.
#[derive(Debug, Clone)]
pub struct ProvisioningHistograms {
    pub power_on_to_waiting: Histogram,
    pub allocate_to_phoned_home: Histogram,
}

impl Default for ProvisioningHistograms {
    fn default() -> ProvisioningHistograms {
        ProvisioningHistograms {
            power_on_to_waiting: Histogram::new(BUCKETS),
            allocate_to_phoned_home: Histogram::new(BUCKETS),
        }
    }
}

/// A measured phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    PowerOnToWaiting,
    AllocateToPhonedHome,
}

/// Watches stored records for the transitions that end a phase.
#[derive(Debug, Default)]
pub struct ProvisioningTimer {
    /// When each machine being installed was allocated (ms since the epoch).
    allocated_at: HashMap<String, u64>,
    histograms: ProvisioningHistograms,
}

impl ProvisioningTimer {
    pub fn new(histograms: ProvisioningHistograms) -> ProvisioningTimer {
        ProvisioningTimer {
            allocated_at: HashMap::new(),
            histograms,
        }
    }

    /// One record stored at `now` (ms), with how it was before; returns
    /// what was observed (milliseconds per phase).
    pub fn stored(
        &mut self,
        now: u64,
        before: Option<&MachineRecord>,
        after: &MachineRecord,
    ) -> Vec<(Phase, u64)> {
        let uuid = &after.machine.uuid;
        let was_allocated = before.is_some_and(|b| b.lifecycle.allocated);
        if after.lifecycle.allocated && !was_allocated {
            self.allocated_at.insert(uuid.clone(), now);
        } else if !after.lifecycle.allocated {
            self.allocated_at.remove(uuid);
        }
        let state_before = before.and_then(|b| b.lifecycle.state());
        let state = after.lifecycle.state();
        if state == state_before {
            return Vec::new();
        }
        let mut observed = Vec::new();
        match state {
            Some(EventKind::Waiting) => {
                if let Some(ms) = power_on_to_waiting(after) {
                    observed.push((Phase::PowerOnToWaiting, ms));
                }
            }
            Some(EventKind::PhonedHome) => {
                if let Some(at) = self.allocated_at.remove(uuid)
                    && let Some(phoned) = after.lifecycle.last_of(EventKind::PhonedHome)
                {
                    observed.push((Phase::AllocateToPhonedHome, phoned.saturating_sub(at)));
                }
            }
            _ => {}
        }
        for (phase, ms) in &observed {
            let histogram = match phase {
                Phase::PowerOnToWaiting => &self.histograms.power_on_to_waiting,
                Phase::AllocateToPhonedHome => &self.histograms.allocate_to_phoned_home,
            };
            histogram.observe(*ms as f64 / 1000.0);
        }
        observed
    }
}

/// From the oldest `PXE Booting` since the machine last settled to its
/// newest `Waiting`, when the history holds both.
fn power_on_to_waiting(record: &MachineRecord) -> Option<u64> {
    let mut events = record.lifecycle.events.iter();
    let waiting = events.find(|e| e.kind == EventKind::Waiting)?.time;
    let powered_on = events
        .take_while(|e| !matches!(e.kind, EventKind::Waiting | EventKind::PhonedHome))
        .filter(|e| e.kind == EventKind::PxeBooting)
        .last()?
        .time;
    Some(waiting.saturating_sub(powered_on))
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalmesh_inventory::model::Event;

    fn record(allocated: bool, events: &[(EventKind, u64)]) -> MachineRecord {
        let mut record = MachineRecord::new("m1", "leaf1");
        record.lifecycle.allocated = allocated;
        // Newest first, as the lifecycle keeps them.
        for (kind, time) in events {
            record.lifecycle.events.push_back(Event {
                kind: *kind,
                time: *time,
                message: String::new(),
            });
        }
        record
    }

    #[test]
    fn a_first_boot_counts_from_the_first_pxe_attempt() {
        use EventKind::*;
        let mut timer = ProvisioningTimer::default();
        let before = record(
            false,
            &[(Preparing, 9_000), (PxeBooting, 7_000), (PxeBooting, 1_000)],
        );
        let after = record(
            false,
            &[
                (Waiting, 21_000),
                (Registering, 15_000),
                (Preparing, 9_000),
                (PxeBooting, 7_000),
                (PxeBooting, 1_000),
            ],
        );
        assert_eq!(
            timer.stored(21_000, Some(&before), &after),
            vec![(Phase::PowerOnToWaiting, 20_000)]
        );
        // A heartbeat stored later changes nothing.
        assert!(timer.stored(25_000, Some(&after), &after).is_empty());
    }

    #[test]
    fn an_installation_counts_from_its_allocation() {
        use EventKind::*;
        let mut timer = ProvisioningTimer::default();
        let waiting = record(false, &[(Waiting, 20_000), (PxeBooting, 1_000)]);
        let allocated = record(true, &[(Waiting, 20_000), (PxeBooting, 1_000)]);
        assert!(timer.stored(30_000, Some(&waiting), &allocated).is_empty());
        let installing = record(true, &[(Installing, 31_000), (Waiting, 20_000)]);
        assert!(
            timer
                .stored(31_000, Some(&allocated), &installing)
                .is_empty()
        );
        let phoned = record(
            true,
            &[
                (PhonedHome, 42_000),
                (BootingNewKernel, 40_000),
                (Installing, 31_000),
            ],
        );
        assert_eq!(
            timer.stored(42_500, Some(&installing), &phoned),
            vec![(Phase::AllocateToPhonedHome, 12_000)]
        );
        let mut registry = prometheus_client::registry::Registry::default();
        registry.register(
            "installs",
            "",
            timer.histograms.allocate_to_phoned_home.clone(),
        );
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        assert!(text.contains("installs_count 1\n"), "{text}");
        assert!(text.contains("installs_sum 12.0\n"), "{text}");
    }

    #[test]
    fn a_reclaim_reboot_is_a_power_on_and_an_unknown_allocation_is_not_guessed() {
        use EventKind::*;
        let mut timer = ProvisioningTimer::default();
        // Allocated before this agent started: no allocation time known.
        let installing = record(true, &[(Installing, 31_000)]);
        let phoned = record(true, &[(PhonedHome, 42_000), (Installing, 31_000)]);
        assert!(timer.stored(42_000, Some(&installing), &phoned).is_empty());
        let reclaimed = record(
            false,
            &[
                (Waiting, 80_000),
                (Preparing, 65_000),
                (PxeBooting, 60_000),
                (MachineReclaim, 50_000),
                (PhonedHome, 42_000),
                (PxeBooting, 1_000),
            ],
        );
        assert_eq!(
            timer.stored(80_000, Some(&phoned), &reclaimed),
            vec![(Phase::PowerOnToWaiting, 20_000)]
        );
    }
}
