//! End to end, as an operator sees it: a lab VM behind a real BMC emulator is enrolled (with `kiln host enroll`, or
//! with `kiln import` of a Metal3 `BareMetalHost` manifest and its credentials `Secret`), registers and is inspected (it netboots the agent ramdisk from kiln's own DHCP/TFTP/HTTP), becomes available,
//! is provisioned with the debootstrapped Debian test image and user data, boots that OS from its disk, and its
//! cloud-init runs the user data, which calls back to an HTTP endpoint of the test (where a kubeadm or RKE2 join would
//! run). Then it is deprovisioned and available again, with a disk that no longer boots, or, for the manifest that says
//! `automatedCleaningMode: disabled`, with the written OS's partition table intact.
//!
//! Everything runs inside the lab's private namespace: kiln serve (DHCP full mode on the lab bridge), the BMC
//! emulators, the VMs, and the CLI. Logs (serial consoles, kiln, emulators) are kept under target/lab-logs/; the VM
//! disk images of a passing run are deleted.
//!
//! Both hosts are enrolled without a boot MAC, as Metal3 allows, and cover both firmware kinds and both BMC
//! protocols: a UEFI host behind Redfish (imported from a Metal3 manifest without `bootMACAddress`: kiln reads its NICs
//! from sushy-tools' EthernetInterfaces; qcow2 image served over HTTP) and a BIOS host behind IPMI (enrolled with the CLI without a boot
//! MAC, as Metal3 allows: the VM network-boots from a MAC kiln does not know, its agent reads the BMC's address
//! in-band from the VM's KCS interface wired to the same ipmi_sim, and kiln binds the boot to the host with that BMC;
//! raw.zst image pulled by `oci://` reference from a real registry, Debian's `docker-registry`, with Basic
//! authentication, the credentials given as a docker config file).

use std::time::{Duration, Instant};

use kiln_tests::{
    lab::{BmcKind, Lab, target_bin},
    operator::{
        Bmh, Callback, Cli, SERVER, enroll_without_boot_mac, import_bmh, kiln_config_with, provision_and_run_user_data,
        stage_files, vm,
    },
    osimage::OsImage,
    qemu::{Firmware, VmSpec},
    registry::{self, Registry},
};

/// Where the lab's registry listens, inside the lab's namespace.
const REGISTRY_PORT: u16 = 5000;

