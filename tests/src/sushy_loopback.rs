//! sushy-emulator (Redfish, fake driver) on loopback, for component tests that need a real Redfish service but no
//! lab (kiln-bmc's driver tests, kiln's REST and CLI tests): fake Systems of the test's choosing, optional HTTP Basic
//! users (bcrypt htpasswd) and HTTPS with a certificate from a test CA; its own free port and temporary directory,
//! stopped by PID on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};

use crate::venv_bin;

/// A fake System of the emulator.
#[derive(Debug, Clone, Copy)]
pub struct FakeSystem {
    pub uuid: &'static str,
    pub name: &'static str,
    /// `On` or `Off`.
    pub power: &'static str,
    pub mac: &'static str,
}

pub const NODE0: FakeSystem = FakeSystem {
    uuid: "27946b59-9e44-4fa7-8e91-f3527a1ef094",
    name: "node-0",
    power: "Off",
    mac: "52:54:00:aa:00:01",
};
pub const NODE1: FakeSystem = FakeSystem {
    uuid: "5d1e0a9c-3c64-4b0e-9d0c-2a6f4c1f7e11",
    name: "node-1",
    power: "On",
    mac: "52:54:00:aa:00:02",
};
/// A second powered-off System beside [`NODE0`], for a second host (two hosts never share one machine).
pub const NODE7: FakeSystem = FakeSystem {
    uuid: "9f0e1a3c-5b7d-4e2f-8a6b-1c3d5e7f9a0b",
    name: "node-7",
    power: "Off",
    mac: "52:54:00:aa:00:07",
};

#[derive(Debug, Default)]
pub struct SushyOptions {
    /// (user, password) pairs for an htpasswd file with bcrypt hashes; none: no authentication.
    pub users: Vec<(String, String)>,
    /// HTTPS with a certificate for 127.0.0.1 from a test CA ([`Sushy::ca_pem`]), which nothing trusts by default
    /// (like a BMC's factory certificate).
    pub tls: bool,
}

