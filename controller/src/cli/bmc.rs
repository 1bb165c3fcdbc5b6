//! `kiln bmc`: an administrator's direct line to one BMC (power, boot device, virtual media, inventory,
//! capabilities), for checking credentials and wiring before enrolling a host. It only parses arguments, calls
//! `kiln_bmc` and prints; it never touches kiln's store.
//!
//! The password never goes on the command line: `--password-file FILE` or the `KILN_BMC_PASSWORD` variable.
//! Exit codes (see [`exit_code`]): 0 ok, 1 other failure, 2 bad address or usage, 3 authentication failed,
//! 4 BMC unreachable (network, TLS, timeout), 5 operation not supported by this BMC.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use comfy_table::Table;
use kiln_bmc::{
    AnyBmc, Bmc, BmcAddress, BmcError, BmcErrorKind, BmcOptions, BootMode, BootPersistence, BootTarget, Credentials,
    PowerAction, PowerState, Secret,
};
use serde_json::json;

/// The environment variable holding the BMC password when no `--password-file` is given.
pub const PASSWORD_ENV: &str = "KILN_BMC_PASSWORD";

/// `kiln bmc <COMMAND> --bmc ADDRESS --username USER [OPTIONS]` (the connection options go anywhere on the line).
#[derive(clap::Args, Debug)]
pub struct BmcArgs {
    /// BMC address: redfish://HOST[:PORT][/redfish/v1/Systems/ID] (also redfish+http, redfish-virtualmedia,
    /// idrac-redfish, idrac-virtualmedia) or ipmi://HOST[:PORT].
    #[arg(long = "bmc", env = "KILN_BMC_ADDRESS", value_name = "ADDRESS", global = true)]
    pub address: Option<BmcAddress>,

    /// BMC user name.
    #[arg(long, short = 'u', env = "KILN_BMC_USERNAME", global = true)]
    pub username: Option<String>,

    /// File holding the password (a trailing newline is ignored); else $KILN_BMC_PASSWORD.
    #[arg(long, value_name = "FILE", global = true)]
    pub password_file: Option<PathBuf>,

    /// Accept any TLS certificate from this BMC (self-signed BMCs).
    #[arg(long, global = true)]
    pub insecure: bool,

    /// Trust the CA certificates in this PEM file for the BMC's TLS certificate.
    #[arg(long, value_name = "FILE", conflicts_with = "insecure", global = true)]
    pub ca_bundle: Option<PathBuf>,

    /// Seconds to wait for one answer from the BMC.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, global = true)]
    pub timeout: u64,

    /// Output format.
    #[arg(long, short = 'o', value_enum, default_value_t = OutputFormat::Human, global = true)]
    pub output: OutputFormat,

    #[command(subcommand)]
    pub command: BmcCommand,
}

/// How results are printed.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputFormat {
    /// Tables and short sentences.
    Human,
    /// One JSON document on stdout, for scripts.
    Json,
}

#[derive(clap::Subcommand, Debug)]
pub enum BmcCommand {
    /// Print the power state (the same as `power status`).
    PowerState,
    /// Read or change the power state.
    Power {
        #[arg(value_enum)]
        action: PowerVerb,
        /// Wait until the power state is what the action asked for (on, off, force-off only).
        #[arg(long)]
        wait: bool,
        /// Seconds to wait with --wait.
        #[arg(long, value_name = "SECONDS", default_value_t = 300, requires = "wait")]
        wait_timeout: u64,
    },
    /// Set the device the host boots from next (or always, with --persistent).
    Boot {
        #[arg(value_enum)]
        device: BootDevice,
        /// Keep this boot device for every boot, not just the next one.
        #[arg(long)]
        persistent: bool,
        /// Boot in legacy BIOS mode.
        #[arg(long, conflicts_with = "uefi")]
        legacy: bool,
        /// Boot in UEFI mode. Without --uefi or --legacy the host keeps the mode its BMC reports (UEFI where the
        /// BMC cannot tell, as IPMI cannot).
        #[arg(long)]
        uefi: bool,
    },
    /// Print what the BMC knows of the hardware.
    Inventory,
    /// Print what this BMC supports.
    Capabilities,
    /// Insert or eject the virtual CD.
    Media {
        #[command(subcommand)]
        action: MediaCommand,
    },
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerVerb {
    Status,
    On,
    /// Graceful shutdown, forced after a timeout.
    Off,
    ForceOff,
    Cycle,
    Reset,
}

#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum BootDevice {
    /// Network boot (PXE).
    Pxe,
    /// UEFI HTTP boot.
    Http,
    /// Local disk.
    Disk,
    /// Virtual CD.
    Cd,
}

