//! sushy-tools' Redfish emulator for the lab: the libvirt driver (real lab VMs) or the fake driver (no VMs, power
//! changes land 1-11 s later like real hardware), on the lab namespace's loopback (where kiln runs in the lab) with
//! HTTP basic auth. Killed on drop.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Child, Command};

use anyhow::Context;

use crate::{cmd, logs::LogDir, netns::Netns, state::Record};

/// A system of the fake driver.
#[derive(Debug, Clone)]
pub struct FakeSystem {
    pub uuid: String,
    pub name: String,
    pub mac: String,
}

/// A running sushy-emulator.
#[derive(Debug)]
pub struct Sushy {
    pub port: u16,
    conf: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// Which driver the emulator uses.
#[derive(Debug, Clone)]
pub enum Driver {
    Libvirt,
    Fake(Vec<FakeSystem>),
}

impl Sushy {
    /// Starts the emulator; returns once its service root answers.
    pub fn start(record: &Record, ns: &Netns, logs: &LogDir, driver: Driver) -> anyhow::Result<Self> {
        let port = crate::free_port();
        let dir = logs.path().join(format!("sushy-{port}"));
        std::fs::create_dir_all(&dir)?;
        let htpasswd = dir.join("htpasswd");
        let out = Command::new(crate::venv_bin("python3"))
            .args([
                "-c",
                "import bcrypt,sys; print(sys.argv[1] + ':' + bcrypt.hashpw(sys.argv[2].encode(), bcrypt.gensalt(4)).decode())",
                crate::ipmi::USERNAME,
                crate::ipmi::PASSWORD,
            ])
            .output()
            .context("hash the lab password with bcrypt (run tests/setup.sh)")?;
        anyhow::ensure!(
            out.status.success(),
            "bcrypt failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::fs::write(&htpasswd, &out.stdout)?;
        let mut conf_text = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_LISTEN_PORT = {port}\nSUSHY_EMULATOR_AUTH_FILE = '{}'\n",
            htpasswd.display()
        );
        match &driver {
            Driver::Libvirt => {
                conf_text.push_str(
                    "SUSHY_EMULATOR_LIBVIRT_URI = 'qemu:///system'\nSUSHY_EMULATOR_IGNORE_BOOT_DEVICE = False\n",
                );
                conf_text.push_str(
                    "SUSHY_EMULATOR_BOOT_LOADER_MAP = {'UEFI': {'x86_64': '/usr/share/OVMF/OVMF_CODE_4M.fd'}, \
                     'Legacy': {'x86_64': None}}\n",
                );
            }
            Driver::Fake(systems) => {
                conf_text.push_str("SUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_FAKE_SYSTEMS = [\n");
                for s in systems {
                    let _ = writeln!(
                        conf_text,
                        "  {{'uuid': '{}', 'name': '{}', 'power_state': 'Off', 'nics': [{{'mac': '{}', 'ip': '10.99.0.50'}}]}},",
                        s.uuid, s.name, s.mac
                    );
                }
                conf_text.push_str("]\n");
            }
        }
        let conf = dir.join("emulator.conf");
        std::fs::write(&conf, conf_text)?;
        let mut sushy = Self {
            port,
            conf,
            log: logs.file(&format!("sushy-{port}.log")),
            child: None,
        };
        std::fs::File::create(&sushy.log)?;
        sushy.resume(record, ns)?;
        Ok(sushy)
    }

    /// Stops the emulator (SIGKILL, like a BMC losing power): every request to it is refused until [`resume`].
    ///
    /// [`resume`]: Sushy::resume
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(&self.log) {
            let _ = writeln!(f, "--- kiln-tests: emulator stopped ---");
        }
    }

    /// Starts the emulator (again) with the same configuration and port; returns once its service root answers.
    pub fn resume(&mut self, record: &Record, ns: &Netns) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new().append(true).open(&self.log)?;
        let child = crate::spawn_logged(
            ns.command(&crate::venv_bin("sushy-emulator").display().to_string())
                .arg("--config")
                .arg(&self.conf),
            log,
        )
        .context("start sushy-emulator (run tests/setup.sh)")?;
        record.add_pid(child.id());
        self.child = Some(child);
        let url = format!("{}/redfish/v1/", self.base_url());
        cmd::wait_for("sushy-emulator to answer", std::time::Duration::from_secs(30), || {
            ns.command("curl")
                .args(["-sf", "-o", "/dev/null", &url])
                .status()
                .ok()
                .filter(|s| s.success())
        })?;
        Ok(())
    }

    /// `http://127.0.0.1:PORT` (inside the lab namespace)
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The Redfish BMC address of a system in kiln's (Metal3's) syntax.
    pub fn address(&self, system_id: &str) -> String {
        format!("redfish+http://127.0.0.1:{}/redfish/v1/Systems/{system_id}", self.port)
    }
}

impl Drop for Sushy {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
