//! The machine lifecycle as an I/O-free state machine: provisioning events
//! (the names metal-stack operators know), a bounded history newest first,
//! liveliness from heartbeats, crash-loop and failed-reclaim detection,
//! planned reboots of machines that wait too long, and the one rule that
//! makes allocation safe: only a `Waiting` machine is allocated, once.
//! The agent persists it and drives it with events from DHCP, the installer
//! and the clock.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

pub use metalmesh_inventory::model::{Event, EventKind, Liveliness};

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
    /// An installation or reclaim without progress for this long is retried.
    pub install_timeout_ms: u64,
    /// Retries before the machine is left flagged for an operator.
    pub install_retries: u32,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            history: 100,
            dead_after_ms: 5 * 60 * 1000,
            reboot_waiting_after_ms: 24 * 60 * 60 * 1000,
            crash_loop_cycles: 3,
            reclaim_timeout_ms: 15 * 60 * 1000,
            install_timeout_ms: 30 * 60 * 1000,
            install_retries: 2,
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
    /// The newest sign of installation progress (an event or a progress
    /// report), for the install watchdog.
    #[serde(default)]
    progress_at: Option<u64>,
    /// Watchdog reboots of the current installation or reclaim.
    #[serde(default)]
    pub install_retries: u32,
    /// The watchdog gave up: an operator must look.
    #[serde(default)]
    pub install_stalled: bool,
}

impl Lifecycle {
    pub fn last(&self) -> Option<&Event> {
        self.events.front()
    }

    /// When the newest event of `kind` happened.
    pub fn last_of(&self, kind: EventKind) -> Option<u64> {
        self.events.iter().find(|e| e.kind == kind).map(|e| e.time)
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
                // installed as soon as it waits; otherwise any reclaim is done.
                if self.allocated {
                    vec![Action::Install]
                } else {
                    self.settle();
                    Vec::new()
                }
            }
            EventKind::PhonedHome => {
                self.settle();
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

    /// A progress report that is not an event of its own (an `Installing`
    /// report refreshing the newest one): the watchdog waits again.
    pub fn progress(&mut self, now: u64) {
        self.last_heartbeat = Some(now);
        self.progress_at = Some(now);
    }

    /// The installation or reclaim is done: the watchdog stands down.
    fn settle(&mut self) {
        self.install_retries = 0;
        self.install_stalled = false;
    }

    /// Whether an installation (allocated, not yet phoned home) or a reclaim
    /// is under way: the work the watchdog watches.
    fn installing(&self) -> bool {
        match self.state() {
            Some(EventKind::PhonedHome) => false,
            Some(_) => self.allocated || self.reclaim_started.is_some(),
            None => false,
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
        if self.installing() && !self.install_stalled {
            let since = self
                .progress_at
                .into_iter()
                .chain(self.last().map(|e| e.time))
                .max()
                .unwrap_or(now);
            if now.saturating_sub(since) > t.install_timeout_ms {
                if self.install_retries >= t.install_retries {
                    self.install_stalled = true;
                    return Vec::new();
                }
                self.install_retries += 1;
                let message = format!(
                    "no progress for {} s: retry {} of {}",
                    t.install_timeout_ms / 1000,
                    self.install_retries,
                    t.install_retries
                );
                self.push(now, EventKind::PlannedReboot, &message, t);
                return vec![Action::Reboot];
            }
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
            install_timeout_ms: 1_200_000,
            install_retries: 2,
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
    fn stalled_installations_are_retried_then_left_flagged() {
        let mut m = Lifecycle::default();
        boot_to_waiting(&mut m, T0);
        m.allocate().unwrap();
        m.event(T0 + 10, Installing, "", &t());
        // Progress reports keep the watchdog quiet.
        m.progress(T0 + 1_000_000);
        assert!(m.tick(T0 + 2_000_000, &t()).is_empty());
        let mut at = T0 + 1_000_000;
        for retry in 1..=2 {
            at += 1_200_001;
            assert_eq!(m.tick(at, &t()), vec![Action::Reboot], "retry {retry}");
            assert_eq!(m.last().unwrap().kind, PlannedReboot);
            assert!(
                m.last()
                    .unwrap()
                    .message
                    .ends_with(&format!("retry {retry} of 2"))
            );
            assert!(m.tick(at + 1, &t()).is_empty(), "one reboot per stall");
        }
        at += 1_200_001;
        assert!(m.tick(at, &t()).is_empty());
        assert!(m.install_stalled, "left for an operator after the retries");
        assert!(m.tick(at + 10_000_000, &t()).is_empty());
        m.event(at + 20_000_000, PhonedHome, "", &t());
        assert!(!m.install_stalled && m.install_retries == 0);
        // A phoned-home machine is not watched.
        assert!(m.tick(at + 90_000_000, &t()).is_empty());
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
