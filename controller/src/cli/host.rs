//! `kiln host ...`: enroll, list, show, provision, deprovision, power, inspect, events, timing and watch, as a client
//! of the REST API.

use std::path::PathBuf;
use std::time::Duration;

use clap::Subcommand;
use comfy_table::{Table, presets::UTF8_FULL_CONDENSED};
use serde_json::{Value, json};

use kiln_bmc::Secret;
use kiln_engine::model::{EraseMode, HostOptions};
use kiln_engine::wire::{
    BmcIn, DeprovisionIn, HostCreate, HostOut, ImageIn, PowerIn, ProvisionIn, RegistryCredentialsIn, TimingOut,
};
use kiln_images::protocol::RootDeviceHints;

use super::{CliError, Client, ClientArgs, Output, print_value, read, read_json, registry_login};

/// `kiln host ...`
#[derive(Debug, Subcommand)]
pub enum HostCmd {
    /// Enroll a host.
    Enroll {
        name: String,
        /// BMC address, e.g. redfish+http://10.0.0.5:8000/redfish/v1/Systems/1 or ipmi://10.0.0.6:623.
        #[arg(long)]
        bmc: Option<String>,
        #[arg(long)]
        username: Option<String>,
        /// File containing the BMC password (never pass it on the command line).
        #[arg(long)]
        password_file: Option<PathBuf>,
        /// Accept any TLS certificate from this host's BMC (a self-signed factory certificate).
        #[arg(long)]
        bmc_insecure: bool,
        /// PEM file of CA certificates to trust for this host's BMC.
        #[arg(long)]
        bmc_ca_file: Option<PathBuf>,
        #[arg(long)]
        boot_mac: Option<String>,
        #[arg(long, value_parser = ["uefi", "legacy"])]
        boot_mode: Option<String>,
        /// Label key=value (repeatable).
        #[arg(long = "label", short = 'l')]
        labels: Vec<String>,
        /// Root device hints as JSON (`{"deviceName":"/dev/sda"}`) or key=value,... (`deviceName=/dev/sda`).
        #[arg(long)]
        root_device_hints: Option<String>,
        /// Skip inspection after registration.
        #[arg(long)]
        no_inspect: bool,
        /// Adopt a host that already runs its OS (never written).
        #[arg(long)]
        externally_provisioned: bool,
        /// The agent ramdisk's network (OpenStack network_data.json, a JSON file): static addresses for a host
        /// booted by virtual media where no DHCP serves it (Metal3's preprovisioningNetworkDataName).
        #[arg(long)]
        preprovisioning_network_data: Option<PathBuf>,
    },
    /// List hosts.
    List {
        /// Label selector k=v[,k=v].
        #[arg(short = 'l', long)]
        selector: Option<String>,
    },
    /// Show one host with its per-phase timing.
    Show { name: String },
    /// Write an image to a host.
    Provision {
        name: String,
        /// An http(s) URL, or `oci://registry/repository[:tag|@sha256:DIGEST]` for a disk image in an OCI registry
        /// (pushed with `oras push -a disktype=qcow2 ...`, as for Ironic).
        #[arg(long)]
        image: String,
        /// sha256:HEX, sha512:HEX or the URL of a checksum file (required, except for --format live-iso and oci://
        /// images, which their registry digest verifies).
        #[arg(long)]
        checksum: Option<String>,
        /// For an oci:// image: a docker config file (`~/.docker/config.json`, podman's `auth.json`) with the
        /// registry's credentials, as `docker login` writes it.
        #[arg(long)]
        registry_auth: Option<PathBuf>,
        /// raw or qcow2 (detected when not given), or live-iso: the BMC boots the ISO from virtual media and the
        /// host runs it diskless.
        #[arg(long, value_parser = ["raw", "qcow2", "live-iso"])]
        format: Option<String>,
        #[arg(long)]
        user_data: Option<PathBuf>,
        #[arg(long)]
        network_data: Option<PathBuf>,
        /// Wait until the host is provisioned (or failed).
        #[arg(long)]
        wait: bool,
    },
    /// Erase a host and make it available again.
    Deprovision {
        name: String,
        #[arg(long, value_parser = ["metadata", "full"])]
        erase: Option<String>,
    },
    /// Power a host on, off or cycle it.
    Power {
        name: String,
        #[arg(value_parser = ["on", "off", "cycle", "reset", "force-off"])]
        action: String,
    },
    /// Inspect an available host again.
    Inspect { name: String },
    /// Delete a host (powers it off).
    Delete { name: String },
    /// Follow state changes (of one host, or all).
    Watch { name: Option<String> },
}

