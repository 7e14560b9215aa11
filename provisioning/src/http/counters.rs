//! What the HTTP boot server did, counted for the agent's metrics: requests
//! by what they asked for and how they were answered, and the file bytes
//! actually streamed (a client that hangs up mid-file counts only what it
//! got).

use std::sync::atomic::{AtomicU64, Ordering};

/// What a request asked for: the bounded label of the metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HttpRoute {
    /// `/boot/…`: kernel and initramfs.
    Boot,
    /// `/images/…`: OS images this leaf downloaded.
    Images,
    /// `/ipxe/{mac}`: per-machine scripts.
    Ipxe,
    /// `/v1/machines/…`: the installer API.
    Installer,
    /// Anything else (answered 404).
    Other,
}

impl HttpRoute {
    pub const ALL: [HttpRoute; 5] = [
        HttpRoute::Boot,
        HttpRoute::Images,
        HttpRoute::Ipxe,
        HttpRoute::Installer,
        HttpRoute::Other,
    ];

    pub fn of_path(path: &str) -> HttpRoute {
        if path.starts_with("/boot/") {
            HttpRoute::Boot
        } else if path.starts_with("/images/") {
            HttpRoute::Images
        } else if path.starts_with("/ipxe/") {
            HttpRoute::Ipxe
        } else if path.starts_with("/v1/machines/") {
            HttpRoute::Installer
        } else {
            HttpRoute::Other
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            HttpRoute::Boot => "boot",
            HttpRoute::Images => "images",
            HttpRoute::Ipxe => "ipxe",
            HttpRoute::Installer => "installer",
            HttpRoute::Other => "other",
        }
    }
}

/// The status classes counted.
pub const STATUS_CLASSES: [&str; 4] = ["2xx", "3xx", "4xx", "5xx"];

/// Counters per route.
#[derive(Debug, Default)]
pub struct RouteCounters {
    /// Answers by status class, in [`STATUS_CLASSES`] order.
    pub answered: [AtomicU64; 4],
    /// File bytes streamed to clients.
    pub sent_bytes: AtomicU64,
}

/// Counters of the whole server.
#[derive(Debug, Default)]
pub struct HttpCounters {
    routes: [RouteCounters; 5],
    /// Connections closed at accept: their source had too many open.
    pub refused_connections: AtomicU64,
}

impl HttpCounters {
    pub fn route(&self, route: HttpRoute) -> &RouteCounters {
        &self.routes[route as usize]
    }

    pub(super) fn answered(&self, route: HttpRoute, status: u16) {
        let class = match status {
            0..=299 => 0,
            300..=399 => 1,
            400..=499 => 2,
            _ => 3,
        };
        self.route(route).answered[class].fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn refused_connection(&self) {
        self.refused_connections.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn sent(&self, route: HttpRoute, bytes: usize) {
        self.route(route)
            .sent_bytes
            .fetch_add(bytes as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_and_classes() {
        assert_eq!(HttpRoute::of_path("/boot/vmlinuz"), HttpRoute::Boot);
        assert_eq!(HttpRoute::of_path("/images/ab.img"), HttpRoute::Images);
        assert_eq!(
            HttpRoute::of_path("/ipxe/52:54:00:00:00:01"),
            HttpRoute::Ipxe
        );
        assert_eq!(
            HttpRoute::of_path("/v1/machines/register"),
            HttpRoute::Installer
        );
        assert_eq!(HttpRoute::of_path("/boot"), HttpRoute::Other);
        let counters = HttpCounters::default();
        counters.answered(HttpRoute::Boot, 206);
        counters.answered(HttpRoute::Boot, 404);
        counters.answered(HttpRoute::Other, 404);
        counters.sent(HttpRoute::Images, 10);
        let boot = counters.route(HttpRoute::Boot);
        assert_eq!(boot.answered[0].load(Ordering::Relaxed), 1);
        assert_eq!(boot.answered[2].load(Ordering::Relaxed), 1);
        assert_eq!(
            counters.route(HttpRoute::Other).answered[2].load(Ordering::Relaxed),
            1
        );
        assert_eq!(
            counters
                .route(HttpRoute::Images)
                .sent_bytes
                .load(Ordering::Relaxed),
            10
        );
    }
}
