//! The ISO 9660 + El Torito writer checked against the real xorriso (El Torito report, PVD info, extraction,
//! boot info table), plus reproducibility, `read_at` against `write_to`, and the FAT EFI boot image (fatfs, mtools).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use kiln_images::iso::{Content, IsoBuilder, IsoError, IsoImage, efi_boot_image};

/// Deterministic pseudo-random bytes (xorshift), so failures reproduce.
fn bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Runs a tool that must be installed; fails (does not skip) when it is missing.
fn run(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {cmd} ({e}); this test needs it installed (apt-get install xorriso mtools)")
        });
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

fn image_bytes(img: &IsoImage) -> Vec<u8> {
    let mut v = Vec::new();
    assert_eq!(img.write_to(&mut v).unwrap(), img.len());
    assert_eq!(v.len() as u64, img.len());
    v
}

fn write_iso(img: &IsoImage, path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    img.write_to(&mut f).unwrap();
}

/// xorriso restores the read-only permissions of an ISO without Rock Ridge; make the tree deletable again.
fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in std::fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let p = e.path();
        let mode = if e.file_type().unwrap().is_dir() { 0o755 } else { 0o644 };
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
        if e.file_type().unwrap().is_dir() {
            make_writable(&p);
        }
    }
}

fn extract(iso: &Path, out: &Path) {
    run(
        "xorriso",
        &[
            "-osirrox",
            "on",
            "-indev",
            iso.to_str().unwrap(),
            "-extract",
            "/",
            out.to_str().unwrap(),
        ],
    );
    make_writable(out);
}

/// The extracted file for an ISO path; xorriso shows `NAME.;1` as `NAME` (or keeps the dot).
fn extracted(out: &Path, iso_path: &str) -> Vec<u8> {
    let p = out.join(iso_path);
    let dotted = PathBuf::from(format!("{}.", p.display()));
    std::fs::read(&p)
        .or_else(|_| std::fs::read(&dotted))
        .unwrap_or_else(|e| panic!("{iso_path} not extracted to {}: {e}", p.display()))
}

/// `El Torito boot img` lines of `-report_el_torito plain`: (platform, bootable, emulation, load size, LBA).
fn boot_images(report: &str) -> Vec<(String, String, String, u64, u64)> {
    report
        .lines()
        .filter_map(|l| l.strip_prefix("El Torito boot img :"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            assert_eq!(f.len(), 8, "unexpected report line {l:?}");
            (
                f[1].to_owned(),
                f[2].to_owned(),
                f[3].to_owned(),
                f[6].parse().unwrap(),
                f[7].parse().unwrap(),
            )
        })
        .collect()
}

/// Walks the L and M path tables (xorriso does not read them, firmware and some OSes do): both list the same
/// directories, each pointing at an extent whose first record is "." for itself, with parents listed earlier.
fn check_path_tables(all: &[u8]) {
    let pvd = &all[16 * 2048..17 * 2048];
    let size = u32::from_le_bytes(pvd[132..136].try_into().unwrap()) as usize;
    assert_eq!(pvd[132..136], [pvd[139], pvd[138], pvd[137], pvd[136]]);
    let l_at = u32::from_le_bytes(pvd[140..144].try_into().unwrap()) as usize * 2048;
    let m_at = u32::from_be_bytes(pvd[148..152].try_into().unwrap()) as usize * 2048;
    let (l, m) = (&all[l_at..l_at + size], &all[m_at..m_at + size]);
    let mut names = Vec::new();
    let mut pos = 0;
    while pos < size {
        let len = l[pos] as usize;
        assert_eq!(m[pos], l[pos]);
        let lba = u32::from_le_bytes(l[pos + 2..pos + 6].try_into().unwrap());
        assert_eq!(lba, u32::from_be_bytes(m[pos + 2..pos + 6].try_into().unwrap()));
        let parent = u16::from_le_bytes(l[pos + 6..pos + 8].try_into().unwrap());
        assert_eq!(parent, u16::from_be_bytes(m[pos + 6..pos + 8].try_into().unwrap()));
        assert!(
            parent >= 1 && usize::from(parent) <= names.len().max(1),
            "parent {parent}"
        );
        let name = String::from_utf8_lossy(&l[pos + 8..pos + 8 + len]).into_owned();
        let dot = &all[lba as usize * 2048..];
        assert_eq!((dot[32], dot[33]), (1, 0), "first record of {name:?} is not '.'");
        assert_eq!(u32::from_le_bytes(dot[2..6].try_into().unwrap()), lba);
        names.push(name);
        pos += 8 + len + len % 2;
    }
    assert_eq!(names, ["\0", "BOOT", "EFI", "KILN", "MANY", "GRUB"]);
}

