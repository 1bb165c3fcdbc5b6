//! kiln's real engine behind the Kubernetes controllers: the store and the executor's state machine.
//!
//! A `BareMetalHost` `<namespace>/<name>` is the kiln host `<namespace>.<name>` (a namespace is a DNS label, so the
//! first dot splits them), labelled [`BMH_LABEL`] = `<namespace>/<name>` so that a host enrolled through the CLI or
//! the REST API is never taken over by a custom resource of the same name. [`Engine::apply_host`] translates the
//! resolved spec into kiln's [`model::HostSpec`](kiln_engine::model::HostSpec), writes it only when it changed, pokes the
//! executor, and reads the host back as a [`HostState`]; the executor does all BMC and agent work as for any host.

use std::sync::Arc;

use kiln_bmc::{PowerAction, PowerState, Secret};
use kiln_images::protocol::{self, HardwareInventory, ImageFormat, ImageSpec};

use super::{Engine, EngineError, HostKey, HostSpec, HostState, Release, SecretBytes};
use crate::bmh::{
    AutomatedCleaningMode, BootMode, ChecksumType, Cpu, DiskFormat, ErrorType, HardwareDetails, HardwareSystemVendor,
    Image, Nic, OperationHistory, OperationMetric, ProvisioningState as P, RootDeviceHints, Storage,
};
use kiln_engine::executor::{Executor, now};
use kiln_engine::machine::{JobPhase, Operation, State};
use kiln_engine::model::{self, EraseMode, Host, Requests};
use kiln_engine::store::{PhaseRecord, Store, StoreError};
use kiln_engine::types::{HostName, MacAddr};
use kiln_engine::wire::{BmcIn, ImageIn, bmc_from, image_from};

/// Label on kiln hosts that mirror a BareMetalHost; its value is `<namespace>/<name>`.
pub const BMH_LABEL: &str = "kiln.dev/baremetalhost";

/// The store-backed engine.
pub struct StoreEngine {
    store: Arc<dyn Store>,
    executor: Arc<Executor>,
}

impl StoreEngine {
    pub fn new(store: Arc<dyn Store>, executor: Arc<Executor>) -> Self {
        Self { store, executor }
    }

    /// The kiln host name of a BareMetalHost.
    ///
    /// # Errors
    /// [`EngineError::Rejected`] when `<namespace>.<name>` is not a valid kiln host name (longer than 63 characters).
    pub fn host_name(key: &HostKey) -> Result<HostName, EngineError> {
        format!("{}.{}", key.namespace, key.name)
            .parse()
            .map_err(|e: kiln_engine::types::ParseError| rejected(key, format!("cannot name the kiln host: {}", e.0)))
    }

    /// The host mirroring `key`, if kiln has it and it belongs to that BareMetalHost.
    async fn owned(&self, key: &HostKey) -> Result<Option<Host>, EngineError> {
        let name = Self::host_name(key)?;
        match self.store.host(&name).await.map_err(store_err)? {
            Some(h) if h.spec.labels.get(BMH_LABEL) == Some(&key.to_string()) => Ok(Some(h)),
            Some(_) => Err(rejected(
                key,
                format!("kiln already has a host named {name} that was not created from this BareMetalHost"),
            )),
            None => Ok(None),
        }
    }

    /// Writes a host's spec and requests if nobody wrote it since `h` was read, records `event` (kind, message) if
    /// given, and wakes the executor. `None`: the host changed in between; the caller reads it again and decides anew.
    async fn write(
        &self,
        h: &Host,
        spec: &model::HostSpec,
        requests: &Requests,
        event: Option<(&str, String)>,
    ) -> Result<Option<Host>, EngineError> {
        let written = match self.store.update_spec(h.id, h.generation, spec, requests, now()).await {
            Ok(w) => w,
            Err(StoreError::Changed { .. }) => return Ok(None),
            Err(e) => return Err(store_err(e)),
        };
        if let Some((kind, message)) = event {
            let _ = self.store.add_event(h.name.as_str(), now(), kind, &message).await;
        }
        self.executor.poke();
        Ok(Some(written))
    }

