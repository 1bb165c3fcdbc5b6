//! The OpenStack config drive: a VFAT filesystem labelled `config-2` holding `openstack/<version>/meta_data.json`,
//! `user_data` and `network_data.json` (the layout cloud-init's ConfigDrive datasource reads, see cloud-init
//! `sources/helpers/openstack.py`), and its placement on a freshly imaged disk as a new partition after the image's
//! last one.
//!
//! Placement: on a GPT disk the backup GPT is first moved to the real end of the disk (the image was smaller than
//! the disk), then a partition named `config-2` is added after the last partition; on an MBR disk a new primary
//! partition is added. **When there is no room** (no free GPT entry or MBR slot, no space after the last partition,
//! or no partition table at all), [`write_config_drive`] fails with `ConfigDrivePartition` and changes nothing: the
//! documented alternative is to hand the same image ([`build_config_drive`]) to the host as virtual media through
//! its BMC, where cloud-init finds it by its label just the same.

use std::fs::OpenOptions;
use std::io::{Cursor, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use sha2::Digest;

use crate::error::ImageError;
use crate::protocol::ConfigDrive;

/// Version directories written besides `latest` (the newest OpenStack metadata version cloud-init knows).
pub const VERSIONS: [&str; 2] = ["latest", "2018-08-27"];
/// Microsoft basic data partition type GUID (EBD0A0A2-B9E5-4433-87C0-68B6B72699C7) in on-disk byte order.
const BASIC_DATA: [u8; 16] = [
    0xa2, 0xa0, 0xd0, 0xeb, 0xe5, 0xb9, 0x33, 0x44, 0x87, 0xc0, 0x68, 0xb6, 0xb7, 0x26, 0x99, 0xc7,
];
const ALIGN_BYTES: u64 = 1 << 20;

/// The files of a config drive, path → contents (pure; exposed for tests and previews).
pub fn files(drive: &ConfigDrive) -> Vec<(String, Vec<u8>)> {
    let mut meta = drive.meta_data.clone();
    if let Some(obj) = meta.as_object_mut()
        && !obj.contains_key("uuid")
    {
        // cloud-init requires a uuid; derive a stable one from the contents.
        let h = sha2::Sha256::digest(serde_json::to_vec(&drive.meta_data).unwrap_or_default());
        let x = hex::encode(&h[..16]);
        obj.insert(
            "uuid".into(),
            format!("{}-{}-{}-{}-{}", &x[..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32]).into(),
        );
    }
    let mut out = Vec::new();
    for v in VERSIONS {
        let dir = format!("openstack/{v}");
        out.push((
            format!("{dir}/meta_data.json"),
            serde_json::to_vec_pretty(&meta).unwrap_or_default(),
        ));
        if let Some(u) = &drive.user_data {
            out.push((format!("{dir}/user_data"), u.as_bytes().to_vec()));
        }
        if let Some(n) = &drive.network_data {
            out.push((
                format!("{dir}/network_data.json"),
                serde_json::to_vec_pretty(n).unwrap_or_default(),
            ));
        }
    }
    out
}

/// Builds the config drive filesystem image (VFAT, label `config-2`, volume id derived from the contents so the same
/// input gives the same bytes). At least 16 MiB, a multiple of 1 MiB.
///
/// # Errors
/// `ConfigDriveBuild` if fatfs fails.
pub fn build_config_drive(drive: &ConfigDrive) -> Result<Vec<u8>, ImageError> {
    let files = files(drive);
    let content: u64 = files.iter().map(|(_, d)| d.len() as u64).sum();
    let size = (16 << 20).max((content * 2 + (4 << 20)).div_ceil(ALIGN_BYTES) * ALIGN_BYTES);
    let mut h = sha2::Sha256::new();
    for (p, d) in &files {
        h.update(p.as_bytes());
        h.update(d);
    }
    let digest = h.finalize();
    let volume_id = u32::from_le_bytes([digest[0], digest[1], digest[2], digest[3]]);
    let mut disk = Cursor::new(vec![0u8; size as usize]);
    let err = ImageError::ConfigDriveBuild;
    let opts = fatfs::FormatVolumeOptions::new()
        .volume_label(*b"config-2   ")
        .volume_id(volume_id);
    fatfs::format_volume(&mut disk, opts).map_err(err)?;
    {
        // Fixed timestamps, like the volume id derived from the content: the same data gives the same image.
        let fs = fatfs::FileSystem::new(
            &mut disk,
            fatfs::FsOptions::new()
                .time_provider(&crate::iso::FIXED_TIME)
                .update_accessed_date(false),
        )
        .map_err(err)?;
        let root = fs.root_dir();
        for (path, data) in &files {
            let (dir, name) = path.rsplit_once('/').expect("paths have a directory");
            let mut d = root.clone();
            for part in dir.split('/') {
                d = match d.open_dir(part) {
                    Ok(x) => x,
                    Err(_) => d.create_dir(part).map_err(err)?,
                };
            }
            let mut f = d.create_file(name).map_err(err)?;
            f.truncate().map_err(err)?;
            f.write_all(data).map_err(err)?;
        }
    }
    Ok(disk.into_inner())
}

/// Where the config drive went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// 1-based partition number.
    pub partition: u32,
    pub start_byte: u64,
    pub size_bytes: u64,
    /// `gpt` or `mbr`.
    pub table: &'static str,
}

