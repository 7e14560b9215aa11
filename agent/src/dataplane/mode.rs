//! Detecting whether the kernel has VRF devices: create a probe VRF link and
//! remove it again. Kernels without CONFIG_NET_VRF answer "not supported".

use super::desired::KernelMode;

/// Name of the short-lived probe device.
pub(crate) const PROBE: &str = "mm-vrf-probe";
/// A table number no tenant uses (the probe never routes anything).
const PROBE_TABLE: u32 = 0x7fff_fffe;

pub async fn detect(handle: &rtnetlink::Handle) -> KernelMode {
    // A crash can leave the probe behind; one retry after removing it.
    for _ in 0..2 {
        let added = handle
            .link()
            .add(rtnetlink::LinkVrf::new(PROBE, PROBE_TABLE).build())
            .execute()
            .await;
        match added {
            Ok(()) => {
                remove_probe(handle).await;
                return KernelMode::VrfDevice;
            }
            Err(error) if error.to_string().contains("File exists") => remove_probe(handle).await,
            Err(error) => {
                tracing::info!(%error, "no VRF devices in this kernel: using routing tables and rules");
                return KernelMode::RoutingTables;
            }
        }
    }
    KernelMode::RoutingTables
}

async fn remove_probe(handle: &rtnetlink::Handle) {
    use futures::TryStreamExt;
    let mut links = handle.link().get().match_name(PROBE.to_string()).execute();
    if let Ok(Some(link)) = links.try_next().await {
        let _ = handle.link().del(link.header.index).execute().await;
    }
}
