//! QEMU VMs for the lab: the command line for a VM spec (firmware, NIC with a chosen MAC on a tap in the lab's
//! namespace, disks, serial console to a file) and a running VM process killed on drop.
//!
//! Acceleration is TCG unless `KILN_ACCEL=kvm`: this machine's `/dev/kvm` is a paravirtual KVM that boots iPXE but
//! not a stock Linux kernel (TESTBED.md), so KVM cannot be detected as "usable" by its mere presence.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};

use anyhow::Context;

use crate::{cmd, netns::Netns, state::Record};

/// Firmware of a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// SeaBIOS with the NIC's iPXE option ROM.
    Bios,
    /// OVMF (UEFI), with a private copy of the variable store.
    Uefi,
}

/// Bus of a disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DiskBus {
    Virtio,
    Sata,
}

/// A disk of a VM: a sparse raw file.
#[derive(Debug, Clone)]
pub struct DiskSpec {
    pub size_mib: u64,
    pub bus: DiskBus,
}

/// Everything that defines a lab VM.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub name: String,
    pub mac: String,
    pub firmware: Firmware,
    pub memory_mib: u32,
    pub cpus: u32,
    pub disks: Vec<DiskSpec>,
    /// Whether the firmware can network-boot at all (false: the NIC has no boot ROM, like PXE disabled in the
    /// firmware setup; only effective with BIOS, OVMF has its own network stack).
    pub netboot: bool,
}

impl VmSpec {
    /// A small BIOS VM with one 512 MiB virtio disk.
    pub fn new(name: &str, mac: &str) -> Self {
        Self {
            name: name.to_owned(),
            mac: mac.to_owned(),
            firmware: Firmware::Bios,
            memory_mib: 1024,
            cpus: 1,
            disks: vec![DiskSpec {
                size_mib: 512,
                bus: DiskBus::Virtio,
            }],
            netboot: true,
        }
    }

    pub fn uefi(mut self) -> Self {
        self.firmware = Firmware::Uefi;
        self
    }

    /// A VM whose firmware cannot network-boot (BIOS without the NIC's option ROM): asked to PXE-boot, it falls
    /// through to its disk.
    pub fn without_netboot(mut self) -> Self {
        self.netboot = false;
        self
    }

    /// The disk image files of this VM inside `dir`.
    pub fn disk_paths(&self, dir: &Path) -> Vec<PathBuf> {
        (0..self.disks.len())
            .map(|i| dir.join(format!("{}-disk{i}.raw", self.name)))
            .collect()
    }