    /// One attempt of [`Engine::release_host`]; `None` when the host changed while it was being written.
    async fn release_once(&self, key: &HostKey, deprovision: bool) -> Result<Option<Release>, EngineError> {
        let Some(h) = self.owned(key).await? else {
            return Ok(Some(Release::Done));
        };
        if !deprovision {
            // Detached: forget the host without touching it (Metal3's detached annotation).
            self.store.delete_host(h.id).await.map_err(store_err)?;
            let _ = self
                .store
                .add_event(
                    h.name.as_str(),
                    now(),
                    "forgotten",
                    &format!("BareMetalHost {key} deleted while detached"),
                )
                .await;
            return Ok(Some(Release::Done));
        }
        if h.spec.image.is_some() && !h.requests.delete {
            let mut spec = h.spec.clone();
            spec.image = None;
            let event = ("deprovision", format!("BareMetalHost {key} deleted"));
            return Ok(self
                .write(&h, &spec, &h.requests, Some(event))
                .await?
                .map(|_| Release::InProgress(P::Deprovisioning)));
        }
        if matches!(
            h.state,
            State::Provisioning(_) | State::Provisioned { .. } | State::Deprovisioning(_)
        ) {
            return Ok(Some(Release::InProgress(P::Deprovisioning)));
        }
        if !h.requests.delete {
            let mut requests = h.requests.clone();
            requests.delete = true;
            if self.write(&h, &h.spec, &requests, None).await?.is_none() {
                return Ok(None);
            }
        }
        Ok(Some(Release::InProgress(P::Deleting)))
    }

    async fn observe(&self, h: &Host) -> Result<HostState, EngineError> {
        let inventory = self.store.inspection(h.id).await.map_err(store_err)?;
        let phases = self.store.phases(h.id).await.map_err(store_err)?;
        let mut st = state_of(
            h,
            inventory.and_then(|(v, _)| serde_json::from_value::<HardwareInventory>(v).ok()),
        );
        st.history = Some(history(&phases));
        Ok(st)
    }
}

fn rejected(key: &HostKey, reason: impl Into<String>) -> EngineError {
    EngineError::Rejected {
        host: key.to_string(),
        reason: reason.into(),
    }
}

/// How often one engine call re-reads and re-decides when the host changed under its write.
const WRITE_ATTEMPTS: u32 = 16;

fn changed(key: &HostKey) -> EngineError {
    EngineError::Unavailable(format!(
        "host {key} kept changing while it was being written; retrying later"
    ))
}

fn store_err(e: StoreError) -> EngineError {
    if e.is_transient() {
        EngineError::Unavailable(kiln_engine::bmcs::chain(&e))
    } else {
        EngineError::Rejected {
            host: String::new(),
            reason: kiln_engine::bmcs::chain(&e),
        }
    }
}

/// Parses a networkData/metaData Secret value: JSON, or YAML as Metal3 users often write it.
fn structured(key: &HostKey, field: &str, b: &SecretBytes) -> Result<serde_json::Value, EngineError> {
    serde_json::from_slice(&b.0)
        .or_else(|_| serde_saphyr::from_slice::<serde_json::Value>(&b.0))
        .map_err(|_| {
            rejected(
                key,
                format!("spec.{field}: the Secret's value is neither JSON nor YAML"),
            )
        })
}

/// The config drive's meta data of a BareMetalHost:
/// - Metal3's defaults (what the baremetal-operator gives Ironic): `metal3-namespace` and `metal3-name`, and the
///   BareMetalHost's name as the hostname (`local-hostname`, `local_hostname`, and `hostname`, which cloud-init's
///   OpenStack config drive reader takes). kiln's own default `hostname` would be its host name,
///   `<namespace>.<host>`, which cloud-init splits as a fully qualified name: the OS would be called after the
///   namespace, and so would the Node its kubelet registers.
/// - the user's `metaData` over those;
/// - `providerid`, the providerID a KilnMachine that claims this host gets, so that a bootstrap template can hand it
///   to the kubelet (`kubeletExtraArgs: {provider-id: "{{ ds.meta_data.providerid }}"}`, as CAPM3's templates do)
///   and the Node registers with the very ID Cluster API looks for.
fn with_provider_id(key: &HostKey, meta: Option<serde_json::Value>) -> Result<serde_json::Value, EngineError> {
    let id = crate::capi::provider_id(&key.namespace, &key.name);
    let mut map = serde_json::Map::new();
    map.insert("metal3-namespace".into(), key.namespace.clone().into());
    map.insert("metal3-name".into(), key.name.clone().into());
    for k in ["hostname", "local-hostname", "local_hostname"] {
        map.insert(k.into(), key.name.clone().into());
    }
    match meta {
        None => {}
        Some(serde_json::Value::Object(m)) => map.extend(m),
        Some(_) => return Err(rejected(key, "spec.metaData: the Secret's value must be a map of keys")),
    }
    match map.get(PROVIDER_ID_KEY) {
        Some(v) if v.as_str() != Some(id.as_str()) => {
            return Err(rejected(
                key,
                format!(
                    "spec.metaData.{PROVIDER_ID_KEY}: kiln sets it to {id} (the KilnMachine's providerID); remove it"
                ),
            ));
        }
        _ => {
            map.insert(PROVIDER_ID_KEY.into(), id.into());
        }
    }
    Ok(serde_json::Value::Object(map))
}

