//! A small, reproducible ISO 9660 (ECMA-119) writer with El Torito boot entries, for the per-boot virtual media
//! ISOs kiln hands to BMCs (kernel, initramfs, GRUB config, EFI boot image).
//!
//! [`IsoBuilder`] collects files and boot entries; [`IsoBuilder::build`] validates names and lays the image out as an
//! [`IsoImage`]: a list of segments (one in-memory block of metadata sectors, then each file's bytes from its `Arc`
//! or from its open file), so large kernels and initramfs images are never copied. [`IsoImage::read_at`] serves any
//! byte range (HTTP Range requests) and [`IsoImage::write_to`] streams the whole image.
//!
//! What is written: 16 zero sectors of system area, the Primary Volume Descriptor at sector 16, an El Torito Boot
//! Record when a boot entry exists, the terminator, the boot catalog, L and M path tables, the directories (breadth
//! first, as the path table orders them) and the file data, each extent starting on a 2048-byte sector and zero
//! padded. Names follow ISO 9660 level 2 without extensions (no Rock Ridge, no Joliet): upper-case d-characters
//! (`A`-`Z`, `0`-`9`, `_`), file identifiers `NAME.EXT;1`, at most 8 directory levels. GRUB and Linux show these
//! names in lower case without the `;1` version.
//!
//! The boot catalog matches what `xorriso -as mkisofs` (and so `grub-mkrescue`) writes: a BIOS no-emulation entry
//! as the default entry and the EFI entry (platform 0xEF) behind a final section header when both exist; an EFI-only
//! image puts the EFI entry in the default slot with platform 0xEF in the validation entry. The EFI entry's sector
//! count is the image size in 512-byte units (rounded up to whole 2048-byte sectors), or 0 when that exceeds 65535,
//! so the firmware takes the whole file.
//!
//! Every recorded date is the builder's [`timestamp`](IsoBuilder::timestamp) (a fixed constant by default), and
//! directories and files are laid out in sorted order regardless of the order they were added, so the same inputs
//! always give the same bytes. [`efi_boot_image`] builds the FAT image holding `EFI/BOOT/BOOTX64.EFI`, equally
//! reproducibly.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Cursor, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

/// Bytes per ISO 9660 logical sector (and logical block).
pub const SECTOR: u64 = 2048;
/// Zero sectors after the last file (300 KiB, as mkisofs' `-pad`).
const TRAILING_PAD_SECTORS: u64 = 150;

/// The default for all recorded dates: 2000-01-01T00:00:00Z.
pub const DEFAULT_TIMESTAMP: i64 = 946_684_800;

/// The contents of one file of the image.
#[derive(Debug, Clone)]
pub enum Content {
    /// Bytes held in memory.
    Bytes(Arc<[u8]>),
    /// A file on disk, `len` bytes long. It is opened by [`IsoBuilder::build`] (which checks the length) and read
    /// through that open handle afterwards, so it must not change while the image is served.
    File { path: PathBuf, len: u64 },
}

impl From<Vec<u8>> for Content {
    fn from(v: Vec<u8>) -> Self {
        Content::Bytes(v.into())
    }
}

impl From<&[u8]> for Content {
    fn from(v: &[u8]) -> Self {
        Content::Bytes(v.into())
    }
}

