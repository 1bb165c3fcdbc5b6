//! Config drives added to real disk images partitioned by sgdisk/sfdisk, checked with sgdisk, sfdisk, blkid and mtools.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;
use kiln_images::ImageError;
use kiln_images::configdrive::write_config_drive;
use kiln_images::protocol::ConfigDrive;

fn drive() -> ConfigDrive {
    ConfigDrive {
        meta_data: serde_json::json!({"uuid": "7d3c9d4e-4d7a-4a3e-9d2b-0b7e1f2a3c4d", "hostname": "node-1"}),
        user_data: Some("#cloud-config\nruncmd:\n  - echo kiln-was-here\n".into()),
        network_data: Some(serde_json::json!({"links": [], "networks": [], "services": []})),
    }
}

fn out(cmd: &str, args: &[&str]) -> String {
    let o = Command::new(cmd)
        .args(args)
        .env("MTOOLS_SKIP_CHECK", "1")
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// blkid and mtools see a vfat `config-2` filesystem with the expected files at `offset` of `disk`.
fn check_filesystem(disk: &Path, offset: u64) {
    let d = disk.to_str().unwrap();
    let probe = out("blkid", &["-p", "-O", &offset.to_string(), "-o", "export", d]);
    assert!(
        probe.contains("LABEL=config-2") && probe.contains("TYPE=vfat"),
        "{probe}"
    );
    let img = format!("{d}@@{offset}");
    let listing = out("mdir", &["-b", "-i", &img, "::/openstack/latest"]);
    for f in ["meta_data.json", "user_data", "network_data.json"] {
        assert!(listing.contains(f), "{listing}");
    }
    assert!(out("mdir", &["-b", "-i", &img, "::/openstack/2018-08-27"]).contains("user_data"));
    let user = out("mtype", &["-i", &img, "::/openstack/latest/user_data"]);
    assert_eq!(user, drive().user_data.unwrap());
    let meta: serde_json::Value =
        serde_json::from_str(&out("mtype", &["-i", &img, "::/openstack/latest/meta_data.json"])).unwrap();
    assert_eq!(meta["hostname"], "node-1");
}

#[test]
fn gpt_disk_gets_a_config_2_partition_after_the_last_one() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    let d = disk.to_str().unwrap();
    std::fs::write(&disk, vec![0u8; 32 << 20]).unwrap();
    sh("sgdisk", &["-o", "-n", "1:2048:+20M", "-t", "1:8300", d]);
    // The image was smaller than the machine's disk.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(96 << 20)
        .unwrap();
    let p = write_config_drive(&disk, &drive()).unwrap();
    assert_eq!((p.partition, p.table), (2, "gpt"));
    assert_eq!(p.start_byte, 21 << 20, "right after partition 1, aligned to 1 MiB");
    let verify = out("sgdisk", &["-v", d]);
    assert!(
        verify.contains("No problems found"),
        "backup GPT at the real end: {verify}"
    );
    let info = out("sgdisk", &["-i", "2", d]);
    assert!(info.contains("Partition name: 'config-2'"), "{info}");
    assert!(
        info.contains(&format!("First sector: {} ", p.start_byte / 512)),
        "{info}"
    );
    check_filesystem(&disk, p.start_byte);
}

#[test]
fn mbr_disk_gets_a_primary_partition() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 32 << 20]).unwrap();
    let mut child = Command::new("sfdisk")
        .arg(&disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"label: dos\nstart=2048, size=40960, type=83\n")
        .unwrap();
    assert!(child.wait().unwrap().success());
    std::fs::OpenOptions::new()
        .write(true)
        .open(&disk)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let p = write_config_drive(&disk, &drive()).unwrap();
    assert_eq!((p.partition, p.table), (2, "mbr"));
    let dump = out("sfdisk", &["-d", disk.to_str().unwrap()]);
    assert!(dump.contains(&format!("start=       {}", p.start_byte / 512)), "{dump}");
    check_filesystem(&disk, p.start_byte);
}

#[test]
fn a_full_disk_is_refused_unchanged() {
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("disk.img");
    std::fs::write(&disk, vec![0u8; 32 << 20]).unwrap();
    sh("sgdisk", &["-o", "-n", "1:2048:0", disk.to_str().unwrap()]);
    let before = sha256_file(&disk);
    let e = write_config_drive(&disk, &drive()).unwrap_err();
    assert!(matches!(e, ImageError::ConfigDrivePartition { .. }), "{e:?}");
    assert_eq!(sha256_file(&disk), before);
    std::fs::write(&disk, vec![0u8; 32 << 20]).unwrap();
    assert!(matches!(
        write_config_drive(&disk, &drive()),
        Err(ImageError::ConfigDrivePartition { .. })
    ));
}
