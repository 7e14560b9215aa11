//! The API node's Prometheus metrics (OpenMetrics text at `/metrics` on
//! `[metrics] listen`, plain HTTP, loopback by default: who may scrape is
//! whoever reaches that address — put it on the management network only).
//!
//! Requests are counted by route template (never by the path a client
//! sent: the label set stays bounded), method and status; latency is a
//! histogram per route and method. Machines by state and liveliness and the
//! replica's sizes are read from the index at scrape time.

use crate::node::index::MachineIndex;
use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    route: String,
    method: String,
    status: u16,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    route: String,
    method: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MachineLabels {
    state: String,
    liveliness: String,
}

/// What the API node counts.
#[derive(Debug)]
pub struct ApiMetrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram>,
}

impl ApiMetrics {
    pub fn new(index: Arc<MachineIndex>) -> ApiMetrics {
        let mut registry = Registry::with_prefix("metalmesh_api");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "HTTP requests answered, by route template, method and status",
            requests.clone(),
        );
        let latency = Family::<RouteLabels, Histogram>::new_with_constructor(|| {
            Histogram::new([
                0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 60.0,
            ])
        });
        registry.register_with_unit(
            "request_duration",
            "Time to answer a request (allocations include the agent's commit)",
            prometheus_client::registry::Unit::Seconds,
            latency.clone(),
        );
        registry.register_collector(Box::new(Replica { index }));
        ApiMetrics {
            registry,
            requests,
            latency,
        }
    }

    /// The exposition, OpenMetrics text.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(%error, "encoding metrics");
        }
        out
    }
}

/// Machines in the replica, read at scrape time.
#[derive(Debug)]
struct Replica {
    index: Arc<MachineIndex>,
}

impl Collector for Replica {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let mut by_state: BTreeMap<(String, String), i64> = BTreeMap::new();
        let mut allocated = 0i64;
        let snapshot = self.index.snapshot();
        for indexed in &snapshot {
            let machine = &indexed.machine;
            *by_state
                .entry((machine.state.clone(), machine.liveliness.clone()))
                .or_default() += 1;
            allocated += i64::from(machine.allocation.is_some());
        }
        {
            let gauge = ConstGauge::new(0i64);
            let mut family = encoder.encode_descriptor(
                "machines",
                "Machines in the API's replica, by lifecycle state and liveliness",
                None,
                gauge.metric_type(),
            )?;
            for ((state, liveliness), count) in by_state {
                let labels = MachineLabels { state, liveliness };
                ConstGauge::new(count).encode(family.encode_family(&labels)?)?;
            }
        }
        let gauge = ConstGauge::new(allocated);
        gauge.encode(encoder.encode_descriptor(
            "machines_allocated",
            "Machines in the API's replica with an allocation",
            None,
            gauge.metric_type(),
        )?)?;
        let gauge = ConstGauge::new(self.index.ips().len() as i64);
        gauge.encode(encoder.encode_descriptor(
            "ips",
            "IP records in the API's replica",
            None,
            gauge.metric_type(),
        )?)?;
        Ok(())
    }
}

/// Counts every request by its route template; unmatched paths count as
/// `unmatched`.
pub async fn count(
    State(metrics): State<Arc<ApiMetrics>>,
    request: Request,
    next: Next,
) -> Response {
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_string(), |m| m.as_str().to_string());
    let method = request.method().as_str().to_string();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics
        .requests
        .get_or_create(&RequestLabels {
            route: route.clone(),
            method: method.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    metrics
        .latency
        .get_or_create(&RouteLabels { route, method })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// `GET /metrics`.
pub async fn exposition(
    State(metrics): State<Arc<ApiMetrics>>,
    headers: axum::http::HeaderMap,
) -> Response {
    let accept = headers
        .get(axum::http::header::ACCEPT)
        .and_then(|v| v.to_str().ok());
    let (content_type, body) =
        metalmesh_bin_support::exposition::negotiate(accept, metrics.render());
    ([(axum::http::header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Serves `/metrics` on `listen` until `cancel`.
pub async fn serve(
    listen: std::net::SocketAddr,
    metrics: Arc<ApiMetrics>,
    cancel: tokio_util::sync::CancellationToken,
) -> std::io::Result<()> {
    let router = axum::Router::new()
        .route("/metrics", axum::routing::get(exposition))
        .with_state(metrics);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    tracing::info!(%listen, "metrics at /metrics");
    axum::serve(listener, router)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
}
