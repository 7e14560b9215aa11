//! What machines are offered with and where they stand: images (leaves
//! download them from their URL on first use), sizes (hardware bounds
//! matched against what the installers found), partitions and racks (from
//! the switch records) and the switches with their ports and machines.

use crate::node::auth::{Principal, UserRole};
use crate::node::service::{Api, ApiError, valid_name};
use metalmesh_inventory::RecordKind;
use metalmesh_inventory::model::{self, Hardware};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// `POST /v1/images` (admins).
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewImage {
    /// What allocations name it by.
    #[schema(pattern = "^[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}$")]
    pub name: String,
    /// Where leaves download it (`http://` or `https://`).
    #[schema(pattern = "^https?://[^\\s]+$", max_length = 2048)]
    pub url: String,
    /// Its SHA-256, hex: leaves refuse anything else.
    #[schema(pattern = "^[0-9a-fA-F]{64}$")]
    pub sha256: String,
    #[serde(default)]
    pub description: String,
}

/// An OS image.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ImageView {
    pub name: String,
    pub url: String,
    pub sha256: String,
    pub description: String,
}

impl From<model::Image> for ImageView {
    fn from(image: model::Image) -> ImageView {
        ImageView {
            name: image.id,
            url: image.url,
            sha256: image.sha256,
            description: image.description,
        }
    }
}

/// `POST /v1/sizes` (admins): the hardware of a machine of this size, each
/// bound inclusive; disk is the sum of the machine's disks.
#[derive(Debug, Clone, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSize {
    #[schema(pattern = "^[a-z0-9-]{1,32}$", min_length = 1, max_length = 32)]
    pub name: String,
    #[serde(default, deserialize_with = "whole::number")]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub min_cpus: u32,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 0, maximum = 4294967295_u64)]
    pub max_cpus: Option<u32>,
    #[serde(default, deserialize_with = "whole::number")]
    #[schema(minimum = 0, maximum = 9223372036854775807_u64)]
    pub min_memory_bytes: u64,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 0, maximum = 9223372036854775807_u64)]
    pub max_memory_bytes: Option<u64>,
    #[serde(default, deserialize_with = "whole::number")]
    #[schema(minimum = 0, maximum = 9223372036854775807_u64)]
    pub min_disk_bytes: u64,
    #[serde(default, deserialize_with = "whole::optional")]
    #[schema(minimum = 0, maximum = 9223372036854775807_u64)]
    pub max_disk_bytes: Option<u64>,
}

/// Whole numbers as JSON allows them (`8` or `8.0`), within the type and
/// within JSON Schema's int64 (what the OpenAPI document promises).
mod whole {
    use serde::{Deserialize, Deserializer, de::Error};

    fn convert<T: TryFrom<u64>, E: Error>(value: serde_json::Number) -> Result<T, E> {
        let whole = value.as_u64().or_else(|| {
            value
                .as_f64()
                .filter(|f| f.fract() == 0.0 && *f >= 0.0 && *f < 9.223_372_036_854_776e18)
                .map(|f| f as u64)
        });
        whole
            .filter(|v| *v <= i64::MAX as u64)
            .and_then(|v| T::try_from(v).ok())
            .ok_or_else(|| E::custom(format!("{value} is not a whole number in range")))
    }

    pub(super) fn number<'de, D: Deserializer<'de>, T: TryFrom<u64>>(d: D) -> Result<T, D::Error> {
        convert(serde_json::Number::deserialize(d)?)
    }

    pub(super) fn optional<'de, D: Deserializer<'de>, T: TryFrom<u64>>(
        d: D,
    ) -> Result<Option<T>, D::Error> {
        Option::<serde_json::Number>::deserialize(d)?
            .map(convert)
            .transpose()
    }
}

/// A machine size.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SizeView {
    pub name: String,
    pub min_cpus: u32,
    pub max_cpus: Option<u32>,
    pub min_memory_bytes: u64,
    pub max_memory_bytes: Option<u64>,
    pub min_disk_bytes: u64,
    pub max_disk_bytes: Option<u64>,
}

impl From<model::Size> for SizeView {
    fn from(size: model::Size) -> SizeView {
        SizeView {
            name: size.id,
            min_cpus: size.min_cpus,
            max_cpus: size.max_cpus,
            min_memory_bytes: size.min_memory_bytes,
            max_memory_bytes: size.max_memory_bytes,
            min_disk_bytes: size.min_disk_bytes,
            max_disk_bytes: size.max_disk_bytes,
        }
    }
}

