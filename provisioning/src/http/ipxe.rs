//! iPXE scripts: what a machine boots into, by MAC.

use std::fmt::Write as _;
use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::AppState;

/// What every provisioning boot loads: the kernel and initramfs carrying
/// `metalmesh-installer`, with the leaf's address on the command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpxeSettings {
    /// Base URL of this server as machines reach it, e.g. `http://10.100.1.1:8070`.
    pub base_url: String,
    /// Paths under `/boot/`.
    pub kernel: String,
    pub initrd: String,
    /// Extra kernel command line.
    pub cmdline: String,
    /// Name of the leaf, shown on the machine's console.
    pub leaf: String,
}

/// Parses `52-54-00-6d-01-03` or `52:54:00:6d:01:03` into the colon form.
pub(super) fn parse_mac(text: &str) -> Option<String> {
    metalmesh_lldp::parse_mac(&text.replace('-', ":")).map(|mac| metalmesh_lldp::format_mac(&mac))
}

pub(super) fn render(settings: &IpxeSettings, mac: &str) -> String {
    let mut script = String::from("#!ipxe\n");
    let base = &settings.base_url;
    let _ = writeln!(
        script,
        "echo metalmesh: {mac} boots from {} ({base})",
        settings.leaf
    );
    let _ = writeln!(
        script,
        "kernel {base}/boot/{} initrd={} console=tty0 console=ttyS0,115200 metalmesh.leaf={base} metalmesh.mac={mac} {}",
        settings.kernel,
        settings
            .initrd
            .rsplit('/')
            .next()
            .unwrap_or(&settings.initrd),
        settings.cmdline
    );
    let _ = writeln!(script, "initrd {base}/boot/{}", settings.initrd);
    let _ = writeln!(script, "boot || goto failed");
    let _ = writeln!(script, ":failed");
    let _ = writeln!(script, "echo metalmesh: boot failed, retrying in 5 s");
    let _ = writeln!(script, "sleep 5");
    let _ = writeln!(script, "reboot");
    script
}

pub(super) async fn script(
    State(state): State<Arc<AppState>>,
    Path(mac): Path<String>,
) -> Response {
    match parse_mac(&mac) {
        Some(mac) => (
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            render(&state.ipxe, &mac),
        )
            .into_response(),
        None => (StatusCode::BAD_REQUEST, "not a MAC address\n").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn script_boots_kernel_and_initrd_of_this_leaf() {
        let settings = IpxeSettings {
            base_url: "http://10.100.1.1:8070".into(),
            kernel: "vmlinuz".into(),
            initrd: "initramfs.img".into(),
            cmdline: "quiet".into(),
            leaf: "leaf1".into(),
        };
        let s = render(&settings, "52:54:00:6d:01:03");
        assert!(s.starts_with("#!ipxe\n"));
        assert!(s.contains("kernel http://10.100.1.1:8070/boot/vmlinuz initrd=initramfs.img console=tty0 console=ttyS0,115200"));
        assert!(s.contains("metalmesh.mac=52:54:00:6d:01:03"));
        assert!(s.contains("initrd http://10.100.1.1:8070/boot/initramfs.img\n"));
        assert_eq!(
            parse_mac("52-54-00-6D-01-03").as_deref(),
            Some("52:54:00:6d:01:03")
        );
        assert_eq!(parse_mac("52-54-00-6d-01"), None);
        assert_eq!(parse_mac("zz-54-00-6d-01-03"), None);
    }
}
