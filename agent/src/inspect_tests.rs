//! Fixture-based tests for the inspection parsers: a fake `/sys` + `/proc` tree shaped like a QEMU VM's.

use super::*;
use std::os::unix::fs::symlink;

const CPUINFO: &str = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: QEMU Virtual CPU version 2.5+\n\
flags\t\t: fpu vme\n\nprocessor\t: 1\nvendor_id\t: GenuineIntel\nmodel name\t: QEMU Virtual CPU version 2.5+\n\n";

const MEMINFO: &str = "MemTotal:        1002372 kB\nMemFree:          900000 kB\n";

#[test]
fn cpuinfo_counts_processors_and_takes_the_model() {
    let c = parse_cpuinfo(CPUINFO, "x86_64");
    assert_eq!(c.count, 2);
    assert_eq!(c.model, "QEMU Virtual CPU version 2.5+");
    assert_eq!(c.architecture, "x86_64");
    assert_eq!(parse_cpuinfo("", "x86_64").count, 0);
}

#[test]
fn meminfo_and_memory_blocks() {
    assert_eq!(parse_meminfo_mib(MEMINFO), Some(978));
    assert_eq!(parse_meminfo_mib("MemFree: 1 kB\n"), None);
    assert_eq!(memory_from_blocks_mib("8000000\n", 8), Some(1024));
    assert_eq!(memory_from_blocks_mib("zz", 8), None);
    assert_eq!(memory_from_blocks_mib("8000000", 0), None);
}

#[test]
fn wwid_splits_like_ironic() {
    let (w, wx, ve) = split_wwid("naa.6001405abcdef0123456789abcdef012\n");
    assert_eq!(w, "0x6001405abcdef012");
    assert_eq!(wx, "0x6001405abcdef0123456789abcdef012");
    assert_eq!(ve, "0x3456789abcdef012");
    let (w, wx, ve) = split_wwid("naa.5000C500A1B2C3D4");
    assert_eq!(
        (w.as_str(), wx.as_str(), ve.as_str()),
        ("0x5000c500a1b2c3d4", "0x5000c500a1b2c3d4", "")
    );
    assert_eq!(split_wwid("t10.ATA QEMU HARDDISK").0, "");
}

#[test]
fn by_path_from_sysfs_paths() {
    let cases = [
        (
            "/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
            "vda",
            Some("pci-0000:00:04.0"),
        ),
        (
            "/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sda",
            "sda",
            Some("pci-0000:00:1f.2-ata-3"),
        ),
        (
            "/sys/devices/pci0000:00/0000:00:05.0/virtio2/host2/target2:0:1/2:0:1:3/block/sdb",
            "sdb",
            Some("pci-0000:00:05.0-scsi-0:0:1:3"),
        ),
        (
            "/sys/devices/pci0000:00/0000:00:06.0/nvme/nvme0/nvme0n2",
            "nvme0n2",
            Some("pci-0000:00:06.0-nvme-2"),
        ),
        (
            "/sys/devices/pci0000:00/0000:00:1d.0/usb2/2-1/2-1:1.0/host6/target6:0:0/6:0:0:0/block/sdc",
            "sdc",
            None,
        ),
        ("/sys/devices/virtual/block/loop0", "loop0", None),
    ];
    for (p, n, want) in cases {
        assert_eq!(
            by_path_from_devpath(p, n),
            want.map(|w| format!("/dev/disk/by-path/{w}")),
            "{p}"
        );
    }
    assert_eq!(
        hctl_from_devpath("/sys/devices/pci0000:00/0000:00:1f.2/ata3/host2/target2:0:0/2:0:0:0/block/sda"),
        Some("2:0:0:0".into())
    );
    assert_eq!(
        hctl_from_devpath("/sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda"),
        None
    );
}

#[test]
fn disk_names() {
    for n in ["vda", "sda", "nvme0n1", "xvda", "mmcblk0"] {
        assert!(is_disk_name(n), "{n}");
    }
    for n in ["loop0", "ram1", "zram0", "dm-0", "md127", "sr0", "fd0", "nbd3"] {
        assert!(!is_disk_name(n), "{n}");
    }
}

fn write(p: &Path, s: &str) {
    fs::create_dir_all(p.parent().unwrap()).unwrap();
    fs::write(p, s).unwrap();
}