/// Why an image could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IsoError {
    #[error("invalid volume id {id:?}: {reason}")]
    InvalidVolumeId { id: String, reason: &'static str },
    #[error("invalid ISO 9660 path {path:?}: {reason}")]
    InvalidPath { path: String, reason: &'static str },
    #[error("path {path:?} is given twice (or as both a file and a directory)")]
    DuplicatePath { path: String },
    #[error("file {path:?} is {len} bytes; ISO 9660 extents are limited to 4 GiB - 1")]
    FileTooLarge { path: String, len: u64 },
    #[error("image too large: {sectors} sectors")]
    ImageTooLarge { sectors: u64 },
    #[error("timestamp {0} is outside the years 1900-2155 that ISO 9660 directory records can hold")]
    TimestampOutOfRange(i64),
    #[error("boot file {path:?} is not a file of the image")]
    BootFileMissing { path: String },
    #[error("boot file {path:?} is {len} bytes, too short for a boot info table (at least 64 bytes)")]
    BootFileTooShort { path: String, len: u64 },
    #[error("{path} is {actual} bytes, expected {expected}")]
    LengthMismatch { path: PathBuf, expected: u64, actual: u64 },
    #[error("reading {path} failed")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

#[derive(Debug, Clone)]
struct BiosBoot {
    path: String,
    load_sectors: u16,
    boot_info_table: bool,
}

/// Collects files and boot entries for an ISO image; see the [module docs](self).
#[derive(Debug, Clone)]
pub struct IsoBuilder {
    volume_id: String,
    timestamp: i64,
    files: Vec<(String, Content)>,
    efi: Option<String>,
    bios: Option<BiosBoot>,
}

impl IsoBuilder {
    /// Starts an image with this volume id (1 to 32 upper-case d-characters; checked by [`build`](Self::build)).
    pub fn new(volume_id: &str) -> Self {
        IsoBuilder {
            volume_id: volume_id.to_owned(),
            timestamp: DEFAULT_TIMESTAMP,
            files: Vec::new(),
            efi: None,
            bios: None,
        }
    }

    /// Sets the date recorded everywhere (volume descriptor and directory records), in seconds since the Unix epoch,
    /// written as UTC. Defaults to [`DEFAULT_TIMESTAMP`].
    pub fn timestamp(mut self, unix_secs: i64) -> Self {
        self.timestamp = unix_secs;
        self
    }

    /// Adds a file at `iso_path`, e.g. `KILN/VMLINUZ` or `EFI/BOOT.IMG` (a leading `/` is allowed). Directories are
    /// created implicitly. A file name without a dot is recorded as `NAME.;1`.
    pub fn file(mut self, iso_path: &str, content: Content) -> Self {
        self.files.push((iso_path.to_owned(), content));
        self
    }

    /// Adds an El Torito UEFI (platform 0xEF) no-emulation boot entry for the file at `iso_path` (a FAT image, see
    /// [`efi_boot_image`]). The file must be added with [`file`](Self::file).
    pub fn efi_boot(mut self, iso_path: &str) -> Self {
        self.efi = Some(iso_path.to_owned());
        self
    }

    /// Adds an El Torito x86 BIOS no-emulation boot entry for the file at `iso_path`, loading `load_sectors`
    /// 512-byte sectors (GRUB's `i386-pc/eltorito.img`: 4). With `boot_info_table` the file's bytes 8..64 are
    /// replaced by a boot info table like `mkisofs -boot-info-table` writes (PVD sector, file sector, file length,
    /// checksum of the bytes from offset 64 on); the file is then read into memory.
    pub fn bios_boot(mut self, iso_path: &str, load_sectors: u16, boot_info_table: bool) -> Self {
        self.bios = Some(BiosBoot {
            path: iso_path.to_owned(),
            load_sectors,
            boot_info_table,
        });
        self
    }

    /// Validates everything and lays the image out.
    ///
    /// # Errors
    /// Invalid volume id, path or timestamp, duplicate paths, files of 4 GiB or more, boot entries naming a file
    /// that was not added, on-disk files that cannot be opened or whose length differs from the given one.
    pub fn build(self) -> Result<IsoImage, IsoError> {
        validate_volume_id(&self.volume_id)?;
        let date = DateTime::from_unix(self.timestamp)?;

        // The directory tree, as an arena; index 0 is the root.
        let mut dirs = vec![DirNode {
            ident: String::new(),
            parent: 0,
            subdirs: BTreeMap::new(),
            files: BTreeMap::new(),
        }];
        let mut files: Vec<FileNode> = Vec::with_capacity(self.files.len());
        let mut by_path: BTreeMap<String, usize> = BTreeMap::new();
        for (path, content) in self.files {
            let parsed = parse_path(&path)?;
            let mut d = 0;
            for comp in &parsed.dirs {
                if dirs[d].files.contains_key(comp.as_str()) {
                    return Err(IsoError::DuplicatePath { path });
                }
                d = match dirs[d].subdirs.get(comp) {
                    Some(&i) => i,
                    None => {
                        dirs.push(DirNode {
                            ident: comp.clone(),
                            parent: d,
                            subdirs: BTreeMap::new(),
                            files: BTreeMap::new(),
                        });
                        let i = dirs.len() - 1;
                        dirs[d].subdirs.insert(comp.clone(), i);
                        i
                    }
                };
            }
            let key = parsed.file_key();
            if dirs[d].files.contains_key(&key)
                || (parsed.ext.is_empty() && dirs[d].subdirs.contains_key(&parsed.name))
                || by_path.contains_key(&parsed.full)
            {
                return Err(IsoError::DuplicatePath { path });
            }
            let (source, len) = open_content(content)?;
            if len > u64::from(u32::MAX) {
                return Err(IsoError::FileTooLarge { path, len });
            }
            files.push(FileNode {
                ident: format!("{}.{};1", parsed.name, parsed.ext),
                source,
                len,
                lba: 0,
            });
            dirs[d].files.insert(key, files.len() - 1);
            by_path.insert(parsed.full, files.len() - 1);
        }
        // A file that sits where a directory was created later ("A" then "A/B") is caught here.
        for dir in &dirs {
            for name in dir.subdirs.keys() {
                if dir.files.contains_key(name.as_str()) {
                    return Err(IsoError::DuplicatePath { path: name.clone() });
                }
            }
        }

        let find_boot = |path: &str| -> Result<usize, IsoError> {
            let missing = || IsoError::BootFileMissing { path: path.to_owned() };
            let parsed = parse_path(path).map_err(|_| missing())?;
            by_path.get(&parsed.full).copied().ok_or_else(missing)
        };
        let efi = self.efi.as_deref().map(find_boot).transpose()?;
        let bios = match &self.bios {
            Some(b) => Some((find_boot(&b.path)?, b)),
            None => None,
        };
        let has_boot = efi.is_some() || bios.is_some();

        // Breadth-first directory order: the path table order (level, parent number, identifier).
        let mut order = vec![0usize];
        let mut i = 0;
        while i < order.len() {
            order.extend(dirs[order[i]].subdirs.values().copied());
            i += 1;
        }
        let mut number = vec![0usize; dirs.len()]; // 1-based directory numbers
        for (n, &d) in order.iter().enumerate() {
            number[d] = n + 1;
        }
        if dirs.len() > usize::from(u16::MAX) {
            return Err(IsoError::ImageTooLarge {
                sectors: dirs.len() as u64,
            });
        }

        // Each directory's records in the required order: ".", "..", then children by (name, extension).
        let children: Vec<Vec<Child>> = dirs
            .iter()
            .map(|dir| {
                let mut c: Vec<(String, String, Child)> = dir
                    .subdirs
                    .iter()
                    .map(|(n, &i)| (n.clone(), String::new(), Child::Dir(i)))
                    .chain(dir.files.iter().map(|(k, &i)| {
                        let (n, e) = k.split_once('.').unwrap_or((k, ""));
                        (n.to_owned(), e.to_owned(), Child::File(i))
                    }))
                    .collect();
                c.sort_by(|a, b| (a.0.as_bytes(), a.1.as_bytes()).cmp(&(b.0.as_bytes(), b.1.as_bytes())));
                c.into_iter().map(|(_, _, ch)| ch).collect()
            })
            .collect();
        // Record offsets inside each directory extent, and its length in sectors.
        let packed: Vec<(Vec<usize>, u64)> = children
            .iter()
            .map(|ch| {
                let mut lens = vec![record_len(1), record_len(1)];
                lens.extend(ch.iter().map(|c| match c {
                    Child::Dir(i) => record_len(dirs[*i].ident.len()),
                    Child::File(i) => record_len(files[*i].ident.len()),
                }));
                pack_records(&lens)
            })
            .collect();
        let dir_sectors: Vec<u64> = packed.iter().map(|p| p.1).collect();

        let path_table_len: usize = order
            .iter()
            .map(|&d| {
                let l = dirs[d].ident.len().max(1);
                8 + l + l % 2
            })
            .sum();
        let pt_sectors = (path_table_len as u64).div_ceil(SECTOR);

        // Sector assignment.
        let mut next: u64 = 17;
        let boot_record_lba = if has_boot {
            next += 1;
            Some(next - 1)
        } else {
            None
        };
        next += 1; // terminator
        let catalog_lba = if has_boot {
            next += 1;
            next - 1
        } else {
            0
        };
        let l_table_lba = next;
        let m_table_lba = l_table_lba + pt_sectors;
        next = m_table_lba + pt_sectors;
        let mut dir_lba = vec![0u64; dirs.len()];
        for &d in &order {
            dir_lba[d] = next;
            next += dir_sectors[d];
        }
        let meta_sectors = next;
        for &d in &order {
            for &f in dirs[d].files.values() {
                files[f].lba = next;
                next += files[f].len.div_ceil(SECTOR);
            }
        }
        // Zero padding after the last file, inside the volume, as mkisofs and xorriso add by default: a BIOS that
        // reads ahead past the end of a virtual CD hands GRUB garbage for the last file's tail (the kernel, here),
        // and the host reboots as it starts it. Found booting kiln's ISO with SeaBIOS; xorriso's boots the same files.
        next += TRAILING_PAD_SECTORS;
        let total_sectors = next;
        if total_sectors > u64::from(u32::MAX) {
            return Err(IsoError::ImageTooLarge { sectors: total_sectors });
        }

        // Boot info table: patch a copy of the BIOS boot file.
        if let Some((f, b)) = bios
            && b.boot_info_table
        {
            let file = &files[f];
            if file.len < 64 {
                return Err(IsoError::BootFileTooShort {
                    path: b.path.clone(),
                    len: file.len,
                });
            }
            let mut data = file.source.read_all(file.len, &b.path)?;
            patch_boot_info_table(&mut data, 16, file.lba as u32);
            files[f].source = Source::Bytes(data.into());
        }

        // The metadata sectors.
        let mut meta = vec![0u8; (meta_sectors * SECTOR) as usize];
        let date7 = date.record_date();
        let date17 = date.volume_date();
        let dir_size = |d: usize| (dir_sectors[d] * SECTOR) as u32;

        // Directories.
        for &d in &order {
            let offsets = &packed[d].0;
            let base = (dir_lba[d] * SECTOR) as usize;
            let parent = dirs[d].parent;
            let mut recs: Vec<Vec<u8>> = vec![
                dir_record(&[0], dir_lba[d] as u32, dir_size(d), true, &date7),
                dir_record(&[1], dir_lba[parent] as u32, dir_size(parent), true, &date7),
            ];
            for c in &children[d] {
                recs.push(match c {
                    Child::Dir(i) => dir_record(
                        dirs[*i].ident.as_bytes(),
                        dir_lba[*i] as u32,
                        dir_size(*i),
                        true,
                        &date7,
                    ),
                    Child::File(i) => {
                        let f = &files[*i];
                        dir_record(f.ident.as_bytes(), f.lba as u32, f.len as u32, false, &date7)
                    }
                });
            }
            for (rec, &off) in recs.iter().zip(offsets) {
                meta[base + off..base + off + rec.len()].copy_from_slice(rec);
            }
        }

        // Path tables.
        let mut l_table = Vec::with_capacity(path_table_len);
        let mut m_table = Vec::with_capacity(path_table_len);
        for &d in &order {
            let ident: &[u8] = if d == 0 { &[0] } else { dirs[d].ident.as_bytes() };
            let parent_no = number[dirs[d].parent] as u16;
            let lba = dir_lba[d] as u32;
            for (t, big) in [(&mut l_table, false), (&mut m_table, true)] {
                t.push(ident.len() as u8);
                t.push(0);
                t.extend_from_slice(&if big { lba.to_be_bytes() } else { lba.to_le_bytes() });
                t.extend_from_slice(&if big {
                    parent_no.to_be_bytes()
                } else {
                    parent_no.to_le_bytes()
                });
                t.extend_from_slice(ident);
                if ident.len() % 2 == 1 {
                    t.push(0);
                }
            }
        }
        let at = |lba: u64| (lba * SECTOR) as usize;
        meta[at(l_table_lba)..at(l_table_lba) + path_table_len].copy_from_slice(&l_table);
        meta[at(m_table_lba)..at(m_table_lba) + path_table_len].copy_from_slice(&m_table);

        // Primary volume descriptor.
        {
            let p = &mut meta[at(16)..at(17)];
            p[0] = 1;
            p[1..6].copy_from_slice(b"CD001");
            p[6] = 1;
            p[8..40].fill(b' '); // system identifier
            p[40..72].fill(b' ');
            p[40..40 + self.volume_id.len()].copy_from_slice(self.volume_id.as_bytes());
            p[80..88].copy_from_slice(&both32(total_sectors as u32));
            p[120..124].copy_from_slice(&both16(1)); // volume set size
            p[124..128].copy_from_slice(&both16(1)); // volume sequence number
            p[128..132].copy_from_slice(&both16(SECTOR as u16));
            p[132..140].copy_from_slice(&both32(path_table_len as u32));
            p[140..144].copy_from_slice(&(l_table_lba as u32).to_le_bytes());
            p[148..152].copy_from_slice(&(m_table_lba as u32).to_be_bytes());
            let root = dir_record(&[0], dir_lba[0] as u32, dir_size(0), true, &date7);
            p[156..190].copy_from_slice(&root);
            p[190..813].fill(b' '); // volume set, publisher, preparer, application, copyright, abstract, biblio
            p[813..830].copy_from_slice(&date17); // creation
            p[830..847].copy_from_slice(&date17); // modification
            p[847..863].fill(b'0'); // expiration: not specified
            p[864..880].fill(b'0'); // effective: not specified
            p[881] = 1; // file structure version
        }
        let term = boot_record_lba.map_or(17, |l| l + 1);
        if let Some(br) = boot_record_lba {
            let p = &mut meta[at(br)..at(br + 1)];
            p[1..6].copy_from_slice(b"CD001");
            p[6] = 1;
            p[7..7 + 23].copy_from_slice(b"EL TORITO SPECIFICATION");
            p[71..75].copy_from_slice(&(catalog_lba as u32).to_le_bytes());
        }
        {
            let p = &mut meta[at(term)..at(term + 1)];
            p[0] = 255;
            p[1..6].copy_from_slice(b"CD001");
            p[6] = 1;
        }
        if has_boot {
            let bios = bios.map(|(f, b)| (files[f].lba as u32, b.load_sectors));
            let efi = efi.map(|f| (files[f].lba as u32, efi_sector_count(files[f].len)));
            let cat = boot_catalog(bios, efi);
            meta[at(catalog_lba)..at(catalog_lba) + cat.len()].copy_from_slice(&cat);
        }

        let mut segments = vec![Segment {
            start: 0,
            len: meta.len() as u64,
            source: Source::Bytes(meta.into()),
        }];
        let mut placed: Vec<&FileNode> = files.iter().filter(|f| f.len > 0).collect();
        placed.sort_by_key(|f| f.lba);
        segments.extend(placed.into_iter().map(|f| Segment {
            start: f.lba * SECTOR,
            len: f.len,
            source: f.source.clone(),
        }));
        Ok(IsoImage {
            len: total_sectors * SECTOR,
            segments,
        })
    }
}

/// A laid-out ISO image: the metadata sectors in memory and each file's bytes where they came from. Cheap to clone;
/// `Send + Sync`, so one image can serve concurrent range requests.
#[derive(Debug, Clone)]
pub struct IsoImage {
    len: u64,
    segments: Vec<Segment>,
}

impl IsoImage {
    /// The image size in bytes (a multiple of 2048).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Always false: an image holds at least its volume descriptors.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads the image bytes at `offset` into `buf`, as many as fit and exist: returns 0 at or past the end,
    /// otherwise `min(buf.len(), len - offset)`. Any range works; gaps between extents read as zeros.
    ///
    /// # Errors
    /// I/O errors reading a file's contents (including the file having shrunk).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let n = (buf.len() as u64).min(self.len - offset) as usize;
        let buf = &mut buf[..n];
        let mut done = 0usize;
        // First segment that ends after the offset.
        let mut idx = self.segments.partition_point(|s| s.start + s.len <= offset);
        while done < n {
            let pos = offset + done as u64;
            let rest = n - done;
            match self.segments.get(idx) {
                Some(seg) if pos >= seg.start => {
                    let k = rest.min((seg.start + seg.len - pos) as usize);
                    seg.source.read_exact_at(pos - seg.start, &mut buf[done..done + k])?;
                    done += k;
                    idx += 1;
                }
                Some(seg) => {
                    let k = rest.min((seg.start - pos) as usize);
                    buf[done..done + k].fill(0);
                    done += k;
                }
                None => {
                    buf[done..].fill(0);
                    done = n;
                }
            }
        }
        Ok(n)
    }

    /// Writes the whole image to `w` and returns the number of bytes written ([`len`](Self::len)).
    ///
    /// # Errors
    /// I/O errors from `w` or from reading a file's contents.
    pub fn write_to(&self, w: &mut impl Write) -> io::Result<u64> {
        const CHUNK: usize = 1 << 20;
        let zeros = vec![0u8; 64 * 1024];
        let write_zeros = |w: &mut dyn Write, mut n: u64| -> io::Result<()> {
            while n > 0 {
                let k = n.min(zeros.len() as u64) as usize;
                w.write_all(&zeros[..k])?;
                n -= k as u64;
            }
            Ok(())
        };
        let mut pos = 0u64;
        let mut buf = Vec::new();
        for seg in &self.segments {
            write_zeros(w, seg.start - pos)?;
            match &seg.source {
                Source::Bytes(b) => w.write_all(b)?,
                Source::File(f) => {
                    buf.resize(CHUNK.min(seg.len as usize), 0);
                    let mut off = 0u64;
                    while off < seg.len {
                        let k = (seg.len - off).min(CHUNK as u64) as usize;
                        f.read_exact_at(&mut buf[..k], off)?;
                        w.write_all(&buf[..k])?;
                        off += k as u64;
                    }
                }
            }
            pos = seg.start + seg.len;
        }
        write_zeros(w, self.len - pos)?;
        Ok(self.len)
    }
}

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

// ---- internals ----

#[derive(Debug, Clone)]
enum Source {
    Bytes(Arc<[u8]>),
    File(Arc<File>),
}

impl Source {
    fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        match self {
            Source::Bytes(b) => {
                let o = offset as usize;
                buf.copy_from_slice(&b[o..o + buf.len()]);
                Ok(())
            }
            Source::File(f) => f.read_exact_at(buf, offset),
        }
    }

    fn read_all(&self, len: u64, path: &str) -> Result<Vec<u8>, IsoError> {
        let mut v = vec![0u8; len as usize];
        self.read_exact_at(0, &mut v).map_err(|source| IsoError::Io {
            path: PathBuf::from(path),
            source,
        })?;
        Ok(v)
    }
}

