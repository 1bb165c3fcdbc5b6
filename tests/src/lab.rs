//! A whole lab in one value: namespace + bridge, libvirtd with Redfish VMs behind sushy-tools, IPMI VMs behind
//! ipmi_sim, and optionally `kiln serve` running inside the namespace (where the VMs and the BMC emulators are
//! reachable) with its HTTP port forwarded to the host's loopback. Used by `kiln-lab demo` and the end-to-end tests.
//! Fields drop in declaration order, so processes stop before the namespace goes away.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::Context;

use crate::{
    cmd,
    ipmi::IpmiSim,
    libvirt::Libvirtd,
    logs::LogDir,
    netns::{Netns, SERVER_IP},
    qemu::{Firmware, VmSpec},
    state::Record,
    sushy::{Driver, Sushy},
};

/// Which BMC emulator drives a lab VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BmcKind {
    Redfish,
    Ipmi,
}

/// A lab VM as an operator would enroll it.
#[derive(Debug, Clone)]
pub struct LabHost {
    pub name: String,
    pub mac: String,
    pub firmware: Firmware,
    pub bmc: BmcKind,
    pub bmc_address: String,
    pub console: PathBuf,
    pub disks: Vec<PathBuf>,
}

/// A running lab.
pub struct Lab {
    kiln: Option<Child>,
    kiln_args: Vec<String>,
    forwarder: Option<Child>,
    pub sushy: Option<Sushy>,
    pub ipmi: Vec<IpmiSim>,
    pub libvirt: Option<Libvirtd>,
    pub hosts: Vec<LabHost>,
    pub ns: Netns,
    pub dir: PathBuf,
    pub logs: LogDir,
    pub record: Record,
    /// Set by [`Lab::finish`]; a lab dropped without it failed, and prints the end of kiln's log.
    passed: bool,
    /// Further `kiln serve` replicas ([`Lab::start_replica`]), by name.
    replicas: Vec<(String, Child)>,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("ns", &self.ns)
            .field("hosts", &self.hosts)
            .finish_non_exhaustive()
    }
}

impl Lab {
    /// Starts a lab with the given VMs. Redfish VMs are libvirt domains behind sushy-tools; IPMI VMs are QEMU
    /// processes behind their own ipmi_sim.
    pub fn start(name: &str, vms: &[(VmSpec, BmcKind)]) -> anyhow::Result<Self> {
        let record = Record::new()?;
        let logs = LogDir::new(name)?;
        let dir = logs.path().join("state");
        std::fs::create_dir_all(&dir)?;
        let ns = Netns::create(&record)?;
        let mut lab = Self {
            kiln: None,
            kiln_args: Vec::new(),
            forwarder: None,
            sushy: None,
            ipmi: Vec::new(),
            libvirt: None,
            hosts: Vec::new(),
            ns,
            dir,
            logs,
            record,
            passed: false,
            replicas: Vec::new(),
        };
        let redfish: Vec<&VmSpec> = vms
            .iter()
            .filter(|(_, k)| *k == BmcKind::Redfish)
            .map(|(s, _)| s)
            .collect();
        if !redfish.is_empty() {
            let mut libvirt = Libvirtd::start(&lab.record, &lab.ns, &lab.dir, &lab.logs)?;
            let mut domains = Vec::new();
            for spec in &redfish {
                let domain = libvirt.define(&lab.record, spec, &lab.dir, &lab.logs)?;
                domains.push((libvirt.uuid(&domain)?, *spec));
            }
            lab.libvirt = Some(libvirt);
            let sushy = Sushy::start(&lab.record, &lab.ns, &lab.logs, Driver::Libvirt)?;
            for (uuid, spec) in domains {
                lab.hosts.push(LabHost {
                    name: spec.name.clone(),
                    mac: spec.mac.clone(),
                    firmware: spec.firmware,
                    bmc: BmcKind::Redfish,
                    bmc_address: sushy.address(&uuid),
                    console: lab.logs.file(&format!("console-{}.log", spec.name)),
                    disks: spec.disk_paths(&lab.dir),
                });
            }
            lab.sushy = Some(sushy);
        }
        for (spec, _) in vms.iter().filter(|(_, k)| *k == BmcKind::Ipmi) {
            let sim = IpmiSim::start(&lab.record, &lab.ns, spec, &lab.dir, &lab.logs)?;
            lab.hosts.push(LabHost {
                name: spec.name.clone(),
                mac: spec.mac.clone(),
                firmware: spec.firmware,
                bmc: BmcKind::Ipmi,
                bmc_address: sim.address(),
                console: sim.serial_log.clone(),
                disks: spec.disk_paths(&lab.dir),
            });
            lab.ipmi.push(sim);
        }
        Ok(lab)
    }

