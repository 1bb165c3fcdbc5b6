//! Inventory: what the System and its collections say of the hardware. Collections a BMC lacks or fails on are
//! skipped; only an unreachable BMC or refused credentials fail the whole read.

use super::RedfishBmc;
use super::model::{Collection, Drive, EthernetInterface, Processor, SimpleStorage, Storage};
use crate::error::{BmcError, BmcErrorKind};
use crate::types::{BmcDisk, BootMode, Inventory};

impl RedfishBmc {
    pub(super) async fn read_inventory(&self) -> Result<Inventory, BmcError> {
        let sys = self.system().await?;
        let mut inv = Inventory {
            manufacturer: sys.manufacturer.clone().filter(|s| !s.is_empty()),
            model: sys.model.clone().filter(|s| !s.is_empty()),
            serial_number: sys.serial_number.clone().filter(|s| !s.is_empty()),
            uuid: sys.uuid.clone().filter(|s| !s.is_empty()),
            processor_count: sys.processor_summary.as_ref().and_then(|p| p.count),
            processor_model: sys.processor_summary.as_ref().and_then(|p| p.model.clone()),
            memory_mib: sys
                .memory_summary
                .as_ref()
                .and_then(|m| m.total_system_memory_gib)
                .map(|gib| (gib * 1024.0).round() as u64),
            disks: Vec::new(),
            nic_macs: Vec::new(),
            boot_mode: sys
                .boot
                .as_ref()
                .and_then(|b| b.boot_source_override_mode.as_deref())
                .and_then(|m| match m {
                    "UEFI" => Some(BootMode::Uefi),
                    "Legacy" => Some(BootMode::Legacy),
                    _ => None,
                }),
        };
        // Collections a BMC may lack (sushy's fake driver answers 501 or 500) are skipped; the rest is kept.
        if inv.processor_model.is_none()
            && let Some(link) = &sys.processors
            && let Some(procs) = self.optional::<Collection>(&link.id).await?
        {
            let ids = procs.member_ids();
            if inv.processor_count.is_none() {
                inv.processor_count = Some(ids.len() as u32);
            }
            if let Some(first) = ids.first()
                && let Some(p) = self.optional::<Processor>(first).await?
            {
                inv.processor_model = p.model;
            }
        }
        if let Some(link) = &sys.storage
            && let Some(storages) = self.optional::<Collection>(&link.id).await?
        {
            for storage in storages.member_ids() {
                let Some(s) = self.optional::<Storage>(&storage).await? else {
                    continue;
                };
                for drive in s.drives.into_iter().flatten() {
                    if let Some(d) = self.optional::<Drive>(&drive.id).await? {
                        let name = d.name.or(d.id).unwrap_or_else(|| drive.id.clone());
                        inv.disks.push(BmcDisk {
                            name,
                            size_bytes: d.capacity_bytes,
                        });
                    }
                }
            }
        }
        if inv.disks.is_empty()
            && let Some(link) = &sys.simple_storage
            && let Some(list) = self.optional::<Collection>(&link.id).await?
        {
            for member in list.member_ids() {
                let Some(s) = self.optional::<SimpleStorage>(&member).await? else {
                    continue;
                };
                for (i, dev) in s.devices.into_iter().flatten().enumerate() {
                    let name = dev.name.unwrap_or_else(|| format!("{member}#{i}"));
                    inv.disks.push(BmcDisk {
                        name,
                        size_bytes: dev.capacity_bytes,
                    });
                }
            }
        }
        if let Some(link) = &sys.ethernet_interfaces
            && let Some(nics) = self.optional::<Collection>(&link.id).await?
        {
            for nic in nics.member_ids() {
                if let Some(n) = self.optional::<EthernetInterface>(&nic).await?
                    && let Some(mac) = n.mac_address.or(n.permanent_mac_address).filter(|m| !m.is_empty())
                {
                    inv.nic_macs.push(mac.to_ascii_lowercase());
                }
            }
        }
        Ok(inv)
    }

    /// GETs a resource the BMC may not have: `None` when it answers an error for it (absent, 501, 500, bad
    /// JSON), an error only when the BMC cannot be reached or refuses the credentials.
    async fn optional<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<Option<T>, BmcError> {
        match self.client.get_json::<T>(path).await {
            Ok(v) => Ok(Some(v)),
            Err(e) => match e.kind() {
                BmcErrorKind::Unreachable | BmcErrorKind::Auth | BmcErrorKind::InvalidAddress => Err(e),
                BmcErrorKind::Unsupported | BmcErrorKind::Refused | BmcErrorKind::Protocol => {
                    tracing::debug!(bmc = %self.client.bmc, path, error = %e, "inventory: skipped");
                    Ok(None)
                }
            },
        }
    }
}
