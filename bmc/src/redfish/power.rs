//! Power: `ComputerSystem.Reset` with the ResetType the BMC offers. A graceful off falls back to the power button
//! where there is no GracefulShutdown (HPE iLO 4, iLO 5 1.x) and says so; a cycle without PowerCycle is ForceOff,
//! wait, On (the client asks again while the BMC refuses the On as too soon, so the host is not left off).

use std::time::Duration;

use reqwest::Method;
use serde_json::json;
use tokio::time::Instant;

use super::RedfishBmc;
use super::quirks::{self, GracefulOff};
use crate::error::BmcError;
use crate::types::{PowerAction, PowerState};

impl RedfishBmc {
    pub(super) async fn power(&self, action: PowerAction) -> Result<(), BmcError> {
        let state = self.read_power().await?;
        match action {
            PowerAction::On => {
                if matches!(state, PowerState::On | PowerState::PoweringOn) {
                    return Ok(());
                }
                self.restore_boot_override().await?;
                self.reset(&["On", "ForceOn"]).await
            }
            PowerAction::ForceOff => {
                if state == PowerState::Off {
                    return Ok(());
                }
                self.reset(&["ForceOff"]).await
            }
            PowerAction::Off => match state {
                PowerState::Off => Ok(()),
                PowerState::PoweringOff => {
                    // A shutdown is under way already: give it the graceful budget, then cut the power.
                    self.force_off_unless_off_within(self.client.opts.graceful_off_timeout)
                        .await
                }
                PowerState::On | PowerState::PoweringOn | PowerState::Unknown => self.graceful_off(state).await,
            },
            PowerAction::Cycle | PowerAction::Reset => {
                if state == PowerState::PoweringOff
                    && !self
                        .wait_for_power(PowerState::Off, self.client.opts.task_timeout)
                        .await?
                {
                    return Err(self.power_timeout("power off before a power cycle"));
                }
                if matches!(state, PowerState::Off | PowerState::PoweringOff) {
                    self.restore_boot_override().await?;
                    return self.reset(&["On", "ForceOn"]).await;
                }
                let preferred: &[&str] = match action {
                    PowerAction::Cycle => &["PowerCycle"],
                    _ => &["ForceRestart", "GracefulRestart", "PowerCycle"],
                };
                self.restore_boot_override().await?;
                if self.try_reset(preferred).await?.is_some() {
                    return Ok(());
                }
                // No cycle/restart action: force off, wait, power on.
                self.reset(&["ForceOff"]).await?;
                if !self
                    .wait_for_power(PowerState::Off, self.client.opts.task_timeout)
                    .await?
                {
                    return Err(self.power_timeout("power off during a power cycle"));
                }
                self.reset(&["On", "ForceOn"]).await
            }
        }
    }

    /// GracefulShutdown, else a press of the power button, then ForceOff if the host is still on after
    /// `graceful_off_timeout`. Which path was taken is logged: an operator must be able to tell a graceful off from
    /// a power cut.
    async fn graceful_off(&self, state: PowerState) -> Result<(), BmcError> {
        let how = quirks::graceful_off(self.found.reset_types.as_deref());
        // The power button toggles: press it only on a host that is on, never on one whose state is unknown.
        let may_press = matches!(state, PowerState::On | PowerState::PoweringOn);
        let sent = match how {
            GracefulOff::Shutdown if may_press => self.try_reset(&["GracefulShutdown", "PushPowerButton"]).await?,
            GracefulOff::Shutdown => self.try_reset(&["GracefulShutdown"]).await?,
            GracefulOff::PowerButton if may_press => {
                tracing::info!(bmc = %self.client.bmc, graceful = "PushPowerButton",
                    "the BMC offers no GracefulShutdown: pressing the power button for a graceful power off");
                self.try_reset(&["PushPowerButton"]).await?
            }
            GracefulOff::PowerButton | GracefulOff::ForceOnly => None,
        };
        let Some(sent) = sent else {
            tracing::warn!(bmc = %self.client.bmc, ?state, allowed = ?self.found.reset_types,
                "no graceful power off is possible (no GracefulShutdown, no PushPowerButton on a host known to be on): forcing the power off");
            return self.reset(&["ForceOff"]).await;
        };
        if sent == "PushPowerButton" && how == GracefulOff::Shutdown {
            tracing::info!(bmc = %self.client.bmc, graceful = "PushPowerButton",
                "the BMC refused GracefulShutdown: pressed the power button for a graceful power off");
        }
        self.force_off_unless_off_within(self.client.opts.graceful_off_timeout)
            .await
    }

    async fn force_off_unless_off_within(&self, timeout: Duration) -> Result<(), BmcError> {
        if self.wait_for_power(PowerState::Off, timeout).await? {
            return Ok(());
        }
        tracing::info!(bmc = %self.client.bmc, ?timeout, "graceful shutdown timed out: forcing power off");
        self.reset(&["ForceOff"]).await
    }

    /// The first of `preferred` the BMC accepts, or `Unsupported`.
    async fn reset(&self, preferred: &[&'static str]) -> Result<(), BmcError> {
        match self.try_reset(preferred).await? {
            Some(_) => Ok(()),
            None => Err(BmcError::Unsupported {
                bmc: self.bmc(),
                operation: format!("ResetType {}", preferred.join(" or ")),
            }),
        }
    }

    /// Posts the first of `preferred` the BMC allows; `None` when it allows none. When the BMC does not say what
    /// it allows, each is tried in turn and a refusal of the value moves on to the next.
    async fn try_reset(&self, preferred: &[&'static str]) -> Result<Option<&'static str>, BmcError> {
        let candidates: Vec<&'static str> = match &self.found.reset_types {
            Some(allowed) => preferred
                .iter()
                .copied()
                .filter(|p| allowed.iter().any(|a| a == p))
                .take(1)
                .collect(),
            None => preferred.to_vec(),
        };
        for reset_type in candidates {
            tracing::debug!(bmc = %self.client.bmc, %reset_type, "ComputerSystem.Reset");
            let sent = self
                .client
                .request(
                    Method::POST,
                    &self.found.reset_target,
                    Some(&json!({"ResetType": reset_type})),
                )
                .await;
            match sent {
                Ok(_) => return Ok(Some(reset_type)),
                Err(BmcError::Http { status, message, .. })
                    if self.found.reset_types.is_none() && quirks::is_value_refused(status, &message) =>
                {
                    tracing::debug!(bmc = %self.client.bmc, %reset_type, %message, "ResetType refused: trying the next");
                }
                Err(e) => return Err(e),
            }
        }
        Ok(None)
    }

    /// Polls the power state until it is `want` or `timeout` passes; returns whether it got there.
    async fn wait_for_power(&self, want: PowerState, timeout: Duration) -> Result<bool, BmcError> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.read_power().await? == want {
                return Ok(true);
            }
            if Instant::now() + self.client.poll_interval() > deadline {
                return Ok(false);
            }
            tokio::time::sleep(self.client.poll_interval()).await;
        }
    }

    fn power_timeout(&self, operation: &str) -> BmcError {
        BmcError::Timeout {
            bmc: self.bmc(),
            operation: operation.into(),
            after: self.client.opts.task_timeout,
        }
    }
}
