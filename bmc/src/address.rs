//! BMC addresses: parses Metal3-style BMC URLs once into a typed [`BmcAddress`]; knows nothing of how to talk to one.
//!
//! Accepted forms (every form baremetal-operator's `pkg/hardwareutils/bmc` parser accepts for a protocol kiln
//! speaks):
//! - Redfish, HTTPS unless `+http` is given: `redfish://`, `redfish-virtualmedia://`, `redfish-uefihttp://`,
//!   `idrac-redfish://`, `idrac-virtualmedia://`, `ilo5-redfish://`, `ilo5-virtualmedia://`, each also with
//!   `+http` / `+https`; followed by `host[:port]` and optionally the System's path (any path, used as the System's
//!   URI as Ironic uses `redfish_system_id`; none, `/` or `/redfish/v1` means "the service's only System").
//! - IPMI: `ipmi://host[:port]`, `ipmi:host[:port]`, or a bare `host`, `host:port`, `[v6]:port` (as in Metal3);
//!   port 623 by default; `?privilegelevel=OPERATOR|ADMINISTRATOR` as Metal3 passes it to Ironic.
//!
//! Schemes Metal3 knows whose protocol kiln does not speak (`libvirt`, `idrac` (WS-Man), `ilo4`, `ilo5`, `irmc`,
//! `ibmc`, ...) are refused with the form to use instead. The scheme also says how the operator wants the host
//! booted ([`BootMethod`]); the host's state machine decides whether it can.
//!
//! Hosts are DNS names, IPv4 literals or bracketed IPv6 literals (`[fd00::1]:8000`). Credentials never belong in
//! the address: `user:pass@` is rejected and the error does not repeat it.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::config::IpmiPrivilege;

/// The default UDP port of IPMI over LAN (RMCP, IPMI v2.0 section 13.1).
pub const IPMI_DEFAULT_PORT: u16 = 623;

/// A parsed BMC address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BmcAddress {
    Redfish(RedfishAddress),
    Ipmi(IpmiAddress),
    /// `fake://<name>`: a simulated BMC ([`crate::FakeBmc`]), driven only by a kiln started in simulator mode (like
    /// Ironic's `fake-hardware`); nothing real is powered or booted.
    Fake(FakeAddress),
}

/// The name of a simulated BMC: letters, digits, `.`, `_` and `-`.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FakeAddress {
    pub name: String,
}

/// Which Metal3 Redfish scheme an address used; all of them are driven by the same Redfish driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedfishFlavor {
    /// `redfish://`
    Redfish,
    /// `redfish-virtualmedia://`: the operator intends to boot from virtual media.
    VirtualMedia,
    /// `redfish-uefihttp://`: the operator intends UEFI HTTP boot.
    UefiHttp,
    /// `idrac-redfish://`
    IdracRedfish,
    /// `idrac-virtualmedia://`
    IdracVirtualMedia,
    /// `ilo5-redfish://`
    Ilo5Redfish,
    /// `ilo5-virtualmedia://`
    Ilo5VirtualMedia,
}

/// How the operator asked for the host to be booted into kiln's agent, as the address scheme says (Metal3 picks
/// Ironic's boot interface the same way).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum BootMethod {
    /// Network boot by PXE/iPXE (`redfish://`, `idrac-redfish://`, `ilo5-redfish://`, `ipmi://`).
    Pxe,
    /// The agent's ISO inserted as virtual media (`*-virtualmedia://`).
    VirtualMedia,
    /// UEFI HTTP boot (`redfish-uefihttp://`).
    UefiHttp,
}

impl fmt::Display for BootMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            BootMethod::Pxe => "pxe",
            BootMethod::VirtualMedia => "virtual-media",
            BootMethod::UefiHttp => "uefi-http",
        })
    }
}

impl RedfishFlavor {
    const ALL: [RedfishFlavor; 7] = [
        RedfishFlavor::Redfish,
        RedfishFlavor::VirtualMedia,
        RedfishFlavor::UefiHttp,
        RedfishFlavor::IdracRedfish,
        RedfishFlavor::IdracVirtualMedia,
        RedfishFlavor::Ilo5Redfish,
        RedfishFlavor::Ilo5VirtualMedia,
    ];

