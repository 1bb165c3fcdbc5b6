//! The agent in a real VM: the project's ramdisk (static kiln-agent + busybox + Debian kernel) boots in QEMU (TCG)
//! with user-mode networking, DHCPs from QEMU's slirp, and talks to a stand-in appliance served by this test on
//! loopback (reached as 10.0.2.2). The appliance hands out Inspect, EraseMetadata, WriteImage (a compressed qcow2
//! made by `qemu-img`, served over HTTP) and PowerOff. The test then checks the inventory against the VM's
//! configuration, the disk files' bytes, and the reported results. Logs stay in a kept temp dir on failure.

mod common;

use std::process::Command;
use std::time::Duration;

use kiln_images::protocol::{ChecksumType, CommandKind, ConfigDrive, ImageSpec, Outcome, RootDeviceHints};
use kiln_tests::qemu_user::{Vm, VmSpec};
use sha2::Digest;

const MIB: usize = 1024 * 1024;
const GIB: u64 = 1024 * 1024 * 1024;
const USER_DATA: &str = "#cloud-config\nruncmd:\n  - echo KILN-CLOUD-INIT-RAN > /dev/ttyS0\n";

/// Keeps the directory (and says where) when the test panics.
struct LogDir(Option<tempfile::TempDir>);

impl Drop for LogDir {
    fn drop(&mut self) {
        if std::thread::panicking()
            && let Some(d) = self.0.take()
        {
            eprintln!("test logs kept in {}", d.keep().display());
        }
    }
}

/// A 64 MiB raw disk image with an MBR partition table, 16 MiB of pseudo-random data, a zero gap (sparse in the
/// qcow2) and a pattern at the end; returns its bytes.
fn make_raw_image() -> Vec<u8> {
    let mut img = vec![0u8; 64 * MIB];
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    for b in img[MIB..17 * MIB].iter_mut() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        *b = x as u8;
    }
    for (i, b) in img[60 * MIB..].iter_mut().enumerate() {
        *b = (i % 251) as u8;
    }
    // MBR: one Linux partition from sector 2048 to the end.
    let sectors = (64 * MIB / 512) as u32;
    let e = &mut img[446..462];
    e[4] = 0x83;
    e[8..12].copy_from_slice(&2048u32.to_le_bytes());
    e[12..16].copy_from_slice(&(sectors - 2048).to_le_bytes());
    img[510] = 0x55;
    img[511] = 0xaa;
    img
}

