//! kiln-agent: runs inside the netboot ramdisk; inspects the host and writes images on the appliance's command.

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    tracing::info!(version = env!("CARGO_PKG_VERSION"), "kiln-agent starting");
    Ok(())
}
