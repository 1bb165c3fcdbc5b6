//! The Redfish driver (DMTF DSP0266 protocol, DSP0268 schemas): one ComputerSystem behind one Redfish service.
//! It maps kiln's narrow [`Bmc`] operations onto Systems, Managers, VirtualMedia and the Reset action; the HTTP
//! mechanics (auth, pacing, retries, task monitors) live in `client`.

mod client;
pub mod model;

pub use self::client::path_on_origin;

use reqwest::Method;
use serde_json::json;
use tokio::time::Instant;

use self::client::Client;
use self::model::{
    ActionInfo, Collection, ComputerSystem, Drive, EthernetInterface, Manager, Processor, ServiceRoot, SimpleStorage,
    Storage, VirtualMedia,
};
use crate::Bmc;
use crate::address::RedfishAddress;
use crate::config::{BmcOptions, Credentials};
use crate::error::{BmcError, BmcErrorKind};
use crate::types::{BmcDisk, BootMode, BootPersistence, BootTarget, Capabilities, Inventory, PowerAction, PowerState};

/// What `connect` learnt about the service and the System.
#[derive(Debug, Clone)]
struct Discovered {
    system: String,
    reset_target: String,
    /// `None` when the service does not say: every standard ResetType is tried.
    reset_types: Option<Vec<String>>,
    boot_targets: Option<Vec<String>>,
    /// Whether the System exposes `BootSourceOverrideMode` (UEFI/Legacy).
    has_boot_mode: bool,
    virtual_media: Option<String>,
    has_cd: bool,
}

/// A Redfish BMC with its System resolved. Call [`RedfishBmc::close`] when done, to delete the session.
#[derive(Debug)]
pub struct RedfishBmc {
    client: Client,
    found: Discovered,
}

impl RedfishBmc {
    /// Discovers the service root, logs in (session, or basic auth when the service has no SessionService) and
    /// resolves the System: the one in the address (following a redirect), or the only one on the service.
    ///
    /// # Errors
    /// `AuthFailed` for wrong credentials, `NotFound` for a System that does not exist, `AmbiguousSystem` when the
    /// address names none and the service has several, and transport errors.
    pub async fn connect(address: &RedfishAddress, creds: Credentials, opts: BmcOptions) -> Result<Self, BmcError> {
        let client = Client::new(address, creds, opts)?;
        // DSP0266 section 13.3.1 makes the service root public, but some BMCs want credentials even there.
        let root: ServiceRoot = match client.get_json("/redfish/v1/").await {
            Err(BmcError::AuthFailed { .. }) => {
                client.use_basic_auth();
                client.get_json("/redfish/v1/").await?
            }
            other => other?,
        };
        tracing::debug!(bmc = %client.bmc, version = ?root.redfish_version, vendor = ?root.vendor, "redfish service root");
        client.login(&root).await?;
        let result = Self::discover(&client, address, &root).await;
        match result {
            Ok(found) => Ok(Self { client, found }),
            Err(e) => {
                // Do not leak the session we just created.
                let _ = client.logout().await;
                Err(e)
            }
        }
    }

