//! The write end of the pipeline: opening a target (block device or regular file), a bounded pool of 4 MiB aligned
//! buffers lent out as [`Bytes`], several writer threads with their writes in flight at once, zeroing ranges, flushes
//! behind the writes and the final flush, and wiping partition tables after a failure.
//!
//! O_DIRECT is used for block devices (aligned writes bypass the page cache); unaligned heads and tails go through a
//! buffered descriptor, one such write at a time with nothing else in flight (see `run_writer`). No `unsafe`:
//! buffer alignment comes from over-allocating a `Vec` and slicing at an aligned offset.

use std::fs::{File, OpenOptions};
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Mutex, OnceLock, RwLock};

use bytes::Bytes;

use crate::error::ImageError;
use crate::progress::Progress;

/// Size of each buffer: one write to the target, one chunk read from a local file.
pub const BUF_SIZE: usize = 4 << 20;
/// Decoded buffers in flight between the decoder and the writers (bounds memory: `BUF_COUNT * BUF_SIZE`).
pub const BUF_COUNT: usize = 4;
/// Writes in flight at once (each writer thread has one).
pub const WRITERS: usize = 2;
/// Bytes written between two flushes behind the writes (see `Target::flush_behind`).
pub const FLUSH_EVERY: u64 = 64 << 20;
/// Runs of zeros at least this long (and aligned to it within a write) are zeroed rather than written: explicitly
/// on a block device (see [`Target::zero_range`]), as holes in a regular file. qcow2's default cluster size.
pub(crate) const ZERO_GRAIN: usize = 64 << 10;
/// Alignment of O_DIRECT writes (offset, length and memory): the largest logical block size in use.
pub(crate) const ALIGN: usize = 4096;
/// How much of each end of a disk a failure zeroes (MBR, primary GPT at the start; backup GPT at the end).
pub const WIPE_BYTES: u64 = 1 << 20;

/// Whether to bypass the page cache with O_DIRECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DirectIo {
    /// For block devices only.
    #[default]
    Auto,
    /// Also for regular files (falls back to buffered I/O where the filesystem refuses O_DIRECT).
    Always,
    Never,
}

/// A heap buffer whose usable part starts at a 4096-byte boundary.
#[derive(Debug)]
pub(crate) struct AlignedBuf {
    vec: Vec<u8>,
    off: usize,
}

impl AlignedBuf {
    pub(crate) fn new(size: usize) -> Self {
        let vec = vec![0u8; size + ALIGN];
        let off = vec.as_ptr().align_offset(ALIGN);
        Self { vec, off }
    }
    pub(crate) fn as_mut(&mut self) -> &mut [u8] {
        let (off, size) = (self.off, self.vec.len() - ALIGN);
        &mut self.vec[off..off + size]
    }
    pub(crate) fn as_slice(&self, len: usize) -> &[u8] {
        &self.vec[self.off..self.off + len]
    }
    pub(crate) fn capacity(&self) -> usize {
        self.vec.len() - ALIGN
    }
}

/// A bounded pool of [`AlignedBuf`]s. A buffer is lent out as [`Bytes`] (which the hasher, the decoder and the
/// writers can share without copying) and comes back to the pool when the last clone is dropped, wherever that is.
#[derive(Debug)]
pub(crate) struct BufPool {
    home: SyncSender<AlignedBuf>,
    back: Receiver<AlignedBuf>,
    size: usize,
    made: usize,
    max: usize,
}

impl BufPool {
    /// A pool of at most `max` buffers of `size` bytes, allocated as they are first needed.
    pub(crate) fn new(size: usize, max: usize) -> Self {
        let (home, back) = sync_channel(max);
        Self {
            home,
            back,
            size,
            made: 0,
            max: max.max(1),
        }
    }

    /// A free buffer: one that came back, a new one while fewer than `max` exist, or else the next to come back
    /// (this is what bounds memory and paces the stage that takes buffers).
    pub(crate) fn take(&mut self) -> AlignedBuf {
        if let Ok(b) = self.back.try_recv() {
            return b;
        }
        if self.made < self.max {
            self.made += 1;
            return AlignedBuf::new(self.size);
        }
        // Cannot fail: the pool itself holds a sender.
        self.back.recv().unwrap_or_else(|_| AlignedBuf::new(self.size))
    }

