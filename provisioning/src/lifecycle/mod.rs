//! The machine lifecycle as an I/O-free state machine: provisioning events
//! (the names metal-stack operators know), a bounded history newest first,
//! liveliness from heartbeats, crash-loop and failed-reclaim detection,
//! planned reboots of machines that wait too long, and the one rule that
//! makes allocation safe: only a `Waiting` machine is allocated, once.
//! The agent persists it and drives it with events from DHCP, the installer
//! and the clock.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

/// Provisioning events (ARCHITECTURE.md §4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum EventKind {
    #[serde(rename = "PXE Booting")]
    PxeBooting,
    #[serde(rename = "Planned Reboot")]
    PlannedReboot,
    Preparing,
    Registering,
    Waiting,
    Installing,
    #[serde(rename = "Booting New Kernel")]
    BootingNewKernel,
    #[serde(rename = "Phoned Home")]
    PhonedHome,
    Crashed,
    #[serde(rename = "Machine Reclaim")]
    MachineReclaim,
    Alive,
}

/// One recorded event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    pub kind: EventKind,
    /// Milliseconds since the Unix epoch.
    pub time: u64,
    pub message: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Liveliness {
    Alive,
    Dead,
    Unknown,
}

/// Tunables (the agent's configuration provides them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Thresholds {
    /// Events kept per machine.
    pub history: usize,
    /// No heartbeat for this long: Dead.
    pub dead_after_ms: u64,
    /// Waiting longer than this: a planned reboot (fresh firmware, fresh installer).
    pub reboot_waiting_after_ms: u64,
    /// Boot cycles without reaching Waiting or Phoned Home: a crash loop.
    pub crash_loop_cycles: usize,
    /// A reclaim that has not reached Waiting after this long has failed.
    pub reclaim_timeout_ms: u64,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            history: 100,
            dead_after_ms: 5 * 60 * 1000,
            reboot_waiting_after_ms: 24 * 60 * 60 * 1000,
            crash_loop_cycles: 3,
            reclaim_timeout_ms: 15 * 60 * 1000,
        }
    }
}

/// What the machine's driver should do.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// Reboot the machine (installer reboot or BMC), recorded as Planned Reboot.
    Reboot,
    /// Tell the installer to install with the allocation it was given.
    Install,
    /// Move the machine's port back to the provisioning network and netboot it.
    Reclaim,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LifecycleError {
    #[error("machine is not Waiting (last event: {0}); it cannot be allocated")]
    NotWaiting(String),
    #[error("machine is already allocated")]
    AlreadyAllocated,
    #[error("machine is not allocated")]
    NotAllocated,
}

/// Longest event message kept (bytes): machine records with their history
/// must stay small enough to replicate.
pub const MAX_MESSAGE_BYTES: usize = 200;

/// `message` as an event keeps it: at most [`MAX_MESSAGE_BYTES`] (cut at a
/// character boundary), control characters replaced by spaces.
pub fn event_message(message: &str) -> String {
    let mut end = message.len().min(MAX_MESSAGE_BYTES);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message[..end]
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// The lifecycle of one machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Newest first, at most `Thresholds::history` long.
    pub events: VecDeque<Event>,
    pub last_heartbeat: Option<u64>,
    pub allocated: bool,
    pub crash_loop: bool,
    pub failed_machine_reclaim: bool,
    /// When the current reclaim started.
    reclaim_started: Option<u64>,
}

impl Lifecycle {
    pub fn last(&self) -> Option<&Event> {
        self.events.front()
    }

    /// The provisioning state: the newest event other than Alive.
    pub fn state(&self) -> Option<EventKind> {
        self.events
            .iter()
            .map(|e| e.kind)
            .find(|k| *k != EventKind::Alive)
    }

    pub fn liveliness(&self, now: u64, t: &Thresholds) -> Liveliness {
        match self.last_heartbeat {
            None => Liveliness::Unknown,
            Some(at) if now.saturating_sub(at) < t.dead_after_ms => Liveliness::Alive,
            Some(_) => Liveliness::Dead,
        }
    }

