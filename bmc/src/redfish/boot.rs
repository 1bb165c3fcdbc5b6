//! The boot override (`Boot.BootSourceOverride*` on the System, DSP0268 ComputerSystem). What is sent is only what
//! must change and what the BMC offers: the mode only when it differs (HPE iLO 5 and older iDRAC refuse any PATCH
//! naming it), the virtual CD under the name the BMC boots it by (`UsbCd` on Supermicro), and a persistent override
//! as a one-time override set again before every power on where `Continuous` is not offered (Lenovo XCC) or is
//! refused, as Ironic does.

use serde_json::json;

use super::RedfishBmc;
use super::model::ComputerSystem;
use super::quirks;
use crate::error::BmcError;
use crate::types::{BootMode, BootPersistence, BootTarget};

/// A persistent boot override the BMC cannot keep, remembered to be set again (once) before every power on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Override {
    target: BootTarget,
}

fn boot_mode_name(mode: BootMode) -> &'static str {
    match mode {
        BootMode::Uefi => "UEFI",
        BootMode::Legacy => "Legacy",
    }
}

impl RedfishBmc {
    pub(super) async fn boot(&self, target: BootTarget, persistence: BootPersistence) -> Result<(), BmcError> {
        let mut emulated = match persistence {
            BootPersistence::Once => false,
            BootPersistence::Persistent => {
                let (_, emulated) = quirks::persistent_enabled(self.found.boot_enabled.as_deref());
                if emulated {
                    tracing::info!(bmc = %self.client.bmc, %target, allowed = ?self.found.boot_enabled,
                        "the BMC offers no Continuous boot override: setting a one-time override, set again before every power on");
                }
                emulated
            }
        };
        let enabled = if emulated { "Once" } else { enabled_name(persistence) };
        match self.apply_override(target, enabled).await {
            Ok(()) => {}
            // Ironic's fallback: Continuous was dropped from Redfish and some BMCs refuse it without saying so in
            // AllowableValues.
            Err(BmcError::Http {
                status: 400, message, ..
            }) if enabled == "Continuous" => {
                tracing::info!(bmc = %self.client.bmc, %target, %message,
                    "the BMC refused a Continuous boot override: setting a one-time override, set again before every power on");
                self.apply_override(target, "Once").await?;
                emulated = true;
            }
            Err(e) => return Err(e),
        }
        *self.emulated_persistent.lock().unwrap_or_else(|e| e.into_inner()) = emulated.then_some(Override { target });
        Ok(())
    }

    /// Sets the remembered one-time override again before the host boots; a no-op when there is none.
    pub(super) async fn restore_boot_override(&self) -> Result<(), BmcError> {
        let remembered = *self.emulated_persistent.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = remembered {
            tracing::debug!(bmc = %self.client.bmc, target = %o.target, "setting the emulated persistent boot override again");
            self.apply_override(o.target, "Once").await?;
        }
        Ok(())
    }

    /// The `BootSourceOverrideTarget` for `target`, or `Unsupported` when the System does not offer it.
    fn target_name(&self, target: BootTarget) -> Result<&'static str, BmcError> {
        let name = match target {
            BootTarget::Pxe { .. } => "Pxe",
            BootTarget::UefiHttp => "UefiHttp",
            BootTarget::Disk { .. } => "Hdd",
            BootTarget::VirtualCd { .. } => quirks::virtual_cd_target(
                self.found.manufacturer.as_deref(),
                self.found.model.as_deref(),
                self.found.boot_targets.as_deref(),
            ),
        };
        if let Some(allowed) = &self.found.boot_targets
            && !allowed.iter().any(|a| a == name)
        {
            return Err(BmcError::Unsupported {
                bmc: self.bmc(),
                operation: format!("boot from {name} (the BMC offers {})", allowed.join(", ")),
            });
        }
        Ok(name)
    }

    /// Reads the System and PATCHes what differs from `target` with `enabled`; nothing when all is in place.
    async fn apply_override(&self, target: BootTarget, enabled: &str) -> Result<(), BmcError> {
        let name = self.target_name(target)?;
        let mode = match target {
            BootTarget::Pxe { mode } | BootTarget::Disk { mode } | BootTarget::VirtualCd { mode } => mode,
            BootTarget::UefiHttp => BootMode::Uefi,
        };
        let (sys, etag) = self.client.get_with_etag::<ComputerSystem>(&self.found.system).await?;
        let current = sys.boot.unwrap_or_default();
        let wanted_mode = boot_mode_name(mode);
        let mode_matches =
            !self.found.has_boot_mode || current.boot_source_override_mode.as_deref() == Some(wanted_mode);
        if current.boot_source_override_target.as_deref() == Some(name)
            && current.boot_source_override_enabled.as_deref() == Some(enabled)
            && mode_matches
        {
            return Ok(());
        }
        let mut boot = json!({"BootSourceOverrideTarget": name, "BootSourceOverrideEnabled": enabled});
        // The mode only when it must change: HPE iLO 5 and older iDRAC refuse any PATCH naming it (read-only there,
        // 400 PropertyNotWritableOrUnknown / SYS410), even with the value it already has.
        let send_mode = self.found.has_boot_mode && !mode_matches;
        if send_mode {
            boot["BootSourceOverrideMode"] = json!(wanted_mode);
        } else if !self.found.has_boot_mode {
            // Without BootSourceOverrideMode the firmware mode is not ours to choose; set the device only.
            tracing::debug!(bmc = %self.client.bmc, ?mode, "the System has no BootSourceOverrideMode: mode not set");
        }
        let body = json!({"Boot": boot});
        let patched = self.client.patch(&self.found.system, &body, etag.as_deref()).await;
        patched.map(|_| ()).map_err(|e| match e {
            BmcError::Http { status, message, .. } if send_mode && quirks::is_boot_mode_refused(status, &message) => {
                BmcError::Unsupported {
                    bmc: self.bmc(),
                    operation: format!(
                        "switching the boot mode to {wanted_mode} per boot (the BMC treats BootSourceOverrideMode as \
                         read-only: {message}); the System boots in {} mode: set the host's boot mode to that, or \
                         change the firmware's boot mode in its BIOS settings",
                        current.boot_source_override_mode.as_deref().unwrap_or("another")
                    ),
                }
            }
            e => e,
        })
    }
}

fn enabled_name(persistence: BootPersistence) -> &'static str {
    match persistence {
        BootPersistence::Once => "Once",
        BootPersistence::Persistent => "Continuous",
    }
}