    fn base_scheme(self) -> &'static str {
        match self {
            RedfishFlavor::Redfish => "redfish",
            RedfishFlavor::VirtualMedia => "redfish-virtualmedia",
            RedfishFlavor::UefiHttp => "redfish-uefihttp",
            RedfishFlavor::IdracRedfish => "idrac-redfish",
            RedfishFlavor::IdracVirtualMedia => "idrac-virtualmedia",
            RedfishFlavor::Ilo5Redfish => "ilo5-redfish",
            RedfishFlavor::Ilo5VirtualMedia => "ilo5-virtualmedia",
        }
    }

    /// How the scheme asks for the host to be booted.
    pub fn boot_method(self) -> BootMethod {
        match self {
            RedfishFlavor::Redfish | RedfishFlavor::IdracRedfish | RedfishFlavor::Ilo5Redfish => BootMethod::Pxe,
            RedfishFlavor::VirtualMedia | RedfishFlavor::IdracVirtualMedia | RedfishFlavor::Ilo5VirtualMedia => {
                BootMethod::VirtualMedia
            }
            RedfishFlavor::UefiHttp => BootMethod::UefiHttp,
        }
    }

    /// Whether the address asks for virtual-media boot (`*-virtualmedia`).
    pub fn wants_virtual_media(self) -> bool {
        self.boot_method() == BootMethod::VirtualMedia
    }
}

/// HTTP or HTTPS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    Http,
    Https,
}

/// A Redfish service and optionally one System on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RedfishAddress {
    pub flavor: RedfishFlavor,
    pub transport: Transport,
    /// Whether the scheme spelled the transport out (`redfish+https://`), kept so that `Display` round-trips.
    explicit_transport: bool,
    pub host: String,
    pub port: Option<u16>,
    /// The System's path as written (e.g. `/redfish/v1/Systems/1`), or `None` when the service is expected to have
    /// exactly one System.
    pub system_path: Option<String>,
}

impl RedfishAddress {
    /// `https://host:port` (no trailing slash), the origin all Redfish paths hang off.
    pub fn origin(&self) -> String {
        let scheme = match self.transport {
            Transport::Http => "http",
            Transport::Https => "https",
        };
        match self.port {
            Some(port) => format!("{scheme}://{}:{port}", self.host),
            None => format!("{scheme}://{}", self.host),
        }
    }

    /// `host[:port]`, for messages and per-BMC bookkeeping.
    pub fn endpoint(&self) -> String {
        match self.port {
            Some(port) => format!("{}:{port}", self.host),
            None => self.host.clone(),
        }
    }

    fn scheme(&self) -> String {
        let base = self.flavor.base_scheme();
        match (self.explicit_transport, self.transport) {
            (false, _) => base.to_string(),
            (true, Transport::Http) => format!("{base}+http"),
            (true, Transport::Https) => format!("{base}+https"),
        }
    }
}

/// An IPMI-over-LAN BMC.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IpmiAddress {
    pub host: String,
    pub port: u16,
    /// `?privilegelevel=` of the address: the session privilege to request instead of the configured default.
    pub privilege: Option<IpmiPrivilege>,
}

impl IpmiAddress {
    /// An address on the default privilege.
    pub fn new(host: impl Into<String>, port: u16) -> Self {
        Self {
            host: host.into(),
            port,
            privilege: None,
        }
    }

