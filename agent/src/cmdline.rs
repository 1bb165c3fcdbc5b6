//! The kernel command line: what the appliance tells the agent at boot (`kiln.api`, `kiln.ca`, `kiln.token`,
//! `kiln.mac`, `kiln.debug`). Pure parsing only; reading `/proc/cmdline` happens in `main`.

use std::fmt;

use crate::error::AgentError;

/// The boot token: a bearer secret whose `Debug`/`Display` never show it.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl Token {
    pub fn new(s: impl Into<String>) -> Self {
        Token(s.into())
    }
    /// The secret itself, for the `Authorization` header only.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// The appliance's agent API base, e.g. `http://10.0.2.2:8080` (no trailing slash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiBase(String);

impl ApiBase {
    /// Accepts `http://` and `https://` URLs with a host; strips a trailing `/`.
    pub fn parse(s: &str) -> Result<Self, AgentError> {
        let rest = s
            .strip_prefix("http://")
            .or_else(|| s.strip_prefix("https://"))
            .ok_or_else(|| AgentError::Cmdline {
                reason: format!("kiln.api must be an http(s) URL, got {s:?}"),
            })?;
        if rest.is_empty() || rest.starts_with('/') {
            return Err(AgentError::Cmdline {
                reason: format!("kiln.api has no host: {s:?}"),
            });
        }
        Ok(ApiBase(s.trim_end_matches('/').to_string()))
    }

    /// `{base}/agent/v1/{endpoint}`.
    pub fn endpoint(&self, endpoint: &str) -> String {
        format!("{}/agent/v1/{endpoint}", self.0)
    }
}

impl fmt::Display for ApiBase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A MAC address in canonical lower-case colon form (the protocol's shared type).
pub use kiln_images::protocol::MacAddr as Mac;

/// The SHA-256 of the appliance's CA certificate (DER), given as `kiln.ca=sha256:<hex>`: the agent trusts
/// `kiln.api` only if its certificate chain carries that CA and the server certificate verifies against it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CaPin(pub [u8; 32]);

impl CaPin {
    /// Parses `sha256:<64 hex digits>`.
    pub fn parse(s: &str) -> Result<Self, AgentError> {
        let bad = || AgentError::Cmdline {
            reason: format!("kiln.ca must be sha256:<64 hex digits>, got {s:?}"),
        };
        let hex = s.strip_prefix("sha256:").ok_or_else(bad)?;
        let bytes = hex::decode(hex).map_err(|_| bad())?;
        Ok(CaPin(bytes.try_into().map_err(|_| bad())?))
    }
}

/// Everything the agent takes from the kernel command line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootConfig {
    pub api: ApiBase,
    /// The appliance's CA, for an `https://` API; `None` trusts the ramdisk's system roots.
    pub ca: Option<CaPin>,
    /// The boot's token; `None` for a discovery boot (`kiln.discover=1`), which asks for it by BMC address.
    pub token: Option<Token>,
    /// The NIC the host booted from (PXE `BOOTIF`-like); `None` means any. A discovery boot always has one.
    pub mac: Option<Mac>,
    pub debug: bool,
}

