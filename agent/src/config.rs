//! The agent's configuration file (`/etc/metalmesh/agent.toml`), read into
//! typed structs with defaults. Every error names the file, line and key.
//! The settings are documented in `docs/config.md`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use metalmesh_config::{ConfigError, Source};
use serde::Deserialize;
use toml::Spanned;

/// Default location of the configuration file.
pub const DEFAULT_CONFIG: &str = "/etc/metalmesh/agent.toml";
/// Default state directory.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/metalmesh";
/// Default admin socket.
pub const DEFAULT_ADMIN_SOCKET: &str = "/run/metalmesh/agent.sock";

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// Where the agent keeps its store, leases and certificates.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
    pub switch: SwitchConfig,
    #[serde(default)]
    pub lldp: LldpConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    /// Boot services on the provisioning bridge; absent: none run.
    pub boot: Option<BootConfig>,
    /// The inventory mesh; absent: the agent keeps its records locally only.
    pub mesh: Option<MeshConfig>,
    /// Prometheus metrics.
    #[serde(default)]
    pub metrics: MetricsConfig,
    /// Machine lifecycle thresholds (machines are managed where `[boot]` runs).
    #[serde(default)]
    pub machines: MachinesConfig,
    /// The BGP speaker (see docs/bgp.md); absent: no BGP from the agent.
    pub bgp: Option<BgpConfig>,
    /// The leaf's packet filter against machines and tenants (see
    /// docs/security.md).
    #[serde(default)]
    pub policy: PolicyConfig,
}

/// What machines and tenants may reach on the leaf (nftables).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Off only where another firewall owns the switch's nftables.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Ports VXLAN may arrive on; default: `[bgp] interfaces` (none: any).
    #[serde(default)]
    pub fabric_ports: Vec<String>,
    /// Source prefixes VXLAN may come from (the leaves' loopbacks, e.g.
    /// `10.255.0.0/16`); default: any.
    #[serde(default)]
    pub underlay: Vec<Spanned<String>>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            enabled: true,
            fabric_ports: Vec::new(),
            underlay: Vec::new(),
        }
    }
}

/// Thresholds of the machine lifecycle (see docs/lifecycle.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MachinesConfig {
    /// Events kept per machine.
    #[serde(default = "default_history")]
    pub history: Spanned<u32>,
    /// No heartbeat or phone home for this long: the machine is Dead.
    #[serde(default = "default_dead_after")]
    pub dead_after_secs: Spanned<u32>,
    /// A machine Waiting longer than this gets a planned reboot.
    #[serde(default = "default_reboot_waiting")]
    pub reboot_waiting_after_secs: Spanned<u32>,
    /// Boots without reaching Waiting or Phoned Home that make a crash loop.
    #[serde(default = "default_crash_loop")]
    pub crash_loop_cycles: Spanned<u32>,
    /// A reclaim not back at Waiting after this long has failed.
    #[serde(default = "default_reclaim_timeout")]
    pub reclaim_timeout_secs: Spanned<u32>,
    /// An installation or reclaim reporting no progress for this long is
    /// flagged and the machine rebooted into the installer to retry.
    #[serde(default = "default_install_timeout")]
    pub install_timeout_secs: Spanned<u32>,
    /// Watchdog retries before the machine is left flagged for an operator.
    #[serde(default = "default_install_retries")]
    pub install_retries: Spanned<u32>,
    /// How a machine's disks are wiped when it registers (fresh, or
    /// reclaimed after an allocation): `signatures`, `discard` or `zero`
    /// (see docs/lifecycle.md).
    #[serde(default)]
    pub wipe: metalmesh_installer::disk::WipeMode,
}

impl Default for MachinesConfig {
    fn default() -> Self {
        MachinesConfig {
            history: default_history(),
            dead_after_secs: default_dead_after(),
            reboot_waiting_after_secs: default_reboot_waiting(),
            crash_loop_cycles: default_crash_loop(),
            reclaim_timeout_secs: default_reclaim_timeout(),
            install_timeout_secs: default_install_timeout(),
            install_retries: default_install_retries(),
            wipe: Default::default(),
        }
    }
}