    /// `host:port`; IPv6 hosts keep their brackets, so this is also what `lookup_host` accepts.
    pub fn endpoint(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

impl BmcAddress {
    /// `host[:port]`: names the BMC in messages without the scheme or path.
    pub fn endpoint(&self) -> String {
        match self {
            BmcAddress::Redfish(a) => a.endpoint(),
            BmcAddress::Ipmi(a) => a.endpoint(),
            BmcAddress::Fake(a) => a.name.clone(),
        }
    }

    /// `"redfish"`, `"ipmi"` or `"fake"`.
    pub fn protocol(&self) -> &'static str {
        match self {
            BmcAddress::Redfish(_) => "redfish",
            BmcAddress::Ipmi(_) => "ipmi",
            BmcAddress::Fake(_) => "fake",
        }
    }

    /// How the address's scheme asks for the host to be booted.
    pub fn boot_method(&self) -> BootMethod {
        match self {
            BmcAddress::Redfish(a) => a.flavor.boot_method(),
            BmcAddress::Ipmi(_) | BmcAddress::Fake(_) => BootMethod::Pxe,
        }
    }

    /// What names one machine: the protocol, endpoint and System (two hosts with the same identity would drive the
    /// same machine). Host names compare case-insensitively; the scheme flavour and transport do not matter.
    pub fn identity(&self) -> String {
        match self {
            BmcAddress::Redfish(a) => format!(
                "redfish|{}|{}",
                a.endpoint().to_ascii_lowercase(),
                a.system_path.as_deref().unwrap_or("")
            ),
            BmcAddress::Ipmi(a) => format!("ipmi|{}", a.endpoint().to_ascii_lowercase()),
            BmcAddress::Fake(a) => format!("fake|{}", a.name.to_ascii_lowercase()),
        }
    }
}

/// The part of a BMC address that is wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddressPart {
    Scheme,
    Credentials,
    Host,
    Port,
    Path,
    Query,
}

impl fmt::Display for AddressPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AddressPart::Scheme => "scheme",
            AddressPart::Credentials => "credentials",
            AddressPart::Host => "host",
            AddressPart::Port => "port",
            AddressPart::Path => "path",
            AddressPart::Query => "query or fragment",
        })
    }
}

/// A BMC address that does not parse. `address` is the input with any `user:pass@` part masked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid BMC address {address:?}: bad {part}: {reason}")]
pub struct AddressError {
    pub address: String,
    pub part: AddressPart,
    pub reason: String,
}

/// Every scheme kiln accepts, for messages.
pub const SUPPORTED_SCHEMES: &str = "redfish, redfish-virtualmedia, redfish-uefihttp, idrac-redfish, \
     idrac-virtualmedia, ilo5-redfish, ilo5-virtualmedia (each also +http or +https), ipmi, or a bare host[:port] \
     for IPMI";

/// Metal3 schemes for protocols kiln does not speak, and what to use instead.
fn unsupported_scheme_hint(base: &str) -> Option<&'static str> {
    Some(match base {
        "libvirt" => {
            "libvirt:// drives VMs through virtualbmc's IPMI; use ipmi://host:port of the virtualbmc, or \
                      redfish+http:// of sushy-tools"
        }
        "idrac" => {
            "idrac:// is Dell's WS-Man interface, which kiln does not speak; use idrac-redfish://host (or \
                    idrac-virtualmedia://host)"
        }
        "ilo4" | "ilo4-virtualmedia" => {
            "iLO 4 is driven through proliantutils in Ironic; kiln speaks Redfish: use \
                                         redfish://host (iLO 4 firmware 2.30 or later serves Redfish)"
        }
        "ilo5" => "ilo5:// is the proliantutils iLO 5 driver; kiln speaks Redfish: use ilo5-redfish://host",
        "irmc" | "irmc-virtualmedia" => {
            "Fujitsu iRMC's own interface is not spoken by kiln; use redfish://host (iRMC \
                                         S5 serves Redfish) or ipmi://host"
        }
        "ibmc" => "Huawei iBMC's own interface is not spoken by kiln; use redfish://host or ipmi://host",
        _ => return None,
    })
}

/// Replaces a `userinfo@` part, if any, so that errors never echo a password.
fn masked(input: &str) -> String {
    let (prefix, rest) = match input.find("://") {
        Some(i) => (&input[..i + 3], &input[i + 3..]),
        None => ("", input),
    };
    let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{prefix}***@{}", &rest[at + 1..]),
        None => input.to_string(),
    }
}