/// Where the image comes from.
#[derive(Debug, Clone, Copy)]
enum Source {
    /// A file kiln serves over HTTP, with its checksum.
    Http(&'static str),
    /// The file pushed to a registry in the lab (Basic authentication) and provisioned as `oci://`.
    Registry(&'static str),
}

/// Pushes `file` of the OS image to a registry serving `dir` (through one on loopback, which the test reaches), then
/// serves that registry inside the lab's namespace on the server's address. Returns the `oci://` reference, the
/// registry and the docker config file with its credentials.
fn lab_registry(lab: &Lab, os: &OsImage, file: &str) -> anyhow::Result<(String, Registry, std::path::PathBuf)> {
    let dir = lab.dir.join("registry");
    let (user, password) = ("kiln-puller", "lab-registry-pw");
    let htpasswd = registry::htpasswd(&dir, &[(user, password)])?;
    let data = std::fs::read(os.dir.join(file))?;
    let repo_tag = format!("kiln/debian:{}", file.replace('.', "-"));
    {
        let local = Registry::on_loopback(&dir, &registry::htpasswd_auth(&htpasswd))?;
        let auth = oci_client::secrets::RegistryAuth::Basic(user.into(), password.into());
        let rt = tokio::runtime::Runtime::new()?;
        let digest = rt.block_on(registry::push_disk_image(
            &local.host,
            &repo_tag,
            data,
            file,
            "raw",
            &auth,
        ))?;
        println!("pushed {file} as {repo_tag} ({digest})");
    }
    let listen = format!("{SERVER}:{REGISTRY_PORT}");
    let mut command = lab.ns.command(registry::PROGRAM);
    command.env_remove("HTTP_PROXY");
    let probe = lab.ns.name().to_owned();
    let url = format!("http://{listen}/v2/");
    let served = Registry::start(command, &dir, &listen, &registry::htpasswd_auth(&htpasswd), move || {
        std::process::Command::new("ip")
            .args(["netns", "exec", &probe, "curl", "-s", "-o", "/dev/null", &url])
            .status()
            .is_ok_and(|s| s.success())
    })?;
    lab.record.add_pid(served.pid());
    let config = lab.dir.join("docker-config.json");
    std::fs::write(&config, registry::docker_config(&listen, user, password))?;
    Ok((format!("oci://{listen}/{repo_tag}"), served, config))
}

/// How the operator tells kiln about the host.
#[derive(Debug, Clone, Copy)]
enum Enrollment {
    /// With the CLI, without `--boot-mac` (the other lab tests enroll with it).
    CliWithoutBootMac,
    Metal3Manifest,
}

fn full_lifecycle(spec: VmSpec, kind: BmcKind, how: Enrollment, source: Source) -> anyhow::Result<()> {
    let os = OsImage::get()?;
    let mut lab = Lab::start(&format!("e2e-{}", spec.name), &[(spec, kind)])?;
    let files = stage_files(&lab, &os)?;
    let (image, registry, extra, settings) = match source {
        Source::Http(file) => (file.to_owned(), None, vec![], String::new()),
        Source::Registry(file) => {
            let (reference, registry, auth) = lab_registry(&lab, &os, file)?;
            (
                reference,
                Some(registry),
                vec!["--registry-auth".to_owned(), auth.display().to_string()],
                // The lab's registry speaks plain HTTP.
                format!("insecure_registries = [\"{SERVER}:{REGISTRY_PORT}\"]"),
            )
        }
    };
    let config = kiln_config_with(&lab, &files, &settings)?;
    lab.start_kiln(&["--config", &config.display().to_string()], None)?;
    let cli = Cli {
        lab: &lab,
        kiln: target_bin("kiln")?,
    };
    let callback = Callback::start(&lab)?;
    let host = lab.hosts[0].clone();

    let started = Instant::now();
    // 1. Enroll -> registering -> inspecting (the VM netboots the agent) -> available, powered off (or on again when
    //    the manifest says `online: true`).
    match how {
        Enrollment::CliWithoutBootMac => enroll_without_boot_mac(&cli, &lab, &host)?,
        Enrollment::Metal3Manifest => {
            // Without bootMACAddress, as Metal3 allows: kiln reads the NICs from sushy-tools' EthernetInterfaces.
            // And with cleaning disabled: the deprovisioned disk must keep its data.
            let bmh = Bmh {
                online: true,
                no_boot_mac: true,
                spec: "  automatedCleaningMode: disabled\n",
                ..Bmh::default()
            };
            let manifest = import_bmh(&cli, &lab, &host, &bmh)?;
            println!("imported {}", manifest.display());
        }
    }
    let h = cli.wait_state(&host.name, "available", Duration::from_secs(600))?;
    let inspect_secs = started.elapsed().as_secs();
    match how {
        Enrollment::CliWithoutBootMac => {
            assert_eq!(h["host"]["power"], "off", "an available host is powered off: {h}");
            // Bound by its BMC's address, and known by its MAC from then on.
            let events = cli.events(&host.name)?;
            let bound = events
                .iter()
                .find(|e| e["kind"] == "discovered")
                .ok_or_else(|| anyhow::anyhow!("no discovered event: {events:?}"))?;
            println!("{}", bound["message"]);
        }
        Enrollment::Metal3Manifest => {
            // The manifest says `online: true`: as with Metal3, the available host is powered (back) on.
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let h = cli.host(&host.name)?;
                if h["host"]["power"] == "on" {
                    break;
                }
                anyhow::ensure!(Instant::now() < deadline, "online: true did not power the host on: {h}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
    // Enrolled without a boot MAC either way: known by the MACs learned (from the BMC, or by the discovery boot).
    let learned = h["host"]["learned_macs"].as_array().cloned().unwrap_or_default();
    assert!(
        learned
            .iter()
            .any(|m| m.as_str().is_some_and(|m| m.eq_ignore_ascii_case(&host.mac))),
        "the boot NIC's MAC is not learned: {h}"
    );
    let inventory = cli.inspection(&host.name)?;
    println!("inventory: {inventory}");
    let inv = &inventory["inventory"];
    assert_eq!(inv["cpu"]["count"], 1, "the VM has one CPU");
    let mem = inv["memory_mib"].as_u64().unwrap_or(0);
    assert!((900..=1024).contains(&mem), "the VM has 1024 MiB, inventory says {mem}");
    let disks = inv["disks"].as_array().cloned().unwrap_or_default();
    assert!(
        disks.iter().any(|d| d["size_bytes"] == 5120u64 * 1024 * 1024),
        "no 5 GiB disk: {disks:?}"
    );
    let nics = inv["nics"].as_array().cloned().unwrap_or_default();
    assert!(
        nics.iter()
            .any(|n| n["mac"].as_str().is_some_and(|m| m.eq_ignore_ascii_case(&host.mac))),
        "boot MAC missing: {nics:?}"
    );

    // 2. Provision the Debian image with user data that calls back to the test.
    let extra: Vec<&str> = extra.iter().map(String::as_str).collect();
    let provision_secs = provision_and_run_user_data(&cli, &host, &os, &image, &callback, &extra)?;
    let h = cli.host(&host.name)?;
    // The oci:// reference itself, or the URL kiln serves the lab's file at.
    let url = h["host"]["image"]["url"].as_str().unwrap_or_default();
    assert!(url == image || url.ends_with(&format!("/{image}")), "{h}");
    let want_mode = match host.firmware {
        Firmware::Bios => "legacy",
        Firmware::Uefi => "uefi",
    };
    assert_eq!(h["host"]["boot_mode"], want_mode, "{h}");
    cli.run(&["host", "show", &host.name])?;

    // 3. Deprovision -> available; the disk no longer boots (its partition tables are gone), unless the manifest said
    //    `automatedCleaningMode: disabled`: then the written OS is left exactly as it was.
    let deprovision_started = Instant::now();
    cli.run(&["host", "deprovision", &host.name])?;
    cli.wait_state(&host.name, "available", Duration::from_secs(600))?;
    println!(
        "{} by PXE: inspection {inspect_secs} s, provisioning {provision_secs} s, deprovisioning {} s (from the \
         request to the state)",
        host.name,
        deprovision_started.elapsed().as_secs()
    );
    let mut head = vec![0u8; 1024];
    use std::io::Read;
    std::fs::File::open(&host.disks[0])?.read_exact(&mut head)?;
    let partitioned = head[510..512] == [0x55, 0xaa] || &head[512..520] == b"EFI PART";
    match how {
        Enrollment::CliWithoutBootMac => assert!(!partitioned, "the deprovisioned disk still has a partition table"),
        Enrollment::Metal3Manifest => {
            assert!(
                partitioned,
                "cleaning was disabled, yet the disk lost its partition table"
            );
            // Straight to available, no agent booted to erase anything.
            let events = cli.events(&host.name)?;
            assert!(
                events.iter().any(|e| e["kind"] == "state"
                    && e["message"]
                        .as_str()
                        .is_some_and(|m| m.starts_with("provisioned -> available") && m.contains("cleaning disabled"))),
                "{events:?}"
            );
        }
    }
    drop(callback);
    drop(registry);
    lab.finish()
}

#[test]
fn redfish_uefi_host_import_inspect_provision_qcow2_deprovision() -> anyhow::Result<()> {
    full_lifecycle(
        vm("e2e-rf", "52:54:00:99:00:31").uefi(),
        BmcKind::Redfish,
        Enrollment::Metal3Manifest,
        Source::Http("debian.qcow2"),
    )
}

#[test]
fn ipmi_bios_host_without_boot_mac_discovered_inspect_provision_raw_zst_from_oci_registry_deprovision()
-> anyhow::Result<()> {
    full_lifecycle(
        vm("e2e-ipmi", "52:54:00:99:00:32"),
        BmcKind::Ipmi,
        Enrollment::CliWithoutBootMac,
        Source::Registry("debian.raw.zst"),
    )
}
