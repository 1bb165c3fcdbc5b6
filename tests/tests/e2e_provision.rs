//! End to end, as an operator sees it: a lab VM behind a real BMC emulator is enrolled with `kiln host enroll`,
//! registers and is inspected (it netboots the agent ramdisk from kiln's own DHCP/TFTP/HTTP), becomes available,
//! is provisioned with the debootstrapped Debian test image and user data, boots that OS from its disk, and its
//! cloud-init runs the user data, which calls back to an HTTP endpoint of the test (where a kubeadm or RKE2 join would
//! run). Then it is deprovisioned and available again, with a disk that no longer boots.
//!
//! Everything runs inside the lab's private namespace: kiln serve (DHCP full mode on the lab bridge), the BMC
//! emulators, the VMs, and the CLI. Logs (serial consoles, kiln, emulators) are kept under target/lab-logs/.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use kiln_tests::{
    ipmi,
    lab::{BmcKind, Lab, LabHost, target_bin},
    osimage::OsImage,
    qemu::{DiskBus, DiskSpec, VmSpec, read_console},
    ramdisk,
};
use serde_json::Value;

const SERVER: &str = "10.99.0.1";
const CALLBACK_PORT: u16 = 9999;

/// The kiln CLI, run inside the lab namespace against the lab's kiln.
struct Cli<'a> {
    lab: &'a Lab,
    kiln: PathBuf,
}

