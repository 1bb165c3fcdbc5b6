//! The `HostLookup` contract: what the boot servers ask about a MAC, and the events they report back.
//!
//! The DHCP, TFTP and HTTP boot code owns no inventory (Tinkerbell's `BackendReader` shape): it asks a `HostLookup`
//! what a MAC should get and tells it what happened so the controller can record per-phase timing. The trait is
//! dyn-compatible (`Arc<dyn HostLookup>`) by returning boxed futures.

use std::collections::HashMap;
use std::future::Future;
use std::net::Ipv4Addr;
use std::pin::Pin;
use std::sync::Mutex;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::MacAddr;

/// A boxed `Send` future, so [`HostLookup`] can be used as `Arc<dyn HostLookup>`.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// What the netboot services should do for one MAC, as the controller sees it right now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BootHost {
    /// The address reserved for this MAC (full mode hands out exactly this one); `None` = take one from the range.
    pub ipv4: Option<Ipv4Addr>,
    /// Host name, sent as DHCP option 12 and shown in the iPXE script.
    pub hostname: Option<String>,
    /// What the per-host iPXE script does.
    pub action: BootAction,
}

/// What the per-host iPXE script does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum BootAction {
    /// Boot the kiln agent ramdisk. `cmdline` carries the API URL and the one-time boot token.
    Agent {
        /// URL of the kernel (`vmlinuz`).
        kernel_url: Url,
        /// URL of the initramfs.
        initrd_url: Url,
        /// Kernel command line, without the `initrd=` argument (the renderer adds it).
        cmdline: String,
    },
    /// Boot from the first local disk (a chain that works where iPXE's `exit` hangs).
    LocalDisk,
    /// Do not netboot: DHCP (full mode) still leases the host its address but offers no boot file; proxy mode stays
    /// silent; the script endpoint answers 404, so the firmware falls through to its next boot device.
    Nothing,
}

/// A phase of a netboot that the services report, so the controller can time each one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum BootEvent {
    /// A DHCPDISCOVER (or proxyDHCP request) from a MAC `HostLookup` did not know; the controller may enroll it.
    UnknownMacSeen {
        /// Client system architecture (RFC 4578 option 93), if sent.
        arch: Option<u16>,
    },
    /// A DHCPOFFER went out (full mode: with `ip`; proxy mode: `ip` is `None`).
    DhcpOfferSent {
        /// Offered address, if any.
        ip: Option<Ipv4Addr>,
        /// Boot file or URL in the offer, if any.
        boot_file: Option<String>,
    },
    /// A DHCPACK went out.
    DhcpAckSent {
        /// Acknowledged address, if any (proxy mode: none).
        ip: Option<Ipv4Addr>,
        /// Boot file or URL in the ack, if any.
        boot_file: Option<String>,
    },
    /// A DHCPRELEASE was received.
    DhcpReleased {
        /// Released address.
        ip: Ipv4Addr,
    },
    /// A TFTP read of a boot file started (from the client's address the MAC is resolved via the lease table).
    TftpFileServed {
        /// Path requested.
        path: String,
    },
    /// The per-host iPXE script was fetched.
    IpxeScriptFetched {
        /// Which script was rendered: `agent`, `local_disk`.
        action: String,
    },
}

/// The backend the boot servers ask. Implemented by the controller's store; [`StaticLookup`] for tests and labs.
pub trait HostLookup: Send + Sync + 'static {
    /// What to do for `mac`; `None` = unknown host (full mode ignores it unless discovery is on; proxy ignores it).
    fn lookup(&self, mac: MacAddr) -> BoxFuture<'_, Option<BootHost>>;

    /// What the iPXE script for `mac` carries: like [`HostLookup::lookup`], but this is the one call that may hand
    /// out a one-time secret for the boot (the appliance's agent token). Defaults to `lookup`.
    fn script_host(&self, mac: MacAddr) -> BoxFuture<'_, Option<BootHost>> {
        self.lookup(mac)
    }

    /// Reports a netboot phase for `mac`. Must not block for long: it is awaited on the DHCP path.
    fn record(&self, mac: MacAddr, event: BootEvent) -> BoxFuture<'_, ()>;
}

/// An in-memory [`HostLookup`]: a map of MAC to [`BootHost`], recording every event it is told.
#[derive(Debug, Default)]
pub struct StaticLookup {
    hosts: Mutex<HashMap<MacAddr, BootHost>>,
    events: Mutex<Vec<(MacAddr, BootEvent)>>,
}

impl StaticLookup {
    /// An empty lookup (every MAC unknown).
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces the entry for `mac`.
    pub fn insert(&self, mac: MacAddr, host: BootHost) {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).insert(mac, host);
    }

    /// Removes the entry for `mac`.
    pub fn remove(&self, mac: MacAddr) -> Option<BootHost> {
        self.hosts.lock().unwrap_or_else(|e| e.into_inner()).remove(&mac)
    }

    /// Every event recorded so far, oldest first.
    pub fn events(&self) -> Vec<(MacAddr, BootEvent)> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

impl HostLookup for StaticLookup {
    fn lookup(&self, mac: MacAddr) -> BoxFuture<'_, Option<BootHost>> {
        let found = self.hosts.lock().unwrap_or_else(|e| e.into_inner()).get(&mac).cloned();
        Box::pin(std::future::ready(found))
    }

    fn record(&self, mac: MacAddr, event: BootEvent) -> BoxFuture<'_, ()> {
        self.events.lock().unwrap_or_else(|e| e.into_inner()).push((mac, event));
        Box::pin(std::future::ready(()))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test]
    async fn static_lookup_answers_and_records() {
        let l: Arc<dyn HostLookup> = Arc::new(StaticLookup::new());
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        assert_eq!(l.lookup(mac).await, None);
        l.record(mac, BootEvent::UnknownMacSeen { arch: Some(7) }).await;
    }

    #[test]
    fn boot_host_serde_shape() {
        let h = BootHost {
            ipv4: Some(Ipv4Addr::new(10, 0, 0, 5)),
            hostname: Some("n1".into()),
            action: BootAction::Agent {
                kernel_url: "http://10.0.0.1:8080/boot/files/vmlinuz".parse().unwrap(),
                initrd_url: "http://10.0.0.1:8080/boot/files/initramfs".parse().unwrap(),
                cmdline: "console=ttyS0".into(),
            },
        };
        let j = serde_json::to_value(&h).unwrap();
        assert_eq!(j["action"]["kind"], "agent");
        assert_eq!(serde_json::from_value::<BootHost>(j).unwrap(), h);
    }
}
