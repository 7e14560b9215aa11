//! The testbed's shape: how many racks, spines and machines, read from a TOML
//! topology file and/or command-line flags. Errors name the file, line and key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use metalmesh_config::line_of;
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// Most racks one testbed builds. Each rack costs two FRR daemons and a
/// namespace; beyond this a 2-core machine no longer converges in reasonable time.
pub(crate) const MAX_RACKS: u32 = 32;
/// Most spines (the fabric is a two-tier CLOS with one shared spine ASN).
pub(crate) const MAX_SPINES: u32 = 4;
/// Most machines of one kind per rack.
pub(crate) const MAX_MACHINES_PER_RACK: u32 = 64;

/// Which BGP implementation a leaf runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LeafBgp {
    /// FRR's zebra + bgpd, started by the testbed and configured by the
    /// leaf's agent (`[bgp] backend = "frr"`).
    Frr,
    /// metalmesh's own speaker, in the leaf's agent (`[bgp] backend = "native"`).
    #[default]
    Native,
}

/// Per-leaf settings in a topology file (`[leaves.leaf1]`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct LeafSettings {
    /// BGP implementation of this leaf.
    #[serde(default)]
    pub bgp: LeafBgp,
    /// qemu machines in this rack (over the file's `vm_machines`).
    #[serde(default)]
    pub vm_machines: Option<u32>,
}

/// The topology file as written.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct TopologyFile {
    pub racks: Option<Spanned<u32>>,
    pub spines: Option<Spanned<u32>>,
    pub machines_per_rack: Option<Spanned<u32>>,
    pub vm_machines: Option<Spanned<u32>>,
    pub vm_memory_mb: Option<Spanned<u32>>,
    pub fabric_mtu: Option<Spanned<u32>>,
    /// Run the API node and the development OIDC issuer in `mm-api`.
    #[serde(default)]
    pub api: bool,
    /// Also run a Prometheus scraping every daemon (implies `api`).
    #[serde(default)]
    pub prometheus: bool,
    #[serde(default)]
    pub leaves: BTreeMap<String, Spanned<LeafSettings>>,
}

/// The validated topology every later step works from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Topology {
    /// Number of racks; one leaf per rack.
    pub racks: u32,
    /// Number of spines.
    pub spines: u32,
    /// Namespace machines per rack (run the installer in simulate mode).
    pub machines_per_rack: u32,
    /// qemu machines per rack (real firmware PXE boot).
    pub vm_machines: u32,
    /// Memory of each qemu machine.
    pub vm_memory_mb: u32,
    /// MTU of the leaf–spine links.
    pub fabric_mtu: u32,
    /// BGP implementation per leaf, indexed by rack number minus one.
    pub leaf_bgp: Vec<LeafBgp>,
    /// qemu machines of each leaf (`vm_machines`, or the leaf's own),
    /// indexed by rack number minus one; empty when every leaf has
    /// `vm_machines`.
    #[serde(default)]
    pub leaf_vm_machines: Vec<u32>,
    /// The API node and the development OIDC issuer run in `mm-api`.
    #[serde(default)]
    pub api: bool,
    /// A Prometheus in `mm-api` scrapes the API node and every agent.
    #[serde(default)]
    pub prometheus: bool,
}

impl Default for Topology {
    fn default() -> Self {
        Self {
            racks: 2,
            spines: 2,
            machines_per_rack: 0,
            vm_machines: 0,
            vm_memory_mb: 512,
            fabric_mtu: 9000,
            leaf_bgp: vec![LeafBgp::default(); 2],
            leaf_vm_machines: Vec::new(),
            api: false,
            prometheus: false,
        }
    }
}

/// A topology that cannot be built.
#[derive(Debug, thiserror::Error)]
pub enum TopologyError {
    #[error("cannot read topology file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("topology file {path}: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: `{key}` = {value} is out of range ({range})")]
    OutOfRange {
        origin: String,
        key: &'static str,
        value: u32,
        range: String,
    },
    #[error(
        "{origin}: `leaves.{leaf}` names no leaf of this topology (leaves are leaf1..leaf{racks})"
    )]
    UnknownLeaf {
        origin: String,
        leaf: String,
        racks: u32,
    },
}

