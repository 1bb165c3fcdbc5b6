//! The streaming image pipeline: source → digest of the published bytes → decompression (detected by magic) →
//! format decoding (raw or streamed qcow2) → 4 MiB aligned writes → flush → verify. On any failure after the target
//! was opened, its partition tables are wiped so a half-written OS cannot boot.
//!
//! Stages run concurrently with bounded queues: the download on the async task (a local file on a blocking thread),
//! hashing on one blocking thread, decompression and decoding on another, and the writers and their flusher on
//! threads of [`crate::target`]. The published chunks are shared by the hasher and the decoder without a copy, and
//! an uncompressed raw image read from a local file reaches the target in the very buffers it was read into.
//! Memory does not grow with the image: at most 6 file chunks and 4 decoded buffers of 4 MiB (peak RSS 28 MiB for
//! a raw image, 47 MiB for raw.zst and qcow2), plus the qcow2 decoder's side buffer for data met before its table
//! ([`crate::qcow2::ORPHAN_LIMIT`], unused for the layouts qemu-img writes). This module wires stages; it does not
//! parse formats (see [`crate::qcow2`]) or checksums (see [`crate::digest`]).

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio::sync::mpsc;

use crate::digest::{Algorithm, ChecksumSource, ExpectedDigest, Hasher};
use crate::error::ImageError;
use crate::progress::{Phase, Progress};
use crate::protocol::{ImageFormat, ImageSpec};
use crate::qcow2;
use crate::source::SourceLocation;
use crate::target::{ALIGN, AlignedBuf, BUF_COUNT, BUF_SIZE, BufPool, DirectIo, Target, WriteOp};

/// Compression of the published bytes, detected by magic number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Xz,
    Bzip2,
}

impl Compression {
    /// Detects compression from the first bytes (gzip `1f 8b`, zstd `28 b5 2f fd`, xz `fd 37 7a 58 5a 00`,
    /// bzip2 `BZh`).
    pub fn detect(prefix: &[u8]) -> Self {
        if prefix.starts_with(&[0x1f, 0x8b]) {
            Self::Gzip
        } else if prefix.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Self::Zstd
        } else if prefix.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
            Self::Xz
        } else if prefix.starts_with(b"BZh") {
            Self::Bzip2
        } else {
            Self::None
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Gzip => "gzip",
            Self::Zstd => "zstd",
            Self::Xz => "xz",
            Self::Bzip2 => "bzip2",
        }
    }
}

/// Detects the disk format of decompressed bytes.
///
/// # Errors
/// `UnsupportedFormat` for formats kiln recognises but cannot write (VMDK, VHDX, VDI).
pub fn detect_format(prefix: &[u8]) -> Result<ImageFormat, ImageError> {
    let unsupported = |what: &str| Err(ImageError::UnsupportedFormat { what: what.into() });
    if prefix.starts_with(&qcow2::MAGIC) {
        Ok(ImageFormat::Qcow2)
    } else if prefix.starts_with(b"KDMV") {
        unsupported("vmdk")
    } else if prefix.starts_with(b"vhdxfile") {
        unsupported("vhdx")
    } else if prefix.get(64..68) == Some(&[0x7f, 0x10, 0xda, 0xbe]) {
        unsupported("vdi")
    } else {
        Ok(ImageFormat::Raw)
    }
}

fn format_name(f: ImageFormat) -> &'static str {
    match f {
        ImageFormat::Raw => "raw",
        ImageFormat::Qcow2 => "qcow2",
        ImageFormat::LiveIso => "live-iso",
    }
}

/// Tuning of one pipeline run.
#[derive(Debug, Clone, Default)]
pub struct WriteOptions {
    pub direct: DirectIo,
    /// HTTP client to reuse (one is built when `None`).
    pub client: Option<reqwest::Client>,
}