    async fn discover(client: &Client, address: &RedfishAddress, root: &ServiceRoot) -> Result<Discovered, BmcError> {
        let system = match &address.system_path {
            Some(path) => {
                let reply = client.request(Method::GET, path, None).await.map_err(|e| match e {
                    BmcError::NotFound { bmc, .. } => BmcError::NotFound {
                        bmc,
                        resource: format!("system {path}"),
                    },
                    other => other,
                })?;
                // sushy-tools answers a System by name with a 307 to its UUID URL: use where we landed.
                if reply.final_path.trim_end_matches('/') != path.trim_end_matches('/') {
                    tracing::debug!(bmc = %client.bmc, from = %path, to = %reply.final_path, "system redirected");
                }
                reply.final_path.trim_end_matches('/').to_string()
            }
            None => {
                let systems = root
                    .systems
                    .as_ref()
                    .map(|s| s.id.clone())
                    .unwrap_or_else(|| "/redfish/v1/Systems".into());
                let members = client.get_json::<Collection>(&systems).await?.member_ids();
                match members.as_slice() {
                    [only] => only.trim_end_matches('/').to_string(),
                    [] => {
                        return Err(BmcError::NotFound {
                            bmc: client.bmc.clone(),
                            resource: "systems".into(),
                        });
                    }
                    _ => {
                        return Err(BmcError::AmbiguousSystem {
                            bmc: client.bmc.clone(),
                            systems: members,
                        });
                    }
                }
            }
        };
        let sys: ComputerSystem = client.get_json(&system).await?;
        let reset = sys.actions.as_ref().and_then(|a| a.reset.clone()).unwrap_or_default();
        let reset_target = reset
            .target
            .clone()
            .unwrap_or_else(|| format!("{system}/Actions/ComputerSystem.Reset"));
        let mut reset_types = reset.allowed.clone();
        if reset_types.is_none()
            && let Some(info) = &reset.action_info
        {
            match client.get_json::<ActionInfo>(info).await {
                Ok(info) => {
                    reset_types = info
                        .parameters
                        .into_iter()
                        .flatten()
                        .find(|p| p.name.as_deref() == Some("ResetType"))
                        .and_then(|p| p.allowable_values)
                }
                Err(e) => tracing::debug!(bmc = %client.bmc, error = %e, "reset ActionInfo unreadable"),
            }
        }
        let boot = sys.boot.clone().unwrap_or_default();
        let virtual_media = Self::find_virtual_media(client, &sys).await;
        let mut has_cd = false;
        if let Some(collection) = &virtual_media {
            has_cd = !Self::cd_media(client, collection).await.unwrap_or_default().is_empty();
        }
        Ok(Discovered {
            system,
            reset_target,
            reset_types,
            boot_targets: boot.allowed_targets.clone(),
            has_boot_mode: boot.boot_source_override_mode.is_some() || boot.allowed_modes.is_some(),
            virtual_media,
            has_cd,
        })
    }

    /// VirtualMedia hangs off the System (newer services, sushy-tools) or its Manager (older iDRAC/iLO).
    async fn find_virtual_media(client: &Client, sys: &ComputerSystem) -> Option<String> {
        if let Some(vm) = &sys.virtual_media {
            return Some(vm.id.clone());
        }
        let manager = sys.links.as_ref()?.managed_by.as_ref()?.first()?.id.clone();
        match client.get_json::<Manager>(&manager).await {
            Ok(m) => m.virtual_media.map(|v| v.id),
            Err(e) => {
                tracing::debug!(bmc = %client.bmc, error = %e, "manager unreadable; no virtual media");
                None
            }
        }
    }

    async fn cd_media(client: &Client, collection: &str) -> Result<Vec<(String, VirtualMedia)>, BmcError> {
        let members = client.get_json::<Collection>(collection).await?.member_ids();
        let mut out = Vec::new();
        for member in members {
            let vm: VirtualMedia = client.get_json(&member).await?;
            if vm.is_cd() {
                out.push((member, vm));
            }
        }
        Ok(out)
    }

    /// Deletes the Redfish session, if one was created. The driver stays usable with a fresh login only
    /// through a new `connect`.
    pub async fn close(&self) -> Result<(), BmcError> {
        self.client.logout().await
    }

    /// The System's path on the service, e.g. `/redfish/v1/Systems/<uuid>`.
    pub fn system_path(&self) -> &str {
        &self.found.system
    }

    /// Whether requests authenticate with a Redfish session (else basic authentication).
    pub fn uses_session(&self) -> bool {
        self.client.uses_session()
    }

    fn bmc(&self) -> String {
        self.client.bmc.clone()
    }

    async fn system(&self) -> Result<ComputerSystem, BmcError> {
        self.client.get_json(&self.found.system).await
    }

    async fn raw_power_state(&self) -> Result<String, BmcError> {
        Ok(self.system().await?.power_state.unwrap_or_default())
    }

    /// The first of `preferred` the service allows (all of them when it does not say).
    fn pick_reset(&self, preferred: &[&str]) -> Option<String> {
        match &self.found.reset_types {
            None => preferred.first().map(|s| s.to_string()),
            Some(allowed) => preferred
                .iter()
                .find(|p| allowed.iter().any(|a| a == *p))
                .map(|s| s.to_string()),
        }
    }

    fn allows_reset(&self, reset_type: &str) -> bool {
        self.found
            .reset_types
            .as_ref()
            .is_none_or(|a| a.iter().any(|t| t == reset_type))
    }