#[derive(clap::Subcommand, Debug)]
pub enum MediaCommand {
    /// Insert the image at URL as the virtual CD (the BMC downloads it).
    Insert { url: String },
    /// Eject any virtual media.
    Eject,
}

/// Runs `kiln bmc ...`: connects, performs the command, prints the result on stdout, closes the session.
///
/// # Errors
/// The BMC's error (a [`BmcError`] in the chain, see [`exit_code`]) or a missing password.
pub async fn run(args: BmcArgs) -> anyhow::Result<()> {
    // Global options (accepted anywhere on the line) cannot be required by clap itself.
    let address = args
        .address
        .clone()
        .context("--bmc ADDRESS is required (or $KILN_BMC_ADDRESS)")?;
    let username = args
        .username
        .clone()
        .context("--username USER is required (or $KILN_BMC_USERNAME)")?;
    let password = read_password(args.password_file.as_deref())?;
    let ca_bundle_pem = match &args.ca_bundle {
        Some(path) => Some(std::fs::read(path).with_context(|| format!("reading the CA bundle {}", path.display()))?),
        None => None,
    };
    let opts = BmcOptions {
        disable_certificate_verification: args.insecure,
        ca_bundle_pem,
        request_timeout: Duration::from_secs(args.timeout.max(1)),
        poll_interval: Duration::from_secs(2),
        ..BmcOptions::default()
    };
    let creds = Credentials { username, password };
    let bmc = kiln_bmc::connect(&address, creds, opts).await?;
    // Buffered so that the future stays Send (a stdout lock is not).
    let mut buffer = Vec::new();
    let result = execute(&bmc, &args.command, args.output, &mut buffer).await;
    if let Err(e) = bmc.close().await {
        eprintln!("warning: could not end the session with the BMC: {e}");
    }
    std::io::stdout().write_all(&buffer)?;
    result
}

/// The process exit code for an error of [`run`]: 2 address, 3 authentication, 4 unreachable, 5 unsupported,
/// 1 anything else.
pub fn exit_code(error: &anyhow::Error) -> i32 {
    let Some(bmc_error) = error.chain().find_map(|e| e.downcast_ref::<BmcError>()) else {
        return 1;
    };
    match bmc_error.kind() {
        BmcErrorKind::InvalidAddress => 2,
        BmcErrorKind::Auth => 3,
        BmcErrorKind::Unreachable => 4,
        BmcErrorKind::Unsupported => 5,
        BmcErrorKind::Refused | BmcErrorKind::Protocol => 1,
    }
}

fn read_password(file: Option<&std::path::Path>) -> anyhow::Result<Secret> {
    if let Some(path) = file {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading the password file {}", path.display()))?;
        let password = text
            .strip_suffix('\n')
            .map(|p| p.strip_suffix('\r').unwrap_or(p))
            .unwrap_or(&text);
        return Ok(Secret::new(password));
    }
    match std::env::var(PASSWORD_ENV) {
        Ok(password) => Ok(Secret::new(password)),
        Err(_) => bail!("no BMC password: give --password-file FILE or set {PASSWORD_ENV}"),
    }
}

fn power_name(state: PowerState) -> &'static str {
    match state {
        PowerState::On => "on",
        PowerState::Off => "off",
        PowerState::PoweringOn => "powering-on",
        PowerState::PoweringOff => "powering-off",
        PowerState::Unknown => "unknown",
    }
}

