//! IPMI-over-LAN peers on loopback for component tests that need a real BMC but no lab (kiln-bmc's IPMI driver
//! tests): OpenIPMI's `ipmi_sim` with a chassis control program that records power and boot device in files (the
//! lab's [`crate::ipmi::IpmiSim`] starts and stops a VM instead; both are configured by one
//! [`crate::ipmi::SimConfig`]), and pyghmi's `fakebmc`. Each on its own free port in its own temporary directory,
//! stopped when dropped.

use std::net::{SocketAddr, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::ipmi::{SimConfig, lanplus_args};
use crate::venv_bin;

/// A tool of the test machine (`tests/setup.sh` installs them), found on `PATH` or in the system directories.
fn require_tool(name: &str) -> PathBuf {
    for dir in std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .chain(["/usr/sbin", "/usr/bin"])
    {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!("{name} is not installed: run tests/setup.sh first");
}

/// A running ipmi_sim (OpenIPMI lanserv) with a chassis_control script that records power and boot device in
/// files, as testbed/ipmi-sim-chassis.sh does but without a VM.
pub struct IpmiSim {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
}

pub const IPMI_USER: &str = "admin";
pub const IPMI_PASSWORD: &str = "s3cret-ipmi-pw";

impl IpmiSim {
    pub fn start() -> IpmiSim {
        let bin = require_tool("ipmi_sim");
        let dir = tempfile::tempdir().unwrap();
        let port = crate::free_udp_port();
        let state = dir.path().join("chassis");
        std::fs::create_dir(&state).unwrap();
        let script = dir.path().join("chassis.sh");
        std::fs::write(&script, CHASSIS_SCRIPT).unwrap();
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let chassis_control = format!("{} {}", script.display(), state.display());
        SimConfig {
            name: "kilntest",
            listen: "127.0.0.1",
            port,
            lan_extra: "",
            extra: "",
            chassis_control: &chassis_control,
            users: &[
                (1, "", "test", "user"),
                (2, IPMI_USER, IPMI_PASSWORD, "admin"),
                (3, "operator", "operator-pw", "operator"),
            ],
        }
        .write(dir.path())
        .unwrap();
        let log = std::fs::File::create(dir.path().join("ipmi_sim.log")).unwrap();
        let child =
            crate::spawn_logged(Command::new(bin).args(SimConfig::args(dir.path())), log).expect("start ipmi_sim");
        let sim = IpmiSim { port, dir, child };
        sim.wait_ready();
        sim
    }

    fn wait_ready(&self) {
        // Probe with Get Channel Authentication Capabilities (v1.5, no session) until it answers.
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        sock.set_read_timeout(Some(Duration::from_millis(100))).unwrap();
        let probe = [
            0x06, 0x00, 0xFF, 0x07, 0x00, 0, 0, 0, 0, 0, 0, 0, 0, 0x09, 0x20, 0x18, 0xC8, 0x81, 0x00, 0x38, 0x8E, 0x04,
            0xB5,
        ];
        let addr: SocketAddr = format!("127.0.0.1:{}", self.port).parse().unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 512];
        while start.elapsed() < Duration::from_secs(10) {
            let _ = sock.send_to(&probe, addr);
            if sock.recv_from(&mut buf).is_ok() {
                return;
            }
        }
        panic!("ipmi_sim did not answer; log:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("ipmi_sim.log")).unwrap_or_default()
    }

    pub fn address(&self) -> String {
        format!("ipmi://127.0.0.1:{}", self.port)
    }

    /// The chassis as the control script recorded it: (power "0"/"1", boot device).
    pub fn chassis(&self) -> (String, String) {
        let read = |f: &str, d: &str| {
            std::fs::read_to_string(self.dir.path().join("chassis").join(f))
                .map(|s| s.trim().to_string())
                .unwrap_or(d.into())
        };
        (read("power", "0"), read("boot", "default"))
    }

    /// The chassis once `done` holds for it (ipmi_sim answers a set command before its control script has
    /// necessarily finished, so a test waits for the script rather than racing it), or after 5 s whatever it is.
    pub fn chassis_when(&self, done: impl Fn(&(String, String)) -> bool) -> (String, String) {
        let t = std::time::Instant::now();
        loop {
            let c = self.chassis();
            if done(&c) || t.elapsed() > std::time::Duration::from_secs(5) {
                return c;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Whether the control script logged `line`, waiting up to 5 s for it (see [`Self::chassis_when`]).
    pub fn logged(&self, line: &str) -> bool {
        let t = std::time::Instant::now();
        loop {
            if self.chassis_log().iter().any(|l| l == line) {
                return true;
            }
            if t.elapsed() > std::time::Duration::from_secs(5) {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// The lines the control script logged (`set power 1`, ...).
    pub fn chassis_log(&self) -> Vec<String> {
        std::fs::read_to_string(self.dir.path().join("chassis").join("chassis.log"))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// Runs ipmitool against this BMC with cipher suite 3 (the reference client).
    pub fn ipmitool(&self, args: &[&str]) -> String {
        ipmitool(self.port, IPMI_USER, IPMI_PASSWORD, args)
    }

    pub fn is_alive(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The user pyghmi's `fakebmc` accepts (fixed in fakebmc).
pub const PYGHMI_USER: &str = "admin";
/// Its password (fixed in fakebmc; not a secret).
pub const PYGHMI_PASSWORD: &str = "password";

/// pyghmi's `fakebmc` (the IPMI engine of virtualbmc): suite 3 only, but it answers Get Channel Cipher
/// Suites; [`PYGHMI_USER`] / [`PYGHMI_PASSWORD`].
pub struct PyghmiBmc {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl PyghmiBmc {
    pub fn start() -> PyghmiBmc {
        let dir = tempfile::tempdir().unwrap();
        let port = crate::free_udp_port();
        let log = std::fs::File::create(dir.path().join("fakebmc.log")).unwrap();
        let child = crate::spawn_logged(
            Command::new(venv_bin("fakebmc")).args(["--port", &port.to_string()]),
            log,
        )
        .expect("start pyghmi fakebmc");
        let bmc = PyghmiBmc { port, child, dir };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let out = Command::new(require_tool("ipmitool"))
                .args(["-N", "1", "-R", "1"])
                .args(lanplus_args(port, PYGHMI_USER, PYGHMI_PASSWORD))
                .args(["chassis", "power", "status"])
                .output()
                .unwrap();
            if out.status.success() {
                return bmc;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "fakebmc did not answer: {}",
            std::fs::read_to_string(bmc.dir.path().join("fakebmc.log")).unwrap_or_default()
        );
    }

    pub fn address(&self) -> String {
        format!("ipmi://127.0.0.1:{}", self.port)
    }

    pub fn ipmitool(&self, args: &[&str]) -> String {
        ipmitool(self.port, PYGHMI_USER, PYGHMI_PASSWORD, args)
    }
}

/// Runs ipmitool against a BMC on loopback with cipher suite 3; its output, or a panic naming what it printed.
fn ipmitool(port: u16, user: &str, password: &str, args: &[&str]) -> String {
    let out = Command::new(require_tool("ipmitool"))
        .args(lanplus_args(port, user, password))
        .args(args)
        .output()
        .expect("run ipmitool");
    assert!(
        out.status.success(),
        "ipmitool {args:?}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

impl Drop for PyghmiBmc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// ipmi_sim's chassis_control program: `STATE get power|boot`, `STATE set power 1|0 | reset 1 | shutdown 1 |
/// boot DEV | identify I F`; records state in files (no VM).
const CHASSIS_SCRIPT: &str = r#"#!/bin/sh
S=$1; shift; op=$1; shift
# State files are replaced atomically (write, then rename), so a reader never sees one empty or half-written.
put() { printf '%s\n' "$2" > "$S/.$1.$$" && mv -f "$S/.$1.$$" "$S/$1"; }
echo "$op $*" >> "$S/chassis.log"
case $op in
  get)
    for p in "$@"; do
      case $p in
        power) echo "power:$(cat "$S/power" 2>/dev/null || echo 0)";;
        boot) echo "boot:$(cat "$S/boot" 2>/dev/null || echo default)";;
        *) echo "Invalid parameter: $p"; exit 1;;
      esac
    done;;
  set)
    while [ $# -gt 0 ]; do
      p=$1; v=$2; shift 2
      case $p in
        power) put power "$v";;
        reset) put power 1;;
        shutdown) put power 0;;
        boot) put boot "$v";;
        identify) shift;;
        *) echo "Invalid parameter: $p"; exit 1;;
      esac
    done;;
  check) exit 1;;
  *) echo "Unknown operation: $op"; exit 1;;
esac
exit 0
"#;