/// What a successful run did.
#[derive(Debug, Clone, PartialEq)]
pub struct WriteReport {
    /// `None` when the run only inspected the image.
    pub target: Option<PathBuf>,
    pub compression: Compression,
    pub format: ImageFormat,
    /// Published bytes read.
    pub bytes_read: u64,
    /// Decoded image size (raw length or qcow2 virtual size).
    pub image_size: u64,
    /// Digest of the published bytes, as computed.
    pub digest: ExpectedDigest,
    /// Whether `digest` was checked against an expected value.
    pub verified: bool,
    pub elapsed: Duration,
}

/// Writes the image described by `spec` to `target` (block device or regular file) and verifies its checksum.
///
/// # Errors
/// An [`ImageError`] naming the failing stage; if anything was written the target's partition tables are wiped.
pub async fn write_image(spec: &ImageSpec, target: &Path, progress: &Progress) -> Result<WriteReport, ImageError> {
    let checksum = ChecksumSource::parse(&spec.checksum, spec.checksum_type)?;
    run(
        &spec.url,
        Some(&checksum),
        spec.format,
        Some(target),
        progress,
        &WriteOptions::default(),
    )
    .await
}

/// The general entry point: `checksum = None` skips verification (the sha256 is still computed and reported),
/// `target = None` decodes and hashes without writing (for `kiln image inspect`).
///
/// # Errors
/// As [`write_image`].
pub async fn run(
    source: &str,
    checksum: Option<&ChecksumSource>,
    declared: Option<ImageFormat>,
    target: Option<&Path>,
    progress: &Progress,
    opts: &WriteOptions,
) -> Result<WriteReport, ImageError> {
    use tracing::Instrument;
    let span = tracing::info_span!("image_write", image = %source, target = ?target);
    run_inner(source, checksum, declared, target, progress, opts)
        .instrument(span)
        .await
}

async fn run_inner(
    source: &str,
    checksum: Option<&ChecksumSource>,
    declared: Option<ImageFormat>,
    target: Option<&Path>,
    progress: &Progress,
    opts: &WriteOptions,
) -> Result<WriteReport, ImageError> {
    let location = SourceLocation::parse(source)?;
    let client = match (&location, &opts.client) {
        (SourceLocation::Http(_), Some(c)) => Some(c.clone()),
        (SourceLocation::Http(_), None) => Some(crate::source::http_client()?),
        (SourceLocation::File(_), _) => None,
    };
    let expected = match checksum {
        Some(c) => Some(crate::digest::resolve(c, source, client.as_ref()).await?),
        None => None,
    };
    let algorithm = expected.as_ref().map_or(Algorithm::Sha256, |e| e.algorithm);
    let target = match target {
        Some(p) => Some(Arc::new(Target::open(p, opts.direct)?)),
        None => None,
    };
    progress.set_phase(Phase::Writing);
    let result = run_stages(
        &location,
        client.as_ref(),
        algorithm,
        declared,
        target.clone(),
        progress,
    )
    .await;
    let result = result.and_then(|(compression, format, image_size, bytes_read, actual)| {
        progress.set_phase(Phase::Verifying);
        if let Some(exp) = &expected
            && exp.hex != actual
        {
            return Err(ImageError::ChecksumMismatch {
                url: location.display(),
                algorithm: exp.algorithm.name(),
                expected: exp.hex.clone(),
                actual,
            });
        }
        Ok(WriteReport {
            target: target.as_ref().map(|t| t.path.clone()),
            compression,
            format,
            bytes_read,
            image_size,
            digest: ExpectedDigest { algorithm, hex: actual },
            verified: expected.is_some(),
            elapsed: progress.snapshot().elapsed,
        })
    });
    match result {
        Ok(report) => {
            progress.set_phase(Phase::Done);
            tracing::info!(digest = %report.digest, bytes = report.image_size, "image written");
            Ok(report)
        }
        Err(e) => {
            if let Some(t) = &target {
                progress.set_phase(Phase::Wiping);
                tracing::warn!(error = %e, target = %t.path.display(), "image write failed; wiping partition tables");
                if let Err(w) = crate::target::wipe_partition_tables(&t.path) {
                    tracing::error!(error = %w, "wiping partition tables failed");
                }
            }
            progress.set_phase(Phase::Failed);
            Err(e)
        }
    }
}