/// Splits `scheme://rest`, `ipmi:rest` (Metal3's opaque form) or a bare host (IPMI).
fn split_scheme(trimmed: &str) -> (String, &str) {
    if let Some((scheme, rest)) = trimmed.split_once("://") {
        return (scheme.to_ascii_lowercase(), rest);
    }
    // `ipmi:host[:port]`: a scheme without `//`. A bare `host:port` has a port (digits) after its only colon, and a
    // bare `[v6]:port` starts with a bracket, so neither is mistaken for a scheme.
    if let Some((scheme, rest)) = trimmed.split_once(':')
        && !scheme.is_empty()
        && !scheme.starts_with('[')
        && !rest.is_empty()
        && !rest.bytes().all(|b| b.is_ascii_digit())
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.'))
        && scheme.bytes().any(|b| b.is_ascii_alphabetic())
        && !scheme.contains('.')
    {
        return (scheme.to_ascii_lowercase(), rest);
    }
    ("ipmi".to_string(), trimmed)
}

fn parse_privilege(query: &str) -> Result<Option<IpmiPrivilege>, String> {
    let mut privilege = None;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if !k.eq_ignore_ascii_case("privilegelevel") {
            return Err(format!(
                "kiln does not act on the IPMI option {k:?}; the only one it takes is privilegelevel"
            ));
        }
        privilege = Some(match v.to_ascii_uppercase().as_str() {
            "ADMINISTRATOR" => IpmiPrivilege::Administrator,
            "OPERATOR" => IpmiPrivilege::Operator,
            "USER" | "CALLBACK" => {
                return Err(format!(
                    "privilegelevel={v} cannot control power or boot devices; use OPERATOR or ADMINISTRATOR"
                ));
            }
            _ => return Err(format!("privilegelevel={v:?} is not OPERATOR or ADMINISTRATOR")),
        });
    }
    Ok(privilege)
}

impl FromStr for BmcAddress {
    type Err = AddressError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let err = |part, reason: &str| AddressError {
            address: masked(input),
            part,
            reason: reason.to_string(),
        };
        let trimmed = input.trim();
        if trimmed.is_empty() {
            return Err(err(AddressPart::Host, "the address is empty"));
        }
        let (scheme, rest) = split_scheme(trimmed);
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (path, query) = match tail.find(['?', '#']) {
            Some(i) => (&tail[..i], Some(&tail[i..])),
            None => (tail, None),
        };
        if authority.contains('@') {
            return Err(err(
                AddressPart::Credentials,
                "credentials do not belong in the address; pass them separately",
            ));
        }
        let (base, transport) = match scheme.split_once('+') {
            Some((base, "http")) => (base, Some(Transport::Http)),
            Some((base, "https")) => (base, Some(Transport::Https)),
            Some(_) => {
                return Err(err(
                    AddressPart::Scheme,
                    &format!("unknown transport in {scheme:?}; use +http or +https"),
                ));
            }
            None => (scheme.as_str(), None),
        };
        if let Some(hint) = unsupported_scheme_hint(base) {
            return Err(err(
                AddressPart::Scheme,
                &format!("kiln does not support the scheme {scheme:?}: {hint}"),
            ));
        }
        if base == "fake" && transport.is_none() {
            if !(path.is_empty() && query.is_none()) {
                return Err(err(AddressPart::Path, "a fake:// address is only a name"));
            }
            if authority.is_empty()
                || !authority
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
            {
                return Err(err(
                    AddressPart::Host,
                    "a fake:// name is letters, digits, '.', '_' and '-'",
                ));
            }
            return Ok(BmcAddress::Fake(FakeAddress {
                name: authority.to_string(),
            }));
        }
        let (host, port) = split_host_port(authority).map_err(|(part, reason)| err(part, &reason))?;
        if base == "ipmi" && transport.is_none() {
            if !(path.is_empty() || path == "/") {
                return Err(err(AddressPart::Path, "an IPMI address has no path"));
            }
            let privilege = match query {
                None => None,
                Some(q) => match q.strip_prefix('?') {
                    Some(q) => parse_privilege(q).map_err(|reason| err(AddressPart::Query, &reason))?,
                    None => return Err(err(AddressPart::Query, "a BMC address has no fragment")),
                },
            };
            return Ok(BmcAddress::Ipmi(IpmiAddress {
                host,
                port: port.unwrap_or(IPMI_DEFAULT_PORT),
                privilege,
            }));
        }
        let Some(flavor) = RedfishFlavor::ALL.into_iter().find(|f| f.base_scheme() == base) else {
            return Err(err(
                AddressPart::Scheme,
                &format!("unsupported scheme {scheme:?}; supported: {SUPPORTED_SCHEMES}"),
            ));
        };
        if query.is_some() {
            return Err(err(
                AddressPart::Query,
                "a Redfish address has no query or fragment; kiln would not act on it",
            ));
        }
        let system_path = parse_system_path(path).map_err(|reason| err(AddressPart::Path, &reason))?;
        Ok(BmcAddress::Redfish(RedfishAddress {
            flavor,
            transport: transport.unwrap_or(Transport::Https),
            explicit_transport: transport.is_some(),
            host,
            port,
            system_path,
        }))
    }
}

