//! The `MacAddr` newtype: parsed once at the edge (DHCP `chaddr`, an iPXE script's URL, the agent's `kiln.mac=`, a
//! manifest's `bootMACAddress`, the REST API), shown as `aa:bb:cc:dd:ee:ff`. The one definition every kiln crate uses.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An IEEE 802 48-bit hardware address.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Wraps six raw octets.
    pub const fn new(octets: [u8; 6]) -> Self {
        Self(octets)
    }

    /// The six octets.
    pub const fn octets(&self) -> [u8; 6] {
        self.0
    }

    /// Takes the first six octets of a DHCP `chaddr` field (RFC 2131 §2, `hlen` 6 for Ethernet).
    pub fn from_chaddr(chaddr: &[u8]) -> Option<Self> {
        let octets: [u8; 6] = chaddr.get(..6)?.try_into().ok()?;
        Some(Self(octets))
    }
}

/// Why a string is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{input:?} is not a MAC address (expected six hex octets like 52:54:00:12:34:56, separated by ':' or '-')")]
pub struct ParseMacError {
    /// The rejected input (truncated to 64 characters).
    pub input: String,
}

impl FromStr for MacAddr {
    type Err = ParseMacError;

    /// Accepts `aa:bb:cc:dd:ee:ff` and `aa-bb-cc-dd-ee-ff` (iPXE's `${mac:hexhyp}`), any case.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ParseMacError {
            input: s.chars().take(64).collect(),
        };
        let sep = if s.contains('-') { '-' } else { ':' };
        let mut out = [0u8; 6];
        let mut parts = s.split(sep);
        for slot in &mut out {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 || !part.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err());
            }
            *slot = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(Self(out))
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MacAddr({self})")
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn parses_colon_and_hyphen_forms() {
        let want = MacAddr::new([0x52, 0x54, 0x00, 0xab, 0xCD, 0x01]);
        assert_eq!("52:54:00:ab:cd:01".parse::<MacAddr>().unwrap(), want);
        assert_eq!("52-54-00-AB-CD-01".parse::<MacAddr>().unwrap(), want);
        assert_eq!(want.to_string(), "52:54:00:ab:cd:01");
    }

    #[test]
    fn rejects_malformed() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "5:54:00:ab:cd:01",
            "zz:54:00:ab:cd:01",
            "52:54-00:ab:cd:01",
            "+1:54:00:ab:cd:01",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn serde_is_the_string_form() {
        let m = MacAddr::new([1, 2, 3, 4, 5, 6]);
        let j = serde_json::to_string(&m).unwrap();
        assert_eq!(j, "\"01:02:03:04:05:06\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&j).unwrap(), m);
    }

    proptest! {
        #[test]
        fn display_parse_round_trip(o in any::<[u8; 6]>()) {
            let m = MacAddr::new(o);
            prop_assert_eq!(m.to_string().parse::<MacAddr>().unwrap(), m);
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<MacAddr>();
        }
    }
}
