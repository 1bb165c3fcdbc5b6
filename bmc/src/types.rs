//! Value types shared by every BMC driver and by kiln's executor: power, boot targets, inventory, secrets.

use std::fmt;

use serde::{Deserialize, Serialize};

/// The power state a BMC reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PowerState {
    On,
    Off,
    /// Power was applied and the host is starting (Redfish `PoweringOn`): treat as on, do not act on it again.
    #[serde(rename = "powering-on")]
    PoweringOn,
    /// The host is shutting down (Redfish `PoweringOff`): treat as going off, do not act on it again.
    #[serde(rename = "powering-off")]
    PoweringOff,
    /// Not reported, or a state kiln does not know (Redfish `Paused`, a vendor's own value).
    Unknown,
}

/// A power action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PowerAction {
    On,
    /// Graceful shutdown, falling back to a forced power off after the driver's timeout.
    Off,
    ForceOff,
    /// Power cycle (off then on).
    Cycle,
    /// Warm reset.
    Reset,
}

/// Firmware boot mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BootMode {
    #[default]
    Uefi,
    Legacy,
}

/// Where the host should boot from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", tag = "device")]
pub enum BootTarget {
    /// Network boot by PXE.
    Pxe { mode: BootMode },
    /// UEFI HTTP boot.
    UefiHttp,
    /// The local disk.
    Disk { mode: BootMode },
    /// The virtual CD.
    VirtualCd { mode: BootMode },
}

impl std::fmt::Display for BootTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mode = |m: &BootMode| match m {
            BootMode::Uefi => "UEFI",
            BootMode::Legacy => "legacy BIOS",
        };
        match self {
            BootTarget::Pxe { mode: m } => write!(f, "network (PXE, {})", mode(m)),
            BootTarget::UefiHttp => f.write_str("network (UEFI HTTP)"),
            BootTarget::Disk { mode: m } => write!(f, "disk ({})", mode(m)),
            BootTarget::VirtualCd { mode: m } => write!(f, "virtual CD ({})", mode(m)),
        }
    }
}

/// Whether a boot target applies to the next boot only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BootPersistence {
    Once,
    Persistent,
}

/// What a driver supports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Capabilities {
    pub virtual_media: bool,
    pub uefi_http_boot: bool,
    pub inventory: bool,
}

/// Hardware as seen by the BMC. Every field is optional because BMCs differ in what they expose.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Inventory {
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub uuid: Option<String>,
    pub processor_count: Option<u32>,
    pub processor_model: Option<String>,
    pub memory_mib: Option<u64>,
    pub disks: Vec<BmcDisk>,
    pub nic_macs: Vec<String>,
    /// The mode the System boots in, where the BMC says (Redfish `Boot.BootSourceOverrideMode`; IPMI cannot tell).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<BootMode>,
}

/// A disk the BMC reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BmcDisk {
    pub name: String,
    pub size_bytes: Option<u64>,
}

/// A secret (BMC password, token) that never prints: `Debug`, `Display` and `Serialize` show `***`. The one way to
/// put the value itself on the wire is to say so, field by field: `#[serde(serialize_with =
/// "Secret::serialize_exposed")]`.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself; call only where it is sent to its peer.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Serializes the value itself, for the one field of a request that carries it to its peer.
    ///
    /// # Errors
    /// The serializer's.
    pub fn serialize_exposed<S: serde::Serializer>(secret: &Secret, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&secret.0)
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str("***")
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn power_state_names() {
        for (state, name) in [
            (PowerState::On, "\"on\""),
            (PowerState::Off, "\"off\""),
            (PowerState::PoweringOn, "\"powering-on\""),
            (PowerState::PoweringOff, "\"powering-off\""),
            (PowerState::Unknown, "\"unknown\""),
        ] {
            assert_eq!(serde_json::to_string(&state).unwrap(), name);
            assert_eq!(serde_json::from_str::<PowerState>(name).unwrap(), state);
        }
    }

    #[test]
    fn secret_never_prints() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "*** ***");
        assert_eq!(s.expose(), "hunter2");
        assert_eq!(serde_json::to_string(&s).unwrap(), "\"***\"", "serialized by accident");
        #[derive(Serialize)]
        struct Wire {
            #[serde(serialize_with = "Secret::serialize_exposed")]
            password: Secret,
        }
        assert_eq!(
            serde_json::to_string(&Wire { password: s }).unwrap(),
            "{\"password\":\"hunter2\"}"
        );
    }
}
