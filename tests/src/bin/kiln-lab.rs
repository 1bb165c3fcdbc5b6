//! `kiln-lab`: the lab for humans. `demo` starts the lab (VMs behind Redfish and IPMI emulators) and `kiln serve`
//! with its netboot services on the lab bridge, enrolls the VMs, provisions them with the Debian test image while
//! showing their states, prints the per-phase timing tables, and keeps everything running until Ctrl-C; `clean`
//! removes what a killed run left behind.

use clap::{Parser, Subcommand};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use kiln_tests::{
    lab::{BmcKind, Lab, target_bin},
    operator::{Cli as KilnCli, enroll, kiln_config, stage_files, vm},
    osimage::OsImage,
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
        #[arg(long, default_value_t = 8443)]
        port: u16,
        /// Only start the lab and kiln; enroll and provision nothing.
        #[arg(long)]
        no_provision: bool,
    },
    /// Clean up namespaces, processes and domains left by a lab that was killed, and the disk images of finished runs.
    Clean,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Clean => {
            kiln_tests::state::reap_stale();
            let (runs, freed) = kiln_tests::logs::prune_finished_runs()?;
            println!(
                "kiln-lab: nothing left behind; disk images of {runs} finished runs removed ({} MiB), logs kept in {}",
                freed >> 20,
                kiln_tests::logs::base_dir().display()
            );
        }
        Cmd::Demo { port, no_provision } => demo(port, no_provision)?,
    }
    Ok(())
}

/// Set by Ctrl-C or SIGTERM; every wait checks it so the lab is always torn down through its destructors.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

fn watch_signals() -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    // Registering the handlers here replaces the default action (exit) for the whole process.
    let mut term = rt.block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) })?;
    let mut int = rt.block_on(async { tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt()) })?;
    std::thread::spawn(move || {
        rt.block_on(async {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
        });
        INTERRUPTED.store(true, Ordering::SeqCst);
    });
    Ok(())
}

fn interrupted() -> anyhow::Result<()> {
    anyhow::ensure!(!INTERRUPTED.load(Ordering::SeqCst), "interrupted");
    Ok(())
}

fn demo(port: u16, no_provision: bool) -> anyhow::Result<()> {
    watch_signals()?;
    println!("kiln-lab: building or reusing the Debian test image and the agent ramdisk (slow only the first time)...");
    let os = OsImage::get()?;
    println!("kiln-lab: starting the lab (network namespace, libvirtd, sushy-tools, ipmi_sim)...");
    let vms = [
        (vm("node-0", "52:54:00:99:00:10"), BmcKind::Redfish),
        (vm("node-1", "52:54:00:99:00:11"), BmcKind::Redfish),
        (vm("node-2", "52:54:00:99:00:12"), BmcKind::Ipmi),
    ];
    let mut lab = Lab::start("demo", &vms)?;
    let files = stage_files(&lab, &os)?;
    let config = kiln_config(&lab, &files)?;
    let url = lab.start_kiln(&["--config", &config.display().to_string()], Some(port))?;
    println!();
    println!("kiln is serving at {url}  (health: {url}/healthz, metrics: {url}/metrics)");
    println!(
        "its own CA (trust it in your browser, or curl --cacert): {}",
        kiln_tests::lab_ca(&lab.kiln_data())
    );
    println!(
        "web page: {url}/ui  (admin token: {})",
        lab.kiln_data().join("admin.token").display()
    );
    println!(
        "lab namespace {} with bridge br0 10.99.0.1/24; logs in {}",
        lab.ns.name(),
        lab.logs.path().display()
    );
    println!();
    println!("{:<8} {:<8} {:<7} {:<19} BMC", "HOST", "FIRMWARE", "BMC", "BOOT MAC");
    for h in &lab.hosts {
        println!(
            "{:<8} {:<8} {:<7} {:<19} {}",
            h.name,
            format!("{:?}", h.firmware),
            format!("{:?}", h.bmc),
            h.mac,
            h.bmc_address
        );
    }
    println!();
    let token = lab.kiln_data().join("admin.token");
    println!("CLI (the BMCs are reachable inside the namespace, so run it there):");
    println!(
        "  ip netns exec {} env KILN_SERVER=https://10.99.0.1:8443 KILN_TOKEN_FILE={} {} host list",
        lab.ns.name(),
        token.display(),
        target_bin("kiln")?.display()
    );
    println!();
    if !no_provision && let Err(e) = provision_all(&lab, &os) {
        eprintln!("kiln-lab: {e:#}");
    }
    if !INTERRUPTED.load(Ordering::SeqCst) {
        println!("Press Ctrl-C to stop and clean up.");
    }
    while !INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(200));
    }
    println!("\nkiln-lab: stopping kiln, the VMs and the emulators...");
    if !lab.kiln_running() {
        eprintln!(
            "kiln-lab: note: kiln serve had exited; see {}",
            lab.logs.file("kiln.log").display()
        );
    }
    // The demo's VM disks are gigabytes; its logs stay for reading afterwards.
    lab.finish()?;
    println!("kiln-lab: clean.");
    Ok(())
}

/// Enrolls every lab host, waits for inspection, provisions them all with the Debian image, and shows the timing.
fn provision_all(lab: &Lab, os: &OsImage) -> anyhow::Result<()> {
    let cli = KilnCli {
        lab,
        kiln: target_bin("kiln")?,
    };
    for h in &lab.hosts {
        enroll(&cli, lab, h)?;
    }
    wait_all(&cli, lab, "available", Duration::from_secs(900))?;
    let user_data = lab.dir.join("demo-user-data");
    std::fs::write(
        &user_data,
        "#!/bin/sh\necho \"kiln demo: $(hostname) is up; a kubeadm join would run here\" > /dev/ttyS0\n",
    )?;
    let checksum = format!("sha256:{}", os.sha256("debian.qcow2")?);
    for h in &lab.hosts {
        cli.run(&[
            "host",
            "provision",
            &h.name,
            "--image",
            "http://10.99.0.1:8080/boot/files/debian.qcow2",
            "--checksum",
            &checksum,
            "--user-data",
            &user_data.display().to_string(),
        ])?;
    }
    wait_all(&cli, lab, "provisioned", Duration::from_secs(1800))?;
    for h in &lab.hosts {
        cli.run(&["host", "show", &h.name])?;
    }
    Ok(())
}

/// Prints every state change of every lab host until all reach `state`.
fn wait_all(cli: &KilnCli, lab: &Lab, state: &str, timeout: Duration) -> anyhow::Result<()> {
    let start = Instant::now();
    let mut last: Vec<String> = vec![String::new(); lab.hosts.len()];
    loop {
        let mut done = true;
        for (i, h) in lab.hosts.iter().enumerate() {
            let v = cli.host(&h.name)?;
            let s = v["host"]["state"].as_str().unwrap_or_default().to_owned();
            if s != last[i] {
                println!("[{:>6.1}s] {:<8} {s}", start.elapsed().as_secs_f32(), h.name);
                last[i] = s.clone();
            }
            if s == "error" {
                anyhow::bail!("{} failed: {}", h.name, v["host"]["error"]);
            }
            done &= s == state;
        }
        if done {
            return Ok(());
        }
        interrupted()?;
        anyhow::ensure!(start.elapsed() < timeout, "hosts not {state} after {timeout:?}");
        std::thread::sleep(Duration::from_secs(2));
    }
}
