//! Which MAC was last seen at which IPv4 address (filled by DHCP replies), so the TFTP server, which only sees an
//! address, can report per-host events. Bounded: cleared when it grows past [`MAX_CLIENTS`].

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::sync::Mutex;

use crate::MacAddr;

/// Upper bound on remembered addresses.
pub const MAX_CLIENTS: usize = 1 << 16;

/// Address → MAC, most recent DHCP answer wins.
#[derive(Debug, Default)]
pub struct ClientMap(Mutex<HashMap<Ipv4Addr, MacAddr>>);

impl ClientMap {
    /// Remembers that `mac` uses `ip` (ignored for 0.0.0.0).
    pub fn note(&self, ip: Ipv4Addr, mac: MacAddr) {
        if ip.is_unspecified() {
            return;
        }
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= MAX_CLIENTS {
            m.clear();
        }
        m.insert(ip, mac);
    }

    /// The MAC last seen at `ip`.
    pub fn mac_of(&self, ip: Ipv4Addr) -> Option<MacAddr> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).get(&ip).copied()
    }
}
