//! Configuration of the netboot services (serde): the controller embeds [`PxeConfig`] in its own config file.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use url::Url;

use crate::error::PxeError;

/// Everything the netboot services need, with defaults for all but the interface and the HTTP base URL.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PxeConfig {
    /// DHCP server settings.
    #[serde(default)]
    pub dhcp: DhcpConfig,
    /// TFTP server settings.
    #[serde(default)]
    pub tftp: TftpConfig,
    /// Which file each kind of client boots, and where they come from.
    pub boot: BootConfig,
    /// Directory for the lease journal and staged boot files.
    #[serde(default = "default_state_dir")]
    pub state_dir: PathBuf,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/kiln/pxe")
}

/// DHCP mode: `full` leases addresses, `proxy` only adds boot information (PXE spec), `off` runs no DHCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum DhcpMode {
    /// Kiln is the DHCP server of the segment for the hosts it knows.
    Full,
    /// Beside the site's DHCP server: boot information only, ports 67 and 4011.
    #[default]
    Proxy,
    /// No DHCP; the site's DHCP server points at kiln.
    Off,
}

/// DHCP server settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DhcpConfig {
    /// full | proxy | off.
    #[serde(default)]
    pub mode: DhcpMode,
    /// Interface to bind to (`SO_BINDTODEVICE`); required unless mode is off.
    #[serde(default)]
    pub interface: String,
    /// Our address on that interface: server identifier (option 54) and next-server. Default: its first IPv4.
    #[serde(default)]
    pub server_addr: Option<Ipv4Addr>,
    /// Subnets served in full mode: the interface's own and those behind relays (matched on `giaddr`).
    #[serde(default)]
    pub subnets: Vec<SubnetConfig>,
    /// Lease time in seconds (option 51).
    #[serde(default = "default_lease_secs")]
    pub lease_secs: u32,
    /// Answer MACs the `HostLookup` does not know (full mode: from the range, no boot file but the iPXE script URL).
    #[serde(default)]
    pub discovery: bool,
    /// Server port (67; tests and benchmarks may change it).
    #[serde(default = "default_server_port")]
    pub server_port: u16,
    /// Client port replies go to (68).
    #[serde(default = "default_client_port")]
    pub client_port: u16,
}

fn default_lease_secs() -> u32 {
    3600
}
fn default_server_port() -> u16 {
    67
}
fn default_client_port() -> u16 {
    68
}

impl Default for DhcpConfig {
    fn default() -> Self {
        Self {
            mode: DhcpMode::default(),
            interface: String::new(),
            server_addr: None,
            subnets: Vec::new(),
            lease_secs: default_lease_secs(),
            discovery: false,
            server_port: default_server_port(),
            client_port: default_client_port(),
        }
    }
}

/// One subnet served in full mode.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubnetConfig {
    /// Network address.
    pub network: Ipv4Addr,
    /// Prefix length (e.g. 24).
    pub prefix_len: u8,
    /// First address of the dynamic range (inclusive).
    pub range_start: Ipv4Addr,
    /// Last address of the dynamic range (inclusive). Reservations should lie outside the range.
    pub range_end: Ipv4Addr,
    /// Default gateway (option 3).
    #[serde(default)]
    pub router: Option<Ipv4Addr>,
    /// DNS servers (option 6).
    #[serde(default)]
    pub dns: Vec<Ipv4Addr>,
    /// Domain name (option 15).
    #[serde(default)]
    pub domain: Option<String>,
    /// Interface MTU (option 26).
    #[serde(default)]
    pub mtu: Option<u16>,
}

impl SubnetConfig {
    /// The subnet mask.
    pub fn mask(&self) -> Ipv4Addr {
        Ipv4Addr::from(prefix_mask(self.prefix_len))
    }

    /// Whether `ip` is inside this subnet.
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let m = prefix_mask(self.prefix_len);
        u32::from(ip) & m == u32::from(self.network) & m
    }

    /// Whether `ip` is inside the dynamic range.
    pub fn in_range(&self, ip: Ipv4Addr) -> bool {
        (u32::from(self.range_start)..=u32::from(self.range_end)).contains(&u32::from(ip))
    }
}

fn prefix_mask(len: u8) -> u32 {
    if len == 0 {
        0
    } else {
        u32::MAX << (32 - u32::from(len.min(32)))
    }
}

/// TFTP server settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TftpConfig {
    /// Run the TFTP server.
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Port (69).
    #[serde(default = "default_tftp_port")]
    pub port: u16,
}

fn yes() -> bool {
    true
}
fn default_tftp_port() -> u16 {
    69
}

impl Default for TftpConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            port: default_tftp_port(),
        }
    }
}

