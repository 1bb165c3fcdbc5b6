//! Root disk choice from Metal3 `rootDeviceHints` over the inspected disks: every given hint must match; with no
//! hints, the smallest non-removable disk of at least 4 GiB. Pure; the disks come from [`crate::inspect`].

use kiln_images::protocol::{DiskInfo, RootDeviceHints};

const GIB: u64 = 1024 * 1024 * 1024;

fn eq_ci(want: &Option<String>, have: &str) -> bool {
    want.as_deref()
        .is_none_or(|w| w.trim().eq_ignore_ascii_case(have.trim()))
}

/// Whether `d` satisfies every hint that is set.
pub fn matches(d: &DiskInfo, h: &RootDeviceHints) -> bool {
    let name_ok = h.device_name.as_deref().is_none_or(|n| {
        n == d.name || d.by_path.as_deref() == Some(n) || n.strip_prefix("/dev/").is_none_or(|s| d.name == s)
    });
    name_ok
        && eq_ci(&h.hctl, &d.hctl)
        && h.model
            .as_deref()
            .is_none_or(|m| d.model.to_lowercase().contains(&m.trim().to_lowercase()))
        && h.vendor
            .as_deref()
            .is_none_or(|v| d.vendor.to_lowercase().contains(&v.trim().to_lowercase()))
        && eq_ci(&h.serial_number, &d.serial)
        && h.min_size_gigabytes
            .is_none_or(|g| d.size_bytes >= g.saturating_mul(GIB))
        && eq_ci(&h.wwn, &d.wwn)
        && eq_ci(&h.wwn_with_extension, &d.wwn_with_extension)
        && eq_ci(&h.wwn_vendor_extension, &d.wwn_vendor_extension)
        && h.rotational.is_none_or(|r| r == d.rotational)
}

/// The disk to write: among the disks matching `hints` (non-removable ones only when no hint is set, and then at
/// least 4 GiB), the smallest; ties go to the first by name.
pub fn choose<'a>(disks: &'a [DiskInfo], hints: &RootDeviceHints) -> Option<&'a DiskInfo> {
    let no_hints = *hints == RootDeviceHints::default();
    disks
        .iter()
        .filter(|d| matches(d, hints))
        .filter(|d| !no_hints || (!d.removable && d.size_bytes >= 4 * GIB))
        .min_by(|a, b| a.size_bytes.cmp(&b.size_bytes).then_with(|| a.name.cmp(&b.name)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn disk(name: &str, gib: u64) -> DiskInfo {
        DiskInfo {
            name: format!("/dev/{name}"),
            size_bytes: gib * GIB,
            ..Default::default()
        }
    }

    #[test]
    fn default_is_smallest_fixed_disk_of_4_gib() {
        let mut usb = disk("sdc", 5);
        usb.removable = true;
        let disks = vec![disk("sda", 100), disk("sdb", 2), usb, disk("vda", 10)];
        assert_eq!(choose(&disks, &RootDeviceHints::default()).unwrap().name, "/dev/vda");
        assert_eq!(choose(&disks[1..2], &RootDeviceHints::default()), None);
    }

    #[test]
    fn hints_must_all_match() {
        let mut a = disk("sda", 100);
        a.serial = "S1".into();
        a.rotational = true;
        a.model = "ST1000NM".into();
        let mut b = disk("sdb", 200);
        b.serial = "S2".into();
        b.wwn = "0x5000c500a1b2c3d4".into();
        let disks = vec![a, b];
        let h = |f: fn(&mut RootDeviceHints)| {
            let mut h = RootDeviceHints::default();
            f(&mut h);
            choose(&disks, &h).map(|d| d.name.clone())
        };
        assert_eq!(h(|h| h.serial_number = Some("s2".into())), Some("/dev/sdb".into()));
        assert_eq!(h(|h| h.device_name = Some("/dev/sdb".into())), Some("/dev/sdb".into()));
        assert_eq!(h(|h| h.rotational = Some(true)), Some("/dev/sda".into()));
        assert_eq!(h(|h| h.model = Some("st1000".into())), Some("/dev/sda".into()));
        assert_eq!(
            h(|h| h.wwn = Some("0x5000C500A1B2C3D4".into())),
            Some("/dev/sdb".into())
        );
        assert_eq!(h(|h| h.min_size_gigabytes = Some(150)), Some("/dev/sdb".into()));
        assert_eq!(
            h(|h| {
                h.serial_number = Some("S1".into());
                h.min_size_gigabytes = Some(150);
            }),
            None
        );
    }
}
