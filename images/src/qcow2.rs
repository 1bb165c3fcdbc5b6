//! A streaming qcow2 decoder: fed the image's bytes in file order, it emits the guest (raw) bytes as
//! `(guest offset, data)` and zero ranges, without ever holding the whole image.
//!
//! This module is pure (no I/O, no clock): the pipeline feeds it chunks and writes what it emits. It relies on the
//! layout qemu-img and QEMU mostly produce, where the L1 table and each L2 table precede the data clusters they map.
//! Data met before the table that maps it is kept in a bounded side buffer (`ORPHAN_LIMIT`); past that budget it is
//! re-read at the end when the source allows random access (a local file, HTTP ranges: `qemu-img convert -c` puts
//! the last L2 table at the end of the file), and otherwise the image is refused as not streamable.
//! Format reference: QEMU `docs/interop/qcow2.txt` (header fields, "Cluster mapping", "Compressed Clusters
//! Descriptor").

use std::collections::BTreeMap;

use async_compression::codecs::{DecodeV2, DeflateDecoder, ZstdDecoder};
use async_compression::core::util::{PartialBuffer, WriteBuffer};

/// `QFI\xfb`, the first four bytes of every qcow2 image.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Bytes of unmapped data the decoder keeps while it still waits for L2 tables.
pub const ORPHAN_LIMIT: usize = 32 << 20;
/// Largest L1 or refcount table accepted (QEMU's own limit for L1 is 32 MiB).
const MAX_TABLE_BYTES: u64 = 32 << 20;
/// Host offset bits of L1 and standard L2 entries (qcow2.txt: bits 9-55).
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
const L2_COMPRESSED: u64 = 1 << 62;
const L2_ZERO: u64 = 1;

/// Why a qcow2 stream cannot be decoded.
#[derive(Debug, thiserror::Error)]
pub enum Qcow2Error {
    #[error("not a qcow2 image (bad magic)")]
    BadMagic,
    #[error("qcow2 header is truncated or invalid: {reason}")]
    BadHeader { reason: String },
    #[error("qcow2 image has a backing file {name:?}; only standalone images can be written")]
    BackingFile { name: String },
    #[error("qcow2 image is encrypted (method {method})")]
    Encrypted { method: u32 },
    #[error("qcow2 image uses unsupported incompatible features {bits:#x}")]
    UnsupportedFeatures { bits: u64 },
    #[error("qcow2 image uses unknown compression type {compression_type}")]
    UnknownCompression { compression_type: u8 },
    #[error("qcow2 metadata is corrupt: {reason}")]
    Corrupt { reason: String },
    #[error("qcow2 layout is not streamable: more than {limit} bytes of data precede their L2 table (at {offset})")]
    NotStreamable { offset: u64, limit: usize },
    #[error("decompressing the qcow2 cluster at host offset {host_offset} failed")]
    Cluster {
        host_offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("qcow2 stream ended at {at} bytes with {missing} table(s) or cluster(s) unread (first at {first})")]
    Truncated { at: u64, missing: usize, first: u64 },
    #[error("re-reading the qcow2 source at offset {offset} failed")]
    Fetch {
        offset: u64,
        #[source]
        source: std::io::Error,
    },
    #[error("writing decoded data failed")]
    Sink(#[source] std::io::Error),
}

/// The fields of a qcow2 header the decoder uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    pub version: u32,
    pub cluster_bits: u32,
    /// Guest (virtual) size in bytes.
    pub size: u64,
    pub l1_size: u32,
    pub l1_table_offset: u64,
    pub refcount_table_offset: u64,
    pub refcount_table_clusters: u32,
    pub nb_snapshots: u32,
    /// 0 = deflate, 1 = zstd.
    pub compression_type: u8,
    pub header_length: u32,
}

impl Header {
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }
    /// Guest bytes covered by one L2 table.
    pub fn l2_coverage(&self) -> u64 {
        self.cluster_size() * (self.cluster_size() / 8)
    }
}

fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn bad(reason: impl Into<String>) -> Qcow2Error {
    Qcow2Error::BadHeader { reason: reason.into() }
}

/// Bytes needed before [`parse_header`] can decide: at least 112 (v3 header with the compression type).
pub const HEADER_PEEK: usize = 112;

