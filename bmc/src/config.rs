//! What a caller hands to [`crate::connect`]: credentials and per-BMC options (TLS, timeouts, pacing).

use std::time::Duration;

use crate::types::Secret;

/// A BMC user and password. `Debug` shows the user only.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: Secret,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Self {
        Self {
            username: username.into(),
            password: Secret::new(password),
        }
    }
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &self.password)
            .finish()
    }
}

/// IPMI session privilege level (IPMI v2.0 table 6-1, section 6.8).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum IpmiPrivilege {
    /// Enough for chassis control and boot options.
    Operator,
    #[default]
    Administrator,
}

impl IpmiPrivilege {
    pub(crate) fn level(self) -> u8 {
        match self {
            IpmiPrivilege::Operator => 0x03,
            IpmiPrivilege::Administrator => 0x04,
        }
    }
}

/// Options for one BMC connection. `Default` is what production wants: verify TLS, generous timeouts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcOptions {
    /// Accept any TLS certificate (self-signed BMCs). Off by default; set it per BMC, never globally.
    pub disable_certificate_verification: bool,
    /// Extra trusted CA certificates (PEM, one or more) besides the system's.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// Time for one exchange with the BMC: an HTTP request, or an IPMI command with its retransmissions.
    pub request_timeout: Duration,
    /// Time to establish a TCP/TLS connection.
    pub connect_timeout: Duration,
    /// How often a failed request is retried (connection errors, timeouts, 5xx); IPMI retransmissions too.
    pub retries: u32,
    /// First retry delay; it doubles (with jitter) up to 8 times this.
    pub retry_backoff: Duration,
    /// Minimum time between the end of one request and the start of the next to the same BMC.
    pub min_request_interval: Duration,
    /// Interval between our own polls (power state after a graceful off, task monitors).
    pub poll_interval: Duration,
    /// How long a graceful power off may take before the driver forces the power off.
    pub graceful_off_timeout: Duration,
    /// How long a Redfish task (202 + Location) or a power cycle may take.
    pub task_timeout: Duration,
    /// How long to keep retrying, with backoff, while a BMC says it is busy rather than no: a full session table
    /// (iDRAC holds 8), or a power action refused because the previous one has not settled (iLO's
    /// `InvalidOperationForSystemState`, iDRAC's `SYS518`). After it the error is `BmcError::Busy` (transient).
    pub busy_timeout: Duration,
    /// IPMI: the privilege level to request.
    pub ipmi_privilege: IpmiPrivilege,
    /// IPMI: try only this cipher suite (3 or 17) instead of negotiating.
    pub ipmi_cipher_suite: Option<u8>,
    /// IPMI: how long to wait for an answer to Get Channel Cipher Suites (many BMCs never answer it).
    pub ipmi_cipher_query_timeout: Duration,
}

impl Default for BmcOptions {
    fn default() -> Self {
        Self {
            disable_certificate_verification: false,
            ca_bundle_pem: None,
            request_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            retries: 3,
            retry_backoff: Duration::from_millis(500),
            min_request_interval: Duration::from_millis(50),
            poll_interval: Duration::from_secs(2),
            graceful_off_timeout: Duration::from_secs(180),
            task_timeout: Duration::from_secs(600),
            busy_timeout: Duration::from_secs(90),
            ipmi_privilege: IpmiPrivilege::Administrator,
            ipmi_cipher_suite: None,
            ipmi_cipher_query_timeout: Duration::from_millis(400),
        }
    }
}

impl BmcOptions {
    /// The delay before retry number `attempt` (0-based): exponential, capped at 8x, with up to 25% jitter.
    pub(crate) fn backoff(&self, attempt: u32) -> Duration {
        let base = self.retry_backoff.saturating_mul(1 << attempt.min(3));
        let jitter = base.mul_f64(rand::random::<f64>() * 0.25);
        base + jitter
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_debug_hides_password() {
        let c = Credentials::new("admin", "hunter2");
        let s = format!("{c:?}");
        assert!(s.contains("admin") && !s.contains("hunter2"), "{s}");
    }

    #[test]
    fn backoff_grows_and_caps() {
        let o = BmcOptions {
            retry_backoff: Duration::from_millis(100),
            ..Default::default()
        };
        assert!(o.backoff(0) >= Duration::from_millis(100) && o.backoff(0) <= Duration::from_millis(125));
        assert!(o.backoff(2) >= Duration::from_millis(400));
        assert!(o.backoff(10) <= Duration::from_millis(1000));
    }
}