/// Depth of the queues from the source to the hasher and to the decoder, in chunks.
const QUEUE: usize = 32;

type StageOutput = (Compression, ImageFormat, u64, u64, String);

async fn run_stages(
    location: &SourceLocation,
    client: Option<&reqwest::Client>,
    algorithm: Algorithm,
    declared: Option<ImageFormat>,
    target: Option<Arc<Target>>,
    progress: &Progress,
) -> Result<StageOutput, ImageError> {
    // Local file chunks are bounded by the reader's pool (see `source::FILE_CHUNKS`); HTTP chunks are small, so
    // these queues hold a few MiB at most. Deep enough that the hasher and the decoder each can run ahead of the
    // other while one of them is descheduled or the writers wait on the device.
    let (data_tx, data_rx) = mpsc::channel::<std::io::Result<Bytes>>(QUEUE);
    let (hash_tx, mut hash_rx) = mpsc::channel::<Bytes>(QUEUE);
    let hasher = tokio::task::spawn_blocking(move || {
        let mut h = Hasher::new(algorithm);
        while let Some(chunk) = hash_rx.blocking_recv() {
            h.update(&chunk);
        }
        h.finish_hex()
    });
    let ok = Arc::new(AtomicBool::new(false));
    let pump = crate::source::pump(location, client, data_tx, Some(hash_tx), progress, ok.clone());
    let refetch = match (location, client) {
        (SourceLocation::File(p), _) => Refetch::File(p.clone()),
        (SourceLocation::Http(u), Some(c)) => Refetch::Http {
            url: u.clone(),
            client: c.clone(),
            rt: tokio::runtime::Handle::current(),
        },
        (SourceLocation::Http(_), None) => Refetch::None,
    };
    let consume = consume(
        data_rx,
        declared,
        target,
        progress.clone(),
        ok,
        location.display(),
        refetch,
    );
    let (pumped, consumed) = tokio::join!(pump, consume);
    let digest = hasher.await.map_err(|e| ImageError::Internal(e.into()))?;
    let bytes_read = pumped?;
    let (compression, format, image_size) = consumed?;
    Ok((compression, format, image_size, bytes_read, digest))
}

async fn peek<R: AsyncRead + Unpin>(r: &mut R, n: usize) -> std::io::Result<Vec<u8>> {
    let mut v = vec![0; n];
    let mut got = 0;
    while got < n {
        let k = r.read(&mut v[got..]).await?;
        if k == 0 {
            break;
        }
        got += k;
    }
    v.truncate(got);
    Ok(v)
}

type BoxRead = Box<dyn AsyncRead + Unpin + Send>;

