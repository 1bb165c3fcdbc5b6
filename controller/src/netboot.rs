//! What kiln tells the netboot services about a MAC: boot the agent (with a freshly minted one-time token for the
//! host's current boot and phase), boot the local disk, or ignore. This is the `HostLookup` seam of kiln-pxe; it
//! owns token minting and must not touch DHCP or TFTP itself.

use std::sync::Arc;

use kiln_bmc::Secret;

use crate::crypto::{hash_token, random_hex};
use crate::machine::{JobPhase, State};
use crate::store::{Store, StoreError};
use crate::types::{MacAddr, Ts};

/// What a host booting from the network should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootInstructions {
    /// Boot kiln-agent with `kiln.api=<api_url> kiln.token=<token>` on the kernel command line.
    /// The token is a [`Secret`]: this value can be logged.
    Agent {
        host: String,
        mac: MacAddr,
        boot: u64,
        token: Secret,
        api_url: String,
    },
    /// Boot from the local disk.
    LocalDisk { host: String },
    /// A known host that should not network-boot now (lease it an address, offer no boot file).
    Nothing { host: String },
}

impl BootInstructions {
    /// The kernel command line arguments for the agent (contains the token: send it only to the booting host).
    pub fn kernel_args(&self) -> Option<String> {
        match self {
            BootInstructions::Agent {
                host,
                mac,
                token,
                api_url,
                ..
            } => Some(format!(
                "kiln.api={api_url} kiln.token={} kiln.mac={mac} kiln.host={host}",
                token.expose()
            )),
            BootInstructions::LocalDisk { .. } | BootInstructions::Nothing { .. } => None,
        }
    }
}

/// Looks hosts up in the store by boot MAC.
#[derive(Clone)]
pub struct StoreLookup {
    pub store: Arc<dyn Store>,
    /// Base URL the agent reaches kiln at (`http://10.0.0.1:8080`).
    pub api_url: String,
}

impl StoreLookup {
    /// Instructions for `mac`, or `None` for a MAC kiln does not own (the DHCP server must then stay silent).
    /// Every call for a host that should boot the agent mints a new token for the current boot (the latest one is
    /// what the iPXE script carries; all of them die when the phase ends).
    ///
    /// # Errors
    /// The store's error.
    pub async fn boot_instructions(&self, mac: &MacAddr, now: Ts) -> Result<Option<BootInstructions>, StoreError> {
        let Some(h) = self.store.host_by_mac(mac).await? else {
            return Ok(None);
        };
        let host = h.name.to_string();
        match &h.state {
            State::Inspecting(j) | State::Preparing(j) | State::Provisioning(j) | State::Deprovisioning(j) => {
                if j.phase == JobPhase::Delayed {
                    return Ok(Some(BootInstructions::Nothing { host }));
                }
                let token = random_hex(32);
                self.store
                    .add_token(&hash_token(&token), h.id, j.boot, h.state.name(), now)
                    .await?;
                Ok(Some(BootInstructions::Agent {
                    host,
                    mac: *mac,
                    boot: j.boot,
                    token: Secret::new(token),
                    api_url: self.api_url.clone(),
                }))
            }
            State::Provisioned { .. } | State::ExternallyProvisioned { .. } => {
                Ok(Some(BootInstructions::LocalDisk { host }))
            }
            State::Unmanaged
            | State::Registering { .. }
            | State::Available { .. }
            | State::Deleting { .. }
            | State::Error(_) => Ok(Some(BootInstructions::Nothing { host })),
        }
    }
}
