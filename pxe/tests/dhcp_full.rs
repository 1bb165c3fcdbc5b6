//! Full-mode DHCP against real clients (busybox udhcpc, ISC dhclient) in private network namespaces: reserved and
//! dynamic leases with next-server and boot file, unknown MACs ignored, leases kept across a restart.

mod lab;

use std::process::Command;
use std::time::Duration;

use lab::{Lab, SERVER, env_lines, run_with_timeout, write_script};
use serde_json::json;

const MAC_A: &str = "02:99:00:00:00:0a"; // reserved 10.99.0.50
const MAC_B: &str = "02:99:00:00:00:0b"; // known, dynamic
const MAC_C: &str = "02:99:00:00:00:0c"; // unknown
const MAC_D: &str = "02:99:00:00:00:0d"; // known, dynamic

fn config(lab: &Lab) -> serde_json::Value {
    json!({
        "dhcp": {"mode": "full", "interface": "br0", "lease_secs": 600, "subnets": [{
            "network": "10.99.0.0", "prefix_len": 24, "range_start": "10.99.0.100", "range_end": "10.99.0.101",
            "router": SERVER, "dns": [SERVER], "domain": "lab.test", "mtu": 1500 }]},
        "tftp": {"enabled": false},
        "boot": {"http_base": format!("http://{SERVER}:8080")},
        "state_dir": lab.dir.path().join("state"),
    })
}

fn hosts() -> serde_json::Value {
    json!({
        MAC_A: {"ipv4": "10.99.0.50", "hostname": "node-a", "action": {"kind": "local_disk"}},
        MAC_B: {"ipv4": null, "hostname": "node-b", "action": {"kind": "agent",
            "kernel_url": format!("http://{SERVER}:8080/boot/files/vmlinuz"),
            "initrd_url": format!("http://{SERVER}:8080/boot/files/initramfs"), "cmdline": "console=ttyS0"}},
        MAC_D: {"ipv4": null, "hostname": "node-d", "action": {"kind": "local_disk"}},
    })
}