async fn consume(
    mut rx: mpsc::Receiver<std::io::Result<Bytes>>,
    declared: Option<ImageFormat>,
    target: Option<Arc<Target>>,
    progress: Progress,
    ok: Arc<AtomicBool>,
    url: String,
    refetch: Refetch,
) -> Result<(Compression, ImageFormat, u64), ImageError> {
    let read_err = move |source: std::io::Error| ImageError::Download {
        url: url.clone(),
        bytes: 0,
        source: source.into(),
    };
    // The first chunks, until they hold enough to recognise the compression.
    let mut head = VecDeque::new();
    let mut prefix = Vec::new();
    while prefix.len() < 8 {
        match rx.recv().await {
            Some(Ok(chunk)) => {
                prefix.extend_from_slice(&chunk[..chunk.len().min(8 - prefix.len())]);
                head.push_back(chunk);
            }
            Some(Err(e)) => return Err(read_err(e)),
            None => break,
        }
    }
    let compression = Compression::detect(&prefix);
    let decode_err = move |source: std::io::Error| match compression {
        Compression::None => read_err(source),
        c => ImageError::Decompress {
            compression: c.name(),
            source,
        },
    };
    let (input, format) = if compression == Compression::None {
        // The published chunks are the image: the decoder takes them as they are, without a copy.
        (Input::Chunks { head, rx }, detect_format(&prefix)?)
    } else {
        use futures::StreamExt;
        let chunks = futures::stream::iter(head.into_iter().map(Ok::<Bytes, std::io::Error>));
        let rest = futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|i| (i, rx)) });
        let published = tokio_util::io::StreamReader::new(Box::pin(chunks.chain(rest)));
        let mut decoded: BoxRead = {
            use async_compression::tokio::bufread as d;
            let buf = BufReader::with_capacity(256 << 10, published);
            match compression {
                Compression::None => Box::new(buf),
                Compression::Gzip => Box::new({
                    let mut r = d::GzipDecoder::new(buf);
                    r.multiple_members(true);
                    r
                }),
                Compression::Zstd => Box::new({
                    let mut r = d::ZstdDecoder::new(buf);
                    r.multiple_members(true);
                    r
                }),
                Compression::Xz => Box::new({
                    let mut r = d::XzDecoder::new(buf);
                    r.multiple_members(true);
                    r
                }),
                Compression::Bzip2 => Box::new({
                    let mut r = d::BzDecoder::new(buf);
                    r.multiple_members(true);
                    r
                }),
            }
        };
        let prefix = peek(&mut decoded, 8).await.map_err(&decode_err)?;
        let format = detect_format(&prefix)?;
        let decoded: BoxRead = Box::new(AsyncReadExt::chain(std::io::Cursor::new(prefix), decoded));
        (Input::Stream(tokio_util::io::SyncIoBridge::new(decoded)), format)
    };
    if let Some(d) = declared
        && d != format
    {
        return Err(ImageError::FormatMismatch {
            declared: format_name(d),
            detected: format_name(format),
        });
    }
    let handle = tokio::task::spawn_blocking(move || {
        let mut input = input;
        // Offsets in the published bytes are offsets in the qcow2 file only when nothing was decompressed.
        let refetch = if compression == Compression::None {
            refetch
        } else {
            Refetch::None
        };
        let res = decode_and_write(&mut input, format, target.as_deref(), &progress, &decode_err, &refetch);
        // Before the receiver is dropped (with `input`): tells the source to finish hashing any trailing bytes.
        ok.store(res.is_ok(), Ordering::SeqCst);
        drop(input);
        res
    });
    let image_size = handle.await.map_err(|e| ImageError::Internal(e.into()))??;
    Ok((compression, format, image_size))
}

/// The decoded image as the decoder thread reads it.
enum Input {
    /// Nothing to decompress: the published chunks themselves (the first ones already received).
    Chunks {
        head: VecDeque<Bytes>,
        rx: mpsc::Receiver<std::io::Result<Bytes>>,
    },
    /// The output of a decompressor.
    Stream(tokio_util::io::SyncIoBridge<BoxRead>),
}

impl Input {
    /// The next published chunk (`Chunks` only).
    fn next_chunk(
        head: &mut VecDeque<Bytes>,
        rx: &mut mpsc::Receiver<std::io::Result<Bytes>>,
    ) -> std::io::Result<Option<Bytes>> {
        match head.pop_front() {
            Some(c) => Ok(Some(c)),
            None => rx.blocking_recv().transpose(),
        }
    }
}

