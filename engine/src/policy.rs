//! The knobs of the host state machine (timeouts, retries, polling) and its backoff rule: exponential, per host,
//! with jitter and a cap. Pure; the jitter is an argument.

use serde::{Deserialize, Serialize};

/// Timeouts, retry limits and intervals the machine decides with. Configurable per appliance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Policy {
    /// From power-on to the agent's first heartbeat.
    pub boot_timeout_secs: u64,
    /// From queuing a command to its result.
    pub command_timeout_secs: u64,
    /// Silence after which a running agent is considered gone.
    pub heartbeat_timeout_secs: u64,
    /// Registration attempts and automatic retries of a failed operation.
    pub max_retries: u32,
    pub backoff_base_secs: u64,
    pub backoff_cap_secs: u64,
    /// How often an idle host is looked at (power-state sync).
    pub idle_poll_secs: u64,
    /// How often a busy host is looked at.
    pub busy_poll_secs: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            boot_timeout_secs: 900,
            command_timeout_secs: 3600,
            heartbeat_timeout_secs: 300,
            max_retries: 3,
            backoff_base_secs: 5,
            backoff_cap_secs: 600,
            idle_poll_secs: 60,
            busy_poll_secs: 2,
        }
    }
}

/// Exponential backoff with jitter and a cap, in milliseconds.
pub fn backoff_ms(policy: &Policy, retries: u32, jitter: f64) -> i64 {
    let base = policy.backoff_base_secs.saturating_mul(1000);
    let exp = base.saturating_mul(1u64 << retries.min(30));
    let capped = exp.min(policy.backoff_cap_secs.saturating_mul(1000)) as f64;
    // Full range [50%, 100%] of the capped delay: spreads retries of many hosts failing together.
    (capped * (0.5 + 0.5 * jitter.clamp(0.0, 1.0))) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let p = Policy::default();
        assert!(backoff_ms(&p, 1, 0.0) > backoff_ms(&p, 0, 0.0));
        assert_eq!(backoff_ms(&p, 40, 1.0), 600_000);
        assert_eq!(backoff_ms(&p, 40, 0.0), 300_000);
        assert!(backoff_ms(&p, 2, 0.9) > backoff_ms(&p, 2, 0.1));
    }
}
