//! The netboot ramdisk builder: `vmlinuz` + `initramfs` from the distribution's kernel package (Debian's
//! `linux-image-amd64`), busybox-static with its applet links, an `/init` that loads the storage and NIC modules,
//! runs udhcpc and starts kiln-agent, and the static kiln-agent binary.
//!
//! The archive is written by [`write_cpio_newc`] (the "new ASCII" format the kernel unpacks, see the kernel's
//! `Documentation/driver-api/early-userspace/buffer-format.rst`) with fixed inode numbers, owners and mtimes and
//! sorted names, then compressed with `gzip -n`, so the same inputs give the same bytes. A content key over every
//! input is stored beside the output; an unchanged key reuses the previous build. The kernel `.deb` is cached.
//! External tools used: `apt-cache`, `apt-get download`, `dpkg-deb`, `depmod`, `modprobe`, `gzip`, and `cargo` for
//! [`build_static_agent`]. Nothing here runs inside the ramdisk.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

mod cpio;

pub use cpio::{Entry, write_cpio_newc};

/// Modules loaded by `/init`, in this order, each after its dependencies.
pub const DEFAULT_MODULES: &[&str] = &[
    "virtio_pci",
    "virtio_blk",
    "virtio_scsi",
    "virtio_net",
    "ahci",
    "sd_mod",
    "nvme",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "tg3",
    "r8169",
    // The BMC's in-band interface, for a discovery boot's lookup by BMC address (`/dev/ipmi0`); `ipmi_si` finds
    // nothing on hosts without one, which is not an error.
    "ipmi_si",
    "ipmi_devintf",
];

/// Modules whose load fails, silently, on hosts without their hardware.
const OPTIONAL_MODULES: &[&str] = &["ipmi_si"];

/// The ramdisk may not grow past this (kernel + initramfs), so that PXE/HTTP boot stays quick.
pub const MAX_TOTAL_BYTES: u64 = 64 * 1024 * 1024;

/// The host's CA certificates, copied to the same path in the ramdisk.
const CA_BUNDLE: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Bumped whenever the layout changes, so that cached builds are redone.
const LAYOUT_VERSION: &str = "kiln-ramdisk-2";

