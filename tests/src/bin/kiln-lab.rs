//! `kiln-lab`: the lab for humans. `demo` starts the lab (VMs behind Redfish and IPMI emulators) and `kiln serve`,
//! prints what to do next and keeps everything running until Ctrl-C; `clean` removes what a killed run left behind.

use clap::{Parser, Subcommand};
use kiln_tests::{
    lab::{BmcKind, Lab},
    qemu::VmSpec,
};

#[derive(Parser)]
#[command(name = "kiln-lab", about = "kiln's lab: network namespace, QEMU VMs, BMC emulators")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the lab and `kiln serve`; stop and clean up on Ctrl-C.
    Demo {
        /// Host port the kiln API and web page are forwarded to.
        #[arg(long, default_value_t = 8080)]
        port: u16,
    },
    /// Clean up namespaces, processes and domains left by a lab that was killed.
    Clean,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Clean => {
            kiln_tests::state::reap_stale();
            println!("kiln-lab: nothing left behind");
        }
        Cmd::Demo { port } => demo(port)?,
    }
    Ok(())
}

fn demo(port: u16) -> anyhow::Result<()> {
    let signals = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    println!("kiln-lab: starting the lab (network namespace, libvirtd, sushy-tools, ipmi_sim)...");
    let vms = [
        (VmSpec::new("node-0", "52:54:00:99:00:10"), BmcKind::Redfish),
        (VmSpec::new("node-1", "52:54:00:99:00:11").uefi(), BmcKind::Redfish),
        (VmSpec::new("node-2", "52:54:00:99:00:12"), BmcKind::Ipmi),
    ];
    let mut lab = Lab::start("demo", &vms)?;
    let url = lab.start_kiln(&[], Some(port))?;
    println!();
    println!("kiln is serving at {url}  (health: {url}/healthz)");
    println!(
        "lab namespace {} with bridge br0 10.99.0.1/24; logs in {}",
        lab.ns.name(),
        lab.logs.path().display()
    );
    println!();
    println!("{:<8} {:<8} {:<6} {:<19} BMC", "HOST", "FIRMWARE", "BMC", "BOOT MAC");
    for h in &lab.hosts {
        println!(
            "{:<8} {:<8} {:<6} {:<19} {}",
            h.name,
            format!("{:?}", h.firmware),
            format!("{:?}", h.bmc),
            h.mac,
            h.bmc_address
        );
    }
    println!();
    println!(
        "BMC credentials: {} / (see tests/src/ipmi.rs); the BMC addresses are reachable inside the namespace,",
        kiln_tests::ipmi::USERNAME
    );
    println!(
        "so run admin commands there:  ip netns exec {} <command>",
        lab.ns.name()
    );
    println!();
    println!("Press Ctrl-C to stop and clean up.");
    signals.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => r,
            _ = term.recv() => Ok(()),
        }
    })?;
    println!("\nkiln-lab: stopping kiln, the VMs and the emulators...");
    if !lab.kiln_running() {
        eprintln!(
            "kiln-lab: note: kiln serve had exited; see {}",
            lab.logs.file("kiln.log").display()
        );
    }
    drop(lab);
    println!("kiln-lab: clean.");
    Ok(())
}