/// Command-line values; each one given overrides the topology file.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub racks: Option<u32>,
    pub spines: Option<u32>,
    pub machines_per_rack: Option<u32>,
    pub vm_machines: Option<u32>,
    /// Every leaf's BGP implementation (over `[leaves.leafN] bgp`).
    pub leaf_bgp: Option<LeafBgp>,
    /// qemu machines of one rack, `(rack, count)` (over `vm_machines`).
    pub rack_vm_machines: Vec<(u32, u32)>,
    /// Start the API node (over `api`).
    pub api: bool,
    /// Start Prometheus (over `prometheus`; implies the API node).
    pub prometheus: bool,
}

/// Where a setting came from, for error messages.
fn origin(path: Option<&Path>, text: &str, span: Option<std::ops::Range<usize>>) -> String {
    match (path, span) {
        (Some(path), Some(span)) => {
            format!("{} line {}", path.display(), line_of(text, span.start))
        }
        (Some(path), None) => path.display().to_string(),
        (None, _) => "command line".to_string(),
    }
}

impl Topology {
    /// Reads a topology file (if any), applies command-line overrides and validates.
    pub fn load(path: Option<&Path>, overrides: &Overrides) -> Result<Self, TopologyError> {
        let (text, file) = match path {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| TopologyError::Read {
                    path: path.to_path_buf(),
                    source,
                })?;
                let file: TopologyFile =
                    toml::from_str(&text).map_err(|error| TopologyError::Parse {
                        path: path.to_path_buf(),
                        message: metalmesh_config::describe(&text, &error),
                    })?;
                (text, file)
            }
            None => (String::new(), TopologyFile::default()),
        };
        Self::from_file(path, &text, &file, overrides)
    }

    fn from_file(
        path: Option<&Path>,
        text: &str,
        file: &TopologyFile,
        overrides: &Overrides,
    ) -> Result<Self, TopologyError> {
        let defaults = Topology::default();
        // Resolves one numeric setting: the flag wins over the file, the file
        // over the default; the result must fall in `range`.
        let pick = |key: &'static str,
                    flag: Option<u32>,
                    from_file: &Option<Spanned<u32>>,
                    default: u32,
                    range: std::ops::RangeInclusive<u32>|
         -> Result<u32, TopologyError> {
            let (value, where_from) = match (flag, from_file) {
                (Some(value), _) => (value, origin(None, text, None)),
                (None, Some(spanned)) => {
                    (*spanned.get_ref(), origin(path, text, Some(spanned.span())))
                }
                (None, None) => return Ok(default),
            };
            if range.contains(&value) {
                Ok(value)
            } else {
                Err(TopologyError::OutOfRange {
                    origin: where_from,
                    key,
                    value,
                    range: format!("{}..={}", range.start(), range.end()),
                })
            }
        };
        let racks = pick(
            "racks",
            overrides.racks,
            &file.racks,
            defaults.racks,
            1..=MAX_RACKS,
        )?;
        let spines = pick(
            "spines",
            overrides.spines,
            &file.spines,
            defaults.spines,
            1..=MAX_SPINES,
        )?;
        let machines_per_rack = pick(
            "machines_per_rack",
            overrides.machines_per_rack,
            &file.machines_per_rack,
            defaults.machines_per_rack,
            0..=MAX_MACHINES_PER_RACK,
        )?;
        let vm_machines = pick(
            "vm_machines",
            overrides.vm_machines,
            &file.vm_machines,
            defaults.vm_machines,
            0..=MAX_MACHINES_PER_RACK,
        )?;
        if machines_per_rack + vm_machines > MAX_MACHINES_PER_RACK {
            return Err(TopologyError::OutOfRange {
                origin: origin(path, text, None),
                key: "machines_per_rack + vm_machines",
                value: machines_per_rack + vm_machines,
                range: format!("0..={MAX_MACHINES_PER_RACK}"),
            });
        }
        let vm_memory_mb = pick(
            "vm_memory_mb",
            None,
            &file.vm_memory_mb,
            defaults.vm_memory_mb,
            128..=8192,
        )?;
        let fabric_mtu = pick(
            "fabric_mtu",
            None,
            &file.fabric_mtu,
            defaults.fabric_mtu,
            1280..=9216,
        )?;

        let mut leaf_bgp = vec![LeafBgp::default(); racks as usize];
        let mut leaf_vm_machines = vec![vm_machines; racks as usize];
        for (name, settings) in &file.leaves {
            let index = name
                .strip_prefix("leaf")
                .and_then(|n| n.parse::<u32>().ok())
                .filter(|n| (1..=racks).contains(n));
            match index {
                Some(n) => {
                    leaf_bgp[(n - 1) as usize] = settings.get_ref().bgp;
                    if let Some(vms) = settings.get_ref().vm_machines {
                        leaf_vm_machines[(n - 1) as usize] = vms;
                    }
                }
                None => {
                    return Err(TopologyError::UnknownLeaf {
                        origin: origin(path, text, Some(settings.span())),
                        leaf: name.clone(),
                        racks,
                    });
                }
            }
        }
        if let Some(bgp) = overrides.leaf_bgp {
            leaf_bgp.iter_mut().for_each(|b| *b = bgp);
        }
        for (rack, vms) in &overrides.rack_vm_machines {
            if let Some(slot) = leaf_vm_machines.get_mut((*rack as usize).wrapping_sub(1)) {
                *slot = *vms;
            }
        }
        if let Some(total) = leaf_vm_machines
            .iter()
            .map(|vms| machines_per_rack + vms)
            .find(|total| *total > MAX_MACHINES_PER_RACK)
        {
            return Err(TopologyError::OutOfRange {
                origin: origin(path, text, None),
                key: "machines_per_rack + a leaf's vm_machines",
                value: total,
                range: format!("0..={MAX_MACHINES_PER_RACK}"),
            });
        }
        if leaf_vm_machines.iter().all(|vms| *vms == vm_machines) {
            leaf_vm_machines.clear();
        }
        let prometheus = overrides.prometheus || file.prometheus;
        let api = overrides.api || file.api || prometheus;
        Ok(Topology {
            api,
            prometheus,
            racks,
            spines,
            machines_per_rack,
            vm_machines,
            vm_memory_mb,
            fabric_mtu,
            leaf_bgp,
            leaf_vm_machines,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Topology, TopologyError> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topo.toml");
        std::fs::write(&path, text).unwrap();
        Topology::load(Some(&path), &Overrides::default())
    }

    #[test]
    fn a_leaf_may_have_its_own_qemu_machines() {
        let topology =
            parse("racks = 2\nvm_machines = 0\n[leaves.leaf1]\nvm_machines = 1\n").unwrap();
        assert_eq!(topology.leaf_vm_machines, [1, 0]);
        let plan = crate::plan::Plan::new(&topology);
        let vms: Vec<&str> = plan
            .machines
            .iter()
            .filter(|m| m.kind == crate::plan::MachineKind::Vm)
            .map(|m| m.name.as_str())
            .collect();
        assert_eq!(vms, ["m1-1"]);
    }

    #[test]
    fn defaults_without_file() {
        let topology = Topology::load(None, &Overrides::default()).unwrap();
        assert_eq!(topology, Topology::default());
    }

    #[test]
    fn file_values_and_flag_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("topo.toml");
        std::fs::write(
            &path,
            "racks = 3\nvm_machines = 1\n[leaves.leaf3]\nbgp = \"frr\"\n",
        )
        .unwrap();
        let topology = Topology::load(
            Some(&path),
            &Overrides {
                racks: Some(4),
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(topology.racks, 4);
        assert_eq!(topology.vm_machines, 1);
        assert_eq!(
            topology.leaf_bgp,
            vec![
                LeafBgp::Native,
                LeafBgp::Native,
                LeafBgp::Frr,
                LeafBgp::Native
            ],
            "native by default, FRR where the file says so"
        );
    }

    #[test]
    fn unknown_key_names_line_and_key() {
        let error = parse("racks = 2\nrackz = 3\n").unwrap_err().to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("rackz"), "{error}");
    }

    #[test]
    fn wrong_type_names_line_and_key() {
        let error = parse("racks = 2\nspines = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 2"), "{error}");
        assert!(error.contains("spines"), "{error}");
    }

    #[test]
    fn out_of_range_names_line_and_key() {
        let error = parse("\n\nracks = 0\n").unwrap_err().to_string();
        assert!(error.contains("line 3"), "{error}");
        assert!(error.contains("`racks`"), "{error}");
    }

    #[test]
    fn unknown_leaf_and_backend_are_rejected() {
        let error = parse("racks = 2\n[leaves.leaf7]\nbgp = \"frr\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("leaf7") && error.contains("line 2"),
            "{error}"
        );
        let error = parse("[leaves.leaf1]\nbgp = \"quagga\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 2") && error.contains("quagga"),
            "{error}"
        );
    }

    #[test]
    fn flag_out_of_range_is_named() {
        let error = Topology::load(
            None,
            &Overrides {
                racks: Some(MAX_RACKS + 1),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(error.starts_with("command line"), "{error}");
    }
}