#[derive(Debug, Clone)]
struct Segment {
    start: u64,
    len: u64,
    source: Source,
}

#[derive(Debug)]
struct DirNode {
    ident: String,
    parent: usize,
    subdirs: BTreeMap<String, usize>,
    /// Keyed by `NAME.EXT` (without version).
    files: BTreeMap<String, usize>,
}

#[derive(Debug)]
struct FileNode {
    ident: String,
    source: Source,
    len: u64,
    lba: u64,
}

#[derive(Debug, Clone, Copy)]
enum Child {
    Dir(usize),
    File(usize),
}

fn open_content(content: Content) -> Result<(Source, u64), IsoError> {
    match content {
        Content::Bytes(b) => {
            let len = b.len() as u64;
            Ok((Source::Bytes(b), len))
        }
        Content::File { path, len } => {
            let io = |source| IsoError::Io {
                path: path.clone(),
                source,
            };
            let f = File::open(&path).map_err(io)?;
            let actual = f.metadata().map_err(io)?.len();
            if actual != len {
                return Err(IsoError::LengthMismatch {
                    path,
                    expected: len,
                    actual,
                });
            }
            Ok((Source::File(Arc::new(f)), len))
        }
    }
}

fn is_d_char(c: u8) -> bool {
    c.is_ascii_uppercase() || c.is_ascii_digit() || c == b'_'
}