/// Things that stop a ramdisk build.
#[derive(Debug, thiserror::Error)]
pub enum RamdiskError {
    #[error("running {program}")]
    Spawn {
        program: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{command} failed ({status}): {stderr}")]
    Tool {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("no linux-image-* dependency of {metapackage} in `apt-cache depends` output")]
    NoKernelPackage { metapackage: String },
    #[error("kernel package {package} contains no /lib/modules/<version>")]
    NoKernelVersion { package: String },
    #[error("module {module} not found for kernel {kernel}")]
    Module { module: String, kernel: String },
    #[error("file I/O on {path}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the extra CA certificates: {reason}")]
    ExtraCa { reason: String },
    #[error("the ramdisk is {bytes} bytes, over the {limit}-byte limit")]
    TooBig { bytes: u64, limit: u64 },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> RamdiskError + '_ {
    move |source| RamdiskError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What to build and where.
#[derive(Debug, Clone)]
pub struct RamdiskSpec {
    /// The static kiln-agent binary to include as `/bin/kiln-agent`.
    pub agent_binary: PathBuf,
    /// Where the kernel `.deb` and its extracted tree are cached (e.g. `.cache/ramdisk`).
    pub cache_dir: PathBuf,
    /// Receives `vmlinuz`, `initramfs` and `ramdisk.key`.
    pub out_dir: PathBuf,
    /// The statically linked busybox (Debian's busybox-static installs `/bin/busybox`).
    pub busybox: PathBuf,
    /// The kernel metapackage whose `linux-image-<version>` dependency is used.
    pub kernel_metapackage: String,
    pub modules: Vec<String>,
    /// PEM certificates the agent trusts besides the build host's system CAs (image servers and registries behind a
    /// private CA), appended to the ramdisk's CA bundle; empty for none.
    pub extra_ca_pem: Vec<u8>,
}

impl RamdiskSpec {
    /// Defaults: `/bin/busybox`, `linux-image-amd64`, [`DEFAULT_MODULES`].
    pub fn new(agent_binary: impl Into<PathBuf>, cache_dir: impl Into<PathBuf>, out_dir: impl Into<PathBuf>) -> Self {
        RamdiskSpec {
            agent_binary: agent_binary.into(),
            cache_dir: cache_dir.into(),
            out_dir: out_dir.into(),
            busybox: PathBuf::from("/bin/busybox"),
            kernel_metapackage: "linux-image-amd64".into(),
            modules: DEFAULT_MODULES.iter().map(|s| s.to_string()).collect(),
            extra_ca_pem: Vec::new(),
        }
    }
}

/// The number of certificates in `pem`, which must hold at least one and nothing unreadable.
///
/// # Errors
/// A message saying what is wrong.
pub fn count_ca_certificates(pem: &[u8]) -> Result<usize, String> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut n = 0;
    for cert in CertificateDer::pem_slice_iter(pem) {
        cert.map_err(|e| format!("not a readable PEM certificate: {e}"))?;
        n += 1;
    }
    if n == 0 {
        return Err("no PEM certificate (-----BEGIN CERTIFICATE-----) in it".into());
    }
    Ok(n)
}

/// The ramdisk's CA bundle: the build host's system bundle, then `extra` (each ending in a newline); `None` when
/// both are empty.
pub fn ca_bundle(system: Option<Vec<u8>>, extra: &[u8]) -> Option<Vec<u8>> {
    let mut out = system.unwrap_or_default();
    if !extra.is_empty() {
        if !out.is_empty() && !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.extend_from_slice(extra);
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
    }
    (!out.is_empty()).then_some(out)
}

/// A built ramdisk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ramdisk {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub kernel_version: String,
    /// Total size of kernel + initramfs.
    pub bytes: u64,
    /// `true` when an earlier build with the same inputs was reused.
    pub cached: bool,
    /// GRUB for x86-64 UEFI (`grubx64.efi`) that boots the ramdisk from kiln's virtual-media ISO, when GRUB's EFI
    /// modules are installed (Debian's `grub-efi-amd64-bin`); `None` otherwise (virtual-media boot is then
    /// unavailable, netboot is not affected).
    pub efi_loader: Option<PathBuf>,
    /// GRUB's El Torito boot image for BIOS (`grub-eltorito.img`: cdboot + core, 4 sectors loaded, boot info table
    /// patched by the ISO writer), when GRUB's i386-pc modules are installed (Debian's `grub-pc-bin`).
    pub bios_loader: Option<PathBuf>,
}

/// Where GRUB's x86-64 UEFI modules are installed.
pub const GRUB_EFI_MODULES: &str = "/usr/lib/grub/x86_64-efi";
/// Where GRUB's BIOS modules are installed.
pub const GRUB_BIOS_MODULES: &str = "/usr/lib/grub/i386-pc";

/// The configuration built into [`build_grub_efi`]'s GRUB: it finds kiln's ISO by the file only kiln's ISO carries
/// and runs that file, which holds the kernel command line of the one boot.
pub const GRUB_EARLY_CONFIG: &str = "search --no-floppy --set=root --file /KILN/GRUB.CFG
configfile ($root)/KILN/GRUB.CFG
";

/// The GRUB modules built into the image: what reading the ISO and booting Linux on UEFI need.
const GRUB_MODULES: &[&str] = &[
    "iso9660",
    "part_gpt",
    "part_msdos",
    "fat",
    "search",
    "search_fs_file",
    "configfile",
    "normal",
    "echo",
    "test",
    "linux",
    "gzio",
    "serial",
    "terminal",
];

/// Builds (or reuses) `out_dir/grubx64.efi` with `grub-mkimage` from the installed modules, with
/// [`GRUB_EARLY_CONFIG`] built in. `Ok(None)` when GRUB's EFI modules are not installed.
///
/// # Errors
/// The tool's failure or an I/O error.
pub fn build_grub_efi(out_dir: &Path) -> Result<Option<PathBuf>, RamdiskError> {
    build_grub(
        out_dir,
        GRUB_EFI_MODULES,
        "x86_64-efi",
        "grubx64.efi",
        &["efi_gop", "all_video"],
    )
}