/// The host table (`wide` adds BMC, labels and counters).
pub fn hosts_table(hosts: &[HostOut], wide: bool) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    let mut header = vec!["NAME", "STATE", "STATUS", "POWER", "BOOT MAC", "IMAGE", "ERROR"];
    if wide {
        header.extend(["BMC", "LABELS", "BOOTS", "DEPLOYS"]);
    }
    t.set_header(header);
    for h in hosts {
        let mut row = vec![
            h.name.clone(),
            h.state.clone(),
            h.operational_status.clone(),
            h.power.clone().unwrap_or_else(|| "-".into()),
            h.boot_mac.clone().unwrap_or_else(|| "-".into()),
            h.image.as_ref().map(|i| i.url.clone()).unwrap_or_else(|| "-".into()),
            h.error
                .as_ref()
                .map(|e| {
                    // The first line: an agent's failure carries its log tail below it (`kiln host show`).
                    format!("{}: {}", e.kind, e.message.lines().next().unwrap_or(""))
                })
                .unwrap_or_default(),
        ];
        if wide {
            row.push(h.bmc.as_ref().map(|b| b.address.clone()).unwrap_or_else(|| "-".into()));
            row.push(
                h.labels
                    .iter()
                    .map(|(k, v)| format!("{k}={v}"))
                    .collect::<Vec<_>>()
                    .join(","),
            );
            row.push(h.counters.boots.to_string());
            row.push(h.counters.deploys.to_string());
        }
        t.add_row(row);
    }
    t
}

/// The per-phase timing table of `kiln host show`.
pub fn timing_table(rows: &[TimingOut]) -> Table {
    let mut t = Table::new();
    t.load_style(UTF8_FULL_CONDENSED);
    t.set_header(["PHASE", "STARTED", "DURATION", "OUTCOME"]);
    for r in rows {
        let dur = r
            .duration_ms
            .map(|ms| format!("{:.1}s", ms as f64 / 1000.0))
            .unwrap_or_else(|| "running".into());
        t.add_row([
            r.phase.clone(),
            r.started.clone(),
            dur,
            r.outcome.clone().unwrap_or_default(),
        ]);
    }
    t
}

fn parse_hints(s: &str) -> Result<RootDeviceHints, CliError> {
    let bad = |e: serde_json::Error| CliError::Parse {
        what: "--root-device-hints".into(),
        message: e.to_string(),
    };
    if s.trim_start().starts_with('{') {
        return serde_json::from_str(s).map_err(bad);
    }
    let mut m = serde_json::Map::new();
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (k, v) = part.split_once('=').ok_or_else(|| CliError::Parse {
            what: "--root-device-hints".into(),
            message: format!("{part:?} is not key=value"),
        })?;
        let v = match v.parse::<u64>() {
            Ok(n) if k == "minSizeGigabytes" => json!(n),
            _ if k == "rotational" => json!(v == "true"),
            _ => json!(v),
        };
        m.insert(k.to_owned(), v);
    }
    serde_json::from_value(Value::Object(m)).map_err(bad)
}