impl MachinesConfig {
    pub fn thresholds(&self) -> crate::machines::lifecycle::Thresholds {
        let ms = |secs: &Spanned<u32>| u64::from(*secs.get_ref()) * 1000;
        crate::machines::lifecycle::Thresholds {
            history: *self.history.get_ref() as usize,
            dead_after_ms: ms(&self.dead_after_secs),
            reboot_waiting_after_ms: ms(&self.reboot_waiting_after_secs),
            crash_loop_cycles: *self.crash_loop_cycles.get_ref() as usize,
            reclaim_timeout_ms: ms(&self.reclaim_timeout_secs),
            install_timeout_ms: ms(&self.install_timeout_secs),
            install_retries: *self.install_retries.get_ref(),
        }
    }
}

fn default_history() -> Spanned<u32> {
    Spanned::new(0..0, 100)
}
fn default_dead_after() -> Spanned<u32> {
    Spanned::new(0..0, 300)
}
fn default_reboot_waiting() -> Spanned<u32> {
    Spanned::new(0..0, 86_400)
}
fn default_crash_loop() -> Spanned<u32> {
    Spanned::new(0..0, 3)
}
fn default_reclaim_timeout() -> Spanned<u32> {
    Spanned::new(0..0, 900)
}
fn default_install_timeout() -> Spanned<u32> {
    Spanned::new(0..0, 1_800)
}
fn default_install_retries() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}

/// `[bgp]` as written: checked into [`crate::bgp::BgpSettings`] by
/// [`Loaded::from_source`].
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BgpConfig {
    /// `"native"`: metalmesh's own speaker; `"frr"`: the switch's FRR,
    /// configured by the agent through `vtysh`.
    pub backend: Spanned<String>,
    /// Ports (names or glob patterns) with an unnumbered eBGP peer each.
    #[serde(default)]
    pub interfaces: Vec<Spanned<String>>,
    #[serde(default = "default_bgp_hold")]
    pub hold_time_secs: Spanned<u32>,
    /// Most paths accepted from one peer per family.
    #[serde(default = "default_bgp_max_prefixes")]
    pub max_prefixes: Spanned<u32>,
    /// TCP port the speaker listens on and connects to.
    #[serde(default = "default_bgp_port")]
    pub port: u16,
    #[serde(default, rename = "neighbor")]
    pub neighbors: Vec<NeighborConfig>,
    /// How to reach FRR (`backend = "frr"`).
    #[serde(default)]
    pub frr: Option<FrrConfig>,
}

/// `[bgp.frr]`: how the agent reaches the switch's FRR.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrrConfig {
    /// The `vtysh` program (SONiC's host wrapper reaches the `bgp` container).
    #[serde(default = "default_vtysh")]
    pub vtysh: std::path::PathBuf,
    /// FRR's vty socket directory, where its daemons were started with
    /// `--vty_socket`; default: FRR's own (`/var/run/frr`).
    #[serde(default)]
    pub vty_socket: Option<std::path::PathBuf>,
}

fn default_vtysh() -> std::path::PathBuf {
    std::path::PathBuf::from("/usr/bin/vtysh")
}

/// A numbered neighbour.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeighborConfig {
    pub address: Spanned<String>,
    /// An AS number, `"external"` or `"internal"`.
    pub remote_as: Spanned<RemoteAsConfig>,
    /// `ipv4`, `ipv6`, `evpn`; default `["ipv4", "ipv6"]`.
    #[serde(default)]
    pub families: Vec<Spanned<String>>,
    #[serde(default)]
    pub passive: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum RemoteAsConfig {
    Number(u32),
    Word(String),
}

fn default_bgp_hold() -> Spanned<u32> {
    Spanned::new(0..0, 9)
}
fn default_bgp_max_prefixes() -> Spanned<u32> {
    Spanned::new(0..0, 200_000)
}
fn default_bgp_port() -> u16 {
    179
}

/// The inventory mesh (QUIC with mutual TLS; see docs/config.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MeshConfig {
    /// Local address of the mesh endpoint.
    #[serde(default = "default_mesh_listen")]
    pub listen: SocketAddr,
    /// Address other nodes reach this one at; default: the loopback on the
    /// listen port.
    pub advertise: Option<SocketAddr>,
    /// Nodes to join through (any subset of the mesh).
    #[serde(default)]
    pub seeds: Vec<Spanned<String>>,
    /// The mesh CA certificate; default: `<state_dir>/mesh/ca.pem`.
    pub ca: Option<PathBuf>,
    /// This node's certificate; default: `<state_dir>/mesh/node.pem`.
    pub cert: Option<PathBuf>,
    /// This node's private key; default: `<state_dir>/mesh/node.key`.
    pub key: Option<PathBuf>,
    /// Seconds between digest comparisons with a random member.
    #[serde(default = "default_anti_entropy_secs")]
    pub anti_entropy_secs: Spanned<u32>,
}

