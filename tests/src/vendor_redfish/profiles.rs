//! The profiles: the BMC families, where each keeps its resources and which values and requests it accepts.

/// The BMC families the emulator plays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Profile {
    /// Dell iDRAC9 on 3.x firmware: BootSourceOverrideMode read-only (SYS410), 8 sessions (RAC0218), SYS518 right
    /// after a power action, VirtualMedia under the Manager with actions.
    Idrac9,
    /// HPE iLO 4 (Gen9): ids ending in `/`, paths in any case, a plain BootSourceOverrideSupported list, no
    /// BootSourceOverrideMode, no GracefulShutdown, VirtualMedia by PATCH only (Inserted not writable), errors
    /// with only MessageId/MessageArgs, InvalidOperationForSystemState right after a power action.
    Ilo4,
    /// HPE iLO 5 1.x (Gen10): as iLO 4, with AllowableValues and a read-only BootSourceOverrideMode.
    Ilo5,
    /// Lenovo XCC: 428 without If-Match, no Continuous override, VirtualMedia (EXT1) by PATCH only.
    Xcc,
    /// Supermicro X12: Cd and UsbCd offered (only UsbCd boots the virtual CD), InsertMedia refuses Inserted and
    /// WriteProtected, ResetType from an ActionInfo.
    SupermicroX12,
    /// AMI MegaRAC as Gigabyte ships it: weak ETags only, 428 without If-Match, an inline ResetType list with two
    /// names glued together and an ActionInfo that disagrees with it, 503 for a full session table.
    AmiGigabyte,
    /// The DMTF public-rackmount1 mockup: VirtualMedia under the System (PATCH), no UefiHttp, paths minding case.
    DmtfMockup,
}

pub const ALL: [Profile; 7] = [
    Profile::Idrac9,
    Profile::Ilo4,
    Profile::Ilo5,
    Profile::Xcc,
    Profile::SupermicroX12,
    Profile::AmiGigabyte,
    Profile::DmtfMockup,
];

/// How a profile answers `If-Match` with the weak form of its own weak ETag.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WeakIfMatch {
    /// Takes it as it was served.
    Accept,
    /// 412, but takes the strong form (what sushy's weak-to-strong retry is for).
    RequireStrong,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum EtagStyle {
    None,
    Strong,
    Weak,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ErrorStyle {
    /// DSP0266: `error.message` and `@Message.ExtendedInfo` entries with a `Message`.
    Standard,
    /// HPE: a placeholder message; the entries carry only `MessageId` and `MessageArgs`.
    Hpe,
}

/// How a full session table is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SessionFull {
    /// Dell: 400 with RAC0218.
    Rac0218,
    /// 503 with the DMTF SessionLimitExceeded message.
    Unavailable,
}

/// Where a profile keeps things (paths without trailing slashes).
#[derive(Debug, Clone)]
pub struct Layout {
    pub system: &'static str,
    pub manager: &'static str,
    pub media_collection: &'static str,
    /// The CD slot kiln should use, and other slots (id, media types).
    pub cd: &'static str,
    pub other_media: &'static [(&'static str, &'static [&'static str])],
    pub media_actions: bool,
    pub sessions: &'static str,
    pub trailing_slash: bool,
    pub case_insensitive: bool,
    pub mac: &'static str,
}

pub fn layout(profile: Profile) -> Layout {
    match profile {
        Profile::Idrac9 => Layout {
            system: "/redfish/v1/Systems/System.Embedded.1",
            manager: "/redfish/v1/Managers/iDRAC.Embedded.1",
            media_collection: "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia",
            cd: "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/CD",
            other_media: &[(
                "/redfish/v1/Managers/iDRAC.Embedded.1/VirtualMedia/RemovableDisk",
                &["USBStick"],
            )],
            media_actions: true,
            sessions: "/redfish/v1/SessionService/Sessions",
            trailing_slash: false,
            case_insensitive: false,
            mac: "b0:26:28:00:00:01",
        },
        Profile::Ilo4 | Profile::Ilo5 => Layout {
            system: "/redfish/v1/Systems/1",
            manager: "/redfish/v1/Managers/1",
            media_collection: "/redfish/v1/Managers/1/VirtualMedia",
            cd: "/redfish/v1/Managers/1/VirtualMedia/2",
            other_media: &[("/redfish/v1/Managers/1/VirtualMedia/1", &["Floppy", "USBStick"])],
            media_actions: false,
            sessions: "/redfish/v1/SessionService/Sessions",
            trailing_slash: true,
            case_insensitive: true,
            mac: if profile == Profile::Ilo4 {
                "ec:b1:d7:00:00:04"
            } else {
                "94:40:c9:00:00:05"
            },
        },
        Profile::Xcc => Layout {
            system: "/redfish/v1/Systems/1",
            manager: "/redfish/v1/Managers/1",
            media_collection: "/redfish/v1/Managers/1/VirtualMedia",
            cd: "/redfish/v1/Managers/1/VirtualMedia/EXT1",
            other_media: &[("/redfish/v1/Managers/1/VirtualMedia/EXT2", &["CD", "DVD"])],
            media_actions: false,
            sessions: "/redfish/v1/SessionService/Sessions",
            trailing_slash: false,
            case_insensitive: false,
            mac: "08:94:ef:00:00:0c",
        },
        Profile::SupermicroX12 => Layout {
            system: "/redfish/v1/Systems/1",
            manager: "/redfish/v1/Managers/1",
            media_collection: "/redfish/v1/Managers/1/VirtualMedia",
            cd: "/redfish/v1/Managers/1/VirtualMedia/CD1",
            other_media: &[("/redfish/v1/Managers/1/VirtualMedia/USB1", &["USBStick"])],
            media_actions: true,
            sessions: "/redfish/v1/SessionService/Sessions",
            trailing_slash: false,
            case_insensitive: false,
            mac: "3c:ec:ef:00:00:12",
        },
        Profile::AmiGigabyte => Layout {
            system: "/redfish/v1/Systems/Self",
            manager: "/redfish/v1/Managers/Self",
            media_collection: "/redfish/v1/Managers/Self/VirtualMedia",
            cd: "/redfish/v1/Managers/Self/VirtualMedia/CD1",
            other_media: &[],
            media_actions: true,
            sessions: "/redfish/v1/SessionService/Sessions",
            trailing_slash: false,
            case_insensitive: false,
            mac: "18:c0:4d:00:00:0a",
        },
        Profile::DmtfMockup => Layout {
            system: "/redfish/v1/Systems/437XR1138R2",
            manager: "/redfish/v1/Managers/BMC",
            media_collection: "/redfish/v1/Systems/437XR1138R2/VirtualMedia",
            cd: "/redfish/v1/Systems/437XR1138R2/VirtualMedia/CD1",
            other_media: &[(
                "/redfish/v1/Systems/437XR1138R2/VirtualMedia/Floppy1",
                &["Floppy", "USBStick"],
            )],
            media_actions: false,
            sessions: "/redfish/v1/SessionService/Sessions",
            trailing_slash: false,
            case_insensitive: false,
            mac: "12:44:6a:3b:04:11",
        },
    }
}

