//! Any request to the leaf's HTTP boot server — boot files with any Range
//! header, iPXE scripts, the installer API with any body, on the
//! provisioning address or the tenant gateway — gets an answer, never a
//! panic or a 500: a partial answer's Content-Range lies within the file
//! and its bytes are the file's; the tenant gateway answers nothing but
//! phone-home.
//!
//! Input: `[flags: u8][method: u8] path \0 range \0 body`.
#![no_main]

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Method, Request, StatusCode, header};
use libfuzzer_sys::fuzz_target;
use metalmesh_provisioning::http::{HttpBootConfig, IpxeSettings, LocalAddr, router};
use tower_service::Service;

const FILE_LEN: usize = 5000;

fn file() -> Vec<u8> {
    (0..FILE_LEN).map(|i| (i * 7 % 251) as u8).collect()
}

struct Fixture {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    _root: tempfile::TempDir,
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let root = tempfile::tempdir().expect("temporary directory");
        std::fs::write(root.path().join("image.bin"), file()).expect("boot file");
        let config = HttpBootConfig {
            listen: "127.0.0.1:0".parse().expect("address"),
            root: PathBuf::from(root.path()),
            image_cache: None,
            ipxe: IpxeSettings {
                base_url: "http://10.100.1.1:8070".into(),
                kernel: "vmlinuz".into(),
                initrd: "initramfs.img".into(),
                cmdline: String::new(),
                leaf: "leaf1".into(),
            },
            machines: None,
            counters: Arc::default(),
            max_connections_per_source: 32,
            body_deadline: std::time::Duration::from_secs(10),
        };
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Fixture {
            router: router(&config),
            runtime,
            _root: root,
        }
    })
}

/// `bytes a-b/size` → (a, b, size).
fn content_range(value: &str) -> Option<(usize, usize, usize)> {
    let (range, size) = value.strip_prefix("bytes ")?.split_once('/')?;
    let (a, b) = range.split_once('-')?;
    Some((a.parse().ok()?, b.parse().ok()?, size.parse().ok()?))
}

fuzz_target!(|data: &[u8]| {
    let [flags, method, rest @ ..] = data else { return };
    let mut parts = rest.splitn(3, |b| *b == 0);
    let (path, range, body) = (
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
        parts.next().unwrap_or_default(),
    );
    let method = [Method::GET, Method::HEAD, Method::POST, Method::PUT][usize::from(method % 4)].clone();
    let path = match flags % 4 {
        0 => "/boot/image.bin".to_string(),
        1 => format!("/{}", String::from_utf8_lossy(path)),
        2 => format!("/v1/machines/{}", String::from_utf8_lossy(path)),
        _ => format!("/ipxe/{}", String::from_utf8_lossy(path)),
    };
    let gateway = flags & 0x10 != 0;
    let mut builder = Request::builder().method(method.clone()).uri(path.as_str());
    if let Ok(range) = std::str::from_utf8(range)
        && !range.is_empty()
    {
        builder = builder.header(header::RANGE, range);
    }
    let Ok(mut request) = builder.body(Body::from(body.to_vec())) else { return };
    let uri_path = request.uri().path().to_string();
    let peer: SocketAddr = "10.100.1.150:40000".parse().expect("address");
    let local: SocketAddr = if gateway { "169.254.0.1:8070" } else { "10.100.1.1:8070" }
        .parse()
        .expect("address");
    request.extensions_mut().insert(ConnectInfo(peer));
    request.extensions_mut().insert(LocalAddr(local));

    let fixture = fixture();
    let mut router = fixture.router.clone();
    let (status, headers, bytes) = fixture.runtime.block_on(async move {
        let response = router.call(request).await.expect("infallible");
        let (parts, body) = response.into_parts();
        let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
        (parts.status, parts.headers, bytes)
    });
    assert_ne!(status, StatusCode::INTERNAL_SERVER_ERROR, "{method} {path}");
    let phone_home = method == Method::POST
        && uri_path
            .strip_prefix("/v1/machines/")
            .and_then(|r| r.strip_suffix("/phone-home"))
            .is_some_and(|u| !u.contains('/'));
    if gateway && !phone_home {
        assert_eq!(status, StatusCode::FORBIDDEN, "{method} {path} on the tenant gateway");
    }
    if flags % 4 == 0 && !gateway && method == Method::GET && uri_path == "/boot/image.bin" {
        let whole = file();
        match status {
            StatusCode::OK => assert_eq!(&bytes[..], &whole[..]),
            StatusCode::PARTIAL_CONTENT => {
                let value = headers
                    .get(header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .expect("206 without Content-Range");
                let (a, b, size) = content_range(value).expect("Content-Range syntax");
                assert!(a <= b && b < size && size == FILE_LEN, "{value}");
                assert_eq!(&bytes[..], &whole[a..=b], "{value}");
            }
            StatusCode::RANGE_NOT_SATISFIABLE => {
                let value = headers.get(header::CONTENT_RANGE).and_then(|v| v.to_str().ok());
                assert_eq!(value, Some(format!("bytes */{FILE_LEN}").as_str()));
            }
            StatusCode::NOT_MODIFIED => {}
            other => panic!("GET of a served file answered {other}"),
        }
    }
});
