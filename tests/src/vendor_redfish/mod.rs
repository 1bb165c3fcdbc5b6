//! A vendor-profile Redfish emulator (axum, 127.0.0.1 only): one System with its Manager, VirtualMedia and
//! SessionService, shaped like the recorded payloads of Dell iDRAC9, HPE iLO 4 and iLO 5, Lenovo XCC, Supermicro
//! X12, an AMI MegaRAC (Gigabyte) and the DMTF public-rackmount1 mockup, and ENFORCING each vendor's quirks: a
//! request the real BMC refuses is refused here with that BMC's status and error body. Every request is logged
//! (method, path, If-Match, body, status) so that tests can assert the sequence a quirk requires, and the host
//! "boots" from whatever the override and the virtual CD say when power is applied.
//!
//! The fixtures are kiln's own, written after the shapes of public samples (sushy's and proliantutils' json_samples,
//! gofish's XCC VirtualMedia, the DMTF Redfish-Mockup-Server, bmclib's recorded Systems); property values are
//! invented.
#![allow(dead_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};
use tokio::time::Instant;

mod payloads;
mod profiles;

// Not every test binary that includes `support` uses every item.
#[allow(unused_imports)]
pub use self::profiles::{ALL, Layout, Profile, WeakIfMatch, boot_targets, layout, reset_types};

use self::payloads::{collection, manager_json, media_json, service_root, system_json};
use self::profiles::{
    ErrorStyle, EtagStyle, SessionFull, boot_mode_read_only, enabled_values, error_style, etag_style, requires_if_match,
};

pub const USER: &str = "kiln";
pub const PASSWORD: &str = "Vend0r-Secret";

/// One request as the emulator saw it.
#[derive(Debug, Clone)]
pub struct Logged {
    pub method: String,
    pub path: String,
    pub if_match: Option<String>,
    pub body: Value,
    pub status: u16,
}

impl std::fmt::Display for Logged {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.method, self.path)?;
        if let Some(tag) = &self.if_match {
            write!(f, " If-Match:{tag}")?;
        }
        write!(f, " -> {}", self.status)
    }
}

/// The emulated BMC and host. Fields marked `pub` are knobs a test may turn.
#[derive(Debug)]
pub struct Emu {
    pub profile: Profile,
    origin: String,
    pub log: Vec<Logged>,
    pub power: &'static str,
    pending: Option<(&'static str, Instant)>,
    /// How long PoweringOn/PoweringOff last (zero: power changes at once).
    pub transition: Duration,
    /// Whether the OS honours GracefulShutdown and the power button.
    pub acpi: bool,
    /// After an accepted reset, further resets are refused as "not ready" for this long (iLO, iDRAC).
    pub not_ready_for: Duration,
    not_ready_until: Option<Instant>,
    pub boot_target: String,
    pub boot_enabled: String,
    pub boot_mode: Option<String>,
    /// Whether the profile lists BootSourceOverrideEnabled@Redfish.AllowableValues (XCC still refuses
    /// Continuous when told not to list them).
    pub advertise_enabled_values: bool,
    /// Whether the reset action links its ActionInfo (AMI, Supermicro).
    pub action_info: bool,
    /// Whether the reset action carries its `target` (older firmware gave only the action's name: the client
    /// builds the URL from the System's id, which ends in `/` on iLO).
    pub reset_target: bool,
    pub weak_if_match: WeakIfMatch,
    /// The next this many GETs of the System or a VirtualMedia are followed by a change by someone else (the ETag
    /// the client read is stale when it writes).
    pub concurrent_changes: u32,
    etag: u32,
    pub image: Option<String>,
    sessions: HashMap<String, u32>,
    next_session: u32,
    /// Sessions held by other clients, counting against `max_sessions`.
    pub other_sessions: usize,
    pub max_sessions: usize,
    pub resets: Vec<String>,
    /// What the host booted from each time power was applied: `pxe`, `disk`, `virtual-cd`, `default`.
    pub boots: Vec<&'static str>,
    /// Told of each boot as it happens (what it booted from, and the virtual CD's image URL), e.g. to run a
    /// simulated kiln-agent when the host network-boots.
    pub on_boot: Option<BootHook>,
}

/// A callback for each boot of the emulated host.
#[derive(Clone)]
pub struct BootHook(pub Arc<dyn Fn(&'static str, Option<String>) + Send + Sync>);

impl std::fmt::Debug for BootHook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BootHook")
    }
}

impl Emu {
    fn new(profile: Profile) -> Emu {
        let (enabled_mode, max_sessions) = match profile {
            Profile::Idrac9 => (Some("UEFI"), 8),
            Profile::Ilo4 => (None, usize::MAX),
            Profile::AmiGigabyte => (Some("UEFI"), 16),
            _ => (Some("UEFI"), usize::MAX),
        };
        Emu {
            profile,
            origin: String::new(),
            log: Vec::new(),
            power: "Off",
            pending: None,
            transition: Duration::ZERO,
            acpi: true,
            not_ready_for: match profile {
                Profile::Idrac9 | Profile::Ilo4 | Profile::Ilo5 => Duration::from_millis(150),
                _ => Duration::ZERO,
            },
            not_ready_until: None,
            boot_target: "None".into(),
            boot_enabled: "Disabled".into(),
            boot_mode: enabled_mode.map(str::to_string),
            advertise_enabled_values: true,
            action_info: matches!(profile, Profile::SupermicroX12 | Profile::AmiGigabyte),
            reset_target: true,
            weak_if_match: WeakIfMatch::Accept,
            concurrent_changes: 0,
            etag: 0x5EED,
            image: None,
            sessions: HashMap::new(),
            next_session: 0,
            other_sessions: 0,
            max_sessions,
            resets: Vec::new(),
            boots: Vec::new(),
            on_boot: None,
        }
    }

