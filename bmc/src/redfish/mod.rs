//! The Redfish driver (DMTF DSP0266 protocol, DSP0268 schemas): one ComputerSystem behind one Redfish service.
//! It maps kiln's narrow [`Bmc`] operations onto Systems, Managers, VirtualMedia and the Reset action; the HTTP
//! mechanics (auth, pacing, retries, ETags, task monitors) live in `client`, what real vendors' BMCs accept in
//! `quirks` (pure), and each operation in its own file: `discover`, `power`, `boot`, `media`, `inventory`.

mod boot;
mod client;
mod discover;
mod inventory;
mod media;
pub mod model;
mod power;
mod quirks;

pub use self::client::path_on_origin;

use std::sync::Mutex;

use self::client::Client;
use self::discover::Discovered;
use self::model::{ComputerSystem, ServiceRoot};
use crate::Bmc;
use crate::address::RedfishAddress;
use crate::config::{BmcOptions, Credentials};
use crate::error::BmcError;
use crate::types::{BootPersistence, BootTarget, Capabilities, Inventory, PowerAction, PowerState};

/// A Redfish BMC with its System resolved. Call [`RedfishBmc::close`] when done, to delete the session.
#[derive(Debug)]
pub struct RedfishBmc {
    client: Client,
    found: Discovered,
    /// A persistent boot override the BMC cannot keep (no `Continuous`): set again, once, before every power on.
    emulated_persistent: Mutex<Option<boot::Override>>,
}

impl RedfishBmc {
    /// Discovers the service root, logs in (session, or basic auth when the service has no SessionService) and
    /// resolves the System: the one in the address (following a redirect, and ignoring case when the BMC does not),
    /// or the only one on the service.
    ///
    /// # Errors
    /// `AuthFailed` for wrong credentials, `Busy` when the session table stayed full for `busy_timeout`,
    /// `NotFound` for a System that does not exist, `AmbiguousSystem` when the address names none and the
    /// service has several, and transport errors.
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
        match discover::discover(&client, address, &root).await {
            Ok(found) => Ok(Self {
                client,
                found,
                emulated_persistent: Mutex::new(None),
            }),
            Err(e) => {
                // Do not leak the session we just created.
                let _ = client.logout().await;
                Err(e)
            }
        }
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

    async fn read_power(&self) -> Result<PowerState, BmcError> {
        Ok(quirks::power_state(
            self.system().await?.power_state.as_deref().unwrap_or_default(),
        ))
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

impl Bmc for RedfishBmc {
    type Error = BmcError;

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        self.read_power().await
    }

    async fn set_power(&self, action: PowerAction) -> Result<(), BmcError> {
        self.power(action).await
    }

    async fn set_boot(&self, target: BootTarget, persistence: BootPersistence) -> Result<(), BmcError> {
        self.boot(target, persistence).await
    }

    async fn insert_media(&self, image_url: &str) -> Result<(), BmcError> {
        self.insert(image_url).await
    }

    async fn eject_media(&self) -> Result<(), BmcError> {
        self.eject_all().await
    }

    async fn inventory(&self) -> Result<Inventory, BmcError> {
        self.read_inventory().await
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            virtual_media: self.found.has_cd,
            // Claimed only where the System offers it, or does not say (a plain BootSourceOverrideSupported list
            // without UefiHttp, as iLO 4 sends, is a no).
            uefi_http_boot: self
                .found
                .boot_targets
                .as_ref()
                .is_none_or(|t| t.iter().any(|x| x == "UefiHttp")),
            inventory: true,
        }
    }
}