/// Runs the format decoder on this (blocking) thread and the writers on scoped threads; returns the image size.
fn decode_and_write(
    input: &mut Input,
    format: ImageFormat,
    target: Option<&Target>,
    progress: &Progress,
    read_err: &(dyn Fn(std::io::Error) -> ImageError + Sync),
    refetch: &Refetch,
) -> Result<u64, ImageError> {
    let (op_tx, op_rx) = sync_channel::<WriteOp>(BUF_COUNT);
    let (decoded, written) = std::thread::scope(|s| {
        let writer = s.spawn(move || crate::target::run_writer(target, op_rx, progress));
        let mut co = Coalescer {
            tx: op_tx,
            pool: BufPool::new(BUF_SIZE, BUF_COUNT),
            cur: None,
        };
        let decoded = match format {
            ImageFormat::Raw => decode_raw(input, &mut co, target, progress, read_err),
            ImageFormat::Qcow2 => decode_qcow2(input, &mut co, target, progress, read_err, refetch),
            ImageFormat::LiveIso => Err(ImageError::UnsupportedFormat {
                what: "live-iso (booted from the BMC's virtual media, never written to a disk)".into(),
            }),
        };
        let decoded = decoded.and_then(|size| co.flush().map(|()| size).map_err(sink_err));
        drop(co);
        (decoded, writer.join())
    });
    let written = written.map_err(|_| ImageError::Internal("writer thread panicked".into()))?;
    // A writer failure is the root cause of the decoder's "writer stopped".
    written?;
    let size = decoded?;
    if let Some(t) = target {
        progress.set_phase(Phase::Flushing);
        t.finish(size)?;
    }
    Ok(size)
}

fn sink_err(e: std::io::Error) -> ImageError {
    ImageError::Internal(e.into())
}

fn check_capacity(target: Option<&Target>, needed: u64) -> Result<(), ImageError> {
    match target {
        Some(t) if t.capacity.is_some_and(|c| c < needed) => Err(ImageError::TargetTooSmall {
            target: t.path.clone(),
            needed,
            available: t.capacity.unwrap_or(0),
        }),
        _ => Ok(()),
    }
}

fn decode_raw(
    input: &mut Input,
    co: &mut Coalescer,
    target: Option<&Target>,
    progress: &Progress,
    read_err: &dyn Fn(std::io::Error) -> ImageError,
) -> Result<u64, ImageError> {
    let mut offset = 0u64;
    loop {
        let len = match input {
            Input::Chunks { head, rx } => {
                let Some(chunk) = Input::next_chunk(head, rx).map_err(read_err)? else {
                    break;
                };
                let len = chunk.len() as u64;
                check_capacity(target, offset + len)?;
                co.shared(offset, chunk).map_err(sink_err)?;
                len
            }
            Input::Stream(r) => {
                // Decompress straight into a write buffer.
                let mut buf = co.pool.take();
                let len = crate::source::read_full(r, buf.as_mut()).map_err(read_err)?;
                if len == 0 {
                    break;
                }
                check_capacity(target, offset + len as u64)?;
                let data = co.pool.lend(buf, 0..len);
                co.send(WriteOp::Data { offset, data }).map_err(sink_err)?;
                len as u64
            }
        };
        offset += len;
    }
    progress.set_image_size(offset);
    Ok(offset)
}

fn decode_qcow2(
    input: &mut Input,
    co: &mut Coalescer,
    target: Option<&Target>,
    progress: &Progress,
    read_err: &dyn Fn(std::io::Error) -> ImageError,
    refetch: &Refetch,
) -> Result<u64, ImageError> {
    let mut dec = match refetch {
        Refetch::None => qcow2::Decoder::new(),
        _ => qcow2::Decoder::with_random_access(),
    };
    let mut scratch = Vec::new();
    let mut checked = false;
    let mut sink = |o: qcow2::Output<'_>| match o {
        qcow2::Output::Data { guest, bytes } => co.data(guest, bytes),
        qcow2::Output::Zero { guest, len } => co.zero(guest, len),
    };
    loop {
        let chunk;
        let piece: &[u8] = match input {
            Input::Chunks { head, rx } => match Input::next_chunk(head, rx).map_err(read_err)? {
                Some(c) => {
                    chunk = c;
                    &chunk
                }
                None => break,
            },
            Input::Stream(r) => {
                scratch.resize(1 << 20, 0);
                let n = loop {
                    match r.read(&mut scratch) {
                        Ok(n) => break n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => return Err(read_err(e)),
                    }
                };
                if n == 0 {
                    break;
                }
                &scratch[..n]
            }
        };
        dec.feed(piece, &mut sink).map_err(ImageError::Qcow2)?;
        if !checked && let Some(h) = dec.header() {
            checked = true;
            progress.set_image_size(h.size);
            check_capacity(target, h.size)?;
        }
    }
    let mut fetch = |at: u64, len: u64| refetch.fetch(at, len);
    dec.finish(&mut sink, &mut fetch).map_err(ImageError::Qcow2)?;
    let size = dec.header().map_or(0, |h| h.size);
    progress.set_image_size(size);
    Ok(size)
}

