//! An IPMI-over-LAN BMC for one lab VM: OpenIPMI's `ipmi_sim` on the lab namespace's loopback (RMCP+, cipher suite 3) with a
//! `chassis_control` program that starts and stops the VM's QEMU inside the lab namespace, so both power and
//! `chassis bootdev pxe|disk` work. The VM also has the BMC in-band, as a server does: a KCS system interface (QEMU's
//! `isa-ipmi-kcs` + `ipmi-bmc-extern`) wired to the same ipmi_sim (its `VM` serial codec), whose LAN configuration
//! (`lan_config_program`) reports the address ipmi_sim listens on, so `ipmitool lan print` in the VM, or kiln-agent's
//! discovery boot, reads the BMC address kiln has. Killed (with its VM) on drop.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Child;

use anyhow::Context;

use crate::{cmd, logs::LogDir, netns::Netns, qemu::VmSpec, state::Record};

/// The user the lab's BMCs accept.
pub const USERNAME: &str = "admin";
/// The lab's BMC password (test credentials of a private emulator, not a secret).
pub const PASSWORD: &str = "kiln-lab-pw";

const CHASSIS_SCRIPT: &str = r#"#!/bin/bash
# ipmi_sim chassis_control program for one kiln lab VM.
#   THIS STATE get power|boot...        -> "power:0|1" / "boot:none|pxe|default|cdrom|bios"
#   THIS STATE set power 1|0 | reset 1 | shutdown 1 | boot pxe|default|... | identify I F
# Boot 'pxe' starts QEMU with the NIC first in the boot order; anything else without the NIC's option ROM.
S=${1:?state dir}; shift; op=$1; shift
log() { echo "$(date +%s.%N) $*" >> "$S/chassis.log"; }
running() { [ -f "$S/qemu.pid" ] && kill -0 "$(cat "$S/qemu.pid")" 2>/dev/null; }
boot() { cat "$S/boot" 2>/dev/null || echo default; }
# State files are replaced atomically (write, then rename), so a reader never sees one empty or half-written.
put() { printf '%s\n' "$2" > "$S/.$1.$$" && mv -f "$S/.$1.$$" "$S/$1"; }
start_vm() {
  running && return 0
  if [ "$(boot)" = pxe ]; then mapfile -t A < "$S/qemu-pxe.args"; else mapfile -t A < "$S/qemu-disk.args"; fi
  rm -f "$S/qemu.pid"
  ip netns exec "$(cat "$S/netns")" qemu-system-x86_64 "${A[@]}" -daemonize -pidfile "$S/qemu.pid" >> "$S/qemu.out" 2>&1 </dev/null
  log "start rc=$? boot=$(boot) pid=$(cat "$S/qemu.pid" 2>/dev/null)"
}
stop_vm() {
  running || return 0
  local p; p=$(cat "$S/qemu.pid"); kill "$p"
  for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
  kill -9 "$p" 2>/dev/null; rm -f "$S/qemu.pid"; log "stop pid=$p"
}
case $op in
  get) for p in "$@"; do case $p in
         power) if running; then echo power:1; else echo power:0; fi;;
         boot) echo "boot:$(boot)";;
         *) echo "Invalid parameter: $p"; exit 1;;
       esac; done;;
  set) while [ $# -gt 0 ]; do p=$1; v=$2; shift 2; log "set $p $v"
         case $p in
           power) if [ "$v" = 1 ]; then start_vm; else stop_vm; fi;;
           reset) stop_vm; start_vm;;
           shutdown) stop_vm;;
           boot) case $v in none|pxe|default|cdrom|bios) put boot "$v";; *) echo "Invalid boot value: $v"; exit 1;; esac;;
           identify) shift;;
           *) echo "Invalid parameter: $p"; exit 1;;
         esac; done;;
  check) exit 1;;
  *) echo "Unknown operation: $op"; exit 1;;
esac
exit 0
"#;