/// A tree like QEMU's: one virtio disk with a serial, one SATA disk on AHCI, a loop device, a virtio NIC, lo.
fn fixture() -> tempfile::TempDir {
    let t = tempfile::tempdir().unwrap();
    let r = t.path();
    write(&r.join("proc/cpuinfo"), CPUINFO);
    write(&r.join("proc/meminfo"), MEMINFO);
    // virtio-blk vda
    let vda = r.join("sys/devices/pci0000:00/0000:00:04.0/virtio1/block/vda");
    write(&vda.join("size"), "4194304\n");
    write(&vda.join("serial"), "KILN-DISK-1\n");
    write(&vda.join("queue/rotational"), "1\n");
    write(&vda.join("removable"), "0\n");
    fs::create_dir_all(r.join("sys/block")).unwrap();
    symlink(
        "../devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
        r.join("sys/block/vda"),
    )
    .unwrap();
    symlink("../../../virtio1", vda.join("device")).unwrap();
    // SATA sda
    let hctl = r.join("sys/devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0");
    let sda = hctl.join("block/sda");
    write(&sda.join("size"), "2097152\n");
    write(&sda.join("queue/rotational"), "0\n");
    write(&sda.join("removable"), "0\n");
    write(&hctl.join("model"), "QEMU HARDDISK   \n");
    write(&hctl.join("vendor"), "ATA     \n");
    write(&hctl.join("wwid"), "naa.5000c500a1b2c3d4\n");
    symlink(
        "../devices/pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0/block/sda",
        r.join("sys/block/sda"),
    )
    .unwrap();
    symlink("../../../0:0:0:0", sda.join("device")).unwrap();
    // loop0, skipped
    write(&r.join("sys/devices/virtual/block/loop0/size"), "0\n");
    symlink("../devices/virtual/block/loop0", r.join("sys/block/loop0")).unwrap();
    // NICs
    let virtio0 = r.join("sys/devices/pci0000:00/0000:00:03.0/virtio0");
    let eth0 = virtio0.join("net/eth0");
    write(&eth0.join("address"), "52:54:00:AB:CD:01\n");
    write(&eth0.join("operstate"), "up\n");
    write(&eth0.join("carrier"), "1\n");
    write(&eth0.join("speed"), "-1\n");
    fs::create_dir_all(r.join("sys/bus/virtio/drivers/virtio_net")).unwrap();
    symlink("../../../../bus/virtio/drivers/virtio_net", virtio0.join("driver")).unwrap();
    symlink("../../../virtio0", eth0.join("device")).unwrap();
    fs::create_dir_all(r.join("sys/class/net")).unwrap();
    symlink(
        "../../devices/pci0000:00/0000:00:03.0/virtio0/net/eth0",
        r.join("sys/class/net/eth0"),
    )
    .unwrap();
    let lo = r.join("sys/devices/virtual/net/lo");
    write(&lo.join("address"), "00:00:00:00:00:00\n");
    symlink("../../devices/virtual/net/lo", r.join("sys/class/net/lo")).unwrap();
    // DMI, memory blocks
    let dmi = r.join("sys/class/dmi/id");
    write(&dmi.join("sys_vendor"), "QEMU\n");
    write(&dmi.join("product_name"), "Standard PC (i440FX + PIIX, 1996)\n");
    write(&dmi.join("product_serial"), "KILN-SERIAL-7\n");
    write(&dmi.join("product_uuid"), "0E5A2D7C-1111-2222-3333-444455556666\n");
    let mem = r.join("sys/devices/system/memory");
    write(&mem.join("block_size_bytes"), "8000000\n");
    for i in 0..4 {
        write(
            &mem.join(format!("memory{i}/state")),
            if i == 3 { "offline\n" } else { "online\n" },
        );
    }
    t
}

#[test]
fn inventory_of_a_fixture_tree() {
    let t = fixture();
    let ips = BTreeMap::from([("eth0".to_string(), vec!["10.0.2.15".to_string()])]);
    let inv = inventory(t.path(), &ips);
    assert_eq!(inv.cpu.count, 2);
    assert_eq!(inv.memory_mib, 384, "three online 128 MiB blocks");
    assert_eq!(inv.boot_mode, "legacy");
    assert_eq!(inv.system.vendor, "QEMU");
    assert_eq!(inv.system.serial, "KILN-SERIAL-7");
    assert_eq!(inv.system.uuid, "0e5a2d7c-1111-2222-3333-444455556666");

    assert_eq!(inv.disks.len(), 2, "{:?}", inv.disks);
    let sda = &inv.disks[0];
    assert_eq!(sda.name, "/dev/sda");
    assert_eq!(sda.size_bytes, 1 << 30);
    assert_eq!(sda.model, "QEMU HARDDISK");
    assert_eq!(sda.vendor, "ATA");
    assert_eq!(sda.hctl, "0:0:0:0");
    assert_eq!(sda.wwn, "0x5000c500a1b2c3d4");
    assert_eq!(sda.by_path.as_deref(), Some("/dev/disk/by-path/pci-0000:00:1f.2-ata-1"));
    assert!(!sda.rotational);
    let vda = &inv.disks[1];
    assert_eq!(vda.name, "/dev/vda");
    assert_eq!(vda.size_bytes, 2 << 30);
    assert_eq!(vda.serial, "KILN-DISK-1");
    assert_eq!(vda.by_path.as_deref(), Some("/dev/disk/by-path/pci-0000:00:04.0"));
    assert!(vda.rotational && !vda.removable);

    assert_eq!(inv.nics.len(), 1, "lo is virtual");
    let n = &inv.nics[0];
    assert_eq!(
        (n.name.as_str(), n.mac.as_str(), n.driver.as_str()),
        ("eth0", "52:54:00:ab:cd:01", "virtio_net")
    );
    assert!(n.link_up);
    assert_eq!(n.speed_mbps, None);
    assert_eq!(n.ipv4, vec!["10.0.2.15".to_string()]);

    fs::create_dir_all(t.path().join("sys/firmware/efi")).unwrap();
    fs::remove_dir_all(t.path().join("sys/devices/system/memory")).unwrap();
    let inv = inventory(t.path(), &BTreeMap::new());
    assert_eq!(inv.boot_mode, "uefi");
    assert_eq!(inv.memory_mib, 978, "falls back to MemTotal");
}

#[test]
fn udev_by_path_links_win_when_present() {
    let t = fixture();
    let d = t.path().join("dev/disk/by-path");
    fs::create_dir_all(&d).unwrap();
    symlink("../../vda", d.join("pci-0000:00:04.0-virtio")).unwrap();
    let vda = read_disk(t.path(), "vda").unwrap();
    assert_eq!(
        vda.by_path.as_deref(),
        Some("/dev/disk/by-path/pci-0000:00:04.0-virtio")
    );
}
