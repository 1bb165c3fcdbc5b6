//! El Torito: the boot catalog (validation, default and section entries) and the boot info table a BIOS boot image
//! (GRUB's `eltorito.img`) expects patched in.

use super::SECTOR;

/// El Torito sector count for an EFI image: its size in 512-byte units, rounded up to whole 2048-byte sectors, or 0
/// ("the whole file") when that does not fit in 16 bits; as xorriso does.
pub(super) fn efi_sector_count(len: u64) -> u16 {
    u16::try_from(len.div_ceil(SECTOR) * 4).unwrap_or(0)
}

pub(super) fn boot_entry(lba: u32, sectors: u16) -> [u8; 32] {
    let mut e = [0u8; 32];
    e[0] = 0x88; // bootable; media type 0 = no emulation; load segment 0 = default
    e[6..8].copy_from_slice(&sectors.to_le_bytes());
    e[8..12].copy_from_slice(&lba.to_le_bytes());
    e
}

/// The boot catalog: validation entry, default entry, and with both BIOS and EFI a final section header (platform
/// 0xEF, one entry) followed by the EFI entry.
pub(super) fn boot_catalog(bios: Option<(u32, u16)>, efi: Option<(u32, u16)>) -> Vec<u8> {
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
pub(super) fn patch_boot_info_table(data: &mut [u8], pvd_lba: u32, file_lba: u32) {
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
