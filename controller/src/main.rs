//! The `kiln` binary: parses the command line and hands over to the library.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use kiln::cli::{ClientArgs, HostCmd};
use kiln::server::{Appliance, Config};

#[derive(Parser)]
#[command(name = "kiln", version, about = "Bare-metal provisioning appliance")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the appliance (store, executor, REST API, agent API).
    Serve {
        /// Address of the HTTPS listener (REST API, web page, agent API, metrics).
        #[arg(long, env = "KILN_LISTEN", default_value = "127.0.0.1:8443")]
        listen: SocketAddr,
        /// Address of the plain-HTTP netboot listener (`/boot`, with `[pxe]`; default: `[pxe] http_base`'s).
        #[arg(long, env = "KILN_BOOT_LISTEN")]
        boot_listen: Option<SocketAddr>,
        /// Address of a separate HTTPS listener for the admin API (REST, web page, metrics), e.g. on the management
        /// network; `--listen` then serves only the agent API and virtual-media ISOs (the provisioning network).
        #[arg(long, env = "KILN_ADMIN_LISTEN")]
        admin_listen: Option<SocketAddr>,
        /// Run as the replica of this name, one of several sharing one PostgreSQL database (they divide the hosts by
        /// expiring leases); every replica needs the same secret.key and admin.token. See `[replica]` in the config.
        #[arg(long, env = "KILN_REPLICA")]
        replica: Option<String>,
        /// TOML config file.
        #[arg(long, env = "KILN_CONFIG")]
        config: Option<PathBuf>,
        /// Data directory (database, key, admin token); default ./kiln-data.
        #[arg(long, env = "KILN_DATA_DIR")]
        data_dir: Option<PathBuf>,
        /// postgres://... or sqlite:PATH (default: <data-dir>/kiln.db).
        #[arg(long, env = "KILN_DATABASE_URL")]
        database_url: Option<String>,
        /// URL agents reach kiln at (default: https://<listen>).
        #[arg(long, env = "KILN_API_URL")]
        api_url: Option<String>,
        /// Simulator mode: hosts with `fake://<name>` BMC addresses are simulated (fake BMC, firmware and agent);
        /// nothing real is powered or written. For trying kiln without hardware and for benchmarks.
        #[arg(long)]
        simulate: bool,
        /// Agent jobs running at once; more hosts wait as `delayed`.
        #[arg(long)]
        max_concurrent_jobs: Option<usize>,
        /// Also run the Kubernetes controllers (Metal3 BareMetalHost, Cluster API provider) with leader election.
        #[arg(long)]
        kube: bool,
        /// Kubeconfig for --kube (default: $KUBECONFIG, ~/.kube/config, or in-cluster).
        #[arg(long, requires = "kube")]
        kubeconfig: Option<PathBuf>,
        /// Log as JSON lines.
        #[arg(long)]
        log_json: bool,
    },
    /// Manage hosts (a client of a running `kiln serve`).
    Host {
        #[command(flatten)]
        client: ClientArgs,
        #[command(subcommand)]
        cmd: HostCmd,
    },
    /// Enroll Metal3 BareMetalHost manifests (with their credential Secrets) from a multi-document YAML file.
    /// All or none: every document is validated first (nothing is enrolled if one is refused). Hosts keep their
    /// manifest's `metadata.name` (the Kubernetes front-end, which must keep namespaces apart, uses
    /// `<namespace>.<name>`).
    Import {
        #[command(flatten)]
        client: ClientArgs,
        file: PathBuf,
        /// Validate every document and print what would happen to each host; enroll nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Talk to one BMC directly (debugging).
    Bmc(kiln::cli::bmc::BmcArgs),
    /// Work with OS images exactly as the agent would: write, inspect, build a config drive.
    Image(kiln::cli::image::ImageArgs),
    /// Build the agent ramdisk (kernel + initramfs with kiln-agent).
    #[command(subcommand)]
    Ramdisk(RamdiskCmd),
    /// Print the OpenAPI document of kiln's HTTP API (generated from its request and response types).
    Openapi,
    /// Print (or write to a directory) the CustomResourceDefinitions of kiln's Kubernetes kinds.
    Crds {
        /// Write one file per CRD into this directory instead of printing a multi-document YAML.
        #[arg(long)]
        out_dir: Option<PathBuf>,
    },
    /// Print the shell completion script (bash: `kiln completions bash > /etc/bash_completion.d/kiln`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write man pages (kiln.1 and one per subcommand, kiln-host-enroll.1, ...) into a directory.
    Man {
        #[arg(long)]
        out_dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum RamdiskCmd {
    /// Build `vmlinuz` + `initramfs` from the distribution's kernel package, busybox and a static kiln-agent.
    Build {
        /// The static kiln-agent binary (`cargo build --release -p kiln-agent --target x86_64-unknown-linux-gnu`
        /// with `-C target-feature=+crt-static`).
        #[arg(long)]
        agent_binary: PathBuf,
        /// Output directory.
        #[arg(long, default_value = "./kiln-data/boot")]
        out: PathBuf,
        /// Cache of the kernel package and its extracted modules.
        #[arg(long, default_value = "./kiln-data/ramdisk-cache")]
        cache: PathBuf,
        /// A PEM file of CA certificates the agent trusts besides this machine's system CAs (image servers and OCI
        /// registries behind a private CA); may be repeated.
        #[arg(long = "ca-file", value_name = "PEM")]
        ca_files: Vec<PathBuf>,
    },
}

#[tokio::main]
async fn main() {
    // One line per error, its causes joined with ": " (never a backtrace, whatever RUST_BACKTRACE says: the message
    // is for an operator; `RUST_LOG=debug` has the detail).
    if let Err(e) = run().await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}

async fn run() -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    let json_logs = matches!(cli.command, Command::Serve { log_json: true, .. });
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    if json_logs {
        tracing_subscriber::fmt().json().with_env_filter(filter).init();
    } else {
        // Colour only on a terminal, and never with NO_COLOR (https://no-color.org): logs piped to a file or a
        // journal carry no escape codes.
        let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
        tracing_subscriber::fmt()
            .with_env_filter(filter)
            .with_ansi(colour)
            .with_writer(std::io::stderr)
            .init();
    }
    match cli.command {
        Command::Serve {
            listen,
            boot_listen,
            admin_listen,
            replica,
            config,
            data_dir,
            database_url,
            api_url,
            max_concurrent_jobs,
            simulate,
            kube,
            kubeconfig,
            log_json: _,
        } => {
            let mut cfg = match config {
                Some(p) => Config::from_file(&p)?,
                None => Config::default(),
            };
            if let Some(d) = data_dir {
                cfg.data_dir = d;
            }
            if database_url.is_some() {
                cfg.database_url = database_url;
            }
            if api_url.is_some() {
                cfg.api_url = api_url;
            }
            if simulate {
                cfg.simulate = true;
            }
            if boot_listen.is_some() {
                cfg.boot_listen = boot_listen;
            }
            if admin_listen.is_some() {
                cfg.admin_listen = admin_listen;
            }
            if let Some(name) = replica {
                match &mut cfg.replica {
                    Some(r) => r.name = name,
                    None => cfg.replica = Some(kiln::server::ReplicaSettings::named(name)),
                }
            }
            if let Some(n) = max_concurrent_jobs {
                cfg.max_concurrent_jobs = n;
            }
            if kube {
                let k = cfg.kube.get_or_insert_default();
                if kubeconfig.is_some() {
                    k.kubeconfig = kubeconfig;
                }
            }
            // Real BMC drivers; the netboot services start inside run() when the config has a [pxe] section.
            let app = Appliance::open(cfg, Arc::new(kiln_engine::drivers::Drivers::default())).await?;
            // Bound after the data directory is ready, so a client that can connect finds the token file.
            let listener = tokio::net::TcpListener::bind(listen).await?;
            let addr = listener.local_addr()?;
            match &app.ca_pin {
                Some(pin) => tracing::info!(
                    %addr,
                    store = app.store.backend(),
                    ca = %kiln_http::tls::ca_path(&app.config.data_dir).display(),
                    %pin,
                    "kiln serving HTTPS with its own CA"
                ),
                None => tracing::info!(%addr, store = app.store.backend(), "kiln serving HTTPS"),
            }
            kiln::server::run(app, listener, shutdown_signal()).await?;
            tracing::info!("kiln stopped");
        }
        Command::Host { client, cmd } => kiln::cli::host(&client, cmd).await?,
        Command::Import { client, file, dry_run } => kiln::cli::import(&client, &file, dry_run).await?,
        Command::Image(args) => kiln::cli::image::run(args).await?,
        Command::Ramdisk(RamdiskCmd::Build {
            agent_binary,
            out,
            cache,
            ca_files,
        }) => {
            let mut spec = kiln_images::ramdisk::RamdiskSpec::new(agent_binary, cache, out);
            for f in &ca_files {
                let pem = anyhow::Context::with_context(std::fs::read(f), || format!("--ca-file {}", f.display()))?;
                let n = kiln_images::ramdisk::count_ca_certificates(&pem)
                    .map_err(|e| anyhow::anyhow!("--ca-file {}: {e}", f.display()))?;
                println!("trusting {n} extra CA certificate(s) from {}", f.display());
                spec.extra_ca_pem.extend_from_slice(&pem);
                if !spec.extra_ca_pem.ends_with(b"\n") {
                    spec.extra_ca_pem.push(b'\n');
                }
            }
            let r = tokio::task::spawn_blocking(move || kiln_images::ramdisk::build(&spec)).await??;
            println!(
                "kernel {} ({})\ninitramfs {}\n{} bytes in all{}",
                r.kernel.display(),
                r.kernel_version,
                r.initramfs.display(),
                r.bytes,
                if r.cached { " (unchanged inputs: reused)" } else { "" }
            );
            if let Some(p) = &r.bios_loader {
                println!(
                    "virtual-media BIOS loader {} ([virtual_media] bios_loader)",
                    p.display()
                );
            }
            match &r.efi_loader {
                Some(p) => println!("virtual-media loader {} ([virtual_media] efi_loader)", p.display()),
                None => println!(
                    "no virtual-media loader: GRUB's EFI modules are not installed in {} (Debian: grub-efi-amd64-bin); \
                     netboot is not affected",
                    kiln_images::ramdisk::GRUB_EFI_MODULES
                ),
            }
        }
        Command::Openapi => print!("{}", kiln_http::openapi::document_text()),
        Command::Completions { shell } => {
            use clap::CommandFactory;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "kiln", &mut script);
            use std::io::Write;
            match std::io::stdout().write_all(&script) {
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                r => r?,
            }
        }
        Command::Man { out_dir } => {
            use clap::CommandFactory;
            std::fs::create_dir_all(&out_dir)?;
            let n = write_man_pages(&Cli::command(), "kiln", &out_dir)?;
            println!("{n} man pages in {}", out_dir.display());
        }
        Command::Crds { out_dir } => match out_dir {
            Some(dir) => kiln_kube::crds::write_crds(&dir)?,
            None => print!("{}", kiln_kube::crds::crds_yaml()),
        },
        Command::Bmc(args) => {
            if let Err(e) = kiln::cli::bmc::run(args).await {
                eprintln!("error: {e:#}");
                std::process::exit(kiln::cli::bmc::exit_code(&e));
            }
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

/// Writes the man page of `cmd` as `<name>.1` and recurses into its subcommands (`kiln-host-enroll.1`); returns
/// how many pages were written.
fn write_man_pages(cmd: &clap::Command, name: &str, dir: &std::path::Path) -> std::io::Result<usize> {
    let cmd = cmd.clone().name(name.to_owned());
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone()).render(&mut page)?;
    std::fs::write(dir.join(format!("{name}.1")), page)?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
        n += write_man_pages(sub, &format!("{name}-{}", sub.get_name()), dir)?;
    }
    Ok(n)
}