/// Builds (or reuses) `out_dir/grub-eltorito.img`, GRUB's El Torito image for BIOS, the same way. `Ok(None)` when
/// GRUB's i386-pc modules are not installed.
///
/// # Errors
/// The tool's failure or an I/O error.
pub fn build_grub_bios(out_dir: &Path) -> Result<Option<PathBuf>, RamdiskError> {
    build_grub(
        out_dir,
        GRUB_BIOS_MODULES,
        "i386-pc-eltorito",
        "grub-eltorito.img",
        &["biosdisk"],
    )
}

fn build_grub(
    out_dir: &Path,
    modules_dir: &str,
    format: &str,
    file: &str,
    platform_modules: &[&str],
) -> Result<Option<PathBuf>, RamdiskError> {
    let modules = Path::new(modules_dir);
    if !modules.join("kernel.img").is_file() {
        return Ok(None);
    }
    let mut key = 0xcbf2_9ce4_8422_2325u64;
    fnv1a(&mut key, GRUB_EARLY_CONFIG.as_bytes());
    for m in GRUB_MODULES.iter().chain(platform_modules) {
        fnv1a(&mut key, m.as_bytes());
    }
    fnv1a(
        &mut key,
        &fs::read(modules.join("kernel.img")).map_err(io_err(modules))?,
    );
    let key = format!("{key:016x}");
    fs::create_dir_all(out_dir).map_err(io_err(out_dir))?;
    let out = out_dir.join(file);
    let key_file = out_dir.join(format!("{file}.key"));
    if out.is_file() && fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str()) {
        return Ok(Some(out));
    }
    let early = out_dir.join("grub-early.cfg");
    fs::write(&early, GRUB_EARLY_CONFIG).map_err(io_err(&early))?;
    let tmp = out_dir.join(format!("{file}.tmp"));
    run(Command::new("grub-mkimage")
        .args(["-O", format, "-p", "/boot/grub", "-d"])
        .arg(modules)
        .arg("-c")
        .arg(&early)
        .arg("-o")
        .arg(&tmp)
        .args(GRUB_MODULES)
        .args(platform_modules))?;
    fs::rename(&tmp, &out).map_err(io_err(&out))?;
    fs::write(&key_file, key).map_err(io_err(&key_file))?;
    Ok(Some(out))
}

fn run(cmd: &mut Command) -> Result<Vec<u8>, RamdiskError> {
    let program = format!("{cmd:?}");
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|source| RamdiskError::Spawn {
            program: program.clone(),
            source,
        })?;
    if !out.status.success() {
        return Err(RamdiskError::Tool {
            command: program,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).chars().take(2000).collect(),
        });
    }
    Ok(out.stdout)
}

/// The versioned kernel package from `apt-cache depends linux-image-amd64` output.
pub fn parse_kernel_package(apt_cache_depends: &str) -> Option<String> {
    apt_cache_depends.lines().find_map(|l| {
        let dep = l.trim().strip_prefix("Depends:")?.trim();
        let rest = dep.strip_prefix("linux-image-")?;
        rest.starts_with(|c: char| c.is_ascii_digit()).then(|| dep.to_string())
    })
}

/// Module files in load order from `modprobe --show-depends` output (`insmod /path/x.ko [params]` lines;
/// `builtin x` lines need nothing).
pub fn parse_show_depends(out: &str) -> Vec<PathBuf> {
    out.lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            if w.next()? != "insmod" {
                return None;
            }
            w.next().map(PathBuf::from)
        })
        .collect()
}

/// 64-bit FNV-1a, for the cache key (not a security boundary; it only decides whether to rebuild).
fn fnv1a(h: &mut u64, bytes: &[u8]) {
    for b in bytes {
        *h ^= u64::from(*b);
        *h = h.wrapping_mul(0x0100_0000_01b3);
    }
}

