//! `kiln serve` as a library: opens the data directory (key, admin token, store), builds the HTTP router (REST API,
//! agent API, `/healthz`, `/metrics`, OpenAPI) and runs it with the executor until shutdown. It owns start-up and
//! graceful shutdown, not the handlers' logic.

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;

use axum::{Router, routing::get};
use kiln_bmc::Secret;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use kiln_engine::bmcs::BmcConnector;
use kiln_engine::crypto::{CryptoError, SecretKey, random_hex, read_or_create_0600};
use kiln_engine::executor::{Executor, ExecutorConfig};
use kiln_engine::machine::Policy;
use kiln_engine::metrics::Metrics;
use kiln_engine::netboot::StoreLookup;
use kiln_engine::store::{Store, StoreError};
use kiln_http::http_util::AppState;
pub use kiln_http::listener::HttpLimits;

/// Errors of starting the appliance.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot create data directory {path}")]
    DataDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot read or create the admin token file {path}")]
    AdminToken {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot load the secrets key")]
    Key(#[source] CryptoError),
    #[error("cannot open the store")]
    Store(#[source] StoreError),
    #[error("cannot set up TLS")]
    Tls(#[source] kiln_http::tls::TlsError),
    #[error("invalid configuration: {reason}")]
    Invalid { reason: String },
    #[error("cannot read config file {path}")]
    Config {
        path: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// Appliance configuration (TOML file, overridden by flags).
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    /// Data directory: `kiln.db`, `secret.key`, `admin.token`.
    pub data_dir: PathBuf,
    /// `postgres://...` or `sqlite:PATH`; default `<data_dir>/kiln.db`.
    pub database_url: Option<String>,
    /// URL the agent reaches kiln at; default derived from the listener.
    pub api_url: Option<String>,
    pub heartbeat_secs: u32,
    pub max_concurrent_jobs: usize,
    pub bmc_calls_per_minute: usize,
    pub policy: Policy,
    /// Netboot services (DHCP/TFTP/HTTP boot); `None` runs none (the site's DHCP points at kiln, or tests).
    pub pxe: Option<kiln_pxe::PxeConfig>,
    /// The agent ramdisk the per-host iPXE script boots.
    pub agent_boot: Option<AgentBootConfig>,
    /// Booting the agent from the BMC's virtual CD (hosts with `*-virtualmedia://` BMC addresses).
    pub virtual_media: Option<VirtualMediaConfig>,
    /// The Kubernetes front-end (BareMetalHost and Cluster API controllers); `None` runs without it.
    pub kube: Option<kiln_kube::runner::KubeSettings>,
    /// Events older than this many days are deleted (hourly).
    pub event_retention_days: u32,
    /// Each host keeps at most this many of its newest events.
    pub events_per_host: u32,
    /// Limits of kiln's HTTP listeners.
    pub http: HttpLimits,
    /// TLS of the API listener (kiln's own CA by default).
    pub tls: kiln_http::tls::TlsConfig,
    /// Simulator mode: hosts with `fake://` BMC addresses are simulated ([`kiln_engine::sim`]); off unless asked for.
    pub simulate: bool,
    /// How simulated hardware behaves (`[simulator]`); only with `simulate` (refused at start otherwise).
    pub simulator: Option<SimulatorSettings>,
    /// Registries (`host` or `host:port`) of `oci://` images that the agent reaches over plain HTTP instead of
    /// HTTPS, like containerd's and Docker's insecure registries (a lab or an air-gapped mirror without TLS).
    pub insecure_registries: Vec<String>,
    /// Where the plain-HTTP netboot routes (`/boot`) listen when `[pxe]` is configured; default: the host and port
    /// of `[pxe] http_base`.
    pub boot_listen: Option<std::net::SocketAddr>,
    /// Where the admin API (REST, web page, metrics) listens, on the management network; the main listener then
    /// serves only what agents and BMCs reach (agent API, virtual-media ISOs). Default: one listener serves all.
    pub admin_listen: Option<std::net::SocketAddr>,
    /// This appliance as one of several replicas on one database (PostgreSQL): they divide the hosts by expiring
    /// leases. Every replica needs the same `secret.key` (it seals BMC passwords in the store) and `admin.token`.
    pub replica: Option<ReplicaSettings>,
}

/// Timing of simulated hosts. Defaults model real hardware; zeros make them answer at once, like Ironic's
/// `fake-hardware`, so that what is measured is kiln's own work.
#[derive(Debug, Clone, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorSettings {
    /// Milliseconds a power action takes to land.
    pub power_delay_ms: u64,
    /// Milliseconds a simulated image write takes.
    pub write_ms: u64,
}

impl Default for SimulatorSettings {
    fn default() -> Self {
        let d = kiln_engine::sim::SimConfig::default();
        Self {
            power_delay_ms: d.power_delay.as_millis() as u64,
            write_ms: d.write_time.as_millis() as u64,
        }
    }
}

/// One replica's identity among several on one database.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaSettings {
    /// Unique among the replicas (a pod's or machine's name).
    pub name: String,
    /// Seconds a host lease lasts unless renewed: a replica that dies has its hosts taken over after about this long.
    #[serde(default = "default_lease_ttl_secs")]
    pub lease_ttl_secs: u64,
}

fn default_lease_ttl_secs() -> u64 {
    15
}

impl ReplicaSettings {
    /// The replica `name` with the default lease time.
    pub fn named(name: String) -> Self {
        Self {
            name,
            lease_ttl_secs: default_lease_ttl_secs(),
        }
    }
}

/// Kernel and initramfs of the kiln-agent ramdisk.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentBootConfig {
    pub kernel_url: url::Url,
    pub initrd_url: url::Url,
    /// Extra kernel arguments (`console=ttyS0`).
    #[serde(default)]
    pub cmdline: String,
}

/// The files of `kiln ramdisk build` that kiln puts on each virtual-media boot's ISO.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualMediaConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// GRUB for UEFI (`grubx64.efi` from `kiln ramdisk build`).
    pub efi_loader: PathBuf,
    /// GRUB's El Torito image for BIOS hosts (`grub-eltorito.img` from `kiln ramdisk build`); unset, the ISO boots
    /// UEFI hosts only.
    #[serde(default)]
    pub bios_loader: Option<PathBuf>,
    /// Extra kernel arguments (`console=ttyS0`).
    #[serde(default)]
    pub cmdline: String,
    /// kiln's HTTPS base URL as BMCs reach it (the ISO is at `<url>/boot/media/<name>.iso`); default `api_url`.
    #[serde(default)]
    pub url: Option<String>,
}