/// A partition and its racks, from the switch records.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PartitionView {
    pub name: String,
    /// Rack → its leaves.
    pub racks: BTreeMap<String, Vec<String>>,
}

/// A leaf switch, its ports (LLDP neighbours as it last saw them) and the
/// machines cabled to it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct SwitchView {
    pub name: String,
    pub rack: String,
    pub partition: String,
    pub loopback: String,
    pub asn: u32,
    pub ports: Vec<PortView>,
    /// The switch's BGP sessions, as its agent last published them (empty
    /// where FRR speaks BGP for it).
    pub bgp_sessions: Vec<BgpSessionView>,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct BgpSessionView {
    /// Interface (unnumbered) or address of the peer.
    pub peer: String,
    pub state: String,
    pub remote_as: Option<u32>,
    /// Paths held from the peer, all families.
    pub received: u64,
}

#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct PortView {
    pub name: String,
    pub up: bool,
    /// The LLDP neighbours' system names (or chassis ids).
    pub neighbors: Vec<String>,
    /// The machine on this port, as its record says.
    pub machine: Option<String>,
}

/// The first size (by name) the hardware fits.
pub fn size_of(sizes: &[model::Size], hardware: Option<&Hardware>) -> Option<String> {
    let hardware = hardware?;
    sizes
        .iter()
        .find(|size| size.fits(hardware))
        .map(|size| size.id.clone())
}

fn admin_only(who: &Principal, what: &str) -> Result<(), ApiError> {
    if who.role == UserRole::Admin {
        Ok(())
    } else {
        Err(ApiError::new(
            403,
            format!("not allowed to {what} (admins only)"),
        ))
    }
}

impl Api {
    pub fn images(&self) -> Result<Vec<ImageView>, ApiError> {
        Ok(self
            .records::<model::Image>(RecordKind::Image)?
            .into_iter()
            .map(ImageView::from)
            .collect())
    }

    pub fn image(&self, name: &str) -> Result<Option<model::Image>, ApiError> {
        self.record(RecordKind::Image, name)
    }