fn run(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_inspects_erases_writes_and_powers_off_in_a_vm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ramdisk = tokio::task::spawn_blocking(kiln_tests::ramdisk::get)
        .await
        .unwrap()
        .expect("the agent ramdisk");
    assert!(ramdisk.bytes < 64 * 1024 * 1024, "ramdisk is {} bytes", ramdisk.bytes);

    let logs = LogDir(Some(
        tempfile::Builder::new().prefix("kiln-agent-vm-").tempdir().unwrap(),
    ));
    let dir = logs.0.as_ref().unwrap().path().to_path_buf();

    // The image, as a zlib-compressed qcow2 made by the real qemu-img.
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    let raw = make_raw_image();
    std::fs::write(dir.join("image.raw"), &raw).unwrap();
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-c", "-f", "raw", "-O", "qcow2"])
        .arg(dir.join("image.raw"))
        .arg(files.join("image.qcow2")));
    let qcow2 = std::fs::read(files.join("image.qcow2")).unwrap();
    let digest = hex::encode(sha2::Sha256::digest(&qcow2));

    // vda: 4 GiB sparse (the only disk big enough for the default root device choice), its last MiB marked.
    let root = dir.join("vda.raw");
    let f = std::fs::File::create(&root).unwrap();
    f.set_len(4 * GIB).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x77u8; MIB], 4 * GIB - MIB as u64).unwrap();
    drop(f);
    // vdb: 256 MiB full of a pattern with an MBR signature, for EraseMetadata.
    let data = dir.join("vdb.raw");
    let mut content = vec![0x5au8; 256 * MIB];
    content[510] = 0x55;
    content[511] = 0xaa;
    std::fs::write(&data, &content).unwrap();

    let token = format!("tok-{}", std::process::id());
    let (app, port) = common::start_appliance(
        &token,
        vec![
            CommandKind::Inspect,
            CommandKind::EraseMetadata,
            // A wrong checksum first: it must fail with its kind and the log tail, and leave no partition table.
            CommandKind::WriteImage {
                image: ImageSpec {
                    url: "http://10.0.2.2:PORT/files/image.qcow2".into(),
                    checksum: "0".repeat(64),
                    checksum_type: ChecksumType::Sha256,
                    format: None,
                },
                root_device_hints: RootDeviceHints::default(),
                config_drive: None,
                registry: None,
            },
            CommandKind::WriteImage {
                image: ImageSpec {
                    url: "http://10.0.2.2:PORT/files/image.qcow2".into(),
                    checksum: digest.clone(),
                    checksum_type: ChecksumType::Sha256,
                    format: None,
                },
                root_device_hints: RootDeviceHints {
                    serial_number: Some("KILN-VDA-1".into()),
                    ..Default::default()
                },
                config_drive: Some(ConfigDrive {
                    meta_data: serde_json::json!({"uuid": "6b696c6e-0000-4000-8000-000000000042", "hostname": "vm42"}),
                    user_data: Some(USER_DATA.into()),
                    network_data: None,
                }),
                registry: None,
            },
            CommandKind::PowerOff,
        ],
        &files,
    )
    .await;
    // The image URL needs the port, known only now.
    for c in app.script.lock().unwrap().iter_mut() {
        if let CommandKind::WriteImage { image, .. } = &mut c.kind {
            image.url = image.url.replace("PORT", &port.to_string());
        }
    }
    let spec = VmSpec {
        cpus: 2,
        memory_mib: 1024,
        mac: "52:54:00:4b:69:01".into(),
        disk: root.clone(),
        disk_serial: "KILN-VDA-1".into(),
        extra_disks: vec![data.clone()],
        system_serial: "KILN-SN-42".into(),
        uuid: "6b696c6e-0000-4000-8000-000000000042".into(),
        append: format!(
            "console=ttyS0 panic=-1 kiln.api=http://10.0.2.2:{port} kiln.token={token} kiln.mac=52:54:00:4B:69:01"
        ),
    };
    let mut vm = Vm::start(&ramdisk, &spec, &dir);
    let status = vm.wait_exit(Duration::from_secs(300)).await;
    let serial = vm.serial_text();
    let seen = app.seen.lock().unwrap();
    let ctx = || {
        let tail: Vec<&str> = serial.lines().filter(|l| !l.starts_with('[')).collect();
        format!(
            "console (kernel lines omitted):\n{}\nseen: {seen:#?}\nlogs: {}",
            tail.join("\n"),
            dir.display()
        )
    };
    assert!(status.is_some(), "the VM did not power off in time\n{}", ctx());

    for phase in [
        "KILN-AGENT init",
        "KILN-AGENT dhcp-bound eth0",
        "KILN-AGENT connected",
        "KILN-AGENT image-written",
        "KILN-AGENT powering-off",
    ] {
        assert!(serial.contains(phase), "no {phase:?} on the console\n{}", ctx());
    }
    assert!(!seen.heartbeats.is_empty());
    assert_eq!(seen.unauthorized, 0, "{}", ctx());

    // Every command reported, in order; only the write with the wrong checksum failed, saying why.
    let ids: Vec<u64> = seen.results.iter().map(|r| r.command_id).collect();
    assert_eq!(ids, vec![1, 2, 3, 4, 5], "{}", ctx());
    for r in &seen.results {
        match (&r.outcome, r.command_id) {
            (Outcome::Failed { kind, message }, 3) => {
                assert_eq!(kind, "checksum_mismatch", "{message}");
                assert!(
                    message.contains(&digest),
                    "the message names the computed digest: {message}"
                );
                assert!(message.contains("--- agent log tail ---\n"), "{message}");
                assert!(message.contains("KILN-AGENT write-image /dev/vda"), "{message}");
            }
            (Outcome::Succeeded { .. }, 1 | 2 | 4 | 5) => {}
            _ => panic!("unexpected result {r:#?}\n{}", ctx()),
        }
    }

    // Inventory matches the VM.
    assert_eq!(seen.inventory.len(), 1, "{}", ctx());
    let inv = &seen.inventory[0];
    assert_eq!(inv.cpu.count, spec.cpus);
    assert_eq!(inv.cpu.architecture, "x86_64");
    assert!(!inv.cpu.model.is_empty());
    assert_eq!(inv.memory_mib, spec.memory_mib, "{inv:#?}");
    assert_eq!(inv.boot_mode, "legacy");
    assert_eq!(inv.system.vendor, "QEMU");
    assert_eq!(inv.system.serial, spec.system_serial);
    assert_eq!(inv.system.uuid, spec.uuid);
    let disks: Vec<(&str, u64)> = inv.disks.iter().map(|d| (d.name.as_str(), d.size_bytes)).collect();
    assert_eq!(
        disks,
        vec![("/dev/vda", 4 * GIB), ("/dev/vdb", 256 * MIB as u64)],
        "{inv:#?}"
    );
    let vda = &inv.disks[0];
    assert_eq!(vda.serial, spec.disk_serial);
    assert!(!vda.removable);
    assert!(
        vda.by_path
            .as_deref()
            .is_some_and(|p| p.starts_with("/dev/disk/by-path/pci-0000:00:")),
        "{vda:#?}"
    );
    assert_ne!(vda.by_path, inv.disks[1].by_path);
    assert_eq!(inv.nics.len(), 1, "{inv:#?}");
    let n = &inv.nics[0];
    assert_eq!(n.mac, spec.mac);
    assert_eq!(n.driver, "virtio_net");
    assert!(n.link_up);
    assert_eq!(n.ipv4, vec!["10.0.2.15".to_string()]);

    // Progress was streamed during the write.
    assert!(
        seen.progress
            .iter()
            .any(|p| p.command_id == 4 && p.bytes_written == raw.len() as u64),
        "no final progress for the write\n{}",
        ctx()
    );

    // The WriteImage result names the disk and the verified digest.
    let Outcome::Succeeded { detail } = &seen.results[3].outcome else {
        unreachable!()
    };
    assert_eq!(detail["disk"], "/dev/vda", "{detail}");
    assert_eq!(detail["digest"], format!("sha256:{digest}"), "{detail}");
    assert_eq!(detail["format"], "qcow2", "{detail}");

    // vda holds the image, byte for byte, except the second MBR entry: the config drive partition after the image.
    let mut head = vec![0u8; raw.len()];
    let f = std::fs::File::open(&root).unwrap();
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
    assert!(head[..462] == raw[..462], "boot code or first partition entry differ");
    assert!(head[478..] == raw[478..], "the image on vda differs from the raw image");
    let entry = &head[462..478];
    let start = u64::from(u32::from_le_bytes(entry[8..12].try_into().unwrap())) * 512;
    assert!(
        entry[4] != 0 && start >= raw.len() as u64,
        "no config drive partition after the image: {entry:?}"
    );
    assert_eq!(detail["config_drive"]["partition"], 2, "{detail}");
    // mtools reads the config drive's FAT: label and user data as cloud-init would see them.
    let img = format!("{}@@{start}", root.display());
    let out = Command::new("mlabel").args(["-s", "-i", &img, "::"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("config-2"), "{out:?}");
    let out = Command::new("mtype")
        .args(["-i", &img, "::/openstack/latest/user_data"])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), USER_DATA, "{out:?}");
    let out = Command::new("mtype")
        .args(["-i", &img, "::/openstack/latest/meta_data.json"])
        .output()
        .unwrap();
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(meta["uuid"], "6b696c6e-0000-4000-8000-000000000042", "{meta}");
    let mut tail = vec![0u8; MIB];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut tail, 4 * GIB - MIB as u64).unwrap();
    assert!(tail.iter().all(|b| *b == 0), "vda's last MiB was not erased");

    // vdb: the first and last MiB zeroed, nothing else touched.
    let after = std::fs::read(&data).unwrap();
    assert_eq!(after.len(), content.len());
    assert!(after[..MIB].iter().all(|b| *b == 0), "vdb's first MiB not zeroed");
    assert!(
        after[after.len() - MIB..].iter().all(|b| *b == 0),
        "vdb's last MiB not zeroed"
    );
    assert!(
        after[MIB..after.len() - MIB].iter().all(|b| *b == 0x5a),
        "vdb data between was touched"
    );
}
