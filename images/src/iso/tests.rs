//! Unit tests of the ISO writer's pieces (the whole image is checked against xorriso in `images/tests/iso.rs`).
use super::ecma119::civil_from_days;
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