fn validate_volume_id(id: &str) -> Result<(), IsoError> {
    let err = |reason| {
        Err(IsoError::InvalidVolumeId {
            id: id.to_owned(),
            reason,
        })
    };
    if id.is_empty() {
        return err("empty");
    }
    if id.len() > 32 {
        return err("longer than 32 characters");
    }
    if !id.bytes().all(is_d_char) {
        return err("only A-Z, 0-9 and _ are allowed");
    }
    Ok(())
}

#[derive(Debug, PartialEq, Eq)]
struct ParsedPath {
    dirs: Vec<String>,
    name: String,
    ext: String,
    /// Normalized: components joined by `/`, no leading slash.
    full: String,
}

impl ParsedPath {
    fn file_key(&self) -> String {
        if self.ext.is_empty() {
            self.name.clone()
        } else {
            format!("{}.{}", self.name, self.ext)
        }
    }
}

/// Splits and checks an image path: directory identifiers of 1-31 d-characters, at most 7 directories deep (8
/// levels with the root), a file identifier `NAME[.EXT]` of d-characters with name + extension at most 30
/// characters, the whole path at most 255 characters.
fn parse_path(path: &str) -> Result<ParsedPath, IsoError> {
    let err = |reason| {
        Err(IsoError::InvalidPath {
            path: path.to_owned(),
            reason,
        })
    };
    let p = path.strip_prefix('/').unwrap_or(path);
    if p.is_empty() {
        return err("empty");
    }
    if p.len() > 255 {
        return err("longer than 255 characters");
    }
    let mut comps: Vec<&str> = p.split('/').collect();
    let file = comps.pop().unwrap_or_default();
    if comps.len() > 7 {
        return err("more than 8 directory levels");
    }
    for c in &comps {
        if c.is_empty() {
            return err("empty path component");
        }
        if c.len() > 31 {
            return err("directory name longer than 31 characters");
        }
        if !c.bytes().all(is_d_char) {
            return err("directory names may only hold A-Z, 0-9 and _");
        }
    }
    if file.is_empty() {
        return err("no file name");
    }
    let (name, ext) = file.split_once('.').unwrap_or((file, ""));
    if !name.bytes().all(is_d_char) || !ext.bytes().all(is_d_char) {
        return err("file names may only hold A-Z, 0-9, _ and one dot");
    }
    if name.len() + ext.len() > 30 {
        return err("file name and extension longer than 30 characters");
    }
    Ok(ParsedPath {
        dirs: comps.iter().map(|c| (*c).to_owned()).collect(),
        name: name.to_owned(),
        ext: ext.to_owned(),
        full: p.to_owned(),
    })
}

fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

fn both32(v: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..].copy_from_slice(&v.to_be_bytes());
    out
}

/// Length of a directory record with an identifier of `ident_len` bytes (padded to an even length).
fn record_len(ident_len: usize) -> usize {
    33 + ident_len + (ident_len + 1) % 2
}

/// Places records one after another, moving a record to the next sector when it would cross a sector boundary.
/// Returns the offsets and the number of sectors used.
fn pack_records(lens: &[usize]) -> (Vec<usize>, u64) {
    let sector = SECTOR as usize;
    let mut offsets = Vec::with_capacity(lens.len());
    let mut pos = 0usize;
    for &l in lens {
        if pos % sector + l > sector {
            pos = pos.div_ceil(sector) * sector;
        }
        offsets.push(pos);
        pos += l;
    }
    (offsets, (pos as u64).div_ceil(SECTOR).max(1))
}

fn dir_record(ident: &[u8], lba: u32, size: u32, is_dir: bool, date: &[u8; 7]) -> Vec<u8> {
    let mut r = vec![0u8; record_len(ident.len())];
    r[0] = r.len() as u8;
    r[2..10].copy_from_slice(&both32(lba));
    r[10..18].copy_from_slice(&both32(size));
    r[18..25].copy_from_slice(date);
    r[25] = if is_dir { 2 } else { 0 };
    r[28..32].copy_from_slice(&both16(1)); // volume sequence number
    r[32] = ident.len() as u8;
    r[33..33 + ident.len()].copy_from_slice(ident);
    r
}