    /// The non-GET requests, as `"METHOD /path [If-Match:tag] -> status"`.
    pub fn writes(&self) -> Vec<String> {
        self.log
            .iter()
            .filter(|l| l.method != "GET")
            .map(|l| l.to_string())
            .collect()
    }

    /// The logged requests with `method` whose path contains `fragment`.
    pub fn requests(&self, method: &str, fragment: &str) -> Vec<Logged> {
        self.log
            .iter()
            .filter(|l| l.method == method && l.path.contains(fragment))
            .cloned()
            .collect()
    }

    /// Sessions of kiln's currently open.
    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// The session tokens handed out and still valid (for the checks that none reaches a log).
    pub fn tokens(&self) -> Vec<String> {
        self.sessions.keys().cloned().collect()
    }

    pub fn layout(&self) -> Layout {
        layout(self.profile)
    }

    fn id(&self, path: &str) -> String {
        if self.layout().trailing_slash {
            format!("{path}/")
        } else {
            path.to_string()
        }
    }

    fn etag_header(&self) -> Option<String> {
        match etag_style(self.profile) {
            EtagStyle::None => None,
            EtagStyle::Strong => Some(format!("\"{:x}\"", self.etag)),
            EtagStyle::Weak => Some(format!("W/\"{:x}\"", self.etag)),
        }
    }

    /// Whether `if_match` names the current version: exactly what was served (a weak one only if the profile
    /// accepts it back), or the strong form of a weak one.
    fn if_match_ok(&self, if_match: &str) -> bool {
        let Some(current) = self.etag_header() else {
            return true;
        };
        if if_match == "*" {
            return true;
        }
        let strong = current.trim_start_matches("W/");
        if if_match == strong {
            return true;
        }
        if_match == current && self.weak_if_match == WeakIfMatch::Accept
    }

    /// Lands a transition that is due.
    fn tick(&mut self) {
        if let Some((to, at)) = self.pending
            && Instant::now() >= at
        {
            self.power = to;
            self.pending = None;
        }
    }

    fn go(&mut self, to: &'static str) {
        if self.transition.is_zero() {
            self.power = to;
            self.pending = None;
        } else {
            self.power = if to == "On" { "PoweringOn" } else { "PoweringOff" };
            self.pending = Some((to, Instant::now() + self.transition));
        }
    }