impl VirtualMediaConfig {
    /// Reads the loader and checks the ramdisk files, so a wrong path stops `kiln serve` at start instead of
    /// failing each host's boot.
    fn load(&self, api_url: &str, ca_pin: Option<String>) -> std::io::Result<kiln_engine::vmedia::VirtualMedia> {
        let named = |p: &PathBuf, what: &str| {
            let p = p.clone();
            let what = what.to_owned();
            move |e: std::io::Error| {
                std::io::Error::new(e.kind(), format!("[virtual_media] {what} {}: {e}", p.display()))
            }
        };
        for (p, what) in [(&self.kernel, "kernel"), (&self.initramfs, "initramfs")] {
            std::fs::metadata(p).map_err(named(p, what))?;
        }
        let loader = std::fs::read(&self.efi_loader).map_err(named(&self.efi_loader, "efi_loader"))?;
        let efi = kiln_images::iso::efi_boot_image(&loader).map_err(named(&self.efi_loader, "efi_loader"))?;
        let bios = match &self.bios_loader {
            Some(p) => Some(std::fs::read(p).map_err(named(p, "bios_loader"))?.into()),
            None => None,
        };
        Ok(kiln_engine::vmedia::VirtualMedia::new(
            kiln_engine::vmedia::AgentMediaConfig {
                kernel: self.kernel.clone(),
                initramfs: self.initramfs.clone(),
                efi_image: efi.into(),
                bios_image: bios,
                cmdline: self.cmdline.clone(),
                api_url: api_url.to_owned(),
                ca_pin,
                media_url: self
                    .url
                    .clone()
                    .unwrap_or_else(|| api_url.to_owned())
                    .trim_end_matches('/')
                    .to_owned(),
            },
        ))
    }
}

