//! kiln-bmc: BMC addresses, the narrow `Bmc` trait and its drivers (Redfish, IPMI over LAN, an in-process fake).
//!
//! This crate owns talking to one BMC; it must not know about hosts, states or the store.
//!
//! Where to start reading:
//! - [`address`]: `BmcAddress`, parsed once from a Metal3-style URL (`redfish://`, `ipmi://`, ...).
//! - [`Bmc`] (below) and [`types`]: the seven operations and their value types.
//! - [`connect`] and [`AnyBmc`]: pick the driver from the address; what the controller calls.
//! - [`redfish`]: DSP0266/DSP0268 on reqwest (sessions or basic auth, ETags, task monitors, retries), with what
//!   real vendors' BMCs need (iDRAC, iLO 4/5, XCC, Supermicro, AMI) decided in one pure module, `redfish::quirks`.
//! - [`ipmi`]: IPMI v2.0 RMCP+ on tokio UDP (RAKP, cipher suites 3 and 17, chassis commands).
//! - [`fake`]: `FakeBmc`, an in-process BMC that misbehaves on request, for other crates' tests.
//! - [`error`]: `BmcError`, with `is_transient()` for retry decisions and `kind()` for exit codes.
//!
//! Every driver paces itself per BMC (one request in flight, a minimum gap; see `throttle`) and never puts a
//! password or session token in a log line or an error.

pub mod address;
mod any;
pub mod config;
pub mod error;
pub mod fake;
pub mod fuzzing;
pub mod ipmi;
pub mod redfish;
mod throttle;
pub mod types;

pub use address::{
    AddressError, AddressPart, BmcAddress, BootMethod, FakeAddress, IpmiAddress, RedfishAddress, RedfishFlavor,
    SUPPORTED_SCHEMES, Transport,
};
pub use any::{AnyBmc, connect};
pub use config::{BmcOptions, Credentials, IpmiPrivilege};
pub use error::{BmcError, BmcErrorKind};
pub use fake::FakeBmc;
pub use ipmi::IpmiBmc;
pub use redfish::RedfishBmc;
pub use types::{
    BmcDisk, BootMode, BootPersistence, BootTarget, Capabilities, Inventory, PowerAction, PowerState, Secret,
};

use std::future::Future;

/// A baseboard management controller: the seven things kiln asks of one.
///
/// Every method is idempotent: asking for the state already in place is `Ok(())`.
pub trait Bmc: Send + Sync {
    /// The error type of this driver; `is_transient` tells the executor whether to retry.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Reads the current power state.
    fn power_state(&self) -> impl Future<Output = Result<PowerState, Self::Error>> + Send;
    /// Performs a power action; completes when the BMC accepted it (not necessarily when the power state changed).
    fn set_power(&self, action: PowerAction) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Sets the device the host boots from next (once) or always (persistent).
    fn set_boot(
        &self,
        target: BootTarget,
        persistence: BootPersistence,
    ) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Inserts a virtual CD from `image_url`.
    fn insert_media(&self, image_url: &str) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Ejects any virtual media.
    fn eject_media(&self) -> impl Future<Output = Result<(), Self::Error>> + Send;
    /// Reads what the BMC knows of the hardware (fields the BMC does not expose are left empty).
    fn inventory(&self) -> impl Future<Output = Result<Inventory, Self::Error>> + Send;
    /// What this BMC can do.
    fn capabilities(&self) -> Capabilities;
}