/// The `/init` script: mounts, modules, the network on the boot NIC (`kiln.mac=`, else the first NIC): static
/// addresses when the command line has them (`kiln.ip=<addr>/<prefix>[,...]`, `kiln.gw=`, `kiln.gw6=`, `kiln.dns=`,
/// `kiln.mtu=`, from the host's preprovisioning network data), else DHCP (the first NIC that gets a lease); then
/// kiln-agent; when the agent exits the machine powers off (there is no shell to fall into).
pub const INIT_SCRIPT: &str = r#"#!/bin/sh
export PATH=/bin:/sbin:/usr/bin:/usr/sbin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
mkdir -p /dev/pts /run /tmp /var/run
m() { echo "KILN-AGENT $*" > /dev/console; }
m init
arg() { for w in $(cat /proc/cmdline); do case $w in $1=*) echo "${w#*=}"; return;; esac; done; }
for mod in $(cat /lib/modules/order); do
  insmod /lib/modules/$mod.ko 2>/dev/null || grep -qx "$mod" /lib/modules/optional || m "insmod-failed $mod"
done
m modules-loaded
MAC=$(arg kiln.mac | tr A-F a-f | tr - :)
ip link set lo up
nics() { for d in /sys/class/net/*; do [ -e $d/device ] && echo ${d##*/}; done; }
for i in $(seq 100); do [ -n "$(nics)" ] && break; sleep 0.1; done
BOUND=""
IPS=$(arg kiln.ip)
if [ -n "$IPS" ]; then
  for n in $(nics); do
    if [ -n "$MAC" ] && [ "$(cat /sys/class/net/$n/address)" != "$MAC" ]; then continue; fi
    BOUND=$n; break
  done
  if [ -n "$BOUND" ]; then
    MTU=$(arg kiln.mtu)
    [ -n "$MTU" ] && ip link set $BOUND mtu $MTU
    ip link set $BOUND up
    for a in $(echo $IPS | tr , ' '); do ip addr add $a dev $BOUND; done
    GW=$(arg kiln.gw); [ -n "$GW" ] && ip route replace default via $GW dev $BOUND
    GW6=$(arg kiln.gw6); [ -n "$GW6" ] && ip -6 route replace default via $GW6 dev $BOUND
    for d in $(arg kiln.dns | tr , ' '); do echo "nameserver $d"; done > /etc/resolv.conf
    m "static $BOUND $IPS gw=$GW gw6=$GW6"
  else
    m "static-failed no NIC ${MAC:-at all}"
  fi
else
  for n in $(nics); do
    if [ -n "$MAC" ] && [ "$(cat /sys/class/net/$n/address)" != "$MAC" ]; then continue; fi
    ip link set $n up
    if udhcpc -i $n -n -t 10 -T 2 -A 2 -s /etc/udhcpc/default.script; then BOUND=$n; break; fi
  done
  if [ -n "$BOUND" ]; then m "dhcp-bound $BOUND"; else m dhcp-failed; fi
fi
m agent-exec
/bin/kiln-agent
m "agent-exit rc=$?"
sync
poweroff -f
"#;

/// The busybox udhcpc hook: applies the lease (address, default route, DNS).
pub const UDHCPC_SCRIPT: &str = r#"#!/bin/sh
case "$1" in
  deconfig) ip addr flush dev $interface; ip link set $interface up ;;
  bound|renew)
    ip addr flush dev $interface
    ip addr add $ip/${mask:-24} dev $interface
    [ -n "$router" ] && ip route replace default via ${router%% *} dev $interface
    [ -n "$dns" ] && for d in $dns; do echo "nameserver $d"; done > /etc/resolv.conf
    echo "KILN-AGENT dhcp-lease $interface $ip/$mask router=$router" > /dev/console ;;
esac
exit 0
"#;

