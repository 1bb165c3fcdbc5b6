//! libvirt for the lab, the way sushy-tools' libvirt driver and virtualbmc need it: `virtlogd` + `libvirtd` started
//! by hand *inside* the lab namespace (PID 1 is not systemd here), so the VMs' taps land on the lab bridge while
//! clients in the host namespace reach `qemu:///system` through its socket. One libvirtd per machine: a file lock
//! serialises labs that need it. Domains are named `kiln-*` and undefined on drop.

use std::fs::File;
use std::path::{Path, PathBuf};

use anyhow::Context;
use nix::fcntl::{Flock, FlockArg};

use crate::{
    cmd,
    logs::LogDir,
    netns::Netns,
    qemu::{DiskBus, Firmware, VmSpec},
    state::Record,
};

const URI: &str = "qemu:///system";

/// A libvirtd running inside a lab namespace; stopped on drop.
#[derive(Debug)]
pub struct Libvirtd {
    run_dir: PathBuf,
    domains: Vec<String>,
    _lock: Flock<File>,
}

fn virsh(args: &[&str]) -> anyhow::Result<String> {
    let mut full = vec!["-q", "-c", URI];
    full.extend_from_slice(args);
    cmd::run("virsh", &full)
}

/// Destroys and undefines a domain (best effort).
pub fn forget_domain(name: &str) {
    cmd::quiet("virsh", &["-q", "-c", URI, "destroy", name]);
    if virsh(&["undefine", name, "--nvram"]).is_err() {
        cmd::quiet("virsh", &["-q", "-c", URI, "undefine", name]);
    }
}

impl Libvirtd {
    /// Starts virtlogd and libvirtd in `ns` (waiting for another lab's libvirtd to finish first).
    pub fn start(record: &Record, ns: &Netns, dir: &Path, logs: &LogDir) -> anyhow::Result<Self> {
        std::fs::create_dir_all("/run/kiln-lab")?;
        let lock_file = File::create("/run/kiln-lab/libvirt.lock")?;
        let lock = Flock::lock(lock_file, FlockArg::LockExclusive)
            .map_err(|(_, e)| e)
            .context("lock libvirt")?;
        // Whatever libvirtd is still running belongs to no live lab (we hold the lock): stop it.
        for pidfile in ["/run/kiln-lab/libvirtd.pid", "/run/kiln-lab/virtlogd.pid"] {
            if let Ok(pid) = std::fs::read_to_string(pidfile) {
                cmd::quiet("kill", &["-9", pid.trim()]);
            }
        }
        cmd::quiet("pkill", &["-x", "libvirtd"]);
        std::thread::sleep(std::time::Duration::from_millis(200));
        let run_dir = dir.join("libvirt");
        std::fs::create_dir_all(&run_dir)?;
        let status = ns
            .command("/usr/sbin/virtlogd")
            .args(["-d", "-p", "/run/kiln-lab/virtlogd.pid"])
            .status()
            .context("start virtlogd")?;
        anyhow::ensure!(status.success(), "virtlogd failed to start");
        let log = logs.file("libvirtd.log");
        let status = ns
            .command("/usr/sbin/libvirtd")
            .args(["-d", "-p", "/run/kiln-lab/libvirtd.pid"])
            .env("LIBVIRT_LOG_OUTPUTS", format!("3:file:{}", log.display()))
            .status()
            .context("start libvirtd")?;
        anyhow::ensure!(status.success(), "libvirtd failed to start");
        cmd::wait_for("libvirtd to answer", std::time::Duration::from_secs(60), || {
            virsh(&["version"]).ok()
        })?;
        // Record the daemons' pids by value: the pid files are shared by every lab on the machine, so a stale
        // record must not point at them (it would kill a later lab's libvirtd).
        for pidfile in ["/run/kiln-lab/libvirtd.pid", "/run/kiln-lab/virtlogd.pid"] {
            if let Ok(pid) = std::fs::read_to_string(pidfile).map(|p| p.trim().to_owned())
                && let Ok(pid) = pid.parse::<u32>()
            {
                record.add_pid(pid);
            }
        }
        // Leftovers of a crashed lab: persistent domains survive a libvirtd restart.
        for name in virsh(&["list", "--all", "--name"])?.lines().map(str::trim) {
            if name.starts_with("kiln-") {
                forget_domain(name);
            }
        }
        // sushy-tools' virtual media needs a storage pool named `default`.
        cmd::quiet("virsh", &["-q", "-c", URI, "pool-destroy", "default"]);
        cmd::quiet("virsh", &["-q", "-c", URI, "pool-undefine", "default"]);
        let pool = run_dir.join("pool");
        std::fs::create_dir_all(&pool)?;
        virsh(&[
            "pool-define-as",
            "default",
            "dir",
            "--target",
            &pool.display().to_string(),
        ])?;
        virsh(&["pool-start", "default"])?;
        Ok(Self {
            run_dir,
            domains: Vec::new(),
            _lock: lock,
        })
    }

