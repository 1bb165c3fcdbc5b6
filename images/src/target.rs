//! The write end of the pipeline: opening a target (block device or regular file), large aligned writes from a
//! small pool of 4 MiB buffers on a dedicated thread, zeroing ranges, the final flush, and wiping partition tables
//! after a failure.
//!
//! O_DIRECT is used for block devices (aligned writes bypass the page cache); unaligned tails go through a buffered
//! descriptor. No `unsafe`: buffer alignment comes from over-allocating a `Vec` and slicing at an aligned offset.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, SyncSender};

use crate::error::ImageError;
use crate::progress::Progress;

/// Size of each write buffer.
pub const BUF_SIZE: usize = 4 << 20;
/// Buffers in flight between the decoder and the writer thread (bounds memory: `BUF_COUNT * BUF_SIZE`).
pub const BUF_COUNT: usize = 4;
const ALIGN: usize = 4096;
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
}

/// One unit of work for the writer thread.
#[derive(Debug)]
pub(crate) enum WriteOp {
    Data { offset: u64, buf: AlignedBuf, len: usize },
    Zero { offset: u64, len: u64 },
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

    fn write_at(&self, offset: u64, data: &[u8]) -> std::io::Result<()> {
        match &self.direct {
            Some(d) if offset.is_multiple_of(ALIGN as u64) && data.len().is_multiple_of(ALIGN) => {
                d.write_all_at(data, offset)
            }
            _ => self.file.write_all_at(data, offset),
        }
    }

    fn zero_range(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if !self.block_device {
            return Ok(()); // freshly truncated file: holes already read as zeros
        }
        let flags = nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE;
        let (o, l) = (offset as i64, len as i64);
        if nix::fcntl::fallocate(&self.file, flags, o, l).is_ok() {
            return Ok(());
        }
        let zeros = vec![0u8; BUF_SIZE.min(len as usize)];
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(zeros.len() as u64) as usize;
            self.write_at(offset + done, &zeros[..n])?;
            done += n as u64;
        }
        Ok(())
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
        if let Some(d) = &self.direct {
            d.sync_all().map_err(err)?;
        }
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

/// The writer thread: executes ops in order, returns each buffer to `pool`, counts written bytes.
pub(crate) fn run_writer(
    target: Option<&Target>,
    ops: Receiver<WriteOp>,
    pool: SyncSender<AlignedBuf>,
    progress: &Progress,
) -> Result<(), ImageError> {
    let sparse = target.is_some_and(|t| !t.block_device);
    for op in ops {
        match op {
            WriteOp::Data { offset, buf, len } => {
                let data = buf.as_slice(len);
                if let Some(t) = target
                    && !(sparse && is_zero(data))
                {
                    t.write_at(offset, data).map_err(|source| ImageError::Write {
                        target: t.path.clone(),
                        offset,
                        source,
                    })?;
                }
                progress.add_written(len as u64);
                let _ = pool.send(buf);
            }
            WriteOp::Zero { offset, len } => {
                if let Some(t) = target {
                    t.zero_range(offset, len).map_err(|source| ImageError::Write {
                        target: t.path.clone(),
                        offset,
                        source,
                    })?;
                }
                progress.add_written(len);
            }
        }
    }
    Ok(())
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