/// Downloads (once) and extracts (once) the kernel package; returns (extracted root, kernel version, package).
fn kernel_tree(spec: &RamdiskSpec) -> Result<(PathBuf, String, String), RamdiskError> {
    let deps = run(Command::new("apt-cache").args(["depends", &spec.kernel_metapackage]))?;
    let package =
        parse_kernel_package(&String::from_utf8_lossy(&deps)).ok_or_else(|| RamdiskError::NoKernelPackage {
            metapackage: spec.kernel_metapackage.clone(),
        })?;
    let debs = spec.cache_dir.join("debs");
    fs::create_dir_all(&debs).map_err(io_err(&debs))?;
    let find_deb = || -> Option<PathBuf> {
        let prefix = format!("{package}_");
        let mut v: Vec<PathBuf> = fs::read_dir(&debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                n.starts_with(&prefix) && n.ends_with(".deb")
            })
            .collect();
        v.sort();
        v.pop()
    };
    let deb = match find_deb() {
        Some(d) => d,
        None => {
            tracing::info!(%package, "downloading the kernel package");
            run(Command::new("apt-get").args(["download", &package]).current_dir(&debs))?;
            find_deb().ok_or_else(|| RamdiskError::NoKernelVersion {
                package: package.clone(),
            })?
        }
    };
    let tree = spec.cache_dir.join(format!("kernel-{package}"));
    let done = tree.join(".kiln-extracted");
    if !done.exists() {
        let _ = fs::remove_dir_all(&tree);
        fs::create_dir_all(&tree).map_err(io_err(&tree))?;
        run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&tree))?;
    }
    let kver = fs::read_dir(tree.join("lib/modules"))
        .map_err(io_err(&tree.join("lib/modules")))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .next()
        .ok_or_else(|| RamdiskError::NoKernelVersion {
            package: package.clone(),
        })?;
    if !done.exists() {
        run(Command::new("depmod").arg("-b").arg(&tree).arg(&kver))?;
        fs::write(&done, b"").map_err(io_err(&done))?;
    }
    Ok((tree, kver, package))
}

/// Modules (name, file) in load order, dependencies first, each once.
fn module_closure(tree: &Path, kver: &str, modules: &[String]) -> Result<Vec<(String, PathBuf)>, RamdiskError> {
    let mut out: Vec<(String, PathBuf)> = Vec::new();
    for m in modules {
        let text = run(Command::new("modprobe")
            .arg("-d")
            .arg(tree)
            .args(["-S", kver, "--show-depends", m]))
        .map_err(|_| RamdiskError::Module {
            module: m.clone(),
            kernel: kver.to_string(),
        })?;
        for f in parse_show_depends(&String::from_utf8_lossy(&text)) {
            let name = f
                .file_name()
                .map(|n| n.to_string_lossy().split(".ko").next().unwrap_or_default().to_string())
                .unwrap_or_default();
            if !out.iter().any(|(n, _)| *n == name) {
                out.push((name, f));
            }
        }
    }
    Ok(out)
}

/// Reads a module file, decompressing `.ko.xz`/`.ko.zst` with the host's tools (busybox insmod wants plain `.ko`).
fn read_module(path: &Path) -> Result<Vec<u8>, RamdiskError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().into_owned())
        .unwrap_or_default();
    match ext.as_str() {
        "xz" => run(Command::new("xz").arg("-dc").arg(path)),
        "zst" => run(Command::new("zstd").arg("-dc").arg(path)),
        "gz" => run(Command::new("gzip").arg("-dc").arg(path)),
        _ => fs::read(path).map_err(io_err(path)),
    }
}

/// The binary without symbols and debug info (`strip --strip-all`), or `None` when `strip` is unavailable.
fn stripped(binary: &Path, scratch: &Path) -> Option<Vec<u8>> {
    let tmp = scratch.join("kiln-agent.stripped");
    run(Command::new("strip").arg("--strip-all").arg("-o").arg(&tmp).arg(binary)).ok()?;
    let data = fs::read(&tmp).ok();
    let _ = fs::remove_file(&tmp);
    data
}