/// Performs `command` on `bmc` and prints the outcome to `out`.
///
/// # Errors
/// The BMC's error, or an I/O error writing `out`.
pub async fn execute(
    bmc: &AnyBmc,
    command: &BmcCommand,
    output: OutputFormat,
    out: &mut impl Write,
) -> anyhow::Result<()> {
    let json_out = output == OutputFormat::Json;
    match command {
        BmcCommand::PowerState
        | BmcCommand::Power {
            action: PowerVerb::Status,
            ..
        } => {
            let state = bmc.power_state().await?;
            if json_out {
                writeln!(out, "{}", json!({"power": state}))?;
            } else {
                writeln!(out, "power: {}", power_name(state))?;
            }
        }
        BmcCommand::Power {
            action,
            wait,
            wait_timeout,
        } => {
            let (action, want) = match action {
                PowerVerb::On => (PowerAction::On, Some(PowerState::On)),
                PowerVerb::Off => (PowerAction::Off, Some(PowerState::Off)),
                PowerVerb::ForceOff => (PowerAction::ForceOff, Some(PowerState::Off)),
                PowerVerb::Cycle => (PowerAction::Cycle, None),
                PowerVerb::Reset => (PowerAction::Reset, None),
                PowerVerb::Status => unreachable!("handled above"),
            };
            bmc.set_power(action).await?;
            let mut state = None;
            if let (true, Some(want)) = (*wait, want) {
                let deadline = tokio::time::Instant::now() + Duration::from_secs(*wait_timeout);
                loop {
                    let now = bmc.power_state().await?;
                    if now == want {
                        state = Some(now);
                        break;
                    }
                    if tokio::time::Instant::now() >= deadline {
                        bail!("the power state is still {} after {wait_timeout} s", power_name(now));
                    }
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
            if json_out {
                writeln!(out, "{}", json!({"action": action, "accepted": true, "power": state}))?;
            } else {
                match state {
                    Some(s) => writeln!(out, "power {}: done, power is {}", verb(action), power_name(s))?,
                    None => writeln!(out, "power {}: accepted by the BMC", verb(action))?,
                }
            }
        }
        BmcCommand::Boot {
            device,
            persistent,
            legacy,
            uefi,
        } => {
            let mode = match (*legacy, *uefi) {
                (true, _) => BootMode::Legacy,
                (_, true) => BootMode::Uefi,
                // Neither flag: keep the mode the System boots in (switching a Legacy-BIOS host to UEFI unasked
                // makes it unbootable); HTTP boot is UEFI by nature.
                _ if *device == BootDevice::Http => BootMode::Uefi,
                _ => match bmc.inventory().await {
                    Ok(inv) => inv.boot_mode.unwrap_or(BootMode::Uefi),
                    Err(e) => return Err(e.into()),
                },
            };
            let target = match device {
                BootDevice::Pxe => BootTarget::Pxe { mode },
                BootDevice::Http => BootTarget::UefiHttp,
                BootDevice::Disk => BootTarget::Disk { mode },
                BootDevice::Cd => BootTarget::VirtualCd { mode },
            };
            if *legacy && target == BootTarget::UefiHttp {
                bail!("UEFI HTTP boot has no legacy mode");
            }
            let persistence = if *persistent {
                BootPersistence::Persistent
            } else {
                BootPersistence::Once
            };
            bmc.set_boot(target, persistence).await?;
            if json_out {
                writeln!(out, "{}", json!({"boot": target, "persistence": persistence}))?;
            } else {
                let when = if *persistent { "every boot" } else { "the next boot" };
                let mode = match target {
                    BootTarget::UefiHttp => "UEFI",
                    _ if *legacy => "legacy BIOS",
                    _ => "UEFI",
                };
                writeln!(out, "boot device for {when}: {} ({mode})", device_name(*device))?;
            }
        }
        BmcCommand::Inventory => {
            let inv = bmc.inventory().await?;
            if json_out {
                writeln!(out, "{}", serde_json::to_string_pretty(&inv)?)?;
            } else {
                let mut table = Table::new();
                table.set_header(vec!["field", "value"]);
                let none = || "-".to_string();
                table.add_row(vec![
                    "manufacturer".to_string(),
                    inv.manufacturer.clone().unwrap_or_else(none),
                ]);
                table.add_row(vec!["model".to_string(), inv.model.clone().unwrap_or_else(none)]);
                table.add_row(vec![
                    "serial number".to_string(),
                    inv.serial_number.clone().unwrap_or_else(none),
                ]);
                table.add_row(vec!["UUID".to_string(), inv.uuid.clone().unwrap_or_else(none)]);
                let cpus = match (inv.processor_count, &inv.processor_model) {
                    (Some(n), Some(m)) => format!("{n} x {m}"),
                    (Some(n), None) => n.to_string(),
                    (None, Some(m)) => m.clone(),
                    (None, None) => none(),
                };
                table.add_row(vec!["processors".to_string(), cpus]);
                table.add_row(vec![
                    "memory".to_string(),
                    inv.memory_mib.map(|m| format!("{m} MiB")).unwrap_or_else(none),
                ]);
                for disk in &inv.disks {
                    let size = disk
                        .size_bytes
                        .map(|b| format!("{} GB", b / 1_000_000_000))
                        .unwrap_or_else(none);
                    table.add_row(vec!["disk".to_string(), format!("{} ({size})", disk.name)]);
                }
                for mac in &inv.nic_macs {
                    table.add_row(vec!["NIC".to_string(), mac.clone()]);
                }
                writeln!(out, "{table}")?;
            }
        }
        BmcCommand::Capabilities => {
            let caps = bmc.capabilities();
            if json_out {
                writeln!(out, "{}", json!({"protocol": bmc.protocol(), "capabilities": caps}))?;
            } else {
                let yes_no = |b: bool| if b { "yes" } else { "no" };
                let mut table = Table::new();
                table.set_header(vec!["capability", "supported"]);
                table.add_row(vec!["protocol", bmc.protocol()]);
                table.add_row(vec!["virtual media", yes_no(caps.virtual_media)]);
                table.add_row(vec!["UEFI HTTP boot", yes_no(caps.uefi_http_boot)]);
                table.add_row(vec!["inventory", yes_no(caps.inventory)]);
                writeln!(out, "{table}")?;
            }
        }
        BmcCommand::Media {
            action: MediaCommand::Insert { url },
        } => {
            bmc.insert_media(url).await?;
            if json_out {
                writeln!(out, "{}", json!({"media": url, "inserted": true}))?;
            } else {
                writeln!(out, "virtual CD inserted: {url}")?;
            }
        }
        BmcCommand::Media {
            action: MediaCommand::Eject,
        } => {
            bmc.eject_media().await?;
            if json_out {
                writeln!(out, "{}", json!({"inserted": false}))?;
            } else {
                writeln!(out, "virtual media ejected")?;
            }
        }
    }
    Ok(())
}

fn verb(action: PowerAction) -> &'static str {
    match action {
        PowerAction::On => "on",
        PowerAction::Off => "off",
        PowerAction::ForceOff => "force-off",
        PowerAction::Cycle => "cycle",
        PowerAction::Reset => "reset",
    }
}

fn device_name(device: BootDevice) -> &'static str {
    match device {
        BootDevice::Pxe => "network (PXE)",
        BootDevice::Http => "network (UEFI HTTP)",
        BootDevice::Disk => "disk",
        BootDevice::Cd => "virtual CD",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use kiln_bmc::FakeBmc;
    use kiln_bmc::fake::{FakeCall, PowerMode};

    #[derive(clap::Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        args: BmcArgs,
    }

    fn parse(args: &[&str]) -> Result<BmcArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("kiln-bmc").chain(args.iter().copied())).map(|c| c.args)
    }

    #[test]
    fn parses_the_documented_forms() {
        let a = parse(&["--bmc", "ipmi://10.0.0.5", "-u", "admin", "power", "on", "--wait"]).unwrap();
        assert!(matches!(
            a.command,
            BmcCommand::Power {
                action: PowerVerb::On,
                wait: true,
                ..
            }
        ));
        assert_eq!(a.address.unwrap().to_string(), "ipmi://10.0.0.5:623");
        // The connection options go anywhere on the line, after the subcommand too.
        let b = parse(&[
            "power",
            "status",
            "--bmc",
            "ipmi://10.0.0.5",
            "--username",
            "admin",
            "--insecure",
        ])
        .unwrap();
        assert_eq!(b.address.unwrap().to_string(), "ipmi://10.0.0.5:623");
        assert_eq!(b.username.as_deref(), Some("admin"));
        assert!(b.insecure);
        let a = parse(&[
            "--bmc",
            "redfish://bmc",
            "-u",
            "root",
            "boot",
            "pxe",
            "--persistent",
            "--legacy",
            "-o",
            "json",
        ])
        .unwrap();
        assert!(matches!(
            a.command,
            BmcCommand::Boot {
                device: BootDevice::Pxe,
                persistent: true,
                legacy: true,
                ..
            }
        ));
        assert_eq!(a.output, OutputFormat::Json);
        let a = parse(&[
            "--bmc",
            "redfish://bmc",
            "-u",
            "root",
            "media",
            "insert",
            "http://x/a.iso",
        ])
        .unwrap();
        assert!(matches!(
            a.command,
            BmcCommand::Media {
                action: MediaCommand::Insert { .. }
            }
        ));
        assert!(parse(&["--bmc", "redfish://bmc", "-u", "root", "power-state"]).is_ok());
        assert!(parse(&["--bmc", "redfish://bmc", "-u", "root", "capabilities", "-o", "json"]).is_ok());
    }

    #[test]
    fn rejects_bad_input() {
        let e = parse(&["--bmc", "ftp://bmc", "-u", "a", "inventory"]).unwrap_err();
        assert!(e.to_string().contains("bad scheme"), "{e}");
        assert!(parse(&["--bmc", "ipmi://b", "-u", "a", "boot", "pxe", "--legacy", "--uefi"]).is_err());
        assert!(parse(&["--bmc", "ipmi://b", "-u", "a", "power", "sideways"]).is_err());
        // There is no way to put the password on the command line.
        assert!(parse(&["--bmc", "ipmi://b", "-u", "a", "--password", "x", "inventory"]).is_err());
    }

    #[test]
    fn password_from_file_drops_the_newline() {
        let dir = std::env::temp_dir().join(format!("kiln-cli-bmc-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("pw");
        std::fs::write(&file, "s3cret\n").unwrap();
        assert_eq!(read_password(Some(&file)).unwrap().expose(), "s3cret");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn exit_codes_by_kind() {
        let e = |err: BmcError| anyhow::Error::from(err).context("kiln bmc");
        let auth = BmcError::AuthFailed {
            bmc: "b".into(),
            username: "u".into(),
            detail: "d".into(),
        };
        assert_eq!(exit_code(&e(auth)), 3);
        let unreachable = BmcError::Timeout {
            bmc: "b".into(),
            operation: "o".into(),
            after: Duration::from_secs(1),
        };
        assert_eq!(exit_code(&e(unreachable)), 4);
        assert_eq!(
            exit_code(&e(BmcError::Unsupported {
                bmc: "b".into(),
                operation: "o".into()
            })),
            5
        );
        assert_eq!(exit_code(&anyhow::anyhow!("no password")), 1);
    }

    async fn run_fake(bmc: &AnyBmc, args: &[&str]) -> anyhow::Result<String> {
        let mut full = vec!["--bmc", "ipmi://fake", "-u", "admin"];
        full.extend(args);
        let parsed = parse(&full).unwrap();
        let mut out = Vec::new();
        execute(bmc, &parsed.command, parsed.output, &mut out).await?;
        Ok(String::from_utf8(out).unwrap())
    }

    #[tokio::test]
    async fn commands_against_a_fake_bmc() {
        let fake = FakeBmc::new("cli").with_mode(PowerMode::Auto { delay: Duration::ZERO });
        let bmc = AnyBmc::from(fake.clone());
        assert_eq!(run_fake(&bmc, &["power", "status"]).await.unwrap(), "power: off\n");
        assert_eq!(
            run_fake(&bmc, &["power-state", "-o", "json"]).await.unwrap().trim(),
            r#"{"power":"off"}"#
        );
        let out = run_fake(&bmc, &["power", "on", "--wait"]).await.unwrap();
        assert_eq!(out, "power on: done, power is on\n");
        let out = run_fake(&bmc, &["boot", "pxe", "--legacy", "-o", "json"])
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["boot"]["device"], "pxe");
        assert_eq!(v["boot"]["mode"], "legacy");
        assert_eq!(v["persistence"], "once");
        // Without --uefi or --legacy, a Legacy-BIOS host stays Legacy.
        let legacy = FakeBmc::new("legacy").with_inventory(kiln_bmc::Inventory {
            boot_mode: Some(BootMode::Legacy),
            ..Default::default()
        });
        let out = run_fake(&AnyBmc::from(legacy), &["boot", "pxe", "-o", "json"])
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(v["boot"]["mode"], "legacy", "{v}");
        let table = run_fake(&bmc, &["inventory"]).await.unwrap();
        assert!(table.contains("FakeBmc") && table.contains("4096 MiB"), "{table}");
        let v: serde_json::Value =
            serde_json::from_str(&run_fake(&bmc, &["capabilities", "-o", "json"]).await.unwrap()).unwrap();
        assert_eq!(v["protocol"], "fake");
        assert_eq!(v["capabilities"]["virtual_media"], true);
        run_fake(&bmc, &["media", "insert", "http://x/a.iso"]).await.unwrap();
        assert_eq!(fake.media().as_deref(), Some("http://x/a.iso"));
        assert!(fake.calls().contains(&FakeCall::SetPower(PowerAction::On)));

        fake.fail_next_with(1, || BmcError::Unsupported {
            bmc: "cli".into(),
            operation: "x".into(),
        });
        let e = run_fake(&bmc, &["media", "eject"]).await.unwrap_err();
        assert_eq!(exit_code(&e), 5);
    }
}