/// Splits `host[:port]` / `[v6][:port]`; returns the host as written (IPv6 with brackets).
fn split_host_port(authority: &str) -> Result<(String, Option<u16>), (AddressPart, String)> {
    if authority.is_empty() {
        return Err((AddressPart::Host, "the host is missing".to_string()));
    }
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let Some(close) = rest.find(']') else {
            return Err((AddressPart::Host, "an IPv6 literal lacks its closing ']'".to_string()));
        };
        let literal = &rest[..close];
        if literal.parse::<Ipv6Addr>().is_err() {
            return Err((AddressPart::Host, format!("{literal:?} is not an IPv6 address")));
        }
        let after = &rest[close + 1..];
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(port) => Some(port),
                None => {
                    return Err((
                        AddressPart::Host,
                        format!("unexpected {after:?} after the IPv6 literal"),
                    ));
                }
            },
        };
        (format!("[{literal}]"), port)
    } else if authority.matches(':').count() > 1 {
        return Err((
            AddressPart::Host,
            "IPv6 literals must be written in brackets, e.g. [fd00::1]:623".to_string(),
        ));
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (host.to_string(), Some(port)),
            None => (authority.to_string(), None),
        }
    };
    if !host.starts_with('[') {
        if host.is_empty() {
            return Err((AddressPart::Host, "the host is missing".to_string()));
        }
        if let Some(bad) = host
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
        {
            return Err((AddressPart::Host, format!("{host:?} contains {bad:?}")));
        }
    }
    let port = match port {
        None => None,
        Some("") => return Err((AddressPart::Port, "the port after ':' is empty".to_string())),
        Some(p) => match p.parse::<u16>() {
            Ok(0) => return Err((AddressPart::Port, "port 0 is not a valid port".to_string())),
            Ok(n) if p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err((AddressPart::Port, format!("{p:?} is not a port number (1-65535)"))),
        },
    };
    Ok((host, port))
}

/// An empty path, `/`, `/redfish/v1` or `/redfish/v1/Systems` (any case) mean "find the only System" (`None`);
/// any other path is the System's URI as written (trailing slashes dropped), as Ironic takes `redfish_system_id`.
fn parse_system_path(path: &str) -> Result<Option<String>, String> {
    let path = path.trim_end_matches('/');
    let lower = path.to_ascii_lowercase();
    if path.is_empty() || lower == "/redfish/v1" || lower == "/redfish/v1/systems" {
        return Ok(None);
    }
    if path.contains("//") || path.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(format!("{path:?} is not a clean path to a Redfish System"));
    }
    if let Some(bad) = path.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("{path:?} contains {bad:?}"));
    }
    Ok(Some(path.to_string()))
}

impl fmt::Display for BmcAddress {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BmcAddress::Redfish(a) => {
                write!(f, "{}://{}", a.scheme(), a.endpoint())?;
                if let Some(path) = &a.system_path {
                    f.write_str(path)?;
                }
                Ok(())
            }
            BmcAddress::Ipmi(a) => {
                write!(f, "ipmi://{}", a.endpoint())?;
                match a.privilege {
                    None => Ok(()),
                    Some(IpmiPrivilege::Operator) => f.write_str("?privilegelevel=OPERATOR"),
                    Some(IpmiPrivilege::Administrator) => f.write_str("?privilegelevel=ADMINISTRATOR"),
                }
            }
            BmcAddress::Fake(a) => write!(f, "fake://{}", a.name),
        }
    }
}