/// A running sushy-emulator with the fake driver.
pub struct Sushy {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    pub https: bool,
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sushy {
    /// [`NODE0`] and [`NODE7`] behind one user, over HTTP.
    pub fn start(user: (&str, &str)) -> Sushy {
        Self::start_with(&[NODE0, NODE7], Self::one_user(user, false))
    }

    /// As [`Sushy::start`], over HTTPS.
    pub fn start_tls(user: (&str, &str)) -> Sushy {
        Self::start_with(&[NODE0, NODE7], Self::one_user(user, true))
    }

    fn one_user(user: (&str, &str), tls: bool) -> SushyOptions {
        SushyOptions {
            users: vec![(user.0.to_owned(), user.1.to_owned())],
            tls,
        }
    }

    pub fn start_with(systems: &[FakeSystem], options: SushyOptions) -> Sushy {
        let dir = tempfile::tempdir().unwrap();
        let mut conf = String::new();
        conf += "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n";
        conf += "SUSHY_EMULATOR_FAKE_DRIVER = True\n";
        conf += &format!("SUSHY_EMULATOR_STATE_DIR = '{}'\n", dir.path().join("state").display());
        conf += "SUSHY_EMULATOR_FAKE_SYSTEMS = [\n";
        for s in systems {
            conf += &format!(
                "  {{'uuid': '{}', 'name': '{}', 'power_state': '{}', 'external_notifier': False, \
                 'nics': [{{'mac': '{}', 'ip': '10.99.0.100'}}]}},\n",
                s.uuid, s.name, s.power, s.mac
            );
        }
        conf += "]\n";
        if !options.users.is_empty() {
            let mut lines = String::new();
            for (user, password) in &options.users {
                let out = Command::new(venv_bin("python3"))
                    .args([
                        "-c",
                        "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
                    ])
                    .arg(password)
                    .output()
                    .expect("run python bcrypt");
                assert!(out.status.success(), "bcrypt: {}", String::from_utf8_lossy(&out.stderr));
                lines += &format!("{user}:{}\n", String::from_utf8_lossy(&out.stdout).trim());
            }
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, lines).unwrap();
            conf += &format!("SUSHY_EMULATOR_AUTH_FILE = '{}'\n", htpasswd.display());
        }
        if options.tls {
            let (cert, key) = test_ca_certificate(dir.path());
            conf += &format!(
                "SUSHY_EMULATOR_SSL_CERT = '{}'\nSUSHY_EMULATOR_SSL_KEY = '{}'\n",
                cert.display(),
                key.display()
            );
        }
        let conf_path = dir.path().join("sushy.conf");
        std::fs::write(&conf_path, conf).unwrap();
        // The port is free when picked but not reserved: another test's emulator (the tests of a binary start theirs
        // at once, and Python takes seconds to bind under load) or a client's ephemeral port can take it before this
        // emulator binds, and then it exits while the port answers for someone else. Such a start is retried on a new
        // port.
        let mut port = crate::free_port();
        for attempt in 1.. {
            let log_path = dir.path().join("sushy.log");
            let log = std::fs::File::create(&log_path).unwrap();
            let mut child = crate::spawn_logged(
                Command::new(venv_bin("sushy-emulator"))
                    .arg("--config")
                    .arg(&conf_path)
                    .args(["--port", &port.to_string()]),
                log,
            )
            .expect("start sushy-emulator");
            match wait_listening(&mut child, port, &log_path, Duration::from_secs(30)) {
                Ok(()) => {
                    return Sushy {
                        port,
                        dir,
                        child,
                        https: options.tls,
                    };
                }
                Err(why) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
                    assert!(attempt < 3, "sushy-emulator did not start ({why}); log:\n{log}");
                    eprintln!("sushy-emulator on port {port}: {why}; starting it again on another port");
                    port = crate::free_port();
                }
            }
        }
        unreachable!("the loop returns or panics")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sushy.log")).unwrap_or_default()
    }

    /// `redfish+http://127.0.0.1:PORT` (or `redfish+https`) with an optional Systems path.
    pub fn address(&self, system: Option<&str>) -> String {
        let scheme = if self.https { "redfish+https" } else { "redfish+http" };
        match system {
            Some(id) => format!("{scheme}://127.0.0.1:{}/redfish/v1/Systems/{id}", self.port),
            None => format!("{scheme}://127.0.0.1:{}", self.port),
        }
    }

    /// The address of one System.
    pub fn address_of(&self, system: &FakeSystem) -> String {
        self.address(Some(system.uuid))
    }

    /// The CA that signed the emulator's certificate (with [`SushyOptions::tls`]).
    pub fn ca_pem(&self) -> Vec<u8> {
        std::fs::read(self.dir.path().join("ca.pem")).unwrap()
    }

    /// How many requests with `needle` in their log line the emulator has served.
    pub fn count_requests(&self, needle: &str) -> usize {
        self.log().lines().filter(|l| l.contains(needle)).count()
    }
}

/// Waits until the emulator `child` is the one listening on `port`: its log says it is running there (werkzeug logs
/// that after binding), and the port accepts connections ([`crate::listening`]). Without the first, the port may be
/// someone else's by then.
fn wait_listening(child: &mut Child, port: u16, log: &Path, timeout: Duration) -> Result<(), String> {
    let t = Instant::now();
    let running = format!("127.0.0.1:{port}");
    loop {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("it exited ({status})"));
        }
        let announced = std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .any(|l| l.contains("Running on") && l.contains(&running));
        if announced && crate::listening(port) {
            return Ok(());
        }
        if t.elapsed() > timeout {
            return Err(format!("not listening after {timeout:?}"));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A test CA (`ca.pem` in `dir`) and a certificate for 127.0.0.1 signed by it (openssl CLI): (cert.pem, key.pem).
pub fn test_ca_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("run openssl");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        "/CN=kiln test CA",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        "key.pem",
        "-out",
        "leaf.csr",
    ]);
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ]);
    (dir.join("cert.pem"), dir.join("key.pem"))
}