/// Builds the config drive and writes it to `disk` (an imaged block device or disk file) as a new partition after
/// the last one. See the module docs for the no-room alternative.
///
/// # Errors
/// `ConfigDrivePartition` when no partition can be added (nothing is changed then), `ConfigDriveIo` on I/O errors.
pub fn write_config_drive(disk: &Path, drive: &ConfigDrive) -> Result<Placement, ImageError> {
    let image = build_config_drive(drive)?;
    let io = |source| ImageError::ConfigDriveIo {
        disk: disk.to_owned(),
        source,
    };
    let mut f = OpenOptions::new().read(true).write(true).open(disk).map_err(io)?;
    let is_block = f
        .metadata()
        .map(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type()));
    let placement = match gptman::GPT::find_from(&mut f) {
        Ok(gpt) => add_gpt_partition(&mut f, gpt, &image, disk)?,
        Err(_) => add_mbr_partition(&mut f, &image, disk)?,
    };
    f.write_all_at(&image, placement.start_byte).map_err(io)?;
    f.sync_all().map_err(io)?;
    if is_block.unwrap_or(false) {
        let _ = gptman::linux::reread_partition_table(&mut f);
    }
    tracing::info!(disk = %disk.display(), partition = placement.partition, table = placement.table,
        "config drive written");
    Ok(placement)
}

fn no_room(disk: &Path, reason: impl Into<String>) -> ImageError {
    ImageError::ConfigDrivePartition {
        disk: disk.to_owned(),
        reason: reason.into(),
    }
}

fn add_gpt_partition(
    f: &mut std::fs::File,
    mut gpt: gptman::GPT,
    image: &[u8],
    disk: &Path,
) -> Result<Placement, ImageError> {
    let ss = gpt.sector_size;
    let gerr = |e: gptman::Error| no_room(disk, format!("GPT: {e}"));
    // Move the backup GPT to the real end of the disk (like `sgdisk -e`).
    gpt.header.update_from(f, ss).map_err(gerr)?;
    let last_end = gpt
        .iter()
        .filter(|(_, p)| p.is_used())
        .map(|(_, p)| p.ending_lba)
        .max()
        .unwrap_or(0);
    let align = ALIGN_BYTES / ss;
    let start = (last_end + 1).max(gpt.header.first_usable_lba).div_ceil(align) * align;
    let sectors = image.len() as u64 / ss;
    let end = start + sectors - 1;
    if end > gpt.header.last_usable_lba {
        return Err(no_room(
            disk,
            format!(
                "needs sectors {start}..={end}, disk ends at {}",
                gpt.header.last_usable_lba
            ),
        ));
    }
    let Some((slot, _)) = gpt.iter().find(|(_, p)| p.is_unused()) else {
        return Err(no_room(disk, "no free GPT partition entry"));
    };
    let mut guid = [0u8; 16];
    guid.copy_from_slice(&sha2::Sha256::digest([image, &start.to_le_bytes()].concat())[..16]);
    guid[7] = (guid[7] & 0x0f) | 0x40; // version 4 (mixed-endian field 3, high byte)
    guid[8] = (guid[8] & 0x3f) | 0x80;
    gpt[slot] = gptman::GPTPartitionEntry {
        partition_type_guid: BASIC_DATA,
        unique_partition_guid: guid,
        starting_lba: start,
        ending_lba: end,
        attribute_bits: 0,
        partition_name: "config-2".into(),
    };
    gpt.write_into(f).map_err(gerr)?;
    fix_protective_mbr(f, ss).map_err(|source| ImageError::ConfigDriveIo {
        disk: disk.to_owned(),
        source,
    })?;
    Ok(Placement {
        partition: slot,
        start_byte: start * ss,
        size_bytes: sectors * ss,
        table: "gpt",
    })
}

