//! Booting the agent by the BMC's virtual media, where no DHCP or PXE reaches the host (Metal3's
//! `redfish-virtualmedia://`, `idrac-virtualmedia://`): for each boot kiln builds one ISO (GRUB for UEFI, the agent
//! kernel and initramfs, and a GRUB configuration holding the kernel command line of that boot: kiln's URL and CA
//! pin, the boot's one agent token, and the host's static network configuration), keeps it in memory on the
//! [`MediaShelf`] under an unguessable name, and the BMC fetches it from kiln's HTTPS listener. The token is taken
//! from the store when the ISO is built, once; the ISO's bytes never change during its boot, because BMCs read it
//! in ranges, more than once. Ejecting (when the boot's job ends) takes it off the shelf.
//!
//! The ISO is built in Rust ([`kiln_images::iso`]) from the files of `kiln ramdisk build`: no tool runs at run time.
//! The shelf is memory only: after a restart of kiln the BMC's next read fails and the boot times out, and the retry
//! builds a new ISO with a new token.

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use kiln_bmc::Secret;
use kiln_images::iso::{Content, IsoBuilder, IsoImage};
use serde_json::Value;

use crate::types::MacAddr;

/// The agent's network configuration on its kernel command line, from a host's preprovisioning network data.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AgentNetwork {
    /// The NIC to configure (the link's `ethernet_mac_address`); `None`: the boot MAC, else the first NIC.
    pub mac: Option<MacAddr>,
    /// Static addresses with their prefix lengths; empty: DHCP.
    pub addresses: Vec<(IpAddr, u8)>,
    pub gateway4: Option<IpAddr>,
    pub gateway6: Option<IpAddr>,
    pub dns: Vec<IpAddr>,
    pub mtu: Option<u32>,
}

impl AgentNetwork {
    /// `kiln.ip=... kiln.gw=... kiln.gw6=... kiln.dns=... kiln.mtu=...` for the ramdisk's `/init` (nothing for
    /// DHCP). `kiln.mac` is left to the caller, which knows the boot MAC.
    pub fn kernel_args(&self) -> Vec<String> {
        let mut args = Vec::new();
        if self.addresses.is_empty() {
            return args;
        }
        let list = |v: &[String]| v.join(",");
        args.push(format!(
            "kiln.ip={}",
            list(
                &self
                    .addresses
                    .iter()
                    .map(|(a, p)| format!("{a}/{p}"))
                    .collect::<Vec<_>>()
            )
        ));
        if let Some(g) = self.gateway4 {
            args.push(format!("kiln.gw={g}"));
        }
        if let Some(g) = self.gateway6 {
            args.push(format!("kiln.gw6={g}"));
        }
        if !self.dns.is_empty() {
            args.push(format!(
                "kiln.dns={}",
                list(&self.dns.iter().map(ToString::to_string).collect::<Vec<_>>())
            ));
        }
        if let Some(m) = self.mtu {
            args.push(format!("kiln.mtu={m}"));
        }
        args
    }
}

fn prefix_of_netmask(mask: &str) -> Result<u8, String> {
    let ip: IpAddr = mask
        .parse()
        .map_err(|_| format!("netmask {mask:?} is not an address"))?;
    let bits: u128 = match ip {
        IpAddr::V4(v) => u128::from(u32::from(v)) << 96,
        IpAddr::V6(v) => u128::from(v),
    };
    let ones = bits.leading_ones();
    if bits.checked_shl(ones).unwrap_or(0) != 0 {
        return Err(format!("netmask {mask:?} is not contiguous"));
    }
    Ok(ones as u8)
}