    pub fn create_image(&self, who: &Principal, new: NewImage) -> Result<ImageView, ApiError> {
        admin_only(who, "define images")?;
        if !model::valid_image_name(&new.name) {
            return Err(ApiError::field(
                "name",
                "1-128 letters, digits, '-', '_' and '.', not starting with '.'",
            ));
        }
        let scheme = new.url.starts_with("http://") || new.url.starts_with("https://");
        if !scheme || new.url.len() > 2048 || new.url.chars().any(char::is_whitespace) {
            return Err(ApiError::field("url", "an http:// or https:// URL"));
        }
        if new.sha256.len() != 64 || !new.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ApiError::field("sha256", "64 hex digits"));
        }
        if self.image(&new.name)?.is_some() {
            return Err(ApiError::new(409, format!("image {} exists", new.name)));
        }
        let image = model::Image {
            id: new.name,
            url: new.url,
            sha256: new.sha256.to_lowercase(),
            description: new.description,
        };
        self.put(RecordKind::Image, &image.id, &image)?;
        self.journal.record(who, "image.create", &image.id, "ok");
        Ok(image.into())
    }

    /// Removes an image: machines installed with it keep running; new
    /// allocations cannot name it.
    pub fn delete_image(&self, who: &Principal, name: &str) -> Result<ImageView, ApiError> {
        admin_only(who, "delete images")?;
        let image = self
            .image(name)?
            .ok_or_else(|| ApiError::new(404, format!("image {name} not found")))?;
        self.delete(RecordKind::Image, name)?;
        self.journal.record(who, "image.delete", name, "ok");
        Ok(image.into())
    }

    pub fn sizes(&self) -> Vec<model::Size> {
        self.context().sizes
    }

    pub fn create_size(&self, who: &Principal, new: NewSize) -> Result<SizeView, ApiError> {
        admin_only(who, "define sizes")?;
        if !valid_name(&new.name) {
            return Err(ApiError::field(
                "name",
                "1-32 lowercase letters, digits and '-'",
            ));
        }
        for (field, min, max) in [
            (
                "max_cpus",
                u64::from(new.min_cpus),
                new.max_cpus.map(u64::from),
            ),
            (
                "max_memory_bytes",
                new.min_memory_bytes,
                new.max_memory_bytes,
            ),
            ("max_disk_bytes", new.min_disk_bytes, new.max_disk_bytes),
        ] {
            if max.is_some_and(|max| max < min) {
                // Each value is well formed; together they contradict.
                return Err(ApiError {
                    status: 409,
                    ..ApiError::field(field, "below its minimum")
                });
            }
        }
        if self
            .record::<model::Size>(RecordKind::Size, &new.name)?
            .is_some()
        {
            return Err(ApiError::new(409, format!("size {} exists", new.name)));
        }
        let size = model::Size {
            id: new.name,
            min_cpus: new.min_cpus,
            max_cpus: new.max_cpus,
            min_memory_bytes: new.min_memory_bytes,
            max_memory_bytes: new.max_memory_bytes,
            min_disk_bytes: new.min_disk_bytes,
            max_disk_bytes: new.max_disk_bytes,
        };
        self.put(RecordKind::Size, &size.id, &size)?;
        self.journal.record(who, "size.create", &size.id, "ok");
        Ok(size.into())
    }

    pub fn delete_size(&self, who: &Principal, name: &str) -> Result<SizeView, ApiError> {
        admin_only(who, "delete sizes")?;
        let size = self
            .record::<model::Size>(RecordKind::Size, name)?
            .ok_or_else(|| ApiError::new(404, format!("size {name} not found")))?;
        self.delete(RecordKind::Size, name)?;
        self.journal.record(who, "size.delete", name, "ok");
        Ok(size.into())
    }

    pub fn partitions(&self) -> Result<Vec<PartitionView>, ApiError> {
        let mut partitions: BTreeMap<String, BTreeMap<String, Vec<String>>> = BTreeMap::new();
        for switch in self.index.small::<model::Switch>(RecordKind::Switch) {
            partitions
                .entry(switch.partition)
                .or_default()
                .entry(switch.rack)
                .or_default()
                .push(switch.name);
        }
        Ok(partitions
            .into_iter()
            .map(|(name, racks)| PartitionView { name, racks })
            .collect())
    }

    /// The leaves with their ports; a port's machine and LLDP neighbours
    /// are shown only when the caller may see that machine (its
    /// neighbours are its hostname, when its OS runs LLDP).
    pub fn switches(&self, who: &Principal) -> Result<Vec<SwitchView>, ApiError> {
        let ports: Vec<model::Port> = self.records(RecordKind::Port)?;
        let mut on_port: HashMap<(String, String), (String, bool)> = HashMap::new();
        for indexed in self.index.snapshot() {
            let machine = &indexed.machine;
            if let Some(port) = &machine.port {
                let visible = machine
                    .allocation
                    .as_ref()
                    .and_then(|a| a.request.project.as_deref())
                    .is_none_or(|p| who.sees(p));
                on_port.insert(
                    (machine.switch.clone(), port.clone()),
                    (machine.uuid.clone(), visible),
                );
            }
        }
        let mut switches: Vec<SwitchView> = self
            .index
            .small::<model::Switch>(RecordKind::Switch)
            .into_iter()
            .map(|switch| {
                let mut ports: Vec<PortView> = ports
                    .iter()
                    .filter(|port| port.switch == switch.name)
                    .map(|port| {
                        let machine = on_port.get(&(switch.name.clone(), port.name.clone()));
                        let hidden = machine.is_some_and(|(_, visible)| !visible);
                        PortView {
                            name: port.name.clone(),
                            up: port.up,
                            neighbors: if hidden {
                                Vec::new()
                            } else {
                                port.neighbors
                                    .iter()
                                    .map(|n| {
                                        n.system_name
                                            .clone()
                                            .unwrap_or_else(|| n.chassis_id.clone())
                                    })
                                    .collect()
                            },
                            machine: machine
                                .filter(|(_, visible)| *visible)
                                .map(|(uuid, _)| uuid.clone()),
                        }
                    })
                    .collect();
                ports.sort_by(|a, b| a.name.cmp(&b.name));
                SwitchView {
                    name: switch.name,
                    rack: switch.rack,
                    partition: switch.partition,
                    loopback: switch.loopback,
                    asn: switch.asn,
                    ports,
                    bgp_sessions: switch
                        .bgp_sessions
                        .into_iter()
                        .map(|session| BgpSessionView {
                            peer: session.peer,
                            state: session.state,
                            remote_as: session.remote_as,
                            received: session.received,
                        })
                        .collect(),
                }
            })
            .collect();
        switches.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(switches)
    }

    pub fn switch(&self, who: &Principal, name: &str) -> Result<SwitchView, ApiError> {
        self.switches(who)?
            .into_iter()
            .find(|s| s.name == name)
            .ok_or_else(|| ApiError::new(404, format!("switch {name} not found")))
    }
}