impl Serialize for BmcAddress {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for BmcAddress {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> BmcAddress {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    fn bad(s: &str) -> AddressError {
        s.parse::<BmcAddress>().expect_err(s)
    }

    fn redfish(s: &str) -> RedfishAddress {
        match parse(s) {
            BmcAddress::Redfish(a) => a,
            other => panic!("{s} parsed as {other:?}"),
        }
    }

    #[test]
    fn fake_addresses_are_a_name_only() {
        let a: BmcAddress = "fake://sim-0042".parse().unwrap();
        assert_eq!(
            a,
            BmcAddress::Fake(FakeAddress {
                name: "sim-0042".into()
            })
        );
        assert_eq!(a.to_string(), "fake://sim-0042");
        assert_eq!((a.protocol(), a.boot_method()), ("fake", BootMethod::Pxe));
        for bad in [
            "fake://",
            "fake://a/b",
            "fake://a?x=1",
            "fake://a:1",
            "fake+http://a",
            "fake://a b",
        ] {
            assert!(bad.parse::<BmcAddress>().is_err(), "{bad}");
        }
    }

    #[test]
    fn redfish_schemes() {
        let table = [
            (
                "redfish://10.0.0.1/redfish/v1/Systems/1",
                RedfishFlavor::Redfish,
                Transport::Https,
                "https://10.0.0.1",
            ),
            (
                "redfish+http://bmc:8000",
                RedfishFlavor::Redfish,
                Transport::Http,
                "http://bmc:8000",
            ),
            (
                "redfish+https://bmc:8443",
                RedfishFlavor::Redfish,
                Transport::Https,
                "https://bmc:8443",
            ),
            (
                "redfish-virtualmedia://bmc",
                RedfishFlavor::VirtualMedia,
                Transport::Https,
                "https://bmc",
            ),
            (
                "redfish-virtualmedia+http://bmc",
                RedfishFlavor::VirtualMedia,
                Transport::Http,
                "http://bmc",
            ),
            (
                "redfish-virtualmedia+https://bmc",
                RedfishFlavor::VirtualMedia,
                Transport::Https,
                "https://bmc",
            ),
            (
                "idrac-redfish://idrac.example",
                RedfishFlavor::IdracRedfish,
                Transport::Https,
                "https://idrac.example",
            ),
            (
                "idrac-virtualmedia://[fd00::5]:443",
                RedfishFlavor::IdracVirtualMedia,
                Transport::Https,
                "https://[fd00::5]:443",
            ),
            (
                "REDFISH+HTTP://bmc",
                RedfishFlavor::Redfish,
                Transport::Http,
                "http://bmc",
            ),
        ];
        for (input, flavor, transport, origin) in table {
            let a = redfish(input);
            assert_eq!(
                (a.flavor, a.transport, a.origin().as_str()),
                (flavor, transport, origin),
                "{input}"
            );
        }
    }

    #[test]
    fn redfish_system_path_is_optional() {
        assert_eq!(redfish("redfish://bmc").system_path, None);
        assert_eq!(redfish("redfish://bmc/").system_path, None);
        assert_eq!(redfish("redfish://bmc/redfish/v1/Systems/").system_path, None);
        assert_eq!(
            redfish("idrac-redfish://bmc/redfish/v1/Systems/System.Embedded.1/")
                .system_path
                .as_deref(),
            Some("/redfish/v1/Systems/System.Embedded.1")
        );
    }