    /// Power is applied: the host boots from the override (consuming a one-time one) or from its default.
    fn boot(&mut self) {
        let vm_target = if self.profile == Profile::SupermicroX12 {
            "UsbCd"
        } else {
            "Cd"
        };
        let from = match (self.boot_enabled.as_str(), self.boot_target.as_str()) {
            ("Disabled", _) | (_, "None") => "default",
            (_, "Pxe") => "pxe",
            (_, "Hdd") => "disk",
            (_, "UefiHttp") => "http",
            (_, t) if t == vm_target && self.image.is_some() => "virtual-cd",
            _ => "default",
        };
        self.boots.push(from);
        if let Some(hook) = &self.on_boot {
            (hook.0)(from, self.image.clone());
        }
        if self.boot_enabled == "Once" {
            self.boot_enabled = "Disabled".into();
            self.boot_target = "None".into();
            self.etag += 1;
        }
    }

    fn error(&self, status: StatusCode, id: &str, message: &str, args: &[&str]) -> Response {
        let body = match error_style(self.profile) {
            ErrorStyle::Standard => json!({"error": {"code": "Base.1.12.GeneralError",
                "message": "A general error has occurred. See ExtendedInfo for more information.",
                "@Message.ExtendedInfo": [{"@odata.type": "#Message.v1_1_1.Message", "MessageId": id,
                    "Message": message, "MessageArgs": args, "Severity": "Warning",
                    "Resolution": "Correct the request body and resubmit the request if the operation failed."}]}}),
            ErrorStyle::Hpe => json!({"error": {"code": "iLO.0.10.ExtendedInfo",
                "message": "See @Message.ExtendedInfo for more information.",
                "@Message.ExtendedInfo": [{"MessageId": id, "MessageArgs": args}]}}),
        };
        (status, axum::Json(body)).into_response()
    }

    fn not_ready(&self) -> Response {
        match self.profile {
            Profile::Idrac9 => self.error(
                StatusCode::BAD_REQUEST,
                "IDRAC.2.8.SYS518",
                "iDRAC is not ready. The configuration values cannot be accessed. Please retry after a few minutes.",
                &[],
            ),
            _ => self.error(
                StatusCode::BAD_REQUEST,
                "iLO.2.15.InvalidOperationForSystemState",
                "",
                &[],
            ),
        }
    }
}

pub type Shared = Arc<Mutex<Emu>>;

/// Starts the emulator of `profile` on 127.0.0.1, after `tune` has turned its knobs.
pub async fn start(profile: Profile, tune: impl FnOnce(&mut Emu)) -> (SocketAddr, Shared) {
    let mut emu = Emu::new(profile);
    tune(&mut emu);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    emu.origin = format!("http://{addr}");
    let shared: Shared = Arc::new(Mutex::new(emu));
    let app = axum::Router::new().fallback(handle).with_state(shared.clone());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, shared)
}

async fn handle(State(shared): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let mut m = shared.lock().unwrap();
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let if_match = headers
        .get("If-Match")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    m.tick();
    let response = route(&mut m, &method, uri.path(), &headers, if_match.as_deref(), &body);
    let logged = Logged {
        method: method.to_string(),
        path: uri.path().to_string(),
        if_match,
        // The login body carries the password: not kept.
        body: if body.get("Password").is_some() {
            json!({"UserName": body["UserName"]})
        } else {
            body
        },
        status: response.status().as_u16(),
    };
    m.log.push(logged);
    response
}

/// The canonical resource a request path names, or `None`: no `//` anywhere (a real BMC answers 404 there),
/// trailing slashes ignored, case ignored where the profile ignores it.
fn canonical(m: &Emu, path: &str, candidates: &[String]) -> Option<String> {
    if path.contains("//") {
        return None;
    }
    let path = path.trim_end_matches('/');
    candidates
        .iter()
        .find(|c| {
            if m.layout().case_insensitive {
                c.eq_ignore_ascii_case(path)
            } else {
                c.as_str() == path
            }
        })
        .cloned()
}

