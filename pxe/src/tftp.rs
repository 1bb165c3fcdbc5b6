//! Read-only TFTP (RFC 1350, options RFC 2347/2348/2349, windowsize RFC 7440) on async-tftp: serves files from one
//! root directory; refuses writes, `..`, absolute paths, escape characters and symlinks that leave the root.

use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::path::{Component, Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use async_tftp::packet;
use async_tftp::server::{Handler, TftpServerBuilder};
use futures::io::{AsyncRead, Cursor, Sink};
use tokio_util::compat::TokioAsyncReadCompatExt;
use tokio_util::sync::CancellationToken;

use crate::clients::ClientMap;
use crate::counters::{PxeCounters, bump};
use crate::error::PxeError;
use crate::lookup::{BootEvent, HostLookup};

/// Files up to this size are kept in memory after the first read (boot storms fetch the same few files: iPXE
/// binaries of about 1 MiB); bigger ones are streamed from disk, never read whole.
const CACHE_FILE_MAX: u64 = 8 << 20;
/// Transfers at once, in all and per client address: more are refused until one ends.
const MAX_TRANSFERS: usize = 256;
const MAX_TRANSFERS_PER_CLIENT: usize = 8;
/// Seconds to wait for an ACK before resending (whatever timeout a client asks for), and how often to resend
/// before giving a transfer up: a client that never ACKs holds its transfer for at most about 30 s.
const TIMEOUT: Duration = Duration::from_secs(3);
const MAX_SEND_RETRIES: u32 = 10;

/// Open transfers, in all and per client.
#[derive(Debug, Default)]
struct Transfers {
    total: AtomicUsize,
    per_client: Mutex<HashMap<std::net::IpAddr, usize>>,
}

/// A transfer's reader, counted while it is open.
pub struct Counted {
    inner: Box<dyn AsyncRead + Unpin + Send>,
    transfers: Arc<Transfers>,
    client: std::net::IpAddr,
}

impl AsyncRead for Counted {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut [u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        self.transfers.total.fetch_sub(1, Ordering::SeqCst);
        let mut m = self.transfers.per_client.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = m.get_mut(&self.client) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                m.remove(&self.client);
            }
        }
    }
}

impl Transfers {
    /// Counts a new transfer for `client`, or refuses it when a limit is reached.
    fn start(self: &Arc<Self>, client: std::net::IpAddr) -> bool {
        let mut m = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let mine = m.entry(client).or_default();
        if *mine >= MAX_TRANSFERS_PER_CLIENT || self.total.load(Ordering::SeqCst) >= MAX_TRANSFERS {
            if *mine == 0 {
                m.remove(&client);
            }
            return false;
        }
        *mine += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        true
    }
}

/// File contents shared between concurrent transfers.
#[derive(Debug, Clone)]
pub struct Shared(Arc<Vec<u8>>);

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.0
    }
}

/// Why a requested path is refused (pure check, before touching the file system).
pub fn check_path(requested: &str) -> Result<&Path, packet::Error> {
    // Backslashes (DOS-style separators), percent escapes and control characters have no business in a boot file
    // name; refusing them closes encoded-traversal variants (`..%2f`, `..\`) whatever a later layer would do.
    if requested.is_empty() || requested.contains(['\\', '%']) || requested.chars().any(|c| c.is_control()) {
        return Err(packet::Error::PermissionDenied);
    }
    let path = Path::new(requested);
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(packet::Error::PermissionDenied);
    }
    Ok(path)
}

/// `requested` (a relative path as a client sent it) inside `root` (canonical): the name is checked with
/// [`check_path`], symlinks are resolved, and the result must still be inside `root`. TFTP and the HTTP
/// `/boot/files` route both serve through this.
///
/// # Errors
/// `PermissionDenied` for a refused name or a path that leaves the root, `FileNotFound` when it does not exist.
pub async fn resolve_in_root(root: &Path, requested: &str) -> Result<PathBuf, packet::Error> {
    let rel = check_path(requested)?;
    let real = tokio::fs::canonicalize(root.join(rel))
        .await
        .map_err(|_| packet::Error::FileNotFound)?;
    if !real.starts_with(root) {
        return Err(packet::Error::PermissionDenied);
    }
    Ok(real)
}

/// The async-tftp handler: a root directory and a small content cache.
pub struct RootHandler {
    root: PathBuf,
    cache: HashMap<PathBuf, (u64, SystemTime, Shared)>,
    counters: Arc<PxeCounters>,
    events: Option<TftpEvents>,
    transfers: Arc<Transfers>,
}

/// Where TFTP reports `BootEvent::TftpFileServed`: the lookup, and the address → MAC map DHCP fills.
#[derive(Clone)]
pub struct TftpEvents {
    /// The backend told about each served file.
    pub lookup: Arc<dyn HostLookup>,
    /// Address → MAC, from DHCP.
    pub clients: Arc<ClientMap>,
}

impl RootHandler {
    /// A handler serving `root` (canonicalised once here).
    ///
    /// # Errors
    /// [`PxeError::Config`] when `root` is not a directory.
    pub fn new(root: &Path, counters: Arc<PxeCounters>, events: Option<TftpEvents>) -> Result<Self, PxeError> {
        let root = std::fs::canonicalize(root).map_err(|e| PxeError::Config {
            reason: format!("TFTP root {root:?}: {e}"),
        })?;
        if !root.is_dir() {
            return Err(PxeError::Config {
                reason: format!("TFTP root {root:?} is not a directory"),
            });
        }
        Ok(Self {
            root,
            cache: HashMap::new(),
            counters,
            events,
            transfers: Arc::default(),
        })
    }

