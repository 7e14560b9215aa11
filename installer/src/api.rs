//! What the installer and the leaf's installer API (`/v1/…` on port 8070)
//! exchange, as JSON. Shared by both sides so they cannot drift apart.

use serde::{Deserialize, Serialize};

/// The hardware a registration carries is the machine record's own.
pub use metalmesh_inventory::model::{Disk, Hardware, Nic};

/// Largest request body the installer API accepts.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

/// `POST /v1/machines/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    pub hardware: Hardware,
    /// The installer's version, for the event log.
    #[serde(default)]
    pub installer: String,
}

/// What the machine should do next (answer to register, heartbeat and
/// phone-home calls).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "kebab-case")]
pub enum Directive {
    /// Keep waiting (heartbeat again).
    Wait,
    /// Wipe the disks (`mode`; absent: signatures only), then report
    /// Waiting.
    Wipe {
        #[serde(default)]
        mode: crate::disk::WipeMode,
    },
    /// Install this allocation.
    Install { allocation: Allocation },
    /// Reboot (planned reboot, or a freed machine going back to the pool).
    Reboot,
    /// Nothing to do (installed and running).
    None,
}

/// An allocation as the installer executes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    pub image: String,
    /// Where to stream the image from.
    pub image_url: String,
    /// Lower-case hex SHA-256 of the image.
    pub image_sha256: String,
    pub hostname: String,
    /// The machine's address (a /32 on its NIC).
    pub ip: String,
    #[serde(default)]
    pub ssh_keys: Vec<String>,
    #[serde(default)]
    pub user_data: String,
}

/// `POST /v1/machines/{uuid}/events`: a lifecycle event the installer reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventReport {
    /// The event's name as metal-stack writes it (`Installing`, `Crashed`, …).
    pub event: String,
    #[serde(default)]
    pub message: String,
}
