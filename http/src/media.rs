//! `GET /boot/media/{name}.iso`: the per-boot agent ISOs of virtual-media boot ([`kiln_engine::vmedia`]), for the
//! BMC to fetch. The name is the secret (128 random bits, sent only to the host's BMC); BMCs cannot present kiln's
//! admin token. Range requests are answered (BMCs read virtual media in ranges, and more than once); the first read
//! is recorded in the host's events. An unknown name is a plain 404.

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State as AxState};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use kiln_engine::vmedia::Shelved;

use crate::http_util::AppState;

/// The routes, on kiln's HTTPS listener.
pub fn router() -> Router<AppState> {
    Router::new().route("/boot/media/{file}", get(iso))
}

/// A single `bytes=` range of a `len`-byte body: `Ok(None)` for no (or an ignorable multi-) range, `Err` for one
/// that cannot be satisfied.
fn range(headers: &HeaderMap, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(v) = headers.get(header::RANGE).and_then(|v| v.to_str().ok()) else {
        return Ok(None);
    };
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return Ok(None);
    };
    if spec.contains(',') {
        // Several ranges: answering with the whole body is allowed (RFC 9110 14.2) and every client copes.
        return Ok(None);
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = match (a.is_empty(), b.is_empty()) {
        (false, _) => {
            let start: u64 = a.parse().map_err(|_| ())?;
            let end = if b.is_empty() {
                len.saturating_sub(1)
            } else {
                b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
            };
            (start, end)
        }
        (true, false) => {
            let n: u64 = b.parse().map_err(|_| ())?;
            if n == 0 {
                return Err(());
            }
            (len.saturating_sub(n), len.saturating_sub(1))
        }
        (true, true) => return Err(()),
    };
    if start >= len || start > end {
        return Err(());
    }
    Ok(Some((start, end)))
}

/// The bytes `start..=end` of the ISO as a stream of 1 MiB chunks, read off the async threads.
fn body(s: Arc<Shelved>, start: u64, end: u64) -> Body {
    const CHUNK: u64 = 1 << 20;
    let stream = futures::stream::unfold(start, move |pos| {
        let s = s.clone();
        async move {
            if pos > end {
                return None;
            }
            let n = (end + 1 - pos).min(CHUNK) as usize;
            let r = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                let mut got = 0;
                while got < n {
                    let k = s.iso.read_at(pos + got as u64, &mut buf[got..])?;
                    if k == 0 {
                        return Err(std::io::Error::new(
                            std::io::ErrorKind::UnexpectedEof,
                            "an agent ISO file shrank while being served",
                        ));
                    }
                    got += k;
                }
                Ok::<_, std::io::Error>(buf)
            })
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)));
            match r {
                Ok(buf) => Some((Ok(axum::body::Bytes::from(buf)), pos + n as u64)),
                Err(e) => Some((Err(e), end + 1)),
            }
        }
    });
    Body::from_stream(stream)
}

async fn iso(AxState(app): AxState<AppState>, Path(file): Path<String>, headers: HeaderMap) -> Response {
    let not_found = || (StatusCode::NOT_FOUND, "no such medium\n").into_response();
    let Some(media) = app.executor.virtual_media() else {
        return not_found();
    };
    let Some(shelved) = file.strip_suffix(".iso").and_then(|name| media.shelf.get(name)) else {
        return not_found();
    };
    let len = shelved.iso.len();
    if shelved.first_read() {
        let host = app
            .store
            .host_by_id(shelved.host_id)
            .await
            .ok()
            .flatten()
            .map(|h| h.name.to_string());
        if let Some(host) = host {
            let msg = format!("the BMC began reading kiln's agent ISO ({len} bytes)");
            let now = kiln_engine::executor::now();
            if let Err(e) = app.store.add_event(&host, now, "virtual_media_read", &msg).await {
                tracing::warn!(%host, "recording the first read of the agent ISO: {e}");
            }
        }
    }
    let mut h = HeaderMap::new();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/x-iso9660-image"),
    );
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    match range(&headers, len) {
        Ok(None) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            let b = if len == 0 {
                Body::empty()
            } else {
                body(shelved, 0, len - 1)
            };
            (StatusCode::OK, h, b).into_response()
        }
        Ok(Some((start, end))) => {
            h.insert(header::CONTENT_LENGTH, HeaderValue::from(end + 1 - start));
            let cr = format!("bytes {start}-{end}/{len}");
            h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&cr).expect("ascii"));
            (StatusCode::PARTIAL_CONTENT, h, body(shelved, start, end)).into_response()
        }
        Err(()) => {
            let cr = format!("bytes */{len}");
            h.insert(header::CONTENT_RANGE, HeaderValue::from_str(&cr).expect("ascii"));
            (StatusCode::RANGE_NOT_SATISFIABLE, h).into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hdr(v: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::RANGE, HeaderValue::from_str(v).unwrap());
        h
    }

    #[test]
    fn ranges() {
        assert_eq!(range(&HeaderMap::new(), 100), Ok(None));
        assert_eq!(range(&hdr("bytes=0-9"), 100), Ok(Some((0, 9))));
        assert_eq!(range(&hdr("bytes=90-"), 100), Ok(Some((90, 99))));
        assert_eq!(range(&hdr("bytes=-10"), 100), Ok(Some((90, 99))));
        assert_eq!(range(&hdr("bytes=50-500"), 100), Ok(Some((50, 99))));
        assert_eq!(range(&hdr("bytes=0-1,5-6"), 100), Ok(None));
        assert_eq!(range(&hdr("bytes=100-"), 100), Err(()));
        assert_eq!(range(&hdr("bytes=9-3"), 100), Err(()));
        assert_eq!(range(&hdr("bytes=-0"), 100), Err(()));
        assert_eq!(range(&hdr("bytes=x-1"), 100), Err(()));
        assert_eq!(range(&hdr("items=0-1"), 100), Ok(None));
    }
}