/// The meta data key that carries the host's providerID.
pub const PROVIDER_ID_KEY: &str = "providerid";

/// Translates the resolved BareMetalHost spec into kiln's host spec (pure but for validation errors).
///
/// # Errors
/// [`EngineError::Rejected`] naming the field that kiln cannot use.
pub fn kiln_spec(key: &HostKey, spec: &HostSpec) -> Result<model::HostSpec, EngineError> {
    // Metal3 trims the credentials it reads from the Secret (a `echo pw | base64` value ends in a newline).
    let username = spec.bmc.username.trim();
    if username.is_empty() {
        return Err(rejected(key, "the BMC credentials Secret has an empty username"));
    }
    let password = String::from_utf8(spec.bmc.password.0.clone())
        .map_err(|_| rejected(key, "the BMC password in the credentials Secret is not UTF-8"))?;
    let password = password.trim();
    if password.is_empty() {
        return Err(rejected(key, "the BMC credentials Secret has an empty password"));
    }
    let bmc = bmc_from(&BmcIn {
        address: spec.bmc.address.clone(),
        username: username.to_owned(),
        password: Secret::new(password.to_owned()),
        disable_certificate_verification: spec.bmc.disable_certificate_verification,
        ca_cert: None,
    })
    .map_err(|e| rejected(key, format!("spec.{}: {}", metal3_field(&e.field), e.message)))?;
    let boot_mac = spec
        .boot_mac_address
        .as_deref()
        .map(|m| {
            m.parse::<MacAddr>()
                .map_err(|e| rejected(key, format!("spec.bootMACAddress: {e}")))
        })
        .transpose()?;
    let image = match spec.image.as_ref().filter(|i| !i.url.is_empty()) {
        None => None,
        Some(i) => Some(image_spec(i).map_err(|m| rejected(key, m))?),
    };
    let user_data = spec
        .user_data
        .as_ref()
        .map(|b| {
            String::from_utf8(b.0.clone()).map_err(|_| rejected(key, "spec.userData: the Secret's value is not UTF-8"))
        })
        .transpose()?;
    let network_data = spec
        .network_data
        .as_ref()
        .map(|b| structured(key, "networkData", b))
        .transpose()?;
    let meta_data = spec
        .meta_data
        .as_ref()
        .map(|b| structured(key, "metaData", b))
        .transpose()?;
    let meta_data = Some(with_provider_id(key, meta_data)?);
    let preprovisioning_network_data = spec
        .preprovisioning_network_data
        .as_ref()
        .map(|b| structured(key, "preprovisioningNetworkDataName", b))
        .transpose()?;
    if let Some(d) = &preprovisioning_network_data {
        kiln_engine::vmedia::agent_network(d, boot_mac.as_ref())
            .map_err(|e| rejected(key, format!("spec.preprovisioningNetworkDataName: {e}")))?;
    }
    if let Some(arch) = spec.architecture.as_deref().filter(|a| !a.is_empty())
        && !matches!(arch, "x86_64" | "amd64")
    {
        return Err(rejected(
            key,
            format!("spec.architecture: kiln's agent ramdisk boots x86_64 only; {arch:?} is not supported"),
        ));
    }
    let mut labels = spec.labels.clone();
    labels.insert(BMH_LABEL.to_owned(), key.to_string());
    Ok(model::HostSpec {
        preprovisioning_network_data,
        labels,
        bmc: Some(bmc),
        boot_mac,
        boot_mode: match spec.boot_mode {
            BootMode::Legacy => kiln_bmc::BootMode::Legacy,
            BootMode::Uefi => kiln_bmc::BootMode::Uefi,
            // Never booted as plain UEFI behind the user's back: kiln does not set up Secure Boot yet.
            BootMode::UefiSecureBoot => {
                return Err(rejected(
                    key,
                    "spec.bootMode: kiln boots UEFI or legacy; UEFISecureBoot is not supported yet",
                ));
            }
        },
        root_device_hints: spec.root_device_hints.as_ref().map(hints_in).unwrap_or_default(),
        image_credentials: image.as_ref().and(spec.image_credentials.clone()),
        image,
        user_data,
        network_data,
        meta_data,
        options: model::HostOptions {
            externally_provisioned: spec.externally_provisioned,
            adopt_provisioned: spec.adopt_provisioned,
            erase: match spec.automated_cleaning_mode {
                AutomatedCleaningMode::Disabled => EraseMode::Disabled,
                AutomatedCleaningMode::Metadata => EraseMode::Metadata,
            },
            inspect: spec.inspect,
            // Metal3 keeps an available host powered as `online` says too, not only a provisioned one.
            online: Some(spec.online),
            ..model::HostOptions::default()
        },
    })
}

