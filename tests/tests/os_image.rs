//! The test OS image itself boots, by BIOS and by UEFI, and its cloud-init runs the user data of an OpenStack config
//! drive (`config-2`). The config drive here is made with mkfs.vfat + mtools, independently of kiln's builder, so a
//! failure points at the image, not at kiln.

use std::process::{Command, Stdio};
use std::time::Duration;

use kiln_tests::{cmd, logs::LogDir, osimage::OsImage, qemu};

fn config_drive(dir: &std::path::Path, marker: &str) -> anyhow::Result<std::path::PathBuf> {
    let img = dir.join("config-2.img");
    cmd::run("truncate", &["-s", "16M", &img.display().to_string()])?;
    cmd::run("mkfs.vfat", &["-n", "config-2", &img.display().to_string()])?;
    let i = img.display().to_string();
    cmd::run("mmd", &["-i", &i, "::/openstack", "::/openstack/latest"])?;
    let meta = dir.join("meta_data.json");
    std::fs::write(
        &meta,
        r#"{"uuid":"0b9a7e8c-1111-4a4a-9c9c-000000000001","hostname":"os-image-test","name":"os-image-test"}"#,
    )?;
    let user = dir.join("user_data");
    std::fs::write(&user, format!("#!/bin/sh\necho {marker} > /dev/ttyS0\n"))?;
    cmd::run(
        "mcopy",
        &[
            "-i",
            &i,
            &meta.display().to_string(),
            "::/openstack/latest/meta_data.json",
        ],
    )?;
    cmd::run(
        "mcopy",
        &["-i", &i, &user.display().to_string(), "::/openstack/latest/user_data"],
    )?;
    Ok(img)
}

fn boot(uefi: bool) -> anyhow::Result<()> {
    let image = OsImage::get()?;
    let name = if uefi { "os-image-uefi" } else { "os-image-bios" };
    let logs = LogDir::new(name)?;
    let dir = tempfile::tempdir()?;
    let overlay = dir.path().join("disk.qcow2");
    cmd::run(
        "qemu-img",
        &[
            "create",
            "-q",
            "-f",
            "qcow2",
            "-b",
            &image.raw().display().to_string(),
            "-F",
            "raw",
            &overlay.display().to_string(),
        ],
    )?;
    let marker = format!("KILN-USERDATA-{}", std::process::id());
    let cd = config_drive(dir.path(), &marker)?;
    let console = logs.file("console.log");
    let mut args: Vec<String> = vec![
        "-accel".into(),
        qemu::accel(),
        "-m".into(),
        "1024".into(),
        "-display".into(),
        "none".into(),
        "-monitor".into(),
        "none".into(),
        "-nic".into(),
        "none".into(),
        "-serial".into(),
        format!("file:{}", console.display()),
        "-drive".into(),
        format!("file={},format=qcow2,if=virtio", overlay.display()),
        "-drive".into(),
        format!("file={},format=raw,if=virtio", cd.display()),
    ];
    if uefi {
        let vars = dir.path().join("vars.fd");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", &vars)?;
        args.extend([
            "-machine".into(),
            "q35".into(),
            "-drive".into(),
            "if=pflash,format=raw,readonly=on,file=/usr/share/OVMF/OVMF_CODE_4M.fd".into(),
            "-drive".into(),
            format!("if=pflash,format=raw,file={}", vars.display()),
        ]);
    }
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(logs.file("qemu.log"))?)
        .spawn()?;
    let result = qemu::wait_console(&console, &marker, Duration::from_secs(400));
    let _ = child.kill();
    let _ = child.wait();
    if result.is_err() {
        eprintln!("console tail:\n{}", tail(&qemu::read_console(&console), 3000));
    }
    result
}

fn tail(s: &str, n: usize) -> &str {
    let start = s.len().saturating_sub(n);
    let start = (start..s.len()).find(|i| s.is_char_boundary(*i)).unwrap_or(s.len());
    &s[start..]
}

#[test]
fn os_image_boots_by_bios_and_runs_config_drive_user_data() -> anyhow::Result<()> {
    boot(false)
}

#[test]
fn os_image_boots_by_uefi_and_runs_config_drive_user_data() -> anyhow::Result<()> {
    boot(true)
}
