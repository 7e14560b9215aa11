//! `/boot/…`: files streamed from the served directory, never read whole
//! into memory; HEAD, one byte range (RFC 9110 §14), ETag and If-None-Match.

use std::io::SeekFrom;
use std::sync::Arc;
use std::time::UNIX_EPOCH;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::TryStreamExt as _;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::AppState;
use crate::root::{PathError, resolve};

/// A byte range request resolved against the file size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Range {
    Whole,
    Part { start: u64, end: u64 },
    Unsatisfiable,
}

/// Parses `bytes=a-b`, `bytes=a-`, `bytes=-n`. Several ranges, or anything
/// unparsable, are answered with the whole file, as RFC 9110 allows.
pub(super) fn parse_range(header: Option<&str>, size: u64) -> Range {
    let Some(spec) = header.and_then(|h| h.trim().strip_prefix("bytes=")) else {
        return Range::Whole;
    };
    if spec.contains(',') {
        return Range::Whole;
    }
    let Some((a, b)) = spec.split_once('-') else {
        return Range::Whole;
    };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        (false, _) => {
            let Ok(start) = a.parse::<u64>() else {
                return Range::Whole;
            };
            let end = if b.is_empty() {
                Some(size.saturating_sub(1))
            } else {
                b.parse::<u64>().ok().map(|e| e.min(size.saturating_sub(1)))
            };
            match end {
                Some(end) if start < size && start <= end => Some((start, end)),
                Some(_) => None,
                None => return Range::Whole,
            }
        }
        (true, false) => {
            let Ok(suffix) = b.parse::<u64>() else {
                return Range::Whole;
            };
            if suffix == 0 || size == 0 {
                None
            } else {
                Some((size.saturating_sub(suffix), size - 1))
            }
        }
        (true, true) => return Range::Whole,
    };
    match parsed {
        Some((start, end)) => Range::Part { start, end },
        None => Range::Unsatisfiable,
    }
}

fn status_for(error: &PathError) -> StatusCode {
    match error {
        PathError::NotFound => StatusCode::NOT_FOUND,
        PathError::RootUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::FORBIDDEN,
    }
}

pub(super) async fn serve(
    State(state): State<Arc<AppState>>,
    method: Method,
    headers: HeaderMap,
    Path(path): Path<String>,
) -> Response {
    let real = match resolve(&state.root, &path) {
        Ok(real) => real,
        Err(error) => {
            if error == PathError::NotFound {
                tracing::warn!(file = %path, root = %state.root.display(), "boot file missing");
            }
            return (status_for(&error), format!("{path}: {error}\n")).into_response();
        }
    };
    let mut file = match tokio::fs::File::open(&real).await {
        Ok(file) => file,
        Err(error) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response();
        }
    };
    let metadata = match file.metadata().await {
        Ok(m) => m,
        Err(error) => {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response();
        }
    };
    let size = metadata.len();
    let modified = metadata
        .modified()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let etag = format!("\"{size:x}-{modified:x}\"");
    let etag_header = HeaderValue::from_str(&etag).unwrap_or(HeaderValue::from_static("\"0\""));
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    if if_none_match.is_some_and(|v| v.split(',').any(|t| t.trim() == etag || t.trim() == "*")) {
        return (StatusCode::NOT_MODIFIED, [(header::ETAG, etag_header)]).into_response();
    }
    let range = parse_range(
        headers.get(header::RANGE).and_then(|v| v.to_str().ok()),
        size,
    );
    let (status, start, length) = match range {
        Range::Whole => (StatusCode::OK, 0, size),
        Range::Part { start, end } => (StatusCode::PARTIAL_CONTENT, start, end - start + 1),
        Range::Unsatisfiable => {
            return (
                StatusCode::RANGE_NOT_SATISFIABLE,
                [(header::CONTENT_RANGE, format!("bytes */{size}"))],
            )
                .into_response();
        }
    };
    let mut builder = Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/octet-stream")
        .header(header::CONTENT_LENGTH, length)
        .header(header::ACCEPT_RANGES, "bytes")
        .header(header::ETAG, etag_header);
    if status == StatusCode::PARTIAL_CONTENT {
        builder = builder.header(
            header::CONTENT_RANGE,
            format!("bytes {start}-{}/{size}", start + length - 1),
        );
    }
    let body = if method == Method::HEAD {
        Body::empty()
    } else {
        if start > 0
            && let Err(error) = file.seek(SeekFrom::Start(start)).await
        {
            return (StatusCode::INTERNAL_SERVER_ERROR, format!("{error}\n")).into_response();
        }
        let counters = Arc::clone(&state.counters);
        let route = state.files;
        Body::from_stream(
            ReaderStream::with_capacity(file.take(length), 256 * 1024).inspect_ok(move |chunk| {
                counters.sent(route, chunk.len());
            }),
        )
    };
    builder
        .body(body)
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range(None, 100), Range::Whole);
        assert_eq!(
            parse_range(Some("bytes=0-9"), 100),
            Range::Part { start: 0, end: 9 }
        );
        assert_eq!(
            parse_range(Some("bytes=90-"), 100),
            Range::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-10"), 100),
            Range::Part { start: 90, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=-1000"), 100),
            Range::Part { start: 0, end: 99 }
        );
        assert_eq!(
            parse_range(Some("bytes=50-1000"), 100),
            Range::Part { start: 50, end: 99 }
        );
        assert_eq!(parse_range(Some("bytes=100-"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=9-3"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=-0"), 100), Range::Unsatisfiable);
        assert_eq!(parse_range(Some("bytes=0-1,5-6"), 100), Range::Whole);
        assert_eq!(parse_range(Some("items=0-1"), 100), Range::Whole);
        assert_eq!(parse_range(Some("bytes=x-1"), 100), Range::Whole);
    }
}
