//! kiln-pxe: the netboot services (DHCPv4 full and proxy, TFTP, iPXE scripts); asks a `HostLookup`, owns no inventory.
//!
//! Start with [`service::spawn`] (DHCP + TFTP tasks) and mount [`http::router`] on the HTTP listener. The DHCP logic
//! is pure in [`dhcp::decide`]; sockets live in [`dhcp::server`].

pub mod clients;
pub mod config;
pub mod counters;
pub mod dhcp;
pub mod error;
pub mod fuzzing;
pub mod http;
pub mod ipxe;
pub mod lookup;
pub mod service;
pub mod tftp;

pub use config::{BootConfig, DhcpConfig, DhcpMode, PxeConfig, SubnetConfig, TftpConfig};
pub use counters::PxeCounters;
pub use error::PxeError;
pub use kiln_types::{MacAddr, ParseMacError};
pub use lookup::{BootAction, BootEvent, BootHost, BoxFuture, HostLookup, StaticLookup};
pub use service::{PxeServices, run, spawn};