impl Default for Config {
    fn default() -> Self {
        let e = ExecutorConfig::default();
        Self {
            data_dir: PathBuf::from("./kiln-data"),
            database_url: None,
            api_url: None,
            heartbeat_secs: 5,
            max_concurrent_jobs: e.max_concurrent_jobs,
            bmc_calls_per_minute: e.bmc_calls_per_minute,
            policy: Policy::default(),
            pxe: None,
            agent_boot: None,
            virtual_media: None,
            kube: None,
            event_retention_days: 30,
            events_per_host: 2000,
            http: HttpLimits::default(),
            tls: Default::default(),
            simulate: false,
            simulator: None,
            insecure_registries: Vec::new(),
            boot_listen: None,
            admin_listen: None,
            replica: None,
        }
    }
}

impl Config {
    /// Reads a TOML config file.
    ///
    /// # Errors
    /// [`ServeError::Config`].
    pub fn from_file(path: &std::path::Path) -> Result<Self, ServeError> {
        let err = |source: Box<dyn std::error::Error + Send + Sync>| ServeError::Config {
            path: path.display().to_string(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(Box::new(e)))?;
        toml::from_str(&text).map_err(|e| err(Box::new(e)))
    }
}

/// Everything `kiln serve` runs, opened but not yet serving.
pub struct Appliance {
    pub state: AppState,
    pub executor: Arc<Executor>,
    pub store: Arc<dyn Store>,
    pub config: Config,
    /// The pin of kiln's CA that agents check (`None` with a site certificate).
    pub ca_pin: Option<String>,
    /// The simulated hosts, in simulator mode.
    pub sim: Option<Arc<kiln_engine::sim::Simulator>>,
}

/// Path of the admin token file in a data directory.
pub fn admin_token_path(data_dir: &std::path::Path) -> PathBuf {
    data_dir.join("admin.token")
}

impl Appliance {
    /// Opens the data directory (creating the key and admin token on first start) and the store.
    ///
    /// # Errors
    /// [`ServeError`] naming what could not be opened.
    pub async fn open(config: Config, connector: Arc<dyn BmcConnector>) -> Result<Self, ServeError> {
        let dir = &config.data_dir;
        kiln_engine::crypto::private_dir(dir).map_err(|source| ServeError::DataDir {
            path: dir.display().to_string(),
            source,
        })?;
        let key = SecretKey::load_or_create(dir).map_err(ServeError::Key)?;
        let tpath = admin_token_path(dir);
        let token = read_or_create_0600(&tpath, || random_hex(32)).map_err(|source| ServeError::AdminToken {
            path: tpath.display().to_string(),
            source,
        })?;
        let ca_pin = kiln_http::tls::ensure_ca(dir, &config.tls).map_err(ServeError::Tls)?;
        let store = kiln_engine::store::connect(config.database_url.as_deref(), dir, key)
            .await
            .map_err(ServeError::Store)?;
        let metrics = Arc::new(Metrics::default());
        let exec_cfg = ExecutorConfig {
            policy: config.policy,
            max_concurrent_jobs: config.max_concurrent_jobs,
            bmc_calls_per_minute: config.bmc_calls_per_minute,
            insecure_registries: config.insecure_registries.clone(),
            ..ExecutorConfig::default()
        };
        if config.simulator.is_some() && !config.simulate {
            return Err(ServeError::Invalid {
                reason: "the [simulator] section needs simulator mode (`simulate = true` or --simulate)".into(),
            });
        }
        let sim = config.simulate.then(|| {
            let s = config.simulator.clone().unwrap_or_default();
            kiln_engine::sim::Simulator::new(kiln_engine::sim::SimConfig {
                power_delay: std::time::Duration::from_millis(s.power_delay_ms),
                write_time: std::time::Duration::from_millis(s.write_ms),
                ..kiln_engine::sim::SimConfig::default()
            })
        });
        let connector: Arc<dyn BmcConnector> = match &sim {
            Some(sim) => {
                tracing::warn!(
                    "SIMULATOR MODE: hosts with fake:// BMC addresses are simulated; nothing they report is real"
                );
                Arc::new(kiln_engine::sim::SimConnector {
                    sim: sim.clone(),
                    real: connector,
                })
            }
            None => connector,
        };
        let executor = Executor::new(store.clone(), connector, metrics.clone(), exec_cfg);
        if let Some(r) = &config.replica {
            if r.name.is_empty() || r.lease_ttl_secs < 3 {
                return Err(ServeError::Invalid {
                    reason: "[replica] needs a name and lease_ttl_secs of at least 3".into(),
                });
            }
            tracing::info!(replica = %r.name, lease_ttl_secs = r.lease_ttl_secs, store = store.backend(), "running as one of several replicas");
            executor.set_replica(kiln_engine::executor::ReplicaConfig {
                name: r.name.clone(),
                lease_ttl: std::time::Duration::from_secs(r.lease_ttl_secs),
            });
        }
        let state = AppState {
            store: store.clone(),
            executor: executor.clone(),
            metrics,
            admin_token: Arc::new(Secret::new(token)),
            heartbeat_secs: config.heartbeat_secs,
            pxe_counters: Arc::default(),
            simulate: config.simulate,
            source_limiter: Arc::new(kiln_http::ratelimit::SourceLimiter::new(
                config.http.per_source_requests_per_second,
                config.http.per_source_burst,
            )),
            stopping: CancellationToken::new(),
        };
        Ok(Self {
            state,
            executor,
            store,
            config,
            ca_pin,
            sim,
        })
    }

