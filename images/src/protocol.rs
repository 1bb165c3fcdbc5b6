//! The agent protocol: the wire types kiln-agent and the appliance exchange under `/agent/v1`.
//!
//! This module owns only data shapes (serde); it must not do I/O. Both `kiln-agent` and `kiln` (the controller)
//! depend on it, so a change here is a protocol change: keep fields additive and optional.
//!
//! Endpoints (all `POST`, JSON, `Authorization: Bearer <boot token from kiln.token=...>`):
//! - `/agent/v1/heartbeat`  body [`Heartbeat`]      → [`HeartbeatReply`] (the next command, if any)
//! - `/agent/v1/inventory`  body [`HardwareInventory`] → 204
//! - `/agent/v1/progress`   body [`Progress`]       → 204
//! - `/agent/v1/result`     body [`CommandResult`]  → 204
//!
//! One endpoint takes no token: `/agent/v1/discover`, body [`Discover`] → [`DiscoverReply`] (200), 404 while no host
//! waiting for a discovery boot has a BMC at the reported addresses, 409 when more than one has. An agent booted with
//! `kiln.discover=1` instead of a token (a host enrolled without a boot MAC that netbooted from an unknown MAC) asks
//! it for its host and token, giving the addresses its BMC reports in-band, as Ironic's lookup by BMC address does.

use serde::{Deserialize, Serialize};

/// Periodic liveness message; also carries the command the agent is busy with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    pub agent_version: String,
    /// The id of the command being executed, if any.
    #[serde(default)]
    pub busy_with: Option<u64>,
    /// An idle agent (not busy) can wait this long for its next command: the appliance then answers as soon as a
    /// command is queued, or after at most this many seconds and its heartbeat interval, with no command. Absent
    /// (agents before it): answered at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_secs: Option<u32>,
}

/// A discovery boot's request for its host (see the module header).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Discover {
    /// The NIC the host network-booted from (`kiln.mac=` of the discovery boot).
    pub boot_mac: MacAddr,
    /// Every physical NIC's MAC, which kiln then recognises the host by.
    pub macs: Vec<MacAddr>,
    /// The IP addresses of the host's BMC, read in-band (IPMI Get LAN Configuration Parameters over the system
    /// interface, every LAN channel), unspecified addresses left out.
    pub bmc_addresses: Vec<std::net::IpAddr>,
    pub agent_version: String,
}

/// The host a discovery boot was bound to, and the boot's token for every later request.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiscoverReply {
    pub host: String,
    pub token: String,
}

impl std::fmt::Debug for DiscoverReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DiscoverReply")
            .field("host", &self.host)
            .field("token", &"***")
            .finish()
    }
}

/// The appliance's answer to a heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HeartbeatReply {
    /// The next command to run; `None` means keep heartbeating.
    #[serde(default)]
    pub command: Option<Command>,
    /// Seconds until the next heartbeat.
    pub interval_secs: u32,
}

/// A command for the agent, identified so that its result can be matched.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Command {
    pub id: u64,
    #[serde(flatten)]
    pub kind: CommandKind,
}

/// What the agent is asked to do.
#[allow(clippy::large_enum_variant)] // one command at a time; boxing would only complicate the wire type
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum CommandKind {
    /// Collect the hardware inventory and POST it to `/agent/v1/inventory`.
    Inspect,
    /// Stream an image to the root disk chosen by `root_device_hints`, then write the config drive if given.
    WriteImage {
        image: ImageSpec,
        #[serde(default)]
        root_device_hints: RootDeviceHints,
        #[serde(default)]
        config_drive: Option<ConfigDrive>,
        /// For an `oci://` image: how to reach its registry (credentials, plain HTTP).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        registry: Option<RegistryAccess>,
    },
    /// Erase partition tables and filesystem signatures (start and end of every disk).
    EraseMetadata,
    /// Overwrite every non-removable disk completely.
    EraseDisks,
    /// Reboot the host (the appliance has set the next boot device already).
    Reboot,
    /// Power the host off.
    PowerOff,
}

/// An image to write and how to verify it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ImageSpec {
    pub url: String,
    /// Hex digest of the bytes as published, or an `http(s)://` URL of a `sha256sum`-style file.
    pub checksum: String,
    #[serde(default)]
    pub checksum_type: ChecksumType,
    /// Disk format; `None` means detect from the bytes.
    #[serde(default)]
    pub format: Option<ImageFormat>,
}

/// How the agent reaches the registry of an `oci://` image.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RegistryAccess {
    /// Credentials for the registry (Metal3's `ociAuthSecretName`, Ironic's `image_pull_secret`); anonymous when
    /// `None`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials: Option<RegistryCredentials>,
    /// Speak plain HTTP to the registry instead of HTTPS (a registry kiln's `images.insecure_registries` lists).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub plain_http: bool,
}

/// A registry user name and password (or token), sent to the agent only in the command that pulls the image.
/// `Debug` never shows the password.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryCredentials {
    pub username: String,
    pub password: String,
}

impl std::fmt::Debug for RegistryCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RegistryCredentials")
            .field("username", &self.username)
            .field("password", &"***")
            .finish()
    }
}

/// Digest algorithm of an image checksum (Metal3's `checksumType`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumType {
    /// Chosen from the digest length (64 hex digits: sha256, 128: sha512). md5 is never chosen automatically.
    #[default]
    Auto,
    Sha256,
    Sha512,
    Md5,
}

