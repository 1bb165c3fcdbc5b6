//! The appliance end to end in one process: `kiln serve`'s `run` on 127.0.0.1:0, hosts driven through their whole
//! lifecycle with an in-test fake BMC (implementing `kiln_bmc::Bmc`) and simulated agents that speak HTTP to the
//! agent API with the tokens the netboot lookup mints. Also: the appliance killed mid-provisioning and restarted
//! on the same data directory converges without writing the host twice.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::bmcs::{BmcAdapter, BmcConnector, DynBmc, FnConnector};
use kiln::machine::{BmcFailure, Policy};
use kiln::model::BmcInfo;
use kiln::netboot::{BootInstructions, StoreLookup};
use kiln::server::{Appliance, Config};
use kiln::types::{HostName, MacAddr};
use kiln_bmc::{Bmc, BootPersistence, BootTarget, Capabilities, Inventory, PowerAction, PowerState};
use serde_json::{Value, json};
use tokio::sync::mpsc;

// ---------------------------------------------------------------- fake BMC

#[derive(Debug, thiserror::Error)]
#[error("fake BMC unavailable")]
struct FakeError;

enum BootKind {
    Network,
    Disk,
}

struct Fake {
    name: String,
    power: Mutex<PowerState>,
    once: Mutex<Option<BootTarget>>,
    persistent: Mutex<Option<BootTarget>>,
    calls: Mutex<Vec<String>>,
    fail_next: AtomicU32,
    /// The host never network-boots (a bad cable, a wrong boot MAC).
    dead_nic: std::sync::atomic::AtomicBool,
    boots: mpsc::UnboundedSender<(String, BootKind)>,
}

struct FakeBmc(Arc<Fake>);

impl Fake {
    fn call(&self, c: String) -> Result<(), FakeError> {
        self.calls.lock().unwrap().push(c);
        if self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Err(FakeError);
        }
        Ok(())
    }
    fn boot(&self) {
        let target = self.once.lock().unwrap().take().or(*self.persistent.lock().unwrap());
        let kind = match target {
            Some(BootTarget::Pxe { .. }) | Some(BootTarget::UefiHttp) if self.dead_nic.load(Ordering::SeqCst) => return,
            Some(BootTarget::Pxe { .. }) | Some(BootTarget::UefiHttp) => BootKind::Network,
            _ => BootKind::Disk,
        };
        let _ = self.boots.send((self.name.clone(), kind));
    }
}

impl Bmc for FakeBmc {
    type Error = FakeError;
    async fn power_state(&self) -> Result<PowerState, FakeError> {
        self.0.call("power_state".into())?;
        Ok(*self.0.power.lock().unwrap())
    }
    async fn set_power(&self, action: PowerAction) -> Result<(), FakeError> {
        self.0.call(format!("set_power {action:?}"))?;
        let was = *self.0.power.lock().unwrap();
        match action {
            PowerAction::On if was == PowerState::On => {}
            PowerAction::On | PowerAction::Cycle | PowerAction::Reset => {
                *self.0.power.lock().unwrap() = PowerState::On;
                self.0.boot();
            }
            PowerAction::Off | PowerAction::ForceOff => *self.0.power.lock().unwrap() = PowerState::Off,
        }
        Ok(())
    }
    async fn set_boot(&self, target: BootTarget, persistence: BootPersistence) -> Result<(), FakeError> {
        self.0.call(format!("set_boot {target:?} {persistence:?}"))?;
        match persistence {
            BootPersistence::Once => *self.0.once.lock().unwrap() = Some(target),
            BootPersistence::Persistent => *self.0.persistent.lock().unwrap() = Some(target),
        }
        Ok(())
    }
    async fn insert_media(&self, _: &str) -> Result<(), FakeError> {
        Ok(())
    }
    async fn eject_media(&self) -> Result<(), FakeError> {
        Ok(())
    }
    async fn inventory(&self) -> Result<Inventory, FakeError> {
        Ok(Inventory::default())
    }
    fn capabilities(&self) -> Capabilities {
        Capabilities::default()
    }
}

