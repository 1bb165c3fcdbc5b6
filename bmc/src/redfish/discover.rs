//! Discovery, once per connection: which System the address means, where its Reset action and VirtualMedia are,
//! and what the BMC says it offers (ResetTypes, boot targets, override persistence, boot mode). It reads only.

use reqwest::Method;

use super::client::Client;
use super::media;
use super::model::{ActionInfo, Collection, ComputerSystem, Manager, ServiceRoot};
use super::quirks::{self, ResetSource};
use crate::address::RedfishAddress;
use crate::error::BmcError;

/// What `connect` learnt about the service and the System.
#[derive(Debug, Clone)]
pub(super) struct Discovered {
    /// The System's path, without a trailing `/`, spelled as the BMC spells it.
    pub system: String,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub reset_target: String,
    /// `None` when the service does not say (or says something malformed): every standard ResetType is tried.
    pub reset_types: Option<Vec<String>>,
    /// `None` when the service does not say: every target is tried.
    pub boot_targets: Option<Vec<String>>,
    /// `BootSourceOverrideEnabled@Redfish.AllowableValues`, when given.
    pub boot_enabled: Option<Vec<String>>,
    /// Whether the System exposes `BootSourceOverrideMode` (UEFI/Legacy).
    pub has_boot_mode: bool,
    pub virtual_media: Option<String>,
    pub has_cd: bool,
}

pub(super) async fn discover(
    client: &Client,
    address: &RedfishAddress,
    root: &ServiceRoot,
) -> Result<Discovered, BmcError> {
    let system = match &address.system_path {
        Some(path) => resolve_system(client, root, path).await?,
        None => {
            let members = client
                .get_json::<Collection>(&systems_collection(root))
                .await?
                .member_ids();
            match members.as_slice() {
                [only] => only.trim_end_matches('/').to_string(),
                [] => {
                    return Err(BmcError::NotFound {
                        bmc: client.bmc.clone(),
                        resource: "systems".into(),
                    });
                }
                _ => {
                    return Err(BmcError::AmbiguousSystem {
                        bmc: client.bmc.clone(),
                        systems: members,
                    });
                }
            }
        }
    };
    let sys: ComputerSystem = client.get_json(&system).await?;
    let reset = sys.actions.as_ref().and_then(|a| a.reset.clone()).unwrap_or_default();
    let reset_target = reset
        .target
        .clone()
        .unwrap_or_else(|| quirks::join(&system, "Actions/ComputerSystem.Reset"));
    let info = match &reset.action_info {
        Some(path) => match client.get_json::<ActionInfo>(path).await {
            Ok(info) => info
                .parameters
                .into_iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some("ResetType"))
                .and_then(|p| p.allowable_values),
            Err(e) => {
                tracing::debug!(bmc = %client.bmc, error = %e, "reset ActionInfo unreadable");
                None
            }
        },
        None => None,
    };
    let (reset_types, source) = quirks::reset_types(reset.allowed.as_deref(), info.as_deref());
    match (&source, &reset.allowed) {
        (ResetSource::ActionInfo, Some(inline)) if Some(inline) != reset_types.as_ref() => {
            tracing::info!(bmc = %client.bmc, ?inline, action_info = ?reset_types,
                "the inline ResetType list disagrees with the ActionInfo: the ActionInfo wins");
        }
        (ResetSource::Unknown, Some(inline)) => {
            tracing::warn!(bmc = %client.bmc, ?inline,
                "the inline ResetType list is malformed and there is no ActionInfo: not trusted, every ResetType is tried");
        }
        _ => {}
    }
    let boot = sys.boot.clone().unwrap_or_default();
    let boot_targets = quirks::boot_targets(
        boot.allowed_targets.as_deref(),
        boot.boot_source_override_supported.as_deref(),
        sys.oem.as_ref(),
    );
    let virtual_media = find_virtual_media(client, &sys).await;
    let mut has_cd = false;
    if let Some(collection) = &virtual_media {
        has_cd = !media::cd_media(client, collection).await.unwrap_or_default().is_empty();
    }
    tracing::debug!(bmc = %client.bmc, %system, ?reset_types, ?source, ?boot_targets, has_cd, "redfish system discovered");
    Ok(Discovered {
        system,
        manufacturer: sys.manufacturer.clone(),
        model: sys.model.clone(),
        reset_target,
        reset_types,
        boot_targets,
        boot_enabled: boot.allowed_enabled.clone(),
        has_boot_mode: boot.boot_source_override_mode.is_some() || boot.allowed_modes.is_some(),
        virtual_media,
        has_cd,
    })
}

fn systems_collection(root: &ServiceRoot) -> String {
    root.systems
        .as_ref()
        .map(|s| s.id.clone())
        .unwrap_or_else(|| "/redfish/v1/Systems".into())
}

/// The System at `path`, as the BMC spells it: following a redirect (sushy-tools answers a System by name with a
/// 307 to its UUID URL), taking the System's own `@odata.id` when the BMC answered a differently cased or slashed
/// path (iLO answers `/redfish/v1/systems/1` and calls it `/redfish/v1/Systems/1/`), and, when a BMC that minds
/// case answers 404, finding the System in the Systems collection ignoring case and trailing slashes (addresses
/// are often written in lower case from Ironic's examples).
async fn resolve_system(client: &Client, root: &ServiceRoot, path: &str) -> Result<String, BmcError> {
    let not_found = || BmcError::NotFound {
        bmc: client.bmc.clone(),
        resource: format!("system {path}"),
    };
    match client.request(Method::GET, path, None).await {
        Ok(reply) => {
            let landed = reply.final_path.trim_end_matches('/');
            if !quirks::same_resource(landed, path) {
                tracing::debug!(bmc = %client.bmc, from = %path, to = %landed, "system redirected");
            }
            let own = serde_json::from_slice::<ComputerSystem>(&reply.body)
                .ok()
                .and_then(|s| s.odata_id)
                .filter(|id| quirks::same_resource(id, landed));
            Ok(own.as_deref().unwrap_or(landed).trim_end_matches('/').to_string())
        }
        Err(BmcError::NotFound { .. }) => {
            let members = match client.get_json::<Collection>(&systems_collection(root)).await {
                Ok(c) => c.member_ids(),
                Err(e) => {
                    tracing::debug!(bmc = %client.bmc, error = %e, "systems collection unreadable");
                    return Err(not_found());
                }
            };
            let found = members
                .iter()
                .find(|m| quirks::same_resource(m, path))
                .ok_or_else(not_found)?;
            tracing::info!(bmc = %client.bmc, address = %path, system = %found,
                "the BMC minds case in paths: using the System's own spelling");
            Ok(found.trim_end_matches('/').to_string())
        }
        Err(e) => Err(e),
    }
}

/// VirtualMedia hangs off the System (newer services, sushy-tools) or its Manager (older iDRAC/iLO, XCC).
async fn find_virtual_media(client: &Client, sys: &ComputerSystem) -> Option<String> {
    if let Some(vm) = &sys.virtual_media {
        return Some(vm.id.clone());
    }
    let manager = sys.links.as_ref()?.managed_by.as_ref()?.first()?.id.clone();
    match client.get_json::<Manager>(&manager).await {
        Ok(m) => m.virtual_media.map(|v| v.id),
        Err(e) => {
            tracing::debug!(bmc = %client.bmc, error = %e, "manager unreadable; no virtual media");
            None
        }
    }
}
