//! Hardware inspection from `/proc` and `/sys`: pure parsers over the text of those files plus a thin reader that
//! walks a root directory (`/` in the ramdisk, a fixture tree in tests). It never writes and never runs programs.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use kiln_images::protocol::{CpuInfo, DiskInfo, HardwareInventory, NicInfo, SystemInfo};

/// `/proc/cpuinfo`: the first `model name`, the number of `processor` entries; `arch` comes from the caller.
pub fn parse_cpuinfo(text: &str, arch: &str) -> CpuInfo {
    let mut count = 0u32;
    let mut model = String::new();
    for line in text.lines() {
        let Some((k, v)) = line.split_once(':') else {
            continue;
        };
        match k.trim() {
            "processor" => count += 1,
            // x86 says `model name`; some arm64 kernels only have `CPU part`, so keep the first we find.
            "model name" | "Processor" | "cpu model" if model.is_empty() => model = v.trim().to_string(),
            _ => {}
        }
    }
    CpuInfo {
        model,
        count,
        architecture: arch.to_string(),
    }
}

/// `/proc/meminfo` `MemTotal` in MiB (what the kernel manages, a little below the installed memory).
pub fn parse_meminfo_mib(text: &str) -> Option<u64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix("MemTotal:")?;
        let kib: u64 = rest.trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kib / 1024)
    })
}

/// Installed memory in MiB from the memory-hotplug blocks (`/sys/devices/system/memory/block_size_bytes`, hex,
/// times the number of `memoryN` blocks): this counts the RAM the firmware reported, like `lsmem`.
pub fn memory_from_blocks_mib(block_size_hex: &str, blocks: u64) -> Option<u64> {
    let size = u64::from_str_radix(block_size_hex.trim().trim_start_matches("0x"), 16).ok()?;
    (size > 0 && blocks > 0).then(|| size * blocks / (1024 * 1024))
}

/// Splits a sysfs `wwid` (`naa.5000c500a1b2c3d4...`, `eui.…`, `0x…`) into Ironic's `wwn`, `wwn_with_extension`
/// and `wwn_vendor_extension` (`0x` + 16 hex digits, the whole identifier, and the digits beyond the first 16).
pub fn split_wwid(wwid: &str) -> (String, String, String) {
    let w = wwid.trim();
    let hex = w
        .strip_prefix("naa.")
        .or_else(|| w.strip_prefix("eui."))
        .or_else(|| w.strip_prefix("0x"))
        .unwrap_or("");
    if hex.len() < 16 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return (String::new(), String::new(), String::new());
    }
    let hex = hex.to_ascii_lowercase();
    let (base, ext) = hex.split_at(16);
    let ext = if ext.is_empty() {
        String::new()
    } else {
        format!("0x{ext}")
    };
    (format!("0x{base}"), format!("0x{hex}"), ext)
}

fn is_pci_addr(s: &str) -> bool {
    // 0000:00:04.0
    let b = s.as_bytes();
    b.len() == 12
        && b[4] == b':'
        && b[7] == b':'
        && b[10] == b'.'
        && s.chars()
            .enumerate()
            .all(|(i, c)| matches!(i, 4 | 7 | 10) || c.is_ascii_hexdigit())
}

fn parse_hctl(s: &str) -> Option<[u32; 4]> {
    let v: Vec<u32> = s.split(':').map(|p| p.parse().ok()).collect::<Option<_>>()?;
    <[u32; 4]>::try_from(v).ok()
}

/// The SCSI `host:channel:target:lun` of a disk from its sysfs device path, if it is a SCSI disk.
pub fn hctl_from_devpath(devpath: &str) -> Option<String> {
    devpath
        .split('/')
        .rev()
        .find(|c| parse_hctl(c).is_some())
        .map(str::to_string)
}