    /// Lends `range` of `buf` as [`Bytes`]; the buffer returns to this pool when the last clone is dropped.
    pub(crate) fn lend(&self, buf: AlignedBuf, range: Range<usize>) -> Bytes {
        Bytes::from_owner(Lent {
            buf: Some(buf),
            range,
            home: self.home.clone(),
        })
    }
}

/// The owner behind a lent [`Bytes`].
struct Lent {
    buf: Option<AlignedBuf>,
    range: Range<usize>,
    home: SyncSender<AlignedBuf>,
}

impl AsRef<[u8]> for Lent {
    fn as_ref(&self) -> &[u8] {
        self.buf
            .as_ref()
            .map_or(&[][..], |b| &b.as_slice(self.range.end)[self.range.clone()])
    }
}

impl Drop for Lent {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            let _ = self.home.try_send(b);
        }
    }
}

/// One unit of work for the writers. `data` starts at `offset` on the target; it can go to O_DIRECT when its memory
/// and `offset` are congruent modulo [`ALIGN`] (lent pool buffers and file chunks are).
#[derive(Debug)]
pub(crate) enum WriteOp {
    Data { offset: u64, data: Bytes },
    Zero { offset: u64, len: u64 },
}

impl WriteOp {
    fn range(&self) -> (u64, u64) {
        match self {
            Self::Data { offset, data } => (*offset, data.len() as u64),
            Self::Zero { offset, len } => (*offset, *len),
        }
    }

    /// Whether the op covers whole [`ALIGN`] blocks only. Other ops may share a block with a neighbour and then go
    /// through the page cache (read-modify-write), so they must not run beside another write.
    fn aligned(&self) -> bool {
        let (offset, len) = self.range();
        offset.is_multiple_of(ALIGN as u64) && len.is_multiple_of(ALIGN as u64)
    }
}

/// An opened target.
#[derive(Debug)]
pub(crate) struct Target {
    pub path: PathBuf,
    pub block_device: bool,
    file: File,
    direct: Option<File>,
    /// Capacity of a block device.
    pub capacity: Option<u64>,
}

impl Target {
    /// Opens `path` for writing. A regular file is created or truncated to zero (so skipped zero ranges read back as
    /// zeros); a block device is opened in place.
    pub(crate) fn open(path: &Path, direct: DirectIo) -> Result<Self, ImageError> {
        let err = |source| ImageError::OpenTarget {
            target: path.to_owned(),
            source,
        };
        let block_device = std::fs::metadata(path)
            .map(|m| m.file_type().is_block_device())
            .unwrap_or(false);
        let file = OpenOptions::new()
            .write(true)
            .create(!block_device)
            .open(path)
            .map_err(err)?;
        let mut capacity = None;
        if block_device {
            use std::io::Seek;
            capacity = Some((&file).seek(std::io::SeekFrom::End(0)).map_err(err)?);
        } else {
            file.set_len(0).map_err(err)?;
        }
        let want_direct = match direct {
            DirectIo::Auto => block_device,
            DirectIo::Always => true,
            DirectIo::Never => false,
        };
        let direct = if want_direct {
            match OpenOptions::new()
                .write(true)
                .custom_flags(nix::fcntl::OFlag::O_DIRECT.bits())
                .open(path)
            {
                Ok(f) => Some(f),
                Err(e) if !block_device => {
                    tracing::debug!(target_path = %path.display(), error = %e, "O_DIRECT refused; buffered writes");
                    None
                }
                Err(e) => return Err(err(e)),
            }
        } else {
            None
        };
        Ok(Self {
            path: path.to_owned(),
            block_device,
            file,
            direct,
            capacity,
        })
    }

