//! What kiln tells the netboot services about a MAC: boot the agent, boot the local disk, or ignore. This is the
//! `HostLookup` seam of kiln-pxe. It reads; it never mints: the state machine mints one agent token per boot
//! (`Action::MintToken`), and the first iPXE script fetch of that boot takes it ([`Handout::Take`]), once. DHCP
//! lookups and later fetches get the same answer without a token.

use std::sync::Arc;

use kiln_bmc::Secret;

use crate::machine::{JobPhase, State};
use crate::store::{Store, StoreError, TokenHandout};
use crate::types::{MacAddr, Ts};

/// What a host booting from the network should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootInstructions {
    /// Boot kiln-agent with `kiln.api=<api_url> kiln.token=<token>` on the kernel command line. The token is a
    /// [`Secret`] (this value can be logged), present only for the one lookup that took it.
    Agent {
        host: String,
        mac: MacAddr,
        boot: u64,
        token: Option<Secret>,
        api_url: String,
        /// `sha256:<hex>` of kiln's CA, which the agent pins for `api_url` (`kiln.ca=`); `None` with a site
        /// certificate (the agent then trusts its system roots).
        ca_pin: Option<String>,
    },
    /// A MAC kiln does not know, while a host without any known MAC is booting for a job: boot kiln-agent with
    /// `kiln.discover=1` and no token; the agent reports its BMC's address and is bound to that host
    /// (`/agent/v1/discover`), which hands it the boot's token.
    Discover {
        mac: MacAddr,
        api_url: String,
        ca_pin: Option<String>,
    },
    /// Boot from the local disk.
    LocalDisk { host: String },
    /// A known host that should not network-boot now (lease it an address, offer no boot file).
    Nothing { host: String },
}

impl BootInstructions {
    /// The kernel command line arguments for the agent (contains the token: send it only to the booting host).
    pub fn kernel_args(&self) -> Option<String> {
        match self {
            BootInstructions::Agent {
                host,
                mac,
                token,
                api_url,
                ca_pin,
                ..
            } => {
                let mut args = format!("kiln.api={api_url}");
                if let Some(pin) = ca_pin {
                    args.push_str(&format!(" kiln.ca={pin}"));
                }
                if let Some(token) = token {
                    args.push_str(&format!(" kiln.token={}", token.expose()));
                }
                args.push_str(&format!(" kiln.mac={mac} kiln.host={host}"));
                Some(args)
            }
            BootInstructions::Discover { mac, api_url, ca_pin } => {
                let mut args = format!("kiln.api={api_url}");
                if let Some(pin) = ca_pin {
                    args.push_str(&format!(" kiln.ca={pin}"));
                }
                args.push_str(&format!(" kiln.discover=1 kiln.mac={mac}"));
                Some(args)
            }
            BootInstructions::LocalDisk { .. } | BootInstructions::Nothing { .. } => None,
        }
    }
}

/// Whether a lookup hands out the boot's agent token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handout {
    /// A DHCP decision: what to boot, never the token.
    Peek,
    /// The iPXE script of the boot: the token, the first time only.
    Take,
}

/// Records at most one event of a kind per host every [`EventThrottle::EVERY`]: netboot requests are unauthenticated,
/// and a flood of them (or a firmware in a boot loop) must not flood a host's events and the store.
#[derive(Debug, Default)]
pub struct EventThrottle {
    last: std::sync::Mutex<std::collections::HashMap<(String, &'static str), std::time::Instant>>,
    suppressed: std::sync::atomic::AtomicU64,
}

impl EventThrottle {
    pub const EVERY: std::time::Duration = std::time::Duration::from_secs(10);

    /// Whether an event `kind` of `host` may be recorded now.
    pub fn allow(&self, host: &str, kind: &'static str) -> bool {
        let now = std::time::Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.len() > 10_000 {
            last.retain(|_, t| now.duration_since(*t) < Self::EVERY);
        }
        match last.get(&(host.to_owned(), kind)) {
            Some(t) if now.duration_since(*t) < Self::EVERY => {
                self.suppressed.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                false
            }
            _ => {
                last.insert((host.to_owned(), kind), now);
                true
            }
        }
    }

