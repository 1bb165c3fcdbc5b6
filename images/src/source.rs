//! Image sources: a local file or an HTTP(S) URL, read as a stream of chunks in order. An HTTP download that drops
//! mid-body is resumed with `Range: bytes=N-` (RFC 9110 §14.2, with `If-Range` so a changed file is not spliced);
//! a server that ignores ranges answers 200 and the first N bytes are skipped instead. A server that refuses
//! connections (restarting, as kiln does when it serves the image itself) is waited for up to
//! [`UNREACHABLE_BUDGET`] before the download is given up.
//!
//! This module only produces bytes; it does not hash, decode or write them.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt;
use reqwest::header::HeaderValue;
use tokio::sync::mpsc;

use crate::error::ImageError;
use crate::progress::Progress;

/// Consecutive failed attempts (without any progress between them) before a download is given up.
const MAX_RETRIES: u32 = 5;
/// How long a server that refuses connections is waited for (once it answered, or from the start).
pub const UNREACHABLE_BUDGET: Duration = Duration::from_secs(120);
/// Time between connection attempts to an unreachable server.
const UNREACHABLE_POLL: Duration = Duration::from_secs(2);
/// Size of the chunks a local file is read in: one write buffer, so that an uncompressed raw image goes from the
/// page cache to the target without a copy in between.
pub(crate) const FILE_CHUNK: usize = crate::target::BUF_SIZE;
/// File chunks in memory at once (read ahead, queued for the hasher or the decoder, being written).
const FILE_CHUNKS: usize = 6;

/// Renews an expired `Authorization` header (a registry's Bearer token) by asking for a new one.
pub(crate) type Renew =
    Arc<dyn Fn() -> futures::future::BoxFuture<'static, Result<HeaderValue, ImageError>> + Send + Sync>;

/// The `Authorization` header of a download (an `oci://` blob's), shared by the download, its resumes and the
/// decoder's re-reads. A registry's Bearer token is short-lived (Docker Hub's lasts 300 s) and is checked on every
/// request, so a resume or re-read long after the first request may be refused with 401: with a way to renew it,
/// the header is renewed once and the request sent again.
#[derive(Clone)]
pub(crate) struct Authorization {
    current: Arc<std::sync::Mutex<HeaderValue>>,
    renew: Option<Renew>,
}

impl std::fmt::Debug for Authorization {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorization")
            .field("value", &"***")
            .field("renewable", &self.renew.is_some())
            .finish()
    }
}

impl Authorization {
    /// A header sent as it is (credentials that do not expire, or a token nothing can renew).
    pub(crate) fn fixed(value: HeaderValue) -> Self {
        Self {
            current: Arc::new(std::sync::Mutex::new(value)),
            renew: None,
        }
    }

    /// A header `renew` makes anew when the server refuses it.
    pub(crate) fn renewable(value: HeaderValue, renew: Renew) -> Self {
        Self {
            renew: Some(renew),
            ..Self::fixed(value)
        }
    }

    /// The header to send now.
    pub(crate) fn value(&self) -> HeaderValue {
        self.current.lock().expect("authorization lock").clone()
    }

    /// After a 401: renews the header, if it can be. `Ok(false)` when it cannot (the 401 stands).
    ///
    /// # Errors
    /// Why the renewal failed (the registry's token service refused or could not be reached).
    pub(crate) async fn renew(&self) -> Result<bool, ImageError> {
        let Some(renew) = &self.renew else {
            return Ok(false);
        };
        let mut value = renew().await?;
        value.set_sensitive(true);
        *self.current.lock().expect("authorization lock") = value;
        Ok(true)
    }
}

/// Where an image comes from, parsed at the edge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceLocation {
    Http(url::Url),
    File(PathBuf),
}

impl SourceLocation {
    /// Parses `http://`, `https://`, `file://` URLs or a plain local path.
    ///
    /// # Errors
    /// `InvalidSource` for an unparsable URL or another scheme.
    pub fn parse(s: &str) -> Result<Self, ImageError> {
        let invalid = || ImageError::InvalidSource {
            source_str: s.to_owned(),
        };
        if s.contains("://") {
            let url = url::Url::parse(s).map_err(|_| invalid())?;
            return match url.scheme() {
                "http" | "https" => Ok(Self::Http(url)),
                "file" => url.to_file_path().map(Self::File).map_err(|()| invalid()),
                _ => Err(invalid()),
            };
        }
        if s.is_empty() {
            return Err(invalid());
        }
        Ok(Self::File(PathBuf::from(s)))
    }

