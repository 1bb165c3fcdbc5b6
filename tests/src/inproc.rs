//! The in-process lab of kiln's executor tests (no VMs, no namespaces): kiln-bmc's one fake BMC
//! ([`kiln_bmc::FakeBmc`], with its fault injection) per host, whose boot hook "boots" hosts when they power on, simulated firmware that asks kiln's netboot lookup what to boot, and simulated agents
//! that speak HTTP to the agent API with the tokens kiln minted.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln::server::{Appliance, Config};
use kiln_bmc::{BootTarget, FakeBmc, PowerState};
use kiln_engine::bmcs::{BmcAdapter, BmcConnector, DynBmc, FnConnector};
use kiln_engine::machine::{BmcFailure, Policy};
use kiln_engine::model::BmcInfo;
use kiln_engine::netboot::{BootInstructions, Handout, StoreLookup};
use kiln_engine::types::{HostName, MacAddr};
use kiln_kube::engine::store::StoreEngine;
use serde_json::{Value, json};
use tokio::sync::mpsc;

// ---------------------------------------------------------------- fake BMCs

/// What a simulated host booted from, as its firmware sees it.
pub enum BootKind {
    Network,
    Disk,
}

// ---------------------------------------------------------------- the lab

pub const PASSWORD: &str = "bmc-pass-Zq81";

pub struct Lab {
    pub fakes: Arc<Mutex<HashMap<String, FakeBmc>>>,
    /// Hosts whose network boot never reaches kiln (a bad cable, a wrong boot MAC).
    pub dead_nics: Arc<Mutex<std::collections::HashSet<String>>>,
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
    pub kube: Option<kiln_kube::runner::KubeSettings>,
    /// The running appliance's store and executor as the Kubernetes controllers' engine, for tests that run a
    /// controller on its own against kiln's real engine.
    pub engine: Option<Arc<StoreEngine>>,
    /// The BMC user name and password each host's connection was made with, by host name.
    pub credentials: Arc<Mutex<HashMap<String, (String, String)>>>,
    /// Stops the running appliance gracefully (see [`Lab::stop`]).
    pub shutdown: tokio_util::sync::CancellationToken,
    /// What the simulated agents offer to wait for a command when idle (`wait_secs`, as kiln-agent does); 0: they
    /// do not offer (the protocol of agents before it) and poll every [`AGENT_POLL_MS`].
    pub agent_wait_secs: Arc<std::sync::atomic::AtomicU32>,
    /// While set, network boots wait in the firmware (as if every host were slow to POST), so that a test can have
    /// several hosts waiting for their boots at once.
    pub boots_held: Arc<std::sync::atomic::AtomicBool>,
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
    pub async fn start_with(tweak: fn(&mut Config), kube: Option<kiln_kube::runner::KubeSettings>) -> Lab {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let (boots_tx, boots_rx) = mpsc::unbounded_channel();
        let dir = tempfile::tempdir().unwrap();
        let mut lab = Lab {
            fakes: Arc::default(),
            dead_nics: Arc::default(),
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
            engine: None,
            credentials: Arc::default(),
            shutdown: tokio_util::sync::CancellationToken::new(),
            agent_wait_secs: Arc::default(),
            boots_held: Arc::default(),
        };
        lab.serve().await;
        lab.spawn_firmware(boots_rx);
        lab
    }

