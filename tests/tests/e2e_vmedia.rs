//! Virtual-media provisioning with no DHCP anywhere, as a Metal3 user with `redfish-virtualmedia://` hosts has it: a
//! UEFI VM behind sushy-tools' libvirt driver (which implements Redfish virtual media on libvirt) is imported from a
//! Metal3 manifest with `preprovisioningNetworkDataName`, on a bridge where kiln's DHCP is off. kiln builds one ISO
//! per boot (GRUB, the agent ramdisk, the boot's token and the static address), the BMC fetches it from kiln's HTTPS
//! listener, and the agent inspects the host; then the Debian image is written with user data and static network
//! data, the OS boots and its cloud-init calls back to the test; then the host is deprovisioned. A listener on the
//! bridge's DHCP server port counts every DHCP packet on the segment: there must be none.

use std::io::Read;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use kiln_tests::{
    lab::{BmcKind, Lab, target_bin},
    operator::{
        Bmh, Callback, Cli, SERVER, bmh_manifest, import_manifests, provision_and_run_user_data, stage_files, vm,
    },
    osimage::OsImage,
    qemu::read_console,
    ramdisk,
};

const HOST_IP: &str = "10.99.0.50";
const BIOS_HOST_IP: &str = "10.99.0.51";

/// A Metal3 manifest for `host` behind its virtual-media address, with the ramdisk's static address `ip` in a
/// preprovisioningNetworkDataName Secret.
fn manifest(host: &kiln_tests::lab::LabHost, ip: &str, online: bool) -> String {
    let net: String = network_data(&host.mac, ip)
        .lines()
        .map(|l| format!("    {l}\n"))
        .collect();
    let secret = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-preprov-net\n  namespace: lab\ntype: Opaque\n\
         stringData:\n  networkData: |\n{net}",
        name = host.name
    );
    let spec = format!("  preprovisioningNetworkDataName: {}-preprov-net\n", host.name);
    bmh_manifest(
        host,
        &Bmh {
            address: Some(
                host.bmc_address
                    .replacen("redfish+http://", "redfish-virtualmedia+http://", 1),
            ),
            online,
            spec: &spec,
            docs: vec![secret],
            no_boot_mac: false,
        },
    )
}

/// kiln's config: DHCP off (the boot listener still serves the image files), virtual media on.
fn config(lab: &Lab, files: &std::path::Path) -> anyhow::Result<std::path::PathBuf> {
    let rd = ramdisk::get()?;
    let loader = rd
        .efi_loader
        .context("the ramdisk build made no GRUB EFI loader (tests/setup.sh installs grub-efi-amd64-bin)")?;
    let data = lab.kiln_data();
    let toml = format!(
        r#"data_dir = "{data}"
api_url = "https://{SERVER}:8443"
heartbeat_secs = 2

[pxe]
state_dir = "{data}/pxe"

[pxe.dhcp]
mode = "off"
interface = "br0"
server_addr = "{SERVER}"

[pxe.boot]
http_base = "http://{SERVER}:8080"
files_dir = "{files}"

[agent_boot]
kernel_url = "http://{SERVER}:8080/boot/files/vmlinuz"
initrd_url = "http://{SERVER}:8080/boot/files/initramfs"

[virtual_media]
kernel = "{kernel}"
initramfs = "{initramfs}"
efi_loader = "{loader}"
bios_loader = "{bios}"
cmdline = "console=ttyS0"
"#,
        data = data.display(),
        files = files.display(),
        kernel = rd.kernel.display(),
        initramfs = rd.initramfs.display(),
        loader = loader.display(),
        bios = rd
            .bios_loader
            .context("the ramdisk build made no GRUB BIOS image (tests/setup.sh installs grub-pc-bin)")?
            .display(),
    );
    std::fs::create_dir_all(&data)?;
    let path = lab.dir.join("kiln.toml");
    std::fs::write(&path, toml)?;
    Ok(path)
}

/// OpenStack network data giving `mac` the static address `ip`.
fn network_data(mac: &str, ip: &str) -> String {
    format!(
        r#"{{"links": [{{"id": "nic0", "type": "phy", "ethernet_mac_address": "{mac}"}}],
 "networks": [{{"id": "lab", "link": "nic0", "type": "ipv4", "ip_address": "{ip}", "netmask": "255.255.255.0",
   "routes": [{{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "{SERVER}"}}]}}],
 "services": [{{"type": "dns", "address": "{SERVER}"}}]}}"#
    )
}

