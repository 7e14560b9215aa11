//! What each source address holds open (HTTP connections, TFTP
//! transfers), so one client cannot take every slot of a service.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Open things per source address.
#[derive(Debug, Clone, Default)]
pub struct OpenPerSource(Arc<Mutex<HashMap<IpAddr, usize>>>);

/// One open thing of a source; released when dropped.
#[derive(Debug)]
pub struct SourceSlot {
    open: OpenPerSource,
    source: IpAddr,
}

impl OpenPerSource {
    /// A slot for `source`, unless it already holds `max`.
    pub fn acquire(&self, source: IpAddr, max: usize) -> Option<SourceSlot> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(source).or_default();
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            open: self.clone(),
            source,
        })
    }
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut open = self.open.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.source);
            }
        }
    }
}
