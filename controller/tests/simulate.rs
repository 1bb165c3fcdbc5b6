//! Simulator mode as a user tries kiln without hardware: the real `kiln serve --simulate` binary, driven only by the
//! `kiln` CLI over HTTPS. Hosts enrolled with `fake://` BMCs are registered, inspected by simulated agents (through
//! the real netboot lookup and agent API), provisioned and deprovisioned; `/healthz` and each inventory say it is a
//! simulation. Without `--simulate`, the same enrollment is refused, naming the flag.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use kiln_tests::serve::{KilnServe, ok};
use serde_json::Value;

fn serve(dir: &Path, port: u16, simulate: bool) -> KilnServe {
    let mut config = "heartbeat_secs = 1\nmax_concurrent_jobs = 50\nbmc_calls_per_minute = 60\n\
                      [policy]\nidle_poll_secs = 1\nbusy_poll_secs = 1\n"
        .to_owned();
    if simulate {
        // Faster simulated hardware than the default (1 s power actions, 2 s writes).
        config.push_str("[simulator]\npower_delay_ms = 300\nwrite_ms = 500\n");
    }
    KilnServe::start(
        Path::new(env!("CARGO_BIN_EXE_kiln")),
        &dir.join("data"),
        port,
        &config,
        if simulate { &["--simulate"] } else { &[] },
    )
}

fn kiln(dir: &Path, port: u16, args: &[&str]) -> Output {
    kiln_tests::serve::cli(Path::new(env!("CARGO_BIN_EXE_kiln")), &dir.join("data"), port, args)
}

fn hosts(dir: &Path, port: u16) -> Vec<Value> {
    kiln_tests::serve::hosts(Path::new(env!("CARGO_BIN_EXE_kiln")), &dir.join("data"), port)
}

fn wait_all(dir: &Path, port: u16, state: &str, n: usize) -> Vec<Value> {
    kiln_tests::serve::wait_all(Path::new(env!("CARGO_BIN_EXE_kiln")), &dir.join("data"), port, state, n)
}

const N: usize = 12;

#[test]
fn kiln_serve_simulate_provisions_fake_hosts_from_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let port = kiln_tests::free_port();
    let _server = serve(tmp.path(), port, true);
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "simulated\n").unwrap();
    for i in 0..N {
        let name = format!("sim-{i}");
        ok(kiln(
            tmp.path(),
            port,
            &[
                "host",
                "enroll",
                &name,
                "--bmc",
                &format!("fake://{name}"),
                "--username",
                "admin",
                "--password-file",
                pw.to_str().unwrap(),
                "--boot-mac",
                &format!("52:54:02:00:00:{i:02x}"),
                "--label",
                "pool=sim",
            ],
        ));
    }
    wait_all(tmp.path(), port, "available", N);
    let shown: Value =
        serde_json::from_str(&ok(kiln(tmp.path(), port, &["host", "show", "sim-3", "-o", "json"]))).unwrap();
    assert_eq!(shown["host"]["power"], "off", "{shown}");
    let inventory = Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(tmp.path().join("data/tls/ca.pem"))
        .args(["-H"])
        .arg(format!(
            "Authorization: Bearer {}",
            std::fs::read_to_string(tmp.path().join("data/admin.token"))
                .unwrap()
                .trim()
        ))
        .arg(format!("https://127.0.0.1:{port}/api/v1/hosts/sim-3/inspection"))
        .output()
        .unwrap();
    let inventory = String::from_utf8_lossy(&inventory.stdout);
    assert!(inventory.contains("kiln simulator"), "{inventory}");
    let health = Command::new("curl")
        .args(["-sf", "--cacert"])
        .arg(tmp.path().join("data/tls/ca.pem"))
        .arg(format!("https://127.0.0.1:{port}/healthz"))
        .output()
        .unwrap();
    let health: Value = serde_json::from_slice(&health.stdout).unwrap();
    assert_eq!(health["simulate"], true, "{health}");

    let checksum = format!("sha256:{}", "ab".repeat(32));
    for i in 0..N {
        ok(kiln(
            tmp.path(),
            port,
            &[
                "host",
                "provision",
                &format!("sim-{i}"),
                "--image",
                "http://images.invalid/os.qcow2",
                "--checksum",
                &checksum,
            ],
        ));
    }
    let provisioned = wait_all(tmp.path(), port, "provisioned", N);
    assert!(provisioned.iter().all(|h| h["power"] == "on"), "{provisioned:#?}");

    ok(kiln(tmp.path(), port, &["host", "deprovision", "sim-0"]));
    let t = Instant::now();
    loop {
        let h: Value =
            serde_json::from_str(&ok(kiln(tmp.path(), port, &["host", "show", "sim-0", "-o", "json"]))).unwrap();
        if h["host"]["state"] == "available" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "sim-0 not deprovisioned: {h}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

#[test]
fn fake_bmcs_are_refused_without_simulate() {
    let tmp = tempfile::tempdir().unwrap();
    let port = kiln_tests::free_port();
    let _server = serve(tmp.path(), port, false);
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "x\n").unwrap();
    let out = kiln(
        tmp.path(),
        port,
        &[
            "host",
            "enroll",
            "sim-0",
            "--bmc",
            "fake://sim-0",
            "--username",
            "admin",
            "--password-file",
            pw.to_str().unwrap(),
        ],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "enrolled a fake BMC on a real appliance");
    assert!(err.contains("--simulate") && err.contains("bmc.address"), "{err}");
    assert!(hosts(tmp.path(), port).is_empty());
}