    /// Records an event reported by DHCP, the installer or the installed OS.
    pub fn event(
        &mut self,
        now: u64,
        kind: EventKind,
        message: &str,
        t: &Thresholds,
    ) -> Vec<Action> {
        // Heartbeats are Alive events; they only refresh liveliness.
        self.last_heartbeat = Some(now);
        if kind == EventKind::Alive && self.last().is_some_and(|e| e.kind == EventKind::Alive) {
            return Vec::new();
        }
        self.push(now, kind, message, t);
        match kind {
            EventKind::Waiting => {
                self.crash_loop = false;
                self.failed_machine_reclaim = false;
                self.reclaim_started = None;
                // A machine allocated while it was still netbooting is
                // installed as soon as it waits.
                if self.allocated {
                    vec![Action::Install]
                } else {
                    Vec::new()
                }
            }
            EventKind::PhonedHome => {
                self.crash_loop = false;
                Vec::new()
            }
            EventKind::PxeBooting | EventKind::Crashed => {
                self.crash_loop = self.cycles_without_progress() >= t.crash_loop_cycles;
                Vec::new()
            }
            _ => Vec::new(),
        }
    }

    /// Boot cycles (PXE Booting) since the machine last reached Waiting or Phoned Home.
    fn cycles_without_progress(&self) -> usize {
        self.events
            .iter()
            .take_while(|e| !matches!(e.kind, EventKind::Waiting | EventKind::PhonedHome))
            .filter(|e| e.kind == EventKind::PxeBooting)
            .count()
    }

    /// Commits an allocation: only from Waiting, only once.
    pub fn allocate(&mut self) -> Result<Vec<Action>, LifecycleError> {
        if self.allocated {
            return Err(LifecycleError::AlreadyAllocated);
        }
        match self.state() {
            Some(EventKind::Waiting) => {
                self.allocated = true;
                Ok(vec![Action::Install])
            }
            other => Err(LifecycleError::NotWaiting(
                other
                    .map(|k| format!("{k:?}"))
                    .unwrap_or_else(|| "none".into()),
            )),
        }
    }

    /// Frees an allocated machine: it is reclaimed (wiped, back to Waiting).
    pub fn free(&mut self, now: u64, t: &Thresholds) -> Result<Vec<Action>, LifecycleError> {
        if !self.allocated {
            return Err(LifecycleError::NotAllocated);
        }
        self.allocated = false;
        self.reclaim_started = Some(now);
        self.push(now, EventKind::MachineReclaim, "freed", t);
        Ok(vec![Action::Reclaim])
    }

    /// Time passes: failed reclaims and planned reboots.
    pub fn tick(&mut self, now: u64, t: &Thresholds) -> Vec<Action> {
        if let Some(started) = self.reclaim_started
            && now.saturating_sub(started) > t.reclaim_timeout_ms
        {
            self.failed_machine_reclaim = true;
        }
        let waiting_since = match self.last() {
            Some(e) if e.kind == EventKind::Waiting => Some(e.time),
            _ => None,
        };
        match waiting_since {
            Some(since)
                if !self.allocated && now.saturating_sub(since) > t.reboot_waiting_after_ms =>
            {
                self.push(now, EventKind::PlannedReboot, "waited too long", t);
                vec![Action::Reboot]
            }
            _ => Vec::new(),
        }
    }