/// Boot files per client kind, and the HTTP base URL the iPXE scripts and HTTP-boot clients use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BootConfig {
    /// Base URL of kiln's HTTP listener as clients see it, e.g. `http://10.99.0.1:8080/`.
    pub http_base: Url,
    /// Where the iPXE binaries come from (the distribution's `ipxe` package by default). They are copied into
    /// `files_dir` at start-up, so the served tree has no symlinks leaving it.
    #[serde(default = "default_ipxe_dir")]
    pub ipxe_dir: PathBuf,
    /// Directory served by TFTP and by `GET /boot/files/...`; default `<state_dir>/boot`.
    #[serde(default)]
    pub files_dir: Option<PathBuf>,
    /// BIOS PXE clients (option 93 = 0).
    #[serde(default = "default_bios")]
    pub bios: String,
    /// UEFI x86-64 clients (option 93 = 7 or 9): `ipxe.efi` or `snponly.efi`.
    #[serde(default = "default_efi_x64")]
    pub efi_x64: String,
    /// UEFI arm64 clients (option 93 = 11, HTTP 19). Not staged when absent from `ipxe_dir`.
    #[serde(default = "default_efi_arm64")]
    pub efi_arm64: String,
}

fn default_ipxe_dir() -> PathBuf {
    PathBuf::from("/usr/lib/ipxe")
}
fn default_bios() -> String {
    "undionly.kpxe".into()
}
fn default_efi_x64() -> String {
    "ipxe.efi".into()
}
fn default_efi_arm64() -> String {
    "ipxe-arm64.efi".into()
}

impl BootConfig {
    /// A config with every default and the given base URL.
    pub fn with_base(http_base: Url) -> Self {
        Self {
            http_base,
            ipxe_dir: default_ipxe_dir(),
            files_dir: None,
            bios: default_bios(),
            efi_x64: default_efi_x64(),
            efi_arm64: default_efi_arm64(),
        }
    }

    /// URL of a file under `/boot/files/`.
    pub fn file_url(&self, name: &str) -> String {
        format!("{}/boot/files/{name}", self.http_base.as_str().trim_end_matches('/'))
    }

    /// URL of the per-host iPXE script.
    pub fn script_url(&self, mac: crate::MacAddr) -> String {
        format!("{}/boot/{mac}.ipxe", self.http_base.as_str().trim_end_matches('/'))
    }
}

impl PxeConfig {
    /// The directory served by TFTP and `/boot/files/`.
    pub fn files_dir(&self) -> PathBuf {
        self.boot
            .files_dir
            .clone()
            .unwrap_or_else(|| self.state_dir.join("boot"))
    }

    /// Checks what can be checked without touching the system.
    ///
    /// # Errors
    /// [`PxeError::Config`] naming the first problem.
    pub fn validate(&self) -> Result<(), PxeError> {
        let bad = |reason: String| Err(PxeError::Config { reason });
        if self.dhcp.mode != DhcpMode::Off && self.dhcp.interface.is_empty() {
            return bad("dhcp.interface is required unless dhcp.mode is off".into());
        }
        if self.dhcp.mode == DhcpMode::Full && self.dhcp.subnets.is_empty() {
            return bad("dhcp.mode full needs at least one subnet".into());
        }
        for s in &self.dhcp.subnets {
            if s.prefix_len > 30 {
                return bad(format!("subnet {}/{}: prefix too long", s.network, s.prefix_len));
            }
            if !s.contains(s.range_start) || !s.contains(s.range_end) || s.range_start > s.range_end {
                return bad(format!(
                    "subnet {}/{}: range {}-{} is not inside it",
                    s.network, s.prefix_len, s.range_start, s.range_end
                ));
            }
        }
        if self.dhcp.lease_secs < 60 {
            return bad("dhcp.lease_secs must be at least 60".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn subnet() -> SubnetConfig {
        SubnetConfig {
            network: Ipv4Addr::new(10, 99, 0, 0),
            prefix_len: 24,
            range_start: Ipv4Addr::new(10, 99, 0, 100),
            range_end: Ipv4Addr::new(10, 99, 0, 150),
            router: None,
            dns: vec![],
            domain: None,
            mtu: None,
        }
    }

    #[test]
    fn subnet_membership() {
        let s = subnet();
        assert_eq!(s.mask(), Ipv4Addr::new(255, 255, 255, 0));
        assert!(s.contains(Ipv4Addr::new(10, 99, 0, 7)));
        assert!(!s.contains(Ipv4Addr::new(10, 99, 1, 7)));
        assert!(s.in_range(Ipv4Addr::new(10, 99, 0, 150)));
        assert!(!s.in_range(Ipv4Addr::new(10, 99, 0, 151)));
    }

    #[test]
    fn minimal_json_config_takes_defaults_and_validates() {
        let c: PxeConfig = serde_json::from_str(
            r#"{"dhcp":{"mode":"full","interface":"br0","subnets":[{"network":"10.99.0.0","prefix_len":24,
                "range_start":"10.99.0.100","range_end":"10.99.0.150"}]},
                "boot":{"http_base":"http://10.99.0.1:8080"}}"#,
        )
        .unwrap();
        assert_eq!(c.dhcp.lease_secs, 3600);
        assert_eq!(c.boot.bios, "undionly.kpxe");
        c.validate().unwrap();
        let mut bad = c.clone();
        bad.dhcp.subnets[0].range_end = Ipv4Addr::new(10, 98, 0, 1);
        assert!(bad.validate().is_err());
        assert_eq!(c.boot.file_url("ipxe.efi"), "http://10.99.0.1:8080/boot/files/ipxe.efi");
    }
}