    #[test]
    fn ipmi_addresses() {
        assert_eq!(
            parse("ipmi://10.0.0.2"),
            BmcAddress::Ipmi(IpmiAddress {
                host: "10.0.0.2".into(),
                port: 623,
                privilege: None
            })
        );
        assert_eq!(
            parse("ipmi://bmc:6230"),
            BmcAddress::Ipmi(IpmiAddress {
                host: "bmc".into(),
                port: 6230,
                privilege: None
            })
        );
        assert_eq!(
            parse("10.0.0.3:6231"),
            BmcAddress::Ipmi(IpmiAddress {
                host: "10.0.0.3".into(),
                port: 6231,
                privilege: None
            })
        );
        assert_eq!(
            parse("ipmi://[::1]"),
            BmcAddress::Ipmi(IpmiAddress {
                host: "[::1]".into(),
                port: 623,
                privilege: None
            })
        );
        assert_eq!(parse("ipmi://[::1]:6230").endpoint(), "[::1]:6230");
    }

    #[test]
    fn metal3_forms() {
        // Every form baremetal-operator's parser accepts for Redfish or IPMI, with what kiln makes of it.
        let table: &[(&str, &str, BootMethod)] = &[
            ("192.168.122.1", "ipmi://192.168.122.1:623", BootMethod::Pxe),
            ("192.168.122.1:6233", "ipmi://192.168.122.1:6233", BootMethod::Pxe),
            (
                "[fe80::fc33:62ff:fe83:8a76]:6233",
                "ipmi://[fe80::fc33:62ff:fe83:8a76]:6233",
                BootMethod::Pxe,
            ),
            ("my.favoritebmc.com", "ipmi://my.favoritebmc.com:623", BootMethod::Pxe),
            (
                "ipmi:my.favoritebmc.com",
                "ipmi://my.favoritebmc.com:623",
                BootMethod::Pxe,
            ),
            ("ipmi:192.168.122.1:6233", "ipmi://192.168.122.1:6233", BootMethod::Pxe),
            (
                "ipmi://192.168.122.1:6233?privilegelevel=OPERATOR",
                "ipmi://192.168.122.1:6233?privilegelevel=OPERATOR",
                BootMethod::Pxe,
            ),
            (
                "redfish://192.168.122.1/redfish/v1/systems/1",
                "redfish://192.168.122.1/redfish/v1/systems/1",
                BootMethod::Pxe,
            ),
            (
                "redfish+https://bmc/redfish/v1/Systems/System.Embedded.1",
                "redfish+https://bmc/redfish/v1/Systems/System.Embedded.1",
                BootMethod::Pxe,
            ),
            ("redfish://bmc/redfish/v1/", "redfish://bmc", BootMethod::Pxe),
            (
                "redfish://bmc/custom/path/sys1",
                "redfish://bmc/custom/path/sys1",
                BootMethod::Pxe,
            ),
            (
                "redfish-virtualmedia+http://bmc:8000",
                "redfish-virtualmedia+http://bmc:8000",
                BootMethod::VirtualMedia,
            ),
            ("redfish-uefihttp://bmc", "redfish-uefihttp://bmc", BootMethod::UefiHttp),
            (
                "redfish-uefihttp+https://bmc",
                "redfish-uefihttp+https://bmc",
                BootMethod::UefiHttp,
            ),
            ("idrac-redfish+http://bmc", "idrac-redfish+http://bmc", BootMethod::Pxe),
            (
                "idrac-virtualmedia+https://bmc",
                "idrac-virtualmedia+https://bmc",
                BootMethod::VirtualMedia,
            ),
            ("ilo5-redfish://bmc", "ilo5-redfish://bmc", BootMethod::Pxe),
            (
                "ilo5-virtualmedia://bmc",
                "ilo5-virtualmedia://bmc",
                BootMethod::VirtualMedia,
            ),
        ];
        for (input, shown, method) in table {
            let a = parse(input);
            assert_eq!((a.to_string().as_str(), a.boot_method()), (*shown, *method), "{input}");
            assert_eq!(parse(&a.to_string()), a, "{input} round-trips");
        }
        let BmcAddress::Ipmi(a) = parse("ipmi://h?privilegelevel=operator") else {
            panic!("not IPMI")
        };
        assert_eq!(a.privilege, Some(IpmiPrivilege::Operator));
        let e = bad("idrac://10.0.0.1");
        assert!(e.reason.contains("idrac-redfish://"), "{e}");
        assert_eq!(
            parse("redfish://BMC:443/redfish/v1/Systems/1").identity(),
            parse("redfish-virtualmedia://bmc:443/redfish/v1/Systems/1").identity()
        );
    }

