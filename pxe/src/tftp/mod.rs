//! Read-only TFTP server (RFC 1350; options RFC 2347, blksize RFC 2348, timeout and tsize RFC 2349, windowsize
//! RFC 7440) on tokio: serves files from one root directory; refuses writes, `..`, absolute paths, escape
//! characters and symlinks that leave the root.
//!
//! One task per transfer, each on its own socket connected to its client (the client's transfer ID), so the
//! kernel filters strangers' datagrams. Files up to 8 MiB are served from memory, shared between transfers; bigger
//! ones are read from disk block by block through a 128 KiB buffer. Datagrams on the server port that are not requests are dropped and
//! counted. (async-tftp, used before, runs its own async-io reactor thread beside tokio: every datagram crossed
//! threads, and a boot storm cost twice dnsmasq's CPU.)

pub mod packet;

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::net::UdpSocket;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::clients::ClientMap;
use crate::counters::{PxeCounters, bump};
use crate::error::PxeError;
use crate::lookup::{BootEvent, HostLookup};
use packet::{ErrorCode, Kind, Mode, Options, Refusal, Reply, Request};

/// Files up to this size are kept in memory after the first read (boot storms fetch the same few files: iPXE
/// binaries of about 1 MiB); bigger ones are streamed from disk, never read whole.
const CACHE_FILE_MAX: u64 = 8 << 20;
/// The cache never holds more than this in all (a root full of small files cannot grow memory without bound).
const CACHE_TOTAL_MAX: u64 = 64 << 20;
/// Transfers at once, in all and per client address: more are refused until one ends.
const MAX_TRANSFERS: usize = 256;
const MAX_TRANSFERS_PER_CLIENT: usize = 8;
/// How long to wait for an ACK before sending again, by attempt: short at first (a datagram lost in a boot storm
/// costs a second, not three), then backing off (RFC 1123 §4.2.3.2). A client's `timeout` option replaces this.
const RETRY_INTERVALS: [Duration; 3] = [Duration::from_secs(1), Duration::from_secs(2), Duration::from_secs(3)];
/// Sends of one window (or of the OACK) before the transfer is given up: a client that never ACKs holds its
/// transfer for at most about 30 s.
const MAX_SEND_RETRIES: u32 = 10;
/// Read-ahead of a transfer streamed from disk.
const FILE_BUFFER: usize = 128 << 10;
/// The largest datagram accepted on the server port; a request is a few hundred bytes.
const REQUEST_MAX: usize = 2048;

/// Open transfers, in all and per client.
#[derive(Debug, Default)]
struct Transfers {
    total: AtomicUsize,
    per_client: Mutex<HashMap<IpAddr, usize>>,
}

/// One transfer slot, given back when dropped.
#[derive(Debug)]
pub struct Slot {
    transfers: Arc<Transfers>,
    client: IpAddr,
}

impl Drop for Slot {
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
    /// A slot for a new transfer of `client`, or `None` when a limit is reached.
    fn start(self: &Arc<Self>, client: IpAddr) -> Option<Slot> {
        let mut m = self.per_client.lock().unwrap_or_else(|e| e.into_inner());
        let mine = m.entry(client).or_default();
        if *mine >= MAX_TRANSFERS_PER_CLIENT || self.total.load(Ordering::SeqCst) >= MAX_TRANSFERS {
            if *mine == 0 {
                m.remove(&client);
            }
            return None;
        }
        *mine += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Some(Slot {
            transfers: self.clone(),
            client,
        })
    }
}

/// Why a requested path is refused (pure check, before touching the file system).
///
/// # Errors
/// [`Refusal::ACCESS`] for an empty name, backslashes, percent escapes, control characters, or any component
/// other than a plain name.
pub fn check_path(requested: &str) -> Result<&Path, Refusal> {
    // Backslashes (DOS-style separators), percent escapes and control characters have no business in a boot file
    // name; refusing them closes encoded-traversal variants (`..%2f`, `..\`) whatever a later layer would do.
    if requested.is_empty() || requested.contains(['\\', '%']) || requested.chars().any(|c| c.is_control()) {
        return Err(Refusal::ACCESS);
    }
    let path = Path::new(requested);
    if !path.components().all(|c| matches!(c, Component::Normal(_))) {
        return Err(Refusal::ACCESS);
    }
    Ok(path)
}

