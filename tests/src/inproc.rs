//! The in-process lab of kiln's executor tests (no VMs, no namespaces): a fake BMC (implementing `kiln_bmc::Bmc`) per host that "boots"
//! hosts when powered on, simulated firmware that asks kiln's netboot lookup what to boot, and simulated agents
//! that speak HTTP to the agent API with the tokens kiln minted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::bmcs::{BmcAdapter, BmcConnector, DynBmc, FnConnector};
use kiln::machine::{BmcFailure, Policy};
use kiln::model::BmcInfo;
use kiln::netboot::{BootInstructions, Handout, StoreLookup};
use kiln::server::{Appliance, Config};
use kiln::types::{HostName, MacAddr};
use kiln_bmc::{Bmc, BootPersistence, BootTarget, Capabilities, Inventory, PowerAction, PowerState};
use serde_json::{Value, json};
use tokio::sync::mpsc;

// ---------------------------------------------------------------- fake BMC

#[derive(Debug, thiserror::Error)]
#[error("fake BMC unavailable")]
pub struct FakeError;

pub enum BootKind {
    Network,
    Disk,
}

pub struct Fake {
    pub name: String,
    pub power: Mutex<PowerState>,
    pub once: Mutex<Option<BootTarget>>,
    pub persistent: Mutex<Option<BootTarget>>,
    pub calls: Mutex<Vec<String>>,
    pub fail_next: AtomicU32,
    /// Fail this many power and boot-device actions (reads still answer).
    pub fail_actions: AtomicU32,
    /// Panic in this many calls (a driver bug).
    pub panic_next: AtomicU32,
    /// The host never network-boots (a bad cable, a wrong boot MAC).
    pub dead_nic: std::sync::atomic::AtomicBool,
    /// Every BMC call takes this long (a BMC that is slow to answer).
    pub slow_ms: std::sync::atomic::AtomicU64,
    pub boots: mpsc::UnboundedSender<(String, BootKind)>,
}

pub struct FakeBmc(pub Arc<Fake>);

impl Fake {
    pub fn call(&self, c: String) -> Result<(), FakeError> {
        if self.panic_next.load(Ordering::SeqCst) > 0 {
            self.panic_next.fetch_sub(1, Ordering::SeqCst);
            panic!("fake BMC driver bug in {c}");
        }
        if c.starts_with("set_") && self.fail_actions.load(Ordering::SeqCst) > 0 {
            self.fail_actions.fetch_sub(1, Ordering::SeqCst);
            self.calls.lock().unwrap().push(format!("{c} (failed)"));
            return Err(FakeError);
        }
        self.calls.lock().unwrap().push(c);
        if self.fail_next.load(Ordering::SeqCst) > 0 {
            self.fail_next.fetch_sub(1, Ordering::SeqCst);
            return Err(FakeError);
        }
        Ok(())
    }
    pub fn boot(&self) {
        let target = self.once.lock().unwrap().take().or(*self.persistent.lock().unwrap());
        let kind = match target {
            Some(BootTarget::Pxe { .. }) | Some(BootTarget::UefiHttp) if self.dead_nic.load(Ordering::SeqCst) => return,
            Some(BootTarget::Pxe { .. }) | Some(BootTarget::UefiHttp) => BootKind::Network,
            _ => BootKind::Disk,
        };
        let _ = self.boots.send((self.name.clone(), kind));
    }
}

impl FakeBmc {
    async fn slow(&self) {
        let ms = self.0.slow_ms.load(Ordering::SeqCst);
        if ms > 0 {
            tokio::time::sleep(Duration::from_millis(ms)).await;
        }
    }
}

