//! The one error type of kiln-bmc, classified for retry (`is_transient`) and for exit codes (`kind`).
//!
//! Messages name the BMC (`host:port`) and the operation; they never carry a password or session token.

use std::time::Duration;

use crate::address::AddressError;

/// What went wrong talking to a BMC.
#[derive(Debug, thiserror::Error)]
pub enum BmcError {
    #[error("invalid BMC address")]
    InvalidAddress(#[source] AddressError),

    #[error("cannot connect to BMC {bmc}")]
    Connect {
        bmc: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error(
        "TLS handshake with BMC {bmc} failed (trust its CA with a CA bundle, or disable certificate verification for this BMC)"
    )]
    Tls {
        bmc: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("BMC {bmc} did not answer {operation} within {after:?}")]
    Timeout {
        bmc: String,
        operation: String,
        after: Duration,
    },

    #[error("BMC {bmc} rejected the credentials of user {username:?}: {detail}")]
    AuthFailed {
        bmc: String,
        username: String,
        detail: String,
    },

    #[error("BMC {bmc} answered {operation} with HTTP {status}{}", fmt_message(message))]
    Http {
        bmc: String,
        operation: String,
        status: u16,
        message: String,
    },

    #[error("BMC {bmc} has no {resource}")]
    NotFound { bmc: String, resource: String },

    #[error("BMC {bmc} manages {} systems ({}); name one in the address (/redfish/v1/Systems/ID)", systems.len(), systems.join(", "))]
    AmbiguousSystem { bmc: String, systems: Vec<String> },

    #[error("BMC {bmc} does not support {operation}")]
    Unsupported { bmc: String, operation: String },

    #[error("BMC {bmc} refused {operation} with completion code {code:#04x} ({})", completion_code_meaning(*code))]
    Ipmi { bmc: String, operation: String, code: u8 },

    #[error("BMC {bmc} refused the IPMI session: {reason} (RMCP+ status {status:#04x})")]
    SessionRejected { bmc: String, status: u8, reason: String },

    /// The BMC said "later" rather than "no" for longer than the driver waits (`BmcOptions::busy_timeout` for
    /// Redfish): a full session table, a power action refused while the previous one settles. Transient.
    #[error("BMC {bmc} is busy: {reason}")]
    Busy { bmc: String, reason: String },

    #[error("BMC {bmc} sent a malformed answer to {operation}: {detail}")]
    Protocol {
        bmc: String,
        operation: String,
        detail: String,
    },

    #[error("{operation} on BMC {bmc} failed: {detail}")]
    TaskFailed {
        bmc: String,
        operation: String,
        detail: String,
    },

    #[error("BMC {bmc}: {operation} is not possible: {detail}")]
    Invalid {
        bmc: String,
        operation: String,
        detail: String,
    },
}

/// Coarse classes of [`BmcError`], for exit codes and metrics labels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BmcErrorKind {
    InvalidAddress,
    /// Cannot reach or get an answer from the BMC (network, TLS, timeouts).
    Unreachable,
    /// Wrong user name or password.
    Auth,
    /// The BMC cannot do this (no virtual media, no such boot device).
    Unsupported,
    /// The BMC answered but refused or failed the request.
    Refused,
    /// The BMC answered something that is not the protocol.
    Protocol,
}

impl BmcError {
    /// Whether retrying later may succeed (network trouble, timeouts, 5xx, a busy BMC).
    pub fn is_transient(&self) -> bool {
        match self {
            BmcError::Connect { .. } | BmcError::Timeout { .. } | BmcError::Busy { .. } => true,
            BmcError::Http { status, .. } => *status >= 500 && *status != 501 || *status == 429,
            // Node busy, timeout, out of space, command in progress (IPMI v2.0 table 5-2).
            BmcError::Ipmi { code, .. } => matches!(code, 0xC0 | 0xC3 | 0xC4 | 0xD2),
            BmcError::InvalidAddress(_)
            | BmcError::Tls { .. }
            | BmcError::AuthFailed { .. }
            | BmcError::NotFound { .. }
            | BmcError::AmbiguousSystem { .. }
            | BmcError::Unsupported { .. }
            | BmcError::SessionRejected { .. }
            | BmcError::Protocol { .. }
            | BmcError::TaskFailed { .. }
            | BmcError::Invalid { .. } => false,
        }
    }