    /// Writes `data` at `offset`: the whole [`ALIGN`] blocks through O_DIRECT when the memory allows it, a partial
    /// block at either end through the page cache.
    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        let Some(d) = &self.direct else {
            return self.file.write_all_at(data, offset);
        };
        let head = ((ALIGN as u64 - offset % ALIGN as u64) % ALIGN as u64).min(data.len() as u64) as usize;
        let body = (data.len() - head) / ALIGN * ALIGN;
        let middle = &data[head..head + body];
        if body == 0 || !(middle.as_ptr() as usize).is_multiple_of(ALIGN) {
            return self.file.write_all_at(data, offset);
        }
        if head > 0 {
            self.file.write_all_at(&data[..head], offset)?;
        }
        d.write_all_at(middle, offset + head as u64)?;
        if head + body < data.len() {
            self.file
                .write_all_at(&data[head + body..], offset + (head + body) as u64)?;
        }
        Ok(())
    }

    /// Writes `data` at `offset`, except that its runs of whole [`ZERO_GRAIN`]s of zeros go to
    /// [`Target::zero_range`]: less to transfer and to write back, same bytes on the target.
    fn write_data(&self, offset: u64, data: &[u8], zeros: &OnceLock<AlignedBuf>) -> std::io::Result<()> {
        let grain_zero = |at: usize| at + ZERO_GRAIN <= data.len() && is_zero(&data[at..at + ZERO_GRAIN]);
        let (mut written, mut at) = (0, 0);
        while at < data.len() {
            if !grain_zero(at) {
                at += ZERO_GRAIN;
                continue;
            }
            let mut end = at + ZERO_GRAIN;
            while grain_zero(end) {
                end += ZERO_GRAIN;
            }
            if written < at {
                self.write_at(offset + written as u64, &data[written..at])?;
            }
            self.zero_range(offset + at as u64, (end - at) as u64, zeros)?;
            (written, at) = (end, end);
        }
        if written < data.len() {
            self.write_at(offset + written as u64, &data[written..])?;
        }
        Ok(())
    }

    /// Makes `len` bytes at `offset` read as zeros. A block device is never assumed to hold zeros: the range is
    /// zeroed explicitly, by the kernel (FALLOC_FL_ZERO_RANGE: blkdev_issue_zeroout without unmapping, offloaded to
    /// WRITE ZEROES where the device has it) or else by writing zeros.
    fn zero_range(&self, offset: u64, len: u64, zeros: &OnceLock<AlignedBuf>) -> std::io::Result<()> {
        if !self.block_device {
            return Ok(()); // freshly truncated file: holes already read as zeros
        }
        let flags = nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE;
        let (o, l) = (offset as i64, len as i64);
        if nix::fcntl::fallocate(&self.file, flags, o, l).is_ok() {
            return Ok(());
        }
        let zeros = zeros.get_or_init(|| AlignedBuf::new(BUF_SIZE + ALIGN));
        let mut done = 0u64;
        while done < len {
            // Start the zeros at the same offset modulo ALIGN as the target, so that whole blocks can go direct.
            let at = offset + done;
            let skew = (at % ALIGN as u64) as usize;
            let n = (len - done).min(BUF_SIZE as u64) as usize;
            self.write_at(at, &zeros.as_slice(skew + n)[skew..])?;
            done += n as u64;
        }
        Ok(())
    }

    /// A flush while the writes go on (at most one at a time, every [`FLUSH_EVERY`] bytes): a device with a
    /// volatile cache (a disk's, a host's page cache under a virtual disk or a loop device) writes it back while
    /// kiln decodes, hashes and writes more, instead of all at once in the final flush. It is no substitute for
    /// the final flush in [`Target::finish`], which alone makes the image durable.
    fn flush_behind(&self) -> Result<(), ImageError> {
        self.file.sync_data().map_err(|source| ImageError::Flush {
            target: self.path.clone(),
            source,
        })
    }

    /// Sets a regular file's final length and flushes everything to stable storage.
    pub(crate) fn finish(&self, logical_size: u64) -> Result<(), ImageError> {
        let err = |source| ImageError::Flush {
            target: self.path.clone(),
            source,
        };
        if !self.block_device {
            self.file.set_len(logical_size).map_err(err)?;
        }
        // Both descriptors refer to the same inode: one fsync covers what was written through either.
        self.file.sync_all().map_err(err)?;
        if self.block_device {
            // Let the kernel see the new partition table (best effort: EBUSY if something is mounted).
            let mut f = self.file.try_clone().map_err(err)?;
            if let Err(e) = gptman::linux::reread_partition_table(&mut f) {
                tracing::debug!(target_path = %self.path.display(), error = %e, "BLKRRPART failed");
            }
        }
        Ok(())
    }
}