/// Grows the protective MBR's 0xEE entry to the (new) disk size, leaving boot code and flags alone.
fn fix_protective_mbr(f: &mut std::fs::File, ss: u64) -> std::io::Result<()> {
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0)?;
    if mbr[510..512] != [0x55, 0xaa] || mbr[446 + 4] != 0xee {
        return Ok(());
    }
    let len = f.seek(SeekFrom::End(0))? / ss;
    let size = u32::try_from(len - 1).unwrap_or(u32::MAX);
    f.write_all_at(&size.to_le_bytes(), 446 + 12)
}

fn add_mbr_partition(f: &mut std::fs::File, image: &[u8], disk: &Path) -> Result<Placement, ImageError> {
    let io = |source| ImageError::ConfigDriveIo {
        disk: disk.to_owned(),
        source,
    };
    let mut mbr = [0u8; 512];
    f.read_exact_at(&mut mbr, 0).map_err(io)?;
    if mbr[510..512] != [0x55, 0xaa] {
        return Err(no_room(disk, "the image has no partition table"));
    }
    let entry = |i: usize| &mbr[446 + 16 * i..446 + 16 * (i + 1)];
    let le = |b: &[u8]| u64::from(u32::from_le_bytes(b.try_into().expect("4 bytes")));
    let mut last_end = 0u64;
    let mut free = None;
    for i in 0..4 {
        let e = entry(i);
        if e[4] == 0 {
            free = free.or(Some(i));
        } else {
            last_end = last_end.max(le(&e[8..12]) + le(&e[12..16]));
        }
    }
    let Some(slot) = free else {
        return Err(no_room(disk, "all four MBR primary partitions are in use"));
    };
    let disk_sectors = f.seek(SeekFrom::End(0)).map_err(io)? / 512;
    let start = last_end.max(2048).div_ceil(2048) * 2048;
    let sectors = image.len() as u64 / 512;
    if start + sectors > disk_sectors.min(u64::from(u32::MAX)) {
        return Err(no_room(
            disk,
            format!("needs sectors {start}..{}, disk has {disk_sectors}", start + sectors),
        ));
    }
    let mut e = [0u8; 16];
    e[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]); // CHS unused (LBA addressing)
    e[4] = 0x0c; // FAT32 (LBA); blkid and cloud-init go by the filesystem, not the type byte
    e[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    e[8..12].copy_from_slice(&(start as u32).to_le_bytes());
    e[12..16].copy_from_slice(&(sectors as u32).to_le_bytes());
    f.write_all_at(&e, 446 + 16 * slot as u64).map_err(io)?;
    Ok(Placement {
        partition: slot as u32 + 1,
        start_byte: start * 512,
        size_bytes: sectors * 512,
        table: "mbr",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn files_cover_latest_and_dated_versions_and_add_a_uuid() {
        let d = ConfigDrive {
            meta_data: serde_json::json!({"hostname": "h1"}),
            user_data: Some("#cloud-config\n".into()),
            network_data: None,
        };
        let f = files(&d);
        let names: Vec<&str> = f.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "openstack/latest/meta_data.json",
                "openstack/latest/user_data",
                "openstack/2018-08-27/meta_data.json",
                "openstack/2018-08-27/user_data"
            ]
        );
        let meta: serde_json::Value = serde_json::from_slice(&f[0].1).unwrap();
        assert_eq!(meta["uuid"].as_str().unwrap().len(), 36);
        assert_eq!(
            build_config_drive(&d).unwrap(),
            build_config_drive(&d).unwrap(),
            "reproducible"
        );
    }
}
