//! `kiln serve` as a real process on a loopback port, for tests that drive the binary as an operator does.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A running `kiln serve`, killed by PID on drop.
pub struct KilnServe(pub Child);

impl Drop for KilnServe {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl KilnServe {
    /// Starts the `kiln` binary `bin` on `127.0.0.1:port` with data directory `data`, the TOML `config` (written to
    /// `data.toml`), `extra` arguments and `RUST_LOG=debug`, its output appended to `data.log`; returns once the port
    /// accepts connections (at most 20 s).
    pub fn start(bin: &Path, data: &Path, port: u16, config: &str, extra: &[&str]) -> KilnServe {
        let config_file = data.with_extension("toml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .unwrap();
        let child = Command::new(bin)
            .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
            .arg(&config_file)
            .arg("--data-dir")
            .arg(data)
            .args(extra)
            .env("RUST_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let s = KilnServe(child);
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(t.elapsed() < Duration::from_secs(20), "kiln serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }
}