    fn push(&mut self, now: u64, kind: EventKind, message: &str, t: &Thresholds) {
        self.events.push_front(Event {
            kind,
            time: now,
            message: event_message(message),
        });
        self.events.truncate(t.history.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use EventKind::*;

    #[test]
    fn event_messages_are_bounded_and_printable() {
        assert_eq!(event_message("disk\tok\n"), "disk ok ");
        let long = "é".repeat(150);
        let kept = event_message(&long);
        assert!(kept.len() <= MAX_MESSAGE_BYTES && long.starts_with(&kept));
    }

    const T0: u64 = 1_800_000_000_000;

    fn t() -> Thresholds {
        Thresholds {
            history: 10,
            dead_after_ms: 60_000,
            reboot_waiting_after_ms: 3_600_000,
            crash_loop_cycles: 3,
            reclaim_timeout_ms: 600_000,
        }
    }

    fn boot_to_waiting(m: &mut Lifecycle, at: u64) {
        for (i, kind) in [PxeBooting, Preparing, Registering, Waiting]
            .into_iter()
            .enumerate()
        {
            m.event(at + i as u64, kind, "", &t());
        }
    }

    #[test]
    fn full_cycle_and_exact_event_sequence() {
        let mut m = Lifecycle::default();
        boot_to_waiting(&mut m, T0);
        assert_eq!(m.allocate().unwrap(), vec![Action::Install]);
        assert_eq!(m.allocate(), Err(LifecycleError::AlreadyAllocated));
        for kind in [Installing, BootingNewKernel, PhonedHome] {
            m.event(T0 + 10, kind, "", &t());
        }
        assert_eq!(m.free(T0 + 20, &t()).unwrap(), vec![Action::Reclaim]);
        boot_to_waiting(&mut m, T0 + 30);
        let kinds: Vec<EventKind> = m.events.iter().map(|e| e.kind).collect();
        assert_eq!(
            kinds,
            [
                Waiting,
                Registering,
                Preparing,
                PxeBooting,
                MachineReclaim,
                PhonedHome,
                BootingNewKernel,
                Installing,
                Waiting,
                Registering
            ]
        );
        assert_eq!(m.events.len(), 10, "history is bounded");
        assert!(!m.failed_machine_reclaim);
    }

    #[test]
    fn allocation_only_from_waiting() {
        let mut m = Lifecycle::default();
        assert!(matches!(m.allocate(), Err(LifecycleError::NotWaiting(_))));
        m.event(T0, PxeBooting, "", &t());
        assert!(matches!(m.allocate(), Err(LifecycleError::NotWaiting(s)) if s == "PxeBooting"));
        m.event(T0, Waiting, "", &t());
        m.event(T0 + 1, Alive, "", &t());
        assert!(m.allocate().is_ok(), "heartbeats do not change the state");
        assert_eq!(m.free(T0, &t()).unwrap(), vec![Action::Reclaim]);
        assert_eq!(m.free(T0, &t()), Err(LifecycleError::NotAllocated));
    }

    #[test]
    fn liveliness_from_heartbeats() {
        let mut m = Lifecycle::default();
        assert_eq!(m.liveliness(T0, &t()), Liveliness::Unknown);
        m.event(T0, Alive, "", &t());
        m.event(T0 + 5, Alive, "", &t());
        assert_eq!(m.events.len(), 1, "repeated heartbeats are one event");
        assert_eq!(m.liveliness(T0 + 30_000, &t()), Liveliness::Alive);
        assert_eq!(m.liveliness(T0 + 120_000, &t()), Liveliness::Dead);
    }

    #[test]
    fn crash_loops_and_failed_reclaims_are_flagged() {
        let mut m = Lifecycle::default();
        for i in 0..3 {
            m.event(T0 + i, PxeBooting, "", &t());
            m.event(T0 + i, Crashed, "disk not found", &t());
        }
        assert!(m.crash_loop);
        m.event(T0 + 10, Waiting, "", &t());
        assert!(!m.crash_loop);
        m.allocate().unwrap();
        m.free(T0 + 20, &t()).unwrap();
        assert!(m.tick(T0 + 20 + 600_001, &t()).is_empty());
        assert!(m.failed_machine_reclaim);
        m.event(T0 + 700_000, Waiting, "", &t());
        assert!(!m.failed_machine_reclaim);
    }

    #[test]
    fn machines_waiting_too_long_get_a_planned_reboot() {
        let mut m = Lifecycle::default();
        boot_to_waiting(&mut m, T0);
        assert!(m.tick(T0 + 3_000_000, &t()).is_empty());
        assert_eq!(m.tick(T0 + 3_600_010, &t()), vec![Action::Reboot]);
        assert_eq!(m.last().unwrap().kind, PlannedReboot);
        assert!(
            m.tick(T0 + 3_600_020, &t()).is_empty(),
            "one reboot, not one per tick"
        );
        assert_eq!(
            serde_json::to_string(&PlannedReboot).unwrap(),
            "\"Planned Reboot\""
        );
    }
}