/// `requested` (a relative path as a client sent it) inside `root` (canonical): the name is checked with
/// [`check_path`], symlinks are resolved, and the result must still be inside `root`. TFTP and the HTTP
/// `/boot/files` route both serve through this.
///
/// # Errors
/// [`Refusal::ACCESS`] for a refused name or a path that leaves the root, [`Refusal::NOT_FOUND`] when it does
/// not exist.
pub async fn resolve_in_root(root: &Path, requested: &str) -> Result<PathBuf, Refusal> {
    let rel = check_path(requested)?;
    let real = tokio::fs::canonicalize(root.join(rel))
        .await
        .map_err(|_| Refusal::NOT_FOUND)?;
    if !real.starts_with(root) {
        return Err(Refusal::ACCESS);
    }
    Ok(real)
}

/// A cached file: its length and mtime when read, and the bytes.
type CacheEntry = (u64, SystemTime, Arc<Vec<u8>>);

#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<PathBuf, CacheEntry>,
    bytes: u64,
}

/// The served root, its cache and its transfer slots.
#[derive(Debug)]
pub struct Files {
    root: PathBuf,
    cache: Mutex<Cache>,
    transfers: Arc<Transfers>,
}

/// What a transfer reads from: shared bytes in memory, or a file read block by block.
#[derive(Debug)]
pub enum Source {
    /// Cached or converted bytes.
    Memory(Arc<Vec<u8>>),
    /// A file too big to cache, read block by block through a small buffer (a transfer holds [`FILE_BUFFER`]
    /// bytes, whatever block and window sizes its client asked for).
    File {
        /// The open file.
        file: tokio::io::BufReader<tokio::fs::File>,
        /// Its length when opened.
        len: u64,
        /// Where the file's cursor is.
        pos: u64,
        /// The last block read.
        buf: Vec<u8>,
    },
}

impl Source {
    /// Bytes to send in all.
    pub fn len(&self) -> u64 {
        match self {
            Source::Memory(b) => b.len() as u64,
            Source::File { len, .. } => *len,
        }
    }

    /// Whether there is nothing to send (one empty DATA block still goes out).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The bytes from `offset` on, at most `max` of them; fewer only at the end.
    ///
    /// # Errors
    /// Read errors, and `UnexpectedEof` when a file shrank under a transfer (a short block would end the client's
    /// transfer early with a truncated file).
    pub async fn read_at(&mut self, offset: u64, max: usize) -> io::Result<&[u8]> {
        let want = (self.len().saturating_sub(offset)).min(max as u64) as usize;
        match self {
            Source::Memory(b) => {
                let start = usize::try_from(offset).map_err(io::Error::other)?.min(b.len());
                Ok(&b[start..start + want])
            }
            Source::File { file, pos, buf, .. } => {
                if *pos != offset {
                    file.seek(io::SeekFrom::Start(offset)).await?;
                    *pos = offset;
                }
                buf.resize(want, 0);
                let mut got = 0;
                while got < want {
                    let n = file.read(&mut buf[got..]).await?;
                    if n == 0 {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "the file shrank during a transfer",
                        ));
                    }
                    got += n;
                }
                *pos += want as u64;
                Ok(&buf[..want])
            }
        }
    }
}

/// An opened read: its source and the slot it holds.
#[derive(Debug)]
pub struct Opened {
    /// The bytes to send.
    pub source: Source,
    _slot: Slot,
}