/// El Torito sector count for an EFI image: its size in 512-byte units, rounded up to whole 2048-byte sectors, or 0
/// ("the whole file") when that does not fit in 16 bits; as xorriso does.
fn efi_sector_count(len: u64) -> u16 {
    u16::try_from(len.div_ceil(SECTOR) * 4).unwrap_or(0)
}

fn boot_entry(lba: u32, sectors: u16) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0] = 0x88; // bootable; media type 0 = no emulation; load segment 0 = default
    e[6..8].copy_from_slice(&sectors.to_le_bytes());
    e[8..12].copy_from_slice(&lba.to_le_bytes());
    e
}

/// The boot catalog: validation entry, default entry, and with both BIOS and EFI a final section header (platform
/// 0xEF, one entry) followed by the EFI entry.
fn boot_catalog(bios: Option<(u32, u16)>, efi: Option<(u32, u16)>) -> Vec<u8> {
    let mut cat = vec![0u8; SECTOR as usize];
    cat[0] = 1;
    cat[1] = if bios.is_some() { 0 } else { 0xEF };
    cat[30] = 0x55;
    cat[31] = 0xAA;
    let sum = (0..16).fold(0u16, |s, i| {
        s.wrapping_add(u16::from_le_bytes([cat[2 * i], cat[2 * i + 1]]))
    });
    cat[28..30].copy_from_slice(&0u16.wrapping_sub(sum).to_le_bytes());
    match (bios, efi) {
        (Some((lba, n)), efi) => {
            cat[32..64].copy_from_slice(&boot_entry(lba, n));
            if let Some((lba, n)) = efi {
                cat[64] = 0x91; // final section header
                cat[65] = 0xEF;
                cat[66..68].copy_from_slice(&1u16.to_le_bytes());
                cat[96..128].copy_from_slice(&boot_entry(lba, n));
            }
        }
        (None, Some((lba, n))) => cat[32..64].copy_from_slice(&boot_entry(lba, n)),
        (None, None) => {}
    }
    cat
}

