//! The few Redfish resources kiln reads (DMTF DSP0268 schemas), hand-written and lenient: every property is
//! optional because BMCs differ in what they fill in, and unknown properties are ignored.

use serde::Deserialize;

/// A link: `{"@odata.id": "/redfish/v1/..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct OdataId {
    #[serde(rename = "@odata.id")]
    pub id: String,
}

/// `/redfish/v1/` (DSP0268 ServiceRoot).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRoot {
    pub redfish_version: Option<String>,
    pub vendor: Option<String>,
    pub product: Option<String>,
    pub systems: Option<OdataId>,
    pub managers: Option<OdataId>,
    pub session_service: Option<OdataId>,
    pub links: Option<ServiceRootLinks>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ServiceRootLinks {
    pub sessions: Option<OdataId>,
}

/// `SessionService`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SessionService {
    pub service_enabled: Option<bool>,
    pub sessions: Option<OdataId>,
}

/// Any resource collection.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Collection {
    pub members: Option<Vec<OdataId>>,
}

impl Collection {
    pub fn member_ids(&self) -> Vec<String> {
        self.members.iter().flatten().map(|m| m.id.clone()).collect()
    }
}

/// `ComputerSystem`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ComputerSystem {
    #[serde(rename = "@odata.id")]
    pub odata_id: Option<String>,
    #[serde(rename = "@odata.etag")]
    pub odata_etag: Option<String>,
    pub id: Option<String>,
    pub name: Option<String>,
    #[serde(rename = "UUID")]
    pub uuid: Option<String>,
    pub manufacturer: Option<String>,
    pub model: Option<String>,
    pub serial_number: Option<String>,
    pub power_state: Option<String>,
    pub boot: Option<Boot>,
    pub processor_summary: Option<ProcessorSummary>,
    pub memory_summary: Option<MemorySummary>,
    pub actions: Option<SystemActions>,
    pub virtual_media: Option<OdataId>,
    pub ethernet_interfaces: Option<OdataId>,
    pub storage: Option<OdataId>,
    pub simple_storage: Option<OdataId>,
    pub processors: Option<OdataId>,
    pub links: Option<SystemLinks>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Boot {
    pub boot_source_override_target: Option<String>,
    pub boot_source_override_enabled: Option<String>,
    pub boot_source_override_mode: Option<String>,
    #[serde(rename = "BootSourceOverrideTarget@Redfish.AllowableValues")]
    pub allowed_targets: Option<Vec<String>>,
    #[serde(rename = "BootSourceOverrideMode@Redfish.AllowableValues")]
    pub allowed_modes: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ProcessorSummary {
    pub count: Option<u32>,
    pub model: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct MemorySummary {
    #[serde(rename = "TotalSystemMemoryGiB")]
    pub total_system_memory_gib: Option<f64>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct SystemActions {
    #[serde(rename = "#ComputerSystem.Reset")]
    pub reset: Option<ResetAction>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ResetAction {
    pub target: Option<String>,
    #[serde(rename = "ResetType@Redfish.AllowableValues")]
    pub allowed: Option<Vec<String>>,
    #[serde(rename = "@Redfish.ActionInfo")]
    pub action_info: Option<String>,
}

/// `ActionInfo` (DSP0268): the parameters an action takes and their allowable values.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ActionInfo {
    pub parameters: Option<Vec<ActionParameter>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct ActionParameter {
    pub name: Option<String>,
    pub allowable_values: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SystemLinks {
    pub managed_by: Option<Vec<OdataId>>,
}

/// `Manager`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Manager {
    pub virtual_media: Option<OdataId>,
}

/// `VirtualMedia`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct VirtualMedia {
    #[serde(rename = "@odata.id")]
    pub odata_id: Option<String>,
    pub id: Option<String>,
    pub media_types: Option<Vec<String>>,
    pub image: Option<String>,
    pub inserted: Option<bool>,
    pub actions: Option<VirtualMediaActions>,
}

impl VirtualMedia {
    pub fn is_cd(&self) -> bool {
        self.media_types.iter().flatten().any(|t| t == "CD" || t == "DVD")
    }

    pub fn is_inserted(&self) -> bool {
        self.inserted
            .unwrap_or_else(|| self.image.as_deref().is_some_and(|i| !i.is_empty()))
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct VirtualMediaActions {
    #[serde(rename = "#VirtualMedia.InsertMedia")]
    pub insert: Option<ActionTarget>,
    #[serde(rename = "#VirtualMedia.EjectMedia")]
    pub eject: Option<ActionTarget>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ActionTarget {
    pub target: Option<String>,
}

/// `EthernetInterface`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct EthernetInterface {
    #[serde(rename = "MACAddress")]
    pub mac_address: Option<String>,
    #[serde(rename = "PermanentMACAddress")]
    pub permanent_mac_address: Option<String>,
}

/// `Processor`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Processor {
    pub model: Option<String>,
    pub processor_type: Option<String>,
}

/// `Storage`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Storage {
    pub drives: Option<Vec<OdataId>>,
}

/// `Drive`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Drive {
    pub id: Option<String>,
    pub name: Option<String>,
    pub capacity_bytes: Option<u64>,
}

/// `SimpleStorage` (deprecated but still common).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SimpleStorage {
    pub devices: Option<Vec<SimpleStorageDevice>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct SimpleStorageDevice {
    pub name: Option<String>,
    pub capacity_bytes: Option<u64>,
}

/// `Task`, as a task monitor returns it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Task {
    pub task_state: Option<String>,
    pub task_status: Option<String>,
    pub messages: Option<Vec<Message>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub struct Message {
    pub message_id: Option<String>,
    pub message: Option<String>,
}

/// The error body of DSP0266 section 9.6 (`{"error": {"code", "message", "@Message.ExtendedInfo": [...]}}`).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub error: Option<ErrorDetail>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorDetail {
    pub code: Option<String>,
    pub message: Option<String>,
    #[serde(rename = "@Message.ExtendedInfo")]
    pub extended_info: Option<Vec<Message>>,
}

impl ErrorBody {
    /// One line: the message and every extended-info message with its id, e.g.
    /// `"Invalid boot target; Base.1.8.PropertyValueNotInList: The value Floppy is not allowed"`.
    pub fn summary(&self) -> Option<String> {
        let detail = self.error.as_ref()?;
        let mut parts: Vec<String> = detail.message.iter().cloned().collect();
        for info in detail.extended_info.iter().flatten() {
            match (&info.message_id, &info.message) {
                (Some(id), Some(m)) => parts.push(format!("{id}: {m}")),
                (None, Some(m)) => parts.push(m.clone()),
                (Some(id), None) => parts.push(id.clone()),
                (None, None) => {}
            }
        }
        if parts.is_empty() {
            detail.code.clone()
        } else {
            Some(parts.join("; "))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_with_nulls_and_extras() {
        let json = r##"{
            "@odata.id": "/redfish/v1/Systems/1", "Id": "1", "UUID": null, "PowerState": "On",
            "Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe","Hdd"]},
            "ProcessorSummary": {"Count": 2, "Model": null}, "MemorySummary": {"TotalSystemMemoryGiB": 1.5},
            "Actions": {"#ComputerSystem.Reset": {"target": "/r", "ResetType@Redfish.AllowableValues": ["On"]}},
            "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/BMC"}]}, "Oem": {"x": 1}
        }"##;
        let s: ComputerSystem = serde_json::from_str(json).unwrap();
        assert_eq!(s.power_state.as_deref(), Some("On"));
        assert_eq!(s.boot.unwrap().allowed_targets.unwrap(), ["Pxe", "Hdd"]);
        assert_eq!(s.processor_summary.unwrap().count, Some(2));
        assert_eq!(s.actions.unwrap().reset.unwrap().allowed.unwrap(), ["On"]);
        assert_eq!(s.links.unwrap().managed_by.unwrap()[0].id, "/redfish/v1/Managers/BMC");
    }

    #[test]
    fn error_summary_includes_extended_info() {
        let json = r#"{"error": {"code": "Base.1.8.GeneralError", "message": "A general error has occurred.",
            "@Message.ExtendedInfo": [{"MessageId": "Base.1.8.PropertyValueNotInList", "Message": "Floppy is not allowed"}]}}"#;
        let e: ErrorBody = serde_json::from_str(json).unwrap();
        assert_eq!(
            e.summary().unwrap(),
            "A general error has occurred.; Base.1.8.PropertyValueNotInList: Floppy is not allowed"
        );
    }
}