/// The writers: [`WRITERS`] threads take ops in turn and execute them, so that several writes are in flight at once
/// (their order does not matter: ops never overlap). An op that is not block-aligned runs alone (an exclusive
/// lock), so a read-modify-write of a shared block never races with the write of its neighbour. Each op's buffer
/// is dropped (back to its pool) once written. A flusher thread flushes behind the writers every [`FLUSH_EVERY`]
/// bytes. Returns the first error; the other writers then stop and the decoder sees its channel close.
pub(crate) fn run_writer(
    target: Option<&Target>,
    ops: Receiver<WriteOp>,
    progress: &Progress,
) -> Result<(), ImageError> {
    let Some(t) = target else {
        for op in ops {
            progress.add_written(op.range().1);
        }
        return Ok(());
    };
    let ops = Mutex::new(ops);
    let exclusive = RwLock::new(());
    let stop = AtomicBool::new(false);
    let unflushed = AtomicU64::new(0);
    let zeros = OnceLock::new();
    let (flush_tx, flush_rx) = sync_channel::<()>(1);
    let fail = |e: ImageError| {
        stop.store(true, Ordering::Relaxed);
        Err(e)
    };
    let write = |flush_tx: SyncSender<()>| -> Result<(), ImageError> {
        while !stop.load(Ordering::Relaxed) {
            let op = ops
                .lock()
                .map_err(|_| ImageError::Internal("writer queue lock poisoned".into()))?
                .recv();
            let Ok(op) = op else { break };
            if stop.load(Ordering::Relaxed) {
                break; // another writer failed while this one waited: write nothing more
            }
            let (offset, len) = op.range();
            let res = {
                // Held while the op runs: shared by aligned ops, alone for the others.
                let (_shared, _alone);
                if op.aligned() {
                    _shared = exclusive.read();
                } else {
                    _alone = exclusive.write();
                }
                match &op {
                    WriteOp::Data { offset, data } => t.write_data(*offset, data, &zeros),
                    WriteOp::Zero { offset, len } => t.zero_range(*offset, *len, &zeros),
                }
            };
            drop(op);
            if let Err(source) = res {
                return fail(ImageError::Write {
                    target: t.path.clone(),
                    offset,
                    source,
                });
            }
            progress.add_written(len);
            if unflushed.fetch_add(len, Ordering::Relaxed) + len >= FLUSH_EVERY {
                unflushed.store(0, Ordering::Relaxed);
                let _ = flush_tx.try_send(());
            }
        }
        Ok(())
    };
    std::thread::scope(|s| {
        let flusher = s.spawn(|| {
            for () in flush_rx {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                t.flush_behind().or_else(fail)?;
            }
            Ok(())
        });
        let handles: Vec<_> = (0..WRITERS)
            .map(|_| {
                let tx = flush_tx.clone();
                s.spawn(move || write(tx))
            })
            .collect();
        drop(flush_tx);
        let panicked = |_| Err(ImageError::Internal("writer thread panicked".into()));
        let mut result = Ok(());
        for h in handles {
            let r = h.join().unwrap_or_else(panicked);
            result = result.and(r);
        }
        result.and(flusher.join().unwrap_or_else(panicked))
    })
}

fn is_zero(data: &[u8]) -> bool {
    let (chunks, rest) = data.as_chunks::<16>();
    chunks.iter().all(|c| u128::from_ne_bytes(*c) == 0) && rest.iter().all(|b| *b == 0)
}

