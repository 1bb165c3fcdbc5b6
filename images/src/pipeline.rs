//! The streaming image pipeline: source → digest of the published bytes → decompression (detected by magic) →
//! format decoding (raw or streamed qcow2) → 4 MiB aligned writes → flush → verify. On any failure after the target
//! was opened, its partition tables are wiped so a half-written OS cannot boot.
//!
//! Stages run concurrently with bounded queues: the download on the async task (a local file on a blocking thread),
//! hashing on one blocking thread, decompression and decoding on another, and the writers and their flusher on
//! threads of [`crate::target`]. The published chunks are shared by the hasher and the decoder without a copy, and
//! from an uncompressed image read from a local file, raw or qcow2, the data reaches the target in the very buffers
//! it was read into (the decompressors read the published chunks where they are, too). Memory does not grow with
//! the image: at most 6 file chunks and 4 decoded buffers of 4 MiB (peak RSS 28 MiB for a raw image, 47 MiB for
//! raw.zst, 40 MiB for qcow2), plus the qcow2 decoder's side buffer for data met before its table
//! ([`crate::qcow2::ORPHAN_LIMIT`], unused for the layouts qemu-img writes). This module wires stages; it does not
//! parse formats (see [`crate::qcow2`]) or checksums (see [`crate::digest`]). An `oci://` source is resolved to
//! its registry blob first ([`crate::oci`]), then streamed like any HTTP source, verified by the blob's digest.

use std::collections::VecDeque;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{SyncSender, sync_channel};
use std::time::Duration;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::sync::mpsc;

use crate::digest::{Algorithm, ChecksumSource, ExpectedDigest, Hasher};
use crate::error::ImageError;
use crate::oci::{self, Resolved};
use crate::progress::{Phase, Progress};
use crate::protocol::{ImageFormat, ImageSpec, RegistryAccess};
use crate::qcow2;
use crate::source::{Authorization, SourceLocation};
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

pub(crate) fn format_name(f: ImageFormat) -> &'static str {
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
    /// How to reach the registry of an `oci://` source (credentials, plain HTTP); `None`: anonymously over HTTPS.
    /// Other sources ignore it.
    pub registry: Option<RegistryAccess>,
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

/// Writes the image described by `spec` to `target` (block device or regular file) and verifies its checksum. An
/// `oci://` image is pulled anonymously over HTTPS; see [`write_image_with_registry`].
///
/// # Errors
/// An [`ImageError`] naming the failing stage; if anything was written the target's partition tables are wiped.
pub async fn write_image(spec: &ImageSpec, target: &Path, progress: &Progress) -> Result<WriteReport, ImageError> {
    write_image_with_registry(spec, None, target, progress).await
}

/// [`write_image`], reaching the registry of an `oci://` image as `registry` says (credentials, plain HTTP). Such
/// an image is verified by its layer's registry digest; `spec.checksum` may be empty, and if given it must be
/// that sha256 digest.
///
/// # Errors
/// As [`write_image`]; `Registry` when the reference cannot be resolved (nothing is written then).
pub async fn write_image_with_registry(
    spec: &ImageSpec,
    registry: Option<&RegistryAccess>,
    target: &Path,
    progress: &Progress,
) -> Result<WriteReport, ImageError> {
    let checksum = if spec.url.starts_with(oci::SCHEME) && spec.checksum.trim().is_empty() {
        None
    } else {
        Some(ChecksumSource::parse(&spec.checksum, spec.checksum_type)?)
    };
    let opts = WriteOptions {
        registry: registry.cloned(),
        ..WriteOptions::default()
    };
    run(&spec.url, checksum.as_ref(), spec.format, Some(target), progress, &opts).await
}