/// Disk image format (Metal3's `image.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ImageFormat {
    Raw,
    Qcow2,
    /// A bootable ISO the BMC's virtual media boots (Metal3's `live-iso`): never written to a disk; the host runs
    /// it diskless.
    #[serde(rename = "live-iso")]
    LiveIso,
}

/// Metal3 `rootDeviceHints`: every given field must match; none given means the default choice.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RootDeviceHints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hctl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size_gigabytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn_with_extension: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn_vendor_extension: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

/// The OpenStack config drive contents written after the image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConfigDrive {
    /// `meta_data.json` (kiln fills `uuid`, `hostname`, `name`, `public_keys` as needed).
    pub meta_data: serde_json::Value,
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub network_data: Option<serde_json::Value>,
}

/// Progress of the running command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Progress {
    pub command_id: u64,
    /// A short phase name: `downloading`, `writing`, `verifying`, `config_drive`, `erasing`.
    pub phase: String,
    pub bytes_read: u64,
    pub bytes_written: u64,
    #[serde(default)]
    pub total_bytes: Option<u64>,
}

/// The outcome of a command.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandResult {
    pub command_id: u64,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// Success, or a failure a person can act on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum Outcome {
    Succeeded {
        /// For `WriteImage`: the disk written and the verified digest.
        #[serde(default)]
        detail: serde_json::Value,
    },
    Failed {
        /// A stable machine-readable kind: `checksum_mismatch`, `download`, `decode`, `no_root_device`, `io`, ...
        kind: String,
        message: String,
    },
}

/// Hardware inventory collected by the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct HardwareInventory {
    pub system: SystemInfo,
    pub cpu: CpuInfo,
    pub memory_mib: u64,
    pub disks: Vec<DiskInfo>,
    pub nics: Vec<NicInfo>,
    /// `uefi` or `legacy`, from `/sys/firmware/efi`.
    pub boot_mode: String,
}

/// DMI system identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct SystemInfo {
    pub vendor: String,
    pub product: String,
    pub serial: String,
    pub uuid: String,
}

/// Processors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct CpuInfo {
    pub model: String,
    pub count: u32,
    pub architecture: String,
}

/// A block device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct DiskInfo {
    /// `/dev/vda`
    pub name: String,
    #[serde(default)]
    pub by_path: Option<String>,
    pub size_bytes: u64,
    #[serde(default)]
    pub model: String,
    #[serde(default)]
    pub vendor: String,
    #[serde(default)]
    pub serial: String,
    #[serde(default)]
    pub wwn: String,
    #[serde(default)]
    pub wwn_with_extension: String,
    #[serde(default)]
    pub wwn_vendor_extension: String,
    #[serde(default)]
    pub hctl: String,
    pub rotational: bool,
    pub removable: bool,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct NicInfo {
    pub name: String,
    pub mac: String,
    #[serde(default)]
    pub driver: String,
    pub link_up: bool,
    #[serde(default)]
    pub speed_mbps: Option<u32>,
    #[serde(default)]
    pub ipv4: Vec<String>,
}

/// An Ethernet MAC address: kiln's one type for it, shared with every crate.
pub use kiln_types::{MacAddr, ParseMacError};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discover_round_trips_and_its_reply_hides_the_token() {
        let d = Discover {
            boot_mac: "52:54:00:AA:00:01".parse().unwrap(),
            macs: vec!["52:54:00:aa:00:01".parse().unwrap()],
            bmc_addresses: vec!["10.0.0.5".parse().unwrap()],
            agent_version: "1".into(),
        };
        let json = serde_json::to_string(&d).unwrap();
        assert!(json.contains(r#""boot_mac":"52:54:00:aa:00:01""#), "{json}");
        assert_eq!(serde_json::from_str::<Discover>(&json).unwrap(), d);
        let bad = json.replacen("52:54:00:aa:00:01", "52:54:00:aa:00", 1);
        assert!(serde_json::from_str::<Discover>(&bad).is_err(), "{bad}");
        let r = DiscoverReply {
            host: "node-1".into(),
            token: "s3cret".into(),
        };
        assert!(!format!("{r:?}").contains("s3cret"));
    }

    #[test]
    fn write_image_command_round_trips_with_flattened_tag() {
        let cmd = Command {
            id: 7,
            kind: CommandKind::WriteImage {
                image: ImageSpec {
                    url: "http://10.0.0.1/img.qcow2".into(),
                    checksum: "ab".repeat(32),
                    checksum_type: ChecksumType::Sha256,
                    format: Some(ImageFormat::Qcow2),
                },
                root_device_hints: RootDeviceHints {
                    min_size_gigabytes: Some(4),
                    ..Default::default()
                },
                config_drive: None,
                registry: None,
            },
        };
        let json = serde_json::to_value(&cmd).unwrap();
        assert_eq!(json["command"], "write_image");
        assert_eq!(json["id"], 7);
        assert_eq!(json["root_device_hints"]["minSizeGigabytes"], 4);
        let back: Command = serde_json::from_value(json).unwrap();
        assert_eq!(back, cmd);
    }

    #[test]
    fn failed_outcome_is_tagged() {
        let r = CommandResult {
            command_id: 3,
            outcome: Outcome::Failed {
                kind: "checksum_mismatch".into(),
                message: "expected ab, got cd".into(),
            },
        };
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(json["outcome"], "failed");
        assert_eq!(json["kind"], "checksum_mismatch");
        assert_eq!(serde_json::from_value::<CommandResult>(json).unwrap(), r);
    }
}
