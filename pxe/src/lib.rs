//! kiln-pxe: the netboot services (DHCPv4 full and proxy, TFTP, iPXE scripts); asks a `HostLookup`, owns no inventory.

pub mod config;
pub mod dhcp;
pub mod error;
pub mod lookup;
pub mod mac;

pub use config::{BootConfig, DhcpConfig, DhcpMode, PxeConfig, SubnetConfig, TftpConfig};
pub use dhcp::DhcpCounters;
pub use error::PxeError;
pub use lookup::{BootAction, BootEvent, BootHost, BoxFuture, HostLookup, StaticLookup};
pub use mac::{MacAddr, ParseMacError};
