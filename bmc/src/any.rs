//! Dispatch without generics: [`AnyBmc`] is whichever driver the address asked for, and [`connect`] makes one.

use crate::Bmc;
use crate::address::BmcAddress;
use crate::config::{BmcOptions, Credentials};
use crate::error::BmcError;
use crate::fake::FakeBmc;
use crate::ipmi::IpmiBmc;
use crate::redfish::RedfishBmc;
use crate::types::{BootPersistence, BootTarget, Capabilities, Inventory, PowerAction, PowerState};
use tracing::Instrument;

/// One BMC, whatever its protocol.
#[derive(Debug)]
pub enum AnyBmc {
    Redfish(RedfishBmc),
    Ipmi(IpmiBmc),
    Fake(FakeBmc),
}

/// Connects to the BMC at `address`: Redfish discovery and login, or an IPMI session.
///
/// # Errors
/// See [`RedfishBmc::connect`] and [`IpmiBmc::connect`].
pub async fn connect(address: &BmcAddress, creds: Credentials, opts: BmcOptions) -> Result<AnyBmc, BmcError> {
    let span = tracing::debug_span!("bmc_connect", bmc = %address);
    async move {
        match address {
            BmcAddress::Redfish(a) => Ok(AnyBmc::Redfish(RedfishBmc::connect(a, creds, opts).await?)),
            BmcAddress::Ipmi(a) => Ok(AnyBmc::Ipmi(IpmiBmc::connect(a, creds, opts).await?)),
            BmcAddress::Fake(a) => Err(BmcError::Unsupported {
                bmc: address.to_string(),
                operation: format!(
                    "connecting to the simulated BMC {:?}: only a kiln started in simulator mode drives fake://                      addresses",
                    a.name
                ),
            }),
        }
    }
    .instrument(span)
    .await
}

impl AnyBmc {
    /// Ends the session with the BMC (Redfish session DELETE, IPMI Close Session). Call before dropping.
    pub async fn close(&self) -> Result<(), BmcError> {
        match self {
            AnyBmc::Redfish(b) => b.close().await,
            AnyBmc::Ipmi(b) => {
                b.close().await;
                Ok(())
            }
            AnyBmc::Fake(_) => Ok(()),
        }
    }

    /// `"redfish"`, `"ipmi"` or `"fake"`.
    pub fn protocol(&self) -> &'static str {
        match self {
            AnyBmc::Redfish(_) => "redfish",
            AnyBmc::Ipmi(_) => "ipmi",
            AnyBmc::Fake(_) => "fake",
        }
    }
}

impl From<FakeBmc> for AnyBmc {
    fn from(fake: FakeBmc) -> Self {
        AnyBmc::Fake(fake)
    }
}

impl Bmc for AnyBmc {
    type Error = BmcError;

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        match self {
            AnyBmc::Redfish(b) => b.power_state().await,
            AnyBmc::Ipmi(b) => b.power_state().await,
            AnyBmc::Fake(b) => b.power_state().await,
        }
    }

    async fn set_power(&self, action: PowerAction) -> Result<(), BmcError> {
        match self {
            AnyBmc::Redfish(b) => b.set_power(action).await,
            AnyBmc::Ipmi(b) => b.set_power(action).await,
            AnyBmc::Fake(b) => b.set_power(action).await,
        }
    }

    async fn set_boot(&self, target: BootTarget, persistence: BootPersistence) -> Result<(), BmcError> {
        match self {
            AnyBmc::Redfish(b) => b.set_boot(target, persistence).await,
            AnyBmc::Ipmi(b) => b.set_boot(target, persistence).await,
            AnyBmc::Fake(b) => b.set_boot(target, persistence).await,
        }
    }

    async fn insert_media(&self, image_url: &str) -> Result<(), BmcError> {
        match self {
            AnyBmc::Redfish(b) => b.insert_media(image_url).await,
            AnyBmc::Ipmi(b) => b.insert_media(image_url).await,
            AnyBmc::Fake(b) => b.insert_media(image_url).await,
        }
    }

    async fn eject_media(&self) -> Result<(), BmcError> {
        match self {
            AnyBmc::Redfish(b) => b.eject_media().await,
            AnyBmc::Ipmi(b) => b.eject_media().await,
            AnyBmc::Fake(b) => b.eject_media().await,
        }
    }

    async fn inventory(&self) -> Result<Inventory, BmcError> {
        match self {
            AnyBmc::Redfish(b) => b.inventory().await,
            AnyBmc::Ipmi(b) => b.inventory().await,
            AnyBmc::Fake(b) => b.inventory().await,
        }
    }

    fn capabilities(&self) -> Capabilities {
        match self {
            AnyBmc::Redfish(b) => b.capabilities(),
            AnyBmc::Ipmi(b) => b.capabilities(),
            AnyBmc::Fake(b) => b.capabilities(),
        }
    }
}