fn route(
    m: &mut Emu,
    method: &Method,
    path: &str,
    headers: &HeaderMap,
    if_match: Option<&str>,
    body: &Value,
) -> Response {
    let l = m.layout();
    let p = |s: &str| s.to_string();
    let sys = l.system;
    let mut known = vec![
        p("/redfish/v1"),
        p("/redfish/v1/SessionService"),
        p(l.sessions),
        p("/redfish/v1/Systems"),
        p(sys),
        format!("{sys}/Actions/ComputerSystem.Reset"),
        format!("{sys}/ResetActionInfo"),
        format!("{sys}/EthernetInterfaces"),
        format!("{sys}/EthernetInterfaces/1"),
        format!("{sys}/Storage"),
        format!("{sys}/Storage/1"),
        format!("{sys}/Storage/1/Drives/0"),
        p("/redfish/v1/Managers"),
        p(l.manager),
        p(l.media_collection),
        p(l.cd),
        format!("{}/Actions/VirtualMedia.InsertMedia", l.cd),
        format!("{}/Actions/VirtualMedia.EjectMedia", l.cd),
    ];
    known.extend(l.other_media.iter().map(|(id, _)| p(id)));
    let session_ids: Vec<String> = m.sessions.values().map(|id| format!("{}/{id}", l.sessions)).collect();
    known.extend(session_ids);
    let Some(resource) = canonical(m, path, &known) else {
        return m.error(
            StatusCode::NOT_FOUND,
            "Base.1.12.ResourceNotFound",
            &format!("The requested resource {path} was not found."),
            &[path],
        );
    };
    let r = resource.as_str();

    // Public: the service root and session login.
    if *method == Method::GET && r == "/redfish/v1" {
        return axum::Json(service_root(m)).into_response();
    }
    if *method == Method::POST && r == l.sessions {
        return login(m, body);
    }
    let token = headers
        .get("X-Auth-Token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    let Some(&session) = m.sessions.get(token) else {
        return m.error(
            StatusCode::UNAUTHORIZED,
            "Base.1.12.NoValidSession",
            "There is no valid session established with the implementation.",
            &[],
        );
    };
    let with_etag = |m: &Emu, v: Value| -> Response {
        match m.etag_header() {
            Some(tag) => ([("ETag", tag)], axum::Json(v)).into_response(),
            None => axum::Json(v).into_response(),
        }
    };
    match (method.clone(), r) {
        (Method::DELETE, s) if s.starts_with(&format!("{}/", l.sessions)) => {
            let id: u32 = s.rsplit('/').next().unwrap_or_default().parse().unwrap_or(0);
            if id != session {
                return m.error(
                    StatusCode::FORBIDDEN,
                    "Base.1.12.InsufficientPrivilege",
                    "not yours",
                    &[],
                );
            }
            m.sessions.retain(|_, v| *v != id);
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/redfish/v1/SessionService") => axum::Json(json!({
            "@odata.id": m.id("/redfish/v1/SessionService"), "Id": "SessionService", "ServiceEnabled": true,
            "SessionTimeout": 1800, "Sessions": {"@odata.id": m.id(l.sessions)}
        }))
        .into_response(),
        (Method::GET, "/redfish/v1/Systems") => {
            axum::Json(collection(m, "/redfish/v1/Systems", &[sys])).into_response()
        }
        (Method::GET, "/redfish/v1/Managers") => {
            axum::Json(collection(m, "/redfish/v1/Managers", &[l.manager])).into_response()
        }
        (Method::GET, s) if s == sys => {
            let v = system_json(m);
            let response = with_etag(m, v);
            concurrent_change(m);
            response
        }
        (Method::PATCH, s) if s == sys => patch_system(m, if_match, body),
        (Method::POST, s) if s == format!("{sys}/Actions/ComputerSystem.Reset") => reset(m, body),
        (Method::GET, s) if s == format!("{sys}/ResetActionInfo") && m.action_info => axum::Json(json!({
            "@odata.type": "#ActionInfo.v1_1_2.ActionInfo", "@odata.id": m.id(&format!("{sys}/ResetActionInfo")),
            "Id": "ResetActionInfo", "Name": "Reset Action Info",
            "Parameters": [{"Name": "ResetType", "Required": true, "DataType": "String",
                "AllowableValues": reset_types(m.profile)}]
        }))
        .into_response(),
        (Method::GET, s) if s == format!("{sys}/EthernetInterfaces") => {
            axum::Json(collection(m, s, &[&format!("{sys}/EthernetInterfaces/1")])).into_response()
        }
        (Method::GET, s) if s == format!("{sys}/EthernetInterfaces/1") => axum::Json(json!({
            "@odata.id": m.id(s), "Id": "1", "MACAddress": l.mac.to_ascii_uppercase(), "LinkStatus": "LinkUp"
        }))
        .into_response(),
        (Method::GET, s) if s == format!("{sys}/Storage") => {
            axum::Json(collection(m, s, &[&format!("{sys}/Storage/1")])).into_response()
        }
        (Method::GET, s) if s == format!("{sys}/Storage/1") => axum::Json(json!({
            "@odata.id": m.id(s), "Id": "1", "Drives": [{"@odata.id": m.id(&format!("{sys}/Storage/1/Drives/0"))}]
        }))
        .into_response(),
        (Method::GET, s) if s == format!("{sys}/Storage/1/Drives/0") => axum::Json(json!({
            "@odata.id": m.id(s), "Id": "0", "Name": "Disk 0", "CapacityBytes": 480_103_981_056u64, "MediaType": "SSD"
        }))
        .into_response(),
        (Method::GET, s) if s == l.manager => axum::Json(manager_json(m)).into_response(),
        (Method::GET, s) if s == l.media_collection => {
            let mut members = vec![l.cd];
            members.extend(l.other_media.iter().map(|(id, _)| *id));
            if m.profile == Profile::Idrac9 || m.profile == Profile::Ilo4 || m.profile == Profile::Ilo5 {
                // These list the removable disk or floppy first.
                members.reverse();
            }
            axum::Json(collection(m, s, &members)).into_response()
        }
        (Method::GET, s) if s == l.cd => {
            let v = media_json(m, l.cd, &["CD", "DVD"], m.image.clone());
            let response = with_etag(m, v);
            concurrent_change(m);
            response
        }
        (Method::GET, s) if l.other_media.iter().any(|(id, _)| *id == s) => {
            let types = l
                .other_media
                .iter()
                .find(|(id, _)| *id == s)
                .map(|(_, t)| *t)
                .unwrap_or(&[]);
            axum::Json(media_json(m, s, types, None)).into_response()
        }
        (Method::PATCH, s) if s == l.cd && !l.media_actions => patch_media(m, if_match, body),
        (Method::POST, s) if s == format!("{}/Actions/VirtualMedia.InsertMedia", l.cd) && l.media_actions => {
            insert_media(m, body)
        }
        (Method::POST, s) if s == format!("{}/Actions/VirtualMedia.EjectMedia", l.cd) && l.media_actions => {
            m.image = None;
            m.etag += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        _ => m.error(
            StatusCode::METHOD_NOT_ALLOWED,
            "Base.1.12.OperationNotAllowed",
            &format!("{method} is not allowed on {r}."),
            &[],
        ),
    }
}