#[test]
fn virtual_media_host_without_dhcp_inspect_provision_deprovision() -> anyhow::Result<()> {
    let os = OsImage::get()?;
    let spec = vm("e2e-vmedia", "52:54:00:99:00:35").uefi();
    let bios_spec = vm("e2e-vmedia-bios", "52:54:00:99:00:36");
    let mut lab = Lab::start("e2e-vmedia", &[(spec, BmcKind::Redfish), (bios_spec, BmcKind::Redfish)])?;
    let files = stage_files(&lab, &os)?;
    let config = config(&lab, &files)?;
    // Every DHCP packet on the segment reaches the server port: count them for the whole run.
    let dhcp_log = lab.logs.file("dhcp-seen.bin");
    let mut dhcp_watch = lab
        .ns
        .command("socat")
        .args([
            "-u",
            "UDP4-RECV:67,reuseaddr,so-bindtodevice=br0",
            &format!("OPEN:{},creat,append", dhcp_log.display()),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("start socat")?;
    lab.record.add_pid(dhcp_watch.id());
    lab.start_kiln(&["--config", &config.display().to_string()], None)?;
    let cli = Cli {
        lab: &lab,
        kiln: target_bin("kiln")?,
    };
    let callback = Callback::start(&lab)?;
    let host = lab.hosts[0].clone();
    let bios = lab.hosts[1].clone();

    // 1. Metal3 manifests with each ramdisk's static address in a preprovisioningNetworkDataName Secret: a UEFI
    //    host (taken through its whole life below) and a BIOS host (inspected: GRUB's El Torito image for BIOS).
    import_manifests(
        &cli,
        &lab,
        "vmedia-bmh.yaml",
        &[manifest(&host, HOST_IP, true), manifest(&bios, BIOS_HOST_IP, false)],
    )?;
    let inspect_started = Instant::now();
    cli.wait_state(&host.name, "available", Duration::from_secs(600))?;
    let inspect_secs = inspect_started.elapsed().as_secs();
    cli.wait_state(&bios.name, "available", Duration::from_secs(600))?;
    let bios_console = read_console(&bios.console);
    assert!(
        bios_console.contains("KILN-AGENT static") && bios_console.contains("KILN/VMLINUZ"),
        "the BIOS host did not boot kiln's ISO with its static address: {}",
        bios.console.display()
    );
    assert_eq!(cli.host(&bios.name)?["host"]["boot_mode"], "legacy");
    let inventory = cli.inspection(&host.name)?;
    let nics = inventory["inventory"]["nics"].as_array().cloned().unwrap_or_default();
    assert!(
        nics.iter()
            .any(|n| n["ipv4_address"].as_str().is_some_and(|a| a.starts_with(HOST_IP))
                || n["mac"].as_str().is_some_and(|m| m.eq_ignore_ascii_case(&host.mac))),
        "the inspected NICs: {nics:?}"
    );
    let events = cli.events(&host.name)?;
    let inserted = events.iter().find(|e| e["kind"] == "virtual_media");
    assert!(inserted.is_some(), "no virtual_media event: {events:?}");
    // The ISO's size is in the event: "the BMC took kiln's agent ISO (N MiB)".
    println!("{}", inserted.map(|e| e["message"].to_string()).unwrap_or_default());
    assert!(
        events.iter().any(|e| e["kind"] == "virtual_media_read"),
        "the BMC never read the ISO: {events:?}"
    );
    let console = read_console(&host.console);
    assert!(
        console.contains("KILN-AGENT static") && !console.contains("dhcp-bound"),
        "the ramdisk did not take its static address from the ISO: {}",
        host.console.display()
    );

    // 2. Provision the Debian image with user data and the same static address for the OS.
    let net = lab.dir.join("network-data.json");
    std::fs::write(&net, network_data(&host.mac, HOST_IP))?;
    let net = net.display().to_string();
    let provision_secs =
        provision_and_run_user_data(&cli, &host, &os, "debian.qcow2", &callback, &["--network-data", &net])?;
    let checksum = format!("sha256:{}", os.sha256("debian.qcow2")?);
    let h = cli.host(&host.name)?;
    assert_eq!(h["host"]["boot_mode"], "uefi", "{h}");
    cli.run(&["host", "show", &host.name])?;

    // 3. Deprovision -> available; the disk no longer boots.
    let deprovision_started = Instant::now();
    cli.run(&["host", "deprovision", &host.name])?;
    cli.wait_state(&host.name, "available", Duration::from_secs(600))?;
    let deprovision_secs = deprovision_started.elapsed().as_secs();
    let mut head = vec![0u8; 1024];
    std::fs::File::open(&host.disks[0])?.read_exact(&mut head)?;
    assert!(
        head[510..512] != [0x55, 0xaa] && &head[512..520] != b"EFI PART",
        "the deprovisioned disk still has a partition table"
    );
    println!(
        "virtual media, no DHCP: inspection {inspect_secs} s, provisioning {provision_secs} s, deprovisioning \
         {deprovision_secs} s (from the request to the state)"
    );

    // 4. A live-iso deploy: the BMC boots the given ISO, diskless. The ISO here is one the test builds with kiln's
    //    own writer: GRUB and the agent kernel, with a marker on the kernel command line the console shows.
    let rd = ramdisk::get()?;
    let loader = std::fs::read(rd.efi_loader.as_ref().context("no GRUB EFI loader")?)?;
    // Its own static address, like any live OS on this segment: no DHCP here.
    let marker = format!(
        "kiln.live-marker=KILN-LIVE-ISO-OK kiln.ip={HOST_IP}/24 kiln.mac={}",
        host.mac
    );
    let marker = marker.as_str();
    let live = kiln_images::iso::IsoBuilder::new("LIVE_TEST")
        .file(
            "KILN/GRUB.CFG",
            kiln_images::iso::Content::Bytes(
                format!(
                    "set timeout=0\nlinux ($root)/KILN/VMLINUZ console=ttyS0 {marker}\ninitrd ($root)/KILN/INITRD\nboot\n"
                )
                .into_bytes()
                .into(),
            ),
        )
        .file("KILN/VMLINUZ", kiln_images::iso::Content::Bytes(std::fs::read(&rd.kernel)?.into()))
        .file("KILN/INITRD", kiln_images::iso::Content::Bytes(std::fs::read(&rd.initramfs)?.into()))
        .file(
            "BOOT/EFI.IMG",
            kiln_images::iso::Content::Bytes(kiln_images::iso::efi_boot_image(&loader)?.into()),
        )
        .efi_boot("BOOT/EFI.IMG")
        .build()?;
    live.write_to(&mut std::fs::File::create(files.join("live.iso"))?)?;
    let before = read_console(&host.console).matches(marker).count();
    let live_started = Instant::now();
    cli.run(&[
        "host",
        "provision",
        &host.name,
        "--image",
        &format!("http://{SERVER}:8080/boot/files/live.iso"),
        "--format",
        "live-iso",
    ])?;
    cli.wait_state(&host.name, "provisioned", Duration::from_secs(120))?;
    let deadline = Instant::now() + Duration::from_secs(300);
    while read_console(&host.console).matches(marker).count() <= before {
        anyhow::ensure!(
            Instant::now() < deadline,
            "the live ISO did not boot (console {})",
            host.console.display()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    let live_secs = live_started.elapsed().as_secs();
    // A live ISO with a checksum is refused: kiln could not verify it.
    let refused = cli.run(&[
        "host",
        "provision",
        &host.name,
        "--image",
        "http://x/live.iso",
        "--format",
        "live-iso",
        "--checksum",
        &checksum,
    ]);
    assert!(
        refused
            .as_ref()
            .is_err_and(|e| e.to_string().contains("cannot verify a checksum")),
        "{refused:?}"
    );
    cli.run(&["host", "deprovision", &host.name])?;
    cli.wait_state(&host.name, "available", Duration::from_secs(600))?;
    println!("live-iso: the ISO booted {live_secs} s after the provision request");

    // 5. Not one DHCP packet on the segment, from the firmware, the ramdisk or the OS.
    let _ = dhcp_watch.kill();
    let _ = dhcp_watch.wait();
    let seen = std::fs::metadata(&dhcp_log).map(|m| m.len()).unwrap_or(0);
    assert_eq!(seen, 0, "{seen} bytes of DHCP traffic reached port 67 on the bridge");
    drop(callback);
    lab.finish()
}