/// Parses and validates a qcow2 header from the first bytes of the image (`buf` should hold [`HEADER_PEEK`] bytes
/// or, better, the whole first cluster so the backing file name can be reported).
///
/// # Errors
/// Bad magic, an unsupported version, encryption, a backing file, unknown incompatible features or absurd sizes.
pub fn parse_header(buf: &[u8]) -> Result<Header, Qcow2Error> {
    if buf.len() < 4 || buf[..4] != MAGIC {
        return Err(Qcow2Error::BadMagic);
    }
    if buf.len() < 72 {
        return Err(bad("shorter than 72 bytes"));
    }
    let version = be32(buf, 4);
    if version != 2 && version != 3 {
        return Err(bad(format!("version {version}")));
    }
    let backing_file_offset = be64(buf, 8);
    let backing_file_size = be32(buf, 16);
    let cluster_bits = be32(buf, 20);
    if !(9..=21).contains(&cluster_bits) {
        return Err(bad(format!("cluster_bits {cluster_bits}")));
    }
    let size = be64(buf, 24);
    let crypt_method = be32(buf, 32);
    let l1_size = be32(buf, 36);
    let l1_table_offset = be64(buf, 40);
    let refcount_table_offset = be64(buf, 48);
    let refcount_table_clusters = be32(buf, 56);
    let nb_snapshots = be32(buf, 60);
    if backing_file_offset != 0 {
        let start = usize::try_from(backing_file_offset).unwrap_or(usize::MAX);
        let end = start.saturating_add(backing_file_size.min(1023) as usize);
        let name = buf
            .get(start..end)
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .unwrap_or_else(|| "(name beyond the bytes read)".into());
        return Err(Qcow2Error::BackingFile { name });
    }
    if crypt_method != 0 {
        return Err(Qcow2Error::Encrypted { method: crypt_method });
    }
    let (mut header_length, mut compression_type) = (72u32, 0u8);
    if version == 3 {
        if buf.len() < 104 {
            return Err(bad("v3 header shorter than 104 bytes"));
        }
        let incompatible = be64(buf, 72);
        header_length = be32(buf, 100);
        if header_length < 104 || u64::from(header_length) > (1 << cluster_bits) {
            return Err(bad(format!("header_length {header_length}")));
        }
        // bit 0 dirty (refcounts stale; the mapping we read is still valid), bit 3 compression type field present.
        let unsupported = incompatible & !(1 | 1 << 3);
        if unsupported != 0 {
            return Err(Qcow2Error::UnsupportedFeatures { bits: unsupported });
        }
        if incompatible & (1 << 3) != 0 || header_length > 104 {
            if buf.len() < 105 {
                return Err(bad("header shorter than its compression type field"));
            }
            compression_type = buf[104];
        }
        if compression_type > 1 {
            return Err(Qcow2Error::UnknownCompression { compression_type });
        }
    }
    let header = Header {
        version,
        cluster_bits,
        size,
        l1_size,
        l1_table_offset,
        refcount_table_offset,
        refcount_table_clusters,
        nb_snapshots,
        compression_type,
        header_length,
    };
    let cs = header.cluster_size();
    if u64::from(l1_size) * 8 > MAX_TABLE_BYTES {
        return Err(bad(format!("l1_size {l1_size}")));
    }
    let needed_l1 = size.div_ceil(header.l2_coverage());
    if u64::from(l1_size) < needed_l1 {
        return Err(bad(format!("l1_size {l1_size} cannot map {size} bytes")));
    }
    if !l1_table_offset.is_multiple_of(cs) || !refcount_table_offset.is_multiple_of(cs) {
        return Err(bad("table offsets not cluster aligned"));
    }
    if u64::from(refcount_table_clusters) * cs > MAX_TABLE_BYTES {
        return Err(bad(format!("refcount_table_clusters {refcount_table_clusters}")));
    }
    Ok(header)
}

/// What the decoder emits.
#[derive(Debug, PartialEq, Eq)]
pub enum Output<'a> {
    /// Guest bytes at `guest`.
    Data { guest: u64, bytes: &'a [u8] },
    /// A guest range that reads as zeros (unallocated or zero clusters).
    Zero { guest: u64, len: u64 },
}