    pub fn connector(&self) -> Arc<dyn BmcConnector> {
        let (fakes, credentials) = (self.fakes.clone(), self.credentials.clone());
        Arc::new(FnConnector(
            move |host: &HostName, b: &BmcInfo| -> Result<Arc<dyn DynBmc>, BmcFailure> {
                credentials.lock().unwrap().insert(
                    host.as_str().to_owned(),
                    (b.username.clone(), b.password.expose().to_owned()),
                );
                let f = fakes.lock().unwrap().get(host.as_str()).cloned();
                let f = f.ok_or(BmcFailure {
                    message: "no such fake".into(),
                    transient: false,
                    auth: false,
                })?;
                Ok(Arc::new(BmcAdapter::new(f, kiln_engine::drivers::classify)))
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
        self.engine = Some(Arc::new(StoreEngine::new(
            app.state.store.clone(),
            app.state.executor.clone(),
        )));
        self.shutdown = tokio_util::sync::CancellationToken::new();
        let stop = self.shutdown.clone();
        self.server = Some(tokio::spawn(kiln::server::run(app, listener, async move {
            stop.cancelled().await
        })));
    }

    /// The engine of the running appliance (its store and executor), as `kiln serve --kube` hands it to the
    /// Kubernetes controllers.
    pub fn engine(&self) -> Arc<StoreEngine> {
        self.engine.clone().expect("the appliance runs")
    }

    /// Stops the appliance as SIGTERM does: the executor finishes its pass, the Kubernetes controllers release their
    /// Lease.
    pub async fn stop(&mut self) {
        self.shutdown.cancel();
        if let Some(s) = self.server.take() {
            tokio::time::timeout(Duration::from_secs(30), s)
                .await
                .expect("the appliance stops within 30 s")
                .expect("the appliance task")
                .expect("a clean stop");
        }
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
        let wait = self.agent_wait_secs.clone();
        let held = self.boots_held.clone();
        tokio::spawn(async move {
            let mut agents: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
            while let Some((host, kind)) = rx.recv().await {
                if let Some(old) = agents.remove(&host) {
                    old.abort(); // a reboot ends the running agent
                }
                match kind {
                    BootKind::Disk => *os_boots.lock().unwrap().entry(host).or_default() += 1,
                    BootKind::Network => {
                        while held.load(Ordering::Relaxed) {
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        let mac: MacAddr = mac_of(&host).parse().unwrap();
                        // Retried: the firmware may ask before the executor has committed the booting state.
                        let mut instr = None;
                        for _ in 0..50 {
                            let lookup = current.lock().unwrap().clone().unwrap();
                            match lookup
                                .boot_instructions(&mac, kiln_engine::executor::now(), Handout::Take)
                                .await
                                .unwrap()
                            {
                                Some(BootInstructions::Agent {
                                    token: Some(token),
                                    api_url,
                                    ..
                                }) => {
                                    instr = Some((token.expose().to_owned(), api_url));
                                    break;
                                }
                                Some(BootInstructions::Discover { api_url, .. }) => {
                                    // A discovery boot: the simulated agent reports the address kiln has for this
                                    // host's BMC, as a real one reads it in-band.
                                    if let Some(token) =
                                        discover(&lookup, &https_client(&data_dir), &api_url, &host, mac).await
                                    {
                                        instr = Some((token, api_url));
                                        break;
                                    }
                                    tokio::time::sleep(Duration::from_millis(100)).await;
                                }
                                _ => tokio::time::sleep(Duration::from_millis(100)).await,
                            }
                        }
                        let Some((token, api_url)) = instr else {
                            // As a real host's PXE firmware gives up: the job's boot timeout follows.
                            eprintln!("{host} network-booted but kiln gave no agent instructions with a token");
                            continue;
                        };
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
                                AgentBoot {
                                    host,
                                    api: api_url,
                                    token,
                                    fake,
                                    client: http,
                                    wait_secs: wait.load(Ordering::Relaxed),
                                },
                                commands.clone(),
                                drives.clone(),
                            )),
                        );
                    }
                }
            }
        });
    }

    /// A powered-off host behind a fake BMC whose power actions land at once; its boots reach the lab's firmware.
    pub fn add_fake(&self, name: &str) -> FakeBmc {
        let (tx, dead, host) = (self.boots_tx.clone(), self.dead_nics.clone(), name.to_owned());
        let f = FakeBmc::new(name)
            .with_mode(kiln_bmc::fake::PowerMode::Auto { delay: Duration::ZERO })
            .with_inventory(kiln_bmc::Inventory {
                nic_macs: vec![mac_of(name)],
                ..Default::default()
            })
            .on_boot(move |target| {
                let kind = match target {
                    BootTarget::Pxe { .. } | BootTarget::UefiHttp if dead.lock().unwrap().contains(&host) => return,
                    BootTarget::Pxe { .. } | BootTarget::UefiHttp => BootKind::Network,
                    _ => BootKind::Disk,
                };
                let _ = tx.send((host.clone(), kind));
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

    /// The names of the hosts in the appliance's store, through its REST API.
    pub async fn host_names(&self) -> Vec<String> {
        let (code, body) = self.api(reqwest::Method::GET, "/api/v1/hosts", None).await;
        assert_eq!(code, 200, "{body}");
        body.as_array()
            .expect("a list of hosts")
            .iter()
            .map(|h| h["name"].as_str().unwrap().to_owned())
            .collect()
    }

    pub async fn enroll(&self, name: &str) {
        self.enroll_with(name, json!({})).await;
    }

    pub async fn enroll_with(&self, name: &str, options: Value) -> FakeBmc {
        let fake = self.add_fake(name);
        self.enroll_fake(name, options).await;
        fake
    }

    pub async fn enroll_fake(&self, name: &str, options: Value) {
        self.create(json!({
            "name": name,
            "bmc": { "address": format!("redfish+http://127.0.0.1:9/redfish/v1/Systems/{name}"), "username": "admin", "password": PASSWORD },
            "boot_mac": mac_of(name),
            "labels": { "rack": "r1" },
            "options": options,
        }))
        .await;
    }

    /// Enrolls `name` behind a fake BMC at `address`, without a boot MAC (as Metal3 allows).
    pub async fn enroll_without_boot_mac(&self, name: &str, address: &str) {
        self.add_fake(name);
        self.create(json!({
            "name": name,
            "bmc": { "address": address, "username": "admin", "password": PASSWORD },
        }))
        .await;
    }

    /// `POST /api/v1/hosts`, which must enroll the host.
    async fn create(&self, host: Value) {
        let (s, b) = self.api(reqwest::Method::POST, "/api/v1/hosts", Some(host)).await;
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
    let pem = std::fs::read(kiln_http::tls::ca_path(data_dir)).expect("kiln's CA certificate");
    reqwest::Client::builder()
        .tls_certs_only(reqwest::Certificate::from_pem_bundle(&pem).unwrap())
        .build()
        .unwrap()
}

/// The boot MAC of a simulated host: `sim-<n>` hosts (the scale bench) get `52:54:01:` + n in three bytes, others
/// `52:54:00:00:00:` + the last byte of their name.
/// The address a simulated host's NIC got (from the documentation range), as its agent reports it.
pub fn ip_of(name: &str) -> String {
    let mac = mac_of(name);
    let last = u8::from_str_radix(mac.rsplit(':').next().unwrap_or("0"), 16).unwrap_or(0);
    format!("192.0.2.{last}")
}

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

/// What the simulated agents record, by host name.
pub type Recorded<T> = Arc<Mutex<HashMap<String, T>>>;

/// One boot of a simulated agent: the host, where and how it reaches kiln, and its host's BMC.
pub struct AgentBoot {
    pub host: String,
    pub api: String,
    pub token: String,
    pub fake: FakeBmc,
    pub client: reqwest::Client,
    /// `wait_secs` offered on idle heartbeats (0: none, as agents before it).
    pub wait_secs: u32,
}

/// A simulated kiln-agent: heartbeats, runs commands, reports; exits when its token is refused.
pub async fn agent(boot: AgentBoot, commands: Recorded<Vec<String>>, drives: Recorded<Value>) {
    let AgentBoot {
        host,
        api,
        token,
        fake,
        client: c,
        wait_secs,
    } = boot;
    let post = |path: &str, body: Value| {
        c.post(format!("{api}/agent/v1/{path}"))
            .bearer_auth(&token)
            .json(&body)
            .send()
    };
    loop {
        let asked = tokio::time::Instant::now();
        let hb = match wait_secs {
            0 => json!({ "agent_version": "sim-1" }),
            w => json!({ "agent_version": "sim-1", "wait_secs": w }),
        };
        let Ok(r) = post("heartbeat", hb).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue; // the appliance is restarting
        };
        if r.status() == 401 {
            return;
        }
        let reply: Value = r.json().await.unwrap_or(Value::Null);
        let command = reply.get("command").filter(|c| !c.is_null());
        if wait_secs > 0 && command.is_none() {
            // Like kiln-agent: the held heartbeat used up (most of) the interval.
            let interval = Duration::from_secs(reply["interval_secs"].as_u64().unwrap_or(1));
            tokio::time::sleep(interval.saturating_sub(asked.elapsed())).await;
            continue;
        }
        if let Some(cmd) = command {
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
                        "nics": [{ "name": "eth0", "mac": mac_of(&host), "link_up": true, "ipv4": [format!("{}/24", ip_of(&host))] }],
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
            assert_eq!(fake.power(), PowerState::On);
            let res = json!({ "command_id": id, "outcome": "succeeded", "detail": { "disk": "/dev/vda" } });
            loop {
                match post("result", res.clone()).await {
                    Ok(r) if r.status().is_success() => break,
                    Ok(r) if r.status() == 401 => return,
                    _ => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        if wait_secs == 0 {
            tokio::time::sleep(Duration::from_millis(AGENT_POLL_MS.load(Ordering::Relaxed))).await;
        }
    }
}

/// A simulated discovery boot's `POST /agent/v1/discover`: the token kiln hands over, or `None` while it refuses.
async fn discover(
    lookup: &StoreLookup,
    http: &reqwest::Client,
    api_url: &str,
    host: &str,
    mac: MacAddr,
) -> Option<String> {
    let h = lookup.store.host(&host.parse().ok()?).await.ok()??;
    let ip = match h.spec.bmc?.address {
        kiln_bmc::BmcAddress::Ipmi(a) => a.host,
        kiln_bmc::BmcAddress::Redfish(a) => a.host,
        kiln_bmc::BmcAddress::Fake(_) => return None,
    };
    let ip: std::net::IpAddr = ip.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
    let body = kiln_images::protocol::Discover {
        boot_mac: mac,
        macs: vec![mac],
        bmc_addresses: vec![ip],
        agent_version: "simulated".into(),
    };
    let resp = http
        .post(format!("{}/agent/v1/discover", api_url.trim_end_matches('/')))
        .json(&body)
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json::<kiln_images::protocol::DiscoverReply>()
        .await
        .ok()
        .map(|r| r.token)
}