    async fn open(&mut self, requested: &str) -> Result<(Box<dyn AsyncRead + Unpin + Send>, u64), packet::Error> {
        let real = resolve_in_root(&self.root, requested).await?;
        let meta = tokio::fs::metadata(&real)
            .await
            .map_err(|_| packet::Error::FileNotFound)?;
        if !meta.is_file() {
            return Err(packet::Error::FileNotFound);
        }
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        if let Some((len, m, data)) = self.cache.get(&real)
            && *len == meta.len()
            && *m == mtime
        {
            return Ok((Box::new(Cursor::new(data.clone())), *len));
        }
        if meta.len() > CACHE_FILE_MAX {
            // Streamed: memory per transfer stays a few blocks, whatever the file's size.
            let file = tokio::fs::File::open(&real)
                .await
                .map_err(|_| packet::Error::FileNotFound)?;
            return Ok((Box::new(file.compat()), meta.len()));
        }
        let bytes = tokio::fs::read(&real).await.map_err(|_| packet::Error::FileNotFound)?;
        let len = bytes.len() as u64;
        let data = Shared(Arc::new(bytes));
        self.cache.insert(real, (len, mtime, data.clone()));
        Ok((Box::new(Cursor::new(data)), len))
    }
}

impl Handler for RootHandler {
    type Reader = Counted;
    type Writer = Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(Self::Reader, Option<u64>), packet::Error> {
        let requested = path.to_string_lossy().into_owned();
        if !self.transfers.start(client.ip()) {
            bump(&self.counters.tftp_refused);
            tracing::debug!(%client, path = %requested, "tftp read refused: too many transfers");
            return Err(packet::Error::Msg("too many transfers; retry later".into()));
        }
        let transfers = self.transfers.clone();
        let counted = |inner| Counted {
            inner,
            transfers: transfers.clone(),
            client: client.ip(),
        };
        let opened = self.open(&requested).await;
        if opened.is_err() {
            // Nothing to count: give the slot back.
            drop(counted(Box::new(Cursor::new(Shared(Arc::new(Vec::new()))))));
        }
        match opened {
            Ok((data, len)) => {
                bump(&self.counters.tftp_reads);
                tracing::info!(%client, path = %requested, len, "tftp read");
                if let (Some(ev), SocketAddr::V4(c)) = (&self.events, client)
                    && let Some(mac) = ev.clients.mac_of(*c.ip())
                {
                    ev.lookup
                        .record(
                            mac,
                            BootEvent::TftpFileServed {
                                path: requested.clone(),
                            },
                        )
                        .await;
                }
                Ok((counted(data), Some(len)))
            }
            Err(e) => {
                bump(&self.counters.tftp_refused);
                tracing::info!(%client, path = %requested, error = ?e, "tftp read refused");
                Err(e)
            }
        }
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<Self::Writer, packet::Error> {
        bump(&self.counters.tftp_refused);
        tracing::info!(%client, path = %path.display(), "tftp write refused");
        Err(packet::Error::IllegalOperation)
    }
}

/// Binds the TFTP socket on `addr` and returns the serving future (runs until `cancel`).
///
/// # Errors
/// Socket errors and a bad root, at bind time.
pub async fn bind(
    addr: SocketAddr,
    root: PathBuf,
    counters: Arc<PxeCounters>,
    events: Option<TftpEvents>,
    cancel: CancellationToken,
) -> Result<(SocketAddr, impl Future<Output = Result<(), PxeError>> + Send), PxeError> {
    let handler = RootHandler::new(&root, counters, events)?;
    let sock = UdpSocket::bind(addr).map_err(|source| PxeError::Socket {
        what: "tftp",
        iface: addr.to_string(),
        source,
    })?;
    let server = TftpServerBuilder::with_handler(handler)
        .std_socket(sock)
        .map_err(|source| PxeError::Tftp { source })?
        .timeout(TIMEOUT)
        .ignore_client_timeout()
        .max_send_retries(MAX_SEND_RETRIES)
        .build()
        .await
        .map_err(|source| PxeError::Tftp { source })?;
    let local = server.listen_addr().map_err(|source| PxeError::Tftp { source })?;
    let fut = async move {
        tokio::select! {
            _ = cancel.cancelled() => Ok(()),
            r = server.serve() => r.map_err(|source| PxeError::Tftp { source }),
        }
    };
    Ok((local, fut))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_checks() {
        for ok in ["undionly.kpxe", "x86/ipxe.efi", "a..b"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "/etc/passwd",
            "../etc/passwd",
            "a/../../b",
            "./x",
            "..%2fetc",
            "..\\etc",
            "a\u{0}b",
            "%2e%2e/x",
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
    }

    proptest::proptest! {
        #[test]
        fn accepted_paths_have_only_normal_components(s in "[a-z./%\\\\]{0,20}") {
            if let Ok(p) = check_path(&s) {
                proptest::prop_assert!(p.components().all(|c| matches!(c, Component::Normal(_))));
                proptest::prop_assert!(p.components().all(|c| c.as_os_str() != ".."));
            }
        }
    }
}