// ---------------------------------------------------------------- the lab

const PASSWORD: &str = "bmc-pass-Zq81";

struct Lab {
    fakes: Arc<Mutex<HashMap<String, Arc<Fake>>>>,
    boots_tx: mpsc::UnboundedSender<(String, BootKind)>,
    /// Every token handed to an agent, per host, in order.
    tokens: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// Commands each host's agents received, in order.
    commands: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// Disk boots (the written OS starting), per host.
    os_boots: Arc<Mutex<HashMap<String, u32>>>,
    dir: tempfile::TempDir,
    client: reqwest::Client,
    base: String,
    admin: String,
    /// Every API response body, to check no secret leaks.
    bodies: Arc<Mutex<Vec<String>>>,
    server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    port: u16,
    /// The netboot lookup of the running appliance (what the pxe services would call).
    lookup: Arc<Mutex<Option<StoreLookup>>>,
    tweak: fn(&mut Config),
}

fn config(dir: &std::path::Path, tweak: fn(&mut Config)) -> Config {
    let mut c = Config {
        data_dir: dir.to_path_buf(),
        heartbeat_secs: 1,
        max_concurrent_jobs: 4,
        bmc_calls_per_minute: 120,
        policy: Policy {
            busy_poll_secs: 1,
            idle_poll_secs: 1,
            boot_timeout_secs: 60,
            backoff_base_secs: 1,
            ..Policy::default()
        },
        ..Config::default()
    };
    tweak(&mut c);
    c
}

impl Lab {
    async fn start(tweak: fn(&mut Config)) -> Lab {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (boots_tx, boots_rx) = mpsc::unbounded_channel();
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab {
            fakes: Arc::default(),
            boots_tx,
            tokens: Arc::default(),
            commands: Arc::default(),
            os_boots: Arc::default(),
            dir,
            client: reqwest::Client::new(),
            base: String::new(),
            admin: String::new(),
            bodies: Arc::default(),
            server: None,
            port: 0,
            lookup: Arc::default(),
            tweak,
        };
        lab.serve().await;
        lab.spawn_firmware(boots_rx);
        lab
    }

    fn connector(&self) -> Arc<dyn BmcConnector> {
        let fakes = self.fakes.clone();
        Arc::new(FnConnector(
            move |host: &HostName, _b: &BmcInfo| -> Result<Arc<dyn DynBmc>, BmcFailure> {
                let f = fakes.lock().unwrap().get(host.as_str()).cloned();
                let f = f.ok_or(BmcFailure {
                    message: "no such fake".into(),
                    transient: false,
                    auth: false,
                })?;
                Ok(Arc::new(BmcAdapter::new(FakeBmc(f), |_| (true, false))))
            },
        ))
    }

    /// Starts (or restarts, on the same port and data directory) the appliance.
    async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.port = listener.local_addr().unwrap().port();
        self.base = format!("http://127.0.0.1:{}", self.port);
        let app = Appliance::open(config(self.dir.path(), self.tweak), self.connector())
            .await
            .unwrap();
        self.admin = std::fs::read_to_string(self.dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        *self.lookup.lock().unwrap() = Some(app.lookup(&self.base));
        self.server = Some(tokio::spawn(kiln::server::run(app, listener, std::future::pending())));
    }

    /// Kills the appliance abruptly (like kill -9: no graceful shutdown).
    async fn kill(&mut self) {
        let s = self.server.take().unwrap();
        s.abort();
        let _ = s.await;
    }

