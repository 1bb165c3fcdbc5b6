//! Control-plane scale (DESIGN.md's targets: 10,000 hosts in one appliance under 1 GiB RSS, 1,000 concurrent deploys
//! with simulated agents, BMC calls per host per minute bounded). The appliance runs in this process on SQLite with
//! the in-process lab of the executor tests (a fake BMC per host, simulated firmware and agents speaking HTTP to the
//! agent API), so the RSS printed includes the simulation itself.
//!
//! `cargo bench -p kiln --bench scale` (KILN_SCALE_HOSTS, KILN_SCALE_DEPLOYS, KILN_SCALE_RUNS override 10,000, 1,000
//! and 3). Each run starts a fresh appliance. Prints each run, then the median and spread (min–max) of every figure,
//! as ratios against a reference measured in the same run: the time of D concurrent deploys against one deploy
//! alone, and the RSS and BMC call rate against their budgets. The simulated agents long-poll as kiln-agent does.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures::StreamExt;
use kiln_tests::inproc::{self as lab, Lab, mac_of};
use serde_json::{Value, json};

fn env(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0)
        / 1024.0
}

/// User + system CPU seconds of this process.
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or_default().split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    (ticks(11) + ticks(12)) / 100.0
}

async fn states(lab: &Lab) -> Vec<Value> {
    let (code, body) = lab.api(reqwest::Method::GET, "/api/v1/hosts", None).await;
    assert_eq!(code, 200);
    body.as_array().cloned().unwrap_or_default()
}

