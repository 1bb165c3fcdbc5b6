//! End to end on the image side: the project's Debian + cloud-init test image (qcow2, built and cached by
//! `tests/os-image/build.sh`) is written by kiln's pipeline onto a disk larger than the image, kiln's config drive is
//! added after the last partition, and the disk boots in QEMU, where cloud-init's ConfigDrive datasource finds the
//! drive and runs the user data (which prints a marker on the serial console).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use kiln_images::configdrive::write_config_drive;
use kiln_images::protocol::{ChecksumType, ConfigDrive, ImageSpec};
use kiln_images::{Progress, write_image};

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_owned()
}

/// Kills QEMU when the test ends, passed or not.
struct Qemu(Child);

impl Drop for Qemu {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn written_image_boots_and_cloud_init_runs_the_config_drive_user_data() {
    let root = repo_root();
    let out = Command::new("bash")
        .arg(root.join("tests/os-image/build.sh"))
        .env("KILN_CACHE", root.join(".cache"))
        .stderr(Stdio::inherit())
        .output()
        .expect("run tests/os-image/build.sh");
    assert!(out.status.success(), "tests/os-image/build.sh failed");
    let image_dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().lines().last().unwrap());

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
        user_data: Some(format!("#!/bin/sh\necho {marker} > /dev/ttyS0\n")),
        network_data: None,
    };
    let placement = write_config_drive(&disk, &drive).unwrap();
    assert_eq!(placement.table, "gpt");
    let verify = common::sh_out("sgdisk", &["-v", disk.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&verify.stdout).contains("No problems found"));

    let console = dir.path().join("console.log");
    let accel = kiln_tests::qemu::accel();
    let qemu = Command::new("qemu-system-x86_64")
        .args([
            "-accel", &accel, "-m", "1024", "-display", "none", "-monitor", "none", "-nic", "none",
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
            break;
        }
        if start.elapsed() > Duration::from_secs(420) {
            let tail = &text[text.len().saturating_sub(3000)..];
            panic!("cloud-init did not run the config drive user data; console tail:\n{tail}");
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
}
