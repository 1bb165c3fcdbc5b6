//! `BareMetalHost` in `metal3.io/v1alpha1`, schema-compatible with Metal3's baremetal-operator for every field kiln
//! supports, so that a Metal3 inventory (`BareMetalHost` + BMC credentials `Secret`) applies unchanged.
//!
//! Field names, JSON casing (`ID`, `bootMACAddress`, `format` for the disk format) and enum values follow Metal3's
//! `apis/metal3.io/v1alpha1/baremetalhost_types.go`. Metal3 fields kiln does not act on (RAID, firmware, taints,
//! network interfaces, custom deploy) are still accepted (kept as free-form objects) so `kubectl apply` with strict
//! field validation does not reject a Metal3 manifest.

use k8s_openapi::api::core::v1::{ObjectReference, SecretReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The finalizer kiln puts on hosts (the same name Metal3 uses, so hosts pivot between the two).
pub const FINALIZER: &str = "baremetalhost.metal3.io";
/// Annotation that pauses reconciliation: neither spec nor status is touched while it is present.
pub const PAUSED_ANNOTATION: &str = "baremetalhost.metal3.io/paused";
/// Metal3's copy of a host's status in an annotation (JSON of `status`), written before a host moves to another
/// management cluster (`clusterctl move` does not copy status): baremetal-operator restores status from it.
pub const STATUS_ANNOTATION: &str = "baremetalhost.metal3.io/status";
/// Annotation that detaches the host from the engine: status may still be updated, nothing is driven.
pub const DETACHED_ANNOTATION: &str = "baremetalhost.metal3.io/detached";

/// Metal3's free-form object schema for fields kiln accepts but does not interpret.
pub(crate) fn free_form(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "nullable": true
    })
}

/// A list of free-form objects (Metal3's `taints`, `networkInterfaces`).
pub(crate) fn free_form_list(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}
    })
}

/// Desired state of a bare-metal host.
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[kube(
    group = "metal3.io",
    version = "v1alpha1",
    kind = "BareMetalHost",
    plural = "baremetalhosts",
    namespaced,
    status = "BareMetalHostStatus",
    shortname = "bmh",
    shortname = "bmhost",
    printcolumn = r#"{"name":"State","type":"string","jsonPath":".status.provisioning.state","description":"Provisioning status"}"#,
    printcolumn = r#"{"name":"Consumer","type":"string","jsonPath":".spec.consumerRef.name","description":"Consumer using this host"}"#,
    printcolumn = r#"{"name":"Online","type":"string","jsonPath":".spec.online","description":"Whether the host is online or not"}"#,
    printcolumn = r#"{"name":"Error","type":"string","jsonPath":".status.errorType","description":"Type of the most recent error"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    // `clusterctl move` moves every BareMetalHost of the namespace, with the Secrets it owns (its BMC credentials):
    // nothing owns a host, so without this label a move would leave the inventory behind.
    label("clusterctl.cluster.x-k8s.io/move-hierarchy", "")
)]
#[serde(rename_all = "camelCase")]
pub struct BareMetalHostSpec {
    /// How to reach the host's BMC.
    #[serde(default)]
    pub bmc: BmcDetails,
    /// MAC address of the NIC the host network-boots from (never the BMC's).
    #[serde(default, rename = "bootMACAddress", skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}"))]
    pub boot_mac_address: Option<String>,
    /// Boot mode; Metal3 defaults to UEFI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<BootMode>,
    /// Whether the host should be powered on.
    #[serde(default)]
    pub online: bool,
    /// Who uses the host (a CAPI Machine's infrastructure object); set means "in use".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_ref: Option<ObjectReference>,
    /// The image to provision; setting it starts provisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<Image>,
    /// Secret with the user data (cloud-init / Ignition) for the config drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<SecretReference>,
    /// Secret with the network data for the config drive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<SecretReference>,
    /// Secret with the metadata for the config drive (generated when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<SecretReference>,
    /// Secret with network data for the provisioning ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preprovisioning_network_data_name: Option<String>,
    /// Which disk to write the image to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    /// Whether disks are wiped on provisioning and deprovisioning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub automated_cleaning_mode: Option<AutomatedCleaningMode>,
    /// Something else provisioned the host; only power is managed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub externally_provisioned: bool,
    /// CPU architecture, e.g. `x86_64`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub architecture: Option<String>,
    /// Human-entered description.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Deprecated Metal3 hardware profile name (accepted, ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hardware_profile: Option<String>,
    /// Reboot instead of powering off.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_power_off: bool,
    /// `disabled`, `agent` or `fast`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inspection_mode: Option<InspectionMode>,
    /// Metal3 RAID configuration (accepted, not acted on by kiln).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub raid: Option<serde_json::Value>,
    /// Metal3 firmware configuration (deprecated there; accepted, ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub firmware: Option<serde_json::Value>,
    /// Metal3 custom deploy (accepted, not acted on by kiln).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "free_form")]
    pub custom_deploy: Option<serde_json::Value>,
    /// Metal3 taints (deprecated there; accepted, ignored).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_form_list")]
    pub taints: Vec<serde_json::Value>,
    /// Metal3 network interfaces (accepted, not acted on by kiln).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "free_form_list")]
    pub network_interfaces: Vec<serde_json::Value>,
}

