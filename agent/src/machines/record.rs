//! A machine as its rack's agent stores it: the mesh's
//! [`metalmesh_inventory::model::Machine`] (what every node and the API
//! read) with the lifecycle's own state beside it, so a restarted agent
//! resumes exactly. One JSON object: the model's fields, then `lifecycle`.

use metalmesh_installer::api::Allocation;
use metalmesh_inventory::model::{ExecutedAllocation, Machine};
use serde::{Deserialize, Serialize};

use super::lifecycle::{Lifecycle, Thresholds};

/// Events in a machine record's summary.
pub const SUMMARY_EVENTS: usize = 20;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineRecord {
    #[serde(flatten)]
    pub machine: Machine,
    pub lifecycle: Lifecycle,
}

impl MachineRecord {
    pub fn new(uuid: &str, switch: &str) -> MachineRecord {
        MachineRecord {
            machine: Machine::new(uuid, switch),
            lifecycle: Lifecycle::default(),
        }
    }

    /// Refreshes the summary fields from the lifecycle.
    pub fn refresh(&mut self, now: u64, thresholds: &Thresholds) {
        let machine = &mut self.machine;
        machine.state = self
            .lifecycle
            .state()
            .map(|kind| kind.name().to_string())
            .unwrap_or_default();
        machine.liveliness = format!("{:?}", self.lifecycle.liveliness(now, thresholds));
        // The summary carries the newest events; the lifecycle keeps the history.
        machine.events = self
            .lifecycle
            .events
            .iter()
            .take(SUMMARY_EVENTS)
            .cloned()
            .collect();
        machine.crash_loop = self.lifecycle.crash_loop;
        machine.failed_machine_reclaim = self.lifecycle.failed_machine_reclaim;
        machine.install_stalled = self.lifecycle.install_stalled;
    }
}

/// The secrets of a machine's allocations (SSH keys and user data), which
/// its leaf keeps in its own store and never gossips.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MachineSecrets {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocationSecrets>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reclaiming: Option<AllocationSecrets>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AllocationSecrets {
    pub ssh_keys: Vec<String>,
    pub user_data: String,
}

impl AllocationSecrets {
    fn of(executed: &ExecutedAllocation) -> AllocationSecrets {
        AllocationSecrets {
            ssh_keys: executed.request.ssh_keys.clone(),
            user_data: executed.request.user_data.clone(),
        }
    }

    /// SHA-256 (hex) over the keys and user data, each length-prefixed.
    pub fn digest(&self) -> String {
        use sha2::Digest as _;
        let mut hash = sha2::Sha256::new();
        hash.update((self.ssh_keys.len() as u64).to_be_bytes());
        for key in &self.ssh_keys {
            hash.update((key.len() as u64).to_be_bytes());
            hash.update(key.as_bytes());
        }
        hash.update((self.user_data.len() as u64).to_be_bytes());
        hash.update(self.user_data.as_bytes());
        hash.finalize().iter().map(|b| format!("{b:02x}")).collect()
    }
}

impl MachineRecord {
    /// The record as the mesh gets it (SSH keys and user data replaced by
    /// their digest), and the secrets the leaf keeps.
    pub fn split_secrets(&self) -> (MachineRecord, MachineSecrets) {
        let mut public = self.clone();
        let mut secrets = MachineSecrets::default();
        for (slot, kept) in [
            (&mut public.machine.allocation, &mut secrets.allocation),
            (&mut public.machine.reclaiming, &mut secrets.reclaiming),
        ] {
            if let Some(executed) = slot {
                let taken = AllocationSecrets::of(executed);
                executed.secrets_sha256 = Some(taken.digest());
                executed.request.ssh_keys.clear();
                executed.request.user_data.clear();
                *kept = Some(taken);
            }
        }
        (public, secrets)
    }

    /// Puts the kept secrets back into a record read from the mesh store;
    /// fails when they do not match the digest the record carries.
    pub fn restore_secrets(&mut self, secrets: &MachineSecrets) -> Result<(), String> {
        for (slot, kept, what) in [
            (
                &mut self.machine.allocation,
                &secrets.allocation,
                "allocation",
            ),
            (
                &mut self.machine.reclaiming,
                &secrets.reclaiming,
                "reclaimed allocation",
            ),
        ] {
            let Some(executed) = slot else { continue };
            let Some(expected) = executed.secrets_sha256.clone() else {
                // Written before secrets were kept apart: still inline.
                continue;
            };
            match kept {
                Some(kept) if kept.digest() == expected => {
                    executed.request.ssh_keys = kept.ssh_keys.clone();
                    executed.request.user_data = kept.user_data.clone();
                }
                Some(_) => {
                    return Err(format!(
                        "the kept SSH keys and user data of its {what} do not match their digest"
                    ));
                }
                None => {
                    return Err(format!(
                        "the SSH keys and user data of its {what} are missing from this leaf's store"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// What the installer is told to install.
pub fn installer_allocation(executed: &ExecutedAllocation) -> Allocation {
    Allocation {
        image: executed.request.image.clone(),
        image_url: executed.image_url.clone(),
        image_sha256: executed.image_sha256.clone(),
        hostname: executed.request.hostname.clone(),
        ip: executed.request.ip.to_string(),
        ssh_keys: executed.request.ssh_keys.clone(),
        user_data: executed.request.user_data.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use metalmesh_inventory::model::AllocateRequest;

    fn allocated() -> MachineRecord {
        let mut record = MachineRecord::new("u-1", "leaf1");
        record.machine.allocation = Some(ExecutedAllocation {
            request: AllocateRequest {
                project: None,
                image: "debian".into(),
                ip: "10.0.1.5"
                    .parse()
                    .unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
                hostname: "web".into(),
                ssh_keys: vec!["ssh-ed25519 AAAA key@x".into()],
                user_data: "#cloud-config\n".into(),
                vrf: None,
                tags: Vec::new(),
            },
            vrf: "tenant".into(),
            port: "swp1".into(),
            image_url: "http://x/img".into(),
            image_sha256: "00".into(),
            routed: false,
            secrets_sha256: None,
        });
        record
    }

    #[test]
    fn secrets_leave_the_mesh_record_and_come_back_only_when_they_match() {
        let record = allocated();
        let (public, secrets) = record.split_secrets();
        let text = serde_json::to_string(&public).unwrap_or_default();
        assert!(
            !text.contains("key@x") && !text.contains("cloud-config"),
            "{text}"
        );
        assert!(text.contains("secrets_sha256"));
        let mut back = public.clone();
        back.restore_secrets(&secrets)
            .unwrap_or_else(|e| panic!("{e}"));
        let original = record.machine.allocation.as_ref().map(|a| &a.request);
        assert_eq!(
            back.machine.allocation.as_ref().map(|a| &a.request),
            original
        );

        let mut forged = secrets.clone();
        if let Some(allocation) = forged.allocation.as_mut() {
            allocation.ssh_keys.push("ssh-ed25519 BBBB attacker".into());
        }
        assert!(public.clone().restore_secrets(&forged).is_err());
        assert!(
            public
                .clone()
                .restore_secrets(&MachineSecrets::default())
                .is_err()
        );
    }
}
