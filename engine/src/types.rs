//! Newtypes parsed at the edge (host names, MAC addresses, timestamps; BMC addresses are kiln-bmc's `BmcAddress`); inner layers never see raw
//! strings for these. This module owns parsing and display only; it must not do I/O.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value did not parse; `field`-less, the caller names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

macro_rules! string_newtype_serde {
    ($t:ty) => {
        impl Serialize for $t {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.to_string())
            }
        }
        impl<'de> Deserialize<'de> for $t {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                s.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A host's name: a DNS label-ish string (lowercase letters, digits, `-`, `.`, `_`), 1..=63 characters.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostName(String);

impl HostName {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for HostName {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.is_empty() || s.len() > 63 {
            return Err(ParseError(format!(
                "host name must be 1 to 63 characters, got {}",
                s.len()
            )));
        }
        if let Some(c) = s
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.' | '_')))
        {
            return Err(ParseError(format!(
                "host name may contain only lowercase letters, digits, '-', '.', '_' (found {c:?})"
            )));
        }
        Ok(Self(s.to_owned()))
    }
}

impl fmt::Display for HostName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}
string_newtype_serde!(HostName);

/// An Ethernet MAC address (kiln's one definition), printed lowercase with colons.
pub use kiln_types::MacAddr;

impl From<kiln_types::ParseMacError> for ParseError {
    fn from(e: kiln_types::ParseMacError) -> Self {
        ParseError(e.to_string())
    }
}

/// Milliseconds since the Unix epoch: the only time type the store and the state machine use.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(transparent)]
pub struct Ts(pub i64);

impl Ts {
    pub fn plus_ms(self, ms: i64) -> Ts {
        Ts(self.0.saturating_add(ms))
    }
    pub fn plus_secs(self, s: u64) -> Ts {
        self.plus_ms(i64::try_from(s).unwrap_or(i64::MAX / 1000).saturating_mul(1000))
    }
    /// Milliseconds from `earlier` to `self` (0 if `earlier` is later).
    pub fn since(self, earlier: Ts) -> i64 {
        (self.0 - earlier.0).max(0)
    }
    /// RFC 3339 rendering for people.
    pub fn rfc3339(self) -> String {
        chrono::DateTime::from_timestamp_millis(self.0)
            .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_rejects() {
        assert_eq!(
            "52-54-00-AB-cd-01".parse::<MacAddr>().unwrap().to_string(),
            "52:54:00:ab:cd:01"
        );
        assert!("52:54:00:ab:cd".parse::<MacAddr>().is_err());
        assert!("zz:54:00:ab:cd:01".parse::<MacAddr>().is_err());
        assert!("node-1".parse::<HostName>().is_ok());
        assert!("Node 1".parse::<HostName>().is_err());
    }
}
