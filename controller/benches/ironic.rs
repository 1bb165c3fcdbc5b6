//! kiln against OpenStack Ironic, phase by phase (a bench, not a test). The same N hosts go through the same
//! lifecycle on both, driven over each one's REST API by the same client (8 requests in flight, as an operator's
//! tooling would): enroll, make available, provision, deprovision. Ironic is Ironic 39 standalone (`ironic`, API and
//! conductor in one process, no authentication, SQLite, `fake-hardware`, automated cleaning off), installed from PyPI
//! into `.cache/ironic-venv` on first use. kiln is the real `kiln serve --simulate` (release build) on SQLite with
//! `fake://` BMCs, its simulated hardware answering at once as Ironic's fake interfaces do (`[simulator]` delays 0)
//! and cleaning disabled per host as Ironic's is. Concurrency is the same on both: `max_concurrent_jobs = 300`, the
//! size of Ironic's conductor worker pool (`[conductor] workers_pool_size`, default 300; KILN_BENCH_JOBS overrides
//! it, kiln's own default is 20). Everything else is kiln's default (5-second agent heartbeats).
//!
//! `cargo bench -p kiln --bench ironic` (KILN_BENCH_HOSTS overrides N = 1,000; KILN_BENCH_SIM_MS=1000 gives kiln's
//! simulated hardware realistic delays instead; KILN_BENCH_IRONIC=0 runs kiln's side alone, without ratios). Prints, per phase, the wall time and hosts/s of each and the ratio
//! kiln/Ironic, plus enrollment latency (p50, p95) and memory with every host at rest.
//!
//! Where the work differs, it is kiln doing more: a provision runs the simulated firmware's netboot lookup and a
//! simulated agent over the real agent API (token, heartbeats, a write command and its result), where Ironic's fake
//! deploy returns at once.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_tests::serve::KilnServe;
use serde_json::{Value, json};

/// Requests in flight at once, on both sides.
const CLIENTS: usize = 8;
const IRONIC_VERSION: &str = "39.0.0";

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// Ironic's venv: made once, reused.
fn ironic_venv() -> PathBuf {
    let venv = kiln_tests::cache_dir().join("ironic-venv");
    let pip = venv.join("bin/pip");
    if venv.join("bin/ironic").exists() {
        return venv;
    }
    eprintln!("installing Ironic {IRONIC_VERSION} from PyPI into {}", venv.display());
    let ok = Command::new("python3")
        .args(["-m", "venv"])
        .arg(&venv)
        .status()
        .is_ok_and(|s| s.success())
        && Command::new(&pip)
            .args(["install", "-q", &format!("ironic=={IRONIC_VERSION}")])
            .status()
            .is_ok_and(|s| s.success());
    assert!(ok, "could not install Ironic into {}", venv.display());
    venv
}

/// Ironic standalone on a loopback port, killed on drop.
struct Ironic {
    child: Child,
    base: String,
}

