//! kiln-pxe: the netboot services (DHCPv4 full and proxy, TFTP, iPXE scripts); asks a `HostLookup`, owns no inventory.

pub mod lookup;
pub mod mac;

pub use lookup::{BootAction, BootEvent, BootHost, BoxFuture, HostLookup, StaticLookup};
pub use mac::{MacAddr, ParseMacError};