/// Reads the part of OpenStack `network_data.json` (what Metal3's `preprovisioningNetworkDataName` Secret holds)
/// that the agent ramdisk acts on: one NIC (the link whose `ethernet_mac_address` is `boot_mac`, else the only or
/// first physical link), its `ipv4`/`ipv6` networks (static addresses, a default route) or `ipv4_dhcp`/`ipv6_slaac`
/// (DHCP / router advertisements), and DNS servers (`services` of type `dns`, or a network's `dns_nameservers`).
///
/// # Errors
/// What kiln would otherwise silently not do, named: bonds, VLANs, several NICs with addresses, DHCPv6, routes
/// other than the default one, malformed addresses.
pub fn agent_network(data: &Value, boot_mac: Option<&MacAddr>) -> Result<AgentNetwork, String> {
    let obj = data
        .as_object()
        .ok_or("must be an object (OpenStack network_data.json: links, networks, services)")?;
    for k in obj.keys() {
        if !matches!(k.as_str(), "links" | "networks" | "services") {
            return Err(format!(
                "key {k:?} is not one of links, networks, services (OpenStack network_data.json)"
            ));
        }
    }
    let empty = Vec::new();
    let arr = |k: &str| -> Result<&Vec<Value>, String> {
        match obj.get(k) {
            None | Some(Value::Null) => Ok(&empty),
            Some(Value::Array(a)) => Ok(a),
            Some(_) => Err(format!("{k} must be a list")),
        }
    };
    let (links, networks, services) = (arr("links")?, arr("networks")?, arr("services")?);
    let mut phys = Vec::new();
    for l in links {
        let id = l.get("id").and_then(Value::as_str).ok_or("a link has no id")?;
        let kind = l.get("type").and_then(Value::as_str).unwrap_or("phy");
        match kind {
            "phy" | "ethernet" | "vif" | "ovs" | "tap" | "bridge" | "hw_veb" | "dvs" | "vhostuser" => {}
            other => {
                return Err(format!(
                    "link {id:?} has type {other:?}: kiln's agent ramdisk configures one plain NIC (bonds and VLANs \
                     are not set up before the OS boots); give the ramdisk an untagged NIC"
                ));
            }
        }
        let mac = match l.get("ethernet_mac_address").and_then(Value::as_str) {
            Some(m) => Some(
                m.parse::<MacAddr>()
                    .map_err(|_| format!("link {id:?}: ethernet_mac_address {m:?} is not a MAC address"))?,
            ),
            None => None,
        };
        let mtu = match l.get("mtu") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .filter(|m| (68..=65535).contains(m))
                    .ok_or_else(|| format!("link {id:?}: mtu {v} is not between 68 and 65535"))? as u32,
            ),
        };
        phys.push((id.to_owned(), mac, mtu));
    }
    let with_net: Vec<&(String, Option<MacAddr>, Option<u32>)> = phys
        .iter()
        .filter(|(id, _, _)| {
            networks
                .iter()
                .any(|n| n.get("link").and_then(Value::as_str) == Some(id))
        })
        .collect();
    let by_mac = boot_mac.and_then(|m| with_net.iter().find(|(_, mac, _)| mac.as_ref() == Some(m)).copied());
    let only = match with_net.as_slice() {
        [one] => Some(*one),
        _ => None,
    };
    let chosen = by_mac.or(only);
    let Some((link, mac, mtu)) = chosen else {
        if with_net.is_empty() {
            if networks.is_empty() {
                return Ok(AgentNetwork::default());
            }
            return Err("no network refers to a link of the links list".into());
        }
        return Err(format!(
            "{} links have networks and none has the boot MAC's ethernet_mac_address: kiln cannot tell which NIC \
             the ramdisk should configure",
            with_net.len()
        ));
    };
    let mut net = AgentNetwork {
        mac: *mac,
        mtu: *mtu,
        ..AgentNetwork::default()
    };
    for n in networks {
        let nid = n.get("id").and_then(Value::as_str).unwrap_or("(no id)");
        let on = n.get("link").and_then(Value::as_str);
        if on != Some(link.as_str()) {
            if on.is_some_and(|l| phys.iter().any(|(id, _, _)| id == l)) {
                return Err(format!(
                    "network {nid:?} is on link {:?}, but the ramdisk configures only link {link:?}",
                    on.unwrap_or_default()
                ));
            }
            return Err(format!("network {nid:?} refers to no known link"));
        }
        let kind = n.get("type").and_then(Value::as_str).unwrap_or("");
        match kind {
            "ipv4_dhcp" | "ipv6_slaac" => continue,
            "ipv4" | "ipv6" => {}
            other => {
                return Err(format!(
                    "network {nid:?} has type {other:?}: the ramdisk does ipv4, ipv6 (static), ipv4_dhcp and \
                     ipv6_slaac"
                ));
            }
        }
        let ip = n
            .get("ip_address")
            .and_then(Value::as_str)
            .ok_or_else(|| format!("network {nid:?} has no ip_address"))?;
        let (addr, prefix) = match ip.split_once('/') {
            Some((a, p)) => (
                a,
                Some(p.parse::<u8>().map_err(|_| format!("network {nid:?}: prefix {p:?}"))?),
            ),
            None => (ip, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("network {nid:?}: ip_address {ip:?} is not an address"))?;
        if (kind == "ipv4") != addr.is_ipv4() {
            return Err(format!("network {nid:?}: {ip} is not an {kind} address"));
        }
        let prefix = match (prefix, n.get("netmask").and_then(Value::as_str)) {
            (Some(p), _) => p,
            (None, Some(m)) => prefix_of_netmask(m).map_err(|e| format!("network {nid:?}: {e}"))?,
            (None, None) => return Err(format!("network {nid:?} has neither a netmask nor a /prefix")),
        };
        if prefix > if addr.is_ipv4() { 32 } else { 128 } {
            return Err(format!("network {nid:?}: prefix /{prefix} is too long"));
        }
        net.addresses.push((addr, prefix));
        let mut gateways = Vec::new();
        if let Some(g) = n.get("gateway").and_then(Value::as_str) {
            gateways.push(g.to_owned());
        }
        for r in n.get("routes").and_then(Value::as_array).unwrap_or(&empty) {
            let dest = r.get("network").and_then(Value::as_str).unwrap_or("");
            let mask = r.get("netmask").and_then(Value::as_str).unwrap_or("");
            let default =
                matches!(dest, "0.0.0.0" | "::" | "0.0.0.0/0" | "::/0") && matches!(mask, "" | "0.0.0.0" | "::" | "0");
            if !default {
                return Err(format!(
                    "network {nid:?}: route to {dest}/{mask}: the ramdisk sets only a default route"
                ));
            }
            if let Some(g) = r.get("gateway").and_then(Value::as_str) {
                gateways.push(g.to_owned());
            }
        }
        for g in gateways {
            let g: IpAddr = g
                .parse()
                .map_err(|_| format!("network {nid:?}: gateway {g:?} is not an address"))?;
            let slot = if g.is_ipv4() {
                &mut net.gateway4
            } else {
                &mut net.gateway6
            };
            if slot.is_some_and(|old| old != g) {
                return Err(format!("network {nid:?}: a second default gateway {g}"));
            }
            *slot = Some(g);
        }
        for d in n.get("dns_nameservers").and_then(Value::as_array).unwrap_or(&empty) {
            let d: IpAddr = d
                .as_str()
                .and_then(|s| s.parse().ok())
                .ok_or_else(|| format!("network {nid:?}: DNS server {d} is not an address"))?;
            if !net.dns.contains(&d) {
                net.dns.push(d);
            }
        }
    }
    for s in services {
        if s.get("type").and_then(Value::as_str) == Some("dns") {
            let a = s.get("address").and_then(Value::as_str).unwrap_or("");
            let d: IpAddr = a
                .parse()
                .map_err(|_| format!("DNS service address {a:?} is not an address"))?;
            if !net.dns.contains(&d) {
                net.dns.push(d);
            }
        }
    }
    Ok(net)
}