#[derive(Debug, Clone, Copy)]
enum Want {
    /// Metadata whose contents we do not need (header cluster, refcount blocks).
    Skip,
    L1,
    RefcountTable,
    L2 {
        index: u64,
    },
    Data {
        guest: u64,
    },
    Compressed {
        guest: u64,
    },
}

/// The streaming decoder. Feed it the image bytes in order with [`Decoder::feed`], then call [`Decoder::finish`].
#[derive(Debug, Default)]
pub struct Decoder {
    header: Option<Header>,
    /// Retained bytes, starting at host offset `window_start`.
    window: Vec<u8>,
    /// Bytes at the front of `window` already consumed (compacted on the next feed).
    head: usize,
    window_start: u64,
    /// Pending reads keyed by host offset, with their lengths.
    wants: BTreeMap<u64, Vec<(u64, Want)>>,
    /// Unclassified bytes kept in case a later L2 table maps them; keyed by host offset.
    orphans: BTreeMap<u64, Vec<u8>>,
    orphan_bytes: usize,
    /// Set when the source can be read at any offset again (an uncompressed local file, an HTTP server with
    /// ranges): reads that were streamed past are then queued in `late` and fetched at the end instead of keeping
    /// orphans.
    random_access: bool,
    orphan_limit: usize,
    late: Vec<(u64, u64, Want)>,
    /// Tables (L1 + L2s) announced but not yet read.
    tables_pending: usize,
    cluster_buf: Vec<u8>,
    /// A zero run not yet emitted: (guest start, length).
    zero_run: Option<(u64, u64)>,
}

/// Reads `len` bytes at an offset of the source again (see [`Decoder::finish`]).
pub type Fetch<'f> = dyn FnMut(u64, u64) -> std::io::Result<Vec<u8>> + 'f;

type Sink<'s> = dyn FnMut(Output<'_>) -> std::io::Result<()> + 's;

impl Decoder {
    pub fn new() -> Self {
        Self {
            orphan_limit: ORPHAN_LIMIT,
            ..Self::default()
        }
    }

    /// Changes the orphan budget (default [`ORPHAN_LIMIT`]).
    pub fn orphan_limit(mut self, bytes: usize) -> Self {
        self.orphan_limit = bytes;
        self
    }

    /// A decoder for a source that [`Decoder::finish`] can read again at any offset: data met before its table is
    /// still kept up to the orphan budget, and what is not kept is fetched again at the end.
    pub fn with_random_access() -> Self {
        Self {
            random_access: true,
            ..Self::new()
        }
    }

    /// The parsed header, once enough bytes have been fed.
    pub fn header(&self) -> Option<&Header> {
        self.header.as_ref()
    }

    /// Host offset one past the last byte fed.
    fn window_end(&self) -> u64 {
        self.window_start + (self.window.len() - self.head) as u64
    }

    /// Feeds the next bytes of the image.
    ///
    /// # Errors
    /// A [`Qcow2Error`] for an invalid or unstreamable image, or `Sink` if `out` failed.
    ///
    /// When nothing is carried over from the previous chunk (the usual case: tables and clusters do not straddle
    /// chunks of a power-of-two size), the chunk is decoded where it is, without a copy: the bytes of
    /// [`Output::Data`] for an uncompressed cluster are then a subslice of `chunk` (which lets the caller write
    /// them without a copy either). Only a trailing partial table or cluster is kept for the next chunk.
    pub fn feed(&mut self, chunk: &[u8], out: &mut Sink<'_>) -> Result<(), Qcow2Error> {
        if self.head > 0 {
            self.window.drain(..self.head);
            self.head = 0;
        }
        if self.header.is_some() && self.window.is_empty() {
            let used = self.run(chunk, out, false)?;
            self.window.extend_from_slice(&chunk[used..]);
            return Ok(());
        }
        self.window.extend_from_slice(chunk);
        if self.header.is_none() {
            if self.window.len() < 512 {
                return Ok(());
            }
            self.start(out)?;
        }
        self.run_window(out, false)
    }

