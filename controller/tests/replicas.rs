//! Several `kiln serve` replicas on one PostgreSQL database (real binaries, simulator mode): they divide the hosts
//! by expiring leases, the REST API works on either, a replica killed with SIGKILL has its hosts taken over once its
//! leases expire, and a replica paused (SIGSTOP) past its leases does not act on the hosts another took over when it
//! wakes up. Every host converges, each deploy boots its agent once, and no host is driven into an error.

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use kiln_tests::serve::{KilnServe, ok};
use serde_json::Value;

const N: usize = 12;
const TTL_SECS: u64 = 3;

struct Replica {
    data: PathBuf,
    port: u16,
    serve: Option<KilnServe>,
}

impl Replica {
    fn start(data: PathBuf, name: &str, db: &str) -> Self {
        let port = kiln_tests::free_port();
        let config = format!(
            "database_url = \"{db}\"\nheartbeat_secs = 1\nmax_concurrent_jobs = 50\nbmc_calls_per_minute = 120\n\
             [policy]\nidle_poll_secs = 1\nbusy_poll_secs = 1\n[replica]\nname = \"{name}\"\nlease_ttl_secs = {TTL_SECS}\n"
        );
        let serve = KilnServe::start(
            Path::new(env!("CARGO_BIN_EXE_kiln")),
            &data,
            port,
            &config,
            &["--simulate"],
        );
        Self {
            data,
            port,
            serve: Some(serve),
        }
    }

    fn kiln(&self, args: &[&str]) -> Output {
        kiln_tests::serve::cli(Path::new(env!("CARGO_BIN_EXE_kiln")), &self.data, self.port, args)
    }

    fn hosts(&self) -> Vec<Value> {
        kiln_tests::serve::hosts(Path::new(env!("CARGO_BIN_EXE_kiln")), &self.data, self.port)
    }

    fn wait_all(&self, state: &str) -> Vec<Value> {
        kiln_tests::serve::wait_all(Path::new(env!("CARGO_BIN_EXE_kiln")), &self.data, self.port, state, N)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }

    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(self.serve.as_ref().expect("running").0.id() as i32)
    }

    /// How many host leases this replica says it gained (its log's lease lines).
    fn gained(&self) -> usize {
        self.log()
            .lines()
            .filter(|l| l.contains("host leases changed"))
            .filter_map(|l| {
                l.split("gained=")
                    .nth(1)?
                    .split_whitespace()
                    .next()?
                    .parse::<usize>()
                    .ok()
            })
            .sum()
    }
}

#[test]
fn replicas_divide_hosts_and_take_over_from_a_killed_or_paused_one() {
    let pg = kiln_tests::pg::PgCluster::start().expect("private PostgreSQL cluster (run tests/setup.sh)");
    let db = pg.create_database("kiln_replicas").unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let a = Replica::start(tmp.path().join("a"), "kiln-a", &db);
    // Replicas share the sealing key and the admin token (and here the CA, so one CLI trusts both).
    let b_data = tmp.path().join("b");
    std::fs::create_dir_all(b_data.join("tls")).unwrap();
    for f in ["secret.key", "admin.token", "tls/ca.key", "tls/ca.pem"] {
        std::fs::copy(a.data.join(f), b_data.join(f)).unwrap();
    }
    let mut b = Replica::start(b_data, "kiln-b", &db);
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "simulated\n").unwrap();
    for i in 0..N {
        let name = format!("sim-{i}");
        // Enrolled through either replica: writes go to the shared store.
        let via = if i % 2 == 0 { &a } else { &b };
        ok(via.kiln(&[
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
            &format!("52:54:02:00:01:{i:02x}"),
        ]));
    }
    b.wait_all("available");
    let (ga, gb) = (a.gained(), b.gained());
    assert!(
        ga > 0 && gb > 0,
        "both replicas drive hosts: kiln-a gained {ga}, kiln-b {gb}"
    );
    assert!(ga + gb >= N, "every host was leased: {ga} + {gb}");

    // SIGKILL kiln-b: kiln-a takes its hosts once their leases expire, and provisions every host.
    let t = Instant::now();
    b.serve.take();
    let checksum = format!("sha256:{}", "ab".repeat(32));
    for i in 0..N {
        ok(a.kiln(&[
            "host",
            "provision",
            &format!("sim-{i}"),
            "--image",
            "http://images.invalid/os.qcow2",
            "--checksum",
            &checksum,
        ]));
    }
    let provisioned = a.wait_all("provisioned");
    println!(
        "kiln-b killed: all {N} hosts provisioned by kiln-a after {:?}",
        t.elapsed()
    );
    assert!(a.gained() >= N, "kiln-a took kiln-b's hosts over");
    for h in &provisioned {
        // Inspection and this deploy: two agent boots, one deploy, whoever drove each.
        assert_eq!(
            (h["counters"]["boots"].as_u64(), h["counters"]["deploys"].as_u64()),
            (Some(2), Some(1)),
            "{h:#}"
        );
    }

    // kiln-b again; it takes its share back from kiln-a (which releases it). Then SIGSTOP it past its leases:
    // kiln-a takes the hosts over and deprovisions them; kiln-b, continued, writes nothing for them.
    let b = Replica::start(tmp.path().join("b"), "kiln-b", &db);
    let t = Instant::now();
    while b.gained() == 0 {
        assert!(
            t.elapsed() < Duration::from_secs(30),
            "kiln-b never took its share back:\n{}",
            b.log()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    nix::sys::signal::kill(b.pid(), nix::sys::signal::Signal::SIGSTOP).unwrap();
    std::thread::sleep(Duration::from_secs(TTL_SECS + 2));
    for i in 0..N {
        ok(a.kiln(&["host", "deprovision", &format!("sim-{i}")]));
    }
    let available = a.wait_all("available");
    nix::sys::signal::kill(b.pid(), nix::sys::signal::Signal::SIGCONT).unwrap();
    std::thread::sleep(Duration::from_secs(TTL_SECS));
    for h in b.hosts() {
        assert_eq!(
            h["state"], "available",
            "a paused replica's wake-up changed a host: {h:#}"
        );
    }
    assert_eq!(available.len(), N);
    assert!(
        !b.log().contains("panicked"),
        "kiln-b:\n{}",
        b.log().lines().rev().take(40).collect::<Vec<_>>().join("\n")
    );
}
