//! QEMU VMs netbooting from kiln in a private netns, the way real hardware does:
//! - SeaBIOS with the NIC's iPXE ROM, and OVMF with its own PXE client, kiln in **proxy** mode beside dnsmasq (the site's DHCP server, addresses
//!   only): dnsmasq leases the address, kiln's proxyDHCP (ports 67/4011) hands iPXE its per-host script URL;
//! - OVMF (UEFI) with its own PXE client, kiln **alone** in full mode: DHCP, TFTP of `ipxe.efi`, iPXE's DHCP
//!   again, then the per-host script over HTTP.
//!
//! Each VM's serial console must show the marker the per-host script prints. TCG is used (see TESTBED.md).

mod lab;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use lab::{Lab, SERVER, wait_for_text};
use serde_json::json;

const VM_MAC: &str = "52:54:00:99:00:10";

fn hosts() -> serde_json::Value {
    json!({ VM_MAC: {"ipv4": "10.99.0.60", "hostname": "vm1", "action": {"kind": "local_disk"}} })
}

fn qemu(lab: &Lab, uefi: bool) -> Command {
    let mut c = Lab::netns_cmd(&lab.srv, "qemu-system-x86_64");
    c.args([
        "-accel",
        "tcg",
        "-m",
        "256",
        "-nographic",
        "-no-reboot",
        "-netdev",
        "tap,id=n0,ifname=tap0,script=no,downscript=no",
    ]);
    if uefi {
        let vars = lab.dir.path().join("vars.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars).unwrap();
        c.args([
            "-machine",
            "q35",
            "-drive",
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd",
            "-drive",
        ]);
        c.arg(format!("if=pflash,format=raw,file={}", vars.display()));
        // No option ROM: OVMF's own virtio-net driver and PXE client do the first stage.
        c.args([
            "-device",
            &format!("virtio-net-pci,netdev=n0,mac={VM_MAC},bootindex=1,romfile="),
        ]);
    } else {
        c.args(["-device", &format!("virtio-net-pci,netdev=n0,mac={VM_MAC},bootindex=1")]);
    }
    c
}

fn marker() -> String {
    format!("kiln: booting local disk on vm1 ({VM_MAC})")
}

fn assert_marker(console: &Path, limit: Duration) -> String {
    let (ok, text) = wait_for_text(console, &marker(), limit);
    assert!(
        ok,
        "no marker on the serial console within {limit:?}; console tail:\n{}",
        tail(&text)
    );
    text
}

fn tail(s: &str) -> String {
    let clean: String = s.chars().filter(|c| *c == '\n' || !c.is_control()).collect();
    clean
        .lines()
        .rev()
        .take(40)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect::<Vec<_>>()
        .join("\n")
}

/// Proxy mode beside dnsmasq (addresses only); returns (console, dnsmasq log, kiln log).
fn proxy_beside_dnsmasq(uefi: bool, limit: Duration) -> (String, String, String) {
    let mut lab = Lab::new();
    let site = lab.add_site();
    lab.add_tap("tap0");
    // The site's DHCP server: addresses only, no boot options; IPv6 RAs so iPXE does not wait for autoconf.
    std::process::Command::new("ip")
        .args(["-n", &site, "addr", "add", "fd99::2/64", "dev", "site0", "nodad"])
        .status()
        .unwrap();
    let leases = lab.dir.path().join("dnsmasq.leases");
    let mut dnsmasq = Lab::netns_cmd(&site, "dnsmasq");
    dnsmasq.args([
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--port=0",
        "--user=root",
        "--interface=site0",
        "--bind-interfaces",
    ]);
    dnsmasq.args([
        "--dhcp-range=10.99.0.150,10.99.0.160,255.255.255.0,1h",
        "--enable-ra",
        "--dhcp-range=fd99::,ra-only,64",
        "--log-dhcp",
        "--log-facility=-",
    ]);
    dnsmasq.arg(format!("--dhcp-leasefile={}", leases.display()));
    let dns = lab.spawn_bg("dnsmasq", dnsmasq);

    let cfg = json!({
        "dhcp": {"mode": "proxy", "interface": "br0"},
        "tftp": {"enabled": true},
        "boot": {"http_base": format!("http://{SERVER}:8080")},
        "state_dir": lab.dir.path().join("state"),
    });
    let kiln = lab.start_kiln("kiln", &cfg, &hosts(), Some(&format!("{SERVER}:8080")));
    let vm = lab.spawn_bg("console", qemu(&lab, uefi));
    let console = assert_marker(&vm.log, limit);
    lab.stop(&vm);
    // The address came from dnsmasq's range, the script from kiln.
    assert!(
        console.contains("10.99.0.15") || console.contains("10.99.0.16"),
        "address not from dnsmasq:\n{}",
        tail(&console)
    );
    let dns_log = lab.stop(&dns);
    assert!(dns_log.contains("DHCPACK"), "dnsmasq did not lease:\n{dns_log}");
    let log = lab.stop(&kiln);
    assert!(
        log.contains(r#"{"event":"dhcp_offer_sent","ip":null"#),
        "kiln made no proxy offer:\n{log}"
    );
    assert!(log.contains("ipxe script served"), "{log}");
    assert!(log.contains("ipxe_script_fetched"), "{log}");
    (console, dns_log, log)
}

#[test]
fn seabios_ipxe_boots_via_kiln_proxy_beside_dnsmasq() {
    proxy_beside_dnsmasq(false, Duration::from_secs(150));
}

#[test]
fn ovmf_pxe_boots_via_kiln_proxy_beside_dnsmasq() {
    let (_, _, log) = proxy_beside_dnsmasq(true, Duration::from_secs(240));
    // Firmware PXE fetched the iPXE EFI binary from kiln's TFTP, then iPXE took over.
    assert!(
        log.contains("tftp read") && log.contains("ipxe.efi"),
        "no TFTP of ipxe.efi:\n{log}"
    );
}

#[test]
fn ovmf_netboots_from_kiln_alone_dhcp_tftp_ipxe_http() {
    let mut lab = Lab::new();
    lab.add_tap("tap0");
    let cfg = json!({
        "dhcp": {"mode": "full", "interface": "br0", "subnets": [{
            "network": "10.99.0.0", "prefix_len": 24, "range_start": "10.99.0.100", "range_end": "10.99.0.150"}]},
        "tftp": {"enabled": true},
        "boot": {"http_base": format!("http://{SERVER}:8080")},
        "state_dir": lab.dir.path().join("state"),
    });
    let kiln = lab.start_kiln("kiln", &cfg, &hosts(), Some(&format!("{SERVER}:8080")));
    let vm = lab.spawn_bg("console", qemu(&lab, true));
    let console = assert_marker(&vm.log, Duration::from_secs(240));
    lab.stop(&vm);
    assert!(
        console.contains("10.99.0.60"),
        "reserved address not used:\n{}",
        tail(&console)
    );
    let log = lab.stop(&kiln);
    assert!(
        log.contains("tftp read") && log.contains("ipxe.efi"),
        "no TFTP of ipxe.efi:\n{log}"
    );
    assert!(log.contains("ipxe script served"), "{log}");
    assert!(
        log.contains(r#"{"event":"tftp_file_served","path":"ipxe.efi"}"#),
        "no TFTP event for the host:\n{log}"
    );
}
