//! The host record: what an operator asked for ([`HostSpec`], [`Requests`]) and what kiln observed and decided
//! ([`State`](crate::machine::State), power, counters). Data only; no I/O, no decisions.

use std::collections::BTreeMap;

use kiln_bmc::{BootMode, PowerAction, PowerState, Secret};
use kiln_images::protocol::{ImageSpec, RootDeviceHints};
use serde::{Deserialize, Serialize};

use crate::machine::State;
use crate::types::{HostName, MacAddr, Ts};

pub use kiln_bmc::BmcAddress;

/// How to reach a host's BMC. The address is parsed once, by kiln-bmc's parser; the password is a [`Secret`] and is
/// encrypted at rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcInfo {
    pub address: BmcAddress,
    pub username: String,
    pub password: Secret,
    /// How this host's BMC connection verifies TLS (Metal3's `disableCertificateVerification`, per host).
    #[serde(default)]
    pub tls: BmcTls,
}

/// Per-host TLS settings of a Redfish BMC connection. The default verifies against the system's trust store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct BmcTls {
    /// Accept any certificate (a BMC's self-signed factory certificate). Off unless the operator asks, per host.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_certificate_verification: bool,
    /// Extra CA certificates (PEM) to trust for this BMC, besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
}

impl BmcTls {
    /// Whether anything differs from the default (verify against the system's CAs).
    pub fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

/// How much of the disks to erase when cleaning (Metal3 `automatedCleaningMode`, plus `full`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EraseMode {
    /// Wipe partition tables and filesystem signatures.
    #[default]
    Metadata,
    /// Overwrite every disk completely.
    Full,
    /// Do not erase (deprovisioning only powers off).
    Disabled,
}

/// What the operator wants for a host. Set through the API; the executor never changes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct HostSpec {
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub bmc: Option<BmcInfo>,
    #[serde(default)]
    pub boot_mac: Option<MacAddr>,
    #[serde(default)]
    pub boot_mode: BootMode,
    #[serde(default)]
    pub root_device_hints: RootDeviceHints,
    /// The image to write; setting it provisions, clearing it deprovisions.
    #[serde(default)]
    pub image: Option<ImageSpec>,
    #[serde(default)]
    pub user_data: Option<String>,
    #[serde(default)]
    pub network_data: Option<serde_json::Value>,
    #[serde(default)]
    pub meta_data: Option<serde_json::Value>,
    /// The agent ramdisk's network configuration (OpenStack `network_data.json`, Metal3's
    /// `preprovisioningNetworkDataName`): static addresses for a host booted by virtual media where no DHCP serves
    /// it. Unset, the ramdisk asks DHCP.
    #[serde(default)]
    pub preprovisioning_network_data: Option<serde_json::Value>,
    /// Credentials for the registry of an `oci://` image (Metal3's `ociAuthSecretName`); set and cleared with the
    /// image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_credentials: Option<RegistryLogin>,
    #[serde(default)]
    pub options: HostOptions,
}

/// A user name and password (or token) for an image registry. Sealed in the store; serializes and prints the
/// password as `***`; sent to the agent only in the command that pulls the image.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryLogin {
    pub username: String,
    pub password: Secret,
}

/// Per-host switches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostOptions {
    /// Inspect after registration (Metal3 inspects by default).
    #[serde(default = "yes")]
    pub inspect: bool,
    /// Adopt a host that already runs its OS: power management only, never written.
    #[serde(default)]
    pub externally_provisioned: bool,
    /// The host already runs the image of its spec, written by kiln (or Metal3) before kiln lost or never had its
    /// record: after a store was lost, or when the host moved from another management cluster. Registration then
    /// ends in `provisioned` with that image, without inspecting or writing it; a later deprovision erases as usual.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub adopt_provisioned: bool,
    /// Erase mode used when deprovisioning.
    #[serde(default)]
    pub erase: EraseMode,
    /// Clean (erase metadata) once after inspection, before the host becomes available.
    #[serde(default)]
    pub prepare: bool,
    /// The power a host at rest keeps (Metal3's `spec.online`): `true` powers an available or provisioned host on
    /// (and on again), `false` keeps it off; unset, kiln leaves power to the operator's requests.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

fn yes() -> bool {
    true
}

impl Default for HostOptions {
    fn default() -> Self {
        Self {
            inspect: true,
            externally_provisioned: false,
            adopt_provisioned: false,
            erase: EraseMode::Metadata,
            prepare: false,
            online: None,
        }
    }
}

/// One-shot requests from the operator that the state machine consumes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Requests {
    #[serde(default)]
    pub power: Option<PowerAction>,
    #[serde(default)]
    pub inspect: bool,
    #[serde(default)]
    pub delete: bool,
    /// Retry the failed provision now with the current spec (the operator provisioned a host in error again, as
    /// an Ironic user re-deploys a node in `deploy failed`), without waiting for the automatic retry.
    #[serde(default)]
    pub retry: bool,
}

/// Counters kept per host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema)]
pub struct Counters {
    /// Network boots of the agent so far (also the id of the latest boot).
    pub boots: u64,
    /// Successful deploys.
    pub deploys: u64,
    /// Errors entered.
    pub errors: u64,
    /// BMC calls made.
    pub bmc_calls: u64,
    /// Consecutive failed attempts of the BMC action being retried (0 when the last one succeeded). Persisted, so a
    /// restart between a failure and its retry does not start the count over.
    #[serde(default)]
    pub bmc_attempts: u32,
}

/// A host as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    pub id: i64,
    pub name: HostName,
    pub spec: HostSpec,
    pub requests: Requests,
    pub state: State,
    pub power: Option<PowerState>,
    pub counters: Counters,
    /// Bumped on every write; writers that read an older one lose.
    pub generation: i64,
    pub next_wake: Option<Ts>,
    pub created: Ts,
    pub updated: Ts,
}

/// The executor's write: status fields only, conditional on the generation it read.
#[derive(Debug, Clone, PartialEq)]
pub struct StatusUpdate {
    pub state: State,
    pub requests: Requests,
    pub power: Option<PowerState>,
    pub counters: Counters,
    pub next_wake: Option<Ts>,
}