/// Builds (or reuses) the ramdisk described by `spec`.
///
/// # Errors
/// A [`RamdiskError`] naming the tool or file that failed, or [`RamdiskError::TooBig`].
pub fn build(spec: &RamdiskSpec) -> Result<Ramdisk, RamdiskError> {
    if !spec.extra_ca_pem.is_empty() {
        count_ca_certificates(&spec.extra_ca_pem).map_err(|reason| RamdiskError::ExtraCa { reason })?;
    }
    let (tree, kver, package) = kernel_tree(spec)?;
    let efi_loader = build_grub_efi(&spec.out_dir)?;
    let bios_loader = build_grub_bios(&spec.out_dir)?;
    let busybox = fs::read(&spec.busybox).map_err(io_err(&spec.busybox))?;
    let agent = fs::read(&spec.agent_binary).map_err(io_err(&spec.agent_binary))?;
    fs::create_dir_all(&spec.out_dir).map_err(io_err(&spec.out_dir))?;
    let mods = module_closure(&tree, &kver, &spec.modules)?;

    let mut key = 0xcbf2_9ce4_8422_2325u64;
    for part in [
        LAYOUT_VERSION.as_bytes(),
        package.as_bytes(),
        INIT_SCRIPT.as_bytes(),
        UDHCPC_SCRIPT.as_bytes(),
    ] {
        fnv1a(&mut key, part);
        fnv1a(&mut key, &[0]);
    }
    fnv1a(&mut key, &busybox);
    fnv1a(&mut key, &agent);
    fnv1a(&mut key, &fs::read(CA_BUNDLE).unwrap_or_default());
    fnv1a(&mut key, &spec.extra_ca_pem);
    for (n, _) in &mods {
        fnv1a(&mut key, n.as_bytes());
    }
    let key = format!("{key:016x}");
    let kernel_out = spec.out_dir.join("vmlinuz");
    let initramfs_out = spec.out_dir.join("initramfs");
    let key_file = spec.out_dir.join("ramdisk.key");
    let size = |p: &Path| fs::metadata(p).map(|m| m.len()).unwrap_or(0);
    if fs::read_to_string(&key_file).ok().as_deref() == Some(key.as_str())
        && kernel_out.exists()
        && initramfs_out.exists()
    {
        return Ok(Ramdisk {
            bytes: size(&kernel_out) + size(&initramfs_out),
            kernel: kernel_out,
            initramfs: initramfs_out,
            kernel_version: kver,
            cached: true,
            efi_loader,
            bios_loader,
        });
    }

    let mut entries: BTreeMap<String, Entry> = BTreeMap::new();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "etc",
        "etc/udhcpc",
        "proc",
        "sys",
        "dev",
        "tmp",
        "run",
        "mnt",
        "lib",
        "lib/modules",
        "var",
        "var/run",
        "root",
    ] {
        entries.insert(d.into(), Entry::Dir);
    }
    entries.insert("dev/console".into(), Entry::CharDev(5, 1));
    entries.insert("dev/null".into(), Entry::CharDev(1, 3));
    let applets = run(Command::new(&spec.busybox).arg("--list"))?;
    for a in String::from_utf8_lossy(&applets).lines().map(str::trim) {
        if !a.is_empty() && a != "busybox" && !a.contains('/') {
            entries.insert(format!("bin/{a}"), Entry::Symlink("busybox".into()));
        }
    }
    entries.insert(
        "bin/busybox".into(),
        Entry::File {
            data: busybox,
            executable: true,
        },
    );
    let agent = stripped(&spec.agent_binary, &spec.out_dir).unwrap_or(agent);
    entries.insert(
        "bin/kiln-agent".into(),
        Entry::File {
            data: agent,
            executable: true,
        },
    );
    entries.insert(
        "init".into(),
        Entry::File {
            data: INIT_SCRIPT.into(),
            executable: true,
        },
    );
    entries.insert(
        "etc/udhcpc/default.script".into(),
        Entry::File {
            data: UDHCPC_SCRIPT.into(),
            executable: true,
        },
    );
    // The host's CA bundle, so that HTTPS image sources and appliances with public certificates verify.
    if let Some(data) = ca_bundle(fs::read(CA_BUNDLE).ok(), &spec.extra_ca_pem) {
        entries.insert("etc/ssl".into(), Entry::Dir);
        entries.insert("etc/ssl/certs".into(), Entry::Dir);
        entries.insert(
            "etc/ssl/certs/ca-certificates.crt".into(),
            Entry::File {
                data,
                executable: false,
            },
        );
    }
    let mut order = String::new();
    for (name, file) in &mods {
        entries.insert(
            format!("lib/modules/{name}.ko"),
            Entry::File {
                data: read_module(file)?,
                executable: false,
            },
        );
        order.push_str(name);
        order.push('\n');
    }
    entries.insert(
        "lib/modules/order".into(),
        Entry::File {
            data: order.into_bytes(),
            executable: false,
        },
    );
    let optional: String = OPTIONAL_MODULES.iter().map(|m| format!("{m}\n")).collect();
    entries.insert(
        "lib/modules/optional".into(),
        Entry::File {
            data: optional.into_bytes(),
            executable: false,
        },
    );

    fs::create_dir_all(&spec.out_dir).map_err(io_err(&spec.out_dir))?;
    let mut cpio = Vec::new();
    write_cpio_newc(&mut cpio, &entries).map_err(io_err(&initramfs_out))?;
    let tmp = spec.out_dir.join("initramfs.tmp");
    let tmp_file = fs::File::create(&tmp).map_err(io_err(&tmp))?;
    let mut gz = Command::new("gzip")
        .args(["-n", "-6"])
        .stdin(Stdio::piped())
        .stdout(tmp_file)
        .spawn()
        .map_err(|source| RamdiskError::Spawn {
            program: "gzip".into(),
            source,
        })?;
    let mut stdin = gz.stdin.take().ok_or_else(|| RamdiskError::Spawn {
        program: "gzip".into(),
        source: std::io::Error::other("no stdin pipe"),
    })?;
    stdin.write_all(&cpio).map_err(io_err(&tmp))?;
    drop(stdin);
    let status = gz.wait().map_err(io_err(&tmp))?;
    if !status.success() {
        return Err(RamdiskError::Tool {
            command: "gzip -n".into(),
            status: status.to_string(),
            stderr: String::new(),
        });
    }
    let vmlinuz = tree.join(format!("boot/vmlinuz-{kver}"));
    fs::copy(&vmlinuz, &kernel_out).map_err(io_err(&vmlinuz))?;
    fs::rename(&tmp, &initramfs_out).map_err(io_err(&initramfs_out))?;
    let bytes = size(&kernel_out) + size(&initramfs_out);
    if bytes > MAX_TOTAL_BYTES {
        return Err(RamdiskError::TooBig {
            bytes,
            limit: MAX_TOTAL_BYTES,
        });
    }
    fs::write(&key_file, &key).map_err(io_err(&key_file))?;
    tracing::info!(kernel = %kver, modules = mods.len(), bytes, "ramdisk built");
    Ok(Ramdisk {
        kernel: kernel_out,
        initramfs: initramfs_out,
        kernel_version: kver,
        bytes,
        cached: false,
        efi_loader,
        bios_loader,
    })
}

