//! Pure decisions about what real BMCs accept, kept apart from the I/O so that each is a table in the tests: which
//! ResetType list to believe, which boot target names the virtual CD, how an ETag may be re-sent, and which
//! refusals mean "later" rather than "no". Nothing here sends a request or logs.
//!
//! The behaviours follow OpenStack sushy and Ironic's Redfish driver, which met these BMCs first.

use crate::types::PowerState;

/// Every `ResetType` DSP0268 defines (ComputerSystem.Reset, Resource.ResetType).
const RESET_TYPES: &[&str] = &[
    "On",
    "ForceOff",
    "GracefulShutdown",
    "GracefulRestart",
    "ForceRestart",
    "Nmi",
    "ForceOn",
    "PushPowerButton",
    "PowerCycle",
    "Suspend",
    "Pause",
    "Resume",
    "FullPowerCycle",
];

/// Where the list of allowed ResetTypes came from, for the log line that says which one kiln believed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ResetSource {
    /// The action's `@Redfish.ActionInfo` resource (DSP0266 section 6.5.3): the authoritative list.
    ActionInfo,
    /// `ResetType@Redfish.AllowableValues` inline in the action.
    Inline,
    /// Neither is usable: every ResetType is tried, the next one when the BMC refuses a value.
    Unknown,
}

/// The ResetTypes to believe. The ActionInfo wins over an inline list that disagrees with it (some firmware
/// leaves the inline annotation stale); an inline list with a value that is no ResetType at all (AMI firmware
/// has sent `"GracefulShutdownGracefulRestart"`, two names glued together) is not trusted in any part.
pub(crate) fn reset_types(
    inline: Option<&[String]>,
    action_info: Option<&[String]>,
) -> (Option<Vec<String>>, ResetSource) {
    let well_formed = |list: &[String]| list.iter().all(|v| RESET_TYPES.contains(&v.as_str()));
    if let Some(info) = action_info.filter(|l| !l.is_empty() && well_formed(l)) {
        return (Some(info.to_vec()), ResetSource::ActionInfo);
    }
    match inline {
        Some(list) if !list.is_empty() && well_formed(list) => (Some(list.to_vec()), ResetSource::Inline),
        _ => (None, ResetSource::Unknown),
    }
}

/// How kiln switches a host off gracefully, given the ResetTypes the BMC allows (`None`: it does not say).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GracefulOff {
    /// `GracefulShutdown`: the OS is asked to shut down (ACPI).
    Shutdown,
    /// `PushPowerButton`: a short press, which the OS also sees as a shutdown request. HPE iLO 4 and iLO 5 before
    /// 2.x offer no GracefulShutdown; this is what HPE's own tools and Foreman use there.
    PowerButton,
    /// Neither is offered: the power is cut (and the caller is told so in the log).
    ForceOnly,
}

pub(crate) fn graceful_off(allowed: Option<&[String]>) -> GracefulOff {
    let allows = |t: &str| allowed.is_none_or(|a| a.iter().any(|x| x == t));
    if allows("GracefulShutdown") {
        GracefulOff::Shutdown
    } else if allows("PushPowerButton") {
        GracefulOff::PowerButton
    } else {
        GracefulOff::ForceOnly
    }
}

/// A Redfish `PowerState` as kiln's.
pub(crate) fn power_state(state: &str) -> PowerState {
    match state {
        "On" => PowerState::On,
        "Off" => PowerState::Off,
        "PoweringOn" => PowerState::PoweringOn,
        "PoweringOff" => PowerState::PoweringOff,
        _ => PowerState::Unknown,
    }
}

/// The boot targets the System offers: `BootSourceOverrideTarget@Redfish.AllowableValues`, else the plain
/// `BootSourceOverrideSupported` list of HPE iLO 4 (in `Boot`, or under the System's `Oem.Hp`/`Oem.Hpe`); `None`
/// when the System says nothing (then every target is tried, as sushy does).
pub(crate) fn boot_targets(
    allowable: Option<&[String]>,
    supported: Option<&[String]>,
    oem: Option<&serde_json::Value>,
) -> Option<Vec<String>> {
    if let Some(list) = allowable.filter(|l| !l.is_empty()) {
        return Some(list.to_vec());
    }
    if let Some(list) = supported.filter(|l| !l.is_empty()) {
        return Some(list.to_vec());
    }
    let oem = oem?.as_object()?;
    ["Hpe", "Hp"].iter().find_map(|vendor| {
        let list = oem.get(*vendor)?.get("BootSourceOverrideSupported")?.as_array()?;
        let list: Vec<String> = list.iter().filter_map(|v| v.as_str().map(str::to_string)).collect();
        (!list.is_empty()).then_some(list)
    })
}