fn concurrent_change(m: &mut Emu) {
    if m.concurrent_changes > 0 {
        m.concurrent_changes -= 1;
        m.etag += 1;
    }
}

fn login(m: &mut Emu, body: &Value) -> Response {
    let l = m.layout();
    if m.sessions.len() + m.other_sessions >= m.max_sessions {
        let style = if m.profile == Profile::Idrac9 {
            SessionFull::Rac0218
        } else {
            SessionFull::Unavailable
        };
        return match style {
            SessionFull::Rac0218 => m.error(
                StatusCode::BAD_REQUEST,
                "IDRAC.2.8.RAC0218",
                "The maximum number of user sessions is reached.",
                &[],
            ),
            SessionFull::Unavailable => m.error(
                StatusCode::SERVICE_UNAVAILABLE,
                "Base.1.12.SessionLimitExceeded",
                "The session establishment failed due to the number of simultaneous sessions exceeding the limit of the implementation.",
                &[],
            ),
        };
    }
    if body["UserName"] != USER || body["Password"] != PASSWORD {
        return m.error(
            StatusCode::UNAUTHORIZED,
            "Base.1.12.ResourceAtUriUnauthorized",
            "While accessing the resource at /redfish/v1/SessionService/Sessions, the service received an authorization error.",
            &[],
        );
    }
    m.next_session += 1;
    let id = m.next_session;
    let token = format!("{:016x}{id:04}", 0x6b696c6e_u64.wrapping_mul(u64::from(id) + 7919));
    m.sessions.insert(token.clone(), id);
    let path = m.id(&format!("{}/{id}", l.sessions));
    // iLO answers with an absolute Location; the others with a path.
    let location = if matches!(m.profile, Profile::Ilo4 | Profile::Ilo5) {
        format!("{}{path}", m.origin)
    } else {
        path.clone()
    };
    (
        StatusCode::CREATED,
        [("X-Auth-Token", token), ("Location", location)],
        axum::Json(json!({"@odata.id": path, "Id": id.to_string(), "UserName": USER})),
    )
        .into_response()
}