    pub fn display(&self) -> String {
        match self {
            Self::Http(u) => u.to_string(),
            Self::File(p) => p.display().to_string(),
        }
    }
}

/// `s` with the user-info of a URL (`scheme://user:password@host/...`) replaced by `***`, for logs and errors.
/// Everything before the last `@` ahead of the first `/` goes, even characters a URL would not put in user-info.
pub fn redact_userinfo(s: &str) -> String {
    let Some((scheme, rest)) = s.split_once("://") else {
        return s.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => s.to_owned(),
    }
}

/// The last path component of a URL or path (the name looked up in checksum files).
pub fn file_name(source: &str) -> String {
    let path = source.split(['?', '#']).next().unwrap_or(source);
    path.rsplit('/').next().unwrap_or(path).to_owned()
}

/// Whether a request failed because the server's TLS certificate was refused (its issuer is not trusted, it names
/// another host, it expired): unlike a server that is not up yet, retrying cannot help.
fn is_certificate_error(e: &reqwest::Error) -> bool {
    let refused = |r: &rustls::Error| {
        matches!(
            r,
            rustls::Error::InvalidCertificate(_) | rustls::Error::NoCertificatesPresented
        )
    };
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<rustls::Error>() {
            return refused(r);
        }
        // hyper-util and tokio-rustls hand rustls' error up inside io::Errors, whose `source` skips what they wrap.
        cur = match err.downcast_ref::<std::io::Error>().and_then(std::io::Error::get_ref) {
            Some(inner) => Some(inner as &(dyn std::error::Error + 'static)),
            None => err.source(),
        };
    }
    false
}

/// An HTTP client for image downloads (rustls with the ring provider).
///
/// # Errors
/// `HttpClient` if reqwest cannot build a client.
pub fn http_client() -> Result<reqwest::Client, ImageError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(30))
        .read_timeout(Duration::from_secs(60))
        .build()
        .map_err(ImageError::HttpClient)
}

/// Sends the published bytes of `location` in order to `tx` (and a copy of each chunk to `hash_tx`), updating
/// `progress.bytes_read`. Returns the number of bytes sent. Stops early without error if `tx` is closed.
/// `authorization` goes with every HTTP request (the first and each resume), renewed when the server refuses it.
///
/// # Errors
/// The download or read error, after resume attempts for HTTP.
pub(crate) async fn pump(
    location: &SourceLocation,
    client: Option<&reqwest::Client>,
    authorization: Option<&Authorization>,
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    hash_tx: Option<mpsc::Sender<Bytes>>,
    progress: &Progress,
    consumer_ok: Arc<AtomicBool>,
) -> Result<u64, ImageError> {
    let mut emit = Emitter {
        tx,
        hash_tx,
        progress: progress.clone(),
        sent: 0,
        closed: false,
        consumer_ok,
    };
    let res = match location {
        SourceLocation::File(path) => {
            let path = path.clone();
            let (e, res) = tokio::task::spawn_blocking(move || {
                let res = pump_file(&path, &mut emit);
                (emit, res)
            })
            .await
            .map_err(|e| ImageError::Internal(e.into()))?;
            emit = e;
            res
        }
        SourceLocation::Http(url) => match client {
            Some(client) => pump_http(url, client, authorization, &mut emit).await,
            None => pump_http(url, &http_client()?, authorization, &mut emit).await,
        },
    };
    if let Err(e) = &res {
        // Make the consumer see an error rather than a clean end of stream.
        let _ = emit.tx.send(Err(std::io::Error::other(e.to_string()))).await;
    }
    res.map(|()| emit.sent)
}

struct Emitter {
    tx: mpsc::Sender<std::io::Result<Bytes>>,
    hash_tx: Option<mpsc::Sender<Bytes>>,
    progress: Progress,
    sent: u64,
    closed: bool,
    /// Set by the consumer when it succeeded, before it drops its receiver. A closed channel without it means the
    /// consumer failed: stop downloading. With it (trailing bytes after a compressed stream), keep reading so the
    /// digest covers every published byte.
    consumer_ok: Arc<AtomicBool>,
}