/// Supermicro models whose virtual media boots as a plain `Cd` (sushy's list).
const SUPERMICRO_CD_MODELS: &[&str] = &["ars-111gl-nhr"];

/// The `BootSourceOverrideTarget` that boots the virtual CD. Supermicro X11/X12 present the virtual media as a USB
/// CD: both `Cd` and `UsbCd` are offered, and only `UsbCd` boots it (sushy's workaround, with its exception list).
/// A BMC that offers `UsbCd` but no `Cd` gets `UsbCd` whatever its make.
pub(crate) fn virtual_cd_target(
    manufacturer: Option<&str>,
    model: Option<&str>,
    allowed: Option<&[String]>,
) -> &'static str {
    let offers = |t: &str| allowed.is_some_and(|a| a.iter().any(|x| x == t));
    if !offers("UsbCd") {
        return "Cd";
    }
    let supermicro = manufacturer.is_some_and(|m| m.trim().eq_ignore_ascii_case("supermicro"));
    let cd_model = model.is_some_and(|m| SUPERMICRO_CD_MODELS.contains(&m.trim().to_ascii_lowercase().as_str()));
    if (supermicro && !cd_model) || !offers("Cd") {
        "UsbCd"
    } else {
        "Cd"
    }
}

/// `BootSourceOverrideEnabled` for a persistent override, and whether it must be emulated: Lenovo XCC (and
/// others since DSP0268 deprecated `Continuous`) offer only `Once`. Ironic's answer, followed here: a one-time
/// override, set again before every power on.
pub(crate) fn persistent_enabled(allowed: Option<&[String]>) -> (&'static str, bool) {
    match allowed {
        Some(list) if !list.is_empty() && !list.iter().any(|v| v == "Continuous") => ("Once", true),
        _ => ("Continuous", false),
    }
}

/// The strong form of a weak ETag (`W/"abc"` gives `"abc"`), which some BMCs want in `If-Match` although they
/// serve only the weak one (sushy's `_etag_handler`). `None` for a strong ETag.
pub(crate) fn strong_etag(etag: &str) -> Option<String> {
    let rest = etag.trim().strip_prefix("W/")?;
    Some(if rest.starts_with('"') {
        rest.to_string()
    } else {
        format!("\"{rest}\"")
    })
}

/// Whether a refusal means "the previous power action has not settled yet, ask again shortly": HPE iLO's
/// `InvalidOperationForSystemState` right after a reset, Dell iDRAC's `SYS518` ("iDRAC is not ready"). sushy
/// retries both.
pub(crate) fn is_not_ready(status: u16, message: &str) -> bool {
    matches!(status, 400 | 409 | 503)
        && (message.contains("InvalidOperationForSystemState") || message.contains("SYS518"))
}

/// Whether a refused session login means the session table is full (not wrong credentials): a 503, the DMTF
/// `SessionLimitExceeded` message, iDRAC's `RAC0218` ("The maximum number of user sessions is reached"), iLO's
/// `CreateLimitReachedForResource`, or a message about a maximum number of sessions.
pub(crate) fn is_session_limit(status: u16, message: &str) -> bool {
    if status == 503 {
        return true;
    }
    if !matches!(status, 400 | 403 | 409 | 429) {
        return false;
    }
    let lower = message.to_ascii_lowercase();
    ["SessionLimitExceeded", "RAC0218", "CreateLimitReachedForResource"]
        .iter()
        .any(|id| message.contains(id))
        || (lower.contains("session") && (lower.contains("maximum") || lower.contains("limit")))
}

/// Whether a 400 refuses an optional parameter or property (Supermicro X11/X12 refuse `Inserted` and
/// `WriteProtected` in InsertMedia with `ActionParameterNotSupported`; iLO calls `Inserted` not writable): the
/// request is worth sending again with only what is required.
pub(crate) fn is_optional_parameter_refused(status: u16, message: &str) -> bool {
    status == 400
        && [
            "ActionParameterNotSupported",
            "ActionParameterUnknown",
            "PropertyNotWritable",
            "PropertyUnknown",
        ]
        .iter()
        .any(|id| message.contains(id))
}

