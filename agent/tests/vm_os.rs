//! The whole deploy in two VMs: the agent (in the project's ramdisk) writes the project's debootstrapped Debian image
//! with cloud-init (a compressed qcow2 built and cached by `tests/os-image/build.sh`) plus a config drive to its
//! disk and powers off; then the same disk boots by BIOS through the image's bootloader, and cloud-init's
//! ConfigDrive datasource runs the user data, whose marker the test reads on the serial console.
//!
//! Slow on a cold cache (debootstrap downloads ~150 MB and installs for a few minutes; the Debian boot under TCG
//! takes a minute or two), so it is opt-in: `cargo test -p kiln-agent --test vm_os -- --ignored`.

mod common;

use std::time::{Duration, Instant};

use kiln_images::protocol::{ChecksumType, CommandKind, ConfigDrive, ImageSpec, Outcome, RootDeviceHints};
use kiln_tests::qemu_user::{Vm, VmSpec};
use sha2::Digest;

/// The shell computes the marker, so the literal never appears in the user data itself.
const USER_DATA: &str = "#cloud-config\nruncmd:\n  - [ sh, -c, 'echo KILN-CLOUD-INIT-$((6*7)) > /dev/ttyS0' ]\n";
const MARKER: &str = "KILN-CLOUD-INIT-42";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "slow: debootstraps a Debian image on first run and boots it under TCG; run with --ignored"]
async fn agent_deploys_debian_whose_cloud_init_reads_the_config_drive() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let ramdisk = tokio::task::spawn_blocking(kiln_tests::ramdisk::get)
        .await
        .unwrap()
        .expect("the agent ramdisk");
    let os = tokio::task::spawn_blocking(kiln_tests::osimage::OsImage::get)
        .await
        .unwrap()
        .expect("the test OS image")
        .dir;

    let tmp = tempfile::Builder::new().prefix("kiln-agent-os-").tempdir().unwrap();
    let dir = tmp.path().to_path_buf();
    let keep = scopeguard(tmp);
    let files = dir.join("files");
    std::fs::create_dir_all(&files).unwrap();
    std::fs::hard_link(os.join("debian.raw.zst"), files.join("debian.raw.zst"))
        .or_else(|_| std::fs::copy(os.join("debian.raw.zst"), files.join("debian.raw.zst")).map(drop))
        .unwrap();
    let digest = hex::encode(sha2::Sha256::digest(
        std::fs::read(files.join("debian.raw.zst")).unwrap(),
    ));

    let disk = dir.join("vda.raw");
    std::fs::File::create(&disk).unwrap().set_len(6 << 30).unwrap();
    let token = format!("tok-os-{}", std::process::id());
    let (app, port) = common::start_appliance(&token, vec![], &files).await;
    *app.script.lock().unwrap() = [
        CommandKind::WriteImage {
            image: ImageSpec {
                url: format!("http://10.0.2.2:{port}/files/debian.raw.zst"),
                checksum: digest,
                checksum_type: ChecksumType::Sha256,
                format: None,
            },
            root_device_hints: RootDeviceHints::default(),
            config_drive: Some(ConfigDrive {
                meta_data: serde_json::json!({"uuid": "6b696c6e-0000-4000-8000-0000000000aa", "hostname": "kiln-os"}),
                user_data: Some(USER_DATA.into()),
                network_data: None,
            }),
            registry: None,
        },
        CommandKind::PowerOff,
    ]
    .into_iter()
    .enumerate()
    .map(|(i, kind)| kiln_images::protocol::Command { id: i as u64 + 1, kind })
    .collect();

    let spec = VmSpec {
        cpus: 2,
        memory_mib: 1024,
        mac: "52:54:00:4b:69:0a".into(),
        disk: disk.clone(),
        disk_serial: "KILN-OS-1".into(),
        extra_disks: vec![],
        system_serial: "KILN-SN-OS".into(),
        uuid: "6b696c6e-0000-4000-8000-0000000000aa".into(),
        append: format!("console=ttyS0 panic=-1 kiln.api=http://10.0.2.2:{port} kiln.token={token}"),
    };
    let mut vm = Vm::start(&ramdisk, &spec, &dir);
    let status = vm.wait_exit(Duration::from_secs(600)).await;
    let serial = vm.serial_text();
    drop(vm);
    {
        let seen = app.seen.lock().unwrap();
        assert!(status.is_some(), "the agent VM did not power off\n{serial}\n{seen:#?}");
        let r: Vec<_> = seen.results.iter().map(|r| (r.command_id, &r.outcome)).collect();
        assert!(
            matches!(
                r.as_slice(),
                [(1, Outcome::Succeeded { .. }), (2, Outcome::Succeeded { .. })]
            ),
            "{r:#?}\n{serial}"
        );
    }

    // Boot the written disk through SeaBIOS and the image's own bootloader.
    let mut os_vm = Vm::boot_disk(&spec, &dir, "os-serial.log");
    // The user data's command ran, and the host name came from the config drive's meta_data (the image's own
    // /etc/hostname says kiln-test).
    let done = |t: &str| t.contains(MARKER) && t.contains(" kiln-os ");
    let deadline = Instant::now() + Duration::from_secs(600);
    while Instant::now() < deadline && !done(&os_vm.serial_text()) {
        if os_vm.wait_exit(Duration::from_millis(10)).await.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let os_serial = os_vm.serial_text();
    drop(os_vm);
    assert!(
        os_serial.contains(MARKER),
        "cloud-init did not run the user data\n{os_serial}"
    );
    assert!(
        os_serial.contains(" kiln-os "),
        "the config drive's hostname was not applied\n{os_serial}"
    );
    keep.disarm();
}

/// Keeps the temp dir (and prints it) unless disarmed at the end of a passing test.
struct Keep(Option<tempfile::TempDir>);
fn scopeguard(d: tempfile::TempDir) -> Keep {
    Keep(Some(d))
}
impl Keep {
    fn disarm(mut self) {
        self.0.take();
    }
}
impl Drop for Keep {
    fn drop(&mut self) {
        if let Some(d) = self.0.take() {
            eprintln!("test logs kept in {}", d.keep().display());
        }
    }
}