    /// The netboot lookup (the pxe services' `HostLookup`) for agents reaching kiln at `api_url`.
    pub fn lookup(&self, api_url: &str) -> StoreLookup {
        StoreLookup {
            store: self.store.clone(),
            api_url: self.config.api_url.clone().unwrap_or_else(|| api_url.to_owned()),
            ca_pin: self.ca_pin.clone(),
            events: Default::default(),
        }
    }
}

/// Serves the appliance on an already-bound listener, with the executor, until `shutdown` completes. The executor
/// finishes its current pass (every action it started is persisted) before this returns.
///
/// # Errors
/// Returns the I/O error that stopped the HTTP server.
pub async fn run(
    app: Appliance,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let cancel = CancellationToken::new();
    let local = listener.local_addr()?;
    // The admin API on a listener of its own (management network), or every route on the one listener.
    let admin_listener = match app.config.admin_listen {
        Some(a) => Some(
            TcpListener::bind(a)
                .await
                .map_err(|e| std::io::Error::new(e.kind(), format!("binding the admin listener {a}: {e}")))?,
        ),
        None => None,
    };
    let http = match admin_listener {
        Some(_) => kiln_http::listener::provisioning_router(app.state.clone()),
        None => kiln_http::listener::router(app.state.clone()),
    };
    // The certificate names every address either listener answers on.
    let mut names = kiln_http::tls::server_names(local.ip(), app.config.api_url.as_deref(), &app.config.tls.names);
    if let Some(a) = app.config.admin_listen {
        names.extend(kiln_http::tls::server_names(a.ip(), None, &[]));
        names.sort();
        names.dedup();
    }
    let tls = kiln_http::tls::ServerTls::load_or_create(&app.config.data_dir, &app.config.tls, names)
        .map_err(|e| std::io::Error::other(kiln_engine::bmcs::chain(&e)))?;
    let api_url = format!("https://{local}");
    if let Some(vm) = &app.config.virtual_media {
        let agent_url = app.config.api_url.clone().unwrap_or_else(|| api_url.clone());
        let media = vm.load(&agent_url, app.ca_pin.clone())?;
        tracing::info!(url = %media.config.media_url, "virtual-media boot ready");
        app.executor.set_virtual_media(Arc::new(media));
    }
    // Netboot: DHCP/TFTP services and the /boot routes (per-host iPXE scripts, ramdisk and image files), in plain
    // HTTP on a listener of their own: firmware cannot verify kiln's certificate.
    let mut pxe = None;
    let mut boot_server = None;
    if let Some(pxe_cfg) = app.config.pxe.clone() {
        let boot = app.config.agent_boot.clone().ok_or_else(|| {
            std::io::Error::other("[pxe] is configured but [agent_boot] (the agent kernel and initramfs URLs) is not")
        })?;
        let boot_addr = match app.config.boot_listen {
            Some(a) => a,
            None => boot_listen_of(&pxe_cfg.boot.http_base)?,
        };
        let boot_listener = TcpListener::bind(boot_addr)
            .await
            .map_err(|e| std::io::Error::new(e.kind(), format!("binding the netboot listener {boot_addr}: {e}")))?;
        let lookup: Arc<dyn kiln_pxe::HostLookup> = Arc::new(kiln_engine::pxe_lookup::PxeLookup {
            lookup: app.lookup(&api_url),
            kernel_url: boot.kernel_url,
            initrd_url: boot.initrd_url,
            extra_cmdline: boot.cmdline,
        });
        let counters = app.state.pxe_counters.clone();
        let services = kiln_pxe::spawn(pxe_cfg.clone(), lookup.clone(), counters.clone(), cancel.clone())
            .await
            .map_err(|e| std::io::Error::other(kiln_engine::bmcs::chain(&e)))?;
        let boot_http = Router::new()
            .route("/healthz", get(kiln_http::listener::healthz))
            .with_state(app.state.clone())
            .merge(kiln_pxe::http::router(lookup, pxe_cfg.files_dir(), counters).layer(
                axum::middleware::from_fn_with_state(app.state.source_limiter.clone(), kiln_http::ratelimit::limit),
            ));
        let (c, limits) = (cancel.clone(), app.config.http);
        boot_server = Some(tokio::spawn(kiln_http::listener::serve(
            boot_listener,
            boot_http,
            limits,
            None,
            async move { c.cancelled().await },
        )));
        tracing::info!(mode = ?pxe_cfg.dhcp.mode, interface = %pxe_cfg.dhcp.interface, boot = %boot_addr, "netboot services started");
        pxe = Some(services);
    }
    // The Kubernetes controllers, on kiln's own engine, while this replica leads; losing the lease stops kiln.
    // A JoinSet, not a detached task: if this future is dropped (the process ends), the controllers end with it.
    let mut kube = tokio::task::JoinSet::new();
    if let Some(settings) = app.config.kube.clone() {
        let client = kiln_kube::runner::client(&settings)
            .await
            .map_err(|e| std::io::Error::other(kiln_engine::bmcs::chain(&e)))?;
        let engine = Arc::new(kiln_kube::engine::store::StoreEngine::new(
            app.store.clone(),
            app.executor.clone(),
        ));
        let c = cancel.clone();
        kube.spawn(async move {
            let r = kiln_kube::runner::run(client, engine, settings, c.clone()).await;
            if r.is_err() {
                c.cancel();
            }
            r
        });
    }
    // The executor: if it ends while kiln is not stopping (it panicked), nobody would act on the intents the API
    // keeps accepting, so kiln stops with an error instead, as it does when it loses the Kubernetes Lease.
    let mut tasks = tokio::task::JoinSet::new();
    let executor_died = Arc::new(std::sync::atomic::AtomicBool::new(false));
    {
        let (c, died, executor) = (cancel.clone(), executor_died.clone(), app.executor.clone());
        // In this JoinSet, not a task of its own: if this future is dropped, the executor ends with it.
        tasks.spawn(async move {
            let r = futures::FutureExt::catch_unwind(std::panic::AssertUnwindSafe(executor.run(c.clone()))).await;
            if r.is_err() || !c.is_cancelled() {
                tracing::error!(panicked = r.is_err(), "the executor stopped; stopping kiln");
                died.store(true, std::sync::atomic::Ordering::SeqCst);
                c.cancel();
            }
        });
    }
    // Simulator mode: the simulated hosts' firmware and agents, reaching kiln over HTTPS like real agents.
    if let Some(sim) = app.sim.clone() {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut http = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(path) = &tls.ca_file {
            let pem = std::fs::read(path)?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(std::io::Error::other)?;
            http = http.tls_certs_only(certs);
        }
        let http = http.build().map_err(std::io::Error::other)?;
        let (lookup, store, c) = (app.lookup(&api_url), app.store.clone(), cancel.clone());
        tasks.spawn(async move { sim.run(lookup, store, http, c).await });
    }
    // Retention: events are pruned hourly (and at start), so neither time nor a chatty host grows the store forever.
    {
        let (store, c) = (app.store.clone(), cancel.clone());
        let (days, per_host) = (app.config.event_retention_days, app.config.events_per_host);
        tasks.spawn(async move {
            loop {
                let before = kiln_engine::executor::now().plus_ms(-(i64::from(days) * 86_400_000));
                match store.prune_events(before, i64::from(per_host.max(1))).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(deleted = n, days, per_host, "old events pruned"),
                    Err(e) => tracing::warn!(error = %kiln_engine::bmcs::chain(&e), "pruning events failed"),
                }
                tokio::select! {
                    _ = c.cancelled() => break,
                    _ = tokio::time::sleep(std::time::Duration::from_secs(3600)) => {}
                }
            }
        });
    }
    let mut admin_server = None;
    if let Some(l) = admin_listener {
        let addr = l.local_addr()?;
        let (c, limits) = (cancel.clone(), app.config.http);
        let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
        admin_server = Some(tokio::spawn(kiln_http::listener::serve(
            l,
            kiln_http::listener::admin_router(app.state.clone()),
            limits,
            Some(acceptor),
            async move { c.cancelled().await },
        )));
        tracing::info!(admin = %addr, provisioning = %local, "the admin API listens apart from the agent API");
    }
    let (c, stopping) = (cancel.clone(), app.state.stopping.clone());
    let acceptor = tokio_rustls::TlsAcceptor::from(tls.config.clone());
    let served = kiln_http::listener::serve(listener, http, app.config.http, Some(acceptor), async move {
        tokio::select! {
            _ = shutdown => {}
            _ = c.cancelled() => {}
        }
        // Held heartbeats are answered now, so the listener's graceful stop does not wait for them.
        stopping.cancel();
    })
    .await;
    cancel.cancel();
    if let Some(a) = admin_server
        && let Ok(Err(e)) = a.await
    {
        tracing::warn!(error = %e, "the admin listener stopped with an error");
    }
    if let Some(b) = boot_server
        && let Ok(Err(e)) = b.await
    {
        tracing::warn!(error = %e, "the netboot listener stopped with an error");
    }
    while tasks.join_next().await.is_some() {}
    if executor_died.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(std::io::Error::other("the executor stopped unexpectedly; see the log"));
    }
    if let Some(services) = pxe
        && let Err(e) = services.wait().await
    {
        tracing::warn!(error = %kiln_engine::bmcs::chain(&e), "netboot services stopped with an error");
    }
    while let Some(k) = kube.join_next().await {
        match k {
            Ok(Err(e)) => return Err(std::io::Error::other(kiln_engine::bmcs::chain(&e))),
            Err(e) => {
                return Err(std::io::Error::other(format!(
                    "the Kubernetes controllers panicked: {e}"
                )));
            }
            Ok(Ok(())) => {}
        }
    }
    served
}