/// Zeroes the first and last [`WIPE_BYTES`] of `path` (MBR, primary GPT header and entries, backup GPT), so that a
/// half-written disk has no partition table to boot from, then flushes.
///
/// # Errors
/// `Wipe` if the target cannot be opened, written or flushed.
pub fn wipe_partition_tables(path: &Path) -> Result<(), ImageError> {
    use std::io::Seek;
    let err = |source| ImageError::Wipe {
        target: path.to_owned(),
        source,
    };
    let file = OpenOptions::new().write(true).open(path).map_err(err)?;
    let size = (&file).seek(std::io::SeekFrom::End(0)).map_err(err)?;
    let zeros = vec![0u8; WIPE_BYTES as usize];
    let head = size.min(WIPE_BYTES);
    file.write_all_at(&zeros[..head as usize], 0).map_err(err)?;
    if size > WIPE_BYTES {
        let start = size.saturating_sub(WIPE_BYTES).max(WIPE_BYTES);
        file.write_all_at(&zeros[..(size - start) as usize], start)
            .map_err(err)?;
    }
    file.sync_all().map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn aligned_buffers_are_aligned_and_zero_detection_works() {
        let mut b = AlignedBuf::new(BUF_SIZE);
        assert_eq!(b.as_mut().as_ptr() as usize % ALIGN, 0);
        assert_eq!(b.as_mut().len(), BUF_SIZE);
        assert!(is_zero(&[0; 100]));
        let mut v = vec![0u8; 100];
        v[99] = 1;
        assert!(!is_zero(&v));
        v[99] = 0;
        v[3] = 1;
        assert!(!is_zero(&v));
    }

    #[test]
    fn lent_buffers_come_back_to_their_pool_when_the_last_clone_goes() {
        let mut pool = BufPool::new(8192, 2);
        let a = pool.take();
        let b = pool.take();
        assert_eq!(pool.made, 2);
        let mut a = a;
        a.as_mut()[4096..4099].copy_from_slice(b"abc");
        let lent = pool.lend(a, 4096..4099);
        assert_eq!(&lent[..], b"abc");
        let clone = lent.slice(1..);
        drop(lent);
        assert!(pool.back.try_recv().is_err(), "a clone still holds the buffer");
        drop(clone);
        drop(b);
        // The lent buffer is back; the one dropped unlent is gone, and the pool does not make a third.
        let again = pool.take();
        assert_eq!(&again.as_slice(4099)[4096..], b"abc");
        assert_eq!(pool.made, 2);
    }

    /// Writes through `write_data` at awkward offsets (O_DIRECT where the file system allows it) and reads back.
    #[test]
    fn writes_split_into_direct_blocks_buffered_ends_and_zeroed_runs() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t");
        let t = Target::open(&path, DirectIo::Always).unwrap();
        let zeros = OnceLock::new();
        let mut expect = vec![0u8; 3 * ZERO_GRAIN + 2 * ALIGN];
        let mut pool = BufPool::new(expect.len(), 1);
        // Data, a zero grain, data; starting 100 bytes into a block and ending 7 bytes into one.
        let (offset, len) = (ALIGN + 100, 3 * ZERO_GRAIN - 93);
        let mut buf = pool.take();
        let skew = offset % ALIGN;
        for (i, b) in buf.as_mut()[skew..skew + len].iter_mut().enumerate() {
            let in_zero_grain = (ZERO_GRAIN..2 * ZERO_GRAIN).contains(&i);
            *b = if in_zero_grain { 0 } else { (i % 251) as u8 + 1 };
        }
        let data = pool.lend(buf, skew..skew + len);
        expect[offset..offset + len].copy_from_slice(&data);
        t.write_data(offset as u64, &data, &zeros).unwrap();
        // An aligned write whose memory is not aligned goes through the page cache.
        let odd = vec![7u8; ALIGN + 1];
        t.write_data(0, &odd[1..], &zeros).unwrap();
        expect[..ALIGN].fill(7);
        t.finish(expect.len() as u64).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), expect);
    }

    #[test]
    fn only_whole_block_ops_run_side_by_side() {
        let data = |offset, len| WriteOp::Data {
            offset,
            data: Bytes::from(vec![1u8; len]),
        };
        assert!(data(0, BUF_SIZE).aligned());
        assert!(!data(512, BUF_SIZE).aligned());
        assert!(!data(0, BUF_SIZE - 1).aligned());
        assert!(
            WriteOp::Zero {
                offset: 8192,
                len: 4096
            }
            .aligned()
        );
        assert!(!WriteOp::Zero { offset: 8192, len: 512 }.aligned());
    }

    #[test]
    fn wipe_zeroes_both_ends_only() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk");
        std::fs::write(&p, vec![0xaau8; 4 << 20]).unwrap();
        wipe_partition_tables(&p).unwrap();
        let d = std::fs::read(&p).unwrap();
        assert!(d[..1 << 20].iter().all(|b| *b == 0));
        assert!(d[(3 << 20)..].iter().all(|b| *b == 0));
        assert!(d[(1 << 20)..(3 << 20)].iter().all(|b| *b == 0xaa));
    }
}
