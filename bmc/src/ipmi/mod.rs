//! The IPMI-over-LAN driver: kiln's [`Bmc`] operations as IPMI v2.0 chassis commands over an RMCP+ (lanplus)
//! session, with cipher suite negotiation that falls back fast and is remembered per BMC.
//! Wire formats are in [`packet`], cryptography in [`crypto`], sessions and retransmission in `session`.

pub mod crypto;
pub mod packet;
mod session;

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};
use std::time::Duration;

use tokio::time::Instant;

pub use self::crypto::CipherSuite;
use self::session::{NETFN_APP, NETFN_CHASSIS, OpenError, Session, Transport};
use crate::Bmc;
use crate::address::IpmiAddress;
use crate::config::{BmcOptions, Credentials};
use crate::error::BmcError;
use crate::types::{BootMode, BootPersistence, BootTarget, Capabilities, Inventory, PowerAction, PowerState};

/// Chassis commands (IPMI v2.0 section 28).
const CMD_GET_CHASSIS_STATUS: u8 = 0x01;
const CMD_CHASSIS_CONTROL: u8 = 0x02;
const CMD_SET_SYSTEM_BOOT_OPTIONS: u8 = 0x08;
const CMD_GET_SYSTEM_BOOT_OPTIONS: u8 = 0x09;
/// App commands (section 20).
const CMD_GET_DEVICE_ID: u8 = 0x01;
const CMD_GET_SYSTEM_GUID: u8 = 0x37;

/// Chassis Control values (section 28.3, table 28-4).
const CONTROL_POWER_DOWN: u8 = 0x00;
const CONTROL_POWER_UP: u8 = 0x01;
const CONTROL_POWER_CYCLE: u8 = 0x02;
const CONTROL_HARD_RESET: u8 = 0x03;
const CONTROL_SOFT_SHUTDOWN: u8 = 0x05;

/// Boot option parameters (section 28.13, table 28-14).
const BOOT_PARAM_SET_IN_PROGRESS: u8 = 0;
const BOOT_PARAM_INFO_ACK: u8 = 4;
const BOOT_PARAM_FLAGS: u8 = 5;

/// How long a session may sit idle before a timeout is taken to mean "the BMC forgot it" and it is reopened.
const SESSION_IDLE_SUSPECT: Duration = Duration::from_secs(15);

/// The cipher suite that last worked for each BMC (`host:port`), so that only the first connection pays for
/// negotiation.
static SUITE_CACHE: LazyLock<Mutex<HashMap<String, CipherSuite>>> = LazyLock::new(Default::default);

/// A BMC reached by IPMI v2.0 RMCP+. Holds one session, reopened when needed; [`IpmiBmc::close`] ends it.
#[derive(Debug)]
pub struct IpmiBmc {
    transport: Transport,
    creds: Credentials,
    opts: BmcOptions,
    session: tokio::sync::Mutex<Option<Session>>,
}

impl IpmiBmc {
    /// Resolves the BMC and opens a session, negotiating the cipher suite (17 preferred, then 3).
    ///
    /// # Errors
    /// `AuthFailed` for a wrong user or password, `Timeout` when the BMC does not answer, `SessionRejected`
    /// when it accepts none of our cipher suites, `Busy` when its session table is full.
    pub async fn connect(address: &IpmiAddress, creds: Credentials, mut opts: BmcOptions) -> Result<Self, BmcError> {
        if let Some(privilege) = address.privilege {
            opts.ipmi_privilege = privilege;
        }
        let attempts = opts.retries + 1;
        let attempt_timeout =
            (opts.request_timeout / attempts).clamp(Duration::from_millis(200), Duration::from_secs(2));
        let transport = Transport::connect(
            &address.endpoint(),
            attempt_timeout,
            attempts,
            opts.min_request_interval,
        )
        .await?;
        let bmc = Self {
            transport,
            creds,
            opts,
            session: tokio::sync::Mutex::new(None),
        };
        let session = bmc.open_session().await?;
        *bmc.session.lock().await = Some(session);
        Ok(bmc)
    }

    /// The cipher suite of the current session.
    pub async fn cipher_suite(&self) -> Option<CipherSuite> {
        self.session.lock().await.as_ref().map(|s| s.suite)
    }

    /// Forgets which cipher suite worked for `endpoint` (`host:port`); for tests.
    pub fn forget_cipher_suite(endpoint: &str) {
        SUITE_CACHE.lock().unwrap_or_else(|e| e.into_inner()).remove(endpoint);
    }