/// The general entry point: `checksum = None` skips verification (the sha256 is still computed and reported),
/// `target = None` decodes and hashes without writing (for `kiln image inspect`).
///
/// An `oci://` source is resolved (with `opts.registry`'s credentials and protocol) to its disk layer before the
/// target is opened, and that blob is streamed and verified against its registry digest, whatever `checksum` says
/// (it must be that sha256 digest, if given). A `disktype` annotation stands in for `declared` when that is
/// `None`, and must agree with it otherwise.
///
/// # Errors
/// As [`write_image`]; for `oci://`, `Registry` when the reference cannot be resolved, `ChecksumMismatch` when
/// `checksum` is not the layer's digest, `DisktypeMismatch` when `declared` contradicts the annotation (all before
/// anything is written).
pub async fn run(
    source: &str,
    checksum: Option<&ChecksumSource>,
    declared: Option<ImageFormat>,
    target: Option<&Path>,
    progress: &Progress,
    opts: &WriteOptions,
) -> Result<WriteReport, ImageError> {
    use tracing::Instrument;
    let image = crate::source::redact_userinfo(source);
    let span = tracing::info_span!("image_write", image = %image, target = ?target);
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
    let Resolved {
        location,
        authorization,
        expected,
        declared,
        display,
    } = if source.starts_with(oci::SCHEME) {
        oci::resolve_source(source, checksum, declared, opts.registry.as_ref()).await?
    } else {
        let location = SourceLocation::parse(source)?;
        Resolved {
            display: location.display(),
            location,
            authorization: None,
            expected: None,
            declared,
        }
    };
    let client = match (&location, &opts.client) {
        (SourceLocation::Http(_), Some(c)) => Some(c.clone()),
        (SourceLocation::Http(_), None) => Some(crate::source::http_client()?),
        (SourceLocation::File(_), _) => None,
    };
    let expected = match (expected, checksum) {
        (Some(e), _) => Some(e),
        (None, Some(c)) => Some(crate::digest::resolve(c, source, client.as_ref()).await?),
        (None, None) => None,
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
        authorization,
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
                url: display,
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
    authorization: Option<Authorization>,
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
    let pump = crate::source::pump(
        location,
        client,
        authorization.as_ref(),
        data_tx,
        Some(hash_tx),
        progress,
        ok.clone(),
    );
    let refetch = match (location, client) {
        (SourceLocation::File(p), _) => Refetch::File(p.clone()),
        (SourceLocation::Http(u), Some(c)) => Refetch::Http {
            url: u.clone(),
            client: c.clone(),
            authorization: authorization.clone(),
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
            // The decompressor reads the published chunks where they are (`StreamReader` is buffered by them).
            let buf = published;
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
        let mut co = Coalescer::new(op_tx, BufPool::new(BUF_SIZE, BUF_COUNT));
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
    let mut scratch = vec![0u8; 1 << 20];
    let mut checked = false;
    loop {
        // A published chunk (decoded where it is), or decompressed bytes in `scratch`.
        let (chunk, n) = match input {
            Input::Chunks { head, rx } => match Input::next_chunk(head, rx).map_err(read_err)? {
                Some(c) => (Some(c), 0),
                None => break,
            },
            Input::Stream(r) => {
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
                (None, n)
            }
        };
        let piece = chunk.as_deref().unwrap_or(&scratch[..n]);
        dec.feed(piece, &mut qcow2_sink(co, chunk.as_ref()))
            .map_err(ImageError::Qcow2)?;
        co.buffer_done().map_err(sink_err)?;
        if !checked && let Some(h) = dec.header() {
            checked = true;
            progress.set_image_size(h.size);
            check_capacity(target, h.size)?;
        }
    }
    let mut fetch = |at: u64, len: u64| refetch.fetch(at, len);
    dec.finish(&mut qcow2_sink(co, None), &mut fetch)
        .map_err(ImageError::Qcow2)?;
    let size = dec.header().map_or(0, |h| h.size);
    progress.set_image_size(size);
    Ok(size)
}

/// Where the qcow2 decoder's output goes: data that lies in `chunk` (an uncompressed cluster the decoder found in
/// the chunk it was fed) is passed on as a slice of that chunk, without a copy; anything else is copied.
fn qcow2_sink<'a>(
    co: &'a mut Coalescer,
    chunk: Option<&'a Bytes>,
) -> impl FnMut(qcow2::Output<'_>) -> std::io::Result<()> + 'a {
    move |o| match o {
        qcow2::Output::Data { guest, bytes } => match chunk.and_then(|c| Some((c, subslice_range(c, bytes)?))) {
            Some((c, range)) => co.piece(guest, c, range),
            None => co.data(guest, bytes),
        },
        qcow2::Output::Zero { guest, len } => co.zero(guest, len),
    }
}

/// The range of `outer` that `inner` occupies, if it is a subslice of it (compared by address).
fn subslice_range(outer: &[u8], inner: &[u8]) -> Option<std::ops::Range<usize>> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    (start + inner.len() <= outer.len()).then(|| start..start + inner.len())
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
        /// As for the download (see `crate::source::pump`).
        authorization: Option<Authorization>,
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
            Self::Http {
                url,
                client,
                authorization,
                rt,
            } => rt.block_on(async {
                let range = format!("bytes={at}-{}", at + len.max(1) - 1);
                let send = || {
                    let mut req = client.get(url.clone()).header(reqwest::header::RANGE, range.clone());
                    if let Some(a) = authorization {
                        req = req.header(reqwest::header::AUTHORIZATION, a.value());
                    }
                    req.send()
                };
                let mut resp = send().await.map_err(std::io::Error::other)?;
                if resp.status() == reqwest::StatusCode::UNAUTHORIZED
                    && let Some(a) = authorization
                    && a.renew().await.map_err(std::io::Error::other)?
                {
                    resp = send().await.map_err(std::io::Error::other)?;
                }
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

/// Shared runs shorter than this that the next data continues on the target are copied into a buffer with it
/// instead (a fragmented qcow2 layout then still makes large writes).
const MIN_SHARED: usize = 256 << 10;

/// Packs decoded output into writes. Data already in a buffer the writers can use as it is (a chunk of a local
/// file, whose memory sits at the same offset modulo [`ALIGN`] as its place on the target) is sent as a slice of
/// that buffer, consecutive pieces of the same buffer as one write. Other data is copied into 4 MiB aligned buffers
/// from a bounded pool, one write per contiguous run (or per full buffer); such a buffer starts at the same offset
/// modulo [`ALIGN`] as its run on the target. Either way all of a write but a partial block at either end can go
/// to O_DIRECT.
struct Coalescer {
    tx: SyncSender<WriteOp>,
    pool: BufPool,
    /// The run being packed: target offset, buffer, range of the buffer filled so far.
    cur: Option<(u64, AlignedBuf, std::ops::Range<usize>)>,
    /// Or the run of shared data being extended: target offset, the buffer it lies in, its range there.
    shared: Option<(u64, Bytes, std::ops::Range<usize>)>,
}

impl Coalescer {
    fn new(tx: SyncSender<WriteOp>, pool: BufPool) -> Self {
        Self {
            tx,
            pool,
            cur: None,
            shared: None,
        }
    }

    fn stopped() -> std::io::Error {
        std::io::Error::other("writer stopped")
    }

    fn send(&mut self, op: WriteOp) -> std::io::Result<()> {
        self.tx.send(op).map_err(|_| Self::stopped())
    }

    /// Data to copy into the run being packed.
    fn data(&mut self, guest: u64, bytes: &[u8]) -> std::io::Result<()> {
        self.pack_short_shared(guest)?;
        self.copy(guest, bytes)
    }

    /// If the shared run is short and `guest` continues it, copies it into a buffer (to be continued there).
    fn pack_short_shared(&mut self, guest: u64) -> std::io::Result<()> {
        if let Some((off, _, r)) = &self.shared
            && *off + r.len() as u64 == guest
            && r.len() < MIN_SHARED
            && let Some((off, buf, r)) = self.shared.take()
        {
            self.copy(off, &buf[r])?;
        }
        Ok(())
    }

    fn copy(&mut self, mut guest: u64, mut bytes: &[u8]) -> std::io::Result<()> {
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

    /// `buf[range]`, to be written at `guest`: sent without a copy when its memory is congruent with `guest` modulo
    /// [`ALIGN`] (as one write with the previous piece when that one ends where this one starts, both on the target
    /// and in `buf`), copied otherwise.
    fn piece(&mut self, guest: u64, buf: &Bytes, range: std::ops::Range<usize>) -> std::io::Result<()> {
        if let Some((off, b, r)) = &mut self.shared
            && *off + r.len() as u64 == guest
            && r.end == range.start
            && b.as_ptr() == buf.as_ptr()
            && b.len() == buf.len()
        {
            r.end = range.end;
            return Ok(());
        }
        let addr = buf.as_ptr() as usize + range.start;
        let congruent = (guest % ALIGN as u64) as usize == addr % ALIGN;
        // A run being copied that this piece continues is continued by copying, up to a full buffer.
        let continues_copy = self
            .cur
            .as_ref()
            .is_some_and(|(off, b, r)| *off + r.len() as u64 == guest && r.end < b.capacity());
        if !congruent || continues_copy {
            return self.data(guest, &buf[range]);
        }
        if self
            .shared
            .as_ref()
            .is_some_and(|(off, _, r)| *off + r.len() as u64 == guest && r.len() < MIN_SHARED)
        {
            return self.data(guest, &buf[range]);
        }
        self.flush()?;
        self.shared = Some((guest, buf.clone(), range));
        Ok(())
    }

    /// A buffer the writers can use as it is (an aligned file chunk), all of it at `guest`.
    fn shared(&mut self, guest: u64, bytes: Bytes) -> std::io::Result<()> {
        let len = bytes.len();
        self.piece(guest, &bytes, 0..len)?;
        self.buffer_done()
    }

    /// No more pieces of the buffer last passed to [`Coalescer::piece`] will come: a shared run in it cannot grow
    /// any more and goes to the writers now, unless it is short enough to be packed with what follows.
    fn buffer_done(&mut self) -> std::io::Result<()> {
        if self.shared.as_ref().is_some_and(|(_, _, r)| r.len() >= MIN_SHARED) {
            self.flush()?;
        }
        Ok(())
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
        if let Some((offset, buf, range)) = self.shared.take() {
            self.send(WriteOp::Data {
                offset,
                data: buf.slice(range),
            })?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
