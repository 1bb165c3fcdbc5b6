//! A small Redfish service (axum, loopback) with what sushy-tools lacks: a SessionService, an ETag-guarded
//! System that demands If-Match, VirtualMedia under the Manager with a task monitor, a host that ignores
//! GracefulShutdown, and switches for faults (503s, malformed JSON, no answer).
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

pub const USER: &str = "admin";
pub const PASSWORD: &str = "M0ck-Secret";

#[derive(Debug)]
pub struct Mock {
    pub sessions: HashMap<String, u32>,
    pub sessions_created: u32,
    pub sessions_deleted: u32,
    pub failed_logins: u32,
    pub power: &'static str,
    pub resets: Vec<String>,
    pub allowed_resets: Vec<&'static str>,
    pub etag: u32,
    pub boot_target: String,
    pub patches: u32,
    pub fail_next_503: u32,
    pub system_gets: u32,
    pub malformed: bool,
    pub hang: bool,
    pub image: Option<String>,
    pub pending_image: Option<String>,
    pub task_polls: u32,
    /// The service root's session collection link (a hostile BMC points it at another origin).
    pub sessions_link: String,
    /// Answer GET of the System with a 307 to this URL.
    pub redirect_system_to: Option<String>,
    /// Pad every System body with this many bytes.
    pub pad_system: usize,
    /// `Boot.BootSourceOverrideMode`, if the System has one.
    pub boot_mode: Option<&'static str>,
    /// Refuse a PATCH naming `BootSourceOverrideMode`, as HPE iLO 5 does (read-only there).
    pub boot_mode_read_only: bool,
}

impl Default for Mock {
    fn default() -> Self {
        Mock {
            sessions: HashMap::new(),
            sessions_created: 0,
            sessions_deleted: 0,
            failed_logins: 0,
            power: "Off",
            resets: Vec::new(),
            allowed_resets: vec!["On", "ForceOff", "GracefulShutdown"],
            etag: 1,
            boot_target: "None".into(),
            patches: 0,
            fail_next_503: 0,
            system_gets: 0,
            malformed: false,
            hang: false,
            image: None,
            pending_image: None,
            task_polls: 0,
            sessions_link: "/redfish/v1/SessionService/Sessions".into(),
            redirect_system_to: None,
            pad_system: 0,
            boot_mode: None,
            boot_mode_read_only: false,
        }
    }
}

pub type Shared = Arc<Mutex<Mock>>;

pub async fn start(mock: Mock) -> (SocketAddr, Shared) {
    let shared: Shared = Arc::new(Mutex::new(mock));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(handle).with_state(shared.clone());
    tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (addr, shared)
}

fn error(status: StatusCode, id: &str, message: &str) -> Response {
    let body = json!({"error": {"code": "Base.1.8.GeneralError", "message": "A general error has occurred.",
        "@Message.ExtendedInfo": [{"MessageId": id, "Message": message}]}});
    (status, axum::Json(body)).into_response()
}

fn system_json(m: &Mock) -> Value {
    let mut v = system_json_base(m);
    if let Some(mode) = m.boot_mode {
        v["Boot"]["BootSourceOverrideMode"] = json!(mode);
    }
    v
}

fn system_json_base(m: &Mock) -> Value {
    json!({
        "@odata.id": "/redfish/v1/Systems/1", "Id": "1", "Name": "mock", "UUID": "00000000-0000-0000-0000-000000000001",
        "Manufacturer": "Mock", "Model": "M1", "SerialNumber": "SN1", "PowerState": m.power,
        "ProcessorSummary": {"Count": 2, "Model": "Mock CPU"}, "MemorySummary": {"TotalSystemMemoryGiB": 8},
        "Boot": {"BootSourceOverrideTarget": m.boot_target, "BootSourceOverrideEnabled": "Once"},
        "Actions": {"#ComputerSystem.Reset": {"target": "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset",
            "ResetType@Redfish.AllowableValues": m.allowed_resets}},
        "Links": {"ManagedBy": [{"@odata.id": "/redfish/v1/Managers/1"}]}
    })
}