    /// Signals the end of the stream: flushes what is pending and checks nothing is missing. `fetch(offset, len)`
    /// reads the source again (a short read at its end is fine); it is called only by a decoder made with
    /// [`Decoder::with_random_access`], for data that was streamed past before the table mapping it arrived.
    ///
    /// # Errors
    /// `Truncated` if tables or clusters were announced but never arrived; `Fetch` if `fetch` failed; any error of
    /// [`Decoder::feed`].
    pub fn finish(&mut self, out: &mut Sink<'_>, fetch: &mut Fetch<'_>) -> Result<(), Qcow2Error> {
        if self.header.is_none() {
            self.start(out)?;
        }
        self.run_window(out, true)?;
        while let Some((at, len, want)) = self.late.pop() {
            let bytes = fetch(at, len).map_err(|source| Qcow2Error::Fetch { offset: at, source })?;
            let complete = bytes.len() as u64 == len || matches!(want, Want::Compressed { .. });
            if !complete || bytes.is_empty() {
                return Err(Qcow2Error::Truncated {
                    at: at + bytes.len() as u64,
                    missing: 1,
                    first: at,
                });
            }
            self.process(at, want, &bytes, out)?;
        }
        if let Some((&first, _)) = self.wants.first_key_value() {
            let missing = self.wants.values().map(Vec::len).sum();
            return Err(Qcow2Error::Truncated {
                at: self.window_end(),
                missing,
                first,
            });
        }
        self.flush_zero(out)
    }

    fn start(&mut self, out: &mut Sink<'_>) -> Result<(), Qcow2Error> {
        let h = parse_header(&self.window)?;
        let cs = h.cluster_size();
        self.cluster_buf = vec![0; cs as usize];
        self.add_want(0, cs, Want::Skip, out)?;
        if h.refcount_table_clusters > 0 && h.refcount_table_offset != 0 {
            let len = u64::from(h.refcount_table_clusters) * cs;
            self.add_want(h.refcount_table_offset, len, Want::RefcountTable, out)?;
        }
        let (l1_size, l1_offset, size) = (h.l1_size, h.l1_table_offset, h.size);
        self.header = Some(h);
        if l1_size > 0 && size > 0 {
            if l1_offset == 0 {
                return Err(Qcow2Error::Corrupt {
                    reason: "L1 table at offset 0".into(),
                });
            }
            self.tables_pending += 1;
            self.add_want(l1_offset, u64::from(l1_size) * 8, Want::L1, out)?;
        } else if size > 0 {
            self.zero(0, size, out)?;
        }
        Ok(())
    }

    fn hdr(&self) -> &Header {
        self.header.as_ref().expect("header parsed before the body")
    }

    fn add_want(&mut self, at: u64, len: u64, want: Want, out: &mut Sink<'_>) -> Result<(), Qcow2Error> {
        if at >= self.window_start {
            self.wants.entry(at).or_default().push((len, want));
            return Ok(());
        }
        // Already streamed past: only data kept as an orphan can satisfy it.
        let found = self.orphans.range(..=at).next_back().and_then(|(&start, bytes)| {
            let from = (at - start) as usize;
            let to = from.checked_add(len as usize)?;
            (to <= bytes.len()).then(|| bytes[from..to].to_vec())
        });
        match found {
            Some(bytes) => self.process(at, want, &bytes, out),
            None if self.random_access => {
                self.late.push((at, len, want));
                Ok(())
            }
            None => Err(Qcow2Error::NotStreamable {
                offset: at,
                limit: self.orphan_limit,
            }),
        }
    }

    /// [`Decoder::run`] over the retained bytes.
    fn run_window(&mut self, out: &mut Sink<'_>, eof: bool) -> Result<(), Qcow2Error> {
        // Lent out meanwhile: nothing `run` calls touches the window.
        let window = std::mem::take(&mut self.window);
        let res = self.run(&window[self.head..], out, eof);
        self.window = window;
        self.head += res?;
        Ok(())
    }