/// How the qcow2 decoder can read the source again at an offset, for data that precedes the table mapping it
/// (`qemu-img convert -c` puts the last L2 table at the end of the file, after data clusters it maps).
enum Refetch {
    /// A compressed stream: no random access; the decoder buffers a bounded amount instead.
    None,
    File(PathBuf),
    /// HTTP `Range` requests (RFC 9110 §14.2), run on the pipeline's runtime from the decoder thread.
    Http {
        url: url::Url,
        client: reqwest::Client,
        rt: tokio::runtime::Handle,
    },
}

impl Refetch {
    fn fetch(&self, at: u64, len: u64) -> std::io::Result<Vec<u8>> {
        use std::os::unix::fs::FileExt;
        tracing::debug!(offset = at, len, "qcow2: re-reading data that preceded its table");
        match self {
            Self::None => Err(std::io::Error::other("the source cannot be re-read")),
            Self::File(p) => {
                let f = std::fs::File::open(p)?;
                let mut buf = vec![0u8; len as usize];
                let mut got = 0;
                while got < buf.len() {
                    match f.read_at(&mut buf[got..], at + got as u64)? {
                        0 => break,
                        n => got += n,
                    }
                }
                buf.truncate(got);
                Ok(buf)
            }
            Self::Http { url, client, rt } => rt.block_on(async {
                let range = format!("bytes={at}-{}", at + len.max(1) - 1);
                let resp = client
                    .get(url.clone())
                    .header(reqwest::header::RANGE, range)
                    .send()
                    .await
                    .map_err(std::io::Error::other)?;
                if resp.status() != reqwest::StatusCode::PARTIAL_CONTENT {
                    return Err(std::io::Error::other(format!(
                        "range request answered with {} (the server does not support ranges)",
                        resp.status()
                    )));
                }
                let body = resp.bytes().await.map_err(std::io::Error::other)?;
                Ok(body.to_vec())
            }),
        }
    }
}

/// Packs decoded output into 4 MiB aligned buffers from a bounded pool, sending one write per contiguous run (or
/// per full buffer). A buffer starts at the same offset modulo [`ALIGN`] as its run on the target, so that all
/// of it but a partial block at either end can be written with O_DIRECT.
struct Coalescer {
    tx: SyncSender<WriteOp>,
    pool: BufPool,
    /// The run being packed: target offset, buffer, range of the buffer filled so far.
    cur: Option<(u64, AlignedBuf, std::ops::Range<usize>)>,
}

impl Coalescer {
    fn stopped() -> std::io::Error {
        std::io::Error::other("writer stopped")
    }

    fn send(&mut self, op: WriteOp) -> std::io::Result<()> {
        self.tx.send(op).map_err(|_| Self::stopped())
    }

    fn data(&mut self, mut guest: u64, mut bytes: &[u8]) -> std::io::Result<()> {
        while !bytes.is_empty() {
            if let Some((off, buf, range)) = &mut self.cur
                && *off + range.len() as u64 == guest
                && range.end < buf.capacity()
            {
                let n = (buf.capacity() - range.end).min(bytes.len());
                buf.as_mut()[range.end..range.end + n].copy_from_slice(&bytes[..n]);
                range.end += n;
                guest += n as u64;
                bytes = &bytes[n..];
                continue;
            }
            self.flush()?;
            let skew = (guest % ALIGN as u64) as usize;
            self.cur = Some((guest, self.pool.take(), skew..skew));
        }
        Ok(())
    }