/// What kiln needs to build the agent's ISO: the files of `kiln ramdisk build` and how the agent reaches kiln.
#[derive(Debug, Clone)]
pub struct AgentMediaConfig {
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    /// The FAT image holding GRUB as `EFI/BOOT/BOOTX64.EFI` (from the ramdisk's `grubx64.efi`).
    pub efi_image: Arc<[u8]>,
    /// GRUB's El Torito image for BIOS hosts (the ramdisk's `grub-eltorito.img`); `None`: the ISO boots UEFI only.
    pub bios_image: Option<Arc<[u8]>>,
    /// Extra kernel arguments (`console=ttyS0`).
    pub cmdline: String,
    /// kiln's API as the agent reaches it, and the pin of kiln's CA (`None`: a site certificate).
    pub api_url: String,
    pub ca_pin: Option<String>,
    /// kiln's HTTPS base as the BMC reaches it; the ISO is at `{media_url}/boot/media/<name>.iso`.
    pub media_url: String,
}

/// One shelved ISO: whose it is, and whether a BMC has read it yet.
#[derive(Debug)]
pub struct Shelved {
    pub host_id: i64,
    pub iso: IsoImage,
    read: std::sync::atomic::AtomicBool,
}

impl Shelved {
    /// `true` the first time only: the first read of the ISO (what the host's events record).
    pub fn first_read(&self) -> bool {
        !self.read.swap(true, std::sync::atomic::Ordering::Relaxed)
    }
}