/// The BareMetalHost spelling of a REST field name.
fn metal3_field(rest: &str) -> &str {
    match rest {
        "bmc.address" => "bmc.address",
        "bmc.username" | "bmc.password" => "bmc.credentialsName",
        "boot_mac" => "bootMACAddress",
        other => other,
    }
}

/// Metal3's image fields, validated as the REST API validates them.
fn image_spec(i: &Image) -> Result<ImageSpec, String> {
    let format = match i.disk_format {
        None => None,
        Some(DiskFormat::Raw) => Some(ImageFormat::Raw),
        Some(DiskFormat::Qcow2) => Some(ImageFormat::Qcow2),
        Some(DiskFormat::LiveIso) => Some(ImageFormat::LiveIso),
        Some(other) => return Err(format!("spec.image.format: kiln does not write {other:?} images")),
    };
    let checksum_type = i.checksum_type.map(|t| match t {
        ChecksumType::Md5 => protocol::ChecksumType::Md5,
        ChecksumType::Sha256 => protocol::ChecksumType::Sha256,
        ChecksumType::Sha512 => protocol::ChecksumType::Sha512,
        ChecksumType::Auto => protocol::ChecksumType::Auto,
    });
    image_from(&ImageIn {
        url: i.url.clone(),
        checksum: i.checksum.clone(),
        checksum_type,
        format,
        // The credentials come from the Secret `ociAuthSecretName` names, resolved by the controller.
        registry_credentials: None,
    })
    .map_err(|e| format!("spec.{}: {}", e.field, e.message))
}

fn hints_in(h: &RootDeviceHints) -> protocol::RootDeviceHints {
    protocol::RootDeviceHints {
        device_name: h.device_name.clone(),
        hctl: h.hctl.clone(),
        model: h.model.clone(),
        vendor: h.vendor.clone(),
        serial_number: h.serial_number.clone(),
        min_size_gigabytes: h.min_size_gigabytes.and_then(|g| u64::try_from(g).ok()),
        wwn: h.wwn.clone(),
        wwn_with_extension: h.wwn_with_extension.clone(),
        wwn_vendor_extension: h.wwn_vendor_extension.clone(),
        rotational: h.rotational,
    }
}

fn hints_out(h: &protocol::RootDeviceHints) -> RootDeviceHints {
    RootDeviceHints {
        device_name: h.device_name.clone(),
        hctl: h.hctl.clone(),
        model: h.model.clone(),
        vendor: h.vendor.clone(),
        serial_number: h.serial_number.clone(),
        min_size_gigabytes: h.min_size_gigabytes.and_then(|g| i64::try_from(g).ok()),
        wwn: h.wwn.clone(),
        wwn_with_extension: h.wwn_with_extension.clone(),
        wwn_vendor_extension: h.wwn_vendor_extension.clone(),
        rotational: h.rotational,
    }
}

fn image_out(i: &ImageSpec) -> Image {
    Image {
        url: i.url.clone(),
        checksum: Some(i.checksum.clone()),
        checksum_type: Some(match i.checksum_type {
            protocol::ChecksumType::Auto => ChecksumType::Auto,
            protocol::ChecksumType::Sha256 => ChecksumType::Sha256,
            protocol::ChecksumType::Sha512 => ChecksumType::Sha512,
            protocol::ChecksumType::Md5 => ChecksumType::Md5,
        }),
        disk_format: i.format.map(|f| match f {
            ImageFormat::Raw => DiskFormat::Raw,
            ImageFormat::Qcow2 => DiskFormat::Qcow2,
            ImageFormat::LiveIso => DiskFormat::LiveIso,
        }),
        oci_auth_secret_name: None,
    }
}