    /// Simulated firmware: a network boot asks the netboot lookup what to do and starts an agent with the token.
    fn spawn_firmware(&self, mut rx: mpsc::UnboundedReceiver<(String, BootKind)>) {
        let (tokens, commands, os_boots, fakes) = (
            self.tokens.clone(),
            self.commands.clone(),
            self.os_boots.clone(),
            self.fakes.clone(),
        );
        let current = self.lookup.clone();
        tokio::spawn(async move {
            let mut agents: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
            while let Some((host, kind)) = rx.recv().await {
                if let Some(old) = agents.remove(&host) {
                    old.abort(); // a reboot ends the running agent
                }
                match kind {
                    BootKind::Disk => *os_boots.lock().unwrap().entry(host).or_default() += 1,
                    BootKind::Network => {
                        let mac: MacAddr = mac_of(&host).parse().unwrap();
                        // Retried: the firmware may ask before the executor has committed the booting state.
                        let mut instr = None;
                        for _ in 0..50 {
                            let lookup = current.lock().unwrap().clone().unwrap();
                            match lookup.boot_instructions(&mac, kiln::executor::now()).await.unwrap() {
                                Some(i @ BootInstructions::Agent { .. }) => {
                                    instr = Some(i);
                                    break;
                                }
                                _ => tokio::time::sleep(Duration::from_millis(100)).await,
                            }
                        }
                        let Some(BootInstructions::Agent { token, api_url, .. }) = instr else {
                            panic!("{host} network-booted but kiln gave no agent instructions")
                        };
                        let token = token.expose().to_owned();
                        tokens
                            .lock()
                            .unwrap()
                            .entry(host.clone())
                            .or_default()
                            .push(token.clone());
                        let fake = fakes.lock().unwrap().get(&host).cloned().unwrap();
                        agents.insert(
                            host.clone(),
                            tokio::spawn(agent(host, api_url, token, commands.clone(), fake)),
                        );
                    }
                }
            }
        });
    }

    fn add_fake(&self, name: &str) -> Arc<Fake> {
        let f = Arc::new(Fake {
            name: name.into(),
            power: Mutex::new(PowerState::Off),
            once: Mutex::default(),
            persistent: Mutex::default(),
            calls: Mutex::default(),
            fail_next: AtomicU32::new(0),
            dead_nic: Default::default(),
            boots: self.boots_tx.clone(),
        });
        self.fakes.lock().unwrap().insert(name.into(), f.clone());
        f
    }

    async fn req(&self, method: reqwest::Method, path: &str, token: Option<&str>, body: Option<Value>) -> (u16, Value) {
        let mut r = self.client.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r.json(&b);
        }
        let resp = r.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        self.bodies.lock().unwrap().push(text.clone());
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.req(method, path, Some(&self.admin.clone()), body).await
    }

    async fn enroll(&self, name: &str) {
        self.enroll_with(name, json!({})).await;
    }

    async fn enroll_with(&self, name: &str, options: Value) -> Arc<Fake> {
        let fake = self.add_fake(name);
        self.enroll_fake(name, options).await;
        fake
    }

    async fn enroll_fake(&self, name: &str, options: Value) {
        let (s, b) = self
            .api(
                reqwest::Method::POST,
                "/api/v1/hosts",
                Some(json!({
                    "name": name,
                    "bmc": { "address": format!("redfish+http://127.0.0.1:9/redfish/v1/Systems/{name}"), "username": "admin", "password": PASSWORD },
                    "boot_mac": mac_of(name),
                    "labels": { "rack": "r1" },
                    "options": options,
                })),
            )
            .await;
        assert_eq!(s, 201, "{b}");
    }

    async fn wait_state(&self, name: &str, state: &str) -> Value {
        let mut last = Value::Null;
        for _ in 0..600 {
            let (s, h) = self
                .api(reqwest::Method::GET, &format!("/api/v1/hosts/{name}"), None)
                .await;
            if s == 200 && h["state"] == state {
                return h;
            }
            assert_ne!(h["state"], "error", "{name} failed: {h}");
            last = h;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!("{name} never reached {state}; last: {last}");
    }
}

fn mac_of(name: &str) -> String {
    let n = name.bytes().last().unwrap();
    format!("52:54:00:00:00:{n:02x}")
}