struct Fixture {
    _dir: tempfile::TempDir,
    files: Vec<(String, Vec<u8>)>,
    builder: IsoBuilder,
}

/// A few files: nested dirs, a multi-sector file on disk, small files, an empty file, a directory with enough
/// entries to span several sectors, and an EFI boot image from `efi_boot_image`.
fn fixture() -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let mut files: Vec<(String, Vec<u8>)> = vec![
        ("KILN/VMLINUZ".into(), bytes(1, 300_001)),
        ("KILN/INITRD.IMG".into(), bytes(2, 5000)),
        (
            "BOOT/GRUB/GRUB.CFG".into(),
            b"linux /kiln/vmlinuz kiln.boot=abc\ninitrd /kiln/initrd.img\n".to_vec(),
        ),
        ("EMPTY.TXT".into(), Vec::new()),
        ("README".into(), b"kiln\n".to_vec()),
        ("EFI/BOOT.IMG".into(), efi_boot_image(&bytes(3, 100_000)).unwrap()),
    ];
    for i in 0..80 {
        files.push((format!("MANY/FILE_{i:03}.DAT"), bytes(100 + i, (i as usize) * 37)));
    }
    let mut builder = IsoBuilder::new("KILN_TEST").timestamp(1_700_000_000);
    for (path, data) in &files {
        let content = if path == "KILN/VMLINUZ" {
            let p = dir.path().join("vmlinuz");
            std::fs::write(&p, data).unwrap();
            Content::File {
                path: p,
                len: data.len() as u64,
            }
        } else {
            Content::Bytes(Arc::from(data.as_slice()))
        };
        builder = builder.file(path, content);
    }
    Fixture {
        _dir: dir,
        files,
        builder,
    }
}

#[test]
fn xorriso_reads_efi_image() {
    let fx = fixture();
    let img = fx.builder.clone().efi_boot("EFI/BOOT.IMG").build().unwrap();
    assert_eq!(img.len() % 2048, 0);
    let tmp = tempfile::tempdir().unwrap();
    let iso = tmp.path().join("test.iso");
    write_iso(&img, &iso);
    let isos = iso.to_str().unwrap();

    let report = run("xorriso", &["-indev", isos, "-report_el_torito", "plain"]);
    let entries = boot_images(&report);
    let efi_len = fx.files.iter().find(|(p, _)| p == "EFI/BOOT.IMG").unwrap().1.len() as u64;
    assert_eq!(entries.len(), 1, "{report}");
    let (pltf, bootable, emul, ldsiz, lba) = &entries[0];
    assert_eq!(
        (pltf.as_str(), bootable.as_str(), emul.as_str()),
        ("UEFI", "y", "none"),
        "{report}"
    );
    assert_eq!(*ldsiz, efi_len.div_ceil(2048) * 4, "{report}");
    assert!(report.contains("/EFI/BOOT.IMG"), "{report}");
    // The entry points at the file's bytes.
    let all = image_bytes(&img);
    let at = (*lba * 2048) as usize;
    assert_eq!(
        &all[at..at + efi_len as usize],
        fx.files.iter().find(|(p, _)| p == "EFI/BOOT.IMG").unwrap().1
    );

    let pvd = run("xorriso", &["-indev", isos, "-pvd_info"]);
    assert!(pvd.contains("Volume Id    : KILN_TEST"), "{pvd}");
    assert!(pvd.contains(&format!("{} data blocks", img.len() / 2048)), "{pvd}");
    for complaint in ["WARNING", "SORRY", "FAILURE", "FATAL", "MISHAP"] {
        assert!(!pvd.contains(complaint), "{pvd}");
        assert!(!report.contains(complaint), "{report}");
    }
    assert!(pvd.contains("2023111422132000"), "{pvd}");

    check_path_tables(&all);

    let out = tmp.path().join("out");
    extract(&iso, &out);
    for (path, data) in &fx.files {
        assert!(extracted(&out, path) == *data, "{path} differs after extraction");
    }
    let many = std::fs::read_dir(out.join("MANY")).unwrap().count();
    assert_eq!(many, 80);
}