impl Bmc for FakeBmc {
    type Error = FakeError;
    async fn power_state(&self) -> Result<PowerState, FakeError> {
        self.slow().await;
        self.0.call("power_state".into())?;
        Ok(*self.0.power.lock().unwrap())
    }
    async fn set_power(&self, action: PowerAction) -> Result<(), FakeError> {
        self.slow().await;
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
        self.slow().await;
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

pub const PASSWORD: &str = "bmc-pass-Zq81";

pub struct Lab {
    pub fakes: Arc<Mutex<HashMap<String, Arc<Fake>>>>,
    pub boots_tx: mpsc::UnboundedSender<(String, BootKind)>,
    /// Every token handed to an agent, per host, in order.
    pub tokens: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// Commands each host's agents received, in order.
    pub commands: Arc<Mutex<HashMap<String, Vec<String>>>>,
    /// The config drive of each host's last `write_image` command.
    pub drives: Arc<Mutex<HashMap<String, Value>>>,
    /// Disk boots (the written OS starting), per host.
    pub os_boots: Arc<Mutex<HashMap<String, u32>>>,
    pub dir: tempfile::TempDir,
    pub client: reqwest::Client,
    pub base: String,
    pub admin: String,
    /// Every API response body, to check no secret leaks.
    pub bodies: Arc<Mutex<Vec<String>>>,
    pub server: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    pub port: u16,
    /// The netboot lookup of the running appliance (what the pxe services would call).
    pub lookup: Arc<Mutex<Option<StoreLookup>>>,
    pub tweak: fn(&mut Config),
    /// The Kubernetes front-end settings, when the appliance runs its controllers (`kiln serve --kube`).
    pub kube: Option<kiln::kube::runner::KubeSettings>,
}

pub fn config(dir: &std::path::Path, tweak: fn(&mut Config)) -> Config {
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
    pub async fn start(tweak: fn(&mut Config)) -> Lab {
        Self::start_with(tweak, None).await
    }

    /// Like [`Lab::start`], with the Kubernetes controllers running inside the appliance.
    pub async fn start_with(tweak: fn(&mut Config), kube: Option<kiln::kube::runner::KubeSettings>) -> Lab {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (boots_tx, boots_rx) = mpsc::unbounded_channel();
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab {
            fakes: Arc::default(),
            boots_tx,
            tokens: Arc::default(),
            commands: Arc::default(),
            drives: Arc::default(),
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
            kube,
        };
        lab.serve().await;
        lab.spawn_firmware(boots_rx);
        lab
    }

    pub fn connector(&self) -> Arc<dyn BmcConnector> {
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
    pub async fn serve(&mut self) {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", self.port)).await.unwrap();
        self.port = listener.local_addr().unwrap().port();
        self.base = format!("https://127.0.0.1:{}", self.port);
        let mut cfg = config(self.dir.path(), self.tweak);
        cfg.kube = self.kube.clone();
        let app = Appliance::open(cfg, self.connector()).await.unwrap();
        // kiln's own CA exists once the appliance is open: trust it, as the CLI does.
        self.client = https_client(self.dir.path());
        self.admin = std::fs::read_to_string(self.dir.path().join("admin.token"))
            .unwrap()
            .trim()
            .to_owned();
        *self.lookup.lock().unwrap() = Some(app.lookup(&self.base));
        self.server = Some(tokio::spawn(kiln::server::run(app, listener, std::future::pending())));
    }

    /// Kills the appliance abruptly (like kill -9: no graceful shutdown).
    pub async fn kill(&mut self) {
        let s = self.server.take().unwrap();
        s.abort();
        let _ = s.await;
    }

    /// Simulated firmware: a network boot asks the netboot lookup what to do and starts an agent with the token.
    pub fn spawn_firmware(&self, mut rx: mpsc::UnboundedReceiver<(String, BootKind)>) {
        let (tokens, commands, drives, os_boots, fakes) = (
            self.tokens.clone(),
            self.commands.clone(),
            self.drives.clone(),
            self.os_boots.clone(),
            self.fakes.clone(),
        );
        let current = self.lookup.clone();
        let data_dir = self.dir.path().to_path_buf();
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
                            match lookup
                                .boot_instructions(&mac, kiln::executor::now(), Handout::Take)
                                .await
                                .unwrap()
                            {
                                Some(i @ BootInstructions::Agent { token: Some(_), .. }) => {
                                    instr = Some(i);
                                    break;
                                }
                                _ => tokio::time::sleep(Duration::from_millis(100)).await,
                            }
                        }
                        let Some(BootInstructions::Agent {
                            token: Some(token),
                            api_url,
                            ..
                        }) = instr
                        else {
                            panic!("{host} network-booted but kiln gave no agent instructions with a token")
                        };
                        let token = token.expose().to_owned();
                        tokens
                            .lock()
                            .unwrap()
                            .entry(host.clone())
                            .or_default()
                            .push(token.clone());
                        let fake = fakes.lock().unwrap().get(&host).cloned().unwrap();
                        let http = https_client(&data_dir);
                        agents.insert(
                            host.clone(),
                            tokio::spawn(agent(
                                host,
                                api_url,
                                token,
                                commands.clone(),
                                drives.clone(),
                                fake,
                                http,
                            )),
                        );
                    }
                }
            }
        });
    }

    pub fn add_fake(&self, name: &str) -> Arc<Fake> {
        let f = Arc::new(Fake {
            name: name.into(),
            power: Mutex::new(PowerState::Off),
            once: Mutex::default(),
            persistent: Mutex::default(),
            calls: Mutex::default(),
            fail_next: AtomicU32::new(0),
            fail_actions: AtomicU32::new(0),
            panic_next: AtomicU32::new(0),
            dead_nic: Default::default(),
            slow_ms: Default::default(),
            boots: self.boots_tx.clone(),
        });
        self.fakes.lock().unwrap().insert(name.into(), f.clone());
        f
    }

    pub async fn req(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
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

    pub async fn api(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        self.req(method, path, Some(&self.admin.clone()), body).await
    }

    pub async fn enroll(&self, name: &str) {
        self.enroll_with(name, json!({})).await;
    }

    pub async fn enroll_with(&self, name: &str, options: Value) -> Arc<Fake> {
        let fake = self.add_fake(name);
        self.enroll_fake(name, options).await;
        fake
    }

    pub async fn enroll_fake(&self, name: &str, options: Value) {
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

    /// Polls `GET /api/v1/hosts/{name}` (every 50 ms, up to 20 s) until `done` holds; the last view either way.
    pub async fn wait_host(&self, name: &str, done: impl Fn(&Value) -> bool) -> (bool, Value) {
        let mut last = Value::Null;
        for _ in 0..400 {
            let (_, h) = self
                .api(reqwest::Method::GET, &format!("/api/v1/hosts/{name}"), None)
                .await;
            if done(&h) {
                return (true, h);
            }
            last = h;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        (false, last)
    }

    pub async fn wait_state(&self, name: &str, state: &str) -> Value {
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

/// A client that trusts the CA of the appliance with data directory `data_dir` (and nothing else).
pub fn https_client(data_dir: &std::path::Path) -> reqwest::Client {
    let pem = std::fs::read(kiln::tls::ca_path(data_dir)).expect("kiln's CA certificate");
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .build()
        .unwrap()
}

/// The boot MAC of a simulated host: `sim-<n>` hosts (the scale bench) get `52:54:01:` + n in three bytes, others
/// `52:54:00:00:00:` + the last byte of their name.
pub fn mac_of(name: &str) -> String {
    if let Some(n) = name.strip_prefix("sim-").and_then(|n| n.parse::<u32>().ok()) {
        return format!(
            "52:54:01:{:02x}:{:02x}:{:02x}",
            (n >> 16) & 0xff,
            (n >> 8) & 0xff,
            n & 0xff
        );
    }
    let n = name.bytes().last().unwrap();
    format!("52:54:00:00:00:{n:02x}")
}

/// How often simulated agents heartbeat (the scale bench slows them to what real agents do).
pub static AGENT_POLL_MS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(100);

/// A simulated kiln-agent: heartbeats, runs commands, reports; exits when its token is refused.
pub async fn agent(
    host: String,
    api: String,
    token: String,
    commands: Arc<Mutex<HashMap<String, Vec<String>>>>,
    drives: Arc<Mutex<HashMap<String, Value>>>,
    fake: Arc<Fake>,
    c: reqwest::Client,
) {
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
                    drives.lock().unwrap().insert(host.clone(), cmd["config_drive"].clone());
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
        tokio::time::sleep(Duration::from_millis(AGENT_POLL_MS.load(Ordering::Relaxed))).await;
    }
}