impl Drop for Ironic {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Ironic {
    fn start(dir: &Path) -> Self {
        let venv = ironic_venv();
        let port = kiln_tests::free_port();
        let conf = dir.join("ironic.conf");
        let interfaces: String = [
            ("boot", "fake"),
            ("deploy", "fake"),
            ("management", "fake"),
            ("power", "fake"),
            ("inspect", "fake,no-inspect"),
            ("console", "no-console"),
            ("raid", "fake,no-raid"),
            ("vendor", "fake,no-vendor"),
            ("bios", "fake,no-bios"),
            ("network", "noop"),
            ("storage", "noop"),
            ("rescue", "fake,no-rescue"),
            ("firmware", "fake,no-firmware"),
        ]
        .iter()
        .map(|(k, v)| format!("enabled_{k}_interfaces = {v}\n"))
        .collect();
        std::fs::write(
            &conf,
            format!(
                "[DEFAULT]\nauth_strategy = noauth\nenabled_hardware_types = fake-hardware\n{interfaces}\
                 rpc_transport = none\nhost = bench\nuse_stderr = true\n\
                 [api]\nhost_ip = 127.0.0.1\nport = {port}\n\
                 [conductor]\nautomated_clean = false\n\
                 [database]\nconnection = sqlite:///{db}\n\
                 [dhcp]\ndhcp_provider = none\n\
                 [oslo_concurrency]\nlock_path = {locks}\n",
                db = dir.join("ironic.db").display(),
                locks = dir.join("locks").display(),
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.join("ironic.log")).unwrap();
        let sync = Command::new(venv.join("bin/ironic-dbsync"))
            .arg("--config-file")
            .arg(&conf)
            .arg("create_schema")
            .stdout(Stdio::null())
            .stderr(log.try_clone().unwrap())
            .status()
            .unwrap();
        assert!(
            sync.success(),
            "ironic-dbsync failed: see {}",
            dir.join("ironic.log").display()
        );
        let child = Command::new(venv.join("bin/ironic"))
            .arg("--config-file")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        Ironic {
            child,
            base: format!("http://127.0.0.1:{port}/v1"),
        }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// One side of the comparison: how to do each phase's request for host `i`, and how many hosts are in a state.
trait Side {
    fn name(&self) -> &'static str;
    async fn enroll(&self, i: usize) -> Result<(), String>;
    /// What a host needs after enrollment to become available (nothing for kiln: it registers hosts itself).
    async fn make_available(&self, i: usize) -> Result<(), String>;
    async fn provision(&self, i: usize) -> Result<(), String>;
    async fn deprovision(&self, i: usize) -> Result<(), String>;
    /// Hosts in `state` (kiln's names); panics when one failed.
    async fn count(&self, state: &str) -> usize;
    fn pid(&self) -> u32;
}

fn host(i: usize) -> String {
    format!("bench-{i:05}")
}

async fn check(r: reqwest::Result<reqwest::Response>, what: &str) -> Result<Value, String> {
    let r = r.map_err(|e| format!("{what}: {e}"))?;
    let status = r.status();
    let body = r.text().await.unwrap_or_default();
    if !status.is_success() {
        return Err(format!("{what}: {status}: {body}"));
    }
    Ok(serde_json::from_str(&body).unwrap_or(Value::Null))
}

struct KilnSide {
    http: reqwest::Client,
    token: String,
    base: String,
    metrics: String,
    serve: KilnServe,
}

impl Side for KilnSide {
    fn name(&self) -> &'static str {
        "kiln"
    }

    async fn enroll(&self, i: usize) -> Result<(), String> {
        let name = host(i);
        let body = json!({
            "name": name,
            "bmc": {"address": format!("fake://{name}"), "username": "admin", "password": "simulated"},
            "boot_mac": format!("52:54:05:{:02x}:{:02x}:{:02x}", i >> 16, (i >> 8) & 0xff, i & 0xff),
            // Ironic's automated cleaning is off too.
            "options": {"inspect": false, "erase": "disabled"},
        });
        let r = self
            .http
            .post(format!("{}/hosts", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await;
        check(r, "enroll").await.map(drop)
    }

    async fn make_available(&self, _i: usize) -> Result<(), String> {
        Ok(())
    }

    async fn provision(&self, i: usize) -> Result<(), String> {
        let body = json!({"image": {"url": "http://images.invalid/os.qcow2",
            "checksum": format!("sha256:{}", "ab".repeat(32))}});
        let url = format!("{}/hosts/{}/provision", self.base, host(i));
        check(
            self.http.post(url).bearer_auth(&self.token).json(&body).send().await,
            "provision",
        )
        .await
        .map(drop)
    }

    async fn deprovision(&self, i: usize) -> Result<(), String> {
        let url = format!("{}/hosts/{}/deprovision", self.base, host(i));
        check(
            self.http
                .post(url)
                .bearer_auth(&self.token)
                .json(&json!({}))
                .send()
                .await,
            "deprovision",
        )
        .await
        .map(drop)
    }

    async fn count(&self, state: &str) -> usize {
        let text = match self.http.get(&self.metrics).bearer_auth(&self.token).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let mut n = 0;
        for line in text.lines().filter(|l| l.starts_with("kiln_hosts{")) {
            let s = line
                .split("state=\"")
                .nth(1)
                .and_then(|r| r.split('"').next())
                .unwrap_or("");
            let v = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(0.0) as usize;
            assert!(!(s == "error" && v > 0), "kiln: {v} hosts in error");
            if s == state {
                n += v;
            }
        }
        n
    }

    fn pid(&self) -> u32 {
        self.serve.0.id()
    }
}

struct IronicSide {
    http: reqwest::Client,
    ironic: Ironic,
}

impl IronicSide {
    fn req(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.ironic.base))
            .header("X-OpenStack-Ironic-API-Version", "latest")
    }

    async fn target(&self, i: usize, target: &str) -> Result<(), String> {
        let path = format!("/nodes/{}/states/provision", host(i));
        let r = self
            .req(reqwest::Method::PUT, &path)
            .json(&json!({"target": target}))
            .send()
            .await;
        check(r, target).await.map(drop)
    }

    async fn state_of(&self, i: usize) -> String {
        let r = self
            .req(
                reqwest::Method::GET,
                &format!("/nodes/{}?fields=provision_state", host(i)),
            )
            .send()
            .await;
        check(r, "node")
            .await
            .ok()
            .and_then(|v| v["provision_state"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

impl Side for IronicSide {
    fn name(&self) -> &'static str {
        "Ironic"
    }

    async fn enroll(&self, i: usize) -> Result<(), String> {
        let body = json!({"name": host(i), "driver": "fake-hardware"});
        check(
            self.req(reqwest::Method::POST, "/nodes").json(&body).send().await,
            "enroll",
        )
        .await
        .map(drop)
    }

    /// `manage` (Ironic verifies the BMC), then, once the node is `manageable`, `provide`.
    async fn make_available(&self, i: usize) -> Result<(), String> {
        self.target(i, "manage").await?;
        let t = Instant::now();
        loop {
            match self.state_of(i).await.as_str() {
                "manageable" => break,
                "enroll" | "verifying" => {}
                other => return Err(format!("{}: {other} after manage", host(i))),
            }
            if t.elapsed() > Duration::from_secs(600) {
                return Err(format!("{}: not manageable after 600 s", host(i)));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.target(i, "provide").await
    }

    async fn provision(&self, i: usize) -> Result<(), String> {
        let patch = json!([
            {"op": "add", "path": "/instance_info/image_source", "value": "http://images.invalid/os.qcow2"},
            {"op": "add", "path": "/instance_info/image_checksum", "value": "ab".repeat(32)},
        ]);
        let r = self
            .req(reqwest::Method::PATCH, &format!("/nodes/{}", host(i)))
            .json(&patch)
            .send()
            .await;
        check(r, "instance_info").await?;
        self.target(i, "active").await
    }

    async fn deprovision(&self, i: usize) -> Result<(), String> {
        self.target(i, "deleted").await
    }

    async fn count(&self, state: &str) -> usize {
        let want = match state {
            "provisioned" => "active",
            other => other,
        };
        let mut n = 0;
        let mut next = Some(format!("{}/nodes?fields=provision_state&limit=1000", self.ironic.base));
        while let Some(url) = next.take() {
            let r = self
                .http
                .get(&url)
                .header("X-OpenStack-Ironic-API-Version", "latest")
                .send()
                .await;
            let Ok(page) = check(r, "nodes").await else { return n };
            for node in page["nodes"].as_array().into_iter().flatten() {
                let s = node["provision_state"].as_str().unwrap_or("");
                assert!(!s.contains("fail") && s != "error", "Ironic: a node is {s}");
                n += usize::from(s == want);
            }
            next = page["next"].as_str().map(str::to_owned);
        }
        n
    }

    fn pid(&self) -> u32 {
        self.ironic.pid()
    }
}

/// Runs `f(i)` for every host, CLIENTS at a time; returns the per-request latencies. Panics on a failed request.
async fn each<F, Fut>(n: usize, what: &str, f: F) -> Vec<Duration>
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = Result<(), String>>,
{
    let results: Vec<Result<Duration, String>> = futures::stream::iter(0..n)
        .map(|i| {
            let fut = f(i);
            async move {
                let t = Instant::now();
                fut.await.map(|()| t.elapsed())
            }
        })
        .buffer_unordered(CLIENTS)
        .collect()
        .await;
    let failed: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} {what} requests failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    results.into_iter().map(Result::unwrap).collect()
}

async fn wait_for<S: Side>(side: &S, state: &str, n: usize) {
    let t = Instant::now();
    while side.count(state).await < n {
        assert!(
            t.elapsed() < Duration::from_secs(7200),
            "{}: {n} hosts not {state} after 2 h",
            side.name()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn percentile(mut v: Vec<Duration>, p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn pss_mib(pid: u32) -> f64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// Wall time of each phase, enrollment latencies, memory with every host at rest.
struct Run {
    phases: Vec<(&'static str, Duration)>,
    enroll_p50: Duration,
    enroll_p95: Duration,
    pss: f64,
}

async fn lifecycle<S: Side>(side: &S, n: usize) -> Run {
    let mut phases = Vec::new();
    let t = Instant::now();
    let lat = each(n, "enroll", |i| side.enroll(i)).await;
    phases.push(("enroll (requests)", t.elapsed()));
    let (enroll_p50, enroll_p95) = (percentile(lat.clone(), 0.5), percentile(lat, 0.95));
    each(n, "make available", |i| side.make_available(i)).await;
    wait_for(side, "available", n).await;
    phases.push(("enroll → available", t.elapsed()));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pss = pss_mib(side.pid());
    let t = Instant::now();
    each(n, "provision", |i| side.provision(i)).await;
    wait_for(side, "provisioned", n).await;
    phases.push(("provision", t.elapsed()));
    let t = Instant::now();
    each(n, "deprovision", |i| side.deprovision(i)).await;
    wait_for(side, "available", n).await;
    phases.push(("deprovision", t.elapsed()));
    eprintln!(
        "{}: done in {:.1} s",
        side.name(),
        phases.iter().map(|p| p.1.as_secs_f64()).sum::<f64>()
    );
    Run {
        phases,
        enroll_p50,
        enroll_p95,
        pss,
    }
}

#[tokio::main]
async fn main() {
    let n = env("KILN_BENCH_HOSTS", 1_000);
    let dir = tempfile::tempdir().unwrap();

    let _ = rustls::crypto::ring::default_provider().install_default();
    let data = dir.path().join("kiln");
    let port = kiln_tests::free_port();
    let mut config = "heartbeat_secs = 5\n".to_owned();
    config.push_str(&format!("max_concurrent_jobs = {}\n", env("KILN_BENCH_JOBS", 300)));
    let sim_ms = env("KILN_BENCH_SIM_MS", 0);
    config.push_str(&format!(
        "[simulator]\npower_delay_ms = {sim_ms}\nwrite_ms = {}\n",
        2 * sim_ms
    ));
    let bin = Path::new(env!("CARGO_BIN_EXE_kiln"));
    let serve = KilnServe::start_logging(bin, &data, port, &config, &["--simulate"], "info");
    let kiln = KilnSide {
        http: kiln_tests::inproc::https_client(&data),
        token: std::fs::read_to_string(data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned(),
        base: format!("https://127.0.0.1:{port}/api/v1"),
        metrics: format!("https://127.0.0.1:{port}/metrics"),
        serve,
    };
    eprintln!("kiln: {n} hosts");
    let k = lifecycle(&kiln, n).await;
    drop(kiln);
    if std::env::var("KILN_BENCH_IRONIC").is_ok_and(|v| v == "0") {
        // kiln's side alone, to iterate on it (no ratio without the reference run).
        for (name, kt) in &k.phases {
            println!(
                "{name:<20} kiln {:>8.1} s {:>10.1} hosts/s",
                kt.as_secs_f64(),
                n as f64 / kt.as_secs_f64()
            );
        }
        println!(
            "enroll latency p50/p95: kiln {:.0}/{:.0} ms; PSS at rest {:.0} MiB",
            k.enroll_p50.as_secs_f64() * 1e3,
            k.enroll_p95.as_secs_f64() * 1e3,
            k.pss
        );
        return;
    }

    let ironic_dir = dir.path().join("ironic");
    std::fs::create_dir_all(&ironic_dir).unwrap();
    let ironic = IronicSide {
        http: reqwest::Client::new(),
        ironic: Ironic::start(&ironic_dir),
    };
    let t = Instant::now();
    while check(ironic.req(reqwest::Method::GET, "/nodes").send().await, "ping")
        .await
        .is_err()
    {
        assert!(t.elapsed() < Duration::from_secs(120), "Ironic did not answer in 120 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    eprintln!("Ironic {IRONIC_VERSION}: {n} hosts");
    let i = lifecycle(&ironic, n).await;

    println!("kiln vs Ironic {IRONIC_VERSION} standalone (fake-hardware), {n} hosts, {CLIENTS} requests in flight");
    println!(
        "{:<20} {:>10} {:>10} {:>12} {:>12} {:>8}",
        "phase", "kiln s", "Ironic s", "kiln /s", "Ironic /s", "ratio"
    );
    for ((name, kt), (_, it)) in k.phases.iter().zip(&i.phases) {
        let (kr, ir) = (n as f64 / kt.as_secs_f64(), n as f64 / it.as_secs_f64());
        println!(
            "{name:<20} {:>10.1} {:>10.1} {kr:>12.1} {ir:>12.1} {:>8.1}",
            kt.as_secs_f64(),
            it.as_secs_f64(),
            kr / ir
        );
    }
    println!(
        "enroll latency p50/p95: kiln {:.0}/{:.0} ms, Ironic {:.0}/{:.0} ms",
        k.enroll_p50.as_secs_f64() * 1e3,
        k.enroll_p95.as_secs_f64() * 1e3,
        i.enroll_p50.as_secs_f64() * 1e3,
        i.enroll_p95.as_secs_f64() * 1e3
    );
    println!(
        "memory at rest with {n} hosts (PSS): kiln {:.0} MiB, Ironic {:.0} MiB",
        k.pss, i.pss
    );
}
