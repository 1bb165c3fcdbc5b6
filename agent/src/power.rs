//! Rebooting and powering off the host with `reboot(2)` after flushing the page cache. The only place that ends
//! the machine's life; it is called once the command's result has reached the appliance.

use nix::sys::reboot::{RebootMode, reboot};

use crate::error::AgentError;

/// What to do with the machine once a command's result is reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerAction {
    Reboot,
    PowerOff,
}

/// Syncs the disks and reboots or powers off; returns only on failure.
///
/// # Errors
/// [`AgentError::Power`] when the kernel refuses (not root, or inside a container).
pub fn power(action: PowerAction) -> Result<std::convert::Infallible, AgentError> {
    nix::unistd::sync();
    let (mode, name) = match action {
        PowerAction::Reboot => (RebootMode::RB_AUTOBOOT, "reboot"),
        PowerAction::PowerOff => (RebootMode::RB_POWER_OFF, "power off"),
    };
    reboot(mode).map_err(|source| AgentError::Power { action: name, source })
}