#[test]
fn xorriso_reads_bios_and_efi_entries_and_boot_info_table() {
    let fx = fixture();
    let eltorito = bytes(7, 2002); // not a multiple of 4: the checksum pads the last word
    let img = fx
        .builder
        .clone()
        .file(
            "BOOT/GRUB/I386_PC/ELTORITO.IMG",
            Content::Bytes(eltorito.clone().into()),
        )
        .bios_boot("BOOT/GRUB/I386_PC/ELTORITO.IMG", 4, true)
        .efi_boot("EFI/BOOT.IMG")
        .build()
        .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let iso = tmp.path().join("test.iso");
    write_iso(&img, &iso);
    let isos = iso.to_str().unwrap();

    let report = run("xorriso", &["-indev", isos, "-report_el_torito", "plain"]);
    let entries = boot_images(&report);
    assert_eq!(entries.len(), 2, "{report}");
    assert_eq!(
        (entries[0].0.as_str(), entries[0].2.as_str(), entries[0].3),
        ("BIOS", "none", 4),
        "{report}"
    );
    assert_eq!(
        (entries[1].0.as_str(), entries[1].2.as_str()),
        ("UEFI", "none"),
        "{report}"
    );
    assert!(
        report
            .lines()
            .any(|l| l.contains("img opts") && l.contains("boot-info-table")),
        "xorriso does not see the boot info table:\n{report}"
    );
    assert!(report.contains("/BOOT/GRUB/I386_PC/ELTORITO.IMG"), "{report}");

    // The boot catalog: BIOS validation entry, default entry, final section header for EFI.
    let all = image_bytes(&img);
    let cat_lba = u32::from_le_bytes(all[17 * 2048 + 71..17 * 2048 + 75].try_into().unwrap()) as usize;
    assert_eq!(&all[17 * 2048..17 * 2048 + 31], b"\0CD001\x01EL TORITO SPECIFICATION\0");
    let cat = &all[cat_lba * 2048..cat_lba * 2048 + 128];
    assert_eq!((cat[0], cat[1], cat[30], cat[31]), (1, 0, 0x55, 0xAA));
    assert_eq!((cat[32], cat[33]), (0x88, 0));
    assert_eq!((cat[64], cat[65], cat[66]), (0x91, 0xEF, 1));
    assert_eq!(cat[96], 0x88);

    // Boot info table, checked by hand.
    let lba = entries[0].4;
    let at = (lba * 2048) as usize;
    let patched = &all[at..at + eltorito.len()];
    let word = |o: usize| u32::from_le_bytes(patched[o..o + 4].try_into().unwrap());
    let mut padded = eltorito[64..].to_vec();
    padded.resize(padded.len().div_ceil(4) * 4, 0);
    let csum = padded
        .chunks(4)
        .fold(0u32, |s, c| s.wrapping_add(u32::from_le_bytes(c.try_into().unwrap())));
    assert_eq!(word(8), 16, "PVD LBA");
    assert_eq!(u64::from(word(12)), lba, "file LBA");
    assert_eq!(word(16), eltorito.len() as u32, "file length");
    assert_eq!(word(20), csum, "checksum");
    assert!(patched[24..64].iter().all(|&b| b == 0));
    assert_eq!(&patched[..8], &eltorito[..8]);
    assert_eq!(&patched[64..], &eltorito[64..]);

    // And the same as xorriso patches it (length and checksum; the LBAs differ between the images).
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("B")).unwrap();
    std::fs::write(src.join("B/ELTORITO.IMG"), &eltorito).unwrap();
    let theirs = tmp.path().join("theirs.iso");
    run(
        "xorriso",
        &[
            "-as",
            "mkisofs",
            "-quiet",
            "-o",
            theirs.to_str().unwrap(),
            "-b",
            "B/ELTORITO.IMG",
            "-no-emul-boot",
            "-boot-load-size",
            "4",
            "-boot-info-table",
            src.to_str().unwrap(),
        ],
    );
    let their_out = tmp.path().join("their_out");
    extract(&theirs, &their_out);
    let their_patched = std::fs::read(their_out.join("B/ELTORITO.IMG")).unwrap();
    assert_eq!(&their_patched[8..12], &patched[8..12]);
    assert_eq!(&their_patched[16..], &patched[16..]);

    // Extraction gives the patched boot file and the other files unchanged.
    let out = tmp.path().join("out");
    extract(&iso, &out);
    assert_eq!(extracted(&out, "BOOT/GRUB/I386_PC/ELTORITO.IMG"), patched);
    for (path, data) in &fx.files {
        assert!(extracted(&out, path) == *data, "{path} differs after extraction");
    }
}