    /// Defines (does not start) a persistent domain `kiln-<lab id>-<name>` for `spec`, booting from disk by default so that
    /// network boot has to be asked for through a BMC. Returns the domain name.
    pub fn define(&mut self, record: &Record, spec: &VmSpec, dir: &Path, logs: &LogDir) -> anyhow::Result<String> {
        spec.prepare(dir)?;
        // Unique per lab, so that cleaning up after one lab never touches another's domains.
        let name = format!("kiln-{}-{}", record.id(), spec.name);
        record.add_domain(&name);
        // UEFI without Secure Boot: libvirt's firmware autoselection would otherwise pick the Secure Boot build with
        // Microsoft's keys enrolled, which refuses the unsigned kernels of the agent ramdisk and the test OS, as a
        // datacenter host with Secure Boot off (the Metal3 default `UEFI`, not `UEFISecureBoot`) would not.
        let (firmware, features) = match spec.firmware {
            Firmware::Bios => ("bios", ""),
            Firmware::Uefi => (
                "efi",
                "<firmware><feature enabled='no' name='secure-boot'/><feature enabled='no' name='enrolled-keys'/></firmware>",
            ),
        };
        let console = logs.file(&format!("console-{}.log", spec.name));
        let mut disks = String::new();
        for (i, (disk, path)) in spec.disks.iter().zip(spec.disk_paths(dir)).enumerate() {
            let (dev, bus) = match disk.bus {
                DiskBus::Virtio => (format!("vd{}", (b'a' + i as u8) as char), "virtio"),
                DiskBus::Sata => (format!("sd{}", (b'a' + i as u8) as char), "sata"),
            };
            disks.push_str(&format!(
                "<disk type='file' device='disk'><driver name='qemu' type='raw' cache='unsafe'/>\
                 <source file='{}'/><target dev='{dev}' bus='{bus}'/><serial>KILN-{i}</serial></disk>\n",
                path.display()
            ));
        }
        let xml = format!(
            r#"<domain type='qemu'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu>{cpus}</vcpu>
  <os firmware='{firmware}'><type arch='x86_64' machine='q35'>hvm</type>{features}<boot dev='hd'/><bios useserial='yes'/></os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff><on_reboot>restart</on_reboot><on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    {disks}
    <interface type='bridge'><source bridge='br0'/><mac address='{mac}'/><model type='virtio'/>{rom}</interface>
    <serial type='file'><source path='{console}' append='on'/><target port='0'/></serial>
    <console type='file'><source path='{console}' append='on'/><target type='serial' port='0'/></console>
  </devices>
</domain>
"#,
            mem = spec.memory_mib,
            cpus = spec.cpus,
            mac = spec.mac,
            console = console.display(),
            rom = if spec.netboot { "" } else { "<rom enabled='no'/>" },
        );
        let xml_path = self.run_dir.join(format!("{name}.xml"));
        std::fs::write(&xml_path, xml)?;
        virsh(&["define", &xml_path.display().to_string()])?;
        self.domains.push(name.clone());
        Ok(name)
    }

    /// Whether a domain is running.
    pub fn is_running(&self, domain: &str) -> bool {
        virsh(&["domstate", domain])
            .map(|s| s.trim() == "running")
            .unwrap_or(false)
    }

    /// The domain's UUID.
    pub fn uuid(&self, domain: &str) -> anyhow::Result<String> {
        Ok(virsh(&["domuuid", domain])?.trim().to_owned())
    }
}

impl Drop for Libvirtd {
    fn drop(&mut self) {
        for d in &self.domains {
            forget_domain(d);
        }
        cmd::quiet("virsh", &["-q", "-c", URI, "pool-destroy", "default"]);
        cmd::quiet("virsh", &["-q", "-c", URI, "pool-undefine", "default"]);
        for pidfile in ["/run/kiln-lab/libvirtd.pid", "/run/kiln-lab/virtlogd.pid"] {
            if let Ok(pid) = std::fs::read_to_string(pidfile) {
                cmd::quiet("kill", &[pid.trim()]);
            }
        }
    }
}