/// Metal3's `status.hardware` from the agent's inventory.
pub fn hardware(inv: &HardwareInventory) -> HardwareDetails {
    let some = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    HardwareDetails {
        system_vendor: Some(HardwareSystemVendor {
            manufacturer: some(&inv.system.vendor),
            product_name: some(&inv.system.product),
            serial_number: some(&inv.system.serial),
        }),
        ram_mebibytes: i64::try_from(inv.memory_mib).ok(),
        nics: inv
            .nics
            .iter()
            .map(|n| Nic {
                name: some(&n.name),
                model: some(&n.driver),
                mac: some(&n.mac),
                ip: n.ipv4.first().map(|ip| ip.split('/').next().unwrap_or(ip).to_owned()),
                speed_gbps: n.speed_mbps.map(|m| i64::from(m / 1000)),
                pxe: None,
            })
            .collect(),
        storage: inv
            .disks
            .iter()
            .map(|d| Storage {
                name: some(&d.name),
                rotational: Some(d.rotational),
                size_bytes: i64::try_from(d.size_bytes).ok(),
                vendor: some(&d.vendor),
                model: some(&d.model),
                serial_number: some(&d.serial),
                wwn: some(&d.wwn),
                hctl: some(&d.hctl),
            })
            .collect(),
        cpu: Some(Cpu {
            arch: some(&inv.cpu.architecture),
            model: some(&inv.cpu.model),
            clock_megahertz: None,
            count: Some(i64::from(inv.cpu.count)),
        }),
        hostname: None,
    }
}

fn error_type(op: Operation) -> ErrorType {
    match op {
        Operation::Registering => ErrorType::Registration,
        Operation::Inspecting => ErrorType::Inspection,
        Operation::Preparing => ErrorType::Preparation,
        Operation::Provisioning | Operation::Deprovisioning => ErrorType::Provisioning,
    }
}

/// What the BareMetalHost's status shows for a stored host (pure).
pub fn state_of(h: &Host, inventory: Option<HardwareInventory>) -> HostState {
    let (state, error) = match &h.state {
        State::Unmanaged => (P::Unmanaged, None),
        State::Registering { .. } => (P::Registering, None),
        State::Inspecting(_) => (P::Inspecting, None),
        State::Preparing(_) => (P::Preparing, None),
        State::Available { .. } => (P::Available, None),
        State::Provisioning(_) => (P::Provisioning, None),
        State::Provisioned { .. } => (P::Provisioned, None),
        State::Deprovisioning(_) => (P::Deprovisioning, None),
        State::ExternallyProvisioned { .. } => (P::ExternallyProvisioned, None),
        State::Deleting { .. } => (P::Deleting, None),
        State::Error(e) => {
            let s = match e.operation {
                Operation::Registering => P::Registering,
                Operation::Inspecting => P::Inspecting,
                Operation::Preparing => P::Preparing,
                Operation::Provisioning => P::Provisioning,
                Operation::Deprovisioning => P::Deprovisioning,
            };
            (s, Some((error_type(e.operation), e.message.clone())))
        }
    };
    let on_disk = match &h.state {
        State::Provisioned { image_url, .. } => h
            .spec
            .image
            .as_ref()
            .filter(|i| i.url == *image_url)
            .map(image_out)
            .or_else(|| {
                Some(Image {
                    url: image_url.clone(),
                    ..Image::default()
                })
            }),
        _ => None,
    };
    let hints = h.spec.root_device_hints.clone();
    HostState {
        state,
        id: h.id.to_string(),
        powered_on: h.power == Some(PowerState::On),
        error,
        error_count: i32::try_from(h.counters.errors).unwrap_or(i32::MAX),
        hardware: inventory.as_ref().map(hardware),
        provisioned_image: on_disk,
        boot_mode: Some(match h.spec.boot_mode {
            kiln_bmc::BootMode::Uefi => BootMode::Uefi,
            kiln_bmc::BootMode::Legacy => BootMode::Legacy,
        }),
        root_device_hints: (hints != protocol::RootDeviceHints::default()).then(|| hints_out(&hints)),
        delayed: h.state.job().is_some_and(|j| j.phase == JobPhase::Delayed),
        history: None,
    }
}

