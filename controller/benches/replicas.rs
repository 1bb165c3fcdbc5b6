//! Several replicas at scale, under faults (a bench, not a test). Three `kiln serve --simulate` processes on one
//! PostgreSQL (a private cluster from Debian's package, `kiln_tests::pg`) divide N simulated hosts by expiring
//! leases; D of them are deployed at once, and mid-deploy one replica is SIGKILLed and another SIGSTOPped for longer
//! than the lease time, then continued. The same D deploys are then run by one replica alone on a fresh database,
//! for the ratio.
//!
//! `cargo bench -p kiln --bench replicas` (KILN_BENCH_HOSTS, KILN_BENCH_DEPLOYS, KILN_BENCH_TTL override 30,000,
//! 1,000 and 15 s; `cargo test -p kiln --bench replicas` runs it unoptimised). Three replicas first deploy D hosts
//! undisturbed, then D more under the two faults. Prints the takeover time, deploys/s with three replicas against
//! one, RSS and CPU at rest per replica; fails unless every host converged, none was written twice (the agent
//! commands of each deployed host, counted in the store) and no acknowledged API write was lost.
//!
//! One limit of the simulation, and how the bench accounts for it: a simulated host's firmware and agent are tasks
//! of the replica whose BMC call booted it, so the SIGKILL of kiln-b is also a power loss of the hosts kiln-b had
//! booted and not yet finished (a real agent would go on writing and report to another replica; the lab test
//! `controller/tests/replicas.rs` shows that with two real replicas). Their new owner finds the agent gone
//! (`agent_lost`, after 60 s of silence here instead of the default 300 s) and the policy's retry deploys them again.
//! So the bench lets exactly those hosts pass through `agent_lost` and be written twice, prints how many were, and
//! fails on any other error or second write. The SIGSTOPped kiln-c's agents only pause, and must not be written twice.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_tests::pg::PgCluster;
use kiln_tests::serve::KilnServe;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

/// Silence after which a replica declares a simulated agent lost (the policy's default is 300 s).
const AGENT_LOST_SECS: u64 = 60;

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_kiln"))
}

struct Replica {
    name: String,
    data: PathBuf,
    port: u16,
    serve: Option<KilnServe>,
}

impl Replica {
    /// Starts replica `name` on `db`; with `share`, it gets that replica's sealing key, admin token and CA (replicas
    /// must share the first two; the CA lets one client trust all of them).
    fn start(dir: &Path, name: &str, db: &str, ttl: u64, share: Option<&Replica>) -> Self {
        let data = dir.join(name);
        if let Some(first) = share {
            std::fs::create_dir_all(data.join("tls")).unwrap();
            for f in ["secret.key", "admin.token", "tls/ca.key", "tls/ca.pem"] {
                std::fs::copy(first.data.join(f), data.join(f)).unwrap();
            }
        }
        let port = kiln_tests::free_port();
        let config = format!(
            "database_url = \"{db}\"\nheartbeat_secs = 5\nmax_concurrent_jobs = 5000\n[replica]\nname = \"{name}\"\n\
             lease_ttl_secs = {ttl}\n[policy]\nheartbeat_timeout_secs = {AGENT_LOST_SECS}\n"
        );
        let serve = KilnServe::start_logging(bin(), &data, port, &config, &["--simulate"], "info");
        Self {
            name: name.to_owned(),
            data,
            port,
            serve: Some(serve),
        }
    }

    fn pid(&self) -> Pid {
        Pid::from_raw(self.serve.as_ref().expect("running").0.id() as i32)
    }

    fn proc_file(&self, file: &str) -> String {
        std::fs::read_to_string(format!("/proc/{}/{file}", self.pid())).unwrap_or_default()
    }

    fn rss_mib(&self) -> f64 {
        self.proc_file("status")
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
            .unwrap_or(0.0)
            / 1024.0
    }

    /// User + system CPU seconds so far.
    fn cpu_secs(&self) -> f64 {
        let stat = self.proc_file("stat");
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
        let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        (ticks(11) + ticks(12)) / 100.0
    }

    fn base(&self) -> String {
        format!("https://127.0.0.1:{}/api/v1", self.port)
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.data.with_extension("log")).unwrap_or_default()
    }
}

struct Api {
    http: reqwest::Client,
    token: String,
}

