//! The narrow contract between the Kubernetes controllers and kiln's engine (store + state machine).
//!
//! The BareMetalHost controller turns a host's spec plus the Secrets it names into a [`HostSpec`] and hands it to
//! [`Engine::apply_host`]; the engine answers with the host's observed [`HostState`], which the controller writes back to
//! the status subresource. The engine owns the truth about hosts; the custom resource is only its declarative
//! front-end. [`store::StoreEngine`] is the one implementation: kiln's store and executor.

use std::future::Future;

use crate::bmh::{
    AutomatedCleaningMode, BootMode, ErrorType, HardwareDetails, Image, OperationHistory, ProvisioningState,
    RootDeviceHints,
};

pub mod store;

/// Identifies a host in the engine: `<namespace>/<name>` of its BareMetalHost.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostKey {
    pub namespace: String,
    pub name: String,
}

impl std::fmt::Display for HostKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// A secret value (BMC password, user data) that never appears in `Debug` output.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct SecretBytes(pub Vec<u8>);

impl std::fmt::Debug for SecretBytes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretBytes({} bytes)", self.0.len())
    }
}

/// BMC access, resolved from the credentials Secret.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BmcAccess {
    pub address: String,
    pub username: String,
    pub password: SecretBytes,
    pub disable_certificate_verification: bool,
}

/// The desired state of one host, with every Secret already resolved.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSpec {
    pub bmc: BmcAccess,
    pub boot_mac_address: Option<String>,
    pub boot_mode: BootMode,
    pub online: bool,
    /// `<kind>/<namespace>/<name>` of the consumer, when the host is in use.
    pub consumer: Option<String>,
    pub image: Option<Image>,
    /// The registry credentials of an `oci://` image, from the docker-config Secret its `ociAuthSecretName` names.
    pub image_credentials: Option<kiln_engine::model::RegistryLogin>,
    pub user_data: Option<SecretBytes>,
    pub network_data: Option<SecretBytes>,
    pub meta_data: Option<SecretBytes>,
    /// The `networkData` of the Secret named by `preprovisioningNetworkDataName`: the agent ramdisk's network.
    pub preprovisioning_network_data: Option<SecretBytes>,
    pub root_device_hints: Option<RootDeviceHints>,
    pub automated_cleaning_mode: AutomatedCleaningMode,
    pub externally_provisioned: bool,
    /// The BareMetalHost's status says it is provisioned: a host kiln has no record of (a lost store, a move from
    /// another management cluster) is adopted as provisioned with its image instead of being inspected and written.
    pub adopt_provisioned: bool,
    pub architecture: Option<String>,
    /// Whether the host is inspected after registration (`false` with the `inspect.metal3.io: disabled` annotation
    /// or `inspectionMode: disabled`).
    pub inspect: bool,
    /// The BareMetalHost's labels, copied to the kiln host (where `kiln host list -l` selects by them).
    pub labels: std::collections::BTreeMap<String, String>,
}

/// What the engine observes about a host.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct HostState {
    pub state: ProvisioningState,
    /// The engine's id for the host.
    pub id: String,
    pub powered_on: bool,
    pub error: Option<(ErrorType, String)>,
    pub error_count: i32,
    pub hardware: Option<HardwareDetails>,
    /// The image currently on the host's disk.
    pub provisioned_image: Option<Image>,
    pub boot_mode: Option<BootMode>,
    pub root_device_hints: Option<RootDeviceHints>,
    /// Waiting for a concurrency slot (Metal3's operational status `delayed`).
    pub delayed: bool,
    /// When each operation last started and ended, if the engine keeps timings; otherwise the controller stamps
    /// the state changes it sees.
    pub history: Option<OperationHistory>,
}

impl HostState {
    /// Whether the host is in a state the engine leaves on its own (no work in flight).
    pub fn is_stable(&self) -> bool {
        matches!(
            self.state,
            ProvisioningState::Available
                | ProvisioningState::Provisioned
                | ProvisioningState::ExternallyProvisioned
                | ProvisioningState::Unmanaged
        ) || self.error.is_some()
    }
}

/// Progress of releasing a host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Release {
    /// The engine still works on it (deprovisioning, powering off); ask again later.
    InProgress(ProvisioningState),
    /// The engine has forgotten the host.
    Done,
}

/// Errors the engine reports.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("the engine rejected host {host}: {reason}")]
    Rejected { host: String, reason: String },
    #[error("the engine is unavailable: {0}")]
    Unavailable(String),
}

impl EngineError {
    /// Whether retrying later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// kiln's engine as the Kubernetes controllers see it.
pub trait Engine: Send + Sync + 'static {
    /// Creates or updates a host's desired state; returns what the engine observes now.
    fn apply_host(&self, key: &HostKey, spec: &HostSpec)
    -> impl Future<Output = Result<HostState, EngineError>> + Send;

    /// What the engine observes about a host, `None` when it does not know it.
    fn host_state(&self, key: &HostKey) -> impl Future<Output = Result<Option<HostState>, EngineError>> + Send;

    /// Deprovisions (unless `deprovision` is false: detached hosts) and forgets a host.
    fn release_host(
        &self,
        key: &HostKey,
        deprovision: bool,
    ) -> impl Future<Output = Result<Release, EngineError>> + Send;

    /// Power-cycles a host through its BMC (remediation).
    fn reboot_host(&self, key: &HostKey) -> impl Future<Output = Result<(), EngineError>> + Send;

    /// Hosts whose observed state changed, when the engine can tell (so the controller refreshes their status at
    /// once instead of waiting for its next poll). `None`: the controller polls.
    fn changes(&self) -> Option<futures::stream::BoxStream<'static, HostKey>> {
        None
    }
}