impl MeshConfig {
    /// The address other nodes reach this one at: `advertise`, else the
    /// switch's loopback on the listening port.
    pub fn advertise_addr(&self, loopback: std::net::Ipv4Addr) -> SocketAddr {
        self.advertise
            .unwrap_or_else(|| SocketAddr::new(loopback.into(), self.listen.port()))
    }

    /// The CA, certificate and key files, defaults resolved.
    pub fn credential_paths(&self, state_dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let dir = state_dir.join("mesh");
        (
            self.ca.clone().unwrap_or_else(|| dir.join("ca.pem")),
            self.cert.clone().unwrap_or_else(|| dir.join("node.pem")),
            self.key.clone().unwrap_or_else(|| dir.join("node.key")),
        )
    }

    /// Seeds as socket addresses (validated when the configuration loads);
    /// a seed without a port uses 7946.
    pub fn seed_addrs(&self) -> Vec<SocketAddr> {
        self.seeds
            .iter()
            .filter_map(|seed| parse_seed(seed.get_ref()))
            .collect()
    }
}

/// The mesh's well-known port.
pub const MESH_PORT: u16 = 7946;

fn default_mesh_listen() -> SocketAddr {
    SocketAddr::from(([0, 0, 0, 0], MESH_PORT))
}

fn default_anti_entropy_secs() -> Spanned<u32> {
    Spanned::new(0..0, 2)
}

fn parse_seed(text: &str) -> Option<SocketAddr> {
    text.parse::<SocketAddr>().ok().or_else(|| {
        text.parse::<IpAddr>()
            .ok()
            .map(|ip| SocketAddr::new(ip, MESH_PORT))
    })
}

/// Where `/metrics` is served (plain HTTP): the management side only.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MetricsConfig {
    #[serde(default = "default_metrics_listen")]
    pub listen: SocketAddr,
}

impl Default for MetricsConfig {
    fn default() -> Self {
        MetricsConfig {
            listen: default_metrics_listen(),
        }
    }
}

fn default_metrics_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9469))
}

/// DHCP, TFTP and HTTP boot for the rack (see docs/config.md).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// The provisioning bridge the services answer on.
    pub interface: String,
    /// The leaf's address on it: DHCP server identifier, TFTP and HTTP server.
    pub server_ip: Ipv4Addr,
    pub prefix_len: Spanned<u8>,
    pub pool_start: Spanned<Ipv4Addr>,
    pub pool_end: Spanned<Ipv4Addr>,
    /// Default: the server address.
    pub routers: Option<Vec<Ipv4Addr>>,
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    #[serde(default)]
    pub ntp: Vec<Ipv4Addr>,
    pub domain: Option<String>,
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    #[serde(default = "default_decline_secs")]
    pub decline_quarantine_secs: u32,
    #[serde(default = "default_rate")]
    pub requests_per_mac_per_sec: u32,
    /// Requests per provisioning port per second (the port from the leaf's
    /// packet filter; needs `[policy]` on).
    #[serde(default = "default_port_rate")]
    pub requests_per_port_per_sec: u32,
    /// Addresses one provisioning port may hold (leases and offers).
    #[serde(default = "default_leases_per_port")]
    pub leases_per_port: u32,
    #[serde(default = "default_dhcp_port")]
    pub dhcp_port: u16,
    #[serde(default = "default_tftp_port")]
    pub tftp_port: u16,
    #[serde(default = "default_http_port")]
    pub http_port: u16,
    /// Directory of iPXE binaries served over TFTP.
    #[serde(default = "default_tftp_root")]
    pub tftp_root: PathBuf,
    /// Directory behind `http://<server>:<port>/boot/`.
    pub http_root: PathBuf,
    #[serde(default = "default_bios_file")]
    pub bios_file: String,
    #[serde(default = "default_uefi_x64_file")]
    pub uefi_x64_file: String,
    #[serde(default = "default_uefi_arm64_file")]
    pub uefi_arm64_file: String,
    #[serde(default = "default_kernel")]
    pub kernel: String,
    #[serde(default = "default_initrd")]
    pub initrd: String,
    #[serde(default)]
    pub cmdline: String,
    #[serde(default = "default_max_transfers")]
    pub max_tftp_transfers: usize,
    /// TFTP transfers one source address may run at once.
    #[serde(default = "default_per_source")]
    pub max_tftp_transfers_per_source: usize,
    /// HTTP connections one source address may hold open at once.
    #[serde(default = "default_http_per_source")]
    pub max_http_connections_per_source: usize,
    /// Where images downloaded from their URL are kept (by checksum,
    /// served at `/images/`); default `<state_dir>/images`.
    #[serde(default)]
    pub image_cache_dir: Option<PathBuf>,
    /// The largest OS image this leaf downloads from an image's URL.
    #[serde(default = "default_image_max_bytes")]
    pub image_max_bytes: u64,
}

