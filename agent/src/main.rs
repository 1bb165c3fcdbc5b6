//! The kiln-agent binary: reads the boot parameters from `/proc/cmdline`, sets up logging, and runs the heartbeat
//! loop. Networking is already up (the ramdisk's `/init` ran udhcpc); when this returns, `/init` powers off.

use std::path::PathBuf;
use std::sync::Arc;

use kiln_agent::api::{ApiClient, Backoff};
use kiln_agent::console::LogTail;
use kiln_agent::exec::{self, Agent};
use kiln_agent::{cmdline, error::chain};

fn main() -> std::process::ExitCode {
    let log = LogTail::default();
    log.marker("start");
    // `KILN_AGENT_CMDLINE` lets a developer run the agent on a workstation; the ramdisk uses /proc/cmdline.
    let text = std::env::var("KILN_AGENT_CMDLINE")
        .or_else(|_| std::fs::read_to_string("/proc/cmdline"))
        .unwrap_or_default();
    let cfg = match cmdline::parse_cmdline(&text) {
        Ok(c) => c,
        Err(e) => {
            log.marker("fatal cmdline");
            eprintln!("kiln-agent: {}", chain(&e));
            return std::process::ExitCode::from(2);
        }
    };
    let level = if cfg.debug { "debug" } else { "info" };
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(level))
        .with_ansi(false)
        .with_writer(log.clone())
        .init();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), api = %cfg.api, mac = ?cfg.mac.map(|m| m.to_string()), "kiln-agent starting");
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kiln-agent: starting the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let mut api = ApiClient::with_ca(cfg.api.clone(), cfg.token.clone(), Backoff::default(), cfg.ca)?;
        if cfg.token.is_none() {
            discover(&mut api, &cfg, &log).await?;
        }
        let agent = Arc::new(Agent {
            api,
            root: PathBuf::from("/"),
            log: log.clone(),
        });
        exec::run(agent).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %chain(&e), "agent stopped");
            log.marker(&format!("fatal {}", e.kind()));
            std::process::ExitCode::FAILURE
        }
    }
}

/// A discovery boot (`kiln.discover=1`: a host enrolled without a boot MAC that netbooted from a MAC kiln did not
/// know): reports its NICs and the addresses its BMC gives in-band, and waits until kiln binds it to the host with
/// that BMC and hands over the boot's token.
async fn discover(api: &mut ApiClient, cfg: &cmdline::BootConfig, log: &LogTail) -> Result<(), kiln_agent::AgentError> {
    use kiln_agent::{bmc_lan, inspect};
    log.marker("discover");
    let Some(boot_mac) = cfg.mac else {
        return Err(kiln_agent::AgentError::Cmdline {
            reason: "kiln.discover=1 needs kiln.mac=".into(),
        });
    };
    let macs = inspect::read_nics(std::path::Path::new("/"), &Default::default())
        .iter()
        .filter_map(|n| n.mac.parse().ok())
        .collect();
    let bmc_addresses = tokio::task::spawn_blocking(|| bmc_lan::bmc_addresses(std::time::Duration::from_secs(20)))
        .await
        .unwrap_or_default();
    tracing::info!(%boot_mac, ?bmc_addresses, "discovery boot: asking kiln which host this is");
    let host = api
        .discover(&kiln_images::protocol::Discover {
            boot_mac,
            macs,
            bmc_addresses,
            agent_version: env!("CARGO_PKG_VERSION").into(),
        })
        .await?;
    tracing::info!(host, "bound by BMC address");
    log.marker("discovered");
    Ok(())
}