/// The address the netboot listener binds when `boot_listen` is not set: the host and port of `[pxe] http_base`.
fn boot_listen_of(base: &url::Url) -> std::io::Result<std::net::SocketAddr> {
    let bad = |why: &str| std::io::Error::other(format!("[pxe] http_base {base}: {why}; set boot_listen"));
    if base.scheme() != "http" {
        return Err(bad("firmware fetches the netboot routes over plain http://"));
    }
    let host = base.host_str().ok_or_else(|| bad("no host"))?;
    let ip: std::net::IpAddr = host
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| bad("the host is a name, not an address to listen on"))?;
    Ok(std::net::SocketAddr::new(
        ip,
        base.port_or_known_default().unwrap_or(80),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn simulator_settings_need_simulator_mode() {
        let cfg: Config = toml::from_str("[simulator]\npower_delay_ms = 0\nwrite_ms = 0\n").unwrap();
        assert_eq!(
            cfg.simulator.as_ref().map(|s| (s.power_delay_ms, s.write_ms)),
            Some((0, 0))
        );
        let err = toml::from_str::<Config>("[simulator]\npower_delay = 0\n").unwrap_err();
        assert!(err.to_string().contains("power_delay"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: dir.path().join("data"),
            ..cfg
        };
        let Err(err) = Appliance::open(cfg, Arc::new(kiln_engine::bmcs::NoDrivers)).await else {
            panic!("[simulator] accepted without simulator mode");
        };
        assert!(
            err.to_string().contains("[simulator]") && err.to_string().contains("--simulate"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn healthz_answers_ok_on_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = Config {
            data_dir: dir.path().join("data"),
            ..Config::default()
        };
        let app = Appliance::open(cfg, Arc::new(kiln_engine::bmcs::NoDrivers))
            .await
            .unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(run(app, listener, async {
            let _ = rx.await;
        }));
        // HTTPS with kiln's own CA, made on first start, and a certificate naming the loopback address.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = std::fs::read(kiln_http::tls::ca_path(&dir.path().join("data"))).unwrap();
        let client = reqwest::Client::builder()
            .tls_certs_only(reqwest::Certificate::from_pem_bundle(&ca).unwrap())
            .build()
            .unwrap();
        let body = client
            .get(format!("https://{addr}/healthz"))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        assert!(body.contains("\"status\":\"ok\""), "{body}");
        tx.send(()).unwrap();
        server.await.unwrap().unwrap();
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(admin_token_path(&dir.path().join("data")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