impl Emitter {
    fn consumer_failed(&self) -> bool {
        self.closed && !self.consumer_ok.load(Ordering::SeqCst)
    }

    /// Returns false once the consumer has failed.
    async fn emit(&mut self, chunk: Bytes) -> bool {
        if self.consumer_failed() {
            return false;
        }
        if chunk.is_empty() {
            return true;
        }
        self.sent += chunk.len() as u64;
        self.progress.add_read(chunk.len() as u64);
        if let Some(h) = &self.hash_tx {
            let _ = h.send(chunk.clone()).await;
        }
        if !self.closed && self.tx.send(Ok(chunk)).await.is_err() {
            self.closed = true;
        }
        !self.consumer_failed()
    }

    /// [`Emitter::emit`] for a blocking thread.
    fn emit_blocking(&mut self, chunk: Bytes) -> bool {
        if self.consumer_failed() {
            return false;
        }
        if chunk.is_empty() {
            return true;
        }
        self.sent += chunk.len() as u64;
        self.progress.add_read(chunk.len() as u64);
        if let Some(h) = &self.hash_tx {
            let _ = h.blocking_send(chunk.clone());
        }
        if !self.closed && self.tx.blocking_send(Ok(chunk)).is_err() {
            self.closed = true;
        }
        !self.consumer_failed()
    }
}

/// Reads a local file on a blocking thread, in [`FILE_CHUNK`]s whose memory starts at a 4096-byte boundary (so
/// the writer can hand them to O_DIRECT as they are).
fn pump_file(path: &std::path::Path, emit: &mut Emitter) -> Result<(), ImageError> {
    let read_err = |source| ImageError::ReadSource {
        path: path.to_owned(),
        source,
    };
    let mut f = std::fs::File::open(path).map_err(read_err)?;
    if let Ok(m) = f.metadata()
        && m.is_file()
    {
        emit.progress.set_source_size(m.len());
    }
    let mut pool = crate::target::BufPool::new(FILE_CHUNK, FILE_CHUNKS);
    loop {
        let mut buf = pool.take();
        let len = read_full(&mut f, buf.as_mut()).map_err(read_err)?;
        if len == 0 {
            return Ok(());
        }
        if !emit.emit_blocking(pool.lend(buf, 0..len)) {
            return Ok(());
        }
    }
}