    async fn reset(&self, preferred: &[&str]) -> Result<(), BmcError> {
        let reset_type = self.pick_reset(preferred).ok_or_else(|| BmcError::Unsupported {
            bmc: self.bmc(),
            operation: format!("ResetType {}", preferred.join(" or ")),
        })?;
        tracing::debug!(bmc = %self.client.bmc, %reset_type, "ComputerSystem.Reset");
        self.client
            .request(
                Method::POST,
                &self.found.reset_target,
                Some(&json!({"ResetType": reset_type})),
            )
            .await?;
        Ok(())
    }

    /// Polls the power state until it is `want` or `timeout` passes; returns whether it got there.
    async fn wait_for_power(&self, want: PowerState, timeout: std::time::Duration) -> Result<bool, BmcError> {
        let deadline = Instant::now() + timeout;
        loop {
            if map_power(&self.raw_power_state().await?) == want {
                return Ok(true);
            }
            if Instant::now() + self.client.poll_interval() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(self.client.poll_interval()).await;
        }
    }

    async fn eject(&self, path: &str, vm: &VirtualMedia) -> Result<(), BmcError> {
        let target = vm
            .actions
            .as_ref()
            .and_then(|a| a.eject.as_ref())
            .and_then(|t| t.target.clone())
            .unwrap_or_else(|| format!("{path}/Actions/VirtualMedia.EjectMedia"));
        match self.client.request(Method::POST, &target, Some(&json!({}))).await {
            Ok(_) => Ok(()),
            Err(BmcError::NotFound { .. } | BmcError::Unsupported { .. }) => {
                // Services without the action (Redfish < 1.1 VirtualMedia): PATCH the resource instead.
                self.client
                    .request(Method::PATCH, path, Some(&json!({"Image": null, "Inserted": false})))
                    .await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// GETs a resource the BMC may not have: `None` when it answers an error for it (absent, 501, 500, bad
    /// JSON), an error only when the BMC cannot be reached or refuses the credentials.
    async fn optional<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, BmcError> {
        match self.client.get_json::<T>(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) => match e.kind() {
                BmcErrorKind::Unreachable | BmcErrorKind::Auth | BmcErrorKind::InvalidAddress => Err(e),
                BmcErrorKind::Unsupported | BmcErrorKind::Refused | BmcErrorKind::Protocol => {
                    tracing::debug!(bmc = %self.client.bmc, path, error = %e, "inventory: skipped");
                    Ok(None)
                }
            },
        }
    }
}

impl Drop for RedfishBmc {
    fn drop(&mut self) {
        // A session left behind counts against the BMC's small session table (iDRAC locks out at ~8): delete it
        // best-effort if the owner forgot `close`. This is the one detached task in the crate; it ends on its own.
        if let Some((http, url, token)) = self.client.take_session()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            tracing::warn!(bmc = %self.client.bmc, "RedfishBmc dropped without close(): deleting its session");
            runtime.spawn(async move {
                let _ = http.delete(url).header("X-Auth-Token", token.expose()).send().await;
            });
        }
    }
}

fn map_power(state: &str) -> PowerState {
    match state {
        "On" => PowerState::On,
        "Off" => PowerState::Off,
        _ => PowerState::Unknown,
    }
}

fn boot_mode_name(mode: BootMode) -> &'static str {
    match mode {
        BootMode::Uefi => "UEFI",
        BootMode::Legacy => "Legacy",
    }
}