/// Waits until `name` reaches `target`, failing on `error`.
async fn wait_for(c: &Client, name: &str, target: &str) -> Result<HostOut, CliError> {
    let mut last = String::new();
    loop {
        let h: HostOut = c.get(&format!("/api/v1/hosts/{name}")).await?;
        let line = format!("{} {}", h.state, h.operational_status);
        if line != last {
            eprintln!("{name}: {line}");
            last = line;
        }
        if h.state == target {
            return Ok(h);
        }
        if h.state == "error" {
            let message = h.error.as_ref().map(|e| e.message.clone()).unwrap_or_default();
            return Err(CliError::Failed {
                host: name.into(),
                state: h.state,
                message,
            });
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Runs a `kiln host` command.
///
/// # Errors
/// [`CliError`] of the failed request.
pub async fn host(args: &ClientArgs, cmd: HostCmd) -> Result<(), CliError> {
    let c = Client::new(args)?;
    let out = args.output;
    match cmd {
        HostCmd::Enroll {
            name,
            bmc,
            username,
            password_file,
            bmc_insecure,
            bmc_ca_file,
            boot_mac,
            boot_mode,
            labels,
            root_device_hints,
            no_inspect,
            externally_provisioned,
            preprovisioning_network_data,
        } => {
            let bmc = match bmc {
                Some(address) => {
                    let password = match &password_file {
                        Some(p) => read(p)?.trim_end_matches(['\n', '\r']).to_owned(),
                        None => {
                            return Err(CliError::Parse {
                                what: "--password-file".into(),
                                message: "required with --bmc".into(),
                            });
                        }
                    };
                    Some(BmcIn {
                        address,
                        username: username.unwrap_or_default(),
                        password: Secret::new(password),
                        disable_certificate_verification: bmc_insecure,
                        ca_cert: bmc_ca_file.as_ref().map(read).transpose()?,
                    })
                }
                None if bmc_insecure || bmc_ca_file.is_some() => {
                    return Err(CliError::Parse {
                        what: "--bmc-insecure/--bmc-ca-file".into(),
                        message: "only apply with --bmc".into(),
                    });
                }
                None => None,
            };
            let mut label_map = std::collections::BTreeMap::new();
            for l in labels {
                let (k, v) = l.split_once('=').ok_or_else(|| CliError::Parse {
                    what: "--label".into(),
                    message: format!("{l:?} is not key=value"),
                })?;
                label_map.insert(k.to_owned(), v.to_owned());
            }
            let preprovisioning_network_data = preprovisioning_network_data.as_ref().map(read_json).transpose()?;
            let body = HostCreate {
                preprovisioning_network_data,
                name,
                bmc,
                boot_mac,
                boot_mode,
                labels: label_map,
                root_device_hints: root_device_hints.as_deref().map(parse_hints).transpose()?,
                options: Some(HostOptions {
                    inspect: !no_inspect,
                    externally_provisioned,
                    ..HostOptions::default()
                }),
            };
            let h: HostOut = c.post("/api/v1/hosts", &body).await?;
            if !print_value(out, &h)? {
                println!("{}", hosts_table(&[h], out == Output::Wide));
            }
        }
        HostCmd::List { selector } => {
            let path = match selector {
                Some(s) => format!(
                    "/api/v1/hosts?selector={}",
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                ),
                None => "/api/v1/hosts".into(),
            };
            let hosts: Vec<HostOut> = c.get(&path).await?;
            if !print_value(out, &hosts)? {
                println!("{}", hosts_table(&hosts, out == Output::Wide));
            }
        }
        HostCmd::Show { name } => {
            let h: HostOut = c.get(&format!("/api/v1/hosts/{name}")).await?;
            let timings: Vec<TimingOut> = c.get(&format!("/api/v1/hosts/{name}/timings")).await?;
            if !print_value(out, &json!({ "host": h, "timings": timings }))? {
                println!("{}", hosts_table(std::slice::from_ref(&h), true));
                if let Some(p) = &h.progress {
                    println!("progress:{}", progress_line(p));
                }
                if let Some(t) = &h.bmc_trouble {
                    println!("BMC trouble since {}: {}", t.at, t.message);
                }
                if !h.learned_macs.is_empty() {
                    println!(
                        "Known by NIC MACs (from its BMC or its discovery boot): {}",
                        h.learned_macs.join(", ")
                    );
                }
                println!("{}", timing_table(&timings));
            }
        }
        HostCmd::Provision {
            name,
            image,
            checksum,
            format,
            registry_auth,
            user_data,
            network_data,
            wait,
        } => {
            let network_data = network_data.as_ref().map(read_json).transpose()?;
            let registry_credentials = match &registry_auth {
                None => None,
                Some(path) => {
                    let c = registry_login(path, &image)?;
                    Some(RegistryCredentialsIn {
                        username: c.username,
                        password: Secret::new(c.password),
                    })
                }
            };
            let body = ProvisionIn {
                image: ImageIn {
                    url: image,
                    checksum,
                    checksum_type: None,
                    format: format
                        .map(|f| serde_json::from_value(serde_json::Value::String(f)))
                        .transpose()
                        .map_err(|e| CliError::Parse {
                            what: "--format".into(),
                            message: e.to_string(),
                        })?,
                    registry_credentials,
                },
                user_data: user_data.as_ref().map(read).transpose()?,
                network_data,
                meta_data: None,
            };
            let h: HostOut = c.post(&format!("/api/v1/hosts/{name}/provision"), &body).await?;
            let h = if wait {
                wait_for(&c, &name, "provisioned").await?
            } else {
                h
            };
            if !print_value(out, &h)? {
                println!("{}", hosts_table(&[h], false));
            }
        }
        HostCmd::Deprovision { name, erase } => {
            let body = DeprovisionIn {
                erase: match erase.as_deref() {
                    Some("full") => Some(EraseMode::Full),
                    Some(_) => Some(EraseMode::Metadata),
                    None => None,
                },
            };
            let h: HostOut = c.post(&format!("/api/v1/hosts/{name}/deprovision"), &body).await?;
            if !print_value(out, &h)? {
                println!("{}", hosts_table(&[h], false));
            }
        }
        HostCmd::Power { name, action } => {
            let h: HostOut = c
                .post(
                    &format!("/api/v1/hosts/{name}/power"),
                    &PowerIn { action: action.clone() },
                )
                .await?;
            if !print_value(out, &h)? {
                println!("{}: power {action} requested", h.name);
            }
        }
        HostCmd::Inspect { name } => {
            let h: HostOut = c
                .post(&format!("/api/v1/hosts/{name}/inspect"), &serde_json::Map::new())
                .await?;
            if !print_value(out, &h)? {
                println!("{}: inspection requested", h.name);
            }
        }
        HostCmd::Delete { name } => {
            let h: HostOut = c.delete(&format!("/api/v1/hosts/{name}")).await?;
            if !print_value(out, &h)? {
                println!("{}: deletion requested", h.name);
            }
        }
        HostCmd::Watch { name } => watch(&c, name.as_deref()).await?,
    }
    Ok(())
}

/// ` writing  42% [########            ]` (or the MiB written when the total is unknown).
fn progress_line(p: &kiln_images::protocol::Progress) -> String {
    let w = p.bytes_written;
    match p.total_bytes {
        Some(t) if t > 0 => format!(
            " {} {:>3}% [{:<20}]",
            p.phase,
            w.saturating_mul(100) / t,
            "#".repeat((w.saturating_mul(20) / t).min(20) as usize)
        ),
        _ => format!(" {} {} MiB", p.phase, w >> 20),
    }
}

async fn watch(c: &Client, name: Option<&str>) -> Result<(), CliError> {
    let mut seen = std::collections::BTreeMap::<String, String>::new();
    loop {
        let hosts: Vec<HostOut> = match name {
            Some(n) => {
                let h: HostOut = c.get(&format!("/api/v1/hosts/{n}")).await?;
                vec![h]
            }
            None => c.get("/api/v1/hosts").await?,
        };
        for h in hosts {
            let progress = h.progress.as_ref().map(progress_line).unwrap_or_default();
            let line = format!(
                "{} {} {}{progress}",
                h.state,
                h.operational_status,
                h.power.unwrap_or_default()
            );
            if seen.get(&h.name) != Some(&line) {
                println!("{} {:<20} {line}", kiln_engine::executor::now().rfc3339(), h.name);
                seen.insert(h.name.clone(), line);
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