pub(super) fn etag_style(profile: Profile) -> EtagStyle {
    match profile {
        Profile::Ilo4 | Profile::Ilo5 | Profile::AmiGigabyte => EtagStyle::Weak,
        Profile::Idrac9 | Profile::Xcc | Profile::SupermicroX12 => EtagStyle::Strong,
        Profile::DmtfMockup => EtagStyle::None,
    }
}

pub(super) fn error_style(profile: Profile) -> ErrorStyle {
    match profile {
        Profile::Ilo4 | Profile::Ilo5 => ErrorStyle::Hpe,
        _ => ErrorStyle::Standard,
    }
}

pub(super) fn requires_if_match(profile: Profile) -> bool {
    matches!(profile, Profile::Xcc | Profile::AmiGigabyte)
}

pub(super) fn boot_mode_read_only(profile: Profile) -> bool {
    matches!(profile, Profile::Ilo5 | Profile::Idrac9)
}

/// The ResetTypes the BMC really accepts.
pub fn reset_types(profile: Profile) -> &'static [&'static str] {
    match profile {
        Profile::Idrac9 => &[
            "On",
            "ForceOff",
            "ForceRestart",
            "GracefulRestart",
            "GracefulShutdown",
            "PushPowerButton",
            "Nmi",
            "PowerCycle",
        ],
        Profile::Ilo4 | Profile::Ilo5 => &["On", "ForceOff", "ForceRestart", "Nmi", "PushPowerButton"],
        Profile::Xcc => &[
            "On",
            "Nmi",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceOn",
            "ForceOff",
            "ForceRestart",
        ],
        Profile::SupermicroX12 => &[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "Nmi",
            "ForceOn",
        ],
        Profile::AmiGigabyte => &[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "PowerCycle",
        ],
        Profile::DmtfMockup => &[
            "On",
            "ForceOff",
            "GracefulShutdown",
            "GracefulRestart",
            "ForceRestart",
            "Nmi",
            "ForceOn",
            "PushPowerButton",
        ],
    }
}

/// The boot targets the BMC accepts.
pub fn boot_targets(profile: Profile) -> &'static [&'static str] {
    match profile {
        Profile::Idrac9 => &[
            "None",
            "Pxe",
            "Floppy",
            "Cd",
            "Hdd",
            "BiosSetup",
            "Utilities",
            "UefiTarget",
            "SDCard",
            "UefiHttp",
        ],
        Profile::Ilo4 => &[
            "None",
            "Cd",
            "Hdd",
            "Usb",
            "Utilities",
            "Diags",
            "BiosSetup",
            "Pxe",
            "UefiShell",
            "UefiTarget",
        ],
        Profile::Ilo5 => &[
            "None",
            "Cd",
            "Hdd",
            "Usb",
            "SDCard",
            "Utilities",
            "Diags",
            "BiosSetup",
            "Pxe",
            "UefiShell",
            "UefiHttp",
            "UefiTarget",
        ],
        Profile::Xcc => &["None", "Pxe", "Cd", "Usb", "Hdd", "BiosSetup", "Diags", "UefiTarget"],
        Profile::SupermicroX12 => &[
            "None",
            "Pxe",
            "Floppy",
            "Cd",
            "Usb",
            "Hdd",
            "BiosSetup",
            "UsbCd",
            "UefiBootNext",
            "UefiHttp",
        ],
        Profile::AmiGigabyte => &["None", "Pxe", "Cd", "Usb", "Hdd", "BiosSetup", "UefiHttp"],
        Profile::DmtfMockup => &[
            "None",
            "Pxe",
            "Cd",
            "Usb",
            "Hdd",
            "BiosSetup",
            "Utilities",
            "Diags",
            "SDCard",
            "UefiTarget",
        ],
    }
}

pub(super) fn enabled_values(profile: Profile) -> &'static [&'static str] {
    match profile {
        Profile::Xcc => &["Disabled", "Once"],
        _ => &["Once", "Continuous", "Disabled"],
    }
}