    /// The class of this error.
    pub fn kind(&self) -> BmcErrorKind {
        match self {
            BmcError::InvalidAddress(_) => BmcErrorKind::InvalidAddress,
            BmcError::Connect { .. } | BmcError::Tls { .. } | BmcError::Timeout { .. } => BmcErrorKind::Unreachable,
            BmcError::AuthFailed { .. } => BmcErrorKind::Auth,
            BmcError::Unsupported { .. } => BmcErrorKind::Unsupported,
            BmcError::Protocol { .. } => BmcErrorKind::Protocol,
            BmcError::Http { status: 401, .. } => BmcErrorKind::Auth,
            BmcError::Http { .. }
            | BmcError::NotFound { .. }
            | BmcError::AmbiguousSystem { .. }
            | BmcError::Ipmi { .. }
            | BmcError::SessionRejected { .. }
            | BmcError::Busy { .. }
            | BmcError::TaskFailed { .. }
            | BmcError::Invalid { .. } => BmcErrorKind::Refused,
        }
    }
}

impl From<AddressError> for BmcError {
    fn from(e: AddressError) -> Self {
        BmcError::InvalidAddress(e)
    }
}

fn fmt_message(message: &str) -> String {
    if message.is_empty() {
        String::new()
    } else {
        format!(": {message}")
    }
}

/// IPMI v2.0 table 5-2, generic completion codes.
pub fn completion_code_meaning(code: u8) -> &'static str {
    match code {
        0x00 => "success",
        0xC0 => "node busy",
        0xC1 => "invalid command",
        0xC2 => "command invalid for given LUN",
        0xC3 => "timeout while processing command",
        0xC4 => "out of space",
        0xC5 => "reservation cancelled or invalid",
        0xC6 => "request data truncated",
        0xC7 => "request data length invalid",
        0xC8 => "request data field length limit exceeded",
        0xC9 => "parameter out of range",
        0xCA => "cannot return number of requested data bytes",
        0xCB => "requested sensor, data or record not present",
        0xCC => "invalid data field in request",
        0xCD => "command illegal for specified sensor or record type",
        0xCE => "command response could not be provided",
        0xCF => "cannot execute duplicated request",
        0xD0 => "SDR repository in update mode",
        0xD1 => "device in firmware update mode",
        0xD2 => "BMC initialization in progress",
        0xD3 => "destination unavailable",
        0xD4 => "insufficient privilege level",
        0xD5 => "command not supported in present state",
        0xD6 => "command sub-function disabled or unavailable",
        0xFF => "unspecified error",
        0x80..=0xBE => "command-specific error",
        _ => "unknown completion code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classification() {
        let http = |status| BmcError::Http {
            bmc: "b".into(),
            operation: "GET /".into(),
            status,
            message: String::new(),
        };
        assert!(http(503).is_transient());
        assert!(http(500).is_transient());
        assert!(http(429).is_transient());
        assert!(!http(501).is_transient());
        assert!(!http(400).is_transient());
        assert_eq!(http(401).kind(), BmcErrorKind::Auth);
        let ipmi = |code| BmcError::Ipmi {
            bmc: "b".into(),
            operation: "x".into(),
            code,
        };
        assert!(ipmi(0xC0).is_transient());
        assert!(!ipmi(0xCC).is_transient());
        assert!(ipmi(0xD4).to_string().contains("insufficient privilege"));
        let t = BmcError::Timeout {
            bmc: "b".into(),
            operation: "x".into(),
            after: Duration::from_secs(1),
        };
        assert!(t.is_transient());
        assert_eq!(t.kind(), BmcErrorKind::Unreachable);
    }

    #[test]
    fn messages() {
        let e = BmcError::Http {
            bmc: "bmc:443".into(),
            operation: "GET /x".into(),
            status: 400,
            message: "m".into(),
        };
        assert_eq!(e.to_string(), "BMC bmc:443 answered GET /x with HTTP 400: m");
        let e = BmcError::AmbiguousSystem {
            bmc: "b".into(),
            systems: vec!["/a".into(), "/b".into()],
        };
        assert!(e.to_string().contains("2 systems (/a, /b)"), "{e}");
    }
}