/// How to reach the BMC.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BmcDetails {
    /// BMC URL; the scheme picks the driver (`redfish://`, `redfish-virtualmedia://`, `ipmi://`, ...).
    pub address: String,
    /// Secret in the host's namespace with keys `username` and `password`.
    pub credentials_name: String,
    /// Skip TLS verification of the BMC (self-signed certificates).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_certificate_verification: bool,
}

/// Metal3 boot modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BootMode {
    #[serde(rename = "UEFI")]
    Uefi,
    #[serde(rename = "UEFISecureBoot")]
    UefiSecureBoot,
    #[serde(rename = "legacy")]
    Legacy,
}

/// Metal3 automated cleaning modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum AutomatedCleaningMode {
    Metadata,
    Disabled,
}

/// Metal3 inspection modes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum InspectionMode {
    Disabled,
    Agent,
    Fast,
}

/// Metal3 checksum algorithms.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum ChecksumType {
    Md5,
    Sha256,
    Sha512,
    Auto,
}

/// Metal3 disk formats.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    Raw,
    Qcow2,
    Vdi,
    Vmdk,
    #[serde(rename = "live-iso")]
    LiveIso,
}

/// The image to write (spec) or that was written (status).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    /// Where to fetch the image.
    #[serde(default)]
    pub url: String,
    /// The checksum itself, or a URL of a checksum file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    /// Algorithm of `checksum`; Metal3 assumes md5 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<ChecksumType>,
    /// Disk format (Metal3's JSON name is `format`).
    #[serde(default, rename = "format", skip_serializing_if = "Option::is_none")]
    pub disk_format: Option<DiskFormat>,
    /// Docker-config Secret for `oci://` images.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oci_auth_secret_name: Option<String>,
}

/// Which disk to provision; every given hint must match.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RootDeviceHints {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    #[serde(default, rename = "hctl", skip_serializing_if = "Option::is_none")]
    pub hctl: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub min_size_gigabytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn_with_extension: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn_vendor_extension: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
}

/// Observed state of a host, written by kiln through the status subresource.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BareMetalHostStatus {
    /// `""`, `OK`, `discovered`, `error`, `delayed`, `detached` or `servicing`.
    #[serde(default)]
    pub operational_status: OperationalStatus,
    /// Class of the last failure when `operationalStatus` is `error`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_type: Option<ErrorType>,
    /// When this status was last observed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_updated: Option<Time>,
    /// Hardware found by inspection.
    #[serde(default, rename = "hardware", skip_serializing_if = "Option::is_none")]
    pub hardware: Option<HardwareDetails>,
    /// What the engine is doing with the host.
    #[serde(default)]
    pub provisioning: ProvisionStatus,
    /// The last error message.
    #[serde(default)]
    pub error_message: String,
    /// Detected power state.
    #[serde(default)]
    pub powered_on: bool,
    /// Timings of the host's operations.
    #[serde(default)]
    pub operation_history: OperationHistory,
    /// Errors since the last successful operation.
    #[serde(default)]
    pub error_count: i32,
    /// Metal3-style conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<Condition>,
}