/// The udev-style `/dev/disk/by-path/...` name computed from a sysfs device path (busybox has no udev). Handles
/// virtio-blk (`pci-ADDR`), NVMe (`pci-ADDR-nvme-NSID`), ATA (`pci-ADDR-ata-PORT`) and other SCSI
/// (`pci-ADDR-scsi-0:C:T:L`); `None` for anything else (USB, virtual devices).
pub fn by_path_from_devpath(devpath: &str, name: &str) -> Option<String> {
    let comps: Vec<&str> = devpath.split('/').collect();
    let pci_idx = comps.iter().rposition(|c| is_pci_addr(c))?;
    let pci = comps[pci_idx];
    let below = &comps[pci_idx + 1..];
    let mut path = format!("pci-{pci}");
    if below.iter().any(|c| c.starts_with("usb")) {
        return None;
    }
    if let Some(ata) = below.iter().find_map(|c| c.strip_prefix("ata")) {
        let port: u32 = ata.parse().ok()?;
        path.push_str(&format!("-ata-{port}"));
    } else if let Some(h) = below.iter().find_map(|c| parse_hctl(c)) {
        path.push_str(&format!("-scsi-0:{}:{}:{}", h[1], h[2], h[3]));
    } else if below.contains(&"nvme") {
        let nsid = name.rsplit_once('n').and_then(|(_, n)| n.parse::<u32>().ok())?;
        path.push_str(&format!("-nvme-{nsid}"));
    } else if !below.iter().any(|c| c.starts_with("virtio")) {
        return None;
    }
    Some(format!("/dev/disk/by-path/{path}"))
}

/// Whether a `/sys/block` entry is a disk worth reporting (not a loop, RAM, device-mapper, md or optical device).
pub fn is_disk_name(name: &str) -> bool {
    !["loop", "ram", "zram", "dm-", "md", "sr", "fd", "nbd"]
        .iter()
        .any(|p| name.starts_with(p))
}

fn read_trim(p: &Path) -> Option<String> {
    fs::read_to_string(p).ok().map(|s| s.trim().to_string())
}

fn read_or_empty(p: &Path) -> String {
    read_trim(p).unwrap_or_default()
}

/// The target of a symlink, made absolute relative to the link's directory, lexically normalised (no `..`).
fn resolve_link(link: &Path) -> Option<PathBuf> {
    let target = fs::read_link(link).ok()?;
    let joined = link.parent()?.join(target);
    let mut out = PathBuf::new();
    for c in joined.components() {
        match c {
            std::path::Component::ParentDir => {
                out.pop();
            }
            std::path::Component::CurDir => {}
            other => out.push(other),
        }
    }
    Some(out)
}

/// One disk from `<root>/sys/block/<name>`.
pub fn read_disk(root: &Path, name: &str) -> Option<DiskInfo> {
    let dir = root.join("sys/block").join(name);
    let sectors: u64 = read_trim(&dir.join("size"))?.parse().ok()?;
    let dev = dir.join("device");
    let devpath = resolve_link(&dir)
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default();
    let serial = read_trim(&dir.join("serial"))
        .or_else(|| read_trim(&dev.join("serial")))
        .unwrap_or_default();
    let wwid = read_trim(&dir.join("wwid"))
        .or_else(|| read_trim(&dev.join("wwid")))
        .unwrap_or_default();
    let (wwn, wwn_with_extension, wwn_vendor_extension) = split_wwid(&wwid);
    let by_path = existing_by_path(root, name).or_else(|| by_path_from_devpath(&devpath, name));
    Some(DiskInfo {
        name: format!("/dev/{name}"),
        by_path,
        size_bytes: sectors * 512,
        model: read_or_empty(&dev.join("model")),
        vendor: read_or_empty(&dev.join("vendor")),
        serial,
        wwn,
        wwn_with_extension,
        wwn_vendor_extension,
        hctl: hctl_from_devpath(&devpath).unwrap_or_default(),
        rotational: read_trim(&dir.join("queue/rotational")).as_deref() == Some("1"),
        removable: read_trim(&dir.join("removable")).as_deref() == Some("1"),
    })
}

/// A udev-made `/dev/disk/by-path` link pointing at `/dev/<name>`, when udev runs (not in the busybox ramdisk).
fn existing_by_path(root: &Path, name: &str) -> Option<String> {
    let dir = root.join("dev/disk/by-path");
    let mut links: Vec<_> = fs::read_dir(&dir).ok()?.flatten().collect();
    links.sort_by_key(|e| e.file_name());
    links.into_iter().find_map(|e| {
        let t = fs::read_link(e.path()).ok()?;
        (t.file_name()? == name).then(|| format!("/dev/disk/by-path/{}", e.file_name().to_string_lossy()))
    })
}

