//! The resources as each profile shapes them (after public recorded payloads; values invented).

use serde_json::{Value, json};

use super::Emu;
use super::profiles::{Profile, boot_targets, enabled_values, reset_types};

pub(super) fn collection(m: &Emu, path: &str, members: &[&str]) -> Value {
    let members: Vec<Value> = members.iter().map(|id| json!({"@odata.id": m.id(id)})).collect();
    json!({"@odata.id": m.id(path), "Members@odata.count": members.len(), "Members": members})
}

pub(super) fn service_root(m: &Emu) -> Value {
    let (vendor, product) = match m.profile {
        Profile::Idrac9 => ("Dell", "Integrated Dell Remote Access Controller"),
        Profile::Ilo4 => ("HPE", "ProLiant BL460c Gen9"),
        Profile::Ilo5 => ("HPE", "ProLiant DL360 Gen10"),
        Profile::Xcc => ("Lenovo", "ThinkSystem SR650"),
        Profile::SupermicroX12 => ("Supermicro", "X12DPi-NT6"),
        Profile::AmiGigabyte => ("AMI", "AMI Redfish Server"),
        Profile::DmtfMockup => ("Contoso", "UR99 1U Server"),
    };
    let l = m.layout();
    json!({
        "@odata.id": "/redfish/v1/", "@odata.type": "#ServiceRoot.v1_5_0.ServiceRoot", "Id": "RootService",
        "RedfishVersion": if m.profile == Profile::Ilo4 { "1.0.0" } else { "1.11.0" },
        "Vendor": vendor, "Product": product, "UUID": "92384634-2938-2342-8820-489239905423",
        "Systems": {"@odata.id": m.id("/redfish/v1/Systems")},
        "Managers": {"@odata.id": m.id("/redfish/v1/Managers")},
        "SessionService": {"@odata.id": m.id("/redfish/v1/SessionService")},
        "Links": {"Sessions": {"@odata.id": m.id(l.sessions)}}
    })
}

