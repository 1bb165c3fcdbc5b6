//! ECMA-119 (ISO 9660) encodings: both-endian numbers, directory records and their packing into sectors, and the
//! recorded dates.

use super::{IsoError, SECTOR};

pub(super) fn both16(v: u16) -> [u8; 4] {
    let (l, b) = (v.to_le_bytes(), v.to_be_bytes());
    [l[0], l[1], b[0], b[1]]
}

pub(super) fn both32(v: u32) -> [u8; 8] {
    let mut out = [0u8; 8];
    out[..4].copy_from_slice(&v.to_le_bytes());
    out[4..].copy_from_slice(&v.to_be_bytes());
    out
}

/// Length of a directory record with an identifier of `ident_len` bytes (padded to an even length).
pub(super) fn record_len(ident_len: usize) -> usize {
    33 + ident_len + (ident_len + 1) % 2
}

/// Places records one after another, moving a record to the next sector when it would cross a sector boundary.
/// Returns the offsets and the number of sectors used.
pub(super) fn pack_records(lens: &[usize]) -> (Vec<usize>, u64) {
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

pub(super) fn dir_record(ident: &[u8], lba: u32, size: u32, is_dir: bool, date: &[u8; 7]) -> Vec<u8> {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct DateTime {
    year: i64,
    month: u32,
    day: u32,
    hour: u32,
    min: u32,
    sec: u32,
}

impl DateTime {
    pub(super) fn from_unix(secs: i64) -> Result<Self, IsoError> {
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
    pub(super) fn record_date(&self) -> [u8; 7] {
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
    pub(super) fn volume_date(&self) -> [u8; 17] {
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
pub(super) fn civil_from_days(days: i64) -> (i64, u32, u32) {
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