async fn wait_all(lab: &Lab, names: &[String], state: &str, timeout: Duration) -> Duration {
    let start = Instant::now();
    loop {
        let all = states(lab).await;
        let n = all
            .iter()
            .filter(|h| h["state"] == state && names.iter().any(|n| h["name"] == n.as_str()))
            .count();
        if let Some(e) = all.iter().find(|h| h["state"] == "error") {
            panic!("a host failed: {e}");
        }
        if n == names.len() {
            return start.elapsed();
        }
        assert!(
            start.elapsed() < timeout,
            "{n} of {} hosts {state} after {timeout:?}",
            names.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

async fn provision(lab: &Lab, names: &[String]) {
    futures::stream::iter(names)
        .for_each_concurrent(32, |n| async move {
            let (code, body) = lab
                .api(
                    reqwest::Method::POST,
                    &format!("/api/v1/hosts/{n}/provision"),
                    Some(json!({"image": {"url": "http://192.0.2.2/os.qcow2", "checksum": format!("sha256:{}", "ab".repeat(32))}})),
                )
                .await;
            assert_eq!(code, 202, "{body}");
        })
        .await;
}

/// What one run measures.
struct Figures {
    enroll_rate: f64,
    enroll: Duration,
    available: Duration,
    rss0: f64,
    rss_hosts: f64,
    rss_peak: f64,
    idle_cpu: f64,
    idle_calls_per_host_min: f64,
    max_calls_one_host: usize,
    single: Duration,
    concurrent: Duration,
}

async fn run_once(hosts: usize, deploys: usize) -> Figures {
    let lab = Lab::start(|c| {
        c.max_concurrent_jobs = 1_000;
        c.bmc_calls_per_minute = 6;
        c.heartbeat_secs = 1;
        c.policy = kiln_engine::machine::Policy::default(); // idle hosts looked at once a minute
    })
    .await;
    // Like kiln-agent: an idle heartbeat offers to wait the interval for its next command.
    lab.agent_wait_secs.store(1, Ordering::Relaxed);
    let rss0 = rss_mib();

    // 1. Enroll N hosts (no inspection: registering -> available).
    let names: Vec<String> = (0..hosts).map(|i| format!("sim-{i}")).collect();
    let t = Instant::now();
    futures::stream::iter(&names)
        .for_each_concurrent(32, |n| {
            let lab = &lab;
            async move {
                lab.add_fake(n);
                let (code, body) = lab
                    .api(
                        reqwest::Method::POST,
                        "/api/v1/hosts",
                        Some(json!({
                            "name": n,
                            "bmc": {"address": format!("redfish+http://127.0.0.1:9/redfish/v1/Systems/{n}"), "username": "admin", "password": lab::PASSWORD},
                            "boot_mac": mac_of(n),
                            "options": {"inspect": false},
                        })),
                    )
                    .await;
                assert_eq!(code, 201, "{body}");
            }
        })
        .await;
    let enroll = t.elapsed();
    let available = wait_all(&lab, &names, "available", Duration::from_secs(1800)).await + enroll;
    let rss_hosts = rss_mib();

    // 2. At rest: CPU and BMC calls per host per minute over a window.
    let calls = |lab: &Lab| -> usize { lab.fakes.lock().unwrap().values().map(|f| f.calls().len()).sum() };
    let (c0, cpu0, w) = (calls(&lab), cpu_secs(), Instant::now());
    tokio::time::sleep(Duration::from_secs(60)).await;
    let window = w.elapsed().as_secs_f64();
    let idle_calls_per_host_min = (calls(&lab) - c0) as f64 / hosts as f64 * 60.0 / window;
    let idle_cpu = (cpu_secs() - cpu0) / window;

    // 3. The reference: one deploy alone. Then D deploys at once.
    let one = vec![names[hosts - 1].clone()];
    provision(&lab, &one).await;
    let single = wait_all(&lab, &one, "provisioned", Duration::from_secs(300)).await;
    let batch: Vec<String> = names[..deploys].to_vec();
    let t = Instant::now();
    provision(&lab, &batch).await;
    let concurrent = wait_all(&lab, &batch, "provisioned", Duration::from_secs(1800))
        .await
        .max(t.elapsed());
    let rss_peak = rss_mib();
    let max_calls_one_host = lab
        .fakes
        .lock()
        .unwrap()
        .values()
        .map(|f| f.calls().len())
        .max()
        .unwrap_or(0);
    Figures {
        enroll_rate: hosts as f64 / enroll.as_secs_f64(),
        enroll,
        available,
        rss0,
        rss_hosts,
        rss_peak,
        idle_cpu,
        idle_calls_per_host_min,
        max_calls_one_host,
        single,
        concurrent,
    }
}

/// The median of `values` and their spread, as `median [min–max]`.
fn spread(mut values: Vec<f64>, digits: usize) -> String {
    values.sort_by(f64::total_cmp);
    let (lo, hi) = (values[0], values[values.len() - 1]);
    let mid = values[values.len() / 2];
    format!("{mid:.digits$} [{lo:.digits$}–{hi:.digits$}]")
}

impl Figures {
    fn to_line(&self) -> String {
        [
            self.enroll_rate,
            self.enroll.as_secs_f64(),
            self.available.as_secs_f64(),
            self.rss0,
            self.rss_hosts,
            self.rss_peak,
            self.idle_cpu,
            self.idle_calls_per_host_min,
            self.max_calls_one_host as f64,
            self.single.as_secs_f64(),
            self.concurrent.as_secs_f64(),
        ]
        .map(|v| v.to_string())
        .join(" ")
    }

    fn from_line(line: &str) -> Figures {
        let v: Vec<f64> = line.split(' ').map(|x| x.parse().unwrap()).collect();
        let secs = Duration::from_secs_f64;
        Figures {
            enroll_rate: v[0],
            enroll: secs(v[1]),
            available: secs(v[2]),
            rss0: v[3],
            rss_hosts: v[4],
            rss_peak: v[5],
            idle_cpu: v[6],
            idle_calls_per_host_min: v[7],
            max_calls_one_host: v[8] as usize,
            single: secs(v[9]),
            concurrent: secs(v[10]),
        }
    }
}

/// Marks the line a run's process prints its figures on.
const FIGURES: &str = "KILN-SCALE-FIGURES ";

fn main() {
    let hosts = env("KILN_SCALE_HOSTS", 10_000);
    let deploys = env("KILN_SCALE_DEPLOYS", 1_000).min(hosts.saturating_sub(1));
    if std::env::var_os("KILN_SCALE_ONE_RUN").is_some() {
        // One run in a process of its own, so that its RSS is its own.
        let rt = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .unwrap();
        let f = rt.block_on(run_once(hosts, deploys));
        println!("{FIGURES}{}", f.to_line());
        return;
    }
    let runs = env("KILN_SCALE_RUNS", 3).max(1);
    let mut all = Vec::new();
    for run in 1..=runs {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .env("KILN_SCALE_ONE_RUN", "1")
            .stderr(std::process::Stdio::inherit())
            .output()
            .unwrap();
        assert!(out.status.success(), "run {run} failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let f = Figures::from_line(
            stdout
                .lines()
                .find_map(|l| l.strip_prefix(FIGURES))
                .expect("the run printed its figures"),
        );
        eprintln!(
            "run {run}/{runs}: enroll {:.1} s, available {:.1} s, one deploy {:.2} s, {deploys} deploys {:.2} s, at rest {:.1}% CPU, RSS peak {:.0} MiB",
            f.enroll.as_secs_f64(),
            f.available.as_secs_f64(),
            f.single.as_secs_f64(),
            f.concurrent.as_secs_f64(),
            f.idle_cpu * 100.0,
            f.rss_peak
        );
        all.push(f);
    }
    let of = |g: &dyn Fn(&Figures) -> f64, digits: usize| spread(all.iter().map(g).collect(), digits);
    println!(
        "kiln control-plane scale (SQLite, in-process simulated BMCs and agents), median [min–max] of {runs} runs"
    );
    println!(
        "  hosts enrolled:                 {hosts} in {} s ({} /s through the REST API)",
        of(&|f| f.enroll.as_secs_f64(), 1),
        of(&|f| f.enroll_rate, 0)
    );
    println!(
        "  all available after:            {} s",
        of(&|f| f.available.as_secs_f64(), 1)
    );
    println!(
        "  RSS: start {} MiB, with {hosts} hosts {} MiB, after {deploys} deploys {} MiB",
        of(&|f| f.rss0, 0),
        of(&|f| f.rss_hosts, 0),
        of(&|f| f.rss_peak, 0)
    );
    println!("  RSS vs the 1 GiB budget:        {}", of(&|f| f.rss_peak / 1024.0, 2));
    println!(
        "  at rest: {}% of one core, {} BMC calls per host per minute (budget 6)",
        of(&|f| f.idle_cpu * 100.0, 1),
        of(&|f| f.idle_calls_per_host_min, 2)
    );
    println!(
        "  most BMC calls on one host, whole run: {}",
        of(&|f| f.max_calls_one_host as f64, 0)
    );
    println!(
        "  one deploy alone (reference):   {} s",
        of(&|f| f.single.as_secs_f64(), 2)
    );
    println!(
        "  {deploys} deploys at once:          {} s = {} deploys/s; ratio to one deploy {}",
        of(&|f| f.concurrent.as_secs_f64(), 2),
        of(&|f| deploys as f64 / f.concurrent.as_secs_f64(), 1),
        of(&|f| f.concurrent.as_secs_f64() / f.single.as_secs_f64(), 2)
    );
}
