//! `kiln-pxe-lab CONFIG.json HOSTS.json [HTTP_ADDR]`: the netboot services alone, with a static host table, for
//! labs, tests and benchmarks. Prints `READY <server-ip>` once every socket is bound; stops on SIGTERM or Ctrl-C.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::Context;
use kiln_pxe::{BootHost, MacAddr, PxeConfig, PxeCounters, StaticLookup};
use tokio_util::sync::CancellationToken;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args: Vec<String> = std::env::args().collect();
    let [_, cfg_path, hosts_path, rest @ ..] = args.as_slice() else {
        anyhow::bail!("usage: kiln-pxe-lab CONFIG.json HOSTS.json [HTTP_ADDR]");
    };
    let cfg: PxeConfig =
        serde_json::from_slice(&std::fs::read(cfg_path).context("read config")?).context("parse config")?;
    let hosts: HashMap<MacAddr, BootHost> =
        serde_json::from_slice(&std::fs::read(hosts_path).context("read hosts")?).context("parse hosts")?;
    let lookup = Arc::new(StaticLookup::new());
    for (mac, h) in hosts {
        lookup.insert(mac, h);
    }
    let counters = Arc::new(PxeCounters::default());
    let cancel = CancellationToken::new();
    let files = cfg.files_dir();
    let services = kiln_pxe::spawn(cfg, lookup.clone(), counters.clone(), cancel.clone()).await?;
    let mut http = None;
    if let Some(addr) = rest.first() {
        let listener = tokio::net::TcpListener::bind(addr.as_str())
            .await
            .context("bind http")?;
        let app = kiln_pxe::http::router(lookup.clone(), files, counters.clone());
        let c = cancel.clone();
        http = Some(tokio::spawn(async move {
            axum::serve(listener, app)
                .with_graceful_shutdown(async move { c.cancelled().await })
                .await
        }));
    }
    println!(
        "READY {}",
        services.server_ip.map(|i| i.to_string()).unwrap_or_default()
    );
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    cancel.cancel();
    services.wait().await?;
    if let Some(h) = http {
        h.await??;
    }
    eprintln!("counters: {:?}", counters.snapshot());
    eprintln!(
        "events: {}",
        serde_json::to_string(
            &lookup
                .events()
                .iter()
                .map(|(m, e)| (m.to_string(), e))
                .collect::<Vec<_>>()
        )?
    );
    Ok(())
}