/// The per-boot ISOs being served, by their unguessable names.
#[derive(Default)]
pub struct MediaShelf {
    isos: Mutex<HashMap<String, Arc<Shelved>>>,
}

impl std::fmt::Debug for MediaShelf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MediaShelf").field("isos", &self.len()).finish()
    }
}

impl MediaShelf {
    /// The ISO named `name` (the file name in its URL without `.iso`).
    pub fn get(&self, name: &str) -> Option<Arc<Shelved>> {
        self.isos.lock().unwrap_or_else(|e| e.into_inner()).get(name).cloned()
    }

    /// Shelves `iso` for host `host_id` instead of any earlier one of that host; returns its name.
    pub fn put(&self, host_id: i64, iso: IsoImage) -> String {
        let name = crate::crypto::random_hex(16);
        let mut isos = self.isos.lock().unwrap_or_else(|e| e.into_inner());
        isos.retain(|_, s| s.host_id != host_id);
        isos.insert(
            name.clone(),
            Arc::new(Shelved {
                host_id,
                iso,
                read: false.into(),
            }),
        );
        name
    }

    /// Takes every ISO of `host_id` off the shelf.
    pub fn remove_host(&self, host_id: i64) {
        self.isos
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|_, s| s.host_id != host_id);
    }

    /// How many ISOs are shelved.
    pub fn len(&self) -> usize {
        self.isos.lock().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Virtual-media boot: the configuration and the shelf.
#[derive(Debug)]
pub struct VirtualMedia {
    pub config: AgentMediaConfig,
    pub shelf: MediaShelf,
}

/// Everything one boot's ISO carries besides the ramdisk.
pub struct BootMedia<'a> {
    pub host: &'a str,
    pub mac: Option<MacAddr>,
    pub token: &'a Secret,
    pub network: &'a AgentNetwork,
}

/// The file the GRUB built by `kiln ramdisk build` looks for (see `kiln_images::ramdisk::GRUB_EARLY_CONFIG`).
pub const GRUB_CFG: &str = "KILN/GRUB.CFG";

impl VirtualMedia {
    pub fn new(config: AgentMediaConfig) -> Self {
        Self {
            config,
            shelf: MediaShelf::default(),
        }
    }