impl Api {
    fn new(first: &Replica) -> Self {
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            http: kiln_tests::inproc::https_client(&first.data),
            token: std::fs::read_to_string(first.data.join("admin.token"))
                .unwrap()
                .trim()
                .to_owned(),
        }
    }

    async fn post(&self, url: String, body: serde_json::Value) -> Result<u16, String> {
        let r = self
            .http
            .post(&url)
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .map_err(|e| format!("{url}: {e}"))?;
        Ok(r.status().as_u16())
    }

    /// Hosts by state, from a replica's `kiln_hosts` gauge (it counts the whole store).
    async fn states(&self, via: &Replica) -> BTreeMap<String, u64> {
        let url = format!("https://127.0.0.1:{}/metrics", via.port);
        let text = match self.http.get(&url).bearer_auth(&self.token).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let mut out = BTreeMap::new();
        for line in text.lines().filter(|l| l.starts_with("kiln_hosts{")) {
            let state = line.split("state=\"").nth(1).and_then(|r| r.split('"').next());
            let n = line.rsplit(' ').next().and_then(|n| n.parse::<u64>().ok());
            if let (Some(s), Some(n)) = (state, n) {
                *out.entry(s.to_owned()).or_default() += n;
            }
        }
        out
    }

    /// The hosts in `error` with their error, to say why the bench failed.
    async fn errors(&self, via: &Replica) -> String {
        let url = format!("{}/hosts", via.base());
        let hosts: Vec<serde_json::Value> = match self.http.get(&url).bearer_auth(&self.token).send().await {
            Ok(r) => r.json().await.unwrap_or_default(),
            Err(e) => return format!("(could not list hosts: {e})"),
        };
        hosts
            .iter()
            .filter(|h| h["state"] == "error")
            .map(|h| format!("{}: {}", h["name"], h["error"]))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Waits until `n` hosts are in `state` (asked of `via`); panics on a host in `error`, except a host of
    /// `lost` whose agent was lost (it is retried).
    async fn wait(
        &self,
        via: &Replica,
        state: &str,
        n: u64,
        timeout: Duration,
        lost: Option<(&PgCluster, &str, &BTreeSet<String>)>,
    ) -> Duration {
        let t = Instant::now();
        loop {
            let s = self.states(via).await;
            if s.contains_key("error") {
                let allowed = match lost {
                    Some((pg, db, lost)) => hosts_in_error(pg, db)
                        .iter()
                        .all(|(host, kind, _)| kind == "agent_lost" && lost.contains(host)),
                    None => false,
                };
                if !allowed {
                    panic!("hosts in error: {s:?}; {}", self.errors(via).await);
                }
            }
            if s.get(state).copied().unwrap_or(0) >= n {
                return t.elapsed();
            }
            assert!(t.elapsed() < timeout, "{n} hosts not {state} within {timeout:?}: {s:?}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

fn host(i: usize) -> String {
    format!("sim-{i:05}")
}

/// Enrolls hosts `0..n` through the replicas in turn (not inspected: only deploys are measured); returns how many
/// enrollments the API acknowledged.
async fn enroll(api: &Api, replicas: &[&Replica], n: usize) -> usize {
    post_all(
        api,
        (0..n).map(|i| {
            let name = host(i);
            let url = format!("{}/hosts", replicas[i % replicas.len()].base());
            let body = json!({
                "name": name,
                "bmc": {"address": format!("fake://{name}"), "username": "admin", "password": "simulated"},
                "boot_mac": format!("52:54:03:{:02x}:{:02x}:{:02x}", i >> 16, (i >> 8) & 0xff, i & 0xff),
                "options": {"inspect": false},
            });
            (url, body)
        }),
        "enrollments",
    )
    .await
}

/// Asks for `hosts` to be provisioned, through the live replicas in turn.
async fn provision(api: &Api, replicas: &[&Replica], hosts: std::ops::Range<usize>) -> usize {
    let image =
        json!({"image": {"url": "http://images.invalid/os.qcow2", "checksum": format!("sha256:{}", "ab".repeat(32))}});
    let requests = hosts.map(|i| {
        let url = format!("{}/hosts/{}/provision", replicas[i % replicas.len()].base(), host(i));
        (url, image.clone())
    });
    post_all(api, requests, "provision requests").await
}

/// Sends `requests` 32 at a time; panics unless every one was acknowledged (2xx); returns how many were sent.
async fn post_all(api: &Api, requests: impl Iterator<Item = (String, serde_json::Value)>, what: &str) -> usize {
    let acked = futures::stream::iter(requests)
        .map(|(url, body)| api.post(url, body))
        .buffer_unordered(32)
        .collect::<Vec<_>>()
        .await;
    let failed: Vec<&Result<u16, String>> = acked.iter().filter(|r| !matches!(r, Ok(200..=299))).collect();
    assert!(
        failed.is_empty(),
        "{} {what} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    acked.len()
}

/// Rows of `sql`'s `-At` output, split at `|`.
fn rows(pg: &PgCluster, db: &str, sql: &str) -> Vec<Vec<String>> {
    pg.query(db, sql)
        .unwrap()
        .lines()
        .filter(|l| !l.is_empty())
        .map(|l| l.split('|').map(str::to_owned).collect())
        .collect()
}

/// Hosts in `error`, from the store: `(name, kind, message)`.
fn hosts_in_error(pg: &PgCluster, db: &str) -> Vec<(String, String, String)> {
    rows(
        pg,
        db,
        "SELECT name, coalesce(error_kind, ''), coalesce(error_message, '') FROM hosts WHERE state_name = 'error'",
    )
    .into_iter()
    .map(|mut r| {
        r.resize(3, String::new());
        (r[0].clone(), r[1].clone(), r[2].clone())
    })
    .collect()
}

/// The hosts whose lease `replica` holds and that are not provisioned (yet).
fn unfinished_hosts_of(pg: &PgCluster, db: &str, replica: &str) -> BTreeSet<String> {
    let sql = format!(
        "SELECT h.name FROM hosts h JOIN host_leases l ON l.host_id = h.id \
         WHERE l.replica = '{replica}' AND h.state_name <> 'provisioned'"
    );
    rows(pg, db, &sql).into_iter().map(|r| r[0].clone()).collect()
}

/// Agent commands per deployed host, from the store.
fn commands_per_host(pg: &PgCluster, db: &str) -> BTreeMap<String, u64> {
    rows(
        pg,
        db,
        "SELECT h.name, count(*) FROM agent_commands c JOIN hosts h ON h.id = c.host_id GROUP BY h.name",
    )
    .into_iter()
    .filter_map(|r| Some((r[0].clone(), r.get(1)?.parse().ok()?)))
    .collect()
}

/// `(commands, hosts with that many)`.
fn histogram(counts: impl Iterator<Item = u64>) -> BTreeMap<u64, u64> {
    let mut h = BTreeMap::new();
    for n in counts {
        *h.entry(n).or_default() += 1;
    }
    h
}

/// CPU share of one core used by each replica over `secs` seconds at rest.
async fn cpu_at_rest(replicas: &[&Replica], secs: u64) -> Vec<f64> {
    let before: Vec<f64> = replicas.iter().map(|r| r.cpu_secs()).collect();
    tokio::time::sleep(Duration::from_secs(secs)).await;
    replicas
        .iter()
        .zip(before)
        .map(|(r, b)| (r.cpu_secs() - b) / secs as f64 * 100.0)
        .collect()
}

/// The first `host leases changed` line of `r`'s log after `since` lines: the takeover.
fn takeover_seen(r: &Replica, since: usize) -> bool {
    r.log()
        .lines()
        .skip(since)
        .any(|l| l.contains("host leases changed") && l.contains("gained="))
}

#[tokio::main]
async fn main() {
    let n = env("KILN_BENCH_HOSTS", 30_000);
    let d = env("KILN_BENCH_DEPLOYS", 1_000).min(n / 2);
    let ttl = env("KILN_BENCH_TTL", 15) as u64;
    let pg = PgCluster::start().expect("a private PostgreSQL cluster (tests/setup.sh installs PostgreSQL)");
    let tmp = tempfile::tempdir().unwrap();
    println!("replicas bench: {n} simulated hosts, {d} concurrent deploys, lease TTL {ttl} s");

    // ---- three replicas
    let db = pg.create_database("kiln_bench3").unwrap();
    let a = Replica::start(tmp.path(), "kiln-a", &db, ttl, None);
    let b = Replica::start(tmp.path(), "kiln-b", &db, ttl, Some(&a));
    let mut c = Replica::start(tmp.path(), "kiln-c", &db, ttl, Some(&a));
    let api = Api::new(&a);
    let t = Instant::now();
    let enrolled = enroll(&api, &[&a, &b, &c], n).await;
    let enroll_secs = t.elapsed().as_secs_f64();
    let to_available = api
        .wait(&a, "available", n as u64, Duration::from_secs(3600), None)
        .await;
    println!(
        "enrolled {enrolled} hosts in {enroll_secs:.1} s ({:.0}/s); all available after {:.1} s",
        n as f64 / enroll_secs,
        to_available.as_secs_f64()
    );
    tokio::time::sleep(Duration::from_secs(10)).await;
    let pg_before = pg.cpu_secs();
    let cpu = cpu_at_rest(&[&a, &b, &c], 30).await;
    for (r, cpu) in [&a, &b, &c].iter().zip(&cpu) {
        println!("{} at rest: {cpu:.1}% of one core, RSS {:.0} MiB", r.name, r.rss_mib());
    }
    println!(
        "PostgreSQL at rest (its server processes): {:.1}% of one core",
        (pg.cpu_secs() - pg_before) / 30.0 * 100.0
    );

    // D deploys, undisturbed.
    let t = Instant::now();
    let mut acked = provision(&api, &[&a, &b, &c], 0..d).await;
    api.wait(&a, "provisioned", d as u64, Duration::from_secs(3600), None)
        .await;
    let deploy3 = t.elapsed();
    println!(
        "3 replicas: {d} deploys in {:.1} s ({:.1}/s)",
        deploy3.as_secs_f64(),
        d as f64 / deploy3.as_secs_f64()
    );

    // D more; once a tenth are provisioned, SIGKILL kiln-b and SIGSTOP kiln-c for the lease time and more.
    let t = Instant::now();
    acked += provision(&api, &[&a, &b, &c], d..2 * d).await;
    api.wait(
        &a,
        "provisioned",
        (d + d / 10).max(1) as u64,
        Duration::from_secs(3600),
        None,
    )
    .await;
    let a_lines = a.log().lines().count();
    let lost = unfinished_hosts_of(&pg, &db, "kiln-b");
    let killed = Instant::now();
    drop(b);
    kill(c.pid(), Signal::SIGSTOP).unwrap();
    let takeover = loop {
        if takeover_seen(&a, a_lines) {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(ttl * 10),
            "kiln-a took nothing over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    tokio::time::sleep(Duration::from_secs(ttl + 5).saturating_sub(killed.elapsed())).await;
    kill(c.pid(), Signal::SIGCONT).unwrap();
    api.wait(
        &a,
        "provisioned",
        2 * d as u64,
        Duration::from_secs(3600),
        Some((&pg, &db, &lost)),
    )
    .await;
    let faulted = t.elapsed();
    let states = api.states(&a).await;
    let per_host = commands_per_host(&pg, &db);
    println!(
        "3 replicas, faults: {d} deploys in {:.1} s ({:.1}/s) with kiln-b SIGKILLed and kiln-c SIGSTOPped {} s; \
         kiln-a took hosts over {:.1} s after the kill",
        faulted.as_secs_f64(),
        d as f64 / faulted.as_secs_f64(),
        ttl + 5,
        takeover.as_secs_f64()
    );
    let (of_b, others): (BTreeMap<String, u64>, BTreeMap<String, u64>) =
        per_host.clone().into_iter().partition(|(h, _)| lost.contains(h));
    let (hist_b, hist) = (histogram(of_b.values().copied()), histogram(others.values().copied()));
    println!("  hosts by state: {states:?}");
    println!("  agent commands per deployed host (commands: hosts): {hist:?}");
    println!(
        "  kiln-b's {} unfinished hosts at the kill (simulated hardware lost with it): {hist_b:?}",
        lost.len()
    );
    println!("  kiln-a RSS {:.0} MiB, kiln-c RSS {:.0} MiB", a.rss_mib(), c.rss_mib());
    assert_eq!(acked, 2 * d, "every provision request was acknowledged");
    assert_eq!(
        (states.get("provisioned").copied(), states.get("available").copied()),
        (Some(2 * d as u64), (n > 2 * d).then_some((n - 2 * d) as u64)),
        "every host converged and no acknowledged write was lost: {states:?}"
    );
    assert_eq!(
        hist.len(),
        1,
        "every deployed host outside kiln-b's share got the same agent commands; a host written twice would have \
         more: {hist:?}"
    );
    let once = hist.keys().next().copied().unwrap_or(0);
    assert!(
        of_b.values().all(|n| *n >= once),
        "kiln-b's hosts got at least one deploy's commands: {hist_b:?}"
    );
    assert_eq!(per_host.len(), 2 * d, "{hist:?} {hist_b:?}");
    assert!(!c.log().contains("panicked") && !a.log().contains("panicked"));
    c.serve.take();
    drop(a);

    // ---- one replica, same deploys, fresh database
    let db1 = pg.create_database("kiln_bench1").unwrap();
    let one = Replica::start(tmp.path(), "kiln-one", &db1, ttl, None);
    let api = Api::new(&one);
    enroll(&api, &[&one], n).await;
    api.wait(&one, "available", n as u64, Duration::from_secs(3600), None)
        .await;
    let pg_before = pg.cpu_secs();
    let cpu = cpu_at_rest(&[&one], 30).await;
    println!(
        "1 replica at rest: {:.1}% of one core, RSS {:.0} MiB; PostgreSQL {:.1}% of one core",
        cpu[0],
        one.rss_mib(),
        (pg.cpu_secs() - pg_before) / 30.0 * 100.0
    );
    let t = Instant::now();
    provision(&api, &[&one], 0..d).await;
    api.wait(&one, "provisioned", d as u64, Duration::from_secs(3600), None)
        .await;
    let deploy1 = t.elapsed();
    println!(
        "1 replica: {d} deploys in {:.1} s ({:.1}/s); deploys/s, 3 replicas / 1: {:.2}",
        deploy1.as_secs_f64(),
        d as f64 / deploy1.as_secs_f64(),
        deploy1.as_secs_f64() / deploy3.as_secs_f64()
    );
}