    /// Serves the pending reads from `live`, the bytes starting at host offset `window_start`; returns how many
    /// bytes at its front no pending read needs any more (`window_start` has moved past them). The rest must be
    /// kept for the next call.
    fn run(&mut self, live: &[u8], out: &mut Sink<'_>, eof: bool) -> Result<usize, Qcow2Error> {
        let mut used = 0;
        loop {
            let end = self.window_start + (live.len() - used) as u64;
            let Some((&at, &(len, want))) = self.wants.first_key_value().map(|(k, v)| (k, &v[0])) else {
                self.unknown(self.window_start, &live[used..])?;
                self.window_start = end;
                return Ok(live.len());
            };
            if at > self.window_start {
                let upto = at.min(end);
                let n = (upto - self.window_start) as usize;
                if self.tables_pending > 0 {
                    self.unknown(self.window_start, &live[used..used + n])?;
                }
                used += n;
                self.window_start = upto;
                if at >= end {
                    return Ok(used);
                }
            }
            let avail = end - at;
            if len > avail {
                // Only a compressed cluster's rounded-up length may run past the end of the file.
                if !(eof && matches!(want, Want::Compressed { .. })) || avail == 0 {
                    return Ok(used);
                }
            }
            let take = len.min(avail) as usize;
            let list = self.wants.get_mut(&at).expect("first key exists");
            list.remove(0);
            if list.is_empty() {
                self.wants.remove(&at);
            }
            self.process(at, want, &live[used..used + take], out)?;
            // Drop what no pending read needs any more.
            let next = self.wants.keys().next().copied().unwrap_or(u64::MAX);
            let keep_from = next.min(at + take as u64).min(end);
            if keep_from > self.window_start {
                used += (keep_from - self.window_start) as usize;
                self.window_start = keep_from;
            }
        }
    }

    /// Bytes no pending read covers: either free space/refcount data, or data whose L2 table comes later.
    fn unknown(&mut self, at: u64, bytes: &[u8]) -> Result<(), Qcow2Error> {
        if bytes.is_empty() || self.tables_pending == 0 {
            return Ok(());
        }
        if self.orphan_bytes + bytes.len() > self.orphan_limit {
            if self.random_access {
                // Past the budget: what is not kept is re-read at the end if a table turns out to need it.
                return Ok(());
            }
            return Err(Qcow2Error::NotStreamable {
                offset: at,
                limit: self.orphan_limit,
            });
        }
        self.orphan_bytes += bytes.len();
        if let Some(mut last) = self.orphans.last_entry()
            && *last.key() + last.get().len() as u64 == at
        {
            last.get_mut().extend_from_slice(bytes);
            return Ok(());
        }
        self.orphans.insert(at, bytes.to_vec());
        Ok(())
    }