impl Cli<'_> {
    fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .lab
            .ns
            .command(&self.kiln.display().to_string())
            .args(args)
            .env("KILN_SERVER", format!("http://{SERVER}:8080"))
            .env("KILN_TOKEN_FILE", self.lab.kiln_data().join("admin.token"))
            .stdin(Stdio::null())
            .output()?;
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if !out.status.success() {
            bail!(
                "`kiln {}` failed: {}{}",
                args.join(" "),
                stdout,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        println!("$ kiln {}\n{stdout}", args.join(" "));
        Ok(stdout)
    }

    fn host(&self, name: &str) -> anyhow::Result<Value> {
        let out = self
            .lab
            .ns
            .command(&self.kiln.display().to_string())
            .args(["host", "show", name, "-o", "json"])
            .env("KILN_SERVER", format!("http://{SERVER}:8080"))
            .env("KILN_TOKEN_FILE", self.lab.kiln_data().join("admin.token"))
            .output()?;
        anyhow::ensure!(
            out.status.success(),
            "kiln host show {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// The inspection data, read from the REST API with the admin token.
    fn inspection(&self, name: &str) -> anyhow::Result<Value> {
        let token = std::fs::read_to_string(self.lab.kiln_data().join("admin.token"))?;
        let out = self
            .lab
            .ns
            .command("curl")
            .args(["-sf", "-H", &format!("Authorization: Bearer {}", token.trim())])
            .arg(format!("http://{SERVER}:8080/api/v1/hosts/{name}/inspection"))
            .output()?;
        anyhow::ensure!(out.status.success(), "GET inspection of {name} failed");
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until the host reaches `state`; fails early if it lands in `error`.
    fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> anyhow::Result<Value> {
        let start = Instant::now();
        let mut last = String::new();
        loop {
            let h = self.host(name)?;
            let s = h["host"]["state"].as_str().unwrap_or_default().to_owned();
            if s != last {
                println!("[{:>5.1}s] {name}: {s}", start.elapsed().as_secs_f32());
                last = s.clone();
            }
            if s == state {
                return Ok(h);
            }
            if s == "error" && state != "error" {
                bail!("{name} went to error while waiting for {state}: {h}");
            }
            if start.elapsed() > timeout {
                bail!("{name} not {state} after {timeout:?} (now {s}): {h}");
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}

/// A tiny HTTP endpoint inside the namespace that logs every request (the user data's callback).
struct Callback {
    child: Child,
    log: PathBuf,
}

impl Callback {
    fn start(lab: &Lab) -> anyhow::Result<Self> {
        let log = lab.logs.file("callback.log");
        let child = lab
            .ns
            .command("python3")
            .args([
                "-m",
                "http.server",
                &CALLBACK_PORT.to_string(),
                "--bind",
                SERVER,
                "--directory",
            ])
            .arg(&lab.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log)?)
            .spawn()?;
        lab.record.add_pid(child.id());
        Ok(Self { child, log })
    }

    fn seen(&self, path: &str) -> bool {
        std::fs::read_to_string(&self.log).is_ok_and(|l| l.contains(path))
    }
}

impl Drop for Callback {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Puts the agent ramdisk and the OS image in one directory kiln serves under /boot/files/.
fn stage_files(lab: &Lab, os: &OsImage) -> anyhow::Result<PathBuf> {
    let rd = ramdisk::get()?;
    let files = lab.dir.join("files");
    std::fs::create_dir_all(&files)?;
    for (src, name) in [
        (rd.kernel.as_path(), "vmlinuz"),
        (rd.initramfs.as_path(), "initramfs"),
        (os.qcow2().as_path(), "debian.qcow2"),
        (os.raw_zst().as_path(), "debian.raw.zst"),
    ] {
        link_or_copy(src, &files.join(name))?;
    }
    Ok(files)
}

fn link_or_copy(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(dst);
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).with_context(|| format!("copy {}", src.display()))?;
    }
    Ok(())
}

fn kiln_config(lab: &Lab, files: &Path) -> anyhow::Result<PathBuf> {
    let data = lab.kiln_data();
    let toml = format!(
        r#"data_dir = "{data}"
api_url = "http://{SERVER}:8080"
heartbeat_secs = 2

[pxe]
state_dir = "{data}/pxe"

[pxe.dhcp]
mode = "full"
interface = "br0"
server_addr = "{SERVER}"

[[pxe.dhcp.subnets]]
network = "10.99.0.0"
prefix_len = 24
range_start = "10.99.0.100"
range_end = "10.99.0.200"

[pxe.boot]
http_base = "http://{SERVER}:8080"
files_dir = "{files}"

[agent_boot]
kernel_url = "http://{SERVER}:8080/boot/files/vmlinuz"
initrd_url = "http://{SERVER}:8080/boot/files/initramfs"
cmdline = "console=ttyS0"
"#,
        data = data.display(),
        files = files.display(),
    );
    std::fs::create_dir_all(&data)?;
    let path = lab.dir.join("kiln.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

fn enroll(cli: &Cli, lab: &Lab, host: &LabHost) -> anyhow::Result<()> {
    let pw = lab.dir.join("bmc-password");
    std::fs::write(&pw, ipmi::PASSWORD)?;
    let mode = match host.firmware {
        kiln_tests::qemu::Firmware::Bios => "legacy",
        kiln_tests::qemu::Firmware::Uefi => "uefi",
    };
    cli.run(&[
        "host",
        "enroll",
        &host.name,
        "--bmc",
        &host.bmc_address,
        "--username",
        ipmi::USERNAME,
        "--password-file",
        &pw.display().to_string(),
        "--boot-mac",
        &host.mac,
        "--boot-mode",
        mode,
        "--label",
        "rack=lab",
    ])?;
    Ok(())
}

fn vm(name: &str, mac: &str) -> VmSpec {
    let mut spec = VmSpec::new(name, mac);
    spec.disks = vec![DiskSpec {
        size_mib: 5120,
        bus: DiskBus::Virtio,
    }];
    spec
}

fn full_lifecycle(spec: VmSpec, kind: BmcKind, image: &str) -> anyhow::Result<()> {
    let os = OsImage::get()?;
    let mut lab = Lab::start(&format!("e2e-{}", spec.name), &[(spec, kind)])?;
    let files = stage_files(&lab, &os)?;
    let config = kiln_config(&lab, &files)?;
    lab.start_kiln(&["--config", &config.display().to_string()], None)?;
    let cli = Cli {
        lab: &lab,
        kiln: target_bin("kiln")?,
    };
    let callback = Callback::start(&lab)?;
    let host = lab.hosts[0].clone();

    // 1. Enroll -> registering -> inspecting (the VM netboots the agent) -> available, powered off.
    enroll(&cli, &lab, &host)?;
    let h = cli.wait_state(&host.name, "available", Duration::from_secs(600))?;
    assert_eq!(h["host"]["power"], "off", "an available host is powered off: {h}");
    let inventory = cli.inspection(&host.name)?;
    println!("inventory: {inventory}");
    let inv = &inventory["inventory"];
    assert_eq!(inv["cpu"]["count"], 1, "the VM has one CPU");
    let mem = inv["memory_mib"].as_u64().unwrap_or(0);
    assert!((900..=1024).contains(&mem), "the VM has 1024 MiB, inventory says {mem}");
    let disks = inv["disks"].as_array().cloned().unwrap_or_default();
    assert!(
        disks.iter().any(|d| d["size_bytes"] == 5120u64 * 1024 * 1024),
        "no 5 GiB disk: {disks:?}"
    );
    let nics = inv["nics"].as_array().cloned().unwrap_or_default();
    assert!(
        nics.iter()
            .any(|n| n["mac"].as_str().is_some_and(|m| m.eq_ignore_ascii_case(&host.mac))),
        "boot MAC missing: {nics:?}"
    );

    // 2. Provision the Debian image with user data that calls back to the test.
    let user_data = lab.dir.join("user-data");
    std::fs::write(
        &user_data,
        format!(
            "#!/bin/sh\necho KILN-E2E-USERDATA-$((6*7)) > /dev/ttyS0\ncurl -s http://{SERVER}:{CALLBACK_PORT}/joined-$(hostname) || true\n"
        ),
    )?;
    let checksum = format!("sha256:{}", os.sha256(image)?);
    let url = format!("http://{SERVER}:8080/boot/files/{image}");
    cli.run(&[
        "host",
        "provision",
        &host.name,
        "--image",
        &url,
        "--checksum",
        &checksum,
        "--user-data",
        &user_data.display().to_string(),
    ])?;
    cli.wait_state(&host.name, "provisioned", Duration::from_secs(900))?;
    let deadline = Instant::now() + Duration::from_secs(400);
    while !read_console(&host.console).contains("KILN-E2E-USERDATA-42") || !callback.seen("/joined-") {
        if Instant::now() > deadline {
            bail!(
                "the written OS did not run the user data (console {}, callback {})",
                host.console.display(),
                callback.log.display()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let show = cli.run(&["host", "show", &host.name])?;
    println!("{show}");

    // 3. Deprovision -> available; the disk no longer boots (its partition tables are gone).
    cli.run(&["host", "deprovision", &host.name])?;
    cli.wait_state(&host.name, "available", Duration::from_secs(600))?;
    let mut head = vec![0u8; 1024];
    use std::io::Read;
    std::fs::File::open(&host.disks[0])?.read_exact(&mut head)?;
    assert!(
        head[510..512] != [0x55, 0xaa] && &head[512..520] != b"EFI PART",
        "the deprovisioned disk still has a partition table"
    );
    drop(callback);
    Ok(())
}

#[test]
fn redfish_bios_host_enroll_inspect_provision_qcow2_deprovision() -> anyhow::Result<()> {
    full_lifecycle(vm("e2e-rf", "52:54:00:99:00:31"), BmcKind::Redfish, "debian.qcow2")
}

#[test]
fn ipmi_bios_host_enroll_inspect_provision_raw_zst_deprovision() -> anyhow::Result<()> {
    full_lifecycle(vm("e2e-ipmi", "52:54:00:99:00:32"), BmcKind::Ipmi, "debian.raw.zst")
}