/// Whether a 400 refuses the value itself (a ResetType or boot setting the BMC does not offer), as opposed to the
/// request being malformed or the moment being wrong.
pub(crate) fn is_value_refused(status: u16, message: &str) -> bool {
    status == 400
        && [
            "ActionParameterValueNotInList",
            "PropertyValueNotInList",
            "ActionParameterNotSupported",
            "ActionNotSupported",
            "PropertyValueFormatError",
            "ActionParameterValueFormatError",
        ]
        .iter()
        .any(|id| message.contains(id))
}

/// Whether a refused boot-override PATCH was about `BootSourceOverrideMode` being read-only (HPE iLO 5's
/// `PropertyNotWritableOrUnknown`, older iDRAC's `SYS410`).
pub(crate) fn is_boot_mode_refused(status: u16, message: &str) -> bool {
    status == 400
        && ["BootSourceOverrideMode", "NotWritable", "SYS410"]
            .iter()
            .any(|m| message.contains(m))
}

/// `base` and `tail` joined by exactly one `/`: member ids ending in `/` (HPE iLO) must not make `//Actions/...`.
pub(crate) fn join(base: &str, tail: &str) -> String {
    format!("{}/{}", base.trim_end_matches('/'), tail.trim_start_matches('/'))
}

/// Whether two resource paths name the same resource on a BMC that ignores case and trailing slashes (iLO
/// answers `/redfish/v1/systems/1` for `/redfish/v1/Systems/1/`).
pub(crate) fn same_resource(a: &str, b: &str) -> bool {
    a.trim_end_matches('/').eq_ignore_ascii_case(b.trim_end_matches('/'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn which_reset_list_is_believed() {
        let inline = strings(&["On", "ForceOff", "GracefulShutdown"]);
        let info = strings(&["On", "ForceOff", "PushPowerButton", "PowerCycle"]);
        let glued = strings(&["On", "ForceOff", "GracefulShutdownGracefulRestart"]);
        type List<'a> = Option<&'a [String]>;
        let cases: &[(List, List, List, ResetSource)] = &[
            (Some(&inline), None, Some(&inline), ResetSource::Inline),
            (Some(&inline), Some(&info), Some(&info), ResetSource::ActionInfo),
            (None, Some(&info), Some(&info), ResetSource::ActionInfo),
            (Some(&glued), None, None, ResetSource::Unknown),
            (Some(&glued), Some(&info), Some(&info), ResetSource::ActionInfo),
            // A malformed ActionInfo falls back to a good inline list.
            (Some(&inline), Some(&glued), Some(&inline), ResetSource::Inline),
            (Some(&[]), None, None, ResetSource::Unknown),
            (None, None, None, ResetSource::Unknown),
        ];
        for (inline, info, want, source) in cases {
            let (got, from) = reset_types(*inline, *info);
            assert_eq!(got.as_deref(), *want, "{inline:?} {info:?}");
            assert_eq!(&from, source, "{inline:?} {info:?}");
        }
    }

    #[test]
    fn graceful_off_path() {
        let ilo4 = strings(&["On", "ForceOff", "ForceRestart", "Nmi", "PushPowerButton"]);
        let dmtf = strings(&["On", "ForceOff", "GracefulShutdown", "PushPowerButton"]);
        let bare = strings(&["On", "ForceOff"]);
        assert_eq!(graceful_off(Some(&ilo4)), GracefulOff::PowerButton);
        assert_eq!(graceful_off(Some(&dmtf)), GracefulOff::Shutdown);
        assert_eq!(graceful_off(Some(&bare)), GracefulOff::ForceOnly);
        assert_eq!(graceful_off(None), GracefulOff::Shutdown);
    }

    #[test]
    fn power_states() {
        for (redfish, kiln) in [
            ("On", PowerState::On),
            ("Off", PowerState::Off),
            ("PoweringOn", PowerState::PoweringOn),
            ("PoweringOff", PowerState::PoweringOff),
            ("Paused", PowerState::Unknown),
            ("", PowerState::Unknown),
        ] {
            assert_eq!(power_state(redfish), kiln, "{redfish}");
        }
    }

    #[test]
    fn boot_target_lists() {
        let allowable = strings(&["Pxe", "Hdd", "UefiHttp"]);
        let supported = strings(&["None", "Cd", "Hdd", "Pxe"]);
        assert_eq!(
            boot_targets(Some(&allowable), Some(&supported), None),
            Some(allowable.clone())
        );
        assert_eq!(boot_targets(None, Some(&supported), None), Some(supported.clone()));
        let oem = serde_json::json!({"Hp": {"BootSourceOverrideSupported": ["Pxe", "Cd"]}});
        assert_eq!(boot_targets(None, None, Some(&oem)), Some(strings(&["Pxe", "Cd"])));
        assert_eq!(boot_targets(Some(&[]), None, Some(&serde_json::json!({}))), None);
    }

    #[test]
    fn virtual_cd_targets() {
        let both = strings(&["Pxe", "Cd", "UsbCd", "Hdd"]);
        let usb_only = strings(&["Pxe", "UsbCd", "Hdd"]);
        let cd_only = strings(&["Pxe", "Cd"]);
        type Case<'a> = (Option<&'a str>, Option<&'a str>, Option<&'a [String]>, &'a str);
        let cases: &[Case] = &[
            (Some("Supermicro"), Some("X12DPG-QT6"), Some(&both), "UsbCd"),
            (Some("Supermicro"), Some("ARS-111GL-NHR"), Some(&both), "Cd"),
            (Some("Supermicro"), Some("X11SPi"), Some(&cd_only), "Cd"),
            (Some("Dell Inc."), Some("PowerEdge R650"), Some(&both), "Cd"),
            (Some("Contoso"), None, Some(&usb_only), "UsbCd"),
            (Some("Supermicro"), None, None, "Cd"),
        ];
        for (make, model, allowed, want) in cases {
            assert_eq!(virtual_cd_target(*make, *model, *allowed), *want, "{make:?} {model:?}");
        }
    }

    #[test]
    fn persistent_override() {
        assert_eq!(persistent_enabled(None), ("Continuous", false));
        assert_eq!(
            persistent_enabled(Some(&strings(&["Once", "Continuous", "Disabled"]))),
            ("Continuous", false)
        );
        assert_eq!(
            persistent_enabled(Some(&strings(&["Disabled", "Once"]))),
            ("Once", true)
        );
    }

    #[test]
    fn etag_forms() {
        assert_eq!(strong_etag("W/\"1700000001\"").as_deref(), Some("\"1700000001\""));
        assert_eq!(strong_etag("W/abc").as_deref(), Some("\"abc\""));
        assert_eq!(strong_etag("\"abc\""), None);
    }

    #[test]
    fn refusal_classes() {
        let ilo = "iLO.2.15.InvalidOperationForSystemState";
        assert!(is_not_ready(400, ilo));
        assert!(is_not_ready(400, "IDRAC.2.8.SYS518: iDRAC is not ready."));
        assert!(!is_not_ready(404, ilo));
        assert!(!is_not_ready(400, "Base.1.8.PropertyValueNotInList"));

        assert!(is_session_limit(503, ""));
        assert!(is_session_limit(
            400,
            "IDRAC.2.8.RAC0218: The maximum number of user sessions is reached."
        ));
        assert!(is_session_limit(400, "Base.1.12.SessionLimitExceeded"));
        assert!(is_session_limit(403, "Too many sessions: the session limit is 8"));
        assert!(!is_session_limit(401, "Base.1.8.NoValidSession: maximum session count"));
        assert!(!is_session_limit(400, "Base.1.8.PropertyMissing: UserName"));

        assert!(is_optional_parameter_refused(
            400,
            "Base.1.10.ActionParameterNotSupported: The parameter Inserted is not supported"
        ));
        assert!(is_optional_parameter_refused(
            400,
            "iLO.2.15.PropertyNotWritableOrUnknown [Inserted]"
        ));
        assert!(!is_optional_parameter_refused(500, "ActionParameterNotSupported"));

        assert!(is_value_refused(400, "Base.1.8.ActionParameterValueNotInList"));
        assert!(!is_value_refused(400, ilo));

        assert!(is_boot_mode_refused(
            400,
            "iLO.2.15.PropertyNotWritableOrUnknown [BootSourceOverrideMode]"
        ));
        assert!(is_boot_mode_refused(400, "IDRAC.2.1.SYS410: read-only"));
        assert!(!is_boot_mode_refused(400, "Base.1.8.PropertyValueNotInList"));
    }

    #[test]
    fn paths() {
        assert_eq!(
            join("/redfish/v1/Systems/1/", "Actions/ComputerSystem.Reset"),
            "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset"
        );
        assert_eq!(join("/a", "/b"), "/a/b");
        assert!(same_resource("/redfish/v1/systems/1", "/redfish/v1/Systems/1/"));
        assert!(!same_resource("/redfish/v1/Systems/1", "/redfish/v1/Systems/10"));
    }
}