impl Bmc for RedfishBmc {
    type Error = BmcError;

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        Ok(map_power(&self.raw_power_state().await?))
    }

    async fn set_power(&self, action: PowerAction) -> Result<(), BmcError> {
        let state = self.raw_power_state().await?;
        match action {
            PowerAction::On => {
                if state == "On" || state == "PoweringOn" {
                    return Ok(());
                }
                self.reset(&["On", "ForceOn"]).await
            }
            PowerAction::ForceOff => {
                if state == "Off" {
                    return Ok(());
                }
                self.reset(&["ForceOff"]).await
            }
            PowerAction::Off => {
                if state == "Off" {
                    return Ok(());
                }
                if !self.allows_reset("GracefulShutdown") {
                    return self.reset(&["ForceOff"]).await;
                }
                self.reset(&["GracefulShutdown"]).await?;
                let timeout = self.client.opts.graceful_off_timeout;
                if self.wait_for_power(PowerState::Off, timeout).await? {
                    return Ok(());
                }
                tracing::info!(bmc = %self.client.bmc, ?timeout, "graceful shutdown timed out: forcing power off");
                self.reset(&["ForceOff"]).await
            }
            PowerAction::Cycle | PowerAction::Reset => {
                if state == "Off" {
                    return self.reset(&["On", "ForceOn"]).await;
                }
                let preferred: &[&str] = match action {
                    PowerAction::Cycle => &["PowerCycle"],
                    _ => &["ForceRestart", "GracefulRestart", "PowerCycle"],
                };
                if self.pick_reset(preferred).is_some() {
                    return self.reset(preferred).await;
                }
                // No cycle/restart action: force off, wait, power on.
                self.reset(&["ForceOff"]).await?;
                if !self
                    .wait_for_power(PowerState::Off, self.client.opts.task_timeout)
                    .await?
                {
                    return Err(BmcError::Timeout {
                        bmc: self.bmc(),
                        operation: "power off during a power cycle".into(),
                        after: self.client.opts.task_timeout,
                    });
                }
                self.reset(&["On", "ForceOn"]).await
            }
        }
    }

    async fn set_boot(&self, target: BootTarget, persistence: BootPersistence) -> Result<(), BmcError> {
        let (name, mode) = match target {
            BootTarget::Pxe { mode } => ("Pxe", mode),
            BootTarget::UefiHttp => ("UefiHttp", BootMode::Uefi),
            BootTarget::Disk { mode } => ("Hdd", mode),
            BootTarget::VirtualCd { mode } => ("Cd", mode),
        };
        if let Some(allowed) = &self.found.boot_targets
            && !allowed.iter().any(|a| a == name)
        {
            return Err(BmcError::Unsupported {
                bmc: self.bmc(),
                operation: format!("boot from {name}"),
            });
        }
        let enabled = match persistence {
            BootPersistence::Once => "Once",
            BootPersistence::Persistent => "Continuous",
        };
        let (sys, etag) = self.client.get_with_etag::<ComputerSystem>(&self.found.system).await?;
        let current = sys.boot.unwrap_or_default();
        let mode_matches =
            !self.found.has_boot_mode || current.boot_source_override_mode.as_deref() == Some(boot_mode_name(mode));
        if current.boot_source_override_target.as_deref() == Some(name)
            && current.boot_source_override_enabled.as_deref() == Some(enabled)
            && mode_matches
        {
            return Ok(());
        }
        let mut boot = json!({"BootSourceOverrideTarget": name, "BootSourceOverrideEnabled": enabled});
        if self.found.has_boot_mode {
            boot["BootSourceOverrideMode"] = json!(boot_mode_name(mode));
        } else {
            // Without BootSourceOverrideMode the firmware mode is not ours to choose; set the device only.
            tracing::debug!(bmc = %self.client.bmc, ?mode, "the System has no BootSourceOverrideMode: mode not set");
        }
        let body = json!({"Boot": boot});
        match self
            .client
            .request_with(Method::PATCH, &self.found.system, Some(&body), None)
            .await
        {
            Ok(_) => Ok(()),
            // DSP0266 section 13.2.3: the service demands If-Match (428), or our view was stale (412).
            Err(BmcError::Http {
                status: status @ (412 | 428),
                ..
            }) => {
                // 412: our ETag was stale, fetch a fresh one; 428: the one we read will do.
                let etag = match etag.filter(|_| status == 428) {
                    Some(etag) => Some(etag),
                    None => self.client.get_with_etag::<ComputerSystem>(&self.found.system).await?.1,
                };
                let etag = etag.ok_or_else(|| {
                    self.client
                        .protocol("PATCH boot override", "the BMC requires If-Match but sends no ETag")
                })?;
                self.client
                    .request_with(Method::PATCH, &self.found.system, Some(&body), Some(&etag))
                    .await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn insert_media(&self, image_url: &str) -> Result<(), BmcError> {
        let collection = self.found.virtual_media.as_ref().ok_or_else(|| BmcError::Unsupported {
            bmc: self.bmc(),
            operation: "virtual media".into(),
        })?;
        let media = Self::cd_media(&self.client, collection).await?;
        let Some((path, vm)) = media.into_iter().next() else {
            return Err(BmcError::Unsupported {
                bmc: self.bmc(),
                operation: "virtual CD".into(),
            });
        };
        if vm.is_inserted() {
            if vm.image.as_deref() == Some(image_url) {
                return Ok(());
            }
            self.eject(&path, &vm).await?;
        }
        let target = vm
            .actions
            .as_ref()
            .and_then(|a| a.insert.as_ref())
            .and_then(|t| t.target.clone())
            .unwrap_or_else(|| format!("{path}/Actions/VirtualMedia.InsertMedia"));
        let body = json!({"Image": image_url, "Inserted": true, "WriteProtected": true});
        match self.client.request(Method::POST, &target, Some(&body)).await {
            Ok(_) => Ok(()),
            Err(BmcError::NotFound { .. } | BmcError::Unsupported { .. }) => {
                self.client
                    .request(
                        Method::PATCH,
                        &path,
                        Some(&json!({"Image": image_url, "Inserted": true})),
                    )
                    .await?;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    async fn eject_media(&self) -> Result<(), BmcError> {
        let Some(collection) = &self.found.virtual_media else {
            return Ok(());
        };
        let members = self.client.get_json::<Collection>(collection).await?.member_ids();
        for member in members {
            let vm: VirtualMedia = self.client.get_json(&member).await?;
            if vm.is_inserted() {
                self.eject(&member, &vm).await?;
            }
        }
        Ok(())
    }

    async fn inventory(&self) -> Result<Inventory, BmcError> {
        let sys = self.system().await?;
        let mut inv = Inventory {
            manufacturer: sys.manufacturer.clone().filter(|s| !s.is_empty()),
            model: sys.model.clone().filter(|s| !s.is_empty()),
            serial_number: sys.serial_number.clone().filter(|s| !s.is_empty()),
            uuid: sys.uuid.clone().filter(|s| !s.is_empty()),
            processor_count: sys.processor_summary.as_ref().and_then(|p| p.count),
            processor_model: sys.processor_summary.as_ref().and_then(|p| p.model.clone()),
            memory_mib: sys
                .memory_summary
                .as_ref()
                .and_then(|m| m.total_system_memory_gib)
                .map(|gib| (gib * 1024.0).round() as u64),
            disks: Vec::new(),
            nic_macs: Vec::new(),
        };
        // Collections a BMC may lack (sushy's fake driver answers 501 or 500) are skipped; the rest is kept.
        if inv.processor_model.is_none()
            && let Some(link) = &sys.processors
            && let Some(procs) = self.optional::<Collection>(&link.id).await?
        {
            let ids = procs.member_ids();
            if inv.processor_count.is_none() {
                inv.processor_count = Some(ids.len() as u32);
            }
            if let Some(first) = ids.first()
                && let Some(p) = self.optional::<Processor>(first).await?
            {
                inv.processor_model = p.model;
            }
        }
        if let Some(link) = &sys.storage
            && let Some(storages) = self.optional::<Collection>(&link.id).await?
        {
            for storage in storages.member_ids() {
                let Some(s) = self.optional::<Storage>(&storage).await? else {
                    continue;
                };
                for drive in s.drives.into_iter().flatten() {
                    if let Some(d) = self.optional::<Drive>(&drive.id).await? {
                        let name = d.name.or(d.id).unwrap_or_else(|| drive.id.clone());
                        inv.disks.push(BmcDisk {
                            name,
                            size_bytes: d.capacity_bytes,
                        });
                    }
                }
            }
        }
        if inv.disks.is_empty()
            && let Some(link) = &sys.simple_storage
            && let Some(list) = self.optional::<Collection>(&link.id).await?
        {
            for member in list.member_ids() {
                let Some(s) = self.optional::<SimpleStorage>(&member).await? else {
                    continue;
                };
                for (i, dev) in s.devices.into_iter().flatten().enumerate() {
                    let name = dev.name.unwrap_or_else(|| format!("{member}#{i}"));
                    inv.disks.push(BmcDisk {
                        name,
                        size_bytes: dev.capacity_bytes,
                    });
                }
            }
        }
        if let Some(link) = &sys.ethernet_interfaces
            && let Some(nics) = self.optional::<Collection>(&link.id).await?
        {
            for nic in nics.member_ids() {
                if let Some(n) = self.optional::<EthernetInterface>(&nic).await?
                    && let Some(mac) = n.mac_address.or(n.permanent_mac_address).filter(|m| !m.is_empty())
                {
                    inv.nic_macs.push(mac.to_ascii_lowercase());
                }
            }
        }
        Ok(inv)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            virtual_media: self.found.has_cd,
            uefi_http_boot: self
                .found
                .boot_targets
                .as_ref()
                .is_none_or(|t| t.iter().any(|x| x == "UefiHttp")),
            inventory: true,
        }
    }
}