/// Builds kiln-agent as a static-pie glibc binary (`-C target-feature=+crt-static`, explicit `--target` so build
/// scripts stay dynamic) from the workspace at `workspace`, into `target_dir`; returns the binary's path.
///
/// # Errors
/// [`RamdiskError::Tool`] with cargo's output when the build fails.
pub fn build_static_agent(workspace: &Path, target_dir: &Path) -> Result<PathBuf, RamdiskError> {
    const TARGET: &str = "x86_64-unknown-linux-gnu";
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    run(Command::new(cargo)
        .current_dir(workspace)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env("CARGO_TARGET_DIR", target_dir)
        .args(["build", "--release", "-p", "kiln-agent", "--target", TARGET]))?;
    Ok(target_dir.join(TARGET).join("release/kiln-agent"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_cas_are_appended_to_the_system_bundle_and_checked() {
        let cert = rcgen::generate_simple_self_signed(vec!["registry.example".into()])
            .unwrap()
            .cert
            .pem();
        assert_eq!(count_ca_certificates(cert.as_bytes()), Ok(1));
        assert_eq!(count_ca_certificates(format!("{cert}{cert}").as_bytes()), Ok(2));
        assert!(
            count_ca_certificates(b"hello")
                .unwrap_err()
                .contains("no PEM certificate")
        );
        let broken = cert.replace("MII", "M!I");
        assert!(count_ca_certificates(broken.as_bytes()).is_err(), "{broken}");
        let system = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----".to_vec();
        let both = ca_bundle(Some(system.clone()), cert.trim_end().as_bytes()).unwrap();
        assert!(both.starts_with(&system) && both.ends_with(b"-----END CERTIFICATE-----\n"));
        assert_eq!(&both[system.len()..system.len() + 1], b"\n");
        assert_eq!(ca_bundle(Some(system.clone()), b""), Some(system));
        assert_eq!(ca_bundle(None, b""), None);
        assert_eq!(ca_bundle(None, cert.as_bytes()), Some(cert.into_bytes()));
    }

    #[test]
    fn kernel_package_from_apt_cache() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n  Recommends: firmware-linux-free\n";
        assert_eq!(parse_kernel_package(out).as_deref(), Some("linux-image-6.1.0-56-amd64"));
        assert_eq!(
            parse_kernel_package("linux-image-amd64\n  Depends: linux-image-cloud\n"),
            None
        );
    }

    #[test]
    fn show_depends_order() {
        let out = "builtin virtio\ninsmod /k/lib/modules/6.1/kernel/drivers/virtio/virtio_ring.ko \n\
                   insmod /k/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko foo=1\n";
        assert_eq!(
            parse_show_depends(out),
            vec![
                PathBuf::from("/k/lib/modules/6.1/kernel/drivers/virtio/virtio_ring.ko"),
                PathBuf::from("/k/lib/modules/6.1/kernel/drivers/block/virtio_blk.ko")
            ]
        );
    }

    #[test]
    fn cpio_newc_layout() {
        let mut e = BTreeMap::new();
        e.insert("bin".to_string(), Entry::Dir);
        e.insert("bin/sh".to_string(), Entry::Symlink("busybox".into()));
        e.insert(
            "init".to_string(),
            Entry::File {
                data: b"#!/bin/sh\n".to_vec(),
                executable: true,
            },
        );
        e.insert("dev/console".to_string(), Entry::CharDev(5, 1));
        let mut out = Vec::new();
        write_cpio_newc(&mut out, &e).unwrap();
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // header of the first record (`bin`): ino 1, mode 040755, nlink 2, namesize 4
        let hdr = std::str::from_utf8(&out[..110]).unwrap();
        assert_eq!(&hdr[6..14], "00000001");
        assert_eq!(&hdr[14..22], "000041ED");
        assert_eq!(&hdr[38..46], "00000002");
        assert_eq!(&hdr[94..102], "00000004");
        let s = String::from_utf8_lossy(&out);
        assert!(s.contains("TRAILER!!!"));
        assert!(s.contains("#!/bin/sh\n"));
        let mut again = Vec::new();
        write_cpio_newc(&mut again, &e).unwrap();
        assert_eq!(out, again, "deterministic");
    }

    #[test]
    fn cpio_is_readable_by_gnu_cpio() {
        let mut e = BTreeMap::new();
        e.insert("etc".to_string(), Entry::Dir);
        e.insert(
            "etc/a".to_string(),
            Entry::File {
                data: b"hello".to_vec(),
                executable: false,
            },
        );
        e.insert("etc/b".to_string(), Entry::Symlink("a".into()));
        let mut out = Vec::new();
        write_cpio_newc(&mut out, &e).unwrap();
        let mut child = Command::new("cpio")
            .args(["-i", "-t", "-v", "--quiet"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&out).unwrap();
        let o = child.wait_with_output().unwrap();
        assert!(o.status.success());
        let listing = String::from_utf8_lossy(&o.stdout);
        assert!(listing.contains("etc/a"), "{listing}");
        assert!(listing.contains("etc/b -> a"), "{listing}");
        assert!(listing.lines().next().unwrap().starts_with("drwxr-xr-x"), "{listing}");
    }
}