/// Every disk under `<root>/sys/block`, sorted by name.
pub fn read_disks(root: &Path) -> Vec<DiskInfo> {
    let mut names: Vec<String> = fs::read_dir(root.join("sys/block"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.retain(|n| is_disk_name(n));
    names.sort();
    names.iter().filter_map(|n| read_disk(root, n)).collect()
}

/// One NIC from `<root>/sys/class/net/<name>`; `None` for virtual interfaces (no `device` link).
pub fn read_nic(root: &Path, name: &str, ipv4: &BTreeMap<String, Vec<String>>) -> Option<NicInfo> {
    let dir = root.join("sys/class/net").join(name);
    if fs::symlink_metadata(dir.join("device")).is_err() {
        return None;
    }
    let driver = fs::read_link(dir.join("device/driver"))
        .ok()
        .and_then(|t| t.file_name().map(|f| f.to_string_lossy().into_owned()))
        .unwrap_or_default();
    let operstate = read_or_empty(&dir.join("operstate"));
    let carrier = read_trim(&dir.join("carrier"));
    let speed = read_trim(&dir.join("speed"))
        .and_then(|s| s.parse::<i64>().ok())
        .filter(|s| *s > 0)
        .and_then(|s| u32::try_from(s).ok());
    Some(NicInfo {
        name: name.to_string(),
        mac: read_or_empty(&dir.join("address")).to_ascii_lowercase(),
        driver,
        link_up: operstate == "up" || carrier.as_deref() == Some("1"),
        speed_mbps: speed,
        ipv4: ipv4.get(name).cloned().unwrap_or_default(),
    })
}

/// Every physical NIC, sorted by name.
pub fn read_nics(root: &Path, ipv4: &BTreeMap<String, Vec<String>>) -> Vec<NicInfo> {
    let mut names: Vec<String> = fs::read_dir(root.join("sys/class/net"))
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names.iter().filter_map(|n| read_nic(root, n, ipv4)).collect()
}

/// DMI identity from `<root>/sys/class/dmi/id`.
pub fn read_system(root: &Path) -> SystemInfo {
    let d = root.join("sys/class/dmi/id");
    SystemInfo {
        vendor: read_or_empty(&d.join("sys_vendor")),
        product: read_or_empty(&d.join("product_name")),
        serial: read_or_empty(&d.join("product_serial")),
        uuid: read_or_empty(&d.join("product_uuid")).to_ascii_lowercase(),
    }
}

/// Installed memory: the hotplug blocks when present, else `MemTotal`.
pub fn read_memory_mib(root: &Path) -> u64 {
    let mem = root.join("sys/devices/system/memory");
    let blocks = fs::read_dir(&mem)
        .map(|rd| {
            rd.flatten()
                .filter(|e| {
                    let n = e.file_name();
                    let n = n.to_string_lossy();
                    n.starts_with("memory") && n[6..].parse::<u64>().is_ok()
                })
                .filter(|e| read_trim(&e.path().join("state")).as_deref() != Some("offline"))
                .count() as u64
        })
        .unwrap_or(0);
    read_trim(&mem.join("block_size_bytes"))
        .and_then(|b| memory_from_blocks_mib(&b, blocks))
        .or_else(|| {
            fs::read_to_string(root.join("proc/meminfo"))
                .ok()
                .and_then(|t| parse_meminfo_mib(&t))
        })
        .unwrap_or(0)
}

/// The whole inventory under `root`, with the interfaces' IPv4 addresses supplied by the caller.
pub fn inventory(root: &Path, ipv4: &BTreeMap<String, Vec<String>>) -> HardwareInventory {
    let cpuinfo = fs::read_to_string(root.join("proc/cpuinfo")).unwrap_or_default();
    HardwareInventory {
        system: read_system(root),
        cpu: parse_cpuinfo(&cpuinfo, std::env::consts::ARCH),
        memory_mib: read_memory_mib(root),
        disks: read_disks(root),
        nics: read_nics(root, ipv4),
        boot_mode: if root.join("sys/firmware/efi").exists() {
            "uefi"
        } else {
            "legacy"
        }
        .to_string(),
    }
}

/// IPv4 addresses per interface, from `getifaddrs(3)`.
pub fn local_ipv4() -> BTreeMap<String, Vec<String>> {
    let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
    if let Ok(addrs) = nix::ifaddrs::getifaddrs() {
        for a in addrs {
            if let Some(sin) = a.address.as_ref().and_then(|s| s.as_sockaddr_in()) {
                out.entry(a.interface_name.clone())
                    .or_default()
                    .push(sin.ip().to_string());
            }
        }
    }
    out
}

#[cfg(test)]
#[path = "inspect_tests.rs"]
mod tests;