/// Checks `If-Match` as the profile does: 428 without it where required, 412 when it is not the current version.
fn precondition(m: &Emu, if_match: Option<&str>) -> Option<Response> {
    match if_match {
        None if requires_if_match(m.profile) => Some(m.error(
            StatusCode::PRECONDITION_REQUIRED,
            "Base.1.12.PreconditionRequired",
            "A precondition header or annotation is required to change the resource.",
            &[],
        )),
        Some(tag) if !m.if_match_ok(tag) => Some(m.error(
            StatusCode::PRECONDITION_FAILED,
            "Base.1.12.PreconditionFailed",
            "The ETag supplied did not match the ETag required to change this resource.",
            &[],
        )),
        _ => None,
    }
}

fn patch_system(m: &mut Emu, if_match: Option<&str>, body: &Value) -> Response {
    if let Some(refused) = precondition(m, if_match) {
        return refused;
    }
    let boot = &body["Boot"];
    if let Some(mode) = boot.get("BootSourceOverrideMode") {
        if boot_mode_read_only(m.profile) || m.boot_mode.is_none() {
            return match m.profile {
                Profile::Idrac9 => m.error(
                    StatusCode::BAD_REQUEST,
                    "IDRAC.2.8.SYS410",
                    "The property BootSourceOverrideMode is read-only and cannot be modified.",
                    &["BootSourceOverrideMode"],
                ),
                _ => m.error(
                    StatusCode::BAD_REQUEST,
                    "iLO.2.15.PropertyNotWritableOrUnknown",
                    "",
                    &["BootSourceOverrideMode"],
                ),
            };
        }
        let mode = mode.as_str().unwrap_or_default();
        if mode != "UEFI" && mode != "Legacy" {
            return m.error(
                StatusCode::BAD_REQUEST,
                "Base.1.12.PropertyValueNotInList",
                &format!(
                    "The value {mode} for the property BootSourceOverrideMode is not in the list of acceptable values."
                ),
                &[mode, "BootSourceOverrideMode"],
            );
        }
    }
    if let Some(target) = boot.get("BootSourceOverrideTarget").and_then(Value::as_str)
        && !boot_targets(m.profile).contains(&target)
    {
        return m.error(
            StatusCode::BAD_REQUEST,
            "Base.1.12.PropertyValueNotInList",
            &format!(
                "The value {target} for the property BootSourceOverrideTarget is not in the list of acceptable values."
            ),
            &[target, "BootSourceOverrideTarget"],
        );
    }
    if let Some(enabled) = boot.get("BootSourceOverrideEnabled").and_then(Value::as_str)
        && !enabled_values(m.profile).contains(&enabled)
    {
        return m.error(
            StatusCode::BAD_REQUEST,
            "Base.1.12.PropertyValueNotInList",
            &format!("The value {enabled} for the property BootSourceOverrideEnabled is not in the list of acceptable values."),
            &[enabled, "BootSourceOverrideEnabled"],
        );
    }
    if let Some(mode) = boot.get("BootSourceOverrideMode").and_then(Value::as_str) {
        m.boot_mode = Some(mode.to_string());
    }
    if let Some(target) = boot.get("BootSourceOverrideTarget").and_then(Value::as_str) {
        m.boot_target = target.to_string();
    }
    if let Some(enabled) = boot.get("BootSourceOverrideEnabled").and_then(Value::as_str) {
        m.boot_enabled = enabled.to_string();
    }
    m.etag += 1;
    StatusCode::NO_CONTENT.into_response()
}

