//! `kiln serve` as a real process on a loopback port, for tests that drive the binary as an operator does.

use std::path::Path;
use std::process::{Child, Command, Output};
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
        Self::start_logging(bin, data, port, config, extra, "debug")
    }

    /// [`KilnServe::start`] with `RUST_LOG=rust_log` (`info` for benches with thousands of hosts).
    pub fn start_logging(
        bin: &Path,
        data: &Path,
        port: u16,
        config: &str,
        extra: &[&str],
        rust_log: &str,
    ) -> KilnServe {
        let config_file = data.with_extension("toml");
        std::fs::write(&config_file, config).unwrap();
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(data.with_extension("log"))
            .unwrap();
        let child = crate::spawn_logged(
            Command::new(bin)
                .args(["serve", "--listen", &format!("127.0.0.1:{port}"), "--config"])
                .arg(&config_file)
                .arg("--data-dir")
                .arg(data)
                .args(extra)
                .env("RUST_LOG", rust_log),
            log,
        )
        .unwrap();
        let s = KilnServe(child);
        let t = Instant::now();
        while !crate::listening(port) {
            assert!(t.elapsed() < Duration::from_secs(20), "kiln serve did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }
}

/// Runs the `kiln` CLI `bin` with `args` against the `kiln serve` on `127.0.0.1:port` whose data directory is `data`
/// (its admin token; the CLI finds the CA next to it).
pub fn cli(bin: &Path, data: &Path, port: u16, args: &[&str]) -> Output {
    Command::new(bin)
        .args(args)
        .args(["--server", &format!("https://127.0.0.1:{port}"), "--token-file"])
        .arg(data.join("admin.token"))
        .output()
        .unwrap()
}

/// The stdout of a CLI run that must have succeeded (else fails with both outputs).
pub fn ok(o: Output) -> String {
    assert!(
        o.status.success(),
        "kiln failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// Every host, as `kiln host list -o json` prints them, from the `kiln serve` on `127.0.0.1:port` with data `data`.
pub fn hosts(bin: &Path, data: &Path, port: u16) -> Vec<serde_json::Value> {
    serde_json::from_str::<serde_json::Value>(&ok(cli(bin, data, port, &["host", "list", "-o", "json"])))
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// Waits (at most two minutes) until there are `n` hosts, all in `state`; fails at once if one is in `error`.
pub fn wait_all(bin: &Path, data: &Path, port: u16, state: &str, n: usize) -> Vec<serde_json::Value> {
    let t = Instant::now();
    loop {
        let hs = hosts(bin, data, port);
        assert!(hs.iter().all(|h| h["state"] != "error"), "a host failed: {hs:#?}");
        if hs.len() == n && hs.iter().all(|h| h["state"] == state) {
            return hs;
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "not all {n} hosts reached {state}: {:?}",
            hs.iter().map(|h| (&h["name"], &h["state"])).collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}