/// ipmi_sim's `lan_config_program`: `THIS DEVICE get PARAM...` prints `PARAM:VALUE` for each; the BMC's address is the
/// one ipmi_sim listens on (the first argument), the rest fixed. `set` and `check` accept and keep nothing.
const LAN_SCRIPT: &str = r#"#!/bin/sh
ip=${1:?address}; shift; shift; op=$1; shift
[ "$op" = get ] || exit 0
for p in "$@"; do case $p in
  ip_addr) echo "ip_addr:$ip";;
  ip_addr_src) echo "ip_addr_src:static";;
  mac_addr) echo "mac_addr:02:00:00:00:06:23";;
  subnet_mask) echo "subnet_mask:255.0.0.0";;
  default_gw_ip_addr|backup_gw_ip_addr) echo "$p:0.0.0.0";;
  default_gw_mac_addr|backup_gw_mac_addr) echo "$p:00:00:00:00:00:00";;
  *) echo "Invalid parameter: $p"; exit 1;;
esac; done
"#;

/// What one ipmi_sim runs with, shared by the lab's launcher and the loopback one
/// ([`crate::ipmi_loopback::IpmiSim`]): one management controller without SDRs, one LAN channel on `listen:port`
/// (RMCP+; ipmi_sim offers cipher suite 3), a `chassis_control` program and the users it accepts.
pub(crate) struct SimConfig<'a> {
    pub name: &'a str,
    pub listen: &'a str,
    pub port: u16,
    /// More lines inside the LAN channel's block (e.g. a `lan_config_program`).
    pub lan_extra: &'a str,
    /// More lines after it (e.g. a `serial kcs` system interface).
    pub extra: &'a str,
    /// The chassis control program and its arguments.
    pub chassis_control: &'a str,
    /// (user id, name, password, privilege).
    pub users: &'a [(u8, &'a str, &'a str, &'a str)],
}

impl SimConfig<'_> {
    /// Writes `lan.conf`, `sim.emu` and the state directory `sim/` into `dir`.
    pub fn write(&self, dir: &Path) -> std::io::Result<()> {
        let mut conf = format!(
            r#"name "{name}"
set_working_mc 0x20
  startlan 1
    addr {listen} {port}
    priv_limit admin
    allowed_auths_callback none md2 md5 straight
    allowed_auths_user none md2 md5 straight
    allowed_auths_operator none md2 md5 straight
    allowed_auths_admin none md2 md5 straight
    guid a123456789abcdefa123456789abcdef
    {lan_extra}
  endlan
  {extra}
  chassis_control "{chassis_control}"
"#,
            name = self.name,
            listen = self.listen,
            port = self.port,
            lan_extra = self.lan_extra,
            extra = self.extra,
            chassis_control = self.chassis_control,
        );
        for (id, user, password, privilege) in self.users {
            conf += &format!("  user {id} true \"{user}\" \"{password}\" {privilege} 10 none md2 md5 straight\n");
        }
        std::fs::write(dir.join("lan.conf"), conf)?;
        std::fs::write(
            dir.join("sim.emu"),
            "mc_setbmc 0x20\nmc_add 0x20 0 no-device-sdrs 0x23 9 8 0x9f 0x1291 0xf02 persist_sdr\n\
             sel_enable 0x20 1000 0x0a\nmc_enable 0x20\n",
        )?;
        std::fs::create_dir_all(dir.join("sim"))
    }

    /// ipmi_sim's arguments for a directory [`Self::write`] filled: no console (`-n`).
    pub fn args(dir: &Path) -> Vec<std::ffi::OsString> {
        vec![
            "-c".into(),
            dir.join("lan.conf").into(),
            "-f".into(),
            dir.join("sim.emu").into(),
            "-s".into(),
            dir.join("sim").into(),
            "-n".into(),
        ]
    }
}

/// ipmitool's arguments for an RMCP+ session with cipher suite 3 (all ipmi_sim offers) to a BMC on loopback.
pub fn lanplus_args(port: u16, user: &str, password: &str) -> Vec<String> {
    let port = port.to_string();
    [
        "-I",
        "lanplus",
        "-C",
        "3",
        "-H",
        "127.0.0.1",
        "-p",
        &port,
        "-U",
        user,
        "-P",
        password,
    ]
    .map(String::from)
    .into()
}

/// The address every lab ipmi_sim listens on (inside the lab's namespace).
const LISTEN: &str = "127.0.0.1";

/// A running `ipmi_sim` wired to one VM.
#[derive(Debug)]
pub struct IpmiSim {
    pub port: u16,
    netns: String,
    pub state_dir: PathBuf,
    pub serial_log: PathBuf,
    child: Child,
}

