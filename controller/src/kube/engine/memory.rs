//! A deterministic in-memory [`Engine`] for testing the Kubernetes side against a real API server: every call
//! advances a host by one step of a simplified Metal3 lifecycle (registering → inspecting → available →
//! provisioning → provisioned → deprovisioning → available), so tests see every transition without BMCs or VMs.
//! A BMC address starting with `fail://` makes registration fail.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Engine, EngineError, HostKey, HostSpec, HostState, Release};
use crate::kube::bmh::{ErrorType, HardwareDetails, Nic, ProvisioningState as S};

#[derive(Debug)]
struct Entry {
    spec: HostSpec,
    state: HostState,
    releasing: bool,
}

/// The in-memory engine.
#[derive(Debug, Default)]
pub struct MemoryEngine {
    hosts: Mutex<BTreeMap<HostKey, Entry>>,
    reboots: Mutex<BTreeMap<HostKey, u32>>,
    next_id: Mutex<u32>,
}

impl MemoryEngine {
    /// An empty engine.
    pub fn new() -> Self {
        Self::default()
    }

    /// The last spec applied for a host.
    pub fn spec(&self, key: &HostKey) -> Option<HostSpec> {
        self.hosts.lock().unwrap().get(key).map(|e| e.spec.clone())
    }

    /// The hosts the engine knows.
    pub fn keys(&self) -> Vec<HostKey> {
        self.hosts.lock().unwrap().keys().cloned().collect()
    }

    /// How often a host was rebooted.
    pub fn reboots(&self, key: &HostKey) -> u32 {
        self.reboots.lock().unwrap().get(key).copied().unwrap_or(0)
    }
}

/// One step of the simplified lifecycle (pure).
fn step(spec: &HostSpec, st: &mut HostState) {
    if st.error.is_some() {
        return;
    }
    let wants_image = spec.online && spec.image.as_ref().is_some_and(|i| !i.url.is_empty());
    st.state = match st.state {
        S::None => S::Registering,
        S::Registering if spec.bmc.address.starts_with("fail://") => {
            st.error = Some((
                ErrorType::Registration,
                format!("cannot reach BMC {}", spec.bmc.address),
            ));
            st.error_count += 1;
            S::Registering
        }
        S::Registering if spec.externally_provisioned => S::ExternallyProvisioned,
        S::Registering => S::Inspecting,
        S::Inspecting => {
            st.hardware = Some(HardwareDetails {
                ram_mebibytes: Some(4096),
                hostname: Some(format!("host-{}", st.id)),
                nics: vec![Nic {
                    name: Some("eth0".into()),
                    mac: spec.boot_mac_address.clone(),
                    ip: Some(format!("192.0.2.{}", 10 + st.id.len())),
                    pxe: Some(true),
                    ..Default::default()
                }],
                ..Default::default()
            });
            S::Available
        }
        S::Available if wants_image => S::Provisioning,
        S::Provisioning => {
            st.provisioned_image = spec.image.clone();
            st.boot_mode = Some(spec.boot_mode);
            st.root_device_hints = spec.root_device_hints.clone();
            S::Provisioned
        }
        S::Provisioned if spec.image.is_none() => S::Deprovisioning,
        S::Deprovisioning => {
            st.provisioned_image = None;
            S::Available
        }
        s => s,
    };
    st.powered_on = match st.state {
        S::Provisioned | S::ExternallyProvisioned | S::Available => spec.online,
        S::Provisioning | S::Inspecting | S::Deprovisioning => true,
        _ => false,
    };
}

impl Engine for MemoryEngine {
    async fn apply_host(&self, key: &HostKey, spec: &HostSpec) -> Result<HostState, EngineError> {
        let mut hosts = self.hosts.lock().unwrap();
        let entry = hosts.entry(key.clone()).or_insert_with(|| {
            let mut n = self.next_id.lock().unwrap();
            *n += 1;
            Entry {
                spec: spec.clone(),
                state: HostState {
                    id: format!("mem-{n}"),
                    ..Default::default()
                },
                releasing: false,
            }
        });
        if entry.releasing {
            return Err(EngineError::Rejected {
                host: key.to_string(),
                reason: "being released".into(),
            });
        }
        if entry.spec.bmc != spec.bmc && entry.state.error.is_some() {
            entry.state.error = None; // new credentials: retry registration
        }
        entry.spec = spec.clone();
        step(&entry.spec, &mut entry.state);
        Ok(entry.state.clone())
    }

    async fn host_state(&self, key: &HostKey) -> Result<Option<HostState>, EngineError> {
        Ok(self.hosts.lock().unwrap().get(key).map(|e| e.state.clone()))
    }

    async fn release_host(&self, key: &HostKey, deprovision: bool) -> Result<Release, EngineError> {
        let mut hosts = self.hosts.lock().unwrap();
        let Some(entry) = hosts.get_mut(key) else {
            return Ok(Release::Done);
        };
        let on_disk = matches!(entry.state.state, S::Provisioned | S::Provisioning | S::Deprovisioning);
        if deprovision && on_disk && !entry.releasing {
            entry.releasing = true;
            entry.state.state = S::Deprovisioning;
            return Ok(Release::InProgress(S::Deprovisioning));
        }
        hosts.remove(key);
        Ok(Release::Done)
    }

    async fn reboot_host(&self, key: &HostKey) -> Result<(), EngineError> {
        if !self.hosts.lock().unwrap().contains_key(key) {
            return Err(EngineError::Rejected {
                host: key.to_string(),
                reason: "unknown host".into(),
            });
        }
        *self.reboots.lock().unwrap().entry(key.clone()).or_default() += 1;
        Ok(())
    }
}
