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
    /// Vendor extensions, read only for what older firmware puts there instead of standard properties.
    pub oem: Option<serde_json::Value>,
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
    #[serde(rename = "BootSourceOverrideEnabled@Redfish.AllowableValues")]
    pub allowed_enabled: Option<Vec<String>>,
    /// HPE iLO 4 (Redfish 1.0 era): the boot targets as a plain list instead of the `@Redfish.AllowableValues`
    /// annotation.
    pub boot_source_override_supported: Option<Vec<String>>,
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
    /// `URI`, `Applet` (a remote console has the drive), `NotConnected`, `Oem`.
    pub connected_via: Option<String>,
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
    /// `MessageID` in HPE iLO 4's pre-1.0 error bodies.
    #[serde(alias = "MessageID")]
    pub message_id: Option<String>,
    pub message: Option<String>,
    /// The values the message is about (a list; anything else is ignored). HPE iLO sends only `MessageId` and
    /// `MessageArgs` (no `Message`), so the property it refused is here and nowhere else.
    pub message_args: Option<serde_json::Value>,
}

impl Message {
    /// `"<id>: <message> [<args>]"`, each part only when present; `None` when the entry is empty. Arguments the
    /// message already spells out are not repeated.
    pub fn line(&self) -> Option<String> {
        let args: Vec<String> = self
            .message_args
            .as_ref()
            .and_then(|a| a.as_array())
            .into_iter()
            .flatten()
            .map(|a| match a {
                serde_json::Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .filter(|a| !a.is_empty())
            .collect();
        let text = self.message.as_deref().map(str::trim).filter(|m| !m.is_empty());
        let args = args
            .into_iter()
            .filter(|a| !text.is_some_and(|m| m.contains(a.as_str())))
            .collect::<Vec<_>>();
        let mut line = String::new();
        if let Some(id) = self.message_id.as_deref().filter(|i| !i.is_empty()) {
            line.push_str(id);
        }
        if let Some(text) = text {
            if !line.is_empty() {
                line.push_str(": ");
            }
            line.push_str(text);
        }
        if !args.is_empty() {
            if !line.is_empty() {
                line.push(' ');
            }
            line.push_str(&format!("[{}]", args.join(", ")));
        }
        (!line.is_empty()).then_some(line)
    }
}

/// One message or a list of them: some BMCs send `@Message.ExtendedInfo` as a single object.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Vec<Message>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        Many(Vec<Message>),
        One(Message),
        Other(serde::de::IgnoredAny),
    }
    Ok(match Option::<OneOrMany>::deserialize(d)? {
        Some(OneOrMany::Many(v)) => Some(v),
        Some(OneOrMany::One(m)) => Some(vec![m]),
        Some(OneOrMany::Other(_)) | None => None,
    })
}

/// The error body of DSP0266 section 9.6 (`{"error": {"code", "message", "@Message.ExtendedInfo": [...]}}`), and
/// the variants seen in the field: `@Message.ExtendedInfo` at the top level, and HPE iLO 4's pre-1.0
/// `{"Messages": [{"MessageID": ...}]}`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorBody {
    pub error: Option<ErrorDetail>,
    #[serde(rename = "@Message.ExtendedInfo", deserialize_with = "one_or_many")]
    pub extended_info: Option<Vec<Message>>,
    #[serde(rename = "Messages", deserialize_with = "one_or_many")]
    pub messages: Option<Vec<Message>>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct ErrorDetail {
    pub code: Option<String>,
    pub message: Option<String>,
    #[serde(rename = "@Message.ExtendedInfo", deserialize_with = "one_or_many")]
    pub extended_info: Option<Vec<Message>>,
}

impl ErrorBody {
    fn infos(&self) -> impl Iterator<Item = &Message> {
        let detail = self.error.as_ref().and_then(|d| d.extended_info.as_ref());
        detail
            .into_iter()
            .chain(self.extended_info.as_ref())
            .chain(self.messages.as_ref())
            .flatten()
    }

    /// One line: the message and every extended-info message with its id and arguments, e.g.
    /// `"Invalid boot target; Base.1.8.PropertyValueNotInList: The value Floppy is not allowed"` or (iLO)
    /// `"iLO.2.15.PropertyNotWritableOrUnknown [BootSourceOverrideMode]"`. HPE's placeholder message ("See
    /// @Message.ExtendedInfo for more information.") is left out when the extended info is there.
    pub fn summary(&self) -> Option<String> {
        let lines: Vec<String> = self.infos().filter_map(Message::line).collect();
        let message = self
            .error
            .as_ref()
            .and_then(|d| d.message.as_deref())
            .map(str::trim)
            .filter(|m| !m.is_empty())
            .filter(|m| lines.is_empty() || !m.starts_with("See @Message.ExtendedInfo"));
        let mut parts: Vec<String> = message.map(str::to_string).into_iter().collect();
        parts.extend(lines);
        if parts.is_empty() {
            self.error.as_ref().and_then(|d| d.code.clone())
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
    fn error_summary_variants() {
        let summary = |json: &str| serde_json::from_str::<ErrorBody>(json).unwrap().summary();
        // HPE iLO 5: no Message, the refused property only in MessageArgs.
        assert_eq!(
            summary(
                r#"{"error": {"code": "iLO.0.10.ExtendedInfo", "message": "See @Message.ExtendedInfo for more information.",
                "@Message.ExtendedInfo": [{"MessageId": "iLO.2.15.PropertyNotWritableOrUnknown", "MessageArgs": ["BootSourceOverrideMode"]}]}}"#
            )
            .unwrap(),
            "iLO.2.15.PropertyNotWritableOrUnknown [BootSourceOverrideMode]"
        );
        // Arguments the message already names are not repeated; numbers are printed as such.
        assert_eq!(
            summary(
                r#"{"error": {"@Message.ExtendedInfo": {"MessageId": "Base.1.8.PropertyValueNotInList",
                "Message": "The value Continuous for BootSourceOverrideEnabled is not allowed.", "MessageArgs": ["Continuous", "BootSourceOverrideEnabled", 3]}}}"#
            )
            .unwrap(),
            "Base.1.8.PropertyValueNotInList: The value Continuous for BootSourceOverrideEnabled is not allowed. [3]"
        );
        // iLO 4's pre-1.0 shape and a top-level @Message.ExtendedInfo.
        assert_eq!(
            summary(r#"{"Messages": [{"MessageID": "iLO.0.10.InvalidOperationForSystemState"}], "Type": "ExtendedError.1.0.0"}"#)
                .unwrap(),
            "iLO.0.10.InvalidOperationForSystemState"
        );
        assert_eq!(
            summary(
                r#"{"@Message.ExtendedInfo": [{"MessageId": "IDRAC.2.8.SYS518", "Message": "iDRAC is not ready."}]}"#
            )
            .unwrap(),
            "IDRAC.2.8.SYS518: iDRAC is not ready."
        );
        assert_eq!(
            summary(r#"{"error": {"code": "Base.1.8.GeneralError"}}"#).unwrap(),
            "Base.1.8.GeneralError"
        );
        assert_eq!(summary("{}"), None);
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