    fn process(&mut self, at: u64, want: Want, bytes: &[u8], out: &mut Sink<'_>) -> Result<(), Qcow2Error> {
        let h = self.hdr().clone();
        let cs = h.cluster_size();
        match want {
            Want::Skip => {}
            Want::RefcountTable => {
                for e in bytes
                    .chunks_exact(8)
                    .map(|c| u64::from_be_bytes(c.try_into().expect("8")))
                {
                    let off = e & !(cs - 1);
                    if off != 0 && off >= self.window_start {
                        self.add_want(off, cs, Want::Skip, out)?;
                    }
                }
            }
            Want::L1 => {
                self.tables_pending -= 1;
                for (i, e) in bytes.chunks_exact(8).enumerate() {
                    let e = u64::from_be_bytes(e.try_into().expect("8"));
                    let Some(guest) = (i as u64).checked_mul(h.l2_coverage()).filter(|g| *g < h.size) else {
                        break;
                    };
                    let off = e & OFFSET_MASK;
                    if off == 0 {
                        self.zero(guest, h.l2_coverage().min(h.size - guest), out)?;
                    } else if !off.is_multiple_of(cs) {
                        return Err(Qcow2Error::Corrupt {
                            reason: format!("L2 table offset {off:#x} unaligned"),
                        });
                    } else {
                        self.tables_pending += 1;
                        self.add_want(off, cs, Want::L2 { index: i as u64 }, out)?;
                    }
                }
            }
            Want::L2 { index } => {
                self.tables_pending -= 1;
                let base = index * h.l2_coverage();
                for (j, e) in bytes.chunks_exact(8).enumerate() {
                    let e = u64::from_be_bytes(e.try_into().expect("8"));
                    let guest = base + j as u64 * cs;
                    if guest >= h.size {
                        break;
                    }
                    let len = cs.min(h.size - guest);
                    if e & L2_COMPRESSED != 0 {
                        // qcow2.txt "Compressed Clusters Descriptor": x = 62 - (cluster_bits - 8).
                        let x = 62 - (h.cluster_bits - 8);
                        let off = e & ((1 << x) - 1);
                        let sectors = (e >> x) & ((1 << (h.cluster_bits - 8)) - 1);
                        let clen = (sectors + 1) * 512 - (off & 511);
                        self.add_want(off, clen, Want::Compressed { guest }, out)?;
                    } else if (e & L2_ZERO != 0 && h.version == 3) || e & OFFSET_MASK == 0 {
                        self.zero(guest, len, out)?;
                    } else {
                        let off = e & OFFSET_MASK;
                        if !off.is_multiple_of(cs) {
                            return Err(Qcow2Error::Corrupt {
                                reason: format!("data cluster {off:#x} unaligned"),
                            });
                        }
                        self.add_want(off, cs, Want::Data { guest }, out)?;
                    }
                }
                if self.tables_pending == 0 {
                    self.orphans.clear();
                    self.orphan_bytes = 0;
                }
            }
            Want::Data { guest } => {
                let len = cs.min(h.size - guest) as usize;
                self.flush_zero(out)?;
                out(Output::Data {
                    guest,
                    bytes: &bytes[..len.min(bytes.len())],
                })
                .map_err(Qcow2Error::Sink)?;
            }
            Want::Compressed { guest } => {
                let len = cs.min(h.size - guest) as usize;
                let mut buf = std::mem::take(&mut self.cluster_buf);
                let res = inflate_cluster(h.compression_type, bytes, &mut buf).map_err(|source| Qcow2Error::Cluster {
                    host_offset: at,
                    source,
                });
                let res = res.and_then(|()| {
                    self.flush_zero(out)?;
                    out(Output::Data {
                        guest,
                        bytes: &buf[..len],
                    })
                    .map_err(Qcow2Error::Sink)
                });
                self.cluster_buf = buf;
                res?;
            }
        }
        Ok(())
    }

    fn zero(&mut self, guest: u64, len: u64, out: &mut Sink<'_>) -> Result<(), Qcow2Error> {
        match &mut self.zero_run {
            Some((start, run)) if *start + *run == guest => *run += len,
            _ => {
                self.flush_zero(out)?;
                self.zero_run = Some((guest, len));
            }
        }
        Ok(())
    }

    fn flush_zero(&mut self, out: &mut Sink<'_>) -> Result<(), Qcow2Error> {
        if let Some((guest, len)) = self.zero_run.take() {
            out(Output::Zero { guest, len }).map_err(Qcow2Error::Sink)?;
        }
        Ok(())
    }
}

