//! Disk cleaning: erasing metadata (partition tables and filesystem signatures) and erasing whole disks.
//! The range arithmetic is pure; the writes go through plain file I/O and `fallocate(2)` (which the kernel turns
//! into a discard/write-zeroes on block devices), so no ioctl is needed.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::fcntl::{FallocateFlags, fallocate};

use crate::error::AgentError;

const MIB: u64 = 1024 * 1024;

/// Byte ranges `(offset, len)` to zero so that nothing on the disk is recognised any more: the first and last MiB
/// of the disk (MBR, primary and backup GPT) and of every partition (superblocks at the start like ext4/xfs/vfat/
/// swap/LVM/md 1.1-1.2, and at the end like md 0.90/1.0). Ranges are clipped to the disk, merged and sorted.
pub fn metadata_ranges(disk_size: u64, partitions: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut raw = Vec::new();
    let mut push_region = |start: u64, len: u64| {
        let end = start.saturating_add(len).min(disk_size);
        if start >= end {
            return;
        }
        raw.push((start, (start + MIB).min(end)));
        raw.push((end.saturating_sub(MIB).max(start), end));
    };
    push_region(0, disk_size);
    for &(s, l) in partitions {
        push_region(s, l);
    }
    raw.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (s, e) in raw {
        match out.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out.into_iter().map(|(s, e)| (s, e - s)).collect()
}

/// Partitions of `/sys/block/<disk>` as byte `(start, len)` from each `<disk>N/start` and `size` (512-byte units).
pub fn read_partitions(root: &Path, disk: &str) -> Vec<(u64, u64)> {
    let dir = root.join("sys/block").join(disk);
    let Ok(rd) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut parts: Vec<(u64, u64)> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(disk))
        .filter_map(|e| {
            let rd = |f: &str| {
                std::fs::read_to_string(e.path().join(f))
                    .ok()?
                    .trim()
                    .parse::<u64>()
                    .ok()
            };
            Some((rd("start")? * 512, rd("size")? * 512))
        })
        .collect();
    parts.sort_unstable();
    parts
}

/// Shared counters the executor turns into `Progress` messages while a blocking erase runs.
#[derive(Debug, Default)]
pub struct Counter {
    pub done: AtomicU64,
    pub total: AtomicU64,
}

fn open(disk: &Path) -> Result<(File, u64), AgentError> {
    let open_err = |source| AgentError::OpenDisk {
        disk: disk.display().to_string(),
        source,
    };
    let mut f = OpenOptions::new().write(true).open(disk).map_err(open_err)?;
    let size = f.seek(SeekFrom::End(0)).map_err(open_err)?;
    Ok((f, size))
}

fn zero_range(f: &File, disk: &Path, offset: u64, len: u64, counter: &Counter) -> Result<(), AgentError> {
    let chunk = vec![0u8; (4 * MIB) as usize];
    let mut pos = offset;
    while pos < offset + len {
        let n = (offset + len - pos).min(chunk.len() as u64) as usize;
        f.write_all_at(&chunk[..n], pos)
            .map_err(|source| AgentError::EraseDisk {
                disk: disk.display().to_string(),
                offset: pos,
                source,
            })?;
        pos += n as u64;
        counter.done.fetch_add(n as u64, Ordering::Relaxed);
    }
    Ok(())
}

fn sync(f: &mut File, disk: &Path, size: u64) -> Result<(), AgentError> {
    f.flush()
        .and_then(|_| f.sync_all())
        .map_err(|source| AgentError::EraseDisk {
            disk: disk.display().to_string(),
            offset: size,
            source,
        })
}

/// Zeroes the [`metadata_ranges`] of one disk (a block device or a file) and flushes it. Returns the bytes zeroed.
///
/// # Errors
/// [`AgentError::OpenDisk`] or [`AgentError::EraseDisk`] naming the disk and offset.
pub fn erase_metadata(disk: &Path, partitions: &[(u64, u64)], counter: &Counter) -> Result<u64, AgentError> {
    let (mut f, size) = open(disk)?;
    let ranges = metadata_ranges(size, partitions);
    let total: u64 = ranges.iter().map(|r| r.1).sum();
    counter.total.fetch_add(total, Ordering::Relaxed);
    for (off, len) in ranges {
        zero_range(&f, disk, off, len, counter)?;
    }
    sync(&mut f, disk, size)?;
    Ok(total)
}