/// Metal3's `operationHistory` from kiln's phase timings: the latest record of each operation.
pub fn history(phases: &[PhaseRecord]) -> OperationHistory {
    let time = |ts: kiln_engine::types::Ts| {
        k8s_openapi::jiff::Timestamp::from_millisecond(ts.0)
            .ok()
            .map(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time)
    };
    let metric = |name: &str| {
        phases
            .iter()
            .rev()
            .find(|p| p.phase == name)
            .map(|p| OperationMetric {
                start: time(p.started),
                end: p.ended.and_then(time),
            })
            .unwrap_or_default()
    };
    OperationHistory {
        register: metric("registering"),
        inspect: metric("inspecting"),
        provision: metric("provisioning"),
        deprovision: metric("deprovisioning"),
    }
}

/// The power request that makes a settled host match `online`, if one is needed and none is pending.
fn power_request(h: &Host, online: bool) -> Option<PowerAction> {
    let settled = matches!(h.state, State::Provisioned { .. } | State::ExternallyProvisioned { .. });
    if !settled || h.requests.power.is_some() {
        return None;
    }
    match (online, h.power) {
        (true, Some(PowerState::Off)) => Some(PowerAction::On),
        (false, Some(PowerState::On)) => Some(PowerAction::Off),
        _ => None,
    }
}

impl Engine for StoreEngine {
    async fn apply_host(&self, key: &HostKey, spec: &HostSpec) -> Result<HostState, EngineError> {
        let mut desired = kiln_spec(key, spec)?;
        if let Some(b) = &desired.bmc {
            self.executor
                .accepts(&b.address)
                .map_err(|m| rejected(key, format!("spec.bmc.address: {m}")))?;
        }
        let mut attempts = 0;
        let host = loop {
            attempts += 1;
            if attempts > WRITE_ATTEMPTS {
                return Err(changed(key));
            }
            break match self.owned(key).await? {
                None => {
                    let name = Self::host_name(key)?;
                    let why = format!("from BareMetalHost {key}");
                    let h = match self.store.create_host(&name, &desired, &why, now()).await {
                        Ok(h) => h,
                        Err(StoreError::MacInUse { mac }) => {
                            return Err(rejected(
                                key,
                                format!("spec.bootMACAddress: {mac} is already used by another kiln host"),
                            ));
                        }
                        Err(e @ StoreError::BmcInUse { .. }) => {
                            return Err(rejected(key, format!("spec.bmc.address: {e}")));
                        }
                        Err(e) => return Err(store_err(e)),
                    };
                    self.executor.poke();
                    h
                }
                Some(h) if h.requests.delete => return Err(rejected(key, "being released")),
                Some(h) => {
                    // An adoption holds until registration ends, even once the status kiln writes meanwhile no longer
                    // says `provisioned`.
                    if h.spec.options.adopt_provisioned
                        && matches!(h.state, State::Unmanaged | State::Registering { .. })
                    {
                        desired.options.adopt_provisioned = true;
                    }
                    let mut requests = h.requests.clone();
                    if let Some(a) = power_request(&h, spec.online) {
                        requests.power = Some(a);
                    }
                    // The password is compared by value: `Secret` hides it from Debug, not from equality.
                    if desired != h.spec || requests != h.requests {
                        let event = (desired.image != h.spec.image).then(|| {
                            let what = if desired.image.is_some() {
                                "image set"
                            } else {
                                "image removed"
                            };
                            ("provision", format!("{what} by BareMetalHost {key}"))
                        });
                        match self.write(&h, &desired, &requests, event).await? {
                            Some(w) => w,
                            None => continue,
                        }
                    } else {
                        h
                    }
                }
            };
        };
        self.observe(&host).await
    }

    async fn host_state(&self, key: &HostKey) -> Result<Option<HostState>, EngineError> {
        match self.owned(key).await? {
            Some(h) => Ok(Some(self.observe(&h).await?)),
            None => Ok(None),
        }
    }

    async fn release_host(&self, key: &HostKey, deprovision: bool) -> Result<Release, EngineError> {
        for _ in 0..WRITE_ATTEMPTS {
            if let Some(r) = self.release_once(key, deprovision).await? {
                return Ok(r);
            }
        }
        Err(changed(key))
    }