    /// Data already in memory the writers can use as it is (an aligned file chunk): sent without a copy when it
    /// starts a run at an aligned offset, copied otherwise.
    fn shared(&mut self, guest: u64, bytes: Bytes) -> std::io::Result<()> {
        let aligned = guest.is_multiple_of(ALIGN as u64) && (bytes.as_ptr() as usize).is_multiple_of(ALIGN);
        if self.cur.is_none() && aligned && bytes.len() >= BUF_SIZE / 4 {
            return self.send(WriteOp::Data {
                offset: guest,
                data: bytes,
            });
        }
        self.data(guest, &bytes)
    }

    fn zero(&mut self, guest: u64, len: u64) -> std::io::Result<()> {
        self.flush()?;
        self.send(WriteOp::Zero { offset: guest, len })
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if let Some((offset, buf, range)) = self.cur.take() {
            let data = self.pool.lend(buf, range);
            self.send(WriteOp::Data { offset, data })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coalesced_runs_sit_at_their_target_offset_modulo_align_and_aligned_chunks_pass_through() {
        let (tx, rx) = sync_channel(16);
        let mut co = Coalescer {
            tx,
            pool: BufPool::new(BUF_SIZE, 4),
            cur: None,
        };
        co.data(4096 + 100, &[1; 50]).unwrap();
        co.data(4096 + 150, &[2; 10]).unwrap();
        co.zero(8192, 4096).unwrap();
        let mut files = BufPool::new(BUF_SIZE, 1);
        let buf = files.take();
        let chunk = files.lend(buf, 0..BUF_SIZE);
        co.shared(BUF_SIZE as u64, chunk.clone()).unwrap();
        // Not at an aligned offset: copied.
        co.shared(3 * BUF_SIZE as u64 + 512, chunk.slice(..BUF_SIZE / 2))
            .unwrap();
        co.flush().unwrap();
        drop(co);
        let ops: Vec<WriteOp> = rx.iter().collect();
        let [
            WriteOp::Data { offset: a, data: run },
            WriteOp::Zero {
                offset: 8192,
                len: 4096,
            },
            WriteOp::Data {
                offset: b,
                data: shared,
            },
            WriteOp::Data {
                offset: c,
                data: copied,
            },
        ] = &ops[..]
        else {
            panic!("{ops:?}")
        };
        assert_eq!((*a, run.len(), run.as_ptr() as usize % ALIGN), (4196, 60, 100));
        assert_eq!((&run[..50], &run[50..]), (&[1; 50][..], &[2; 10][..]));
        assert_eq!((*b, shared.as_ptr()), (BUF_SIZE as u64, chunk.as_ptr()));
        assert_eq!(
            (*c, copied.len(), copied.as_ptr() as usize % ALIGN),
            (3 * BUF_SIZE as u64 + 512, BUF_SIZE / 2, 512)
        );
    }

    #[test]
    fn detects_compression_and_format_by_magic() {
        assert_eq!(Compression::detect(&[0x1f, 0x8b, 8, 0]), Compression::Gzip);
        assert_eq!(Compression::detect(&[0x28, 0xb5, 0x2f, 0xfd, 0]), Compression::Zstd);
        assert_eq!(Compression::detect(&[0xfd, b'7', b'z', b'X', b'Z', 0]), Compression::Xz);
        assert_eq!(Compression::detect(b"BZh91AY"), Compression::Bzip2);
        assert_eq!(Compression::detect(b"QFI\xfb"), Compression::None);
        assert_eq!(detect_format(b"QFI\xfb\0\0\0\x03").unwrap(), ImageFormat::Qcow2);
        assert_eq!(detect_format(&[0u8; 8]).unwrap(), ImageFormat::Raw);
        assert!(detect_format(b"KDMV\x01\0\0\0").is_err());
    }
}
