//! Simulator mode (`kiln serve --simulate`), for trying kiln without hardware and for driving the real binary at
//! scale, as Ironic's `fake-hardware` does. Hosts whose BMC address is `fake://<name>` get kiln-bmc's one fake BMC
//! ([`kiln_bmc::FakeBmc`]: power actions land after a delay, boots are heard as they happen); a host that boots from
//! the network runs simulated firmware, which asks kiln's netboot lookup what to boot exactly as the iPXE script route
//! does (and takes the boot's one agent token), and then a simulated agent that speaks the real agent API over HTTPS:
//! heartbeats, an inventory, progress, results, and the reboots and power-offs the agent does itself. Nothing is
//! downloaded or written: a simulated host's inventory says `kiln simulator`, and its write results say
//! `"simulated": true`.
//!
//! Never on by accident: without `--simulate` (or `simulate = true` in the config), a `fake://` address is refused
//! at enrollment by every front end, and `kiln serve` logs a warning at start when it is on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use kiln_bmc::{Bmc, BmcAddress, BootTarget, FakeBmc, PowerAction};
use kiln_images::protocol::{
    Command, CommandKind, CommandResult, CpuInfo, DiskInfo, HardwareInventory, Heartbeat, HeartbeatReply, NicInfo,
    Outcome, Progress, SystemInfo,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::bmcs::{BmcAdapter, BmcConnector, DynBmc};
use crate::machine::BmcFailure;
use crate::model::BmcInfo;
use crate::netboot::{BootInstructions, Handout, StoreLookup};
use crate::store::Store;
use crate::types::HostName;

/// How a simulated host behaves.
#[derive(Debug, Clone, Copy)]
pub struct SimConfig {
    /// How long a power action takes to land (real BMCs take seconds).
    pub power_delay: Duration,
    /// The size of the image a simulated write reports, and how long the write takes.
    pub image_bytes: u64,
    pub write_time: Duration,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            power_delay: Duration::from_secs(1),
            image_bytes: 2 << 30,
            write_time: Duration::from_secs(2),
        }
    }
}

/// A boot a simulated host was heard making: what it booted from, and the virtual CD's image URL for a CD boot.
type Heard = (HostName, BootTarget, Option<String>);

/// The simulated hosts of one appliance.
pub struct Simulator {
    config: SimConfig,
    /// Each host's fake BMC, by host name, with the `fake://` name it was made for.
    bmcs: Mutex<HashMap<HostName, (String, FakeBmc)>>,
    boots: mpsc::UnboundedSender<Heard>,
    boots_rx: Mutex<Option<mpsc::UnboundedReceiver<Heard>>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Simulator {
    pub fn new(config: SimConfig) -> Arc<Self> {
        let (boots, rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            config,
            bmcs: Mutex::default(),
            boots,
            boots_rx: Mutex::new(Some(rx)),
        })
    }

    /// The fake BMC of `host` (made on first use, and anew if the host's `fake://` name changed).
    pub fn bmc(&self, host: &HostName, name: &str) -> FakeBmc {
        let mut bmcs = self.bmcs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((n, b)) = bmcs.get(host)
            && n == name
        {
            return b.clone();
        }
        let (tx, h) = (self.boots.clone(), host.clone());
        let bmc = FakeBmc::new(name)
            .with_mode(kiln_bmc::fake::PowerMode::Auto {
                delay: self.config.power_delay,
            })
            .on_boot(move |target| {
                let _ = tx.send((h.clone(), target, None));
            });
        bmcs.insert(host.clone(), (name.to_owned(), bmc.clone()));
        bmc
    }

    /// Tells the simulator that `host` booted from `target` on a BMC other than its fake ones (a vendor-profile
    /// Redfish emulator, say): a network boot runs the simulated firmware and agent, as with a fake BMC's boot.
    pub fn boot_heard(&self, host: &HostName, target: BootTarget) {
        let _ = self.boots.send((host.clone(), target, None));
    }