/// Writes a mkisofs-style boot info table into bytes 8..64 of `data` (at least 64 bytes long): PVD sector, the
/// file's sector, its length and the 32-bit sum of its little-endian words from byte 64 on (a last partial word
/// zero padded), then 40 zero bytes.
fn patch_boot_info_table(data: &mut [u8], pvd_lba: u32, file_lba: u32) {
    let csum = data[64..].chunks(4).fold(0u32, |s, c| {
        let mut w = [0u8; 4];
        w[..c.len()].copy_from_slice(c);
        s.wrapping_add(u32::from_le_bytes(w))
    });
    data[8..12].copy_from_slice(&pvd_lba.to_le_bytes());
    data[12..16].copy_from_slice(&file_lba.to_le_bytes());
    let len = data.len() as u32;
    data[16..20].copy_from_slice(&len.to_le_bytes());
    data[20..24].copy_from_slice(&csum.to_le_bytes());
    data[24..64].fill(0);
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
}

impl DateTime {
    fn from_unix(secs: i64) -> Result<Self, IsoError> {
        let days = secs.div_euclid(86_400);
        let rem = secs.rem_euclid(86_400) as u32;
        let (year, month, day) = civil_from_days(days);
        if !(1900..=2155).contains(&year) {
            return Err(IsoError::TimestampOutOfRange(secs));
        }
        Ok(DateTime {
            year,
            month,
            day,
            hour: rem / 3600,
            min: rem / 60 % 60,
            sec: rem % 60,
        })
    }

    /// The 7-byte directory record date (years since 1900, ..., GMT offset 0).
    fn record_date(&self) -> [u8; 7] {
        [
            (self.year - 1900) as u8,
            self.month as u8,
            self.day as u8,
            self.hour as u8,
            self.min as u8,
            self.sec as u8,
            0,
        ]
    }