    /// Starts `kiln serve` inside the namespace, HTTPS on `10.99.0.1:8443` and its netboot routes on
    /// `10.99.0.1:8080` (data in the lab's state directory) and, if
    /// `host_port` is given, forwards `127.0.0.1:host_port` on the host to it. Returns the kiln URL as seen from the
    /// host (or from the namespace if not forwarded).
    pub fn start_kiln(&mut self, extra_args: &[&str], host_port: Option<u16>) -> anyhow::Result<String> {
        self.kiln_args = extra_args.iter().map(|a| a.to_string()).collect();
        self.spawn_kiln()?;
        let listen = format!("{SERVER_IP}:8443");
        let Some(port) = host_port else {
            return Ok(format!("https://{listen}"));
        };
        let ns = self.ns.name().to_owned();
        let fwd = Command::new("socat")
            .arg(format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"))
            .arg(format!(
                "EXEC:ip netns exec {ns} socat STDIO TCP\\:{}",
                listen.replace(':', "\\:")
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.logs.file("forwarder.log"))?)
            .spawn()
            .context("start socat (run tests/setup.sh)")?;
        self.record.add_pid(fwd.id());
        self.forwarder = Some(fwd);
        let url = format!("https://127.0.0.1:{port}");
        let ca = crate::lab_ca(&self.kiln_data());
        cmd::wait_for("the forwarded kiln port", std::time::Duration::from_secs(10), || {
            cmd::output(
                "curl",
                &["-sf", "--cacert", &ca, "-o", "/dev/null", &format!("{url}/healthz")],
            )
            .ok()
            .filter(|o| o.status.success())
        })?;
        Ok(url)
    }

    /// The state directory of the lab's kiln (data dir).
    pub fn kiln_data(&self) -> PathBuf {
        self.dir.join("kiln-data")
    }

    /// Whether `kiln serve` is still running.
    pub fn kiln_running(&mut self) -> bool {
        self.kiln.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Runs `kiln serve` with the arguments of [`Lab::start_kiln`] (its log appended to `kiln.log`) and waits until it
    /// answers `/healthz`.
    fn spawn_kiln(&mut self) -> anyhow::Result<()> {
        let kiln = target_bin("kiln")?;
        let data = self.kiln_data();
        std::fs::create_dir_all(&data)?;
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.logs.file("kiln.log"))?;
        let listen = format!("{SERVER_IP}:8443");
        let child = crate::spawn_logged(
            self.ns
                .command(&kiln.display().to_string())
                .arg("serve")
                .args(["--listen", &listen])
                .args(&self.kiln_args)
                .current_dir(&data),
            log,
        )
        .context("start kiln serve")?;
        self.record.add_pid(child.id());
        self.kiln = Some(child);
        self.wait_healthy("kiln serve", &listen, &data)
    }

    /// Waits until the kiln at `listen` (data directory `data`, whose CA it trusts) answers `/healthz`.
    fn wait_healthy(&self, what: &str, listen: &str, data: &Path) -> anyhow::Result<()> {
        let health = format!("https://{listen}/healthz");
        let ca = crate::lab_ca(data);
        cmd::wait_for(
            &format!("{what} to answer /healthz"),
            std::time::Duration::from_secs(30),
            || {
                self.ns
                    .command("curl")
                    .args(["-sf", "--cacert", &ca, "-o", "/dev/null", &health])
                    .status()
                    .ok()
                    .filter(|s| s.success())
            },
        )?;
        Ok(())
    }

    /// Starts one more `kiln serve` in the namespace, replica `name` of several on one database: HTTPS on `listen`,
    /// data in `data`, its log in `kiln-<name>.log`; waits until it answers `/healthz` (trusting the lab kiln's CA,
    /// which replicas share).
    pub fn start_replica(&mut self, name: &str, listen: &str, data: &Path, args: &[&str]) -> anyhow::Result<()> {
        let kiln = target_bin("kiln")?;
        std::fs::create_dir_all(data)?;
        let log = std::fs::File::create(self.logs.file(&format!("kiln-{name}.log")))?;
        let child = crate::spawn_logged(
            self.ns
                .command(&kiln.display().to_string())
                .args(["serve", "--listen", listen, "--replica", name, "--data-dir"])
                .arg(data)
                .args(args),
            log,
        )
        .context("start a kiln replica")?;
        self.record.add_pid(child.id());
        self.replicas.push((name.to_owned(), child));
        self.wait_healthy(&format!("replica {name}"), listen, data)
    }

    /// Kills replica `name` with SIGKILL, as a crash would (reaped when the lab is dropped).
    pub fn kill_replica(&self, name: &str) -> anyhow::Result<()> {
        let (_, child) = self
            .replicas
            .iter()
            .find(|(n, _)| n == name)
            .with_context(|| format!("no replica {name}"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        // SIGKILL is delivered asynchronously: until every thread of the process has exited, its listening socket
        // may still take a connection that then ends at once, and callers act on the replica being dead. The thread
        // group's leader shows as a zombie in /proc while other threads still hold the sockets open (seen under
        // load), so ask the kernel: waitid(WEXITED | WNOWAIT) reports the process only once the whole group is gone,
        // and leaves it to be reaped later.
        use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            match waitid(
                Id::Pid(pid),
                WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG,
            ) {
                Ok(WaitStatus::StillAlive) => {}
                // Exited (or already reaped: ECHILD): its sockets are closed.
                Ok(_) | Err(nix::errno::Errno::ECHILD) => return Ok(()),
                Err(e) => return Err(e.into()),
            }
            anyhow::ensure!(
                std::time::Instant::now() < deadline,
                "replica {name} still running 10 s after SIGKILL"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kills `kiln serve` with SIGKILL (no shutdown path runs), as a crash or an OOM kill would.
    pub fn kill_kiln(&mut self) -> anyhow::Result<()> {
        let mut child = self.kiln.take().context("kiln serve is not running")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(child.id() as i32),
            nix::sys::signal::Signal::SIGKILL,
        )?;
        child.wait()?;
        Ok(())
    }

    /// Starts `kiln serve` again with the same arguments and data directory (the forwarded port, if any, keeps
    /// working: it connects anew for every client).
    pub fn restart_kiln(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(!self.kiln_running(), "kiln serve is still running");
        self.spawn_kiln()
    }

    /// Ends a successful run: tears the lab down, then deletes the VM disk images and staged image files under
    /// the state directory (gigabytes per run). Logs, consoles and kiln's database stay. A failed run (an error
    /// returned or a panic) drops the lab instead and keeps everything for a post-mortem.
    pub fn finish(mut self) -> anyhow::Result<()> {
        self.passed = true;
        let logs = self.logs.path().to_path_buf();
        drop(self);
        let freed = crate::logs::remove_disk_images(&logs)?;
        println!(
            "lab logs kept in {} ({} MiB of disk images removed)",
            logs.display(),
            freed >> 20
        );
        Ok(())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let replicas = self.replicas.iter_mut().map(|(_, c)| c);
        for child in [self.forwarder.as_mut(), self.kiln.as_mut()]
            .into_iter()
            .flatten()
            .chain(replicas)
        {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(child.id() as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
            for _ in 0..50 {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        if !self.passed {
            // The run failed (an error returned or a panic): CI keeps only the test's output, so put the end of
            // each kiln's log there.
            let mut logs: Vec<PathBuf> = std::fs::read_dir(self.logs.path())
                .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
                .unwrap_or_default();
            logs.retain(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("kiln") && n.ends_with(".log"))
            });
            logs.sort();
            eprintln!("lab {} failed", self.logs.path().display());
            for path in logs {
                let log = std::fs::read_to_string(&path).unwrap_or_default();
                let lines: Vec<&str> = log.lines().collect();
                let keep = 120 / 1usize.max(self.replicas.len());
                eprintln!("the last {} lines of {}:", lines.len().min(keep), path.display());
                for line in &lines[lines.len().saturating_sub(keep)..] {
                    eprintln!("  {line}");
                }
            }
        }
    }
}

/// Finds a binary built by cargo in the same target directory as the running executable.
pub fn target_bin(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let mut dir: Option<&Path> = exe.parent();
    while let Some(d) = dir {
        let candidate = d.join(name);
        if candidate.is_file() {
            return Ok(candidate);
        }
        if d.file_name().is_some_and(|n| n == "debug" || n == "release") {
            break;
        }
        dir = d.parent();
    }
    anyhow::bail!(
        "`{name}` not built next to {} (run `cargo build --workspace --bins`)",
        exe.display()
    )
}