#[test]
fn reproducible() {
    let a = image_bytes(&fixture().builder.efi_boot("EFI/BOOT.IMG").build().unwrap());
    let b = image_bytes(&fixture().builder.efi_boot("EFI/BOOT.IMG").build().unwrap());
    assert!(a == b, "two builds of the same inputs differ");

    // The order files are added in does not matter.
    let fx = fixture();
    let mut rev = IsoBuilder::new("KILN_TEST").timestamp(1_700_000_000);
    for (path, data) in fx.files.iter().rev() {
        rev = rev.file(path, Content::Bytes(data.clone().into()));
    }
    let c = image_bytes(&rev.efi_boot("EFI/BOOT.IMG").build().unwrap());
    assert!(a == c, "the order of adding files changed the image");

    let d = image_bytes(
        &fixture()
            .builder
            .timestamp(1_700_000_001)
            .efi_boot("EFI/BOOT.IMG")
            .build()
            .unwrap(),
    );
    assert_eq!(a.len(), d.len());
    assert!(a != d, "a different timestamp gives the same bytes");

    assert_eq!(
        efi_boot_image(&bytes(9, 50_000)).unwrap(),
        efi_boot_image(&bytes(9, 50_000)).unwrap()
    );
}

#[test]
fn read_at_matches_write_to() {
    let fx = fixture();
    let img = fx
        .builder
        .file("BOOT/ELTORITO.IMG", Content::Bytes(bytes(8, 2048).into()))
        .bios_boot("BOOT/ELTORITO.IMG", 4, true)
        .efi_boot("EFI/BOOT.IMG")
        .build()
        .unwrap();
    let all = image_bytes(&img);
    let len = all.len() as u64;
    let mut rng = bytes(42, 200_000).into_iter();
    let mut next = |n: u64| {
        let v = (0..8).fold(0u64, |s, _| (s << 8) | u64::from(rng.next().unwrap()));
        v % n
    };
    let sectors = len / 2048;
    for i in 0..4000 {
        let offset = match i % 4 {
            // Around a sector boundary, where segments start and end.
            0 => (next(sectors + 1) * 2048).saturating_sub(next(64)),
            1 => next(len),
            // Past or near the end.
            2 => len - 100 + next(300),
            _ => next(len / 4),
        };
        let want = match i % 3 {
            0 => next(64) as usize,
            1 => next(10_000) as usize,
            _ => next(400_000) as usize,
        };
        let mut buf = vec![0xA5u8; want];
        let n = img.read_at(offset, &mut buf).unwrap();
        let expect = if offset >= len {
            &[][..]
        } else {
            &all[offset as usize..(offset as usize + want).min(all.len())]
        };
        assert_eq!(n, expect.len(), "length at offset {offset} len {want}");
        assert!(buf[..n] == *expect, "bytes at offset {offset} len {want}");
    }
    let mut buf = [0u8; 10];
    assert_eq!(img.read_at(u64::MAX, &mut buf).unwrap(), 0);
    assert_eq!(img.read_at(len, &mut buf).unwrap(), 0);
    assert_eq!(img.read_at(0, &mut []).unwrap(), 0);
}