    fn changes(&self) -> Option<futures::stream::BoxStream<'static, HostKey>> {
        use futures::StreamExt;
        let rx = self.executor.subscribe();
        Some(
            futures::stream::unfold(rx, |mut rx| async move {
                loop {
                    match rx.recv().await {
                        Ok(name) => return Some((name, rx)),
                        // Missed changes are caught up by the controller's periodic resync.
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                    }
                }
            })
            .filter_map(|name| async move {
                let (namespace, name) = name.as_str().split_once('.')?;
                Some(HostKey {
                    namespace: namespace.to_owned(),
                    name: name.to_owned(),
                })
            })
            .boxed(),
        )
    }

    async fn reboot_host(&self, key: &HostKey) -> Result<(), EngineError> {
        for _ in 0..WRITE_ATTEMPTS {
            let Some(h) = self.owned(key).await? else {
                return Err(rejected(key, "unknown host"));
            };
            if h.state.job().is_some() {
                return Err(rejected(
                    key,
                    format!(
                        "host is {}; kiln does not reboot a host while it drives it",
                        h.state.name()
                    ),
                ));
            }
            let mut requests = h.requests.clone();
            requests.power = Some(PowerAction::Cycle);
            let event = ("reboot", format!("remediation of BareMetalHost {key}"));
            if self.write(&h, &h.spec, &requests, Some(event)).await?.is_some() {
                return Ok(());
            }
        }
        Err(changed(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::BmcAccess;

    fn key() -> HostKey {
        HostKey {
            namespace: "metal3".into(),
            name: "node-0".into(),
        }
    }

    fn spec() -> HostSpec {
        HostSpec {
            bmc: BmcAccess {
                address: "redfish+http://192.0.2.1:8000/redfish/v1/Systems/1".into(),
                username: "admin".into(),
                password: SecretBytes(b"pw-Zq81".to_vec()),
                disable_certificate_verification: false,
            },
            boot_mac_address: Some("52:54:00:AA:00:01".into()),
            boot_mode: BootMode::Legacy,
            online: true,
            consumer: None,
            image: Some(Image {
                url: "http://192.0.2.9/os.qcow2".into(),
                checksum: Some("ab".repeat(32)),
                checksum_type: Some(ChecksumType::Sha256),
                disk_format: Some(DiskFormat::Qcow2),
                oci_auth_secret_name: None,
            }),
            image_credentials: None,
            user_data: Some(SecretBytes(b"#cloud-config\n".to_vec())),
            network_data: Some(SecretBytes(b"links: []\nnetworks: []\n".to_vec())),
            meta_data: None,
            preprovisioning_network_data: None,
            root_device_hints: Some(RootDeviceHints {
                min_size_gigabytes: Some(4),
                ..Default::default()
            }),
            automated_cleaning_mode: AutomatedCleaningMode::Disabled,
            externally_provisioned: false,
            adopt_provisioned: false,
            architecture: None,
            inspect: true,
            labels: Default::default(),
        }
    }

    #[test]
    fn translates_a_metal3_spec_and_names_bad_fields() {
        let s = kiln_spec(&key(), &spec()).unwrap();
        assert_eq!(s.labels[BMH_LABEL], "metal3/node-0");
        assert_eq!(s.boot_mac.unwrap().to_string(), "52:54:00:aa:00:01");
        assert_eq!(s.boot_mode, kiln_bmc::BootMode::Legacy);
        let img = s.image.unwrap();
        assert_eq!(img.checksum_type, protocol::ChecksumType::Sha256);
        assert_eq!(img.format, Some(ImageFormat::Qcow2));
        assert_eq!(s.network_data.unwrap()["links"], serde_json::json!([]));
        assert_eq!(s.root_device_hints.min_size_gigabytes, Some(4));
        assert_eq!(s.options.erase, EraseMode::Disabled);
        assert_eq!(StoreEngine::host_name(&key()).unwrap().as_str(), "metal3.node-0");
        // Secure Boot is refused by name, not booted as plain UEFI.
        let secure = HostSpec {
            boot_mode: BootMode::UefiSecureBoot,
            ..spec()
        };
        let e = kiln_spec(&key(), &secure).unwrap_err().to_string();
        assert!(e.contains("spec.bootMode") && e.contains("UEFISecureBoot"), "{e}");
        // A live ISO maps both ways, and needs no checksum.
        let live = HostSpec {
            image: Some(Image {
                url: "http://192.0.2.9/live.iso".into(),
                checksum: None,
                checksum_type: None,
                disk_format: Some(DiskFormat::LiveIso),
                oci_auth_secret_name: None,
            }),
            ..spec()
        };
        let l = kiln_spec(&key(), &live).unwrap();
        assert_eq!(l.image.unwrap().format, Some(ImageFormat::LiveIso));
        // The config drive carries Metal3's defaults (the BareMetalHost's name as the hostname, not kiln's dotted
        // host name) and the providerID the KilnMachine will get, next to the user's meta data.
        let defaults = serde_json::json!({
            "metal3-namespace": "metal3", "metal3-name": "node-0",
            "hostname": "node-0", "local-hostname": "node-0", "local_hostname": "node-0",
        });
        let with = |extra: serde_json::Value| {
            let mut m = defaults.clone();
            m.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            m
        };
        assert_eq!(
            s.meta_data.unwrap(),
            with(serde_json::json!({ "providerid": "kiln://metal3/node-0" }))
        );
        let mut with_meta = spec();
        with_meta.meta_data = Some(SecretBytes(
            b"rack: r7
"
            .to_vec(),
        ));
        assert_eq!(
            kiln_spec(&key(), &with_meta).unwrap().meta_data.unwrap(),
            with(serde_json::json!({ "rack": "r7", "providerid": "kiln://metal3/node-0" }))
        );
        // The user's meta data wins over the defaults, as in Metal3.
        with_meta.meta_data = Some(SecretBytes(b"local-hostname: worker-7\n".to_vec()));
        assert_eq!(
            kiln_spec(&key(), &with_meta).unwrap().meta_data.unwrap()["local-hostname"],
            "worker-7"
        );
        with_meta.meta_data = Some(SecretBytes(b"providerid: metal3://x\n".to_vec()));
        let e = kiln_spec(&key(), &with_meta).unwrap_err().to_string();
        assert!(e.contains("spec.metaData.providerid"), "{e}");
        with_meta.meta_data = Some(SecretBytes(b"[1, 2]".to_vec()));
        let e = kiln_spec(&key(), &with_meta).unwrap_err().to_string();
        assert!(e.contains("spec.metaData"), "{e}");

        let mut bad = spec();
        bad.boot_mac_address = Some("nope".into());
        let e = kiln_spec(&key(), &bad).unwrap_err().to_string();
        assert!(e.contains("spec.bootMACAddress"), "{e}");
        let mut bad = spec();
        bad.image.as_mut().unwrap().checksum = Some("xyz".into());
        let e = kiln_spec(&key(), &bad).unwrap_err().to_string();
        assert!(e.contains("spec.image.checksum"), "{e}");
        assert!(!e.contains("pw-Zq81"));
        let mut bad = spec();
        bad.bmc.address = "http://192.0.2.1".into();
        assert!(
            kiln_spec(&key(), &bad)
                .unwrap_err()
                .to_string()
                .contains("spec.bmc.address")
        );
        let long = HostKey {
            namespace: "n".repeat(40),
            name: "m".repeat(40),
        };
        assert!(StoreEngine::host_name(&long).is_err());
    }

    #[test]
    fn hardware_comes_from_the_inventory() {
        let inv: HardwareInventory = serde_json::from_value(serde_json::json!({
            "system": { "vendor": "QEMU", "product": "Standard PC", "serial": "", "uuid": "u" },
            "cpu": { "model": "vcpu", "count": 2, "architecture": "x86_64" },
            "memory_mib": 2048,
            "disks": [{ "name": "/dev/vda", "size_bytes": 5368709120u64, "rotational": false, "removable": false }],
            "nics": [{ "name": "eth0", "mac": "52:54:00:aa:00:01", "link_up": true, "ipv4": ["10.99.0.50/24"] }],
            "boot_mode": "legacy",
        }))
        .unwrap();
        let h = hardware(&inv);
        assert_eq!(h.ram_mebibytes, Some(2048));
        assert_eq!(h.cpu.unwrap().count, Some(2));
        assert_eq!(h.nics[0].ip.as_deref(), Some("10.99.0.50"));
        assert_eq!(h.storage[0].size_bytes, Some(5_368_709_120));
        assert_eq!(h.system_vendor.unwrap().serial_number, None);
    }
}