    /// Tells the simulator that `host` booted the virtual CD whose image is at `iso_url`: the simulated firmware
    /// fetches the ISO (kiln's per-boot agent ISO, over kiln's HTTPS) and boots the agent with the kernel command
    /// line it finds on it, as GRUB would.
    pub fn media_boot_heard(&self, host: &HostName, target: BootTarget, iso_url: &str) {
        let _ = self.boots.send((host.clone(), target, Some(iso_url.to_owned())));
    }

    fn bmc_of(&self, host: &HostName) -> Option<FakeBmc> {
        let bmcs = self.bmcs.lock().unwrap_or_else(|e| e.into_inner());
        bmcs.get(host).map(|(_, b)| b.clone())
    }

    /// Runs the simulated hosts' firmware and agents until `cancel`: each network boot asks `lookup` what to boot and
    /// starts an agent that reaches kiln with `http` (which trusts kiln's certificate); a boot from disk, a power-off
    /// or the next boot ends the running agent.
    pub async fn run(
        self: Arc<Self>,
        lookup: StoreLookup,
        store: Arc<dyn Store>,
        http: reqwest::Client,
        cancel: CancellationToken,
    ) {
        let Some(mut rx) = self.boots_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else {
            return;
        };
        let mut agents: HashMap<HostName, tokio::task::JoinHandle<()>> = HashMap::new();
        loop {
            let (host, target, media) = tokio::select! {
                _ = cancel.cancelled() => break,
                b = rx.recv() => match b {
                    Some(b) => b,
                    None => break,
                },
            };
            if let Some(old) = agents.remove(&host) {
                old.abort(); // a reboot ends whatever ran before
            }
            if let (BootTarget::VirtualCd { .. }, Some(url)) = (target, media) {
                let (sim, store, http) = (self.clone(), store.clone(), http.clone());
                let h = host.clone();
                agents.insert(
                    host,
                    tokio::spawn(async move { sim.media_boot(h, url, store, http).await }),
                );
                continue;
            }
            if !matches!(target, BootTarget::Pxe { .. } | BootTarget::UefiHttp) {
                continue; // the installed OS (or a CD kiln never inserted) boots: nothing to simulate
            }
            let (sim, lookup, store, http) = (self.clone(), lookup.clone(), store.clone(), http.clone());
            let h = host.clone();
            agents.insert(
                host,
                tokio::spawn(async move { sim.network_boot(h, lookup, store, http).await }),
            );
        }
        for (_, a) in agents {
            a.abort();
        }
    }

    /// The firmware of a virtual-media boot: reads the ISO and takes the agent's kernel arguments from the GRUB
    /// configuration on it (stored as is, so a scan of the bytes finds them).
    async fn media_boot(self: Arc<Self>, host: HostName, url: String, store: Arc<dyn Store>, http: reqwest::Client) {
        let iso = match http
            .get(&url)
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
        {
            Ok(r) => match r.bytes().await {
                Ok(b) => b,
                Err(e) => return tracing::warn!(%host, "simulated host could not read its virtual CD: {e}"),
            },
            Err(e) => return tracing::warn!(%host, "simulated host could not read its virtual CD: {e}"),
        };
        let text = String::from_utf8_lossy(&iso);
        let arg = |key: &str| {
            text.split_whitespace()
                .find_map(|w| w.strip_prefix(key))
                .map(str::to_owned)
        };
        let (Some(api), Some(token)) = (arg("kiln.api="), arg("kiln.token=")) else {
            return tracing::warn!(%host, "simulated host booted a CD without kiln's agent arguments");
        };
        let mac = match arg("kiln.mac=") {
            Some(m) => m,
            None => match store.host(&host).await {
                Ok(Some(h)) => h.spec.boot_mac.map(|m| m.to_string()).unwrap_or_default(),
                _ => String::new(),
            },
        };
        let agent = SimAgent {
            bmc: self.bmc_of(&host),
            host,
            mac,
            api: api.trim_end_matches('/').to_owned(),
            token,
            http,
            config: self.config,
        };
        agent.run().await;
    }