/// Parses `/proc/cmdline` text. Words are split on whitespace; a value may be double-quoted
/// (`kiln.token="a b"` is not supported by the kernel either, so quotes are only stripped).
/// The last occurrence of a key wins, as with the kernel's own parameters.
///
/// # Errors
/// [`AgentError::Cmdline`] when `kiln.api` is missing or malformed, or `kiln.token` is missing or empty without
/// `kiln.discover=1` (which needs `kiln.mac`).
pub fn parse_cmdline(text: &str) -> Result<BootConfig, AgentError> {
    let mut api = None;
    let mut token = None;
    let mut ca = None;
    let mut mac = None;
    let mut debug = false;
    let mut discover = false;
    for word in text.split_whitespace() {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, v.trim_matches('"')),
            None => (word, ""),
        };
        match key {
            "kiln.api" => api = Some(value.to_string()),
            "kiln.token" => token = Some(value.to_string()),
            "kiln.ca" => ca = Some(value.to_string()),
            "kiln.mac" => mac = Some(value.to_string()),
            // `kiln.debug` alone or `kiln.debug=1|true|yes`
            "kiln.debug" => debug = matches!(value, "" | "1" | "true" | "yes" | "on"),
            "kiln.discover" => discover = matches!(value, "" | "1" | "true" | "yes" | "on"),
            _ => {}
        }
    }
    let api = api.ok_or_else(|| AgentError::Cmdline {
        reason: "kiln.api= is missing".into(),
    })?;
    let token = token.filter(|t| !t.is_empty()).map(Token);
    let mac = mac
        .map(|m| {
            m.parse::<Mac>().map_err(|_| AgentError::Cmdline {
                reason: format!("not a MAC address: {m:?}"),
            })
        })
        .transpose()?;
    if token.is_none() && !discover {
        return Err(AgentError::Cmdline {
            reason: "kiln.token= is missing or empty".into(),
        });
    }
    if token.is_none() && mac.is_none() {
        return Err(AgentError::Cmdline {
            reason: "kiln.discover=1 needs kiln.mac= (the NIC the host booted from)".into(),
        });
    }
    Ok(BootConfig {
        api: ApiBase::parse(&api)?,
        ca: ca.as_deref().map(CaPin::parse).transpose()?,
        token,
        mac,
        debug,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_typical_cmdline() {
        let c = parse_cmdline(
            "BOOT_IMAGE=/vmlinuz console=ttyS0 kiln.api=http://10.0.2.2:8080/ kiln.token=s3cret \
             kiln.mac=52:54:00:AB:cd:01 kiln.debug quiet\n",
        )
        .unwrap();
        assert_eq!(c.api.to_string(), "http://10.0.2.2:8080");
        assert_eq!(c.api.endpoint("heartbeat"), "http://10.0.2.2:8080/agent/v1/heartbeat");
        assert_eq!(c.token.as_ref().map(Token::expose), Some("s3cret"));
        assert_eq!(c.mac.unwrap().to_string(), "52:54:00:ab:cd:01");
        assert!(c.debug);
    }

    #[test]
    fn ca_pin_is_parsed() {
        let pin = "ab".repeat(32);
        let c = parse_cmdline(&format!(
            "kiln.api=https://10.0.0.1:8443 kiln.ca=sha256:{pin} kiln.token=t"
        ))
        .unwrap();
        assert_eq!(c.ca, Some(CaPin([0xab; 32])));
    }

    #[test]
    fn token_never_prints() {
        let c = parse_cmdline("kiln.api=https://kiln kiln.token=hunter2").unwrap();
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(c.token.unwrap().to_string(), "***");
        assert!(!c.debug);
        assert_eq!(c.mac, None);
    }

    #[test]
    fn last_occurrence_wins_and_quotes_are_stripped() {
        let c = parse_cmdline("kiln.api=http://a kiln.api=\"http://b:1\" kiln.token=t kiln.debug=0").unwrap();
        assert_eq!(c.api.to_string(), "http://b:1");
        assert!(!c.debug);
    }

    #[test]
    fn missing_or_bad_values_are_errors() {
        for bad in [
            "kiln.token=t",
            "kiln.api=http://a",
            "kiln.api=http://a kiln.token=",
            "kiln.api=ftp://a kiln.token=t",
            "kiln.api=http:// kiln.token=t",
            "kiln.api=http://a kiln.token=t kiln.mac=52:54:00:ab:cd",
            "kiln.api=http://a kiln.token=t kiln.mac=52:54:00:ab:cd:zz",
            "kiln.api=https://a kiln.token=t kiln.ca=00ff",
            "kiln.api=https://a kiln.token=t kiln.ca=sha256:00ff",
            "kiln.api=https://a kiln.token=t kiln.ca=md5:d41d8cd98f00b204e9800998ecf8427e",
            "kiln.api=https://a kiln.discover=1",
            "kiln.api=https://a kiln.discover=0 kiln.mac=52:54:00:ab:cd:01",
        ] {
            assert!(parse_cmdline(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_discovery_boot_has_a_mac_and_no_token() {
        let c = parse_cmdline("kiln.api=https://10.0.0.1:8443 kiln.discover=1 kiln.mac=52:54:00:ab:cd:01").unwrap();
        assert_eq!(c.token, None);
        assert_eq!(c.mac, Some("52:54:00:ab:cd:01".parse().unwrap()));
        // A token, when given, is used (the discovery flag is then moot).
        let c = parse_cmdline("kiln.api=https://a kiln.discover kiln.token=t").unwrap();
        assert!(c.token.is_some());
    }

    proptest::proptest! {
        #[test]
        fn mac_round_trips(bytes in proptest::array::uniform6(0u8..)) {
            let m = Mac(bytes);
            proptest::prop_assert_eq!(m.to_string().parse::<Mac>().unwrap(), m);
        }

        #[test]
        fn never_panics(s in "\\PC*") {
            let _ = parse_cmdline(&s);
        }
    }
}