/// Decompresses one compressed cluster into `out` (exactly one cluster). qcow2 deflate clusters are raw deflate
/// (no zlib header); zstd clusters are one zstd frame. Trailing bytes (sector rounding) are ignored.
fn inflate_cluster(compression_type: u8, input: &[u8], out: &mut [u8]) -> std::io::Result<()> {
    let mut deflate;
    let mut zstd;
    let dec: &mut dyn DecodeV2 = if compression_type == 0 {
        deflate = DeflateDecoder::new();
        &mut deflate
    } else {
        zstd = ZstdDecoder::new();
        &mut zstd
    };
    let mut inp = PartialBuffer::new(input);
    let mut outb = WriteBuffer::new_initialized(out);
    loop {
        let before = (inp.written_len(), outb.written_len());
        let done = dec.decode(&mut inp, &mut outb)?;
        if outb.written_len() == outb.capacity() {
            return Ok(());
        }
        if done || (inp.written_len(), outb.written_len()) == before {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!(
                    "compressed cluster decoded to {} bytes, expected {}",
                    outb.written_len(),
                    outb.capacity()
                ),
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A minimal valid v3 header: 64 KiB clusters, 1 GiB, L1 at cluster 3, refcount table at cluster 1.
    fn header_bytes() -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..4].copy_from_slice(&MAGIC);
        h[4..8].copy_from_slice(&3u32.to_be_bytes());
        h[20..24].copy_from_slice(&16u32.to_be_bytes());
        h[24..32].copy_from_slice(&(1u64 << 30).to_be_bytes());
        h[36..40].copy_from_slice(&2u32.to_be_bytes());
        h[40..48].copy_from_slice(&(3u64 << 16).to_be_bytes());
        h[48..56].copy_from_slice(&(1u64 << 16).to_be_bytes());
        h[56..60].copy_from_slice(&1u32.to_be_bytes());
        h[100..104].copy_from_slice(&112u32.to_be_bytes());
        h
    }

    #[test]
    fn parses_a_valid_header_and_rejects_bad_ones() {
        let h = parse_header(&header_bytes()).unwrap();
        assert_eq!((h.cluster_size(), h.size, h.l1_size), (65536, 1 << 30, 2));
        let mut b = header_bytes();
        b[0] = b'X';
        assert!(matches!(parse_header(&b), Err(Qcow2Error::BadMagic)));
        let mut b = header_bytes();
        b[72..80].copy_from_slice(&2u64.to_be_bytes()); // corrupt bit
        assert!(matches!(
            parse_header(&b),
            Err(Qcow2Error::UnsupportedFeatures { bits: 2 })
        ));
        let mut b = header_bytes();
        b[36..40].copy_from_slice(&1u32.to_be_bytes()); // L1 too small for 1 GiB
        assert!(matches!(parse_header(&b), Err(Qcow2Error::BadHeader { .. })));
        let mut b = header_bytes();
        b[8..16].copy_from_slice(&200u64.to_be_bytes());
        b[16..20].copy_from_slice(&4u32.to_be_bytes());
        b[200..204].copy_from_slice(b"base");
        assert!(matches!(parse_header(&b), Err(Qcow2Error::BackingFile { name }) if name == "base"));
    }

    #[test]
    fn decodes_a_hand_built_image_fed_byte_by_byte() {
        // Header, refcount table (cluster 1, empty), L2 (cluster 2), L1 (cluster 3), data (cluster 4).
        let cs = 1usize << 16;
        let mut img = vec![0u8; 5 * cs];
        img[..512].copy_from_slice(&header_bytes());
        img[3 * cs..3 * cs + 8].copy_from_slice(&((2u64 << 16) | 1 << 63).to_be_bytes());
        img[2 * cs + 8..2 * cs + 16].copy_from_slice(&((4u64 << 16) | 1 << 63).to_be_bytes());
        img[4 * cs..5 * cs].fill(0x42);
        let mut out = Vec::new();
        let mut dec = Decoder::new();
        let mut sink = |o: Output<'_>| {
            out.push(match o {
                Output::Data { guest, bytes } => (guest, bytes.len() as u64, bytes[0]),
                Output::Zero { guest, len } => (guest, len, 0),
            });
            Ok(())
        };
        for chunk in img.chunks(4093) {
            dec.feed(chunk, &mut sink).unwrap();
        }
        dec.finish(&mut sink, &mut |_, _| unreachable!()).unwrap();
        // guest cluster 0 zero, cluster 1 data 0x42, rest of the 1 GiB zero (zeros are announced with the L2 table,
        // data when its cluster arrives).
        out.sort();
        assert_eq!(
            out,
            vec![(0, 65536, 0), (65536, 65536, 0x42), (131072, (1 << 30) - 131072, 0)]
        );
    }

    #[test]
    fn clusters_of_a_chunk_fed_whole_are_emitted_from_it_without_a_copy() {
        // Header, refcount table (cluster 1, empty), L2 (cluster 2), L1 (cluster 3), data (clusters 4 and 5).
        let cs = 1usize << 16;
        let mut img = vec![0u8; 6 * cs];
        img[..512].copy_from_slice(&header_bytes());
        img[3 * cs..3 * cs + 8].copy_from_slice(&((2u64 << 16) | 1 << 63).to_be_bytes());
        for (j, host) in [(0usize, 4u64), (1, 5)] {
            img[2 * cs + 8 * j..2 * cs + 8 * j + 8].copy_from_slice(&((host << 16) | 1 << 63).to_be_bytes());
        }
        img[4 * cs..6 * cs].fill(0x42);
        let (tables, data) = img.split_at(4 * cs);
        let mut dec = Decoder::new();
        let mut borrowed = Vec::new();
        let mut sink = |o: Output<'_>| {
            if let Output::Data { guest, bytes } = o {
                let from = (bytes.as_ptr() as usize).checked_sub(data.as_ptr() as usize);
                borrowed.push((guest, bytes.len(), from.filter(|f| f + bytes.len() <= data.len())));
            }
            Ok(())
        };
        dec.feed(tables, &mut sink).unwrap();
        dec.feed(data, &mut sink).unwrap();
        dec.finish(&mut sink, &mut |_, _| unreachable!()).unwrap();
        assert_eq!(borrowed, vec![(0, cs, Some(0)), (cs as u64, cs, Some(cs))]);
    }

    #[test]
    fn data_before_its_table_is_kept_or_refetched() {
        // Header, refcount table (cluster 1), data (cluster 2), L1 (cluster 3) -> L2 (cluster 4): data first.
        let cs = 1usize << 16;
        let mut img = vec![0u8; 5 * cs];
        img[..512].copy_from_slice(&header_bytes());
        img[3 * cs..3 * cs + 8].copy_from_slice(&((4u64 << 16) | 1 << 63).to_be_bytes());
        img[4 * cs..4 * cs + 8].copy_from_slice(&((2u64 << 16) | 1 << 63).to_be_bytes());
        img[2 * cs..3 * cs].fill(0x77);
        // Kept as an orphan (both modes), or beyond the budget re-read (random access) or refused.
        for (random_access, limit) in [(false, ORPHAN_LIMIT), (true, ORPHAN_LIMIT), (true, 0), (false, 0)] {
            let dec = if random_access {
                Decoder::with_random_access()
            } else {
                Decoder::new()
            };
            let mut dec = dec.orphan_limit(limit);
            let mut out = Vec::new();
            let mut sink = |o: Output<'_>| {
                if let Output::Data { guest, bytes } = o {
                    out.push((guest, bytes.len(), bytes[0]));
                }
                Ok(())
            };
            let mut fetched = 0;
            let mut fetch = |at: u64, len: u64| {
                fetched += 1;
                Ok(img[at as usize..(at + len) as usize].to_vec())
            };
            let mut res = Ok(());
            for chunk in img.chunks(10_000) {
                res = dec.feed(chunk, &mut sink);
                if res.is_err() {
                    break;
                }
            }
            let res = res.and_then(|()| dec.finish(&mut sink, &mut fetch));
            if !random_access && limit == 0 {
                assert!(matches!(res, Err(Qcow2Error::NotStreamable { .. })), "{res:?}");
                continue;
            }
            res.unwrap();
            assert_eq!(out, vec![(0, cs, 0x77)], "random_access={random_access} limit={limit}");
            assert_eq!(fetched, usize::from(limit == 0));
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn random_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..4096), split in 1usize..700) {
            let _ = parse_header(&data);
            let mut dec = if split % 2 == 0 { Decoder::new() } else { Decoder::with_random_access() };
            let mut sink = |_: Output<'_>| Ok(());
            let mut ok = true;
            for c in data.chunks(split) {
                if dec.feed(c, &mut sink).is_err() { ok = false; break; }
            }
            let mut fetch = |at: u64, len: u64| {
                Ok(data.get(at as usize..).unwrap_or_default().iter().take(len as usize).copied().collect())
            };
            if ok { let _ = dec.finish(&mut sink, &mut fetch); }
        }

        #[test]
        fn mutated_valid_headers_never_panic(
            edits in proptest::collection::vec((0usize..4096, any::<u8>()), 1..24),
            tail in proptest::collection::vec(any::<u8>(), 0..70000),
        ) {
            let mut data = header_bytes();
            data.resize(4096, 0);
            for (i, v) in edits { data[i] = v; }
            data.extend_from_slice(&tail);
            let mut dec = Decoder::new();
            let mut sink = |_: Output<'_>| Ok(());
            if dec.feed(&data, &mut sink).is_ok() { let _ = dec.finish(&mut sink, &mut |_, _| Ok(Vec::new())); }
        }
    }
}