fn default_image_max_bytes() -> u64 {
    32 << 30
}

fn default_lease_secs() -> u32 {
    3600
}
fn default_decline_secs() -> u32 {
    600
}
fn default_rate() -> u32 {
    20
}
fn default_port_rate() -> u32 {
    40
}
fn default_leases_per_port() -> u32 {
    4
}
fn default_dhcp_port() -> u16 {
    67
}
fn default_tftp_port() -> u16 {
    69
}
fn default_http_port() -> u16 {
    8070
}
fn default_tftp_root() -> PathBuf {
    PathBuf::from("/usr/lib/ipxe")
}
fn default_bios_file() -> String {
    "undionly.kpxe".into()
}
fn default_uefi_x64_file() -> String {
    "ipxe.efi".into()
}
fn default_uefi_arm64_file() -> String {
    "ipxe-arm64.efi".into()
}
fn default_kernel() -> String {
    "vmlinuz".into()
}
fn default_initrd() -> String {
    "initramfs.img".into()
}
fn default_per_source() -> usize {
    8
}

fn default_http_per_source() -> usize {
    32
}

fn default_max_transfers() -> usize {
    256
}

impl BootConfig {
    /// The DHCP server's settings.
    pub fn dhcp_settings(&self) -> metalmesh_provisioning::dhcp::DhcpSettings {
        use metalmesh_provisioning::dhcp::{BootFiles, DhcpSettings};
        DhcpSettings {
            server_ip: self.server_ip,
            prefix_len: *self.prefix_len.get_ref(),
            pool_start: *self.pool_start.get_ref(),
            pool_end: *self.pool_end.get_ref(),
            routers: self.routers.clone().unwrap_or_else(|| vec![self.server_ip]),
            dns: self.dns.clone(),
            ntp: self.ntp.clone(),
            domain: self.domain.clone(),
            lease_secs: self.lease_secs,
            offer_hold_secs: 30,
            decline_quarantine_secs: self.decline_quarantine_secs,
            requests_per_mac_per_sec: self.requests_per_mac_per_sec,
            requests_per_port_per_sec: self.requests_per_port_per_sec,
            leases_per_port: self.leases_per_port,
            boot: BootFiles {
                bios: self.bios_file.clone(),
                uefi_x64: self.uefi_x64_file.clone(),
                uefi_arm64: self.uefi_arm64_file.clone(),
                http_base: self.http_base(),
            },
        }
    }

    /// The directory of downloaded images.
    pub fn image_cache(&self, state_dir: &Path) -> PathBuf {
        self.image_cache_dir
            .clone()
            .unwrap_or_else(|| state_dir.join("images"))
    }