impl Files {
    /// Serves `root` (canonicalised once here).
    ///
    /// # Errors
    /// [`PxeError::Config`] when `root` is not a directory.
    pub fn new(root: &Path) -> Result<Self, PxeError> {
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
            cache: Mutex::default(),
            transfers: Arc::default(),
        })
    }

    /// Opens what `request` asks `client` to be sent, holding one of its transfer slots until the result is
    /// dropped.
    ///
    /// # Errors
    /// The refusal to send back: writes and `mail` mode, a busy server, a refused or missing name, a netascii read
    /// of a big file.
    pub async fn open(&self, client: IpAddr, request: &Request<'_>) -> Result<Opened, Refusal> {
        if request.kind == Kind::Write || request.mode == Mode::Mail {
            return Err(Refusal::READ_ONLY);
        }
        let slot = self.transfers.start(client).ok_or(Refusal::BUSY)?;
        let real = resolve_in_root(&self.root, request.filename).await?;
        let meta = tokio::fs::metadata(&real).await.map_err(|_| Refusal::NOT_FOUND)?;
        if !meta.is_file() {
            return Err(Refusal::NOT_FOUND);
        }
        let source = if meta.len() > CACHE_FILE_MAX {
            if request.mode == Mode::Netascii {
                return Err(Refusal::NETASCII_TOO_BIG);
            }
            // Streamed: memory per transfer stays the read-ahead buffer, whatever the file's size.
            let file = tokio::fs::File::open(&real).await.map_err(|_| Refusal::NOT_FOUND)?;
            Source::File {
                file: tokio::io::BufReader::with_capacity(FILE_BUFFER, file),
                len: meta.len(),
                pos: 0,
                buf: Vec::new(),
            }
        } else {
            let bytes = self.cached(&real, &meta).await?;
            match request.mode {
                Mode::Netascii => Source::Memory(Arc::new(packet::to_netascii(&bytes))),
                _ => Source::Memory(bytes),
            }
        };
        Ok(Opened { source, _slot: slot })
    }

    /// The bytes of a small file, from the cache when its length and mtime are unchanged.
    async fn cached(&self, real: &Path, meta: &std::fs::Metadata) -> Result<Arc<Vec<u8>>, Refusal> {
        let mtime = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
        {
            let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
            if let Some((len, m, data)) = cache.entries.get(real)
                && *len == meta.len()
                && *m == mtime
            {
                return Ok(data.clone());
            }
        }
        let bytes = Arc::new(tokio::fs::read(real).await.map_err(|_| Refusal::NOT_FOUND)?);
        let len = bytes.len() as u64;
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((old, _, _)) = cache.entries.remove(real) {
            cache.bytes -= old;
        }
        if cache.bytes + len <= CACHE_TOTAL_MAX {
            cache.bytes += len;
            cache.entries.insert(real.to_owned(), (len, mtime, bytes.clone()));
        }
        Ok(bytes)
    }
}

/// Where TFTP reports `BootEvent::TftpFileServed`: the lookup, and the address → MAC map DHCP fills.
#[derive(Clone)]
pub struct TftpEvents {
    /// The backend told about each served file.
    pub lookup: Arc<dyn HostLookup>,
    /// Address → MAC, from DHCP.
    pub clients: Arc<ClientMap>,
}

/// How a transfer ended.
#[derive(Debug)]
enum End {
    /// The last block was acknowledged.
    Done,
    /// The client sent an ERROR (its code).
    ClientError(u16),
    /// No acknowledgement after every retry.
    TimedOut,
    /// The socket or the file failed.
    Io(io::Error),
}

impl From<io::Error> for End {
    fn from(e: io::Error) -> Self {
        End::Io(e)
    }
}

/// What a transfer's socket brought before `deadline`.
async fn next_reply(sock: &UdpSocket, buf: &mut [u8], deadline: Instant) -> io::Result<Option<Reply>> {
    match tokio::time::timeout_at(deadline, sock.recv(buf)).await {
        Err(_) => Ok(None),
        Ok(r) => Ok(Some(packet::parse_reply(&buf[..r?]))),
    }
}

