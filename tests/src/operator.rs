//! What an operator does with kiln in the lab, as code: stage the agent ramdisk and the OS image where kiln serves
//! them, write kiln's config for the lab bridge, run the `kiln` CLI inside the namespace, enroll lab hosts, wait for
//! states, and receive user-data callbacks. Used by the end-to-end tests and `kiln-lab demo`.

use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;

use crate::{
    ipmi,
    lab::{Lab, LabHost},
    osimage::OsImage,
    qemu::{DiskBus, DiskSpec, VmSpec},
    ramdisk,
};

pub const SERVER: &str = "10.99.0.1";
pub const CALLBACK_PORT: u16 = 9999;

/// The kiln CLI, run inside the lab namespace against the lab's kiln.
pub struct Cli<'a> {
    pub lab: &'a Lab,
    pub kiln: PathBuf,
}

impl Cli<'_> {
    pub fn run(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = self
            .lab
            .ns
            .command(&self.kiln.display().to_string())
            .args(args)
            .env("KILN_SERVER", format!("https://{SERVER}:8443"))
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

    pub fn host(&self, name: &str) -> anyhow::Result<Value> {
        let out = self
            .lab
            .ns
            .command(&self.kiln.display().to_string())
            .args(["host", "show", name, "-o", "json"])
            .env("KILN_SERVER", format!("https://{SERVER}:8443"))
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
    pub fn inspection(&self, name: &str) -> anyhow::Result<Value> {
        self.api(&format!("hosts/{name}/inspection"))
    }

    /// The host's events (state changes, BMC errors, requests), oldest first.
    pub fn events(&self, name: &str) -> anyhow::Result<Vec<Value>> {
        let v = self.api(&format!("hosts/{name}/events"))?;
        Ok(v.as_array().cloned().unwrap_or_default())
    }

    /// `GET /api/v1/<path>` with the admin token.
    pub fn api(&self, path: &str) -> anyhow::Result<Value> {
        let token = std::fs::read_to_string(self.lab.kiln_data().join("admin.token"))?;
        let out = self
            .lab
            .ns
            .command("curl")
            .args(["-sf", "--cacert", &crate::lab_ca(&self.lab.kiln_data())])
            .args(["-H", &format!("Authorization: Bearer {}", token.trim())])
            .arg(format!("https://{SERVER}:8443/api/v1/{path}"))
            .output()?;
        anyhow::ensure!(out.status.success(), "GET /api/v1/{path} failed");
        Ok(serde_json::from_slice(&out.stdout)?)
    }

    /// Waits until the host reaches `state`; fails early if it lands in `error`.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> anyhow::Result<Value> {
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

    /// Waits until `pred` holds for the host (`kiln host show -o json`); fails after `timeout` saying `what` was not
    /// seen.
    pub fn wait_host(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> anyhow::Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let h = self.host(name)?;
            if pred(&h) {
                return Ok(h);
            }
            if Instant::now() > deadline {
                bail!("{name}: {what} not seen within {timeout:?}: {h}");
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// A tiny HTTP endpoint inside the namespace that logs every request (the user data's callback).
pub struct Callback {
    child: Child,
    pub log: PathBuf,
}

impl Callback {
    pub fn start(lab: &Lab) -> anyhow::Result<Self> {
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

    pub fn seen(&self, path: &str) -> bool {
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
pub fn stage_files(lab: &Lab, os: &OsImage) -> anyhow::Result<PathBuf> {
    let rd = ramdisk::get()?;
    let files = lab.dir.join("files");
    std::fs::create_dir_all(&files)?;
    for (src, name) in [
        (rd.kernel.as_path(), "vmlinuz"),
        (rd.initramfs.as_path(), "initramfs"),
        (os.qcow2().as_path(), "debian.qcow2"),
        (os.raw_zst().as_path(), "debian.raw.zst"),
    ] {
        // The node variant has only the qcow2.
        if name == "debian.raw.zst" && os.sha256(name).is_err() {
            continue;
        }
        link_or_copy(src, &files.join(name))?;
    }
    Ok(files)
}

pub fn link_or_copy(src: &Path, dst: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(dst);
    if std::fs::hard_link(src, dst).is_err() {
        std::fs::copy(src, dst).with_context(|| format!("copy {}", src.display()))?;
    }
    Ok(())
}

pub fn kiln_config(lab: &Lab, files: &Path) -> anyhow::Result<PathBuf> {
    kiln_config_with(lab, files, "")
}

/// kiln's config for the lab with `extra` TOML (top-level keys first, then tables such as `[policy]`) inserted
/// before the netboot sections.
pub fn kiln_config_with(lab: &Lab, files: &Path, extra: &str) -> anyhow::Result<PathBuf> {
    let data = lab.kiln_data();
    let toml = format!(
        r#"data_dir = "{data}"
api_url = "https://{SERVER}:8443"
heartbeat_secs = 2
{extra}

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

pub fn enroll(cli: &Cli, lab: &Lab, host: &LabHost) -> anyhow::Result<()> {
    enroll_with(cli, lab, host, true)
}

/// [`enroll`] without `--boot-mac`, as Metal3 allows: kiln learns the host's MACs from its BMC (Redfish) or binds
/// its discovery boot by the BMC address its agent reads in-band (IPMI).
pub fn enroll_without_boot_mac(cli: &Cli, lab: &Lab, host: &LabHost) -> anyhow::Result<()> {
    enroll_with(cli, lab, host, false)
}

fn enroll_with(cli: &Cli, lab: &Lab, host: &LabHost, boot_mac: bool) -> anyhow::Result<()> {
    let pw = lab.dir.join("bmc-password");
    std::fs::write(&pw, ipmi::PASSWORD)?;
    let mode = match host.firmware {
        crate::qemu::Firmware::Bios => "legacy",
        crate::qemu::Firmware::Uefi => "uefi",
    };
    let pw = pw.display().to_string();
    let mut args = vec![
        "host",
        "enroll",
        &host.name,
        "--bmc",
        &host.bmc_address,
        "--username",
        ipmi::USERNAME,
        "--password-file",
        &pw,
        "--boot-mode",
        mode,
        "--label",
        "rack=lab",
    ];
    if boot_mac {
        args.extend(["--boot-mac", &host.mac]);
    }
    cli.run(&args)?;
    Ok(())
}

/// What a lab host's Metal3 manifest says beyond its BMC and boot MAC.
#[derive(Debug, Clone, Default)]
pub struct Bmh<'a> {
    /// The BMC address (default: the host's, as its emulator serves it).
    pub address: Option<String>,
    pub online: bool,
    /// Lines added under `spec:` (indented two spaces), e.g. `preprovisioningNetworkDataName: x`.
    pub spec: &'a str,
    /// Documents put before the host's (each ending in a newline, without the `---` separators).
    pub docs: Vec<String>,
    /// Leave `bootMACAddress` out (Metal3 allows it; kiln then learns the MACs from the BMC, or by discovery).
    pub no_boot_mac: bool,
}

/// `s` in base64, as a Secret's `data` holds it.
pub fn b64(s: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(s)
}

/// A lab host's `BareMetalHost` manifest with its credentials `Secret` (base64 `data`, as `kubectl create secret`
/// writes it), in namespace `lab`.
pub fn bmh_manifest(host: &LabHost, bmh: &Bmh) -> String {
    let mode = match host.firmware {
        crate::qemu::Firmware::Bios => "legacy",
        crate::qemu::Firmware::Uefi => "UEFI",
    };
    let mut out = String::new();
    for d in &bmh.docs {
        out.push_str(d);
        out.push_str("---\n");
    }
    out.push_str(&format!(
        r#"apiVersion: v1
kind: Secret
metadata:
  name: {name}-bmc-secret
  namespace: lab
type: Opaque
data:
  username: {user}
  password: {password}
---
apiVersion: metal3.io/v1alpha1
kind: BareMetalHost
metadata:
  name: {name}
  namespace: lab
  labels:
    rack: lab
spec:
  online: {online}
{mac}  bootMode: {mode}
{extra}  bmc:
    address: {address}
    credentialsName: {name}-bmc-secret
"#,
        name = host.name,
        user = b64(ipmi::USERNAME),
        password = b64(ipmi::PASSWORD),
        mac = if bmh.no_boot_mac {
            String::new()
        } else {
            format!("  bootMACAddress: {}\n", host.mac)
        },
        online = bmh.online,
        extra = bmh.spec,
        address = bmh.address.as_deref().unwrap_or(&host.bmc_address),
    ));
    out
}

/// Enrolls lab hosts the Metal3 way: writes their manifests to one file and runs `kiln import` on it. Returns the
/// manifest path.
pub fn import_manifests(cli: &Cli, lab: &Lab, file: &str, manifests: &[String]) -> anyhow::Result<PathBuf> {
    let path = lab.dir.join(file);
    std::fs::write(&path, manifests.join("---\n"))?;
    cli.run(&["import", &path.display().to_string()])?;
    Ok(path)
}

/// Enrolls a lab host the Metal3 way (`online: true`). Returns the manifest path.
pub fn import(cli: &Cli, lab: &Lab, host: &LabHost) -> anyhow::Result<PathBuf> {
    import_bmh(
        cli,
        lab,
        host,
        &Bmh {
            online: true,
            ..Bmh::default()
        },
    )
}

/// Enrolls a lab host the Metal3 way, with its manifest shaped by `bmh`. Returns the manifest path.
pub fn import_bmh(cli: &Cli, lab: &Lab, host: &LabHost, bmh: &Bmh) -> anyhow::Result<PathBuf> {
    let manifest = bmh_manifest(host, bmh);
    import_manifests(cli, lab, &format!("{}-bmh.yaml", host.name), &[manifest])
}

pub fn vm(name: &str, mac: &str) -> VmSpec {
    let mut spec = VmSpec::new(name, mac);
    spec.disks = vec![DiskSpec {
        size_mib: 5120,
        bus: DiskBus::Virtio,
    }];
    spec
}

/// Provisions `host` with `image` (a file staged by [`stage_files`], or an `oci://` reference) and user data that prints a marker on the serial
/// console and calls back to `callback`, plus `extra` arguments of `kiln host provision`; waits until the host is
/// provisioned and its OS ran the user data. Returns the seconds from the request to `provisioned`.
pub fn provision_and_run_user_data(
    cli: &Cli,
    host: &LabHost,
    os: &OsImage,
    image: &str,
    callback: &Callback,
    extra: &[&str],
) -> anyhow::Result<u64> {
    let user_data = cli.lab.dir.join("user-data");
    std::fs::write(
        &user_data,
        format!(
            "#!/bin/sh\necho KILN-E2E-USERDATA-$((6*7)) > /dev/ttyS0\ncurl -s http://{SERVER}:{CALLBACK_PORT}/joined-$(hostname) || true\n"
        ),
    )?;
    // An `oci://` image is verified by its registry digest; a file of the lab's is served by kiln with its checksum.
    let (url, checksum) = if image.starts_with("oci://") {
        (image.to_owned(), None)
    } else {
        (
            format!("http://{SERVER}:8080/boot/files/{image}"),
            Some(format!("sha256:{}", os.sha256(image)?)),
        )
    };
    let user_data = user_data.display().to_string();
    let mut args = vec![
        "host",
        "provision",
        &host.name,
        "--image",
        &url,
        "--user-data",
        &user_data,
    ];
    if let Some(c) = &checksum {
        args.extend(["--checksum", c.as_str()]);
    }
    args.extend_from_slice(extra);
    let started = Instant::now();
    cli.run(&args)?;
    cli.wait_state(&host.name, "provisioned", Duration::from_secs(900))?;
    let secs = started.elapsed().as_secs();
    let deadline = Instant::now() + Duration::from_secs(400);
    while !crate::qemu::read_console(&host.console).contains("KILN-E2E-USERDATA-42") || !callback.seen("/joined-") {
        if Instant::now() > deadline {
            bail!(
                "the written OS did not run the user data (console {}, callback {})",
                host.console.display(),
                callback.log.display()
            );
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    Ok(secs)
}