/// Metal3 operational status values.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, JsonSchema)]
pub enum OperationalStatus {
    #[default]
    #[serde(rename = "")]
    Unknown,
    #[serde(rename = "OK")]
    Ok,
    #[serde(rename = "discovered")]
    Discovered,
    #[serde(rename = "error")]
    Error,
    #[serde(rename = "delayed")]
    Delayed,
    #[serde(rename = "detached")]
    Detached,
    #[serde(rename = "servicing")]
    Servicing,
}

/// Metal3 error classes.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ErrorType {
    #[serde(rename = "provisioned registration error")]
    ProvisionedRegistration,
    #[serde(rename = "registration error")]
    Registration,
    #[serde(rename = "inspection error")]
    Inspection,
    #[serde(rename = "preparation error")]
    Preparation,
    #[serde(rename = "provisioning error")]
    Provisioning,
    #[serde(rename = "power management error")]
    PowerManagement,
    #[serde(rename = "detach error")]
    Detach,
    #[serde(rename = "servicing error")]
    Servicing,
}

/// Metal3 provisioning states (`status.provisioning.state`).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum ProvisioningState {
    #[default]
    #[serde(rename = "")]
    None,
    #[serde(rename = "unmanaged")]
    Unmanaged,
    #[serde(rename = "registering")]
    Registering,
    #[serde(rename = "match profile")]
    MatchProfile,
    #[serde(rename = "preparing")]
    Preparing,
    #[serde(rename = "ready")]
    Ready,
    #[serde(rename = "available")]
    Available,
    #[serde(rename = "provisioning")]
    Provisioning,
    #[serde(rename = "provisioned")]
    Provisioned,
    #[serde(rename = "externally provisioned")]
    ExternallyProvisioned,
    #[serde(rename = "deprovisioning")]
    Deprovisioning,
    #[serde(rename = "inspecting")]
    Inspecting,
    #[serde(rename = "powering off before delete")]
    PoweringOffBeforeDelete,
    #[serde(rename = "deleting")]
    Deleting,
}

/// `status.provisioning`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProvisionStatus {
    /// What the engine is doing with the host.
    #[serde(default)]
    pub state: ProvisioningState,
    /// The engine's id for the host (Metal3's JSON name is `ID`).
    #[serde(default, rename = "ID")]
    pub id: String,
    /// The last image successfully provisioned.
    #[serde(default)]
    pub image: Image,
    /// The root device hints used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    /// The boot mode used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<BootMode>,
}

/// Start and end of one operation.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct OperationMetric {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start: Option<Time>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<Time>,
}

/// `status.operationHistory`.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
pub struct OperationHistory {
    #[serde(default)]
    pub register: OperationMetric,
    #[serde(default)]
    pub inspect: OperationMetric,
    #[serde(default)]
    pub provision: OperationMetric,
    #[serde(default)]
    pub deprovision: OperationMetric,
}

/// `status.hardware` (Metal3's `HardwareDetails`, the fields kiln's inspection fills).
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardwareDetails {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system_vendor: Option<HardwareSystemVendor>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ram_mebibytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nics: Vec<Nic>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub storage: Vec<Storage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Cpu>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
}

/// Manufacturer data.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct HardwareSystemVendor {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manufacturer: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
}

/// A network interface found by inspection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Nic {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed_gbps: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pxe: Option<bool>,
}

/// A disk found by inspection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_bytes: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial_number: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hctl: Option<String>,
}

/// The CPU found by inspection.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Cpu {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arch: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clock_megahertz: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<i64>,
}

impl BareMetalHost {
    /// Whether the paused annotation is present.
    pub fn is_paused(&self) -> bool {
        has_annotation(&self.metadata, PAUSED_ANNOTATION)
    }

    /// Whether the detached annotation is present.
    pub fn is_detached(&self) -> bool {
        has_annotation(&self.metadata, DETACHED_ANNOTATION)
    }

    /// The provisioning state, `None` when no status was written yet.
    pub fn state(&self) -> ProvisioningState {
        self.status.as_ref().map(|s| s.provisioning.state).unwrap_or_default()
    }
}

fn has_annotation(meta: &kube::api::ObjectMeta, key: &str) -> bool {
    meta.annotations.as_ref().is_some_and(|a| a.contains_key(key))
}
