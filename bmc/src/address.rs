//! BMC addresses: parses Metal3-style BMC URLs once into a typed [`BmcAddress`]; knows nothing of how to talk to one.
//!
//! Accepted forms (baremetal-operator's `pkg/hardwareutils/bmc` schemes):
//! - `redfish://host[:port][/redfish/v1/Systems/ID]` (HTTPS), `redfish+http://`, `redfish+https://`
//! - `redfish-virtualmedia://` with the same `+http`/`+https` variants
//! - `idrac-redfish://`, `idrac-virtualmedia://` (Redfish on a Dell iDRAC), with `+http`/`+https` variants
//! - `ipmi://host[:port]` (port 623 by default); a bare `host[:port]` is IPMI too, as in Metal3.
//!
//! Hosts are DNS names, IPv4 literals or bracketed IPv6 literals (`[fd00::1]:8000`). Credentials never belong in
//! the address: `user:pass@` is rejected and the error does not repeat it.

use std::fmt;
use std::net::Ipv6Addr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The default UDP port of IPMI over LAN (RMCP, IPMI v2.0 section 13.1).
pub const IPMI_DEFAULT_PORT: u16 = 623;

/// A parsed BMC address.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BmcAddress {
    Redfish(RedfishAddress),
    Ipmi(IpmiAddress),
}

/// Which Metal3 Redfish scheme an address used; all of them are driven by the same Redfish driver.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RedfishFlavor {
    /// `redfish://`
    Redfish,
    /// `redfish-virtualmedia://`: the operator intends to boot from virtual media.
    VirtualMedia,
    /// `idrac-redfish://`
    IdracRedfish,
    /// `idrac-virtualmedia://`
    IdracVirtualMedia,
}

impl RedfishFlavor {
    fn base_scheme(self) -> &'static str {
        match self {
            RedfishFlavor::Redfish => "redfish",
            RedfishFlavor::VirtualMedia => "redfish-virtualmedia",
            RedfishFlavor::IdracRedfish => "idrac-redfish",
            RedfishFlavor::IdracVirtualMedia => "idrac-virtualmedia",
        }
    }

    /// Whether the address asks for virtual-media boot (`*-virtualmedia`).
    pub fn wants_virtual_media(self) -> bool {
        matches!(self, RedfishFlavor::VirtualMedia | RedfishFlavor::IdracVirtualMedia)
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
    /// `/redfish/v1/Systems/ID`, or `None` when the service is expected to have exactly one System.
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
}

impl IpmiAddress {
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

const SUPPORTED_SCHEMES: &str = "redfish, redfish+http, redfish+https, redfish-virtualmedia(+http|+https), \
                                 idrac-redfish(+http|+https), idrac-virtualmedia(+http|+https), ipmi";

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
        let (scheme, rest) = match trimmed.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => ("ipmi".to_string(), trimmed),
        };
        let authority_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(authority_end);
        let (path, query) = match tail.find(['?', '#']) {
            Some(i) => (&tail[..i], Some(&tail[i..])),
            None => (tail, None),
        };
        if query.is_some() {
            return Err(err(AddressPart::Query, "a BMC address has no query or fragment"));
        }
        if authority.contains('@') {
            return Err(err(
                AddressPart::Credentials,
                "credentials do not belong in the address; pass them separately",
            ));
        }
        let (host, port) = split_host_port(authority).map_err(|(part, reason)| err(part, &reason))?;

        let redfish = |flavor, transport, explicit_transport| -> Result<BmcAddress, AddressError> {
            let system_path = parse_system_path(path).map_err(|reason| err(AddressPart::Path, &reason))?;
            Ok(BmcAddress::Redfish(RedfishAddress {
                flavor,
                transport,
                explicit_transport,
                host: host.clone(),
                port,
                system_path,
            }))
        };
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
        let flavor = match base {
            "redfish" => RedfishFlavor::Redfish,
            "redfish-virtualmedia" => RedfishFlavor::VirtualMedia,
            "idrac-redfish" => RedfishFlavor::IdracRedfish,
            "idrac-virtualmedia" => RedfishFlavor::IdracVirtualMedia,
            "ipmi" if transport.is_none() => {
                if !(path.is_empty() || path == "/") {
                    return Err(err(AddressPart::Path, "an IPMI address has no path"));
                }
                return Ok(BmcAddress::Ipmi(IpmiAddress {
                    host,
                    port: port.unwrap_or(IPMI_DEFAULT_PORT),
                }));
            }
            _ => {
                return Err(err(
                    AddressPart::Scheme,
                    &format!("unsupported scheme {scheme:?}; supported: {SUPPORTED_SCHEMES}"),
                ));
            }
        };
        redfish(flavor, transport.unwrap_or(Transport::Https), transport.is_some())
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

/// Accepts an empty path (`None`: find the only System) or `/redfish/v1/Systems/ID` (trailing slash dropped).
fn parse_system_path(path: &str) -> Result<Option<String>, String> {
    let path = path.trim_end_matches('/');
    if path.is_empty() || path == "/redfish/v1" || path == "/redfish/v1/Systems" {
        return Ok(None);
    }
    match path.strip_prefix("/redfish/v1/Systems/") {
        Some(id) if !id.is_empty() && !id.contains('/') => Ok(Some(path.to_string())),
        _ => Err(format!(
            "{path:?} is not a Redfish System path; expected /redfish/v1/Systems/ID"
        )),
    }
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
            BmcAddress::Ipmi(a) => write!(f, "ipmi://{}", a.endpoint()),
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
                port: 623
            })
        );
        assert_eq!(
            parse("ipmi://bmc:6230"),
            BmcAddress::Ipmi(IpmiAddress {
                host: "bmc".into(),
                port: 6230
            })
        );
        assert_eq!(
            parse("10.0.0.3:6231"),
            BmcAddress::Ipmi(IpmiAddress {
                host: "10.0.0.3".into(),
                port: 6231
            })
        );
        assert_eq!(
            parse("ipmi://[::1]"),
            BmcAddress::Ipmi(IpmiAddress {
                host: "[::1]".into(),
                port: 623
            })
        );
        assert_eq!(parse("ipmi://[::1]:6230").endpoint(), "[::1]:6230");
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
            ("redfish://bmc/redfish/v1/Managers/1", AddressPart::Path),
            ("redfish://bmc/redfish/v1/Systems/1/extra", AddressPart::Path),
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
