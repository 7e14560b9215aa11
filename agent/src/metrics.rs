//! The agent's Prometheus metrics: OpenMetrics text at `/metrics` on
//! `[metrics] listen` (plain HTTP, 127.0.0.1:9469 by default). Who may
//! scrape: whoever reaches that address — give it the switch's management
//! address only, never a tenant or provisioning one.
//!
//! Each scrape reads what the agent already keeps (the DHCP and TFTP
//! counters, its machine records, the dataplane's last pass, the mesh's
//! members and refusals, the BGP speaker's sessions) into constant metrics:
//! nothing is counted twice and a scrape changes nothing. Label sets are
//! bounded: states, kinds, families and peer names, never a MAC or a UUID.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;

use metalmesh_inventory::RecordKind;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::admin::server::AgentView;

/// What one scrape reads.
#[derive(Debug, Default)]
struct Snapshot {
    machines: BTreeMap<(String, String), i64>,
    flagged: BTreeMap<&'static str, i64>,
    dhcp: Option<metalmesh_provisioning::dhcp::DhcpCounters>,
    tftp: Vec<(&'static str, u64)>,
    /// Answers per (route, status class), and streamed bytes per route.
    http_answered: Vec<((&'static str, &'static str), u64)>,
    http_sent: Vec<(&'static str, u64)>,
    http_refused: Option<u64>,
    dataplane: crate::dataplane::reconcile::PassReport,
    mesh_members: BTreeMap<String, i64>,
    mesh_refused: Vec<(&'static str, u64)>,
    mesh_records: Vec<(String, u64)>,
    mesh_bytes: Option<(u64, u64)>,
    bgp: Vec<BgpPeer>,
    /// DHCP leases by state, and the pool's size.
    leases: BTreeMap<String, i64>,
    pool_size: Option<u64>,
}

/// One BGP session at scrape time.
#[derive(Debug)]
struct BgpPeer {
    peer: String,
    state: String,
    /// Paths held per family.
    received: Vec<(String, usize)>,
    updates_in: u64,
    messages_in: u64,
    messages_out: u64,
}

impl AgentView {
    async fn snapshot(&self) -> Snapshot {
        let mut snapshot = Snapshot::default();
        let store = self.store.clone();
        let records = metalmesh_inventory::store::blocking(move || {
            store.list(Some(RecordKind::Machine)).map(|records| {
                records
                    .into_iter()
                    .filter(|r| r.origin == store.origin())
                    .filter_map(|r| r.value)
                    .filter_map(|v| {
                        serde_json::from_str::<metalmesh_inventory::model::Machine>(&v).ok()
                    })
                    .collect::<Vec<_>>()
            })
        });
        if let Some(path) = self.lease_db.clone() {
            let leases = tokio::task::spawn_blocking(move || {
                metalmesh_provisioning::dhcp::service::read_leases(&path)
            })
            .await;
            for lease in leases.ok().and_then(Result::ok).unwrap_or_default() {
                *snapshot
                    .leases
                    .entry(lease.state.as_str().to_string())
                    .or_default() += 1;
            }
            snapshot.pool_size = self.dhcp_pool_size;
        }
        let store = self.store.clone();
        snapshot.mesh_records =
            metalmesh_inventory::store::blocking(move || store.count_by_kind()).unwrap_or_default();
        for machine in records.unwrap_or_default() {
            *snapshot
                .machines
                .entry((machine.state.clone(), machine.liveliness.clone()))
                .or_default() += 1;
            for (flag, set) in machine.flag_states() {
                *snapshot.flagged.entry(flag).or_default() += i64::from(set);
            }
        }
        snapshot.dhcp = self.dhcp_counters.lock().ok().and_then(|c| c.clone());
        if let Some(counters) = &self.boot_counters {
            use metalmesh_provisioning::http::{HttpRoute, STATUS_CLASSES};
            use std::sync::atomic::Ordering::Relaxed;
            let tftp = &counters.tftp;
            snapshot.tftp = vec![
                ("requests", tftp.requests.load(Relaxed)),
                ("completed", tftp.completed.load(Relaxed)),
                ("failed", tftp.failed.load(Relaxed)),
                ("refused", tftp.refused.load(Relaxed)),
                ("malformed", tftp.malformed.load(Relaxed)),
            ];
            snapshot
                .tftp
                .push(("bytes_sent", tftp.bytes_sent.load(Relaxed)));
            snapshot.http_refused = Some(counters.http.refused_connections.load(Relaxed));
            for route in HttpRoute::ALL {
                let counted = counters.http.route(route);
                for (class, n) in STATUS_CLASSES.iter().zip(&counted.answered) {
                    snapshot
                        .http_answered
                        .push(((route.name(), *class), n.load(Relaxed)));
                }
                if matches!(route, HttpRoute::Boot | HttpRoute::Images) {
                    snapshot
                        .http_sent
                        .push((route.name(), counted.sent_bytes.load(Relaxed)));
                }
            }
        }
        snapshot.dataplane = self
            .dataplane
            .report
            .lock()
            .map(|r| r.clone())
            .unwrap_or_default();
        if let Some(mesh) = &self.mesh {
            for member in mesh.members() {
                *snapshot.mesh_members.entry(member.state).or_default() += 1;
            }
            let health = mesh.health();
            snapshot.mesh_bytes = Some((health.bytes_in, health.bytes_out));
            if let Some(counters) = health.records {
                snapshot.mesh_refused = vec![
                    ("unsigned", counters.unsigned),
                    ("unknown_signer", counters.unknown_signer),
                    ("bad_signature", counters.bad_signature),
                    ("wrong_writer", counters.wrong_writer),
                    ("bad_node_record", counters.bad_node_record),
                    ("revoked", counters.revoked),
                    ("over_quota", counters.over_quota),
                ];
            }
        }
        let speaker = self
            .bgp
            .as_ref()
            .and_then(|slot| slot.lock().ok().and_then(|s| s.clone()));
        if let Some(speaker) = speaker
            && let Ok(peers) = speaker.peers().await
        {
            snapshot.bgp = peers
                .into_iter()
                .map(|peer| BgpPeer {
                    peer: peer.remote.to_string(),
                    state: format!("{:?}", peer.state),
                    received: peer
                        .received
                        .iter()
                        .map(|(family, count)| (format!("{family:?}").to_lowercase(), *count))
                        .collect(),
                    updates_in: peer.stats.updates_in,
                    messages_in: peer.stats.messages_in,
                    messages_out: peer.stats.messages_out,
                })
                .collect();
        }
        snapshot
    }
}

fn gauge(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, i64)>,
) -> std::fmt::Result {
    let metric = ConstGauge::new(0i64);
    let mut family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    for (labels, value) in rows {
        ConstGauge::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counter(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    rows: impl IntoIterator<Item = (Vec<(&'static str, String)>, u64)>,
) -> std::fmt::Result {
    let metric = ConstCounter::new(0u64);
    let mut family = encoder.encode_descriptor(name, help, None, metric.metric_type())?;
    for (labels, value) in rows {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for Snapshot {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> std::fmt::Result {
        let e = &mut encoder;
        gauge(
            e,
            "metalmesh_agent_machines",
            "This leaf's machines by lifecycle state and liveliness",
            self.machines.iter().map(|((state, liveliness), n)| {
                (
                    vec![("state", state.clone()), ("liveliness", liveliness.clone())],
                    *n,
                )
            }),
        )?;
        gauge(
            e,
            "metalmesh_agent_machines_flagged",
            "This leaf's machines carrying a flag that keeps them from allocation",
            self.flagged
                .iter()
                .map(|(flag, n)| (vec![("flag", (*flag).to_string())], *n)),
        )?;
        if let Some(dhcp) = &self.dhcp {
            counter(
                e,
                "metalmesh_agent_dhcp_messages",
                "DHCP messages by what became of them",
                [
                    ("received", dhcp.received),
                    ("malformed", dhcp.malformed),
                    ("rate_limited", dhcp.rate_limited),
                    ("ignored", dhcp.ignored),
                    ("offer", dhcp.offers),
                    ("ack", dhcp.acks),
                    ("nak", dhcp.naks),
                    ("release", dhcp.releases),
                    ("decline", dhcp.declines),
                    ("inform", dhcp.informs),
                    ("pool_exhausted", dhcp.pool_exhausted),
                    ("wrong_port", dhcp.wrong_port),
                    ("port_quota_exceeded", dhcp.port_quota_exceeded),
                ]
                .into_iter()
                .map(|(kind, n)| (vec![("kind", kind.to_string())], n)),
            )?;
        }
        let (bytes, transfers): (Vec<_>, Vec<_>) = self
            .tftp
            .iter()
            .partition(|(kind, _)| *kind == "bytes_sent");
        if !transfers.is_empty() {
            counter(
                e,
                "metalmesh_agent_tftp_transfers",
                "TFTP read requests by outcome",
                transfers
                    .into_iter()
                    .map(|(kind, n)| (vec![("outcome", (*kind).to_string())], n)),
            )?;
            counter(
                e,
                "metalmesh_agent_tftp_sent_bytes",
                "TFTP payload bytes sent",
                bytes.into_iter().map(|(_, n)| (Vec::new(), n)),
            )?;
        }
        if !self.http_answered.is_empty() {
            counter(
                e,
                "metalmesh_agent_http_requests",
                "HTTP boot server requests by route and status class",
                self.http_answered.iter().map(|((route, class), n)| {
                    (
                        vec![
                            ("route", (*route).to_string()),
                            ("code", (*class).to_string()),
                        ],
                        *n,
                    )
                }),
            )?;
            counter(
                e,
                "metalmesh_agent_http_connections_refused",
                "HTTP connections closed at accept: their source held too many",
                self.http_refused.map(|n| (Vec::new(), n)),
            )?;
            counter(
                e,
                "metalmesh_agent_http_sent_bytes",
                "File bytes the HTTP boot server streamed (kernels, initramfs, images)",
                self.http_sent
                    .iter()
                    .map(|(route, n)| (vec![("route", (*route).to_string())], *n)),
            )?;
        }
        if !self.leases.is_empty() || self.pool_size.is_some() {
            gauge(
                e,
                "metalmesh_agent_dhcp_leases",
                "DHCP leases of this rack by state",
                self.leases
                    .iter()
                    .map(|(state, n)| (vec![("state", state.clone())], *n)),
            )?;
            gauge(
                e,
                "metalmesh_agent_dhcp_pool_addresses",
                "Addresses in this rack's DHCP pool",
                self.pool_size.map(|n| (Vec::new(), n as i64)),
            )?;
        }
        let dataplane = &self.dataplane;
        counter(
            e,
            "metalmesh_agent_dataplane_drift_repaired",
            "Full passes that found the kernel changed behind the agent's back and put it back",
            [(Vec::new(), dataplane.drift_repaired)],
        )?;
        counter(
            e,
            "metalmesh_agent_dataplane_passes",
            "Dataplane reconcile passes (full), and changes written without one",
            [
                ("full", dataplane.passes),
                ("incremental", dataplane.incremental),
            ]
            .into_iter()
            .map(|(kind, n)| (vec![("kind", kind.to_string())], n)),
        )?;
        gauge(
            e,
            "metalmesh_agent_dataplane_last_pass",
            "The last pass: objects owned, added, removed, rejected intents, failures, milliseconds",
            [
                ("objects", dataplane.objects),
                ("added", dataplane.added),
                ("removed", dataplane.removed),
                ("rejected", dataplane.rejected.len()),
                ("failures", dataplane.failures.len()),
                ("duration_ms", dataplane.duration_ms as usize),
            ]
            .into_iter()
            .map(|(what, n)| (vec![("what", what.to_string())], n as i64)),
        )?;
        gauge(
            e,
            "metalmesh_agent_mesh_members",
            "Inventory mesh members by state",
            self.mesh_members
                .iter()
                .map(|(state, n)| (vec![("state", state.clone())], *n)),
        )?;
        counter(
            e,
            "metalmesh_agent_mesh_records_refused",
            "Records received from the mesh and refused, by reason",
            self.mesh_refused
                .iter()
                .map(|(reason, n)| (vec![("reason", (*reason).to_string())], *n)),
        )?;
        gauge(
            e,
            "metalmesh_agent_mesh_records",
            "Live records in this node's replica, by kind",
            self.mesh_records
                .iter()
                .map(|(kind, n)| (vec![("kind", kind.clone())], *n as i64)),
        )?;
        counter(
            e,
            "metalmesh_agent_mesh_bytes",
            "Mesh message bytes, by direction",
            self.mesh_bytes.into_iter().flat_map(|(received, sent)| {
                [
                    (vec![("direction", "in".to_string())], received),
                    (vec![("direction", "out".to_string())], sent),
                ]
            }),
        )?;
        counter(
            e,
            "metalmesh_agent_bgp_updates_received",
            "BGP UPDATE messages received from each peer",
            self.bgp
                .iter()
                .map(|p| (vec![("peer", p.peer.clone())], p.updates_in)),
        )?;
        counter(
            e,
            "metalmesh_agent_bgp_messages",
            "BGP messages by peer and direction",
            self.bgp.iter().flat_map(|p| {
                [
                    (
                        vec![("peer", p.peer.clone()), ("direction", "in".to_string())],
                        p.messages_in,
                    ),
                    (
                        vec![("peer", p.peer.clone()), ("direction", "out".to_string())],
                        p.messages_out,
                    ),
                ]
            }),
        )?;
        gauge(
            e,
            "metalmesh_agent_bgp_sessions",
            "BGP sessions by peer and state (1 for the current state)",
            self.bgp.iter().map(|p| {
                (
                    vec![("peer", p.peer.clone()), ("state", p.state.clone())],
                    1,
                )
            }),
        )?;
        gauge(
            e,
            "metalmesh_agent_bgp_received_prefixes",
            "Paths held from each BGP peer, by family",
            self.bgp.iter().flat_map(|p| {
                p.received.iter().map(move |(family, n)| {
                    (
                        vec![("peer", p.peer.clone()), ("family", family.clone())],
                        *n as i64,
                    )
                })
            }),
        )?;
        Ok(())
    }
}

/// The exposition of one scrape.
pub async fn render(view: &AgentView) -> String {
    let mut registry = Registry::default();
    registry.register_collector(Box::new(view.snapshot().await));
    if let Ok(report) = view.dataplane.report.lock() {
        registry
            .sub_registry_with_prefix("metalmesh_agent")
            .register_with_unit(
                "dataplane_pass_duration",
                "Duration of each full dataplane reconcile pass",
                prometheus_client::registry::Unit::Seconds,
                report.durations.0.clone(),
            );
    }
    if let Some(durations) = &view.provisioning_durations {
        // Histograms keep their own state: registered as they are.
        let agent = registry.sub_registry_with_prefix("metalmesh_agent");
        agent.register_with_unit(
            "power_on_to_waiting",
            "From a machine's first PXE request to Waiting (first boot and every reclaim)",
            prometheus_client::registry::Unit::Seconds,
            durations.power_on_to_waiting.clone(),
        );
        agent.register_with_unit(
            "allocate_to_phoned_home",
            "From an allocation's commit to the installed machine phoning home",
            prometheus_client::registry::Unit::Seconds,
            durations.allocate_to_phoned_home.clone(),
        );
    }
    let mut out = String::new();
    if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &registry) {
        let _ = writeln!(out, "# encoding failed: {error}");
    }
    out
}

/// Serves `/metrics` on `listen` until `cancel`.
pub async fn serve(
    listen: SocketAddr,
    view: Arc<AgentView>,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    use axum::response::IntoResponse as _;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move |headers: axum::http::HeaderMap| {
            let view = Arc::clone(&view);
            async move {
                let accept = headers
                    .get(axum::http::header::ACCEPT)
                    .and_then(|v| v.to_str().ok());
                let (content_type, body) =
                    metalmesh_bin_support::exposition::negotiate(accept, render(&view).await);
                ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|e| anyhow::anyhow!("metrics on {listen}: {e}"))?;
    tracing::info!(%listen, "metrics at /metrics");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await?;
    Ok(())
}