/// How a whole disk was erased.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EraseMethod {
    /// `fallocate(PUNCH_HOLE)`: the kernel discards or writes zeroes in the device (fast, reads back as zeroes).
    Discard,
    /// Zeroes written by the agent, 4 MiB at a time.
    Zeroes,
}

/// Erases a whole disk: a zeroing discard when the device supports it, else zeroes written in full.
///
/// # Errors
/// [`AgentError::OpenDisk`] or [`AgentError::EraseDisk`].
pub fn erase_disk(disk: &Path, counter: &Counter) -> Result<EraseMethod, AgentError> {
    let (mut f, size) = open(disk)?;
    counter.total.fetch_add(size, Ordering::Relaxed);
    let len = i64::try_from(size).unwrap_or(i64::MAX);
    let flags = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
    let method = match fallocate(&f, flags, 0, len) {
        Ok(()) => {
            counter.done.fetch_add(size, Ordering::Relaxed);
            EraseMethod::Discard
        }
        Err(errno) => {
            tracing::info!(disk = %disk.display(), %errno, "no zeroing discard, writing zeroes");
            zero_range(&f, disk, 0, size, counter)?;
            EraseMethod::Zeroes
        }
    };
    sync(&mut f, disk, size)?;
    Ok(method)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_disk_and_partition_ends() {
        let g = 1024 * MIB;
        let r = metadata_ranges(g, &[(MIB, 100 * MIB), (101 * MIB, g - 102 * MIB)]);
        assert_eq!(
            r,
            vec![(0, 2 * MIB), (100 * MIB, 2 * MIB), (g - 2 * MIB, 2 * MIB),],
            "the ends of adjacent regions merge"
        );
    }

    #[test]
    fn small_disks_and_bad_partitions_are_clipped() {
        assert_eq!(metadata_ranges(4096, &[]), vec![(0, 4096)]);
        assert_eq!(metadata_ranges(0, &[(0, 10)]), vec![]);
        assert_eq!(
            metadata_ranges(10 * MIB, &[(9 * MIB, 100 * MIB)]),
            vec![(0, MIB), (9 * MIB, MIB)]
        );
    }

    proptest::proptest! {
        #[test]
        fn ranges_are_sorted_disjoint_and_inside(size in 0u64..(1 << 40), parts in proptest::collection::vec((0u64..(1 << 40), 0u64..(1 << 40)), 0..6)) {
            let r = metadata_ranges(size, &parts);
            for w in r.windows(2) {
                proptest::prop_assert!(w[0].0 + w[0].1 < w[1].0);
            }
            for (s, l) in &r {
                proptest::prop_assert!(*l > 0 && s + l <= size);
            }
            if size > 0 {
                proptest::prop_assert_eq!(r[0].0, 0);
            }
        }
    }

    #[test]
    fn erase_metadata_and_disk_on_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("disk.img");
        std::fs::write(&p, vec![0xa5u8; (8 * MIB) as usize]).unwrap();
        let c = Counter::default();
        let n = erase_metadata(&p, &[(3 * MIB, 2 * MIB)], &c).unwrap();
        assert_eq!(n, 4 * MIB);
        let data = std::fs::read(&p).unwrap();
        let m = MIB as usize;
        assert!(data[..m].iter().all(|b| *b == 0));
        assert!(data[m..3 * m].iter().all(|b| *b == 0xa5));
        assert!(data[3 * m..5 * m].iter().all(|b| *b == 0));
        assert!(data[5 * m..7 * m].iter().all(|b| *b == 0xa5));
        assert!(data[7 * m..].iter().all(|b| *b == 0));
        assert_eq!(c.done.load(Ordering::Relaxed), 4 * MIB);

        let c = Counter::default();
        erase_disk(&p, &c).unwrap();
        let data = std::fs::read(&p).unwrap();
        assert_eq!(data.len(), 8 * m);
        assert!(data.iter().all(|b| *b == 0));
        assert_eq!(c.done.load(Ordering::Relaxed), 8 * MIB);
    }
}
