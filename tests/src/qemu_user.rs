//! QEMU VMs on user-mode networking, for component tests that need a VM but no lab (kiln-agent's ramdisk and OS
//! tests): no namespace and no tap; the guest reaches the test's loopback services at 10.0.2.2, and nothing beyond
//! them. Boots a kernel and initramfs directly (the agent ramdisk) or SeaBIOS from the first disk (a written OS).
//! The serial console goes to a file; QEMU is killed when the [`Vm`] is dropped. Acceleration as the lab's VMs
//! ([`crate::qemu::accel`]).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A VM's shape, as the test configures it and later expects in an inventory.
#[derive(Debug, Clone)]
pub struct VmSpec {
    pub cpus: u32,
    pub memory_mib: u64,
    pub mac: String,
    /// The first virtio disk (a raw file).
    pub disk: PathBuf,
    pub disk_serial: String,
    /// More virtio disks, after `disk`.
    pub extra_disks: Vec<PathBuf>,
    /// SMBIOS system serial number.
    pub system_serial: String,
    pub uuid: String,
    /// The kernel command line of a direct boot.
    pub append: String,
}

/// A running QEMU; killed on drop.
#[derive(Debug)]
pub struct Vm {
    child: Child,
    /// The serial console's log file.
    pub serial: PathBuf,
}

impl Drop for Vm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Vm {
    /// Direct boot of the agent ramdisk; the console goes to `dir/serial.log`.
    pub fn start(ramdisk: &kiln_images::ramdisk::Ramdisk, spec: &VmSpec, dir: &Path) -> Vm {
        Vm::boot(&ramdisk.kernel, &ramdisk.initramfs, spec, dir, "serial.log")
    }

    /// Direct boot of `kernel` + `initrd`; the console goes to `dir/serial_name`.
    pub fn boot(kernel: &Path, initrd: &Path, spec: &VmSpec, dir: &Path, serial_name: &str) -> Vm {
        Vm::spawn(Some((kernel, initrd)), spec, dir, serial_name)
    }

    /// Firmware (SeaBIOS) boot from the VM's first disk.
    pub fn boot_disk(spec: &VmSpec, dir: &Path, serial_name: &str) -> Vm {
        Vm::spawn(None, spec, dir, serial_name)
    }

    fn spawn(kernel: Option<(&Path, &Path)>, spec: &VmSpec, dir: &Path, serial_name: &str) -> Vm {
        let serial = dir.join(serial_name);
        let mut cmd = Command::new("qemu-system-x86_64");
        cmd.args(["-accel", &crate::qemu::accel(), "-machine", "pc"])
            .args(["-display", "none", "-monitor", "none", "-no-reboot"])
            .args(["-smp", &spec.cpus.to_string(), "-m", &spec.memory_mib.to_string()])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args(["-netdev", "user,id=n0"])
            .args(["-device", &format!("virtio-net-pci,netdev=n0,mac={}", spec.mac)])
            .args(["-smbios", &format!("type=1,serial={}", spec.system_serial)])
            .args(["-uuid", &spec.uuid])
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(dir.join(format!("{serial_name}.qemu-stdout"))).expect("qemu stdout log"))
            .stderr(std::fs::File::create(dir.join(format!("{serial_name}.qemu-stderr"))).expect("qemu stderr log"));
        let disks = std::iter::once((&spec.disk, format!(",serial={}", spec.disk_serial)))
            .chain(spec.extra_disks.iter().map(|d| (d, String::new())));
        for (i, (disk, serial)) in disks.enumerate() {
            cmd.arg("-drive")
                .arg(format!(
                    "file={},format=raw,if=none,id=d{i},cache=unsafe",
                    disk.display()
                ))
                .args(["-device", &format!("virtio-blk-pci,drive=d{i}{serial}")]);
        }
        match kernel {
            Some((kernel, initrd)) => {
                cmd.arg("-kernel").arg(kernel).arg("-initrd").arg(initrd);
                cmd.args(["-append", &spec.append]);
            }
            None => {
                cmd.args(["-boot", "c"]);
            }
        }
        let child = cmd.spawn().expect("qemu-system-x86_64 (tests/setup.sh installs it)");
        Vm { child, serial }
    }

    /// Waits for QEMU to exit (the guest powered off), up to `timeout`.
    pub async fn wait_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let deadline = Instant::now() + timeout;
        while Instant::now() < deadline {
            if let Some(s) = self.child.try_wait().expect("wait for qemu") {
                return Some(s);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        None
    }

    /// The serial console so far.
    pub fn serial_text(&self) -> String {
        crate::qemu::read_console(&self.serial)
    }
}