    /// The firmware of a network boot: DHCP and the iPXE script, as the netboot lookup answers them.
    async fn network_boot(
        self: Arc<Self>,
        host: HostName,
        lookup: StoreLookup,
        store: Arc<dyn Store>,
        http: reqwest::Client,
    ) {
        let mac = match store.host(&host).await {
            Ok(Some(h)) => h.spec.boot_mac,
            _ => None,
        };
        let Some(mac) = mac else {
            tracing::warn!(%host, "simulated host network-booted without a boot MAC: nothing answers it");
            return;
        };
        // The executor commits the booting state right after the power action; ask a few times, as PXE retries.
        for _ in 0..100 {
            match lookup
                .boot_instructions(&mac, crate::executor::now(), Handout::Take)
                .await
            {
                Ok(Some(BootInstructions::Agent {
                    token: Some(token),
                    api_url,
                    ..
                })) => {
                    let bmc = self.bmc_of(&host);
                    let agent = SimAgent {
                        host,
                        mac: mac.to_string(),
                        api: api_url.trim_end_matches('/').to_owned(),
                        token: token.expose().to_owned(),
                        http,
                        bmc,
                        config: self.config,
                    };
                    agent.run().await;
                    return;
                }
                Ok(Some(BootInstructions::Agent { token: None, .. })) => {
                    // The token of this boot was taken already: a real agent would fail to authenticate too.
                    tracing::warn!(%host, "simulated host booted, but its boot's agent token was already issued");
                    return;
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
        tracing::warn!(%host, "simulated host network-booted, but kiln gave it nothing to boot");
    }
}

/// A simulated kiln-agent: what the real one says over the agent API, without touching any disk.
struct SimAgent {
    host: HostName,
    mac: String,
    api: String,
    token: String,
    http: reqwest::Client,
    bmc: Option<FakeBmc>,
    config: SimConfig,
}

enum Sent {
    Ok(reqwest::Response),
    /// The token was refused: this boot is over.
    Refused,
    Failed,
}

impl SimAgent {
    async fn post(&self, endpoint: &str, body: &impl serde::Serialize) -> Sent {
        let r = self
            .http
            .post(format!("{}/agent/v1/{endpoint}", self.api))
            .bearer_auth(&self.token)
            .json(body)
            .send()
            .await;
        match r {
            Ok(r) if r.status() == reqwest::StatusCode::UNAUTHORIZED => Sent::Refused,
            Ok(r) if r.status().is_success() => Sent::Ok(r),
            _ => Sent::Failed,
        }
    }

    async fn run(self) {
        let mut interval = Duration::from_secs(1);
        loop {
            // Like kiln-agent: an idle heartbeat offers to wait an interval for the next command.
            let asked = tokio::time::Instant::now();
            let hb = Heartbeat {
                agent_version: format!("kiln-simulator-{}", env!("CARGO_PKG_VERSION")),
                busy_with: None,
                wait_secs: u32::try_from(interval.as_secs()).ok(),
            };
            match self.post("heartbeat", &hb).await {
                Sent::Refused => return,
                Sent::Failed => {}
                Sent::Ok(r) => {
                    if let Ok(reply) = r.json::<HeartbeatReply>().await {
                        interval = Duration::from_secs(u64::from(reply.interval_secs.clamp(1, 60)));
                        if let Some(cmd) = reply.command {
                            if !self.execute(cmd).await {
                                return;
                            }
                            continue;
                        }
                    }
                }
            }
            tokio::time::sleep(interval.saturating_sub(asked.elapsed())).await;
        }
    }

    /// Runs one command and reports it; `false` when the boot is over (token refused, or the host went down).
    async fn execute(&self, cmd: Command) -> bool {
        let id = cmd.id;
        let mut power = None;
        let outcome = match &cmd.kind {
            CommandKind::Inspect => {
                if let Sent::Refused = self.post("inventory", &self.inventory()).await {
                    return false;
                }
                Outcome::Succeeded {
                    detail: serde_json::json!({}),
                }
            }
            CommandKind::WriteImage { .. } => {
                let total = self.config.image_bytes;
                for step in 0..=4u64 {
                    let p = Progress {
                        command_id: id,
                        phase: "writing".into(),
                        bytes_read: total * step / 4,
                        bytes_written: total * step / 4,
                        total_bytes: Some(total),
                    };
                    if let Sent::Refused = self.post("progress", &p).await {
                        return false;
                    }
                    if step < 4 {
                        tokio::time::sleep(self.config.write_time / 4).await;
                    }
                }
                Outcome::Succeeded {
                    detail: serde_json::json!({ "disk": "/dev/sda", "simulated": true }),
                }
            }
            CommandKind::EraseMetadata | CommandKind::EraseDisks => Outcome::Succeeded {
                detail: serde_json::json!({ "simulated": true }),
            },
            CommandKind::Reboot => {
                power = Some(PowerAction::Reset);
                Outcome::Succeeded {
                    detail: serde_json::json!({}),
                }
            }
            CommandKind::PowerOff => {
                power = Some(PowerAction::Off);
                Outcome::Succeeded {
                    detail: serde_json::json!({}),
                }
            }
        };
        let result = CommandResult {
            command_id: id,
            outcome,
        };
        loop {
            match self.post("result", &result).await {
                Sent::Ok(_) => break,
                Sent::Refused => return false,
                Sent::Failed => tokio::time::sleep(Duration::from_millis(500)).await,
            }
        }
        if let (Some(action), Some(bmc)) = (power, &self.bmc) {
            // The real agent reboots or powers off the host itself, after reporting.
            if let Err(e) = bmc.set_power(action).await {
                tracing::warn!(host = %self.host, error = %e, "simulated agent could not {action:?} its host");
            }
            return false;
        }
        true
    }

    fn inventory(&self) -> HardwareInventory {
        HardwareInventory {
            system: SystemInfo {
                vendor: "kiln simulator".into(),
                product: "simulated host".into(),
                serial: format!("SIM-{}", self.host),
                uuid: String::new(),
            },
            cpu: CpuInfo {
                model: "simulated vCPU".into(),
                count: 8,
                architecture: "x86_64".into(),
            },
            memory_mib: 32768,
            disks: vec![DiskInfo {
                name: "/dev/sda".into(),
                size_bytes: 480 << 30,
                model: "simulated disk".into(),
                serial: format!("SIMDISK-{}", self.host),
                rotational: false,
                removable: false,
                ..Default::default()
            }],
            nics: vec![NicInfo {
                name: "eth0".into(),
                mac: self.mac.clone(),
                link_up: true,
                speed_mbps: Some(25_000),
                ..Default::default()
            }],
            boot_mode: "uefi".into(),
        }
    }
}

/// Drives `fake://` hosts with the simulator and every other host with the real drivers.
pub struct SimConnector {
    pub sim: Arc<Simulator>,
    pub real: Arc<dyn BmcConnector>,
}

#[async_trait]
impl BmcConnector for SimConnector {
    async fn connect(&self, host: &HostName, bmc: &BmcInfo) -> Result<Arc<dyn DynBmc>, BmcFailure> {
        match &bmc.address {
            BmcAddress::Fake(a) => Ok(Arc::new(BmcAdapter::new(
                self.sim.bmc(host, &a.name),
                crate::drivers::classify,
            ))),
            _ => self.real.connect(host, bmc).await,
        }
    }

    fn accepts(&self, address: &BmcAddress) -> Result<(), String> {
        match address {
            BmcAddress::Fake(_) => Ok(()),
            other => self.real.accepts(other),
        }
    }
}