    #[test]
    fn display_round_trips() {
        for s in [
            "redfish://10.0.0.1/redfish/v1/Systems/1",
            "redfish+http://127.0.0.1:8000",
            "redfish-virtualmedia+https://bmc:8443/redfish/v1/Systems/abc",
            "idrac-virtualmedia://[fd00::5]",
            "ipmi://bmc:623",
        ] {
            assert_eq!(parse(s).to_string(), s);
            assert_eq!(parse(&parse(s).to_string()), parse(s));
        }
        assert_eq!(parse("bmc").to_string(), "ipmi://bmc:623");
    }

    #[test]
    fn serde_as_string() {
        let a = parse("redfish+http://127.0.0.1:8000/redfish/v1/Systems/x");
        let json = serde_json::to_string(&a).unwrap();
        assert_eq!(json, "\"redfish+http://127.0.0.1:8000/redfish/v1/Systems/x\"");
        assert_eq!(serde_json::from_str::<BmcAddress>(&json).unwrap(), a);
        assert!(serde_json::from_str::<BmcAddress>("\"ftp://x\"").is_err());
    }

    #[test]
    fn errors_name_the_bad_part() {
        let table = [
            ("", AddressPart::Host),
            ("ftp://bmc", AddressPart::Scheme),
            ("redfish+ftp://bmc", AddressPart::Scheme),
            ("ipmi+http://bmc", AddressPart::Scheme),
            ("redfish://", AddressPart::Host),
            ("redfish://:8000", AddressPart::Host),
            ("redfish://bm c", AddressPart::Host),
            ("ipmi://fd00::1", AddressPart::Host),
            ("ipmi://[fd00::zz]", AddressPart::Host),
            ("ipmi://[fd00::1", AddressPart::Host),
            ("ipmi://[fd00::1]x", AddressPart::Host),
            ("ipmi://bmc:", AddressPart::Port),
            ("ipmi://bmc:0", AddressPart::Port),
            ("ipmi://bmc:70000", AddressPart::Port),
            ("ipmi://bmc:+1", AddressPart::Port),
            ("redfish://bmc:http", AddressPart::Port),
            ("ipmi://bmc/path", AddressPart::Path),
            ("redfish://bmc/redfish/v1/../Systems/1", AddressPart::Path),
            ("redfish://bmc//redfish/v1/Systems/1", AddressPart::Path),
            ("ipmi://bmc?privilegelevel=USER", AddressPart::Query),
            ("ipmi://bmc?privilegelevel=KING", AddressPart::Query),
            ("ipmi://bmc?cipher=3", AddressPart::Query),
            ("libvirt://192.168.122.1/", AddressPart::Scheme),
            ("idrac://192.168.122.1", AddressPart::Scheme),
            ("ilo4://192.168.122.1", AddressPart::Scheme),
            ("ilo5://192.168.122.1", AddressPart::Scheme),
            ("irmc://192.168.122.1", AddressPart::Scheme),
            ("redfish://bmc?x=1", AddressPart::Query),
            ("redfish://bmc/redfish/v1/Systems/1#frag", AddressPart::Query),
            ("redfish://admin:hunter2@bmc", AddressPart::Credentials),
        ];
        for (input, part) in table {
            let e = bad(input);
            assert_eq!(e.part, part, "{input}: {e}");
            assert!(e.to_string().contains(&format!("bad {part}")), "{e}");
        }
    }

    #[test]
    fn credentials_are_not_echoed() {
        let e = bad("redfish://admin:hunter2@bmc/redfish/v1/Systems/1");
        assert!(!e.to_string().contains("hunter2"), "{e}");
        assert!(e.to_string().contains("***@bmc"), "{e}");
        let e = bad("ipmi://admin:hunter2@bmc:99999");
        assert!(!e.to_string().contains("hunter2"), "{e}");
    }
}
