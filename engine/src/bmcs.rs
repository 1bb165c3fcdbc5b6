//! The executor's seam to BMC drivers: an object-safe [`DynBmc`] over any [`kiln_bmc::Bmc`], and the
//! [`BmcConnector`] the executor asks for a host's BMC. This module owns error classification for the state
//! machine; it must not decide anything about hosts.

use std::sync::Arc;

use async_trait::async_trait;
use kiln_bmc::{Bmc, BootPersistence, BootTarget, Inventory, PowerAction, PowerState};

use crate::machine::BmcFailure;
use crate::model::BmcInfo;
use crate::types::HostName;

/// The calls the executor makes, object-safe, with errors already classified.
#[async_trait]
pub trait DynBmc: Send + Sync {
    async fn power_state(&self) -> Result<PowerState, BmcFailure>;
    async fn set_power(&self, action: PowerAction) -> Result<(), BmcFailure>;
    async fn set_boot(&self, target: BootTarget, persistence: BootPersistence) -> Result<(), BmcFailure>;
    /// What the BMC knows of the hardware (NIC MACs for hosts enrolled without a boot MAC).
    async fn inventory(&self) -> Result<Inventory, BmcFailure>;
    /// Inserts the ISO at `url` as the virtual CD (replacing what is inserted).
    async fn insert_media(&self, url: &str) -> Result<(), BmcFailure>;
    /// Ejects every virtual medium.
    async fn eject_media(&self) -> Result<(), BmcFailure>;
}

/// How a driver error is classified: (transient, credentials refused).
pub type Classify<E> = fn(&E) -> (bool, bool);

/// Wraps a [`Bmc`] driver; `classify` tells transient and authentication failures apart (drivers expose
/// `is_transient()`; pass a function that calls it).
pub struct BmcAdapter<B: Bmc> {
    bmc: B,
    classify: Classify<B::Error>,
}

impl<B: Bmc> BmcAdapter<B> {
    pub fn new(bmc: B, classify: Classify<B::Error>) -> Self {
        Self { bmc, classify }
    }
}

/// The whole error chain as one line (drivers never put credentials in errors; secrets print as `***`).
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

impl<B: Bmc> BmcAdapter<B> {
    fn fail(&self, e: B::Error) -> BmcFailure {
        let (transient, auth) = (self.classify)(&e);
        BmcFailure {
            message: chain(&e),
            transient,
            auth,
        }
    }
}

#[async_trait]
impl<B: Bmc + 'static> DynBmc for BmcAdapter<B> {
    async fn power_state(&self) -> Result<PowerState, BmcFailure> {
        self.bmc.power_state().await.map_err(|e| self.fail(e))
    }
    async fn set_power(&self, action: PowerAction) -> Result<(), BmcFailure> {
        self.bmc.set_power(action).await.map_err(|e| self.fail(e))
    }
    async fn set_boot(&self, target: BootTarget, persistence: BootPersistence) -> Result<(), BmcFailure> {
        self.bmc.set_boot(target, persistence).await.map_err(|e| self.fail(e))
    }
    async fn inventory(&self) -> Result<Inventory, BmcFailure> {
        self.bmc.inventory().await.map_err(|e| self.fail(e))
    }
    async fn insert_media(&self, url: &str) -> Result<(), BmcFailure> {
        self.bmc.insert_media(url).await.map_err(|e| self.fail(e))
    }
    async fn eject_media(&self) -> Result<(), BmcFailure> {
        self.bmc.eject_media().await.map_err(|e| self.fail(e))
    }
}

/// Gives the executor a BMC for a host (the executor caches it per host until the address or username changes).
/// The appliance wires the real drivers (`kiln_bmc::connect`) here; tests wire fakes.
#[async_trait]
pub trait BmcConnector: Send + Sync {
    /// # Errors
    /// A [`BmcFailure`] when the BMC cannot be used (unsupported scheme, unreachable, bad credentials).
    async fn connect(&self, host: &HostName, bmc: &BmcInfo) -> Result<Arc<dyn DynBmc>, BmcFailure>;

    /// Whether hosts with this address may be enrolled (checked by every front end before a host is stored).
    /// `fake://` is accepted only by the simulator ([`crate::sim::SimConnector`]).
    ///
    /// # Errors
    /// Why not, for the user.
    fn accepts(&self, address: &kiln_bmc::BmcAddress) -> Result<(), String> {
        match address {
            kiln_bmc::BmcAddress::Fake(_) => Err(format!(
                "{address} is kiln's simulated BMC: it is accepted only by a kiln started in simulator mode \
                 (kiln serve --simulate), which drives no real hardware"
            )),
            _ => Ok(()),
        }
    }
}

/// A connector that refuses every host: what `kiln serve` uses until real drivers are wired in.
pub struct NoDrivers;

#[async_trait]
impl BmcConnector for NoDrivers {
    async fn connect(&self, _host: &HostName, bmc: &BmcInfo) -> Result<Arc<dyn DynBmc>, BmcFailure> {
        Err(BmcFailure {
            message: format!("no BMC driver is wired into this build for {}", bmc.address.protocol()),
            transient: false,
            auth: false,
        })
    }
}

/// A connector from a plain function (tests, simulators).
pub struct FnConnector<F>(pub F);

#[async_trait]
impl<F> BmcConnector for FnConnector<F>
where
    F: Fn(&HostName, &BmcInfo) -> Result<Arc<dyn DynBmc>, BmcFailure> + Send + Sync,
{
    async fn connect(&self, host: &HostName, bmc: &BmcInfo) -> Result<Arc<dyn DynBmc>, BmcFailure> {
        (self.0)(host, bmc)
    }
}
