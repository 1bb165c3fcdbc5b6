//! Starting and stopping the netboot services: validates the config, stages the iPXE binaries, binds every socket
//! (so a bad interface or a busy port is a start-up error), then runs DHCP and TFTP in a `JoinSet` until cancelled.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::Arc;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::clients::ClientMap;
use crate::config::{DhcpMode, PxeConfig};
use crate::counters::PxeCounters;
use crate::dhcp::DhcpServer;
use crate::dhcp::server::iface_ipv4;
use crate::error::PxeError;
use crate::lookup::HostLookup;

/// Running netboot services.
pub struct PxeServices {
    tasks: JoinSet<(&'static str, Result<(), PxeError>)>,
    /// Counters to render.
    pub counters: Arc<PxeCounters>,
    /// Our address (server identifier / next-server), when DHCP or TFTP runs.
    pub server_ip: Option<Ipv4Addr>,
    /// Where TFTP listens, when enabled.
    pub tftp_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for PxeServices {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PxeServices")
            .field("server_ip", &self.server_ip)
            .field("tftp_addr", &self.tftp_addr)
            .finish_non_exhaustive()
    }
}

impl PxeServices {
    /// Waits for every task to stop (after cancellation); the first failure wins.
    ///
    /// # Errors
    /// The error a task ended with, or [`PxeError::Task`] for a panic.
    pub async fn wait(mut self) -> Result<(), PxeError> {
        let mut first = Ok(());
        while let Some(r) = self.tasks.join_next().await {
            let r = match r {
                Ok((_, r)) => r,
                Err(_) => Err(PxeError::Task { task: "netboot" }),
            };
            if let Err(e) = r {
                tracing::error!(error = &e as &dyn std::error::Error, "netboot task failed");
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }
}

/// Copies the configured iPXE binaries from `ipxe_dir` into `files_dir` (following the package's symlinks, so the
/// served tree holds plain files). The BIOS and x86-64 EFI binaries are required; arm64 only if present.
///
/// # Errors
/// [`PxeError::Stage`] when a required binary is missing or cannot be copied.
pub fn stage_boot_files(cfg: &PxeConfig) -> Result<(), PxeError> {
    let dst = cfg.files_dir();
    std::fs::create_dir_all(&dst).map_err(|source| PxeError::Stage {
        path: dst.clone(),
        source,
    })?;
    for (name, required) in [
        (&cfg.boot.bios, true),
        (&cfg.boot.efi_x64, true),
        (&cfg.boot.efi_arm64, false),
    ] {
        let from = cfg.boot.ipxe_dir.join(name);
        let to = dst.join(name);
        if !from.exists() {
            if required {
                return Err(PxeError::Stage {
                    path: from,
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
            continue;
        }
        if same_size(&from, &to) {
            continue;
        }
        let tmp = dst.join(format!(".{name}.tmp"));
        std::fs::copy(&from, &tmp).map_err(|source| PxeError::Stage {
            path: from.clone(),
            source,
        })?;
        std::fs::rename(&tmp, &to).map_err(|source| PxeError::Stage {
            path: to.clone(),
            source,
        })?;
    }
    Ok(())
}

fn same_size(a: &Path, b: &Path) -> bool {
    matches!((std::fs::metadata(a), std::fs::symlink_metadata(b)), (Ok(x), Ok(y)) if y.is_file() && x.len() == y.len())
}

/// Starts DHCP (unless off) and TFTP (if enabled), bound and ready when this returns.
///
/// # Errors
/// Invalid configuration, missing interface or address, busy ports, missing iPXE binaries.
pub async fn spawn(
    cfg: PxeConfig,
    lookup: Arc<dyn HostLookup>,
    counters: Arc<PxeCounters>,
    cancel: CancellationToken,
) -> Result<PxeServices, PxeError> {
    cfg.validate()?;
    stage_boot_files(&cfg)?;
    let needs_ip = cfg.dhcp.mode != DhcpMode::Off || cfg.tftp.enabled;
    let server_ip = match (cfg.dhcp.server_addr, needs_ip) {
        (Some(ip), _) => Some(ip),
        (None, true) if !cfg.dhcp.interface.is_empty() => Some(iface_ipv4(&cfg.dhcp.interface)?),
        (None, true) => {
            return Err(PxeError::Config {
                reason: "TFTP needs dhcp.server_addr or dhcp.interface".into(),
            });
        }
        (None, false) => None,
    };
    let cfg = Arc::new(cfg);
    let mut tasks = JoinSet::new();
    let mut tftp_addr = None;
    let clients = Arc::new(ClientMap::default());
    if cfg.tftp.enabled
        && let Some(ip) = server_ip
    {
        let (addr, fut) = crate::tftp::bind(
            SocketAddr::from((ip, cfg.tftp.port)),
            cfg.files_dir(),
            counters.clone(),
            Some(crate::tftp::TftpEvents {
                lookup: lookup.clone(),
                clients: clients.clone(),
            }),
            cancel.clone(),
        )
        .await?;
        tftp_addr = Some(addr);
        tasks.spawn(async move { ("tftp", fut.await) });
    }
    if cfg.dhcp.mode != DhcpMode::Off
        && let Some(ip) = server_ip
    {
        let server = DhcpServer::bind(cfg.clone(), ip, lookup, counters.clone(), clients)?;
        let c = cancel.clone();
        tasks.spawn(async move { ("dhcp", server.run(c).await) });
    }
    tracing::info!(mode = ?cfg.dhcp.mode, iface = %cfg.dhcp.interface, server = ?server_ip, tftp = ?tftp_addr, "netboot services started");
    Ok(PxeServices {
        tasks,
        counters,
        server_ip,
        tftp_addr,
    })
}

/// Runs the services until `cancel` fires: [`spawn`] then [`PxeServices::wait`].
///
/// # Errors
/// As [`spawn`], or the first task failure.
pub async fn run(
    cfg: PxeConfig,
    lookup: Arc<dyn HostLookup>,
    counters: Arc<PxeCounters>,
    cancel: CancellationToken,
) -> Result<(), PxeError> {
    spawn(cfg, lookup, counters, cancel).await?.wait().await
}