    /// The 17-byte volume descriptor date `YYYYMMDDHHMMSScc` plus GMT offset 0.
    fn volume_date(&self) -> [u8; 17] {
        let s = format!(
            "{:04}{:02}{:02}{:02}{:02}{:02}00",
            self.year, self.month, self.day, self.hour, self.min, self.sec
        );
        let mut out = [0u8; 17];
        out[..16].copy_from_slice(s.as_bytes());
        out
    }
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
        assert_eq!(civil_from_days(951_782_400 / 86_400), (2000, 2, 29));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        let d = DateTime::from_unix(1_700_000_000).unwrap(); // 2023-11-14T22:13:20Z
        assert_eq!(&d.volume_date()[..16], b"2023111422132000");
        assert_eq!(d.volume_date()[16], 0);
        assert_eq!(d.record_date(), [123, 11, 14, 22, 13, 20, 0]);
        assert_eq!(
            DateTime::from_unix(DEFAULT_TIMESTAMP).unwrap().record_date(),
            [100, 1, 1, 0, 0, 0, 0]
        );
        assert!(DateTime::from_unix(-2_300_000_000).is_err()); // 1897
        assert!(DateTime::from_unix(6_000_000_000).is_err()); // 2160
    }

    #[test]
    fn both_endian() {
        assert_eq!(both16(0x0102), [2, 1, 1, 2]);
        assert_eq!(both32(0x0102_0304), [4, 3, 2, 1, 1, 2, 3, 4]);
    }

    #[test]
    fn paths() {
        let p = parse_path("/KILN/VMLINUZ").unwrap();
        assert_eq!(p.dirs, vec!["KILN"]);
        assert_eq!(
            (p.name.as_str(), p.ext.as_str(), p.full.as_str()),
            ("VMLINUZ", "", "KILN/VMLINUZ")
        );
        let p = parse_path("BOOT/GRUB/GRUB.CFG").unwrap();
        assert_eq!((p.name.as_str(), p.ext.as_str()), ("GRUB", "CFG"));
        assert_eq!(p.file_key(), "GRUB.CFG");
        for bad in [
            "",
            "/",
            "kiln/vmlinuz",
            "KILN//A",
            "KILN/",
            "A.B.C",
            "A-B",
            "A;1",
            "A/B/C/D/E/F/G/H/I",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZABCDEF/X",
            "ABCDEFGHIJKLMNOPQRSTUVWXYZ.ABCDE",
        ] {
            assert!(parse_path(bad).is_err(), "{bad:?} accepted");
        }
        assert!(parse_path("A/B/C/D/E/F/G/H").is_ok());
        assert!(parse_path("ABCDEFGHIJKLMNOPQRSTUVWXYZ.ABCD").is_ok());
    }

    #[test]
    fn volume_ids() {
        assert!(validate_volume_id("KILN_BOOT_01").is_ok());
        assert!(validate_volume_id(&"A".repeat(32)).is_ok());
        for bad in ["", "kiln", "KILN BOOT", "KILN-BOOT", &"A".repeat(33)] {
            assert!(validate_volume_id(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn records() {
        assert_eq!(record_len(1), 34);
        assert_eq!(record_len(10), 44); // "VMLINUZ.;1" + pad
        assert_eq!(record_len(11), 44);
        let r = dir_record(b"GRUB.CFG;1", 40, 123, false, &[100, 1, 1, 0, 0, 0, 0]);
        assert_eq!(r.len(), 44);
        assert_eq!(r[0], 44);
        assert_eq!(&r[2..10], &both32(40));
        assert_eq!(&r[10..18], &both32(123));
        assert_eq!(r[32], 10);
        assert_eq!(&r[33..43], b"GRUB.CFG;1");
        // 60 records of 44 bytes: 46 fit in the first sector (2024 bytes), the rest go to the second.
        let (offs, sectors) = pack_records(&[44; 60]);
        assert_eq!(sectors, 2);
        assert_eq!(offs[45], 45 * 44);
        assert_eq!(offs[46], 2048);
        assert_eq!(pack_records(&[34, 34]).1, 1);
    }

    #[test]
    fn catalog() {
        let cat = boot_catalog(Some((30, 4)), Some((40, 2932)));
        let sum = (0..16).fold(0u16, |s, i| {
            s.wrapping_add(u16::from_le_bytes([cat[2 * i], cat[2 * i + 1]]))
        });
        assert_eq!(sum, 0);
        assert_eq!(&cat[30..32], &[0x55, 0xAA]);
        assert_eq!(cat[1], 0);
        assert_eq!(&cat[32..44], &[0x88, 0, 0, 0, 0, 0, 4, 0, 30, 0, 0, 0]);
        assert_eq!(&cat[64..68], &[0x91, 0xEF, 1, 0]);
        assert_eq!(&cat[96..108], &[0x88, 0, 0, 0, 0, 0, 0x74, 0x0b, 40, 0, 0, 0]);
        let cat = boot_catalog(None, Some((34, 2932)));
        assert_eq!(cat[1], 0xEF);
        let sum = (0..16).fold(0u16, |s, i| {
            s.wrapping_add(u16::from_le_bytes([cat[2 * i], cat[2 * i + 1]]))
        });
        assert_eq!(sum, 0);
        assert_eq!(cat[64], 0);
        assert_eq!(efi_sector_count(1_500_000), 2932);
        assert_eq!(efi_sector_count(65_535 * 512), 0); // rounds up to 65536 units
        assert_eq!(efi_sector_count(16_383 * 2048), 65_532);
        assert_eq!(efi_sector_count(40_000_000), 0);
    }

    #[test]
    fn boot_info_table() {
        let mut data: Vec<u8> = (0..70u8).collect();
        patch_boot_info_table(&mut data, 16, 99);
        assert_eq!(&data[8..12], &16u32.to_le_bytes());
        assert_eq!(&data[12..16], &99u32.to_le_bytes());
        assert_eq!(&data[16..20], &70u32.to_le_bytes());
        let csum = u32::from_le_bytes([64, 65, 66, 67]) + u32::from_le_bytes([68, 69, 0, 0]);
        assert_eq!(&data[20..24], &csum.to_le_bytes());
        assert!(data[24..64].iter().all(|&b| b == 0));
        assert_eq!(data[0..8], [0, 1, 2, 3, 4, 5, 6, 7]);
    }
}

#[cfg(test)]
mod padding_tests {
    use super::*;

    #[test]
    fn the_volume_ends_in_300_kib_of_zeros_after_the_last_file() {
        let data: Vec<u8> = vec![0xAB; 5000];
        let iso = IsoBuilder::new("PAD")
            .file("LAST.BIN", Content::Bytes(data.clone().into()))
            .build()
            .unwrap();
        let mut all = Vec::new();
        iso.write_to(&mut all).unwrap();
        assert_eq!(all.len() as u64, iso.len());
        let end_of_file = all.iter().rposition(|b| *b == 0xAB).unwrap() as u64 + 1;
        let pad_start = end_of_file.div_ceil(SECTOR) * SECTOR;
        assert_eq!(iso.len() - pad_start, TRAILING_PAD_SECTORS * SECTOR);
        assert!(all[pad_start as usize..].iter().all(|b| *b == 0));
        // The PVD's volume space size counts the padding.
        let pvd = &all[16 * SECTOR as usize..17 * SECTOR as usize];
        let sectors = u32::from_le_bytes(pvd[80..84].try_into().unwrap()) as u64;
        assert_eq!(sectors * SECTOR, iso.len());
    }
}