impl IpmiSim {
    /// Starts ipmi_sim on 127.0.0.1:<free port> for a VM (not yet powered on) on a tap in `ns`.
    pub fn start(record: &Record, ns: &Netns, spec: &VmSpec, dir: &Path, logs: &LogDir) -> anyhow::Result<Self> {
        spec.prepare(dir)?;
        let state_dir = dir.join(format!("ipmi-{}", spec.name));
        std::fs::create_dir_all(state_dir.join("sim"))?;
        let tap = crate::qemu::tap_name(&spec.name);
        ns.add_tap(&tap)?;
        let serial_log = logs.file(&format!("console-{}.log", spec.name));
        // The VM's KCS interface connects to ipmi_sim's VM port (and reconnects after ipmi_sim restarts).
        let vm_port = crate::free_port();
        let in_band = [
            "-chardev".to_owned(),
            format!("socket,id=ipmi0,host={LISTEN},port={vm_port},reconnect=1"),
            "-device".to_owned(),
            "ipmi-bmc-extern,id=bmc0,chardev=ipmi0".to_owned(),
            "-device".to_owned(),
            "isa-ipmi-kcs,bmc=bmc0".to_owned(),
        ];
        for (file, pxe) in [("qemu-pxe.args", true), ("qemu-disk.args", false)] {
            let mut args = spec.qemu_args(dir, &tap, &serial_log, pxe);
            args.extend(in_band.iter().cloned());
            std::fs::write(state_dir.join(file), args.join("\n"))?;
        }
        std::fs::write(state_dir.join("netns"), ns.name())?;
        let script = state_dir.join("chassis.sh");
        std::fs::write(&script, CHASSIS_SCRIPT)?;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
        let lan_script = state_dir.join("lan.sh");
        std::fs::write(&lan_script, LAN_SCRIPT)?;
        std::fs::set_permissions(&lan_script, std::fs::Permissions::from_mode(0o755))?;
        record.add_pidfile(&state_dir.join("qemu.pid"));

        let port = crate::free_udp_port();
        let lan_config_program = format!("lan_config_program \"{} {LISTEN} lan0\"", lan_script.display());
        let kcs = format!("serial kcs {LISTEN} {vm_port} codec VM");
        let chassis_control = format!("{} {}", script.display(), state_dir.display());
        let conf = SimConfig {
            name: &format!("kiln-{}", spec.name),
            listen: LISTEN,
            port,
            lan_extra: &lan_config_program,
            extra: &kcs,
            chassis_control: &chassis_control,
            users: &[(2, USERNAME, PASSWORD, "admin")],
        };
        conf.write(&state_dir)?;
        let log = std::fs::File::create(logs.file(&format!("ipmi_sim-{}.log", spec.name)))?;
        let child = crate::spawn_logged(ns.command("ipmi_sim").args(SimConfig::args(&state_dir)), log)
            .context("start ipmi_sim")?;
        record.add_pid(child.id());
        let sim = Self {
            port,
            netns: ns.name().to_owned(),
            state_dir,
            serial_log,
            child,
        };
        cmd::wait_for("ipmi_sim to answer", std::time::Duration::from_secs(10), || {
            sim.ipmitool(&["mc", "info"]).ok()
        })?;
        Ok(sim)
    }

    /// Runs `ipmitool -I lanplus -C 3` (ipmi_sim speaks suite 3 only) against this BMC, inside the lab namespace.
    pub fn ipmitool(&self, args: &[&str]) -> anyhow::Result<String> {
        let mut full: Vec<String> = ["netns", "exec", &self.netns, "ipmitool"].map(String::from).into();
        full.extend(lanplus_args(self.port, USERNAME, PASSWORD));
        full.extend(args.iter().map(|a| a.to_string()));
        cmd::run("ip", &full.iter().map(String::as_str).collect::<Vec<_>>())
    }

    /// The BMC address in kiln's (Metal3's) syntax.
    pub fn address(&self) -> String {
        format!("ipmi://{LISTEN}:{}", self.port)
    }

    /// Whether the VM's QEMU is running.
    pub fn vm_running(&self) -> bool {
        std::fs::read_to_string(self.state_dir.join("qemu.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .is_some_and(|p| nix::sys::signal::kill(nix::unistd::Pid::from_raw(p), None).is_ok())
    }
}

impl Drop for IpmiSim {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Ok(pid) = std::fs::read_to_string(self.state_dir.join("qemu.pid")) {
            cmd::quiet("kill", &["-9", pid.trim()]);
        }
    }
}