    /// Creates the disk files (sparse) and, for UEFI, the variable store; idempotent.
    pub fn prepare(&self, dir: &Path) -> anyhow::Result<()> {
        for (disk, path) in self.disks.iter().zip(self.disk_paths(dir)) {
            if !path.exists() {
                let f = std::fs::File::create(&path)?;
                f.set_len(disk.size_mib * 1024 * 1024)?;
            }
        }
        if self.firmware == Firmware::Uefi {
            let vars = dir.join(format!("{}-vars.fd", self.name));
            if !vars.exists() {
                std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).context("copy OVMF_VARS_4M.fd")?;
            }
        }
        Ok(())
    }

    /// The QEMU command line (without the program name). `network_boot` puts the NIC first in the boot order;
    /// otherwise the NIC gets no option ROM so the VM cannot netboot (like PXE disabled in firmware).
    pub fn qemu_args(&self, dir: &Path, tap: &str, serial_log: &Path, network_boot: bool) -> Vec<String> {
        let mut a: Vec<String> = Vec::new();
        let mut push = |s: &str| a.push(s.to_owned());
        push("-name");
        push(&self.name);
        push("-accel");
        push(&accel());
        push("-m");
        push(&self.memory_mib.to_string());
        push("-smp");
        push(&self.cpus.to_string());
        push("-display");
        push("none");
        push("-monitor");
        push("none");
        push("-serial");
        push(&format!("file:{}", serial_log.display()));
        match self.firmware {
            Firmware::Bios => {
                push("-machine");
                push("pc,graphics=off");
            }
            Firmware::Uefi => {
                push("-machine");
                push("q35,graphics=off");
                push("-drive");
                push("if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd");
                push("-drive");
                push(&format!(
                    "if=pflash,format=raw,file={}",
                    dir.join(format!("{}-vars.fd", self.name)).display()
                ));
            }
        }
        push("-netdev");
        push(&format!("tap,id=n0,ifname={tap},script=no,downscript=no"));
        push("-device");
        if network_boot && self.netboot {
            push(&format!("virtio-net-pci,netdev=n0,mac={},bootindex=1", self.mac));
        } else {
            push(&format!("virtio-net-pci,netdev=n0,mac={},romfile=", self.mac));
        }
        let sata = self.disks.iter().any(|d| d.bus == DiskBus::Sata);
        if sata && self.firmware == Firmware::Bios {
            push("-device");
            push("ahci,id=ahci0");
        }
        for (i, (disk, path)) in self.disks.iter().zip(self.disk_paths(dir)).enumerate() {
            push("-drive");
            push(&format!(
                "file={},format=raw,if=none,id=d{i},cache=unsafe",
                path.display()
            ));
            push("-device");
            let boot = if i == 0 { ",bootindex=2" } else { "" };
            match (disk.bus, self.firmware) {
                (DiskBus::Virtio, _) => push(&format!("virtio-blk-pci,drive=d{i},serial=KILN-{i}{boot}")),
                (DiskBus::Sata, Firmware::Bios) => push(&format!("ide-hd,drive=d{i},bus=ahci0.{i}{boot}")),
                (DiskBus::Sata, Firmware::Uefi) => push(&format!("ide-hd,drive=d{i},bus=ide.{i}{boot}")),
            }
        }
        a
    }
}

/// `tcg`, or `kvm` when `KILN_ACCEL=kvm` says this machine's KVM boots Linux.
pub fn accel() -> String {
    match std::env::var("KILN_ACCEL") {
        Ok(a) if a == "kvm" && Path::new("/dev/kvm").exists() => "kvm".to_owned(),
        _ => "tcg".to_owned(),
    }
}

/// A QEMU process started by the lab (inside its namespace); killed on drop.
#[derive(Debug)]
pub struct Vm {
    pub spec: VmSpec,
    pub serial_log: PathBuf,
    child: Child,
}

impl Vm {
    /// Starts the VM in `ns`, on a tap named after the VM attached to br0.
    pub fn start(
        record: &Record,
        ns: &Netns,
        spec: VmSpec,
        dir: &Path,
        logs: &crate::logs::LogDir,
        network_boot: bool,
    ) -> anyhow::Result<Self> {
        spec.prepare(dir)?;
        let tap = tap_name(&spec.name);
        ns.add_tap(&tap)?;
        let serial_log = logs.file(&format!("console-{}.log", spec.name));
        let args = spec.qemu_args(dir, &tap, &serial_log, network_boot);
        let stderr = std::fs::File::create(logs.file(&format!("qemu-{}.log", spec.name)))?;
        let child = ns
            .command("qemu-system-x86_64")
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .context("start qemu-system-x86_64")?;
        record.add_pid(child.id());
        Ok(Self {
            spec,
            serial_log,
            child,
        })
    }

    /// Whether QEMU is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The serial console so far.
    pub fn console(&self) -> String {
        read_console(&self.serial_log)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A tap name (at most 15 bytes) for a VM.
pub fn tap_name(vm: &str) -> String {
    let mut t = format!("tap-{vm}");
    t.truncate(15);
    t
}

/// Reads a serial console log, lossily (firmware prints escape sequences).
pub fn read_console(path: &Path) -> String {
    std::fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default()
}

/// Waits until the console log contains `needle`.
pub fn wait_console(path: &Path, needle: &str, timeout: std::time::Duration) -> anyhow::Result<()> {
    cmd::wait_for(
        &format!("`{needle}` on the serial console {}", path.display()),
        timeout,
        || read_console(path).contains(needle).then_some(()),
    )
}