    /// The kernel command line of one boot (contains the token).
    pub fn kernel_args(&self, b: &BootMedia<'_>) -> String {
        let c = &self.config;
        let mut args = Vec::new();
        if !c.cmdline.trim().is_empty() {
            args.push(c.cmdline.trim().to_owned());
        }
        args.push(format!("kiln.api={}", c.api_url));
        if let Some(pin) = &c.ca_pin {
            args.push(format!("kiln.ca={pin}"));
        }
        args.push(format!("kiln.token={}", b.token.expose()));
        if let Some(mac) = b.network.mac.or(b.mac) {
            args.push(format!("kiln.mac={mac}"));
        }
        args.push(format!("kiln.host={}", b.host));
        args.extend(b.network.kernel_args());
        args.join(" ")
    }

    /// Builds the ISO of one boot.
    ///
    /// # Errors
    /// A ramdisk file that cannot be read, or the ISO writer's refusal.
    pub fn build_iso(&self, b: &BootMedia<'_>) -> Result<IsoImage, String> {
        let c = &self.config;
        let len = |p: &PathBuf| {
            std::fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| format!("the agent ramdisk file {}: {e}", p.display()))
        };
        let grub_cfg = format!(
            "set timeout=0\nlinux ($root)/KILN/VMLINUZ {}\ninitrd ($root)/KILN/INITRD\nboot\n",
            self.kernel_args(b)
        );
        let mut iso = IsoBuilder::new("KILN_AGENT");
        if let Some(bios) = &c.bios_image {
            // GRUB's El Torito image: 4 sectors loaded, the boot info table patched in (as grub-mkrescue asks).
            iso = iso
                .file("BOOT/BIOS.IMG", Content::Bytes(bios.clone()))
                .bios_boot("BOOT/BIOS.IMG", 4, true);
        }
        iso.file(
            "KILN/VMLINUZ",
            Content::File {
                path: c.kernel.clone(),
                len: len(&c.kernel)?,
            },
        )
        .file(
            "KILN/INITRD",
            Content::File {
                path: c.initramfs.clone(),
                len: len(&c.initramfs)?,
            },
        )
        .file(GRUB_CFG, Content::Bytes(grub_cfg.into_bytes().into()))
        .file("BOOT/EFI.IMG", Content::Bytes(c.efi_image.clone()))
        .efi_boot("BOOT/EFI.IMG")
        .build()
        .map_err(|e| format!("building the agent ISO: {e}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn mac(s: &str) -> MacAddr {
        s.parse().unwrap()
    }

    #[test]
    fn static_ipv4_and_ipv6_from_metal3_shaped_network_data() {
        // The shape of Metal3's preprovisioning network data examples (and of CAPM3's rendered templates).
        let data = json!({
            "links": [{"id": "enp1s0", "type": "phy", "ethernet_mac_address": "52:54:00:AA:BB:01", "mtu": 1500}],
            "networks": [
                {"id": "provisioning", "link": "enp1s0", "type": "ipv4", "ip_address": "192.168.111.20",
                 "netmask": "255.255.255.0",
                 "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.168.111.1"}]},
                {"id": "v6", "link": "enp1s0", "type": "ipv6", "ip_address": "fd2e:6f44:5dd8::20/64",
                 "gateway": "fd2e:6f44:5dd8::1"}
            ],
            "services": [{"type": "dns", "address": "192.168.111.1"}]
        });
        let n = agent_network(&data, None).unwrap();
        assert_eq!(n.mac, Some(mac("52:54:00:aa:bb:01")));
        assert_eq!(
            n.kernel_args(),
            vec![
                "kiln.ip=192.168.111.20/24,fd2e:6f44:5dd8::20/64",
                "kiln.gw=192.168.111.1",
                "kiln.gw6=fd2e:6f44:5dd8::1",
                "kiln.dns=192.168.111.1",
                "kiln.mtu=1500"
            ]
        );
    }

    #[test]
    fn the_boot_macs_link_is_chosen_among_several() {
        let data = json!({
            "links": [
                {"id": "a", "ethernet_mac_address": "52:54:00:00:00:0a"},
                {"id": "b", "ethernet_mac_address": "52:54:00:00:00:0b"}
            ],
            "networks": [
                {"id": "na", "link": "a", "type": "ipv4_dhcp"},
                {"id": "nb", "link": "b", "type": "ipv4", "ip_address": "10.0.0.2/24"}
            ]
        });
        // Two links with networks: which one is the ramdisk's must be said by the boot MAC.
        let e = agent_network(&data, None).unwrap_err();
        assert!(e.contains("cannot tell which NIC"), "{e}");
        // With the boot MAC on link b, the network on link a is one the ramdisk would not configure: refused.
        let e = agent_network(&data, Some(&mac("52:54:00:00:00:0b"))).unwrap_err();
        assert!(e.contains("\"na\" is on link \"a\""), "{e}");
    }

    #[test]
    fn dhcp_and_empty_data_mean_dhcp() {
        assert!(agent_network(&json!({}), None).unwrap().kernel_args().is_empty());
        let d = json!({"links": [{"id": "e"}], "networks": [{"id": "n", "link": "e", "type": "ipv4_dhcp"}]});
        assert!(agent_network(&d, None).unwrap().kernel_args().is_empty());
    }

    #[test]
    fn what_the_ramdisk_cannot_do_is_refused_by_name() {
        for (data, want) in [
            (
                json!({"links": [{"id": "bond0", "type": "bond"}], "networks": []}),
                "type \"bond\"",
            ),
            (
                json!({"links": [{"id": "v", "type": "vlan"}], "networks": []}),
                "type \"vlan\"",
            ),
            (
                json!({"links": [{"id": "e"}], "networks": [{"id": "n", "link": "e", "type": "ipv6_dhcpv6-stateful"}]}),
                "ipv6_dhcpv6-stateful",
            ),
            (
                json!({"links": [{"id": "e"}], "networks": [{"id": "n", "link": "e", "type": "ipv4", "ip_address": "10.0.0.2", "netmask": "255.0.255.0"}]}),
                "not contiguous",
            ),
            (
                json!({"links": [{"id": "e"}], "networks": [{"id": "n", "link": "e", "type": "ipv4", "ip_address": "10.0.0.2/24",
                    "routes": [{"network": "10.1.0.0", "netmask": "255.255.0.0", "gateway": "10.0.0.1"}]}]}),
                "only a default route",
            ),
            (json!({"links": [], "extra": 1}), "key \"extra\""),
            (
                json!({"links": [{"id": "e"}], "networks": [{"id": "n", "link": "e", "type": "ipv4", "ip_address": "fd00::1/64"}]}),
                "not an ipv4 address",
            ),
        ] {
            let e = agent_network(&data, None).unwrap_err();
            assert!(e.contains(want), "{data}: {e}");
        }
    }

    #[test]
    fn netmasks_become_prefixes() {
        assert_eq!(prefix_of_netmask("255.255.255.0"), Ok(24));
        assert_eq!(prefix_of_netmask("255.255.240.0"), Ok(20));
        assert_eq!(prefix_of_netmask("0.0.0.0"), Ok(0));
        assert_eq!(prefix_of_netmask("ffff:ffff:ffff:ffff::"), Ok(64));
        assert!(prefix_of_netmask("255.0.255.0").is_err());
    }

    #[test]
    fn the_shelf_keeps_one_iso_per_host() {
        let shelf = MediaShelf::default();
        let iso = || {
            IsoBuilder::new("T")
                .file("A", Content::Bytes(b"a".to_vec().into()))
                .build()
                .unwrap()
        };
        let a = shelf.put(1, iso());
        let got = shelf.get(&a).unwrap();
        assert!(got.first_read());
        assert!(!got.first_read(), "only the first read is the first");
        let b = shelf.put(1, iso());
        assert!(shelf.get(&a).is_none(), "a new boot's ISO replaces the old one");
        let c = shelf.put(2, iso());
        shelf.remove_host(1);
        assert!(shelf.get(&b).is_none());
        assert!(shelf.get(&c).is_some());
        assert_eq!(a.len(), 32);
    }
}
