//! The EFI boot image: a small FAT file system holding `EFI/BOOT/BOOTX64.EFI`, built with `fatfs`, reproducibly.

use std::io::{self, Cursor, Write};

/// Builds a FAT image (FAT12 or FAT16, as the size requires) holding only `EFI/BOOT/BOOTX64.EFI`, for
/// [`IsoBuilder::efi_boot`]. Volume id, label (`KILN-EFI`) and all file dates are fixed, so the same input gives the
/// same bytes. The size is the file plus a little room for the file system structures, in whole 512-byte sectors.
///
/// # Errors
/// When fatfs fails (only for absurd sizes: FAT16 ends at 2 GiB).
pub fn efi_boot_image(bootx64_efi: &[u8]) -> io::Result<Vec<u8>> {
    let len = bootx64_efi.len() as u64;
    let mut size = (len + len / 64 + 64 * 1024).div_ceil(512) * 512;
    let mut last_err = None;
    for _ in 0..32 {
        match try_efi_boot_image(bootx64_efi, size) {
            Ok(img) => return Ok(img),
            Err(e) => last_err = Some(e),
        }
        // Too small (or an unlucky size at the FAT12/FAT16 boundary): grow and retry.
        size += (size / 32).max(64 * 1024).div_ceil(512) * 512;
    }
    Err(last_err.unwrap_or_else(|| io::Error::other("cannot build the EFI boot image")))
}

#[derive(Debug)]
pub(crate) struct FixedTime;

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> fatfs::Date {
        fatfs::Date {
            year: 2000,
            month: 1,
            day: 1,
        }
    }

    fn get_current_date_time(&self) -> fatfs::DateTime {
        fatfs::DateTime {
            date: self.get_current_date(),
            time: fatfs::Time {
                hour: 0,
                min: 0,
                sec: 0,
                millis: 0,
            },
        }
    }
}

pub(crate) static FIXED_TIME: FixedTime = FixedTime;

fn try_efi_boot_image(data: &[u8], size: u64) -> io::Result<Vec<u8>> {
    if size > (2 << 30) {
        return Err(io::Error::other("EFI boot image would exceed 2 GiB"));
    }
    let mut disk = Cursor::new(vec![0u8; size as usize]);
    let opts = fatfs::FormatVolumeOptions::new()
        .volume_label(*b"KILN-EFI   ")
        .volume_id(0x4b49_4c4e)
        .max_root_dir_entries(64);
    fatfs::format_volume(&mut disk, opts)?;
    {
        let fs = fatfs::FileSystem::new(
            &mut disk,
            fatfs::FsOptions::new()
                .time_provider(&FIXED_TIME)
                .update_accessed_date(false),
        )?;
        if fs.fat_type() == fatfs::FatType::Fat32 {
            return Err(io::Error::other("FAT32 chosen; retrying with another size"));
        }
        {
            let boot = fs.root_dir().create_dir("EFI")?.create_dir("BOOT")?;
            let mut f = boot.create_file("BOOTX64.EFI")?;
            f.truncate()?;
            f.write_all(data)?;
            f.flush()?;
        }
        fs.unmount()?;
    }
    let mut img = disk.into_inner();
    strip_long_names(&mut img);
    Ok(img)
}

/// fatfs 0.3 (with its default `alloc` feature) writes long-name entries in front of every directory entry, even
/// in front of `.` and `..`, which must be the first two entries of a directory (fsck.fat complains, firmware may
/// too). All names here are valid upper-case 8.3 names, so drop every long-name entry and compact the directories,
/// which gives what mkfs.fat + mtools would write. Each subdirectory here fits in its first cluster (at most a
/// handful of entries in at least 512 bytes), so only that cluster is rewritten.
fn strip_long_names(img: &mut [u8]) {
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([img[o], img[o + 1]]));
    let bytes_per_sector = u16_at(11);
    let cluster_bytes = usize::from(img[13]) * bytes_per_sector;
    let fats_end = (u16_at(14) + usize::from(img[16]) * u16_at(22)) * bytes_per_sector;
    let root_len = u16_at(17) * 32;
    let data_start = fats_end + root_len;
    let mut dirs = vec![(fats_end, root_len)];
    let mut i = 0;
    while i < dirs.len() {
        let (start, len) = dirs[i];
        let mut kept: Vec<u8> = Vec::with_capacity(len);
        for e in img[start..start + len].chunks_exact(32) {
            if e[0] == 0 {
                break;
            }
            if e[0] == 0xE5 || e[11] == 0x0F {
                continue; // deleted or long-name entry
            }
            kept.extend_from_slice(e);
            if e[11] & 0x10 != 0 && e[0] != b'.' {
                let cluster = usize::from(u16::from_le_bytes([e[26], e[27]]));
                dirs.push((data_start + (cluster - 2) * cluster_bytes, cluster_bytes));
            }
        }
        img[start..start + len].fill(0);
        img[start..start + kept.len()].copy_from_slice(&kept);
        i += 1;
    }
}
