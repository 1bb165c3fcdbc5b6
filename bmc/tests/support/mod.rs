//! Test peers for kiln-bmc's component tests: sushy-tools (fake driver; the test kit's launcher, shared with kiln's
//! tests) and OpenIPMI's ipmi_sim and pyghmi on loopback, each on its own free port in its own temporary directory,
//! stopped by PID when dropped; an in-process mock Redfish
//! service with fault switches (`mock_redfish`; the vendor-profile emulator is `kiln_tests::vendor_redfish`). A log
//! capture for the "no secrets in logs" checks.
#![allow(dead_code)]

pub mod mock_redfish;

use std::io::Write;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The repository root (the workspace), where `tests/setup.sh` puts the venv.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace root")
        .to_path_buf()
}

fn venv_bin(name: &str) -> PathBuf {
    let cache = std::env::var_os("KILN_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".cache"));
    let bin = cache.join("venv/bin").join(name);
    assert!(bin.exists(), "{} is missing: run tests/setup.sh first", bin.display());
    bin
}

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

pub fn free_tcp_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

pub fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Serves `body` at every path on 127.0.0.1 (what sushy downloads for virtual media). Returns the URL base.
pub async fn serve_file(body: &'static [u8]) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || async move { body });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), task)
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
        let port = free_udp_port();
        let state = dir.path().join("chassis");
        std::fs::create_dir(&state).unwrap();
        let script = dir.path().join("chassis.sh");
        std::fs::write(&script, CHASSIS_SCRIPT).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
        let lan = format!(
            r#"name "kilntest"
set_working_mc 0x20
  startlan 1
    addr 127.0.0.1 {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
  endlan
  chassis_control "{script} {state}"
  user 1 true ""      "test"     user  10 none md2 md5 straight
  user 2 true "{IPMI_USER}" "{IPMI_PASSWORD}" admin 10 none md2 md5 straight
  user 3 true "operator" "operator-pw" operator 10 none md2 md5 straight
"#,
            script = script.display(),
            state = state.display()
        );
        std::fs::write(dir.path().join("lan.conf"), lan).unwrap();
        std::fs::write(
            dir.path().join("sim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             sel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
        )
        .unwrap();
        let simstate = dir.path().join("simstate");
        std::fs::create_dir(&simstate).unwrap();
        let log = std::fs::File::create(dir.path().join("ipmi_sim.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(dir.path().join("lan.conf"))
            .arg("-f")
            .arg(dir.path().join("sim.emu"))
            .arg("-s")
            .arg(&simstate)
            .arg("-n")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start ipmi_sim");
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
        let out = Command::new(require_tool("ipmitool"))
            .args([
                "-I",
                "lanplus",
                "-C",
                "3",
                "-H",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
            ])
            .args(["-U", IPMI_USER, "-P", IPMI_PASSWORD])
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

/// pyghmi's `fakebmc` (the IPMI engine of virtualbmc): suite 3 only, but it answers Get Channel Cipher
/// Suites; user admin / password.
pub struct PyghmiBmc {
    pub port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl PyghmiBmc {
    pub fn start() -> PyghmiBmc {
        let dir = tempfile::tempdir().unwrap();
        let port = free_udp_port();
        let log = std::fs::File::create(dir.path().join("fakebmc.log")).unwrap();
        let child = Command::new(venv_bin("fakebmc"))
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start pyghmi fakebmc");
        let bmc = PyghmiBmc { port, child, dir };
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(20) {
            let out = Command::new(require_tool("ipmitool"))
                .args([
                    "-I",
                    "lanplus",
                    "-C",
                    "3",
                    "-N",
                    "1",
                    "-R",
                    "1",
                    "-H",
                    "127.0.0.1",
                    "-p",
                    &port.to_string(),
                ])
                .args(["-U", "admin", "-P", "password", "chassis", "power", "status"])
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
        let out = Command::new(require_tool("ipmitool"))
            .args([
                "-I",
                "lanplus",
                "-C",
                "3",
                "-H",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "admin",
                "-P",
                "password",
            ])
            .args(args)
            .output()
            .expect("run ipmitool");
        assert!(
            out.status.success(),
            "ipmitool {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
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

/// Captures everything `tracing` emits (all targets, TRACE and up) in memory.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The process-wide log capture: a global subscriber at TRACE for every target, with `log` records (reqwest,
/// hyper) bridged in. Global rather than per-thread because tracing's per-callsite interest cache makes
/// thread-scoped subscribers miss events in multi-threaded test binaries. Tests in one binary share it; filter
/// by the BMC's `host:port` where that matters.
pub fn capture_logs() -> LogCapture {
    static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = LogCapture::default();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(capture.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber per test binary");
            tracing_log::LogTracer::init().expect("install the log bridge");
            capture
        })
        .clone()
}