    pub fn http_base(&self) -> String {
        format!("http://{}:{}", self.server_ip, self.http_port)
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwitchConfig {
    /// The switch's name; default: the host name.
    pub name: Option<String>,
    /// Partition (one mesh, one failure domain) the switch belongs to.
    #[serde(default = "default_partition")]
    pub partition: String,
    /// Rack this leaf serves; default: the switch name.
    pub rack: Option<String>,
    /// Loopback /32: router ID and VTEP address.
    pub loopback: Ipv4Addr,
    /// The switch's BGP ASN.
    pub asn: u32,
    /// MAC address used as LLDP chassis ID; default: the lowest-numbered
    /// Ethernet interface's address.
    pub chassis_mac: Option<String>,
    /// The ports machines are cabled to (names or glob patterns): only
    /// these are ever routed into a tenant VRF. Default: any port but the
    /// uplinks, the provisioning bridge and loopback.
    #[serde(default)]
    pub machine_ports: Vec<Spanned<String>>,
    /// How tenant VRFs are built: `auto` (VRF devices when the kernel has
    /// them, else routing tables and rules), `vrf_devices` (refuse to start
    /// without them) or `routing_tables` (even when the kernel has them).
    #[serde(default)]
    pub kernel_mode: KernelModeChoice,
}

/// `switch.kernel_mode`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KernelModeChoice {
    #[default]
    Auto,
    VrfDevices,
    RoutingTables,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LldpConfig {
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Interface names or glob patterns (`swp*`, `eth[0-3]`) of the ports
    /// LLDP runs on. A plain name must exist when the agent starts; a pattern
    /// also picks up ports created later.
    #[serde(default)]
    pub ports: Vec<Spanned<String>>,
    /// Seconds between transmissions (802.1AB msgTxInterval).
    #[serde(default = "default_tx_interval")]
    pub tx_interval_secs: Spanned<u32>,
    /// TTL advertised = tx interval × hold multiplier (802.1AB msgTxHold).
    #[serde(default = "default_hold")]
    pub hold_multiplier: Spanned<u32>,
    /// Most neighbours kept per port; more are dropped and counted.
    #[serde(default = "default_max_neighbors")]
    pub max_neighbors_per_port: Spanned<u32>,
}

impl Default for LldpConfig {
    fn default() -> Self {
        LldpConfig {
            enabled: true,
            ports: Vec::new(),
            tx_interval_secs: default_tx_interval(),
            hold_multiplier: default_hold(),
            max_neighbors_per_port: default_max_neighbors(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Unix socket of the local admin API.
    #[serde(default = "default_admin_socket")]
    pub socket: PathBuf,
    /// A group whose members may use the admin API besides root (the
    /// socket and its directory are given to it); default: root only.
    #[serde(default)]
    pub group: Option<String>,
}

impl Default for AdminConfig {
    fn default() -> Self {
        AdminConfig {
            socket: default_admin_socket(),
            group: None,
        }
    }
}

fn default_state_dir() -> PathBuf {
    PathBuf::from(DEFAULT_STATE_DIR)
}
fn default_partition() -> String {
    "default".into()
}
fn yes() -> bool {
    true
}
fn default_tx_interval() -> Spanned<u32> {
    Spanned::new(0..0, 30)
}
fn default_hold() -> Spanned<u32> {
    Spanned::new(0..0, 4)
}
fn default_max_neighbors() -> Spanned<u32> {
    Spanned::new(0..0, 32)
}
fn default_admin_socket() -> PathBuf {
    PathBuf::from(DEFAULT_ADMIN_SOCKET)
}

/// Interface-name patterns, compiled.
#[derive(Debug, Clone)]
pub struct PortSelector {
    patterns: Vec<(String, glob::Pattern)>,
}

impl PortSelector {
    /// Checks each entry of `entries` (names or glob patterns) of `key`.
    pub fn parse(
        entries: &[Spanned<String>],
        key: &str,
        source: &Source,
    ) -> Result<PortSelector, ConfigError> {
        let mut patterns = Vec::new();
        for entry in entries {
            let text = entry.get_ref();
            if text.is_empty() || text.len() > 64 {
                return Err(source.error_at(
                    entry.span(),
                    key,
                    format!("`{text}` is not an interface name or pattern"),
                ));
            }
            let pattern = glob::Pattern::new(text).map_err(|e| {
                source.error_at(entry.span(), key, format!("bad pattern `{text}`: {e}"))
            })?;
            patterns.push((text.clone(), pattern));
        }
        Ok(PortSelector { patterns })
    }
}

impl PortSelector {
    pub fn matches(&self, name: &str) -> bool {
        self.patterns.iter().any(|(_, p)| p.matches(name))
    }

    pub fn patterns(&self) -> impl Iterator<Item = &str> {
        self.patterns.iter().map(|(s, _)| s.as_str())
    }
}

/// A loaded, validated configuration and the source it came from.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub config: AgentConfig,
    pub source: Source,
    pub lldp_ports: PortSelector,
    /// `[switch] machine_ports`, compiled; `None` when not given.
    pub machine_ports: Option<PortSelector>,
    /// `[bgp]`, checked.
    pub bgp: Option<crate::bgp::BgpSettings>,
}

/// Whether a port entry is a glob pattern rather than a plain interface name.
fn is_pattern(text: &str) -> bool {
    text.contains(['*', '?', '['])
}

impl Loaded {
    /// What tenant intents may not touch on this leaf: its loopback, the
    /// provisioning subnet, the underlay, link-local and loopback ranges;
    /// its uplinks, the provisioning bridge and `lo` as ports; and, when
    /// configured, anything but the machine ports.
    pub fn guardrails(&self) -> crate::dataplane::Guardrails {
        use crate::dataplane::intent::Prefix;
        let config = &self.config;
        let prefix = |address: Ipv4Addr, len: u8| Prefix::new(address, len);
        let mut protected = vec![
            (
                prefix(Ipv4Addr::new(169, 254, 0, 0), 16),
                "link-local, the tenant gateway".to_string(),
            ),
            (
                prefix(Ipv4Addr::new(127, 0, 0, 0), 8),
                "loopback".to_string(),
            ),
            (
                prefix(config.switch.loopback, 32),
                "this leaf's loopback".to_string(),
            ),
        ];
        let mut refused_ports: std::collections::BTreeSet<String> =
            ["lo".to_string()].into_iter().collect();
        if let Some(boot) = &config.boot {
            protected.push((
                prefix(boot.server_ip, *boot.prefix_len.get_ref()),
                "the provisioning subnet".to_string(),
            ));
            refused_ports.insert(boot.interface.clone());
        }
        for range in &config.policy.underlay {
            if let Ok(range) = Prefix::try_from(range.get_ref().clone()) {
                protected.push((range, "the underlay".to_string()));
            }
        }
        if let Some(bgp) = &config.bgp {
            refused_ports.extend(bgp.interfaces.iter().map(|i| i.get_ref().clone()));
        }
        refused_ports.extend(config.policy.fabric_ports.iter().cloned());
        crate::dataplane::Guardrails {
            protected,
            machine_ports: self.machine_ports.clone(),
            refused_ports,
        }
    }

    pub fn load(path: &Path) -> Result<Loaded, ConfigError> {
        let source = Source::read(path)?;
        Self::from_source(source)
    }

    pub fn from_source(source: Source) -> Result<Loaded, ConfigError> {
        let config: AgentConfig = source.parse()?;
        let lldp = &config.lldp;
        let ranged = |value: &Spanned<u32>, key: &str, range: std::ops::RangeInclusive<u32>| {
            if range.contains(value.get_ref()) {
                Ok(())
            } else {
                Err(source.error_at(
                    value.span(),
                    key,
                    format!(
                        "{} is out of range ({}..={})",
                        value.get_ref(),
                        range.start(),
                        range.end()
                    ),
                ))
            }
        };
        ranged(&lldp.tx_interval_secs, "lldp.tx_interval_secs", 1..=3600)?;
        ranged(&lldp.hold_multiplier, "lldp.hold_multiplier", 2..=10)?;
        ranged(
            &lldp.max_neighbors_per_port,
            "lldp.max_neighbors_per_port",
            1..=1024,
        )?;
        if lldp.enabled && lldp.ports.is_empty() {
            return Err(source.error(
                "lldp.ports",
                "LLDP is enabled but no ports are selected (e.g. ports = [\"swp*\"])",
            ));
        }
        let lldp_ports = PortSelector::parse(&lldp.ports, "lldp.ports", &source)?;
        if let Some(mac) = &config.switch.chassis_mac
            && parse_mac(mac).is_none()
        {
            return Err(source.error(
                "switch.chassis_mac",
                format!("`{mac}` is not a MAC address"),
            ));
        }
        if let Some(boot) = &config.boot {
            use metalmesh_provisioning::dhcp::settings::SettingsError;
            match boot.dhcp_settings().validate() {
                Ok(()) => {}
                Err(SettingsError::Prefix(_)) => {
                    return Err(source.error_at(
                        boot.prefix_len.span(),
                        "boot.prefix_len",
                        "must be 8..=30",
                    ));
                }
                Err(error @ SettingsError::EmptyPool { .. }) => {
                    return Err(source.error_at(boot.pool_start.span(), "boot.pool_start", error));
                }
                Err(error @ SettingsError::PoolOutsideSubnet { .. }) => {
                    let bad = if boot.dhcp_settings().in_subnet(*boot.pool_start.get_ref()) {
                        (boot.pool_end.span(), "boot.pool_end")
                    } else {
                        (boot.pool_start.span(), "boot.pool_start")
                    };
                    return Err(source.error_at(bad.0, bad.1, error));
                }
                Err(error) => return Err(source.error("boot", error)),
            }
        }
        if let Some(name) = &config.switch.name
            && (name.is_empty() || name.len() > 255)
        {
            return Err(source.error("switch.name", "must be 1 to 255 characters"));
        }
        let machines = &config.machines;
        ranged(&machines.history, "machines.history", 10..=10_000)?;
        ranged(
            &machines.dead_after_secs,
            "machines.dead_after_secs",
            10..=86_400,
        )?;
        ranged(
            &machines.reboot_waiting_after_secs,
            "machines.reboot_waiting_after_secs",
            60..=31_536_000,
        )?;
        ranged(
            &machines.crash_loop_cycles,
            "machines.crash_loop_cycles",
            1..=100,
        )?;
        ranged(
            &machines.reclaim_timeout_secs,
            "machines.reclaim_timeout_secs",
            60..=86_400,
        )?;
        ranged(
            &machines.install_timeout_secs,
            "machines.install_timeout_secs",
            60..=86_400,
        )?;
        ranged(
            &machines.install_retries,
            "machines.install_retries",
            0..=10,
        )?;
        if let Some(mesh) = &config.mesh {
            for seed in &mesh.seeds {
                if parse_seed(seed.get_ref()).is_none() {
                    return Err(source.error_at(
                        seed.span(),
                        "mesh.seeds",
                        format!("`{}` is not an address (IP or IP:port)", seed.get_ref()),
                    ));
                }
            }
            ranged(&mesh.anti_entropy_secs, "mesh.anti_entropy_secs", 1..=600)?;
            // The switch name is the node's certificate name.
            if let Some(name) = &config.switch.name
                && !metalmesh_inventory::pki::valid_node_name(name)
            {
                return Err(source.error(
                    "switch.name",
                    format!("`{name}` cannot be a mesh name (letters, digits, '-' and '.')"),
                ));
            }
        }
        for prefix in &config.policy.underlay {
            if let Err(problem) =
                crate::dataplane::intent::Prefix::try_from(prefix.get_ref().clone())
            {
                return Err(source.error_at(prefix.span(), "policy.underlay", problem));
            }
        }
        let bgp = config
            .bgp
            .as_ref()
            .map(|bgp| crate::bgp::BgpSettings::check(bgp, &config.switch, &source))
            .transpose()?;
        let machine_ports = if config.switch.machine_ports.is_empty() {
            None
        } else {
            Some(PortSelector::parse(
                &config.switch.machine_ports,
                "switch.machine_ports",
                &source,
            )?)
        };
        Ok(Loaded {
            config,
            source,
            lldp_ports,
            machine_ports,
            bgp,
        })
    }

    /// Rejects plain port names (and a provisioning bridge) that name no
    /// interface on this switch.
    pub fn check_ports_exist(&self, interfaces: &[String]) -> Result<(), ConfigError> {
        if let Some(boot) = &self.config.boot
            && !interfaces.contains(&boot.interface)
        {
            return Err(self.source.error(
                "boot.interface",
                format!(
                    "unknown interface `{}`: no such interface on this switch",
                    boot.interface
                ),
            ));
        }
        for entry in &self.config.lldp.ports {
            let text = entry.get_ref();
            if !is_pattern(text) && !interfaces.iter().any(|i| i == text) {
                return Err(self.source.error_at(
                    entry.span(),
                    "lldp.ports",
                    format!("unknown port `{text}`: no such interface on this switch"),
                ));
            }
        }
        Ok(())
    }
}

pub use metalmesh_lldp::parse_mac;

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Loaded, ConfigError> {
        Loaded::from_source(Source {
            path: PathBuf::from("/etc/metalmesh/agent.toml"),
            text: text.into(),
        })
    }

    const MINIMAL: &str =
        "[switch]\nloopback = \"10.255.0.1\"\nasn = 4200000001\n[lldp]\nports = [\"swp*\"]\n";

    #[test]
    fn minimal_config_gets_defaults() {
        let loaded = load(MINIMAL).unwrap();
        let c = &loaded.config;
        assert_eq!(c.state_dir, PathBuf::from(DEFAULT_STATE_DIR));
        assert_eq!(c.admin.socket, PathBuf::from(DEFAULT_ADMIN_SOCKET));
        assert_eq!(*c.lldp.tx_interval_secs.get_ref(), 30);
        assert_eq!(*c.lldp.hold_multiplier.get_ref(), 4);
        assert_eq!(c.switch.partition, "default");
        assert!(loaded.lldp_ports.matches("swp12"));
        assert!(!loaded.lldp_ports.matches("eth0"));
    }

    #[test]
    fn typo_is_rejected_with_line_and_key() {
        let error = load(&format!("{MINIMAL}tx_intervall_secs = 5\n"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 6") && error.contains("tx_intervall_secs"),
            "{error}"
        );
        let error = load("[swtich]\nloopback = \"10.255.0.1\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 1") && error.contains("swtich"),
            "{error}"
        );
    }

    #[test]
    fn bad_values_are_rejected_with_line_and_key() {
        let error = load(&MINIMAL.replace("4200000001", "\"x\""))
            .unwrap_err()
            .to_string();
        assert!(error.contains("line 3") && error.contains("asn"), "{error}");
        let error = load(&format!("{MINIMAL}tx_interval_secs = 0\n"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 6, key `lldp.tx_interval_secs`"),
            "{error}"
        );
        let error = load(&MINIMAL.replace("swp*", "swp["))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 5, key `lldp.ports`") && error.contains("bad pattern"),
            "{error}"
        );
        let error = load(&MINIMAL.replace("10.255.0.1", "10.255.0.300"))
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("line 2") && error.contains("loopback"),
            "{error}"
        );
    }

    #[test]
    fn unknown_plain_port_is_rejected() {
        let loaded = load(&MINIMAL.replace("\"swp*\"", "\"swp*\", \"swp99\"")).unwrap();
        let error = loaded
            .check_ports_exist(&["swp1".into(), "swp2".into()])
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("unknown port `swp99`") && error.contains("line 5"),
            "{error}"
        );
        assert!(loaded.check_ports_exist(&["swp99".into()]).is_ok());
    }

    #[test]
    fn boot_pool_outside_the_subnet_is_rejected() {
        let boot = "[boot]\ninterface = \"mm-pxe\"\nserver_ip = \"10.100.1.1\"\nprefix_len = 24\npool_start = \"10.100.1.100\"\npool_end = \"10.100.2.10\"\nhttp_root = \"/srv\"\n";
        let error = load(&format!("{MINIMAL}{boot}")).unwrap_err().to_string();
        assert!(
            error.contains("line 11, key `boot.pool_end`") && error.contains("outside"),
            "{error}"
        );
        let ok = load(&format!(
            "{MINIMAL}{}",
            boot.replace("10.100.2.10", "10.100.1.200")
        ))
        .unwrap();
        let settings = ok.config.boot.unwrap().dhcp_settings();
        assert_eq!(settings.routers, vec![Ipv4Addr::new(10, 100, 1, 1)]);
        assert_eq!(settings.boot.http_base, "http://10.100.1.1:8070");
    }

    #[test]
    fn mesh_seeds_and_names_are_checked() {
        let base = "[switch]\nname = \"leaf1\"\nloopback = \"10.255.0.1\"\nasn = 1\n[lldp]\nenabled = false\n";
        let loaded = load(&format!(
            "{base}[mesh]\nseeds = [\"10.255.0.2\", \"10.255.0.3:7000\"]\n"
        ))
        .unwrap();
        let mesh = loaded.config.mesh.unwrap();
        assert_eq!(
            mesh.seed_addrs(),
            vec![
                "10.255.0.2:7946".parse().unwrap(),
                "10.255.0.3:7000".parse().unwrap()
            ]
        );
        let (ca, _, key) = mesh.credential_paths(Path::new("/var/lib/metalmesh"));
        assert_eq!(ca, Path::new("/var/lib/metalmesh/mesh/ca.pem"));
        assert_eq!(key, Path::new("/var/lib/metalmesh/mesh/node.key"));
        let error = load(&format!(
            "{base}[mesh]\nseeds = [\"10.255.0.2\",\n  \"leaf3\"]\n"
        ))
        .unwrap_err();
        let text = error.to_string();
        assert!(
            text.contains("mesh.seeds") && text.contains("leaf3") && text.contains("line 9"),
            "{text}"
        );
        let error = load(&format!("{base}[machines]\ndead_after_secs = 1\n")).unwrap_err();
        assert!(
            error.to_string().contains("machines.dead_after_secs"),
            "{error}"
        );
        let thresholds = load(&format!("{base}[machines]\ncrash_loop_cycles = 5\n"))
            .unwrap()
            .config
            .machines
            .thresholds();
        assert_eq!(thresholds.crash_loop_cycles, 5);
        assert_eq!(thresholds.dead_after_ms, 300_000);
        let error = load("[switch]\nname = \"leaf 1\"\nloopback = \"10.255.0.1\"\nasn = 1\n[lldp]\nenabled = false\n[mesh]\n").unwrap_err();
        assert!(error.to_string().contains("mesh name"), "{error}");
    }

    #[test]
    fn macs() {
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:0a:0b"), None);
        assert_eq!(parse_mac("zz:00:00:00:00:0a"), None);
        assert_eq!(parse_mac("+f:00:00:00:00:0a"), None);
    }
}