/// Sends `source` to the client `sock` is connected to, after the OACK when options were agreed.
async fn send_source(sock: &UdpSocket, source: &mut Source, options: Options) -> Result<End, End> {
    let blksize = usize::from(options.blksize.unwrap_or(packet::DEFAULT_BLKSIZE));
    let window = u64::from(options.windowsize.unwrap_or(1));
    let wait = |attempt: u32| match options.timeout {
        Some(t) => Duration::from_secs(u64::from(t)),
        None => RETRY_INTERVALS[(attempt as usize).min(RETRY_INTERVALS.len() - 1)],
    };
    let len = source.len();
    // The last block is shorter than blksize: empty when the length is a multiple of it.
    let last_block = len / blksize as u64 + 1;
    let mut reply = [0u8; 516];

    if options.any() {
        let oack = packet::oack(&options, len);
        let mut attempt = 0;
        'oack: loop {
            sock.send(&oack).await?;
            let deadline = Instant::now() + wait(attempt);
            loop {
                match next_reply(sock, &mut reply, deadline).await? {
                    Some(Reply::Ack(0)) => break 'oack,
                    Some(Reply::Error(code)) => return Err(End::ClientError(code)),
                    Some(_) => {}
                    None => {
                        attempt += 1;
                        if attempt > MAX_SEND_RETRIES {
                            return Err(End::TimedOut);
                        }
                        continue 'oack;
                    }
                }
            }
        }
    }

    let mut datagram = vec![0u8; 4 + blksize];
    datagram[1] = packet::DATA as u8;
    let mut base = 1u64; // the first block not acknowledged
    let mut attempt = 0;
    let mut resent_on_repeat = false;
    loop {
        let end = (base + window - 1).min(last_block);
        for block in base..=end {
            let bytes = source.read_at((block - 1) * blksize as u64, blksize).await?;
            // Block numbers roll over to 0 after 65535, as tftp-hpa, dnsmasq and iPXE expect.
            datagram[2..4].copy_from_slice(&(block as u16).to_be_bytes());
            datagram[4..4 + bytes.len()].copy_from_slice(bytes);
            sock.send(&datagram[..4 + bytes.len()]).await?;
        }
        let deadline = Instant::now() + wait(attempt);
        loop {
            match next_reply(sock, &mut reply, deadline).await? {
                None => {
                    attempt += 1;
                    if attempt > MAX_SEND_RETRIES {
                        return Err(End::TimedOut);
                    }
                    break;
                }
                Some(Reply::Error(code)) => return Err(End::ClientError(code)),
                Some(Reply::Other) => {}
                Some(Reply::Ack(n)) => {
                    // Blocks in flight are base..=end; place the 16-bit number among base-1..=end.
                    let delta = u64::from(n.wrapping_sub((base - 1) as u16));
                    if delta > end + 1 - base {
                        continue; // an old or foreign number: ignored
                    }
                    let acked = base - 1 + delta;
                    if acked == last_block {
                        return Ok(End::Done);
                    }
                    if acked >= base {
                        base = acked + 1;
                        attempt = 0;
                        resent_on_repeat = false;
                        break;
                    }
                    // A repeat of the previous ACK. With one block in flight it is ignored (RFC 1350's "Sorcerer's
                    // Apprentice" rule); with a window it says a block was lost (RFC 7440 §4): send the window
                    // again, once.
                    if window > 1 && !resent_on_repeat {
                        resent_on_repeat = true;
                        break;
                    }
                }
            }
        }
    }
}

/// What every transfer of one server shares.
struct Server {
    files: Files,
    /// The server port's socket (refusals are sent from it).
    sock: UdpSocket,
    counters: Arc<PxeCounters>,
    events: Option<TftpEvents>,
}