pub(super) fn system_json(m: &Emu) -> Value {
    let l = m.layout();
    let sys = l.system;
    let (manufacturer, model, serial) = match m.profile {
        Profile::Idrac9 => ("Dell Inc.", "PowerEdge R640", "CN7016300000"),
        Profile::Ilo4 => ("HPE", "ProLiant BL460c Gen9", "CZ3600000A"),
        Profile::Ilo5 => ("HPE", "ProLiant DL360 Gen10", "MXQ90000B"),
        Profile::Xcc => ("Lenovo", "ThinkSystem SR650", "J300000C"),
        Profile::SupermicroX12 => ("Supermicro", "X12DPi-NT6", "S4000000D"),
        Profile::AmiGigabyte => ("GIGABYTE", "R282-Z90-00", "GJG0000E"),
        Profile::DmtfMockup => ("Contoso", "3500", "437XR1138R2"),
    };
    let mut boot = json!({
        "BootSourceOverrideEnabled": m.boot_enabled,
        "BootSourceOverrideTarget": m.boot_target,
    });
    if m.profile == Profile::Ilo4 {
        boot["BootSourceOverrideSupported"] = json!(boot_targets(m.profile));
        boot["UefiTargetBootSourceOverride"] = json!("None");
    } else {
        boot["BootSourceOverrideTarget@Redfish.AllowableValues"] = json!(boot_targets(m.profile));
    }
    if let Some(mode) = &m.boot_mode {
        boot["BootSourceOverrideMode"] = json!(mode);
    }
    if m.advertise_enabled_values && matches!(m.profile, Profile::Idrac9 | Profile::Xcc | Profile::SupermicroX12) {
        boot["BootSourceOverrideEnabled@Redfish.AllowableValues"] = json!(enabled_values(m.profile));
    }
    let reset_target = m.id(&format!("{sys}/Actions/ComputerSystem.Reset"));
    let reset = match m.profile {
        Profile::SupermicroX12 if m.action_info => json!({"target": reset_target,
            "@Redfish.ActionInfo": m.id(&format!("{sys}/ResetActionInfo"))}),
        // AMI: the inline annotation is stale and malformed; the ActionInfo is what the BMC goes by.
        Profile::AmiGigabyte => {
            let mut v = json!({"target": reset_target,
                "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "GracefulShutdownGracefulRestart", "ForceRestart"]});
            if m.action_info {
                v["@Redfish.ActionInfo"] = json!(m.id(&format!("{sys}/ResetActionInfo")));
            }
            v
        }
        _ => json!({"target": reset_target, "ResetType@Redfish.AllowableValues": reset_types(m.profile)}),
    };
    let mut reset = reset;
    if !m.reset_target
        && let Some(o) = reset.as_object_mut()
    {
        o.remove("target");
    }
    let mut v = json!({
        "@odata.id": m.id(sys),
        "@odata.type": match m.profile {
            Profile::Ilo4 => "#ComputerSystem.1.0.1.ComputerSystem",
            Profile::Ilo5 => "#ComputerSystem.v1_4_0.ComputerSystem",
            _ => "#ComputerSystem.v1_13_0.ComputerSystem",
        },
        "Id": sys.rsplit('/').next().unwrap_or_default(),
        "Name": "System",
        "SystemType": "Physical",
        "Manufacturer": manufacturer,
        "Model": model,
        "SerialNumber": serial,
        "UUID": "4c4c4544-0047-3110-8036-b4c04f000001",
        "PowerState": m.power,
        "Status": {"State": "Enabled", "Health": "OK"},
        "ProcessorSummary": {"Count": 2, "Model": "Intel(R) Xeon(R) Gold 6230 CPU @ 2.10GHz"},
        "MemorySummary": {"TotalSystemMemoryGiB": 192},
        "Boot": boot,
        "EthernetInterfaces": {"@odata.id": m.id(&format!("{sys}/EthernetInterfaces"))},
        "Storage": {"@odata.id": m.id(&format!("{sys}/Storage"))},
        "Links": {"ManagedBy": [{"@odata.id": m.id(l.manager)}], "Chassis": [{"@odata.id": m.id("/redfish/v1/Chassis/1")}]},
        "Actions": {"#ComputerSystem.Reset": reset},
    });
    match m.profile {
        Profile::Ilo4 | Profile::Ilo5 => {
            let vendor = if m.profile == Profile::Ilo4 { "Hp" } else { "Hpe" };
            v["@odata.context"] = json!("/redfish/v1/$metadata#Systems/Members/$entity");
            v["@odata.etag"] = json!(m.etag_header());
            // iLO spells some of its own links in lower case.
            v["Bios"] = json!({"@odata.id": "/redfish/v1/systems/1/bios/"});
            v["Oem"] = json!({vendor: {"PostState": "FinishedPost", "PowerAutoOn": "PowerOn",
                "Actions": {format!("#{vendor}ComputerSystemExt.PowerButton"): {
                    "PushType@Redfish.AllowableValues": ["Press", "PressAndHold"],
                    "target": format!("/redfish/v1/Systems/1/Actions/Oem/{vendor}/ComputerSystemExt.PowerButton/")}}}});
        }
        Profile::Xcc => {
            v["@odata.etag"] = json!(m.etag_header());
            v["Oem"] = json!({"Lenovo": {"FrontPanelUSB": {"PortSwitchingTo": "Server"}}});
        }
        Profile::Idrac9 => {
            v["Oem"] = json!({"Dell": {"DellSystem": {"BIOSReleaseDate": "03/11/2020"}}});
        }
        Profile::DmtfMockup => {
            v["VirtualMedia"] = json!({"@odata.id": m.id(l.media_collection)});
            v["Boot"]["UefiTargetBootSourceOverride"] = json!("/0x31/0x33/0x01/0x01");
        }
        Profile::SupermicroX12 | Profile::AmiGigabyte => {}
    }
    v
}

pub(super) fn manager_json(m: &Emu) -> Value {
    let l = m.layout();
    let firmware = match m.profile {
        Profile::Idrac9 => "3.36.36.36",
        Profile::Ilo4 => "iLO 4 v2.55",
        Profile::Ilo5 => "iLO 5 v1.15",
        Profile::Xcc => "TEI392O",
        Profile::SupermicroX12 => "01.01.09",
        Profile::AmiGigabyte => "12.61.17",
        Profile::DmtfMockup => "1.00",
    };
    let mut v = json!({
        "@odata.id": m.id(l.manager), "Id": l.manager.rsplit('/').next().unwrap_or_default(),
        "ManagerType": "BMC", "FirmwareVersion": firmware,
        "Links": {"ManagerForServers": [{"@odata.id": m.id(l.system)}]},
    });
    if m.profile != Profile::DmtfMockup {
        v["VirtualMedia"] = json!({"@odata.id": m.id(l.media_collection)});
    }
    v
}

pub(super) fn media_json(m: &Emu, path: &str, types: &[&str], image: Option<String>) -> Value {
    let inserted = image.is_some();
    let mut v = json!({
        "@odata.id": m.id(path),
        "@odata.type": match m.profile {
            Profile::Ilo4 | Profile::Ilo5 => "#VirtualMedia.v1_0_0.VirtualMedia",
            Profile::Xcc => "#VirtualMedia.v1_3_0.VirtualMedia",
            _ => "#VirtualMedia.v1_6_0.VirtualMedia",
        },
        "Id": path.rsplit('/').next().unwrap_or_default(),
        "Name": "VirtualMedia",
        "MediaTypes": types,
        "Image": image.clone().unwrap_or_default(),
        "Inserted": inserted,
        "WriteProtected": true,
        "ConnectedVia": if inserted { "URI" } else { "NotConnected" },
    });
    if m.layout().media_actions {
        v["Actions"] = json!({
            "#VirtualMedia.InsertMedia": {"target": m.id(&format!("{path}/Actions/VirtualMedia.InsertMedia"))},
            "#VirtualMedia.EjectMedia": {"target": m.id(&format!("{path}/Actions/VirtualMedia.EjectMedia"))},
        });
    }
    match m.profile {
        Profile::Ilo4 | Profile::Ilo5 => {
            let vendor = if m.profile == Profile::Ilo4 { "Hp" } else { "Hpe" };
            v["@odata.etag"] = json!(m.etag_header());
            v["Oem"] = json!({vendor: {"BootOnNextServerReset": false, "Actions": {
                format!("#{vendor}iLOVirtualMedia.InsertVirtualMedia"): {
                    "target": format!("{}Actions/Oem/{vendor}/{vendor}iLOVirtualMedia.InsertVirtualMedia/", m.id(path))}}}});
        }
        Profile::Xcc => {
            v["@odata.etag"] = json!(m.etag_header());
        }
        _ => {}
    }
    v
}
