//! Root device selection from Metal3 `rootDeviceHints` (baremetal-operator `RootDeviceHints`, Ironic root device
//! hints): every given hint must match; with no hints, the smallest non-removable disk of at least 4 GiB.
//!
//! Pure: the agent collects the [`DiskInfo`] list from sysfs and calls [`select_root_device`].

use crate::protocol::{DiskInfo, RootDeviceHints};

/// Disks smaller than this are never chosen by default (Ironic's default as well).
pub const DEFAULT_MIN_BYTES: u64 = 4 << 30;

/// Why no disk was chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RootDeviceError {
    #[error("no disk matches the root device hints {hints}")]
    NoMatch { hints: String },
    #[error("no non-removable disk of at least 4 GiB")]
    NoDefault,
}

fn eq_ci(a: &str, b: &str) -> bool {
    a.trim().eq_ignore_ascii_case(b.trim())
}

fn contains_ci(haystack: &str, needle: &str) -> bool {
    haystack
        .to_ascii_lowercase()
        .contains(&needle.trim().to_ascii_lowercase())
}

/// Whether `disk` satisfies every hint given. `deviceName` matches the kernel name (`/dev/sda`, or `sda`) or the
/// `/dev/disk/by-path/...` link; `model` and `vendor` match as case-insensitive substrings (Metal3 documents them as
/// substrings); serial and WWNs match exactly (ignoring case); `minSizeGigabytes` is in GiB.
pub fn matches(disk: &DiskInfo, h: &RootDeviceHints) -> bool {
    let name_ok = h.device_name.as_deref().is_none_or(|n| {
        let n = if n.starts_with('/') {
            n.to_owned()
        } else {
            format!("/dev/{n}")
        };
        disk.name == n || disk.by_path.as_deref() == Some(n.as_str())
    });
    name_ok
        && h.hctl.as_deref().is_none_or(|v| eq_ci(&disk.hctl, v))
        && h.model.as_deref().is_none_or(|v| contains_ci(&disk.model, v))
        && h.vendor.as_deref().is_none_or(|v| contains_ci(&disk.vendor, v))
        && h.serial_number.as_deref().is_none_or(|v| eq_ci(&disk.serial, v))
        && h.wwn.as_deref().is_none_or(|v| eq_ci(&disk.wwn, v))
        && h.wwn_with_extension
            .as_deref()
            .is_none_or(|v| eq_ci(&disk.wwn_with_extension, v))
        && h.wwn_vendor_extension
            .as_deref()
            .is_none_or(|v| eq_ci(&disk.wwn_vendor_extension, v))
        && h.min_size_gigabytes
            .is_none_or(|g| disk.size_bytes >= g.saturating_mul(1 << 30))
        && h.rotational.is_none_or(|r| disk.rotational == r)
}

/// Chooses the root disk. With hints: the matching disk with the smallest size (then name), so `minSizeGigabytes`
/// alone picks the smallest big-enough disk; without hints: the smallest non-removable disk of at least 4 GiB.
///
/// # Errors
/// [`RootDeviceError`] when nothing qualifies.
pub fn select_root_device<'a>(disks: &'a [DiskInfo], hints: &RootDeviceHints) -> Result<&'a DiskInfo, RootDeviceError> {
    let by_size = |a: &&DiskInfo, b: &&DiskInfo| a.size_bytes.cmp(&b.size_bytes).then_with(|| a.name.cmp(&b.name));
    if *hints == RootDeviceHints::default() {
        return disks
            .iter()
            .filter(|d| !d.removable && d.size_bytes >= DEFAULT_MIN_BYTES)
            .min_by(by_size)
            .ok_or(RootDeviceError::NoDefault);
    }
    disks
        .iter()
        .filter(|d| d.size_bytes > 0 && matches(d, hints))
        .min_by(by_size)
        .ok_or_else(|| RootDeviceError::NoMatch {
            hints: serde_json::to_string(hints).unwrap_or_default(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GIB: u64 = 1 << 30;

    fn disk(name: &str, gib: u64) -> DiskInfo {
        DiskInfo {
            name: name.into(),
            size_bytes: gib * GIB,
            ..Default::default()
        }
    }

    fn disks() -> Vec<DiskInfo> {
        vec![
            DiskInfo {
                by_path: Some("/dev/disk/by-path/pci-0000:00:05.0".into()),
                model: "QEMU HARDDISK".into(),
                vendor: "ATA".into(),
                serial: "SN-A".into(),
                wwn: "0x5000c500a0b1c2d3".into(),
                hctl: "0:0:0:0".into(),
                rotational: true,
                ..disk("/dev/sda", 100)
            },
            DiskInfo {
                model: "Samsung SSD 980".into(),
                serial: "SN-B".into(),
                ..disk("/dev/nvme0n1", 20)
            },
            DiskInfo {
                removable: true,
                model: "USB Flash".into(),
                ..disk("/dev/sdb", 8)
            },
            disk("/dev/vda", 2),
            DiskInfo {
                model: "virtio".into(),
                serial: "SN-C".into(),
                ..disk("/dev/vdb", 50)
            },
        ]
    }

    #[test]
    fn table_of_hints() {
        let d = disks();
        let h = |f: fn(&mut RootDeviceHints)| {
            let mut h = RootDeviceHints::default();
            f(&mut h);
            h
        };
        let cases: Vec<(RootDeviceHints, Option<&str>)> = vec![
            (RootDeviceHints::default(), Some("/dev/nvme0n1")),
            (h(|h| h.device_name = Some("/dev/sda".into())), Some("/dev/sda")),
            (h(|h| h.device_name = Some("vdb".into())), Some("/dev/vdb")),
            (
                h(|h| h.device_name = Some("/dev/disk/by-path/pci-0000:00:05.0".into())),
                Some("/dev/sda"),
            ),
            (h(|h| h.device_name = Some("/dev/sdz".into())), None),
            (h(|h| h.hctl = Some("0:0:0:0".into())), Some("/dev/sda")),
            (h(|h| h.model = Some("samsung".into())), Some("/dev/nvme0n1")),
            (h(|h| h.vendor = Some("ATA".into())), Some("/dev/sda")),
            (h(|h| h.serial_number = Some("SN-C".into())), Some("/dev/vdb")),
            (h(|h| h.serial_number = Some("SN".into())), None),
            (h(|h| h.wwn = Some("0x5000C500A0B1C2D3".into())), Some("/dev/sda")),
            (h(|h| h.min_size_gigabytes = Some(30)), Some("/dev/vdb")),
            (h(|h| h.min_size_gigabytes = Some(500)), None),
            (h(|h| h.rotational = Some(true)), Some("/dev/sda")),
            (h(|h| h.rotational = Some(false)), Some("/dev/vda")),
            (h(|h| h.model = Some("USB".into())), Some("/dev/sdb")),
            (
                h(|h| {
                    h.serial_number = Some("SN-B".into());
                    h.rotational = Some(true);
                }),
                None,
            ),
            (
                h(|h| {
                    h.serial_number = Some("SN-B".into());
                    h.min_size_gigabytes = Some(20);
                }),
                Some("/dev/nvme0n1"),
            ),
        ];
        for (hints, want) in cases {
            let got = select_root_device(&d, &hints).ok().map(|d| d.name.as_str());
            assert_eq!(got, want, "{hints:?}");
        }
        assert_eq!(
            select_root_device(&d[2..4], &RootDeviceHints::default()),
            Err(RootDeviceError::NoDefault)
        );
    }
}