#[test]
fn efi_boot_image_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    // Small (FAT12) and larger than FAT12 allows for the cluster size fatfs picks (FAT16).
    for (i, len) in [0usize, 3000, 1_400_000, 6_000_000].into_iter().enumerate() {
        let efi = bytes(20 + i as u64, len);
        let img = efi_boot_image(&efi).unwrap();
        assert_eq!(img.len() % 512, 0);
        assert!(
            img.len() <= len + len / 16 + 512 * 1024,
            "{} bytes for a {len}-byte file",
            img.len()
        );
        {
            let fs = fatfs::FileSystem::new(std::io::Cursor::new(img.clone()), fatfs::FsOptions::new()).unwrap();
            assert_ne!(fs.fat_type(), fatfs::FatType::Fat32);
            assert_eq!(fs.volume_label(), "KILN-EFI");
            let mut f = fs.root_dir().open_file("EFI/BOOT/BOOTX64.EFI").unwrap();
            let mut back = Vec::new();
            std::io::Read::read_to_end(&mut f, &mut back).unwrap();
            assert!(back == efi, "BOOTX64.EFI differs for len {len}");
        }
        let path = tmp.path().join(format!("efi{i}.img"));
        std::fs::write(&path, &img).unwrap();
        if Path::new("/usr/sbin/fsck.fat").exists() {
            run("/usr/sbin/fsck.fat", &["-n", "-v", path.to_str().unwrap()]);
        }
        if Path::new("/usr/bin/mdir").exists() {
            let listing = run("mdir", &["-i", path.to_str().unwrap(), "::/EFI/BOOT"]);
            assert!(listing.contains("BOOTX64") && listing.contains("EFI"), "{listing}");
            assert!(listing.contains(&len.to_string()), "{listing}");
        }
    }
}

fn err(b: IsoBuilder) -> String {
    match b.build() {
        Ok(_) => panic!("built an image that should have been refused"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn invalid_names_are_refused() {
    let one = || Content::Bytes(Arc::from(&b"x"[..]));
    for id in ["kiln", "KILN-BOOT", "", "ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456"] {
        let msg = err(IsoBuilder::new(id));
        assert!(msg.contains(&format!("{id:?}")), "{msg}");
    }
    for path in [
        "kiln/vmlinuz",
        "KILN/VM-LINUZ",
        "KILN//VMLINUZ",
        "KILN/",
        "A.B.C",
        "GRUB.CFG;1",
        "A/B/C/D/E/F/G/H/FILE",
        "ABCDEFGHIJKLMNOPQRSTUVWXYZ.ABCDE",
    ] {
        let msg = err(IsoBuilder::new("KILN").file(path, one()));
        assert!(msg.contains(&format!("{path:?}")), "{msg}");
    }
    let msg = err(IsoBuilder::new("KILN").file("KILN/A", one()).file("KILN/A", one()));
    assert!(msg.contains("KILN/A"), "{msg}");
    let msg = err(IsoBuilder::new("KILN").file("KILN", one()).file("KILN/A", one()));
    assert!(msg.contains("KILN"), "{msg}");
    let msg = err(IsoBuilder::new("KILN").file("A", one()).efi_boot("EFI/BOOT.IMG"));
    assert!(msg.contains("EFI/BOOT.IMG"), "{msg}");
    let msg = err(IsoBuilder::new("KILN").file("A", one()).bios_boot("A", 4, true));
    assert!(msg.contains("too short"), "{msg}");
    assert!(matches!(
        IsoBuilder::new("KILN").timestamp(-3_000_000_000).build(),
        Err(IsoError::TimestampOutOfRange(_))
    ));

    let tmp = tempfile::tempdir().unwrap();
    let big = tmp.path().join("big");
    std::fs::File::create(&big).unwrap().set_len(4 << 30).unwrap(); // sparse
    let msg = err(IsoBuilder::new("KILN").file(
        "BIG.IMG",
        Content::File {
            path: big.clone(),
            len: 4 << 30,
        },
    ));
    assert!(msg.contains("BIG.IMG") && msg.contains("4 GiB"), "{msg}");
    let msg = err(IsoBuilder::new("KILN").file("BIG.IMG", Content::File { path: big, len: 5 }));
    assert!(msg.contains("expected 5"), "{msg}");

    // The limits themselves are fine.
    IsoBuilder::new("ABCDEFGHIJKLMNOPQRSTUVWXYZ012345")
        .file("A/B/C/D/E/F/G/FILE", one())
        .file("ABCDEFGHIJKLMNOPQRSTUVWXYZ.ABCD", one())
        .build()
        .unwrap();
}