    /// Closes the session (a BMC has few session slots).
    pub async fn close(&self) {
        if let Some(mut session) = self.session.lock().await.take() {
            session.close(&self.transport).await;
        }
    }

    fn bmc(&self) -> String {
        self.transport.bmc.clone()
    }

    async fn open_session(&self) -> Result<Session, BmcError> {
        let t = &self.transport;
        let privilege = self.opts.ipmi_privilege.level();
        let cached = SUITE_CACHE
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&t.bmc)
            .copied();
        let candidates: Vec<CipherSuite> = if let Some(forced) = self.opts.ipmi_cipher_suite {
            vec![CipherSuite::from_id(forced).ok_or_else(|| BmcError::Invalid {
                bmc: self.bmc(),
                operation: "IPMI login".into(),
                detail: format!("cipher suite {forced} is not supported (3 or 17)"),
            })?]
        } else if let Some(suite) = cached {
            std::iter::once(suite)
                .chain(CipherSuite::ALL.into_iter().filter(|s| *s != suite))
                .collect()
        } else {
            if !t.channel_auth_capabilities(privilege).await? {
                return Err(BmcError::Unsupported {
                    bmc: self.bmc(),
                    operation: "IPMI v2.0 (RMCP+)".into(),
                });
            }
            match t.cipher_suites(self.opts.ipmi_cipher_query_timeout).await {
                Ok(offered) => {
                    tracing::debug!(bmc = %t.bmc, ?offered, "cipher suites offered");
                    let common: Vec<_> = CipherSuite::ALL
                        .into_iter()
                        .filter(|s| offered.contains(&s.id()))
                        .collect();
                    if common.is_empty() {
                        CipherSuite::ALL.to_vec()
                    } else {
                        common
                    }
                }
                Err(e) => {
                    tracing::debug!(bmc = %t.bmc, error = %e, "no cipher suite list: trying 17, then 3");
                    CipherSuite::ALL.to_vec()
                }
            }
        };
        let mut last = None;
        for suite in candidates {
            match Session::open(t, &self.creds, privilege, suite).await {
                Ok(session) => {
                    SUITE_CACHE
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(t.bmc.clone(), suite);
                    return Ok(session);
                }
                Err(OpenError::SuiteRejected(e)) => {
                    tracing::debug!(bmc = %t.bmc, suite = suite.id(), error = %e, "cipher suite rejected");
                    last = Some(e);
                }
                Err(OpenError::Other(e)) => return Err(e),
            }
        }
        Err(last.unwrap_or_else(|| BmcError::SessionRejected {
            bmc: self.bmc(),
            status: 0x11,
            reason: "no cipher suite in common".into(),
        }))
    }

    /// Runs one command in the session, opening or reopening it as needed; returns the response data after a
    /// zero completion code.
    async fn call(&self, operation: &str, netfn: u8, cmd: u8, data: &[u8]) -> Result<Vec<u8>, BmcError> {
        let mut guard = self.session.lock().await;
        let mut reopened = false;
        loop {
            if guard.is_none() {
                *guard = Some(self.open_session().await?);
                reopened = true;
            }
            let session = guard.as_mut().expect("just opened");
            let idle = Instant::now() - session.last_used;
            match session.command(&self.transport, operation, netfn, cmd, data).await {
                Ok(r) if r.completion_code == 0 => return Ok(r.data),
                Ok(r) => {
                    return Err(BmcError::Ipmi {
                        bmc: self.bmc(),
                        operation: operation.into(),
                        code: r.completion_code,
                    });
                }
                // A BMC silently drops packets of a session it timed out: after idling, reopen once and retry.
                Err(BmcError::Timeout { .. }) if !reopened && idle > SESSION_IDLE_SUSPECT => {
                    tracing::debug!(bmc = %self.transport.bmc, ?idle, "no answer in an idle session: reopening it");
                    *guard = None;
                }
                Err(e) => {
                    if e.is_transient() {
                        *guard = None;
                    }
                    return Err(e);
                }
            }
        }
    }

    async fn chassis_power_on(&self) -> Result<bool, BmcError> {
        let data = self
            .call("Get Chassis Status", NETFN_CHASSIS, CMD_GET_CHASSIS_STATUS, &[])
            .await?;
        let first = data.first().ok_or_else(|| BmcError::Protocol {
            bmc: self.bmc(),
            operation: "Get Chassis Status".into(),
            detail: "empty response".into(),
        })?;
        Ok(first & 0x01 != 0)
    }

    async fn chassis_control(&self, control: u8) -> Result<(), BmcError> {
        tracing::debug!(bmc = %self.transport.bmc, control, "Chassis Control");
        self.call("Chassis Control", NETFN_CHASSIS, CMD_CHASSIS_CONTROL, &[control])
            .await
            .map(|_| ())
    }

    async fn set_boot_param(&self, param: u8, data: &[u8]) -> Result<(), BmcError> {
        let mut body = vec![param];
        body.extend(data);
        let op = format!("Set System Boot Options parameter {param}");
        self.call(&op, NETFN_CHASSIS, CMD_SET_SYSTEM_BOOT_OPTIONS, &body)
            .await
            .map(|_| ())
    }

    async fn boot_flags(&self) -> Result<Option<[u8; 5]>, BmcError> {
        let op = "Get System Boot Options parameter 5";
        match self
            .call(
                op,
                NETFN_CHASSIS,
                CMD_GET_SYSTEM_BOOT_OPTIONS,
                &[BOOT_PARAM_FLAGS, 0, 0],
            )
            .await
        {
            // Response: parameter version, parameter valid + selector, then the 5 data bytes.
            Ok(data) if data.len() >= 7 => Ok(Some(data[2..7].try_into().expect("5 bytes"))),
            Ok(_) => Ok(None),
            Err(BmcError::Ipmi { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    async fn wait_for_off(&self, timeout: Duration) -> Result<bool, BmcError> {
        let deadline = Instant::now() + timeout;
        loop {
            if !self.chassis_power_on().await? {
                return Ok(true);
            }
            if Instant::now() + self.opts.poll_interval > deadline {
                return Ok(false);
            }
            tokio::time::sleep(self.opts.poll_interval).await;
        }
    }
}

/// Boot flags, data bytes 1-5 of parameter 5 (IPMI v2.0 table 28-14).
pub fn boot_flags(target: BootTarget, persistence: BootPersistence) -> Option<[u8; 5]> {
    let (device, mode) = match target {
        BootTarget::Pxe { mode } => (0x04, mode),
        BootTarget::Disk { mode } => (0x08, mode),
        BootTarget::VirtualCd { mode } => (0x14, mode),
        BootTarget::UefiHttp => return None,
    };
    let mut byte1 = 0x80; // boot flags valid
    if persistence == BootPersistence::Persistent {
        byte1 |= 0x40;
    }
    if mode == BootMode::Uefi {
        byte1 |= 0x20;
    }
    Some([byte1, device, 0, 0, 0])
}

impl Bmc for IpmiBmc {
    type Error = BmcError;

    async fn power_state(&self) -> Result<PowerState, BmcError> {
        Ok(if self.chassis_power_on().await? {
            PowerState::On
        } else {
            PowerState::Off
        })
    }

    async fn set_power(&self, action: PowerAction) -> Result<(), BmcError> {
        let on = self.chassis_power_on().await?;
        match action {
            PowerAction::On if on => Ok(()),
            PowerAction::On => self.chassis_control(CONTROL_POWER_UP).await,
            PowerAction::ForceOff | PowerAction::Off if !on => Ok(()),
            PowerAction::ForceOff => self.chassis_control(CONTROL_POWER_DOWN).await,
            PowerAction::Off => {
                self.chassis_control(CONTROL_SOFT_SHUTDOWN).await?;
                if self.wait_for_off(self.opts.graceful_off_timeout).await? {
                    return Ok(());
                }
                tracing::info!(bmc = %self.transport.bmc, "soft shutdown timed out: forcing power off");
                self.chassis_control(CONTROL_POWER_DOWN).await
            }
            // Cycle and reset of a powered-off host are a power on, as on most BMCs.
            PowerAction::Cycle | PowerAction::Reset if !on => self.chassis_control(CONTROL_POWER_UP).await,
            PowerAction::Cycle => self.chassis_control(CONTROL_POWER_CYCLE).await,
            PowerAction::Reset => self.chassis_control(CONTROL_HARD_RESET).await,
        }
    }

    /// Set System Boot Options as `ipmitool chassis bootdev` does: set-in-progress, clear the BIOS POST
    /// acknowledge (parameter 4), write the boot flags (parameter 5), commit-write, set-complete.
    async fn set_boot(&self, target: BootTarget, persistence: BootPersistence) -> Result<(), BmcError> {
        let flags = boot_flags(target, persistence).ok_or_else(|| BmcError::Unsupported {
            bmc: self.bmc(),
            operation: "UEFI HTTP boot over IPMI".into(),
        })?;
        if self.boot_flags().await? == Some(flags) {
            return Ok(());
        }
        let in_progress = self.set_boot_param(BOOT_PARAM_SET_IN_PROGRESS, &[0x01]).await;
        if let Err(e) = &in_progress {
            tracing::debug!(bmc = %self.transport.bmc, error = %e, "set-in-progress not supported");
        }
        let result = async {
            match self.set_boot_param(BOOT_PARAM_INFO_ACK, &[0x01, 0x01]).await {
                Err(e @ BmcError::Ipmi { .. }) => {
                    tracing::debug!(bmc = %self.transport.bmc, error = %e, "boot info acknowledge refused")
                }
                Err(e) => return Err(e),
                Ok(()) => {}
            }
            self.set_boot_param(BOOT_PARAM_FLAGS, &flags).await?;
            if in_progress.is_ok() {
                let _ = self.set_boot_param(BOOT_PARAM_SET_IN_PROGRESS, &[0x02]).await; // commit write
            }
            Ok(())
        }
        .await;
        if in_progress.is_ok() {
            let _ = self.set_boot_param(BOOT_PARAM_SET_IN_PROGRESS, &[0x00]).await; // set complete
        }
        result
    }

    async fn insert_media(&self, _image_url: &str) -> Result<(), BmcError> {
        Err(BmcError::Unsupported {
            bmc: self.bmc(),
            operation: "virtual media over IPMI".into(),
        })
    }

    /// IPMI has no virtual media, so there is never any to eject.
    async fn eject_media(&self) -> Result<(), BmcError> {
        Ok(())
    }

    async fn inventory(&self) -> Result<Inventory, BmcError> {
        let mut inv = Inventory::default();
        let id = self.call("Get Device ID", NETFN_APP, CMD_GET_DEVICE_ID, &[]).await?;
        if id.len() >= 11 {
            let manufacturer = u32::from_le_bytes([id[6], id[7], id[8] & 0x0F, 0]);
            inv.manufacturer = Some(manufacturer_name(manufacturer));
            inv.model = Some(format!("product {:#06x}", u16::from_le_bytes([id[9], id[10]])));
        }
        match self.call("Get System GUID", NETFN_APP, CMD_GET_SYSTEM_GUID, &[]).await {
            Ok(guid) if guid.len() >= 16 => inv.uuid = Some(format_guid(&guid[..16])),
            Ok(_) | Err(BmcError::Ipmi { .. }) => {}
            Err(e) => return Err(e),
        }
        Ok(inv)
    }

    fn capabilities(&self) -> Capabilities {
        Capabilities {
            virtual_media: false,
            uefi_http_boot: false,
            inventory: true,
        }
    }
}

/// A few IANA enterprise numbers BMC vendors use; others print as the number.
fn manufacturer_name(iana: u32) -> String {
    match iana {
        2 => "IBM".into(),
        11 => "HPE".into(),
        343 => "Intel".into(),
        674 => "Dell".into(),
        2011 => "Huawei".into(),
        10876 => "Supermicro".into(),
        19046 => "Lenovo".into(),
        42385 => "Inspur".into(),
        n => format!("IANA {n}"),
    }
}

/// The System GUID is sent least significant byte first (IPMI v2.0 section 20.8); print it as a UUID the way
/// SMBIOS tools do (first three fields little-endian).
fn format_guid(g: &[u8]) -> String {
    let mut b = [0u8; 16];
    b.copy_from_slice(&g[..16]);
    b[..4].reverse();
    b[4..6].reverse();
    b[6..8].reverse();
    let h: Vec<String> = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        h[..4].concat(),
        h[4..6].concat(),
        h[6..8].concat(),
        h[8..10].concat(),
        h[10..].concat()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boot_flag_bytes() {
        let pxe_once_uefi = boot_flags(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once);
        assert_eq!(pxe_once_uefi, Some([0xA0, 0x04, 0, 0, 0]));
        let disk_persistent_legacy =
            boot_flags(BootTarget::Disk { mode: BootMode::Legacy }, BootPersistence::Persistent);
        assert_eq!(disk_persistent_legacy, Some([0xC0, 0x08, 0, 0, 0]));
        let cd = boot_flags(BootTarget::VirtualCd { mode: BootMode::Legacy }, BootPersistence::Once);
        assert_eq!(cd, Some([0x80, 0x14, 0, 0, 0]));
        assert_eq!(boot_flags(BootTarget::UefiHttp, BootPersistence::Once), None);
    }

    #[test]
    fn guid_format() {
        let g: Vec<u8> = (0..16).collect();
        assert_eq!(format_guid(&g), "03020100-0504-0706-0809-0a0b0c0d0e0f");
    }
}