/// One request: opened or refused, then served on its own socket.
async fn serve_request(
    shared: Arc<Server>,
    client: SocketAddr,
    filename: String,
    kind: Kind,
    mode: Mode,
    options: Options,
    cancel: CancellationToken,
) {
    let Server {
        files,
        sock: server,
        counters,
        events,
    } = &*shared;
    let request = Request {
        kind,
        filename: &filename,
        mode,
        options,
    };
    let mut opened = match files.open(client.ip(), &request).await {
        Ok(o) => o,
        Err(refusal) => {
            bump(&counters.tftp_refused);
            if kind == Kind::Write {
                tracing::info!(%client, path = %filename, "tftp write refused");
            } else {
                tracing::info!(%client, path = %filename, error = refusal.message, "tftp read refused");
            }
            if let Err(e) = server.send_to(&packet::error(&refusal), client).await {
                tracing::debug!(%client, error = %e, "tftp: error reply not sent");
            }
            return;
        }
    };
    bump(&counters.tftp_reads);
    let len = opened.source.len();
    tracing::info!(%client, path = %filename, len, "tftp read");
    if let (Some(ev), SocketAddr::V4(c)) = (&events, client)
        && let Some(mac) = ev.clients.mac_of(*c.ip())
    {
        ev.lookup
            .record(mac, BootEvent::TftpFileServed { path: filename.clone() })
            .await;
    }
    let local = server.local_addr().map_or(IpAddr::from([0, 0, 0, 0]), |a| a.ip());
    let sock = match UdpSocket::bind((local, 0)).await {
        Ok(s) => s,
        Err(e) => {
            bump(&counters.tftp_aborted);
            tracing::warn!(%client, error = %e, "tftp: no transfer socket");
            return;
        }
    };
    if let Err(e) = sock.connect(client).await {
        bump(&counters.tftp_aborted);
        tracing::warn!(%client, error = %e, "tftp: transfer socket cannot reach the client");
        return;
    }
    let end = tokio::select! {
        _ = cancel.cancelled() => return,
        end = send_source(&sock, &mut opened.source, options) => end,
    };
    match end {
        Ok(End::Done) => tracing::debug!(%client, path = %filename, "tftp transfer complete"),
        Ok(other) | Err(other) => {
            bump(&counters.tftp_aborted);
            match other {
                End::ClientError(code) => {
                    tracing::info!(%client, path = %filename, code, "tftp transfer ended by the client");
                }
                End::TimedOut => tracing::info!(%client, path = %filename, "tftp transfer timed out"),
                End::Io(e) => tracing::warn!(%client, path = %filename, error = %e, "tftp transfer failed"),
                End::Done => {}
            }
        }
    }
}

/// Binds the TFTP socket on `addr` and returns the serving future (runs until `cancel`, which also ends the
/// transfers in progress).
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
    let files = Files::new(&root)?;
    let socket_error = |source| PxeError::Socket {
        what: "tftp",
        iface: addr.to_string(),
        source,
    };
    let sock = UdpSocket::bind(addr).await.map_err(socket_error)?;
    let local = sock.local_addr().map_err(socket_error)?;
    let shared = Arc::new(Server {
        files,
        sock,
        counters,
        events,
    });
    let fut = async move {
        let Server { sock, counters, .. } = &*shared;
        let mut buf = vec![0u8; REQUEST_MAX];
        loop {
            let (n, client) = tokio::select! {
                _ = cancel.cancelled() => return Ok(()),
                r = sock.recv_from(&mut buf) => match r {
                    Ok(v) => v,
                    // ICMP errors for earlier replies surface here on some kernels: not the server's problem.
                    Err(e) if matches!(e.kind(), io::ErrorKind::ConnectionRefused | io::ErrorKind::ConnectionReset
                        | io::ErrorKind::Interrupted) => continue,
                    Err(source) => return Err(PxeError::Tftp { source }),
                },
            };
            let request = match packet::parse_request(&buf[..n]) {
                Ok(r) if n < REQUEST_MAX => r,
                other => {
                    bump(&counters.tftp_malformed);
                    tracing::debug!(%client, len = n, why = ?other.err(), "tftp datagram dropped");
                    continue;
                }
            };
            tokio::spawn(serve_request(
                shared.clone(),
                client,
                request.filename.to_owned(),
                request.kind,
                request.mode,
                request.options,
                cancel.child_token(),
            ));
        }
    };
    Ok((local, fut))
}

/// Whether a refusal is an access violation (the HTTP boot-file route answers 403 for it, 404 otherwise).
pub fn is_access_violation(refusal: &Refusal) -> bool {
    refusal.code == ErrorCode::AccessViolation
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