fn media_json(m: &Mock) -> Value {
    let base = "/redfish/v1/Managers/1/VirtualMedia/CD1";
    json!({"@odata.id": base, "Id": "CD1", "MediaTypes": ["CD", "DVD"], "Image": m.image, "Inserted": m.image.is_some(),
        "Actions": {"#VirtualMedia.InsertMedia": {"target": format!("{base}/Actions/VirtualMedia.InsertMedia")},
                    "#VirtualMedia.EjectMedia": {"target": format!("{base}/Actions/VirtualMedia.EjectMedia")}}})
}

async fn handle(State(shared): State<Shared>, method: Method, uri: Uri, headers: HeaderMap, body: Bytes) -> Response {
    let path = uri.path().trim_end_matches('/').to_string();
    let hang = shared.lock().unwrap().hang;
    if hang && path != "/redfish/v1" {
        tokio::time::sleep(Duration::from_secs(60)).await;
    }
    let mut m = shared.lock().unwrap();
    // Public: the service root and session creation.
    if method == Method::GET && path == "/redfish/v1" {
        return axum::Json(json!({
            "@odata.id": "/redfish/v1/", "RedfishVersion": "1.15.0", "Vendor": "kiln-mock",
            "Systems": {"@odata.id": "/redfish/v1/Systems"}, "Managers": {"@odata.id": "/redfish/v1/Managers"},
            "SessionService": {"@odata.id": "/redfish/v1/SessionService"},
            "Links": {"Sessions": {"@odata.id": m.sessions_link}}
        }))
        .into_response();
    }
    if method == Method::POST && path == "/redfish/v1/SessionService/Sessions" {
        let login: Value = serde_json::from_slice(&body).unwrap_or_default();
        if login["UserName"] != USER || login["Password"] != PASSWORD {
            m.failed_logins += 1;
            return error(
                StatusCode::UNAUTHORIZED,
                "Base.1.8.NoValidSession",
                "Invalid user name or password",
            );
        }
        m.sessions_created += 1;
        let id = m.sessions_created;
        let token = format!("token-{id}-{}", rand_suffix());
        m.sessions.insert(token.clone(), id);
        let location = format!("/redfish/v1/SessionService/Sessions/{id}");
        return (
            StatusCode::CREATED,
            [("X-Auth-Token", token), ("Location", location.clone())],
            axum::Json(json!({"@odata.id": location, "Id": id.to_string(), "UserName": USER})),
        )
            .into_response();
    }
    // Everything else needs a session token (no basic auth on this service).
    let token = headers
        .get("X-Auth-Token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let Some(&session_id) = m.sessions.get(&token) else {
        return error(StatusCode::UNAUTHORIZED, "Base.1.8.NoValidSession", "No valid session");
    };
    match (method.clone(), path.as_str()) {
        (Method::DELETE, p) if p.starts_with("/redfish/v1/SessionService/Sessions/") => {
            let id: u32 = p.rsplit('/').next().unwrap().parse().unwrap_or(0);
            if id != session_id {
                return error(
                    StatusCode::FORBIDDEN,
                    "Base.1.8.InsufficientPrivilege",
                    "not your session",
                );
            }
            m.sessions.remove(&token);
            m.sessions_deleted += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/redfish/v1/SessionService") => axum::Json(
            json!({"ServiceEnabled": true, "Sessions": {"@odata.id": "/redfish/v1/SessionService/Sessions"}}),
        )
        .into_response(),
        (Method::GET, "/redfish/v1/Systems") => {
            axum::Json(json!({"Members": [{"@odata.id": "/redfish/v1/Systems/1"}]})).into_response()
        }
        (Method::GET, "/redfish/v1/Systems/1") if m.redirect_system_to.is_some() => {
            let to = m.redirect_system_to.clone().unwrap_or_default();
            (StatusCode::TEMPORARY_REDIRECT, [("Location", to)]).into_response()
        }
        (Method::GET, "/redfish/v1/Systems/1") if m.pad_system > 0 => {
            let pad = "x".repeat(m.pad_system);
            axum::Json(json!({"@odata.id": "/redfish/v1/Systems/1", "Id": "1", "Oem": {"pad": pad}})).into_response()
        }
        (Method::GET, "/redfish/v1/Systems/1") => {
            m.system_gets += 1;
            if m.fail_next_503 > 0 {
                m.fail_next_503 -= 1;
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "Base.1.8.ServiceTemporarilyUnavailable",
                    "busy",
                );
            }
            if m.malformed {
                return (
                    StatusCode::OK,
                    [("Content-Type", "application/json")],
                    "{\"PowerState\": \"On\", ",
                )
                    .into_response();
            }
            let etag = format!("W/\"{}\"", m.etag);
            ([("ETag", etag)], axum::Json(system_json(&m))).into_response()
        }
        (Method::PATCH, "/redfish/v1/Systems/1") => {
            m.patches += 1;
            let Some(if_match) = headers.get("If-Match").and_then(|v| v.to_str().ok()) else {
                return error(
                    StatusCode::PRECONDITION_REQUIRED,
                    "Base.1.8.PreconditionRequired",
                    "If-Match required",
                );
            };
            if if_match != format!("W/\"{}\"", m.etag) {
                return error(
                    StatusCode::PRECONDITION_FAILED,
                    "Base.1.8.PreconditionFailed",
                    "stale ETag",
                );
            }
            let patch: Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(mode) = patch["Boot"]["BootSourceOverrideMode"].as_str() {
                if m.boot_mode_read_only {
                    // iLO 5's answer, as recorded from real BMCs.
                    return error(
                        StatusCode::BAD_REQUEST,
                        "iLO.2.15.PropertyNotWritableOrUnknown",
                        "The property BootSourceOverrideMode is not writable or is unknown.",
                    );
                }
                m.boot_mode = Some(if mode == "Legacy" { "Legacy" } else { "UEFI" });
            }
            let target = patch["Boot"]["BootSourceOverrideTarget"]
                .as_str()
                .unwrap_or_default()
                .to_string();
            if target == "UefiHttp" {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Base.1.8.PropertyValueNotInList",
                    "The value UefiHttp for the property BootSourceOverrideTarget is not in the list of acceptable values.",
                );
            }
            m.boot_target = target;
            m.etag += 1;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::POST, "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset") => {
            let req: Value = serde_json::from_slice(&body).unwrap_or_default();
            let reset = req["ResetType"].as_str().unwrap_or_default().to_string();
            if !m.allowed_resets.contains(&reset.as_str()) {
                return error(
                    StatusCode::BAD_REQUEST,
                    "Base.1.8.ActionParameterValueNotInList",
                    "bad ResetType",
                );
            }
            m.resets.push(reset.clone());
            match reset.as_str() {
                "On" | "ForceOn" => m.power = "On",
                "ForceOff" => m.power = "Off",
                // This host ignores ACPI power button presses.
                _ => {}
            }
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/redfish/v1/Managers/1") => {
            axum::Json(json!({"Id": "1", "VirtualMedia": {"@odata.id": "/redfish/v1/Managers/1/VirtualMedia"}}))
                .into_response()
        }
        (Method::GET, "/redfish/v1/Managers/1/VirtualMedia") => {
            axum::Json(json!({"Members": [{"@odata.id": "/redfish/v1/Managers/1/VirtualMedia/CD1"}]})).into_response()
        }
        (Method::GET, "/redfish/v1/Managers/1/VirtualMedia/CD1") => axum::Json(media_json(&m)).into_response(),
        (Method::POST, "/redfish/v1/Managers/1/VirtualMedia/CD1/Actions/VirtualMedia.InsertMedia") => {
            let req: Value = serde_json::from_slice(&body).unwrap_or_default();
            m.image = None;
            m.task_polls = 0;
            // Remember the requested image in the task; it lands when the task completes.
            m.pending_image = Some(req["Image"].as_str().unwrap_or_default().to_string());
            (
                StatusCode::ACCEPTED,
                [("Location", "/redfish/v1/TaskService/TaskMonitors/7")],
            )
                .into_response()
        }
        (Method::POST, "/redfish/v1/Managers/1/VirtualMedia/CD1/Actions/VirtualMedia.EjectMedia") => {
            m.image = None;
            StatusCode::NO_CONTENT.into_response()
        }
        (Method::GET, "/redfish/v1/TaskService/TaskMonitors/7") => {
            m.task_polls += 1;
            if m.task_polls < 3 {
                return (StatusCode::ACCEPTED, axum::Json(json!({"TaskState": "Running"}))).into_response();
            }
            m.image = m.pending_image.take();
            axum::Json(json!({"TaskState": "Completed", "TaskStatus": "OK"})).into_response()
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "Base.1.8.ResourceMissingAtURI",
            &format!("no {method} {path}"),
        ),
    }
}

fn rand_suffix() -> u32 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now()) as u32
}
