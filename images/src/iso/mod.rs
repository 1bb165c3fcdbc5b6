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
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

mod ecma119;
mod eltorito;
mod fat;

use self::ecma119::{DateTime, both16, both32, dir_record, pack_records, record_len};
use self::eltorito::{boot_catalog, efi_sector_count, patch_boot_info_table};
pub(crate) use self::fat::FIXED_TIME;
pub use self::fat::efi_boot_image;

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

#[cfg(test)]
mod tests;
