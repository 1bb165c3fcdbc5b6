//! Smoke test of the lab itself: a lab VM is powered on through a real BMC emulator with network boot, its serial
//! console shows iPXE starting, and it is powered off again; once through sushy-tools' Redfish (libvirt driver) and
//! once through ipmi_sim (IPMI over LAN, driven with ipmitool).

use std::time::Duration;

use kiln_tests::{
    cmd,
    ipmi::{self, IpmiSim},
    libvirt::Libvirtd,
    logs::LogDir,
    netns::Netns,
    qemu::{self, VmSpec},
    state::Record,
    sushy::{Driver, Sushy},
};

fn redfish(ns: &Netns, sushy: &Sushy, method: &str, path: &str, body: Option<&str>) -> anyhow::Result<String> {
    let url = format!("{}{path}", sushy.base_url());
    let user = format!("{}:{}", ipmi::USERNAME, ipmi::PASSWORD);
    let mut args = vec![
        "netns",
        "exec",
        ns.name(),
        "curl",
        "-sS",
        "--fail-with-body",
        "-L",
        "-u",
        &user,
        "-X",
        method,
        &url,
    ];
    if let Some(b) = body {
        args.extend_from_slice(&["-H", "Content-Type: application/json", "-d", b]);
    }
    cmd::run("ip", &args)
}

#[test]
fn redfish_powers_a_lab_vm_into_ipxe_and_off_again() -> anyhow::Result<()> {
    let record = Record::new()?;
    let logs = LogDir::new("smoke-redfish")?;
    let dir = tempfile::tempdir()?;
    let ns = Netns::create(&record)?;
    let mut libvirt = Libvirtd::start(&record, &ns, dir.path(), &logs)?;
    let spec = VmSpec::new("smoke-rf", "52:54:00:99:00:21");
    let domain = libvirt.define(&record, &spec, dir.path(), &logs)?;
    let sushy = Sushy::start(&record, &ns, &logs, Driver::Libvirt)?;
    let system = format!("/redfish/v1/Systems/{}", libvirt.uuid(&domain)?);

    // Unauthenticated requests are refused: the lab's BMC is not an open door.
    let url = format!("{}{system}", sushy.base_url());
    let anon = cmd::output(
        "ip",
        &[
            "netns",
            "exec",
            ns.name(),
            "curl",
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &url,
        ],
    )?;
    assert_eq!(String::from_utf8_lossy(&anon.stdout), "401");

    redfish(
        &ns,
        &sushy,
        "PATCH",
        &system,
        Some(r#"{"Boot":{"BootSourceOverrideTarget":"Pxe","BootSourceOverrideEnabled":"Once"}}"#),
    )?;
    redfish(
        &ns,
        &sushy,
        "POST",
        &format!("{system}/Actions/ComputerSystem.Reset"),
        Some(r#"{"ResetType":"On"}"#),
    )?;
    cmd::wait_for("the VM to run", Duration::from_secs(30), || {
        libvirt.is_running(&domain).then_some(())
    })?;
    let console = logs.file("console-smoke-rf.log");
    qemu::wait_console(&console, "iPXE initialising devices", Duration::from_secs(90))?;

    redfish(
        &ns,
        &sushy,
        "POST",
        &format!("{system}/Actions/ComputerSystem.Reset"),
        Some(r#"{"ResetType":"ForceOff"}"#),
    )?;
    cmd::wait_for("the VM to stop", Duration::from_secs(30), || {
        (!libvirt.is_running(&domain)).then_some(())
    })?;
    let state = redfish(&ns, &sushy, "GET", &system, None)?;
    assert!(
        state.contains(r#""PowerState": "Off""#) || state.contains(r#""PowerState":"Off""#),
        "{state}"
    );
    Ok(())
}

#[test]
fn ipmi_powers_a_lab_vm_into_ipxe_and_off_again() -> anyhow::Result<()> {
    let record = Record::new()?;
    let logs = LogDir::new("smoke-ipmi")?;
    let dir = tempfile::tempdir()?;
    let ns = Netns::create(&record)?;
    let spec = VmSpec::new("smoke-ipmi", "52:54:00:99:00:22");
    let bmc = IpmiSim::start(&record, &ns, &spec, dir.path(), &logs)?;

    assert!(bmc.ipmitool(&["chassis", "power", "status"])?.contains("off"));
    bmc.ipmitool(&["chassis", "bootdev", "pxe"])?;
    bmc.ipmitool(&["chassis", "power", "on"])?;
    cmd::wait_for("the VM to run", Duration::from_secs(10), || {
        bmc.vm_running().then_some(())
    })?;
    assert!(bmc.ipmitool(&["chassis", "power", "status"])?.contains("on"));
    qemu::wait_console(&bmc.serial_log, "iPXE initialising devices", Duration::from_secs(90))?;

    bmc.ipmitool(&["chassis", "power", "off"])?;
    cmd::wait_for("the VM to stop", Duration::from_secs(10), || {
        (!bmc.vm_running()).then_some(())
    })?;
    assert!(bmc.ipmitool(&["chassis", "power", "status"])?.contains("off"));

    // A wrong password is refused by the BMC.
    let mut args: Vec<String> = ["netns", "exec", ns.name(), "ipmitool"].map(String::from).into();
    args.extend(kiln_tests::ipmi::lanplus_args(bmc.port, "admin", "wrong"));
    args.extend(["chassis", "power", "status"].map(String::from));
    let wrong = cmd::output("ip", &args.iter().map(String::as_str).collect::<Vec<_>>())?;
    assert!(!wrong.status.success());
    Ok(())
}
