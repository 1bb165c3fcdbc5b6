//! The agent in a real VM: the project's ramdisk (static kiln-agent + busybox + Debian kernel) boots in QEMU (TCG)
//! with user-mode networking, DHCPs from QEMU's slirp, and talks to a stand-in appliance served by this test on
//! loopback (reached as 10.0.2.2). The test checks the inventory against the VM's configuration, what the
//! commands did to the disk file, and the reported results. Logs stay in a kept temp dir when the test fails.

mod common;

use std::time::Duration;

use common::{Vm, VmSpec};
use kiln_images::protocol::{CommandKind, Outcome};

const MIB: usize = 1024 * 1024;

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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_inspects_erases_and_powers_off_in_a_vm() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ramdisk = tokio::task::spawn_blocking(common::ramdisk).await.unwrap();
    assert!(ramdisk.bytes < 64 * 1024 * 1024, "ramdisk is {} bytes", ramdisk.bytes);

    let logs = LogDir(Some(
        tempfile::Builder::new().prefix("kiln-agent-vm-").tempdir().unwrap(),
    ));
    let dir = logs.0.as_ref().unwrap().path().to_path_buf();
    // A 256 MiB disk full of a pattern, with an "MBR" signature at the start and something at the end.
    let disk = dir.join("disk.raw");
    let mut content = vec![0x5au8; 256 * MIB];
    content[510] = 0x55;
    content[511] = 0xaa;
    std::fs::write(&disk, &content).unwrap();

    let token = format!("tok-{}", std::process::id());
    let (app, port) = common::start_appliance(
        &token,
        vec![CommandKind::Inspect, CommandKind::EraseMetadata, CommandKind::PowerOff],
        Vec::new(),
    )
    .await;
    let spec = VmSpec {
        cpus: 2,
        memory_mib: 1024,
        mac: "52:54:00:4b:69:01".into(),
        disk: disk.clone(),
        disk_serial: "KILN-VDA-1".into(),
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
    let ctx = || format!("serial log:\n{serial}\nseen: {seen:#?}\nlogs: {}", dir.display());
    assert!(status.is_some(), "the VM did not power off in time\n{}", ctx());

    for phase in [
        "KILN-AGENT init",
        "KILN-AGENT dhcp-bound eth0",
        "KILN-AGENT connected",
        "KILN-AGENT powering-off",
    ] {
        assert!(serial.contains(phase), "no {phase:?} on the console\n{}", ctx());
    }
    assert!(!seen.heartbeats.is_empty());
    assert_eq!(seen.unauthorized, 0, "{}", ctx());

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
    assert_eq!(inv.disks.len(), 1, "{inv:#?}");
    let d = &inv.disks[0];
    assert_eq!(d.name, "/dev/vda");
    assert_eq!(d.size_bytes, 256 * MIB as u64);
    assert_eq!(d.serial, spec.disk_serial);
    assert!(!d.removable);
    assert!(
        d.by_path
            .as_deref()
            .is_some_and(|p| p.starts_with("/dev/disk/by-path/pci-0000:00:")),
        "{d:#?}"
    );
    assert_eq!(inv.nics.len(), 1, "{inv:#?}");
    let n = &inv.nics[0];
    assert_eq!(n.mac, spec.mac);
    assert_eq!(n.driver, "virtio_net");
    assert!(n.link_up);
    assert_eq!(n.ipv4, vec!["10.0.2.15".to_string()]);

    // Every command reported success, in order.
    let ids: Vec<u64> = seen.results.iter().map(|r| r.command_id).collect();
    assert_eq!(ids, vec![1, 2, 3], "{}", ctx());
    for r in &seen.results {
        assert!(matches!(r.outcome, Outcome::Succeeded { .. }), "{r:#?}\n{}", ctx());
    }

    // EraseMetadata zeroed the first and last MiB and nothing else.
    let after = std::fs::read(&disk).unwrap();
    assert_eq!(after.len(), content.len());
    assert!(after[..MIB].iter().all(|b| *b == 0), "first MiB not zeroed");
    assert!(
        after[after.len() - MIB..].iter().all(|b| *b == 0),
        "last MiB not zeroed"
    );
    assert!(
        after[MIB..after.len() - MIB].iter().all(|b| *b == 0x5a),
        "data between was touched"
    );
}