/// A simulated kiln-agent: heartbeats, runs commands, reports; exits when its token is refused.
async fn agent(
    host: String,
    api: String,
    token: String,
    commands: Arc<Mutex<HashMap<String, Vec<String>>>>,
    fake: Arc<Fake>,
) {
    let c = reqwest::Client::new();
    let post = |path: &str, body: Value| {
        c.post(format!("{api}/agent/v1/{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    loop {
        let Ok(r) = post("heartbeat", json!({ "agent_version": "sim-1" })).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue; // the appliance is restarting
        };
        if r.status() == 401 {
            return;
        }
        let reply: Value = r.json().await.unwrap_or(Value::Null);
        if let Some(cmd) = reply.get("command").filter(|c| !c.is_null()) {
            let id = cmd["id"].as_u64().unwrap();
            let kind = cmd["command"].as_str().unwrap().to_owned();
            commands
                .lock()
                .unwrap()
                .entry(host.clone())
                .or_default()
                .push(kind.clone());
            match kind.as_str() {
                "inspect" => {
                    let inv = json!({
                        "system": { "vendor": "QEMU", "product": "Standard PC", "serial": format!("SN-{host}"), "uuid": "u" },
                        "cpu": { "model": "vcpu", "count": 2, "architecture": "x86_64" },
                        "memory_mib": 2048,
                        "disks": [{ "name": "/dev/vda", "size_bytes": 10737418240u64, "rotational": false, "removable": false }],
                        "nics": [{ "name": "eth0", "mac": mac_of(&host), "link_up": true }],
                        "boot_mode": "uefi",
                    });
                    assert_eq!(post("inventory", inv).await.unwrap().status(), 204);
                }
                "write_image" => {
                    assert!(cmd["image"]["url"].as_str().unwrap().starts_with("http://"));
                    assert_eq!(cmd["config_drive"]["meta_data"]["name"], host.as_str());
                    for w in [0u64, 512, 1024] {
                        let p = json!({ "command_id": id, "phase": "writing", "bytes_read": w, "bytes_written": w, "total_bytes": 1024 });
                        assert_eq!(post("progress", p).await.unwrap().status(), 204);
                        tokio::time::sleep(Duration::from_millis(150)).await;
                    }
                }
                _ => {}
            }
            // While the agent works the host must stay powered on.
            assert_eq!(*fake.power.lock().unwrap(), PowerState::On);
            let res = json!({ "command_id": id, "outcome": "succeeded", "detail": { "disk": "/dev/vda" } });
            loop {
                match post("result", res.clone()).await {
                    Ok(r) if r.status().is_success() => break,
                    Ok(r) if r.status() == 401 => return,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

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
    let _guard = tracing::subscriber::set_default(
        tracing_subscriber::fmt()
            .with_env_filter("debug")
            .with_writer(move || l2.clone())
            .finish(),
    );
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
    let calls = lab.fakes.lock().unwrap()["node-1"].calls.lock().unwrap().clone();
    assert!(
        calls
            .iter()
            .any(|c| c.starts_with("set_boot Disk") && c.ends_with("Persistent")),
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
            .boot_instructions(&"52:54:00:00:00:99".parse().unwrap(), kiln::executor::now())
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
    f.fail_next.store(2, Ordering::SeqCst);
    lab.enroll_fake("node-3", json!({ "inspect": false })).await;
    lab.wait_state("node-3", "available").await;
    // Idle power sync keeps polling every second, but never beyond 3 BMC calls per host per minute.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = f.calls.lock().unwrap().clone();
    assert_eq!(calls.len(), 3, "{calls:?}");
    let (_, ev) = lab.api(reqwest::Method::GET, "/api/v1/hosts/node-3/events", None).await;
    assert!(
        ev.as_array()
            .unwrap()
            .iter()
            .any(|e| e["message"].as_str().unwrap().contains("registering -> available")),
        "{ev}"
    );

    // A host that never network-boots fails inspection with a message naming what to check, then retries.
    let lab = Lab::start(|c| c.policy.boot_timeout_secs = 2).await;
    let dead = lab.add_fake("node-4");
    dead.dead_nic.store(true, Ordering::SeqCst);
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