    /// Events not recorded so far.
    pub fn suppressed(&self) -> u64 {
        self.suppressed.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Whether a host running a job is waiting for a discovery boot now: it has no known MAC, netboots, and its job has
/// powered it on.
pub fn awaits_discovery_boot(h: &crate::model::Host) -> bool {
    let vmedia = h
        .spec
        .bmc
        .as_ref()
        .is_some_and(|b| b.address.boot_method() == kiln_bmc::BootMethod::VirtualMedia);
    h.spec.boot_mac.is_none() && !vmedia && h.state.job().is_some_and(|j| j.phase != JobPhase::Delayed)
}

/// Looks hosts up in the store by boot MAC.
#[derive(Clone)]
pub struct StoreLookup {
    pub store: Arc<dyn Store>,
    /// Base URL the agent reaches kiln at (`https://10.0.0.1:8443`).
    pub api_url: String,
    /// The pin of kiln's CA the agent checks `api_url`'s certificate chain against (`None`: a site certificate).
    pub ca_pin: Option<String>,
    /// Netboot events recorded per host and kind at most every few seconds.
    pub events: Arc<EventThrottle>,
}

impl StoreLookup {
    /// Instructions for `mac`, or `None` for a MAC kiln does not own (the DHCP server must then stay silent) unless a
    /// host that kiln knows by no MAC is booting for a job: an unknown MAC then gets a discovery boot. With
    /// [`Handout::Take`], the boot's token comes along the first time; a second take of the same boot gets none, and
    /// an event says so (re-booting the host, by inspecting or provisioning it again, mints a new one).
    ///
    /// # Errors
    /// The store's error.
    pub async fn boot_instructions(
        &self,
        mac: &MacAddr,
        now: Ts,
        handout: Handout,
    ) -> Result<Option<BootInstructions>, StoreError> {
        let Some(h) = self.store.host_by_mac(mac).await? else {
            return self.discovery(mac, now, handout).await;
        };
        let host = h.name.to_string();
        match &h.state {
            State::Inspecting(j) | State::Preparing(j) | State::Provisioning(j) | State::Deprovisioning(j) => {
                if j.phase == JobPhase::Delayed {
                    return Ok(Some(BootInstructions::Nothing { host }));
                }
                let token = match handout {
                    Handout::Peek => None,
                    Handout::Take => match self.store.take_token(h.id, j.boot).await? {
                        TokenHandout::Token(t) => Some(t),
                        TokenHandout::AlreadyTaken | TokenHandout::None => {
                            let msg = format!(
                                "the agent token of boot {} was already issued (or never minted); this script carries \
                                 none. Inspect or provision the host again to boot it with a new one",
                                j.boot
                            );
                            if self.events.allow(&host, "token_already_issued") {
                                self.store.add_event(&host, now, "token_already_issued", &msg).await?;
                            }
                            None
                        }
                    },
                };
                Ok(Some(BootInstructions::Agent {
                    host,
                    mac: *mac,
                    boot: j.boot,
                    token,
                    api_url: self.api_url.clone(),
                    ca_pin: self.ca_pin.clone(),
                }))
            }
            State::Provisioned { .. } | State::ExternallyProvisioned { .. } => {
                Ok(Some(BootInstructions::LocalDisk { host }))
            }
            State::Unmanaged
            | State::Registering { .. }
            | State::Available { .. }
            | State::Deleting { .. }
            | State::Error(_) => Ok(Some(BootInstructions::Nothing { host })),
        }
    }

    /// A discovery boot for the unknown `mac` while some host waits for one ([`awaits_discovery_boot`]); `None`
    /// (silence) otherwise. The iPXE script fetch records an event on each waiting host, so that an operator sees
    /// which MACs were offered the boot.
    async fn discovery(
        &self,
        mac: &MacAddr,
        now: Ts,
        handout: Handout,
    ) -> Result<Option<BootInstructions>, StoreError> {
        let waiting: Vec<_> = self
            .store
            .discovery_hosts()
            .await?
            .into_iter()
            .filter(awaits_discovery_boot)
            .collect();
        if waiting.is_empty() {
            return Ok(None);
        }
        if handout == Handout::Take {
            for h in &waiting {
                if self.events.allow(h.name.as_str(), "discovery_boot_offered") {
                    let msg = format!(
                        "unknown MAC {mac} network-booted while this host (no boot MAC) waits: it was given a discovery \
                         boot, and is bound to the waiting host whose BMC address its agent reports"
                    );
                    self.store
                        .add_event(h.name.as_str(), now, "discovery_boot_offered", &msg)
                        .await?;
                }
            }
        }
        Ok(Some(BootInstructions::Discover {
            mac: *mac,
            api_url: self.api_url.clone(),
            ca_pin: self.ca_pin.clone(),
        }))
    }
}
