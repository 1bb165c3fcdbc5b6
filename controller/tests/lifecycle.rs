//! The appliance end to end in one process: `kiln serve`'s `run` on 127.0.0.1:0, hosts driven through their whole
//! lifecycle with an in-test fake BMC (implementing `kiln_bmc::Bmc`) and simulated agents that speak HTTP to the
//! agent API with the tokens the netboot lookup mints. Also: the appliance killed mid-provisioning and restarted
//! on the same data directory converges without writing the host twice.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_bmc::fake::FakeCall;
use kiln_bmc::{BootPersistence, BootTarget};
use kiln_tests::inproc::{Lab, PASSWORD, mac_of};
use serde_json::{Value, json};

// ---------------------------------------------------------------- tests

/// Captures all logs (debug level) to check for leaked secrets.
#[derive(Clone, Default)]
struct LogBuf(Arc<Mutex<Vec<u8>>>);
impl std::io::Write for LogBuf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn hosts_go_from_enroll_to_provisioned_and_back_with_a_concurrency_limit() {
    let logs = LogBuf::default();
    let l2 = logs.clone();
    // Global, not set_default: a thread-local subscriber races with the other tests of this binary over tracing's
    // global callsite interest cache, and then misses log lines. The other tests' lines only add to what is checked.
    tracing::subscriber::set_global_default(
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_writer(move || l2.clone())
            .finish(),
    )
    .expect("only this test installs a subscriber");
    let mut lab = Lab::start(|c| c.max_concurrent_jobs = 1).await;
    lab.enroll("node-1").await;
    lab.enroll("node-2").await;
    let h1 = lab.wait_state("node-1", "available").await;
    let h2 = lab.wait_state("node-2", "available").await;
    assert_eq!(
        (h1["power"].as_str(), h2["power"].as_str()),
        (Some("off"), Some("off")),
        "inspection powers hosts off"
    );
    // With one slot, the second host's inspection waited as `delayed`.
    let (_, ev) = lab.api(reqwest::Method::GET, "/api/v1/events?limit=1000", None).await;
    let delayed = ev
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["message"].as_str().unwrap().contains("delayed"))
        .count();
    assert!(delayed >= 1, "no host was delayed: {ev}");
    let (_, insp) = lab
        .api(reqwest::Method::GET, "/api/v1/hosts/node-1/inspection", None)
        .await;
    assert_eq!(insp["inventory"]["memory_mib"], 2048);

    // Provision node-1; kill the appliance in the middle of the image write and restart it on the same data dir.
    let inspect_token = lab.tokens.lock().unwrap()["node-1"][0].clone();
    let body = json!({ "image": { "url": "http://10.0.0.1/os.raw", "checksum": format!("sha256:{}", "ab".repeat(32)) }, "user_data": "#cloud-config\n" });
    let (s, b) = lab
        .api(reqwest::Method::POST, "/api/v1/hosts/node-1/provision", Some(body))
        .await;
    assert_eq!(s, 202, "{b}");
    let mut writing = false;
    for _ in 0..400 {
        let (_, h) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-1", None).await;
        if h["progress"]["bytes_written"].as_u64().unwrap_or(0) > 0 {
            assert_eq!(h["state"], "provisioning");
            writing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(writing, "never saw the image write in progress");
    lab.kill().await;
    lab.serve().await;
    let h = lab.wait_state("node-1", "provisioned").await;
    assert_eq!(h["counters"]["deploys"], 1);
    let writes = lab.commands.lock().unwrap()["node-1"]
        .iter()
        .filter(|c| *c == "write_image")
        .count();
    assert_eq!(writes, 1, "the image was written exactly once across the restart");
    let calls = lab.fakes.lock().unwrap()["node-1"].calls();
    assert!(
        calls.iter().any(|c| matches!(
            c,
            FakeCall::SetBoot(BootTarget::Disk { .. }, BootPersistence::Persistent)
        )),
        "{calls:?}"
    );
    assert!(
        lab.os_boots.lock().unwrap().get("node-1").copied().unwrap_or(0) >= 1,
        "the written OS never booted"
    );

    // Per-phase timing: states and sub-phases with durations.
    // (The state is saved just before its timing rows are written, so allow the rows a moment.)
    let mut t = Value::Null;
    for _ in 0..40 {
        t = lab
            .api(reqwest::Method::GET, "/api/v1/hosts/node-1/timings", None)
            .await
            .1;
        if t.as_array().unwrap().iter().any(|r| r["phase"] == "provisioned") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let phases: Vec<&str> = t
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["phase"].as_str().unwrap())
        .collect();
    for p in [
        "registering",
        "inspecting",
        "inspecting.booting",
        "inspecting.running",
        "available",
        "provisioning",
        "provisioning.booting",
        "provisioning.running",
        "provisioned",
    ] {
        assert!(phases.contains(&p), "missing {p} in {phases:?}");
    }
    assert!(
        t.as_array()
            .unwrap()
            .iter()
            .any(|r| r["phase"] == "provisioning" && r["duration_ms"].as_i64().is_some())
    );

    // Tokens: an old boot's token and an agent token on the admin API are refused.
    let (s, _) = lab
        .req(
            reqwest::Method::POST,
            "/agent/v1/heartbeat",
            Some(&inspect_token),
            Some(json!({ "agent_version": "x" })),
        )
        .await;
    assert_eq!(s, 401, "old boot's token accepted");
    let (s, _) = lab
        .req(reqwest::Method::GET, "/api/v1/hosts", Some(&inspect_token), None)
        .await;
    assert_eq!(s, 401, "agent token accepted on the admin API");

    // Deprovision: erased by the agent, powered off, available again.
    let (s, _) = lab
        .api(
            reqwest::Method::POST,
            "/api/v1/hosts/node-1/deprovision",
            Some(json!({})),
        )
        .await;
    assert_eq!(s, 202);
    let h = lab.wait_state("node-1", "available").await;
    assert_eq!(h["power"], "off");
    assert_eq!(
        lab.commands.lock().unwrap()["node-1"].last().map(String::as_str),
        Some("erase_metadata")
    );

    // Delete: gone.
    let (s, _) = lab.api(reqwest::Method::DELETE, "/api/v1/hosts/node-2", None).await;
    assert_eq!(s, 202);
    for _ in 0..200 {
        if lab.api(reqwest::Method::GET, "/api/v1/hosts/node-2", None).await.0 == 404 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(lab.api(reqwest::Method::GET, "/api/v1/hosts/node-2", None).await.0, 404);

    // Metrics.
    let m = lab
        .client
        .get(format!("{}/metrics", lab.base))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("kiln_hosts{state=\"available\",operational_status=\"ok\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("kiln_bmc_calls_total{op=\"set_power\",outcome=\"ok\"}"),
        "{m}"
    );
    assert!(
        m.contains("kiln_phase_duration_seconds_bucket{state=\"provisioning\""),
        "{m}"
    );
    assert!(m.contains("kiln_pxe_events_total{event=\"dhcp_offers\"} 0"), "{m}");

    // No BMC password or agent token in any API response or log line.
    let tokens: Vec<String> = lab.tokens.lock().unwrap().values().flatten().cloned().collect();
    let bodies = lab.bodies.lock().unwrap().join("\n");
    let log = String::from_utf8_lossy(&logs.0.lock().unwrap()).to_string();
    assert!(log.contains("state change"), "logs were not captured");
    for secret in tokens.iter().map(String::as_str).chain([PASSWORD]) {
        assert!(!bodies.contains(secret), "secret in an API response");
        assert!(!log.contains(secret), "secret in the logs");
    }
    lab.kill().await;
}

#[tokio::test]
async fn bad_input_and_bad_tokens_are_refused_with_the_field_named() {
    let lab = Lab::start(|_| {}).await;
    let post = |body: Value| lab.api(reqwest::Method::POST, "/api/v1/hosts", Some(body));
    let good = json!({ "name": "node-7", "bmc": { "address": "ipmi://127.0.0.1:623", "username": "u", "password": "pw-Secret-77" }, "boot_mac": "52:54:00:00:00:07" });
    let cases = [
        (json!({ "name": "node-7", "colour": "blue" }), 422, "colour"),
        (
            json!({ "name": "node-7", "boot_mac": "52:54:00:zz:00:07" }),
            422,
            "boot_mac",
        ),
        (
            json!({ "name": "node-7", "bmc": { "address": "http://10.0.0.1", "username": "u", "password": "p" } }),
            422,
            "bmc.address",
        ),
        (json!({ "name": "Node 7" }), 422, "name"),
        (json!({ "name": "node-7", "boot_mode": "efi" }), 422, "boot_mode"),
        (json!({ "boot_mac": "52:54:00:00:00:07" }), 422, "name"),
    ];
    for (body, status, field) in cases {
        let (s, b) = post(body.clone()).await;
        assert_eq!((s, b["field"].as_str()), (status, Some(field)), "{body} -> {b}");
        assert!(b["error"].as_str().is_some_and(|e| !e.is_empty()));
    }
    let r = lab
        .client
        .post(format!("{}/api/v1/hosts", lab.base))
        .bearer_auth(&lab.admin)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(post(good.clone()).await.0, 201);
    let (s, b) = post(good).await;
    assert_eq!((s, b["field"].as_str()), (409, Some("name")));

    let prov = |body: Value| lab.api(reqwest::Method::POST, "/api/v1/hosts/node-7/provision", Some(body));
    let (s, b) = prov(json!({ "image": { "url": "http://x/os.raw" } })).await;
    assert_eq!((s, b["field"].as_str()), (422, Some("image.checksum")), "{b}");
    let (s, b) = prov(json!({ "image": { "url": "http://x/os.raw", "checksum": "sha256:abc" } })).await;
    assert_eq!((s, b["field"].as_str()), (422, Some("image.checksum")), "{b}");
    let (s, b) = prov(json!({ "image": { "url": "ftp://x/os.raw", "checksum": "http://x/SHA256SUMS" } })).await;
    assert_eq!((s, b["field"].as_str()), (422, Some("image.url")), "{b}");
    let (s, b) = lab
        .api(
            reqwest::Method::POST,
            "/api/v1/hosts/node-7/power",
            Some(json!({ "action": "explode" })),
        )
        .await;
    assert_eq!((s, b["field"].as_str()), (422, Some("action")), "{b}");
    assert_eq!(lab.api(reqwest::Method::GET, "/api/v1/hosts/nope", None).await.0, 404);

    // Auth: no token, wrong token, a made-up agent token.
    assert_eq!(lab.req(reqwest::Method::GET, "/api/v1/hosts", None, None).await.0, 401);
    assert_eq!(
        lab.req(reqwest::Method::GET, "/api/v1/hosts", Some("wrong"), None)
            .await
            .0,
        401
    );
    assert_eq!(
        lab.req(
            reqwest::Method::POST,
            "/agent/v1/heartbeat",
            Some("wrong"),
            Some(json!({ "agent_version": "x" }))
        )
        .await
        .0,
        401
    );
    assert_eq!(
        lab.req(
            reqwest::Method::POST,
            "/agent/v1/heartbeat",
            None,
            Some(json!({ "agent_version": "x" }))
        )
        .await
        .0,
        401
    );

    // A token minted for one host's boot is useless once that boot is over; another host's token reaches only
    // that host (the token alone names the host).
    let lookup = lab.lookup.lock().unwrap().clone().unwrap();
    assert!(
        lookup
            .boot_instructions(
                &"52:54:00:00:00:99".parse().unwrap(),
                kiln_engine::executor::now(),
                kiln_engine::netboot::Handout::Take
            )
            .await
            .unwrap()
            .is_none(),
        "unknown MAC must be ignored"
    );

    let (s, spec) = lab.req(reqwest::Method::GET, "/api/v1/openapi.json", None, None).await;
    assert_eq!(s, 200);
    assert!(spec["paths"]["/api/v1/hosts"].is_object(), "{spec}");
    let (s, h) = lab.req(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!((s, h["status"].as_str()), (200, Some("ok")));
    let (_, host) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-7", None).await;
    assert!(host["bmc"].get("password").is_none());
    assert!(
        !lab.bodies.lock().unwrap().join("").contains("pw-Secret-77"),
        "password echoed"
    );
}

#[tokio::test]
async fn bmc_trouble_is_retried_within_a_per_host_call_budget_and_boot_timeouts_are_actionable() {
    let lab = Lab::start(|c| {
        c.bmc_calls_per_minute = 3;
        c.policy.boot_timeout_secs = 2;
    })
    .await;
    // Two transient BMC failures during registration, then success: retried with backoff, no error state.
    let f = lab.add_fake("node-3");
    f.fail_next(2);
    lab.enroll_fake("node-3", json!({ "inspect": false })).await;
    lab.wait_state("node-3", "available").await;
    // Idle power sync keeps polling every second, but never beyond 3 BMC calls per host per minute.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = f.calls();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let (_, ev) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-3/events", None).await;
    assert!(
        ev.as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("registering -> available")),
        "{ev}"
    );
    // A request over the budget waits, and the host's events say why.
    let (s, b) = lab
        .api(
            reqwest::Method::POST,
            "/api/v1/hosts/node-3/power",
            Some(json!({ "action": "on" })),
        )
        .await;
    assert_eq!(s, 202, "{b}");
    let mut said = false;
    for _ in 0..100 {
        let (_, ev) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-3/events", None).await;
        if ev
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["kind"] == "bmc_budget" && e["message"].as_str().unwrap().contains("3 calls a minute"))
        {
            said = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(said, "no event says the power request waits for the BMC budget");
    assert_eq!(f.calls().len(), 3, "the budget still holds");

    // A host that never network-boots fails inspection with a message naming what to check, then retries.
    let lab = Lab::start(|c| c.policy.boot_timeout_secs = 2).await;
    lab.add_fake("node-4");
    lab.dead_nics.lock().unwrap().insert("node-4".into());
    lab.enroll_fake("node-4", json!({})).await;
    let mut err = Value::Null;
    for _ in 0..200 {
        let (_, h) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-4", None).await;
        if h["state"] == "error" {
            err = h;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(err["error"]["type"], "inspection error", "{err}");
    assert_eq!(err["error"]["kind"], "boot_timeout");
    assert!(
        err["error"]["message"].as_str().unwrap().contains(&mac_of("node-4")),
        "{err}"
    );
    assert!(err["error"]["retry_at"].is_string());
    for _ in 0..200 {
        let (_, h) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-4", None).await;
        if h["counters"]["boots"].as_u64() >= Some(2) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the failed inspection was never retried");
}

static PG_URL: std::sync::OnceLock<String> = std::sync::OnceLock::new();

#[tokio::test]
async fn the_whole_lifecycle_runs_on_postgresql_too() {
    let pg = kiln_tests::pg::PgCluster::start().expect("private PostgreSQL 15 cluster (run tests/setup.sh)");
    PG_URL.set(pg.create_database("kiln_lab").unwrap()).unwrap();
    let lab = Lab::start(|c| c.database_url = PG_URL.get().cloned()).await;
    let (_, h) = lab.req(reqwest::Method::GET, "/healthz", None, None).await;
    assert_eq!(h["store"], "postgres");
    lab.enroll("node-5").await;
    lab.wait_state("node-5", "available").await;
    let body =
        json!({ "image": { "url": "http://10.0.0.1/os.qcow2", "checksum": "ab".repeat(64), "format": "qcow2" } });
    let (s, b) = lab
        .api(reqwest::Method::POST, "/api/v1/hosts/node-5/provision", Some(body))
        .await;
    assert_eq!(s, 202, "{b}");
    lab.wait_state("node-5", "provisioned").await;
    let (s, _) = lab
        .api(
            reqwest::Method::POST,
            "/api/v1/hosts/node-5/deprovision",
            Some(json!({ "erase": "full" })),
        )
        .await;
    assert_eq!(s, 202);
    lab.wait_state("node-5", "available").await;
    let cmds = lab.commands.lock().unwrap()["node-5"].clone();
    assert_eq!(cmds, ["inspect", "write_image", "erase_disks"]);
    drop(lab);
    drop(pg);
}

/// A BMC that takes 30 s per call delays only its own host: the executor reconciles hosts as separate tasks, so
/// another host registers, is inspected and becomes available meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_bmc_delays_only_its_own_host() {
    let lab = Lab::start(|_| {}).await;
    let slow = lab.add_fake("node-5");
    slow.set_latency(Duration::from_secs(30));
    lab.enroll_fake("node-5", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let t = std::time::Instant::now();
    lab.enroll("node-6").await;
    lab.wait_state("node-6", "available").await;
    assert!(
        t.elapsed() < std::time::Duration::from_secs(25),
        "node-6 waited for node-5's BMC: {:?}",
        t.elapsed()
    );
    let (_, h5) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-5", None).await;
    assert_eq!(h5["state"], "registering", "node-5 is still waiting for its BMC: {h5}");
}

/// A job slot is taken only by a host starting a job: with one slot, a host whose registration hangs on a slow BMC
/// holds none, so another host is inspected at once and never shown `delayed` behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_registering_host_holds_no_job_slot() {
    let lab = Lab::start(|c| c.max_concurrent_jobs = 1).await;
    let slow = lab.add_fake("node-5");
    slow.set_latency(Duration::from_secs(30));
    lab.enroll_fake("node-5", json!({})).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    lab.enroll("node-6").await;
    let (_, h6) = lab
        .wait_host("node-6", |h| {
            h["state"] == "available" || h["operational_status"] == "delayed"
        })
        .await;
    assert_eq!(
        h6["state"], "available",
        "node-6 waited for a slot node-5 holds while registering: {h6}"
    );
    let (_, h5) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-5", None).await;
    assert_eq!(h5["state"], "registering", "{h5}");
}

/// While kiln retries a failed BMC action, the host says so (before retries run out and it enters `error`), and
/// stops saying so once the BMC answers again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_action_being_retried_is_visible_on_the_host() {
    let lab = Lab::start(|c| c.policy.backoff_base_secs = 2).await;
    let f = lab.add_fake("node-8");
    lab.enroll_fake("node-8", json!({ "inspect": false })).await;
    lab.wait_state("node-8", "available").await;
    f.fail_next(2);
    let (code, body) = lab
        .api(
            reqwest::Method::POST,
            "/api/v1/hosts/node-8/power",
            Some(json!({ "action": "on" })),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let mut trouble = Value::Null;
    let mut last = Value::Null;
    for _ in 0..400 {
        let (_, h) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-8", None).await;
        if trouble.is_null() && !h["bmc_trouble"].is_null() {
            trouble = h["bmc_trouble"].clone();
        }
        if h["power"] == "on" {
            last = h;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["power"], "on", "the power request never went through");
    let (_, ev) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-8/events", None).await;
    assert!(
        trouble["message"].as_str().is_some_and(|m| m.contains("retrying")),
        "no BMC trouble shown while retrying: {trouble}; events {ev}"
    );
    assert!(last["bmc_trouble"].is_null(), "still shown after recovery: {last}");
    assert!(!trouble.to_string().contains(PASSWORD));
}

/// A host enrolled without a boot MAC (valid in Metal3): kiln reads its NICs from the BMC, netboots it by the MAC the
/// BMC reported, and inspects it; the learned MAC is in its events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_without_a_boot_mac_is_netbooted_by_the_macs_its_bmc_reports() {
    let lab = Lab::start(|_| {}).await;
    lab.enroll_without_boot_mac("node-m", "redfish+http://127.0.0.1:9/redfish/v1/Systems/node-m")
        .await;
    let h = lab.wait_state("node-m", "available").await;
    assert!(h["boot_mac"].is_null(), "{h}");
    assert_eq!(h["learned_macs"], json!([mac_of("node-m")]), "{h}");
    let events = events_of(&lab, "node-m").await;
    let mac = mac_of("node-m");
    assert!(
        events.iter().any(|e| e.starts_with("learned_macs") && e.contains(&mac)),
        "{events:?}"
    );
    let (_, inv) = lab
        .api(reqwest::Method::GET, "/api/v1/hosts/node-m/inspection", None)
        .await;
    assert_eq!(inv["inventory"]["nics"][0]["mac"], mac.as_str(), "{inv}");
}

/// An IPMI host enrolled without a boot MAC (Metal3's own smallest example): its BMC cannot report NICs, so kiln
/// boots it all the same and answers the netboot of a MAC it does not know with a discovery boot; the agent reports
/// its BMC's address (read in-band on real hardware) and kiln binds the boot to the one waiting host with that BMC,
/// learns the MAC and hands over the boot's token, once. Then it is inspected like any host. An address no waiting
/// host has is refused, and two waiting hosts behind one BMC address are never guessed between.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ipmi_host_without_a_boot_mac_is_bound_by_the_bmc_address_its_agent_reports() {
    let lab = Lab::start(|_| {}).await;
    lab.enroll_without_boot_mac("node-i", "ipmi://192.0.2.77:6230").await;
    let h = lab.wait_state("node-i", "available").await;
    assert!(h["boot_mac"].is_null(), "{h}");
    let mac = mac_of("node-i");
    assert_eq!(h["learned_macs"], json!([mac]), "{h}");
    let events = events_of(&lab, "node-i").await;
    for want in ["discovery_boot_offered", "discovered"] {
        assert!(events.iter().any(|e| e.starts_with(want)), "no {want}: {events:?}");
    }
    assert!(
        events
            .iter()
            .any(|e| e.starts_with("discovered") && e.contains("192.0.2.77") && e.contains(&mac)),
        "{events:?}"
    );
    let (_, inv) = lab
        .api(reqwest::Method::GET, "/api/v1/hosts/node-i/inspection", None)
        .await;
    assert_eq!(inv["inventory"]["nics"][0]["mac"], mac.as_str(), "{inv}");

    // No host waits any more: a discovery request, token or not, gets nothing.
    let discover = |addresses: Value| {
        let lab = &lab;
        async move {
            lab.req(
                reqwest::Method::POST,
                "/agent/v1/discover",
                None,
                Some(json!({
                    "boot_mac": "52:54:00:de:ad:01",
                    "macs": ["52:54:00:de:ad:01"],
                    "bmc_addresses": addresses,
                    "agent_version": "test",
                })),
            )
            .await
        }
    };
    let (s, b) = discover(json!(["192.0.2.77"])).await;
    assert_eq!(s, 404, "{b}");
    let (s, b) = discover(json!([])).await;
    assert_eq!((s, b["field"].as_str()), (404, Some("bmc_addresses")), "{b}");
    let (s, b) = discover(json!(["not an address"])).await;
    assert_eq!(s, 422, "{b}");

    // Two hosts waiting behind the same BMC address (two ports of one IP): neither is bound, both are told why. Their
    // boots are held until both are enrolled and booting: otherwise, on a loaded machine, the first host's agent can
    // report before the second host is enrolled, and is then rightly bound to the only host waiting.
    lab.boots_held.store(true, std::sync::atomic::Ordering::Relaxed);
    lab.enroll_without_boot_mac("node-j", "ipmi://192.0.2.90:6230").await;
    lab.enroll_without_boot_mac("node-k", "ipmi://192.0.2.90:6231").await;
    for n in ["node-j", "node-k"] {
        let (booting, h) = lab.wait_host(n, |h| h["state"].as_str() == Some("inspecting")).await;
        assert!(booting, "{n} is not waiting for its boot: {h}");
    }
    lab.boots_held.store(false, std::sync::atomic::Ordering::Relaxed);
    // The simulated agents retry their discovery with backoff: on a loaded machine the second host's boot can take
    // a while, so wait up to a minute.
    let mut both = false;
    for _ in 0..600 {
        let (j, k) = (events_of(&lab, "node-j").await, events_of(&lab, "node-k").await);
        if [j, k].iter().all(|ev| {
            ev.iter()
                .any(|e| e.starts_with("discovery_ambiguous") && e.contains("node-j, node-k"))
        }) {
            both = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        both,
        "{:?} {:?}",
        events_of(&lab, "node-j").await,
        events_of(&lab, "node-k").await
    );
    for n in ["node-j", "node-k"] {
        let (_, h) = lab.api(reqwest::Method::GET, &format!("/api/v1/hosts/{n}"), None).await;
        assert_eq!(
            (h["state"].as_str(), h["learned_macs"].is_null()),
            (Some("inspecting"), true),
            "{h}"
        );
    }
}

async fn events_of(lab: &Lab, host: &str) -> Vec<String> {
    let (_, ev) = lab
        .api(reqwest::Method::GET, &format!("/api/v1/hosts/{host}/events"), None)
        .await;
    ev.as_array()
        .into_iter()
        .flatten()
        .map(|e| {
            format!(
                "{} {}",
                e["kind"].as_str().unwrap_or(""),
                e["message"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// kiln is killed between a failed BMC action and its retry: after the restart the retry is counted as the second
/// attempt (the count is stored with the host), not as a fresh first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bmc_retry_count_survives_a_restart() {
    let mut lab = Lab::start(|c| c.policy.backoff_base_secs = 3).await;
    let f = lab.add_fake("node-r");
    lab.enroll_fake("node-r", json!({ "inspect": false })).await;
    lab.wait_state("node-r", "available").await;
    f.fail_actions(2);
    let (code, body) = lab
        .api(
            reqwest::Method::POST,
            "/api/v1/hosts/node-r/power",
            Some(json!({ "action": "on" })),
        )
        .await;
    assert_eq!(code, 202, "{body}");
    let mut seen = false;
    for _ in 0..200 {
        if events_of(&lab, "node-r")
            .await
            .iter()
            .any(|e| e.contains("attempt 1 of"))
        {
            seen = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        seen,
        "the first attempt never failed: {:?}",
        events_of(&lab, "node-r").await
    );
    lab.kill().await;
    lab.serve().await;
    let (on, _) = lab
        .wait_host("node-r", |h| h["power"] == "on" && h["counters"]["bmc_attempts"] == 0)
        .await;
    let events = events_of(&lab, "node-r").await;
    assert!(on, "the power request never went through: {events:?}");
    let attempts: Vec<&String> = events.iter().filter(|e| e.contains("attempt ")).collect();
    assert_eq!(
        attempts.iter().filter(|e| e.contains("attempt 1 of")).count(),
        1,
        "the count started over after the restart: {attempts:?}"
    );
    assert!(
        attempts.iter().any(|e| e.contains("attempt 2 of")),
        "no second attempt: {attempts:?}"
    );
    assert!(events.iter().any(|e| e.starts_with("bmc_recovered")), "{events:?}");
}

/// A panic inside one host's reconcile (a driver bug) is recorded on that host and retried after a backoff; the
/// host recovers once the bug stops firing, and the other host is not held up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_reconcile_is_contained_to_its_host() {
    let lab = Lab::start(|_| {}).await;
    let bad = lab.add_fake("node-p");
    bad.panic_next(2);
    lab.enroll_fake("node-p", json!({ "inspect": false })).await;
    lab.enroll_with("node-q", json!({ "inspect": false })).await;
    lab.wait_state("node-q", "available").await;
    lab.wait_state("node-p", "available").await;
    let events = events_of(&lab, "node-p").await;
    let panics = events.iter().filter(|e| e.starts_with("reconcile_panic")).count();
    assert_eq!(panics, 2, "{events:?}");
    assert!(events.iter().any(|e| e.contains("fake BMC driver bug")), "{events:?}");
    assert!(
        !events_of(&lab, "node-q")
            .await
            .iter()
            .any(|e| e.starts_with("reconcile_panic"))
    );
    // A further power request on the recovered host goes through (its slot and in-flight marks were released).
    let (code, _) = lab
        .api(
            reqwest::Method::POST,
            "/api/v1/hosts/node-p/power",
            Some(json!({ "action": "on" })),
        )
        .await;
    assert_eq!(code, 202);
    let (on, h) = lab.wait_host("node-p", |h| h["power"] == "on").await;
    assert!(on, "{h}");
}

/// The executor mints a boot's token and powers the host on before it commits the boot; an agent that is faster
/// than that commit (virtual media read at LAN speed) is told to retry, not refused, while an older boot's token
/// stays refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_ahead_of_its_boots_commit_is_told_to_retry() {
    let lab = Lab::start(|_| {}).await;
    lab.enroll("node-3").await;
    lab.wait_state("node-3", "available").await;
    let key = kiln_engine::crypto::SecretKey::load_or_create(lab.dir.path()).unwrap();
    let store = kiln_engine::store::connect(None, lab.dir.path(), key).await.unwrap();
    let host = store.host(&"node-3".parse().unwrap()).await.unwrap().unwrap();
    let now = kiln_engine::executor::now();
    let heartbeat = |token: &'static str| {
        lab.client
            .post(format!("{}/agent/v1/heartbeat", lab.base))
            .bearer_auth(token)
            .json(&json!({ "agent_version": "x" }))
            .send()
    };
    let next = host.counters.boots + 1;
    store
        .add_token(
            &kiln_engine::crypto::hash_token("ahead-of-commit"),
            host.id,
            next,
            "provisioning",
            None,
            now,
        )
        .await
        .unwrap();
    let r = heartbeat("ahead-of-commit").await.unwrap();
    assert_eq!(r.status(), 503, "a token of the boot being started is not refused");
    assert_eq!(r.headers()["retry-after"], "1");
    assert!(r.text().await.unwrap().contains(&format!("boot {next}")));
    store
        .add_token(
            &kiln_engine::crypto::hash_token("behind"),
            host.id,
            host.counters.boots,
            "provisioning",
            None,
            now,
        )
        .await
        .unwrap();
    assert_eq!(
        heartbeat("behind").await.unwrap().status(),
        401,
        "an old boot's token is refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_agents_heartbeat_is_answered_when_its_command_is_queued() {
    // A heartbeat interval longer than any wait of the test: every command has to arrive on a held heartbeat
    // (queued while the agent's request waits), since an agent answered "no command" asks again only 120 s later.
    let mut lab = Lab::start(|c| c.heartbeat_secs = 120).await;
    lab.agent_wait_secs.store(30, std::sync::atomic::Ordering::Relaxed);
    lab.enroll("node-8").await;
    lab.wait_state("node-8", "available").await;
    let body = json!({ "image": { "url": "http://10.0.0.1/os.raw", "checksum": format!("sha256:{}", "ab".repeat(32)) }, "user_data": "#cloud-config\n" });
    let (s, b) = lab
        .api(reqwest::Method::POST, "/api/v1/hosts/node-8/provision", Some(body))
        .await;
    assert_eq!(s, 202, "{b}");
    lab.wait_state("node-8", "provisioned").await;
    let commands = lab.commands.lock().unwrap()["node-8"].clone();
    for c in ["inspect", "write_image"] {
        assert!(commands.iter().any(|k| k == c), "no {c} in {commands:?}");
    }
    // (Every other test's agents send no `wait_secs`, as agents before it: they are answered at once.)
    lab.stop().await;
}