/// Reads until `buf` is full or `r` ends; returns the bytes read.
pub(crate) fn read_full(r: &mut impl std::io::Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut len = 0;
    while len < buf.len() {
        match r.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

fn content_range_start_total(v: &str) -> Option<(u64, Option<u64>)> {
    // "bytes START-END/TOTAL" (RFC 9110 §14.4)
    let rest = v.trim().strip_prefix("bytes ")?;
    let (range, total) = rest.split_once('/')?;
    let (start, _) = range.split_once('-')?;
    Some((start.parse().ok()?, total.parse().ok()))
}

async fn pump_http(
    url: &url::Url,
    client: &reqwest::Client,
    authorization: Option<&Authorization>,
    emit: &mut Emitter,
) -> Result<(), ImageError> {
    let url_s = url.to_string();
    let mut offset = 0u64;
    let mut total: Option<u64> = None;
    let mut validator: Option<String> = None;
    let mut failures = 0u32;
    let mut last_err: Option<Box<dyn std::error::Error + Send + Sync>> = None;
    let mut unreachable_since: Option<tokio::time::Instant> = None;
    // Whether the header was renewed since the last request that got data (a renewed header refused again is
    // not renewed a second time: the refusal stands).
    let mut renewed = false;
    loop {
        if failures > 0 {
            if failures > MAX_RETRIES {
                let source = last_err.take().unwrap_or_else(|| "connection dropped".into());
                return Err(match total {
                    Some(expected) if offset < expected => {
                        tracing::warn!(url = %url_s, offset, error = %source, "giving up on download");
                        ImageError::Truncated {
                            url: url_s,
                            received: offset,
                            expected,
                        }
                    }
                    _ => ImageError::Download {
                        url: url_s,
                        bytes: offset,
                        source,
                    },
                });
            }
            let backoff = Duration::from_millis(200 * (1 << (failures - 1).min(5)));
            tokio::time::sleep(backoff.min(Duration::from_secs(5))).await;
        }
        let mut req = client.get(url.clone());
        if let Some(a) = authorization {
            // A registry's blob URL (see `crate::oci`). When the registry redirects it to another host, port or
            // scheme (object storage, with a signed URL), reqwest drops this header from the redirected request:
            // the credentials or token never leave the registry.
            req = req.header(reqwest::header::AUTHORIZATION, a.value());
        }
        if offset > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={offset}-"));
            if let Some(v) = &validator {
                req = req.header(reqwest::header::IF_RANGE, v.as_str());
            }
            if unreachable_since.is_none() {
                tracing::info!(url = %url_s, offset, "resuming download");
            }
        }
        let resp = match req.send().await {
            Ok(r) => {
                unreachable_since = None;
                r
            }
            Err(e) if is_certificate_error(&e) => {
                // The server's certificate was refused (an issuer not trusted, another name, expired): waiting
                // cannot change that. Fail now, naming it.
                failures = MAX_RETRIES + 1;
                last_err = Some(e.into());
                continue;
            }
            Err(e) if e.is_connect() => {
                // Nothing listening (or no route): the server may be restarting. Wait for it within the budget;
                // these attempts do not count as failures of a server that answers.
                let first = unreachable_since.is_none();
                let since = *unreachable_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= UNREACHABLE_BUDGET {
                    failures = MAX_RETRIES + 1;
                } else {
                    if first {
                        tracing::warn!(url = %url_s, offset, error = %e, ?UNREACHABLE_BUDGET, "server unreachable, waiting for it");
                    }
                    tokio::time::sleep(UNREACHABLE_POLL).await;
                }
                last_err = Some(e.into());
                continue;
            }
            Err(e) => {
                failures += 1;
                last_err = Some(e.into());
                continue;
            }
        };
        let status = resp.status();
        let mut skip = 0u64;
        match status.as_u16() {
            200 => {
                if offset == 0 {
                    total = resp.content_length();
                    let h = resp.headers();
                    validator = h
                        .get(reqwest::header::ETAG)
                        .filter(|v| !v.as_bytes().starts_with(b"W/"))
                        .or_else(|| h.get(reqwest::header::LAST_MODIFIED))
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    if let Some(t) = total {
                        emit.progress.set_source_size(t);
                    }
                } else {
                    // No range support (or the file changed): start over and drop what we already sent.
                    if resp.content_length().is_some_and(|l| Some(l) != total) {
                        return Err(ImageError::Download {
                            url: url_s,
                            bytes: offset,
                            source: "the image changed on the server during the download".into(),
                        });
                    }
                    skip = offset;
                }
            }
            206 => {
                let cr = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok());
                match cr.and_then(content_range_start_total) {
                    Some((start, t)) if start == offset => {
                        if total.is_none() {
                            total = t;
                        }
                    }
                    _ => {
                        return Err(ImageError::Download {
                            url: url_s,
                            bytes: offset,
                            source: format!("unexpected Content-Range {cr:?} for a resume at {offset}").into(),
                        });
                    }
                }
            }
            416 if total == Some(offset) => return Ok(()),
            401 if !renewed && authorization.is_some() => {
                let a = authorization.expect("checked");
                if a.renew().await? {
                    tracing::info!(url = %url_s, offset, "authorization refused (expired token); renewed it");
                    renewed = true;
                    continue;
                }
                return Err(ImageError::HttpStatus {
                    url: url_s,
                    status: 401,
                });
            }
            s if s >= 500 || s == 408 || s == 429 => {
                failures += 1;
                last_err = Some(format!("HTTP status {s}").into());
                continue;
            }
            s => return Err(ImageError::HttpStatus { url: url_s, status: s }),
        }
        let mut body = resp.bytes_stream();
        let mut progressed = false;
        let mut dropped = None;
        while let Some(item) = body.next().await {
            match item {
                Ok(mut chunk) => {
                    if skip > 0 {
                        let n = skip.min(chunk.len() as u64);
                        skip -= n;
                        chunk = chunk.slice(n as usize..);
                    }
                    if chunk.is_empty() {
                        continue;
                    }
                    progressed = true;
                    offset += chunk.len() as u64;
                    if !emit.emit(chunk).await {
                        return Ok(());
                    }
                }
                Err(e) => {
                    dropped = Some(e);
                    break;
                }
            }
        }
        if progressed {
            failures = 0;
            renewed = false;
        }
        match (dropped, total) {
            (None, None) => return Ok(()),
            (None, Some(t)) if offset >= t => return Ok(()),
            (None, Some(t)) => {
                failures += 1;
                last_err = Some(format!("body ended at {offset} of {t} bytes").into());
            }
            (Some(e), _) => {
                tracing::warn!(url = %url_s, offset, error = %e, "download interrupted");
                failures += 1;
                last_err = Some(e.into());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations_and_file_names() {
        assert!(matches!(
            SourceLocation::parse("http://h/x.img").unwrap(),
            SourceLocation::Http(_)
        ));
        assert_eq!(
            SourceLocation::parse("file:///tmp/a.raw").unwrap(),
            SourceLocation::File("/tmp/a.raw".into())
        );
        assert_eq!(
            SourceLocation::parse("/tmp/a.raw").unwrap(),
            SourceLocation::File("/tmp/a.raw".into())
        );
        assert!(SourceLocation::parse("ftp://h/x").is_err());
        assert_eq!(file_name("http://h/a/b/disk.qcow2?x=1"), "disk.qcow2");
        assert_eq!(redact_userinfo("oci://u:p@h:5000/r:t"), "oci://***@h:5000/r:t");
        assert_eq!(redact_userinfo("https://u:p@h"), "https://***@h");
        assert_eq!(redact_userinfo("oci://h/r@sha256:ab"), "oci://h/r@sha256:ab");
        assert_eq!(redact_userinfo("/tmp/a@b"), "/tmp/a@b");
        assert_eq!(redact_userinfo("oci://u?:p#@h/a"), "oci://***@h/a");
        assert_eq!(content_range_start_total("bytes 100-199/1000"), Some((100, Some(1000))));
        assert_eq!(content_range_start_total("bytes 5-9/*"), Some((5, None)));
    }

    /// A registry redirecting a blob to object storage elsewhere: the `Authorization` header goes to the registry
    /// only.
    #[tokio::test]
    async fn authorization_is_not_sent_across_a_redirect_to_another_host() {
        use axum::http::{HeaderMap, StatusCode, header};
        use std::sync::Mutex;
        type Seen = Arc<Mutex<Vec<(&'static str, Option<String>)>>>;
        let seen: Seen = Arc::default();
        let auth = |h: &HeaderMap| h.get(header::AUTHORIZATION).map(|v| v.to_str().unwrap().to_owned());
        let storage = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let storage_url = format!("http://{}/signed-blob", storage.local_addr().unwrap());
        let s = seen.clone();
        let storage_app = axum::Router::new().route(
            "/signed-blob",
            axum::routing::get(move |h: HeaderMap| async move {
                s.lock().unwrap().push(("storage", auth(&h)));
                "disk image bytes"
            }),
        );
        let s = seen.clone();
        let registry_app = axum::Router::new().route(
            "/v2/r/blobs/x",
            axum::routing::get(move |h: HeaderMap| async move {
                s.lock().unwrap().push(("registry", auth(&h)));
                (StatusCode::TEMPORARY_REDIRECT, [(header::LOCATION, storage_url)])
            }),
        );
        let registry = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = url::Url::parse(&format!("http://{}/v2/r/blobs/x", registry.local_addr().unwrap())).unwrap();
        let servers = [
            tokio::spawn(async move { axum::serve(storage, storage_app).await.unwrap() }),
            tokio::spawn(async move { axum::serve(registry, registry_app).await.unwrap() }),
        ];
        let (tx, mut rx) = mpsc::channel(8);
        let mut token = HeaderValue::from_static("Bearer s3cret-token");
        token.set_sensitive(true);
        let token = Authorization::fixed(token);
        let sent = pump(
            &SourceLocation::Http(url),
            Some(&http_client().unwrap()),
            Some(&token),
            tx,
            None,
            &Progress::new(),
            Arc::new(AtomicBool::new(true)),
        )
        .await
        .unwrap();
        let mut body = Vec::new();
        while let Some(chunk) = rx.recv().await {
            body.extend_from_slice(&chunk.unwrap());
        }
        assert_eq!((sent, body.as_slice()), (16, &b"disk image bytes"[..]));
        assert_eq!(
            *seen.lock().unwrap(),
            vec![("registry", Some("Bearer s3cret-token".to_owned())), ("storage", None)]
        );
        servers.iter().for_each(tokio::task::JoinHandle::abort);
    }
}