/// Runs udhcpc once on `iface` as a BIOS PXE client; returns the `bound` environment, or `None` if no lease.
fn udhcpc(lab: &Lab, iface: &str, extra: &[&str]) -> Option<std::collections::HashMap<String, String>> {
    let out = lab.dir.path().join(format!("udhcpc-{iface}-{}.env", rand_suffix()));
    let script = write_script(
        lab.dir.path(),
        "udhcpc.sh",
        "#!/bin/sh\n[ \"$1\" = bound ] && env > \"$OUT\"\nexit 0\n",
    );
    let mut cmd = Lab::netns_cmd(&lab.cli, "udhcpc");
    cmd.args(["-i", iface, "-f", "-q", "-n", "-t", "3", "-T", "1", "-A", "1", "-s"])
        .arg(&script);
    cmd.args(["-V", "PXEClient:Arch:00000:UNDI:002001", "-x", "0x5d:0000"])
        .args(extra)
        .env("OUT", &out);
    let (in_time, ok, text) = run_with_timeout(&mut cmd, Duration::from_secs(20));
    assert!(in_time, "udhcpc hung: {text}");
    if !ok {
        assert!(!out.exists());
        return None;
    }
    Some(env_lines(
        &std::fs::read_to_string(&out).unwrap_or_else(|_| panic!("udhcpc ok but no env: {text}")),
    ))
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// Runs ISC dhclient (foreground, one try) on `iface` as a PXE client until it reports BOUND.
fn dhclient(lab: &mut Lab, iface: &str) -> std::collections::HashMap<String, String> {
    let d = lab.dir.path().to_owned();
    let out = d.join(format!("dhclient-{iface}.env"));
    // dhclient scrubs the environment: the output path goes into the script itself.
    let body = format!(
        "#!/bin/sh\ncase \"$reason\" in BOUND|REBOOT) env > {};; esac\nexit 0\n",
        out.display()
    );
    let script = write_script(&d, &format!("dhclient-{iface}.sh"), &body);
    let conf = d.join("dhclient.conf");
    std::fs::write(
        &conf,
        "send vendor-class-identifier \"PXEClient:Arch:00000:UNDI:002001\";\n\
         request subnet-mask, routers, domain-name-servers, host-name, domain-name, interface-mtu;\n",
    )
    .unwrap();
    let mut cmd = Lab::netns_cmd(&lab.cli, "dhclient");
    cmd.args(["-d", "-1", "-v", "-cf"])
        .arg(&conf)
        .arg("-lf")
        .arg(d.join(format!("{iface}.leases")))
        .arg("-pf")
        .arg(d.join(format!("{iface}.pid")));
    cmd.arg("-sf").arg(&script).arg(iface);
    let p = lab.spawn_bg(&format!("dhclient-{iface}"), cmd);
    for _ in 0..200 {
        if out.exists() {
            std::thread::sleep(Duration::from_millis(100));
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let log = lab.stop(&p);
    env_lines(&std::fs::read_to_string(&out).unwrap_or_else(|_| panic!("dhclient got no lease:\n{log}")))
}

#[test]
fn full_mode_with_udhcpc_and_dhclient_and_restart() {
    let mut lab = Lab::new();
    for (i, mac) in [("ca", MAC_A), ("cb", MAC_B), ("cc", MAC_C), ("cd", MAC_D)] {
        lab.add_client(i, mac);
    }
    let cfg = config(&lab);
    let kiln = lab.start_kiln("kiln1", &cfg, &hosts(), None);

    // Reserved MAC: its address, next-server, BIOS boot file and every option.
    let a = udhcpc(&lab, "ca", &[]).expect("reserved host gets a lease");
    assert_eq!(a["ip"], "10.99.0.50");
    assert_eq!(a["siaddr"], SERVER);
    assert_eq!(a["boot_file"], "undionly.kpxe");
    assert_eq!(a["serverid"], SERVER);
    assert_eq!(a["subnet"], "255.255.255.0");
    assert_eq!(a["router"], SERVER);
    assert_eq!(a["dns"], SERVER);
    assert_eq!(a["domain"], "lab.test");
    assert_eq!(a["hostname"], "node-a");
    assert_eq!(a["mtu"], "1500");
    assert_eq!(a["lease"], "600");
    // ... even when it asks for another one.
    let a2 = udhcpc(&lab, "ca", &["-r", "10.99.0.77"]).expect("reserved host again");
    assert_eq!(a2["ip"], "10.99.0.50");

    // Unknown MAC: no answer at all.
    assert!(udhcpc(&lab, "cc", &[]).is_none(), "unknown MAC must not get a lease");

    // dhclient, dynamic host, as a PXE client.
    let b = dhclient(&mut lab, "cb");
    let b_ip = b["new_ip_address"].clone();
    assert!(b_ip == "10.99.0.100" || b_ip == "10.99.0.101", "{b:?}");
    assert_eq!(b["new_filename"], "undionly.kpxe");
    assert_eq!(b["new_host_name"], "node-b");
    assert_eq!(b["new_routers"], SERVER);
    assert_eq!(b["new_dhcp_server_identifier"], SERVER);

    // iPXE (user class) gets the URL of its script instead.
    let b_ipxe = udhcpc(&lab, "cb", &["-x", "0x4d:69505845"]).expect("iPXE client lease");
    assert_eq!(b_ipxe["boot_file"], format!("http://{SERVER}:8080/boot/{MAC_B}.ipxe"));
    assert_eq!(b_ipxe["ip"], b_ip, "same client keeps its address");

    let log = lab.stop(&kiln);
    assert!(
        log.contains("unknown_mac_seen"),
        "events should report the unknown MAC:\n{log}"
    );
    let journal = std::fs::read_to_string(lab.dir.path().join("state/leases.jsonl")).unwrap();
    assert!(journal.contains(MAC_B) && journal.contains(&b_ip), "journal: {journal}");

    // Restart: the range has two addresses; B holds one, so D must get the other, and B keeps its own.
    let kiln = lab.start_kiln("kiln2", &cfg, &hosts(), None);
    let d = udhcpc(&lab, "cd", &[]).expect("second dynamic host");
    assert_ne!(d["ip"], b_ip, "restart handed B's address to D");
    assert!(d["ip"] == "10.99.0.100" || d["ip"] == "10.99.0.101");
    let b_again = udhcpc(&lab, "cb", &[]).expect("B after restart");
    assert_eq!(b_again["ip"], b_ip);
    let log = lab.stop(&kiln);
    assert!(log.contains("dhcp_acks\", 2"), "{log}");
    let _ = Command::new("true").status();
}

/// Discovery on: an unknown MAC gets an address from the range (and is reported), a plain client gets no boot
/// file; perfdhcp, which speaks as a relay agent (`giaddr` = its address), gets its answers sent to the relay.
#[test]
fn discovery_and_relayed_requests_from_perfdhcp() {
    let mut lab = Lab::new();
    lab.add_client("cu", MAC_C);
    lab.add_client("rl", "02:99:00:00:00:ee");
    let out = Command::new("ip")
        .args(["-n", &lab.cli, "addr", "add", "10.99.0.30/24", "dev", "rl"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let mut cfg = config(&lab);
    cfg["dhcp"]["discovery"] = json!(true);
    cfg["dhcp"]["subnets"][0]["range_end"] = json!("10.99.0.199");
    let kiln = lab.start_kiln("kiln", &cfg, &hosts(), None);

    // Plain (non-PXE) DHCP client with an unknown MAC.
    let script = write_script(
        lab.dir.path(),
        "plain.sh",
        "#!/bin/sh\n[ \"$1\" = bound ] && env > \"$OUT\"\nexit 0\n",
    );
    let envf = lab.dir.path().join("plain.env");
    let mut cmd = Lab::netns_cmd(&lab.cli, "udhcpc");
    cmd.args(["-i", "cu", "-f", "-q", "-n", "-t", "3", "-T", "1", "-s"])
        .arg(&script)
        .env("OUT", &envf);
    let (in_time, ok, text) = run_with_timeout(&mut cmd, Duration::from_secs(20));
    assert!(in_time && ok, "discovery should lease to an unknown MAC: {text}");
    let c = env_lines(&std::fs::read_to_string(&envf).unwrap());
    assert!(c["ip"].starts_with("10.99.0.1"), "{c:?}");
    assert!(!c.contains_key("boot_file"), "plain client got a boot file: {c:?}");

    // perfdhcp as a relay: 200 four-way exchanges from 100 simulated clients.
    let mut perf = Lab::netns_cmd(&lab.cli, "perfdhcp");
    perf.args(["-4", "-l", "rl", "-r", "50", "-n", "200", "-R", "100"]);
    let (in_time, _, text) = run_with_timeout(&mut perf, Duration::from_secs(60));
    assert!(in_time, "perfdhcp hung: {text}");
    let received: Vec<u64> = text
        .lines()
        .filter_map(|l| l.trim().strip_prefix("received packets: "))
        .filter_map(|v| v.trim().parse().ok())
        .collect();
    assert_eq!(received.len(), 2, "perfdhcp output: {text}");
    assert!(
        received.iter().all(|&n| n >= 100),
        "too few answers through the relay path: {text}"
    );

    let log = lab.stop(&kiln);
    assert!(
        log.contains("to=10.99.0.30:67"),
        "replies did not go to the relay:\n{log}"
    );
    assert!(
        log.contains(&format!("[\"{MAC_C}\",{{\"event\":\"unknown_mac_seen\"")),
        "{log}"
    );
}
