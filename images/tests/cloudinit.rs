//! End to end on the image side: the project's Debian + cloud-init test image (qcow2, built and cached by
//! `tests/os-image/build.sh`) is written by kiln's pipeline onto a disk larger than the image, kiln's config drive is
//! added after the last partition, and the disk boots in QEMU, where cloud-init's ConfigDrive datasource finds the
//! drive, configures the NIC from the drive's `network_data.json` (rendered by kiln's KilnDataTemplate code, as a
//! Cluster API machine's would be: a static address from a pool, the pool's gateway as default route, DNS) and runs the
//! user data, which prints the NIC's addresses, cloud-init's rendered interface configuration and a marker on the
//! serial console.

mod common;

use std::collections::BTreeMap;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_images::configdrive::write_config_drive;
use kiln_images::protocol::{ChecksumType, ConfigDrive, ImageSpec};
use kiln_images::{Progress, write_image};
use kiln_kube::bmh::BareMetalHost;
use kiln_kube::data::{Allocated, NetworkDataTemplate};

/// Kills QEMU when the test ends, passed or not.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The VM's NIC.
const MAC: &str = "52:54:00:77:00:10";

/// What a KilnDataTemplate with one static network renders for a host with the NIC [`MAC`] and the address
/// 192.168.77.10/24 from its pool (gateway .1).
fn network_data() -> serde_json::Value {
    let pool = serde_json::json!({"apiGroup": "ipam.cluster.x-k8s.io", "kind": "InClusterIPPool", "name": "pool"});
    let template: NetworkDataTemplate = serde_json::from_value(serde_json::json!({
        "links": {"ethernets": [{"id": "enp1s0", "mtu": 1500, "macAddress": {"string": MAC}}]},
        "networks": {"ipv4": [{"id": "prov", "link": "enp1s0", "fromPoolRef": pool,
            "routes": [{"network": "0.0.0.0", "prefix": 0, "gateway": {"fromPoolRef": pool}}]}]},
        "services": {"dns": ["192.168.77.53"]}
    }))
    .unwrap();
    let allocated = BTreeMap::from([(
        "prov".to_owned(),
        Allocated {
            address: "192.168.77.10".parse().unwrap(),
            prefix: 24,
            gateway: Some("192.168.77.1".parse().unwrap()),
        },
    )]);
    template
        .render(&BareMetalHost::new("vm", Default::default()), &allocated)
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_image_boots_and_cloud_init_runs_the_config_drive_user_data() {
    let image_dir = tokio::task::spawn_blocking(kiln_tests::osimage::OsImage::get)
        .await
        .unwrap()
        .expect("the test OS image")
        .dir;

    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.raw");
    let spec = ImageSpec {
        url: format!("file://{}", image_dir.join("debian.qcow2").display()),
        checksum: format!("file://{}", image_dir.join("SHA256SUMS").display()),
        checksum_type: ChecksumType::Auto,
        format: None,
    };
    let report = write_image(&spec, &disk, &Progress::new()).await.unwrap();
    assert!(report.verified);
    // The machine's disk is bigger than the image.
    let f = std::fs::OpenOptions::new().write(true).open(&disk).unwrap();
    f.set_len(report.image_size + (128 << 20)).unwrap();
    drop(f);

    let marker = format!("KILN-CONFIGDRIVE-{}", std::process::id());
    let drive = ConfigDrive {
        meta_data: serde_json::json!({"uuid": "5a0c1d7e-2b4f-4c1e-8d2a-6f7e8a9b0c1d", "hostname": "kiln-cd-test"}),
        user_data: Some(format!(
            "#!/bin/sh\n{{ ip -4 -o addr show dev eth0; cat /etc/network/interfaces.d/50-cloud-init; }} > /dev/ttyS0\n\
             echo {marker} > /dev/ttyS0\n"
        )),
        network_data: Some(network_data()),
    };
    let placement = write_config_drive(&disk, &drive).unwrap();
    assert_eq!(placement.table, "gpt");
    let verify = common::sh_out("sgdisk", &["-v", disk.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&verify.stdout).contains("No problems found"));

    let console = dir.path().join("console.log");
    let accel = kiln_tests::qemu::accel();
    let qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel",
            &accel,
            "-m",
            "1024",
            "-display",
            "none",
            "-monitor",
            "none",
            "-nic",
            &format!("user,model=virtio-net-pci,mac={MAC}"),
        ])
        .arg("-serial")
        .arg(format!("file:{}", console.display()))
        .arg("-drive")
        .arg(format!("file={},format=raw,if=virtio", disk.display()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("qemu-system-x86_64");
    let _qemu = Qemu(qemu);
    let start = Instant::now();
    loop {
        let log = std::fs::read(&console).unwrap_or_default();
        let text = String::from_utf8_lossy(&log);
        if text.contains(&marker) {
            // cloud-init configured the NIC from the drive's network data: the pool's address is on eth0, and the
            // ifupdown configuration it rendered has the default route via the pool's gateway and the DNS server.
            // (The route itself is not checked on the VM: cloud-init's ifupdown renderer adds routes with net-tools'
            // `route`, which this minimal image lacks.)
            let tail = &text[text.len().saturating_sub(3000)..];
            for (want, what) in [
                ("inet 192.168.77.10/24", "the pool's address on eth0"),
                (
                    "route add default gw 192.168.77.1",
                    "the default route via the pool's gateway",
                ),
                ("dns-nameservers 192.168.77.53", "the DNS server"),
            ] {
                assert!(text.contains(want), "no {what} ({want:?}):\n{tail}");
            }
            break;
        }
        if start.elapsed() > Duration::from_secs(420) {
            let tail = &text[text.len().saturating_sub(3000)..];
            panic!("cloud-init did not run the config drive user data; console tail:\n{tail}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
