//! Control-plane scale (DESIGN.md's targets: 10,000 hosts in one appliance under 1 GiB RSS, 1,000 concurrent deploys
//! with simulated agents, BMC calls per host per minute bounded). The appliance runs in this process on SQLite with
//! the in-process lab of the executor tests (a fake BMC per host, simulated firmware and agents speaking HTTP to the
//! agent API), so the RSS printed includes the simulation itself.
//!
//! `cargo bench -p kiln --bench scale` (KILN_SCALE_HOSTS, KILN_SCALE_DEPLOYS override 10,000 and 1,000). Prints, as
//! ratios against a reference measured in the same run: the time of D concurrent deploys against one deploy alone, and
//! the RSS and BMC call rate against their budgets.

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

fn main() {
    let hosts = env("KILN_SCALE_HOSTS", 10_000);
    let deploys = env("KILN_SCALE_DEPLOYS", 1_000).min(hosts.saturating_sub(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        lab::AGENT_POLL_MS.store(1000, Ordering::Relaxed); // real agents heartbeat every few seconds
        let lab = Lab::start(|c| {
            c.max_concurrent_jobs = 1_000;
            c.bmc_calls_per_minute = 6;
            c.heartbeat_secs = 1;
            c.policy = kiln_engine::machine::Policy::default(); // idle hosts looked at once a minute
        })
        .await;
        // The lab's HTTP client keeps one idle connection per request burst; allow the concurrency we use.
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
        let concurrent = wait_all(&lab, &batch, "provisioned", Duration::from_secs(1800)).await.max(t.elapsed());
        let rss_peak = rss_mib();
        let max_calls_one_host = lab.fakes.lock().unwrap().values().map(|f| f.calls().len()).max().unwrap_or(0);

        println!("kiln control-plane scale (SQLite, in-process simulated BMCs and agents)");
        println!("  hosts enrolled:                 {hosts} in {:.1} s ({:.0}/s through the REST API)", enroll.as_secs_f64(), hosts as f64 / enroll.as_secs_f64());
        println!("  all available after:            {:.1} s", available.as_secs_f64());
        println!("  RSS: start {rss0:.0} MiB, with {hosts} hosts {rss_hosts:.0} MiB, after {deploys} deploys {rss_peak:.0} MiB");
        println!("  RSS vs the 1 GiB budget:        {:.2}", rss_peak / 1024.0);
        println!("  at rest: {:.1}% of one core, {idle_calls_per_host_min:.2} BMC calls per host per minute (budget 6: ratio {:.2})", idle_cpu * 100.0, idle_calls_per_host_min / 6.0);
        println!("  most BMC calls on one host, whole run: {max_calls_one_host}");
        println!("  one deploy alone (reference):   {:.2} s", single.as_secs_f64());
        println!("  {deploys} deploys at once:          {:.2} s = {:.1} deploys/s; ratio to one deploy {:.2}", concurrent.as_secs_f64(), deploys as f64 / concurrent.as_secs_f64(), concurrent.as_secs_f64() / single.as_secs_f64());
    });
}
