//! sushy-emulator (Redfish, fake driver) on loopback with basic auth, for kiln's component tests that need a real
//! Redfish service but no lab: two Systems, stopped by PID on drop.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::venv_bin;

pub const UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";
/// A second System on the same emulator, for a second host (two hosts never share one machine).
pub const UUID2: &str = "9f0e1a3c-5b7d-4e2f-8a6b-1c3d5e7f9a0b";

pub struct Sushy {
    pub port: u16,
    pub dir: tempfile::TempDir,
    child: Child,
    tls: bool,
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Sushy {
    pub fn start(user: (&str, &str)) -> Sushy {
        Self::launch(user, false)
    }

    /// sushy-emulator serving HTTPS with a freshly made self-signed certificate (a BMC's factory certificate).
    pub fn start_tls(user: (&str, &str)) -> Sushy {
        Self::launch(user, true)
    }

    fn launch(user: (&str, &str), tls: bool) -> Sushy {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = Command::new(venv_bin("python3"))
            .args([
                "-c",
                "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
                user.1,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "bcrypt: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(
            dir.path().join("htpasswd"),
            format!("{}:{}\n", user.0, String::from_utf8_lossy(&out.stdout).trim()),
        )
        .unwrap();
        let conf = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_STATE_DIR = '{}'\n\
             SUSHY_EMULATOR_AUTH_FILE = '{}'\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{UUID}', 'name': 'node-0', 'power_state': 'Off', 'external_notifier': False, 'nics': [{{'mac': '52:54:00:aa:00:01', 'ip': '10.99.0.100'}}]}}, \
             {{'uuid': '{UUID2}', 'name': 'node-7', 'power_state': 'Off', 'external_notifier': False, 'nics': [{{'mac': '52:54:00:aa:00:07', 'ip': '10.99.0.107'}}]}}]\n",
            dir.path().join("state").display(),
            dir.path().join("htpasswd").display()
        );
        std::fs::write(dir.path().join("sushy.conf"), conf).unwrap();
        let log = std::fs::File::create(dir.path().join("sushy.log")).unwrap();
        let mut cmd = Command::new(venv_bin("sushy-emulator"));
        if tls {
            let (cert, key) = (dir.path().join("cert.pem"), dir.path().join("key.pem"));
            let out = Command::new("openssl")
                .args([
                    "req",
                    "-x509",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-days",
                    "1",
                    "-subj",
                    "/CN=bmc.invalid",
                ])
                .args(["-addext", "subjectAltName=IP:127.0.0.1"])
                .arg("-keyout")
                .arg(&key)
                .arg("-out")
                .arg(&cert)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "openssl: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            cmd.arg("--ssl-certificate").arg(&cert).arg("--ssl-key").arg(&key);
        }
        let child = cmd
            .arg("--config")
            .arg(dir.path().join("sushy.conf"))
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sushy-emulator");
        let s = Sushy { port, dir, child, tls };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "sushy did not start: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sushy.log")).unwrap_or_default()
    }
    pub fn address(&self) -> String {
        self.address_of(UUID)
    }
    pub fn address_of(&self, uuid: &str) -> String {
        let scheme = if self.tls { "redfish+https" } else { "redfish+http" };
        format!("{scheme}://127.0.0.1:{}/redfish/v1/Systems/{uuid}", self.port)
    }
}