fn patch_media(m: &mut Emu, if_match: Option<&str>, body: &Value) -> Response {
    if let Some(refused) = precondition(m, if_match) {
        return refused;
    }
    let Some(fields) = body.as_object() else {
        return m.error(StatusCode::BAD_REQUEST, "Base.1.12.MalformedJSON", "not an object", &[]);
    };
    // iLO: Inserted and WriteProtected are not writable; the image alone mounts or (null) ejects.
    if matches!(m.profile, Profile::Ilo4 | Profile::Ilo5)
        && let Some(key) = fields.keys().find(|k| k.as_str() != "Image" && k.as_str() != "Oem")
    {
        return m.error(
            StatusCode::BAD_REQUEST,
            "iLO.2.15.PropertyNotWritableOrUnknown",
            "",
            &[key.as_str()],
        );
    }
    match fields.get("Image") {
        Some(Value::String(image)) if !image.is_empty() => {
            // XCC and the mockup need Inserted to mount (the Lenovo SD530 note in sushy).
            if !matches!(m.profile, Profile::Ilo4 | Profile::Ilo5) && fields.get("Inserted") != Some(&json!(true)) {
                return m.error(
                    StatusCode::BAD_REQUEST,
                    "Base.1.12.PropertyMissing",
                    "The property Inserted is a required property and must be included in the request.",
                    &["Inserted"],
                );
            }
            m.image = Some(image.clone());
        }
        Some(Value::Null) | Some(Value::String(_)) => m.image = None,
        _ if fields.get("Inserted") == Some(&json!(false)) => m.image = None,
        _ => {}
    }
    m.etag += 1;
    StatusCode::NO_CONTENT.into_response()
}

fn insert_media(m: &mut Emu, body: &Value) -> Response {
    if m.profile == Profile::SupermicroX12
        && let Some(param) = ["Inserted", "WriteProtected"]
            .into_iter()
            .find(|k| body.get(*k).is_some())
    {
        return m.error(
            StatusCode::BAD_REQUEST,
            "Base.1.10.ActionParameterNotSupported",
            &format!("The parameter {param} for the action InsertMedia is not supported on the target resource."),
            &[param, "InsertMedia"],
        );
    }
    let Some(image) = body["Image"].as_str().filter(|i| !i.is_empty()) else {
        return m.error(
            StatusCode::BAD_REQUEST,
            "Base.1.12.ActionParameterMissing",
            "The action InsertMedia requires the parameter Image to be present in the request body.",
            &["InsertMedia", "Image"],
        );
    };
    if m.image.is_some() {
        return m.error(
            StatusCode::CONFLICT,
            "Base.1.12.ResourceInUse",
            "The change to the requested resource failed because the resource is in use or in transition.",
            &[],
        );
    }
    m.image = Some(image.to_string());
    m.etag += 1;
    StatusCode::NO_CONTENT.into_response()
}

fn reset(m: &mut Emu, body: &Value) -> Response {
    if m.not_ready_until.is_some_and(|t| Instant::now() < t) {
        return m.not_ready();
    }
    let reset_type = body["ResetType"].as_str().unwrap_or_default().to_string();
    if !reset_types(m.profile).contains(&reset_type.as_str()) {
        return m.error(
            StatusCode::BAD_REQUEST,
            "Base.1.12.ActionParameterValueNotInList",
            &format!("The value {reset_type} for the parameter ResetType in the action Reset is not in the list of acceptable values."),
            &[&reset_type, "ResetType", "Reset"],
        );
    }
    let on = matches!(m.power, "On" | "PoweringOn");
    match reset_type.as_str() {
        "On" | "ForceOn" if !on => {
            m.boot();
            m.go("On");
        }
        "ForceOff" => {
            m.power = "Off";
            m.pending = None;
        }
        "GracefulShutdown" if on && m.acpi => m.go("Off"),
        "PushPowerButton" if on && m.acpi => m.go("Off"),
        "PushPowerButton" if !on => {
            m.boot();
            m.go("On");
        }
        "ForceRestart" | "GracefulRestart" | "PowerCycle" => {
            m.boot();
            m.go("On");
        }
        _ => {}
    }
    m.resets.push(reset_type);
    m.etag += 1;
    if !m.not_ready_for.is_zero() {
        m.not_ready_until = Some(Instant::now() + m.not_ready_for);
    }
    StatusCode::NO_CONTENT.into_response()
}
