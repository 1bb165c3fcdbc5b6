//! The REST API under `/api/v1`: hosts CRUD, provision/deprovision/power/inspect actions, events, per-phase timing,
//! inspection data. It validates input at the edge (errors name the field) and writes operator intent to the store;
//! it must not perform BMC calls or change host states (the executor does).

use std::collections::BTreeMap;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_bmc::{BootMode, PowerAction, Secret};
use kiln_images::protocol::{ChecksumType, ImageFormat, ImageSpec, Progress, RootDeviceHints};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::crypto::ct_eq;
use crate::executor::now;
use crate::http_util::{ApiError, AppState, bearer, parse_body};
use crate::machine::State;
use crate::model::{BmcAddress, BmcInfo, BmcTls, Counters, EraseMode, Host, HostOptions, HostSpec};
use crate::store::{Event, PhaseRecord};
use crate::types::{HostName, MacAddr};

/// The authenticated routes under `/api/v1`.
pub fn router(app: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/v1/hosts", get(list_hosts).post(create_host))
        .route("/api/v1/hosts/{name}", get(get_host).delete(delete_host))
        .route("/api/v1/hosts/{name}/provision", post(provision))
        .route("/api/v1/hosts/{name}/deprovision", post(deprovision))
        .route("/api/v1/hosts/{name}/power", post(power))
        .route("/api/v1/hosts/{name}/inspect", post(inspect))
        .route("/api/v1/hosts/{name}/events", get(host_events))
        .route("/api/v1/hosts/{name}/timings", get(timings))
        .route("/api/v1/hosts/{name}/inspection", get(inspection))
        .route("/api/v1/events", get(all_events))
        .layer(axum::middleware::from_fn_with_state(app, require_admin))
}

async fn require_admin(AxState(app): AxState<AppState>, req: Request, next: Next) -> Response {
    match bearer(req.headers()) {
        Some(t) if ct_eq(t, app.admin_token.expose()) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

/// Body of `POST /api/v1/hosts`: what the REST API, the CLI and `kiln import` all send, validated by one function
/// ([`spec_from`]) that the BareMetalHost controller calls too.
#[derive(Debug, Default, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HostCreate {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc: Option<BmcIn>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mac: Option<String>,
    /// `uefi` or `legacy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_mode: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_device_hints: Option<RootDeviceHints>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<HostOptions>,
}

/// BMC credentials as sent by the client.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BmcIn {
    /// Any form Metal3 accepts for Redfish or IPMI: `redfish[+http|+https]://host[:port][/System path]`,
    /// `idrac-redfish://`, `ilo5-redfish://`, `ipmi://host[:port][?privilegelevel=OPERATOR]`, `ipmi:host` or a
    /// bare `host[:port]` (IPMI). `*-virtualmedia://` and `redfish-uefihttp://` are refused (kiln boots its agent
    /// by PXE only), as are schemes of protocols kiln does not speak. Two hosts may not share one BMC (409).
    pub address: String,
    pub username: String,
    /// Never shown back; must not be empty.
    #[schemars(with = "String", extend("writeOnly" = true))]
    #[serde(serialize_with = "Secret::serialize_exposed")]
    pub password: Secret,
    /// Accept any TLS certificate from this host's BMC (Metal3's `disableCertificateVerification`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub disable_certificate_verification: bool,
    /// CA certificates (PEM) to trust for this host's BMC, besides the system's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<String>,
}

/// Body of `POST /api/v1/hosts/{name}/provision`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProvisionIn {
    pub image: ImageIn,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user_data: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network_data: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub meta_data: Option<Value>,
}

/// The image to write: an http(s) URL and a checksum (`sha256:HEX`, `sha512:HEX`, `md5:HEX`, bare hex, or the URL
/// of a checksum file).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ImageIn {
    pub url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checksum_type: Option<ChecksumType>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub format: Option<ImageFormat>,
}

/// Body of `POST /api/v1/hosts/{name}/deprovision` (optional).
#[derive(Debug, Serialize, Deserialize, Default, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct DeprovisionIn {
    /// How to erase this time (the host's erase option otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub erase: Option<EraseMode>,
}

/// Body of `POST /api/v1/hosts/{name}/power`.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PowerIn {
    #[schemars(extend("enum" = ["on", "off", "force-off", "cycle", "reset"]))]
    pub action: String,
}

/// A host as the API shows it (never the BMC password).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostOut {
    pub name: String,
    pub state: String,
    pub operational_status: String,
    pub power: Option<String>,
    pub boot_mac: Option<String>,
    pub boot_mode: BootMode,
    pub bmc: Option<BmcOut>,
    pub labels: BTreeMap<String, String>,
    pub image: Option<ImageSpec>,
    pub root_device_hints: RootDeviceHints,
    pub options: HostOptions,
    pub error: Option<HostErrorOut>,
    /// kiln's state with its data (job phase, boot, retries), as stored.
    pub detail: Value,
    /// The agent's progress in the running command.
    pub progress: Option<Progress>,
    /// A BMC call that failed and is being retried, shown before retries run out and the host enters `error`; only
    /// on `GET /api/v1/hosts/{name}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bmc_trouble: Option<BmcTroubleOut>,
    pub counters: Counters,
    pub created: String,
    pub updated: String,
}

/// Why a host is in `error` (Metal3's `errorType` as `type`).
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct HostErrorOut {
    /// `registration error`, `inspection error`, `preparation error`, `provisioning error` or `deprovisioning error`.
    #[serde(rename = "type")]
    pub error_type: String,
    /// Machine-readable cause: `bmc_unreachable`, `bmc_auth`, `boot_timeout`, `command_timeout`, `agent_lost`, or
    /// the agent's own failure kind (`checksum_mismatch`, ...).
    pub kind: String,
    /// What happened and what to check; an agent failure carries its log tail below the first line.
    pub message: String,
    /// Automatic retries already made.
    pub retries: u32,
    /// RFC 3339.
    pub at: String,
    /// When kiln retries by itself (RFC 3339); `null` once retries are exhausted.
    pub retry_at: Option<String>,
}

/// A BMC call that failed and is being retried.
#[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BmcTroubleOut {
    /// RFC 3339.
    pub at: String,
    pub message: String,
}

/// A host's BMC as the API shows it (never the password).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct BmcOut {
    pub address: String,
    pub username: String,
    /// How the host is booted into the agent, as the address scheme asks (`pxe`, `virtual-media`, `uefi-http`).
    #[serde(default = "pxe")]
    pub boot_method: kiln_bmc::BootMethod,
    #[serde(default)]
    pub tls: BmcTls,
}

fn pxe() -> kiln_bmc::BootMethod {
    kiln_bmc::BootMethod::Pxe
}

fn host_out(h: &Host, progress: Option<Value>) -> HostOut {
    let error = match &h.state {
        State::Error(e) => Some(HostErrorOut {
            error_type: e.operation.error_type().into(),
            kind: e.kind.clone(),
            message: e.message.clone(),
            retries: e.retries,
            at: e.at.rfc3339(),
            retry_at: e.retry_at.map(|t| t.rfc3339()),
        }),
        _ => None,
    };
    let progress = progress.and_then(|p| serde_json::from_value::<Progress>(p).ok());
    HostOut {
        name: h.name.to_string(),
        state: h.state.name().into(),
        operational_status: h.state.operational_status().into(),
        power: h.power.map(|p| {
            serde_json::to_value(p)
                .ok()
                .and_then(|v| v.as_str().map(String::from))
                .unwrap_or_default()
        }),
        boot_mac: h.spec.boot_mac.map(|m| m.to_string()),
        boot_mode: h.spec.boot_mode,
        bmc: h.spec.bmc.as_ref().map(|b| BmcOut {
            address: b.address.to_string(),
            username: b.username.clone(),
            boot_method: b.address.boot_method(),
            tls: b.tls.clone(),
        }),
        labels: h.spec.labels.clone(),
        image: h.spec.image.clone(),
        root_device_hints: h.spec.root_device_hints.clone(),
        options: h.spec.options,
        error,
        detail: serde_json::to_value(&h.state).unwrap_or(Value::Null),
        progress,
        bmc_trouble: None,
        counters: h.counters,
        created: h.created.rfc3339(),
        updated: h.updated.rfc3339(),
    }
}

fn unprocessable(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, msg)
}

fn parse_name(name: &str) -> Result<HostName, ApiError> {
    name.parse()
        .map_err(|e: crate::types::ParseError| ApiError::field(StatusCode::BAD_REQUEST, "name", e.0))
}

async fn load(app: &AppState, name: &str) -> Result<Host, ApiError> {
    let n = parse_name(name)?;
    app.store
        .host(&n)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("host {name}")))
}

fn parse_boot_mode(s: &str) -> Result<BootMode, ApiError> {
    match s {
        "uefi" | "UEFI" => Ok(BootMode::Uefi),
        "legacy" | "bios" => Ok(BootMode::Legacy),
        _ => Err(unprocessable(
            "boot_mode",
            format!("boot mode must be uefi or legacy, got {s:?}"),
        )),
    }
}

/// Validates BMC access: one address parser (kiln-bmc's), a boot method kiln can carry out, non-empty credentials,
/// and TLS settings that parse. REST, `kiln import` and the BareMetalHost controller all come through here.
pub fn bmc_from(b: &BmcIn) -> Result<BmcInfo, ApiError> {
    let address: BmcAddress = b
        .address
        .parse()
        .map_err(|e: kiln_bmc::AddressError| unprocessable("bmc.address", e.to_string()))?;
    let method = address.boot_method();
    if method != kiln_bmc::BootMethod::Pxe {
        return Err(unprocessable(
            "bmc.address",
            format!(
                "{address} asks for {method} boot, which kiln cannot do yet: kiln boots its agent by PXE/iPXE only; \
                 use the plain Redfish scheme of this BMC (redfish://, idrac-redfish:// or ilo5-redfish://) on a \
                 network where kiln's DHCP or a relay reaches the host"
            ),
        ));
    }
    if b.username.is_empty() {
        return Err(unprocessable("bmc.username", "BMC username must not be empty"));
    }
    if b.password.expose().is_empty() {
        return Err(unprocessable("bmc.password", "BMC password must not be empty"));
    }
    if let Some(pem) = &b.ca_cert
        && !pem.contains("-----BEGIN CERTIFICATE-----")
    {
        return Err(unprocessable(
            "bmc.ca_cert",
            "the CA must be PEM certificates (-----BEGIN CERTIFICATE-----)",
        ));
    }
    if b.ca_cert.is_some() && matches!(address, BmcAddress::Ipmi(_)) {
        return Err(unprocessable(
            "bmc.ca_cert",
            "IPMI does not use TLS; a CA applies to Redfish BMCs only",
        ));
    }
    Ok(BmcInfo {
        address,
        username: b.username.clone(),
        password: b.password.clone(),
        tls: BmcTls {
            disable_certificate_verification: b.disable_certificate_verification,
            ca_pem: b.ca_cert.clone(),
        },
    })
}

/// Builds a host spec from an enroll request, naming the first bad field.
pub fn spec_from(c: &HostCreate) -> Result<(HostName, HostSpec), ApiError> {
    let name: HostName = c
        .name
        .parse()
        .map_err(|e: crate::types::ParseError| unprocessable("name", e.0))?;
    let bmc = c.bmc.as_ref().map(bmc_from).transpose()?;
    let boot_mac = c
        .boot_mac
        .as_deref()
        .map(|m| m.parse::<MacAddr>().map_err(|e| unprocessable("boot_mac", e.0)))
        .transpose()?;
    let boot_mode = c
        .boot_mode
        .as_deref()
        .map(parse_boot_mode)
        .transpose()?
        .unwrap_or_default();
    for k in c.labels.keys() {
        if k.is_empty() || k.contains([',', '=', ' ']) {
            return Err(unprocessable(
                "labels",
                format!("label key {k:?} must be non-empty without ',', '=' or spaces"),
            ));
        }
    }
    let options = c.options.unwrap_or_default();
    let spec = HostSpec {
        labels: c.labels.clone(),
        bmc,
        boot_mac,
        boot_mode,
        root_device_hints: c.root_device_hints.clone().unwrap_or_default(),
        options,
        ..Default::default()
    };
    Ok((name, spec))
}

/// Validates an image request: an http(s) URL and a checksum given as `sha256:HEX`, `sha512:HEX`, bare hex or a
/// checksum-file URL.
pub fn image_from(i: &ImageIn) -> Result<ImageSpec, ApiError> {
    let u =
        url::Url::parse(&i.url).map_err(|e| unprocessable("image.url", format!("{:?} is not a URL: {e}", i.url)))?;
    if !matches!(u.scheme(), "http" | "https") {
        return Err(unprocessable("image.url", "image URL must be http:// or https://"));
    }
    let Some(raw) = i.checksum.as_deref().filter(|c| !c.is_empty()) else {
        return Err(unprocessable(
            "image.checksum",
            "an image checksum is required (sha256:HEX, sha512:HEX or a checksum-file URL)",
        ));
    };
    let (ty, value) = match raw.split_once(':') {
        Some(("sha256", h)) => (ChecksumType::Sha256, h),
        Some(("sha512", h)) => (ChecksumType::Sha512, h),
        Some(("md5", h)) => (ChecksumType::Md5, h),
        _ => (i.checksum_type.unwrap_or_default(), raw),
    };
    if value.starts_with("http://") || value.starts_with("https://") {
        return Ok(ImageSpec {
            url: i.url.clone(),
            checksum: value.into(),
            checksum_type: i.checksum_type.unwrap_or_default(),
            format: i.format,
        });
    }
    let want = match ty {
        ChecksumType::Sha256 => vec![64],
        ChecksumType::Sha512 => vec![128],
        ChecksumType::Md5 => vec![32],
        ChecksumType::Auto => vec![64, 128],
    };
    if !want.contains(&value.len()) || !value.chars().all(|c| c.is_ascii_hexdigit()) {
        return Err(unprocessable(
            "image.checksum",
            format!("checksum must be {ty:?} hex ({want:?} digits) or a URL"),
        ));
    }
    Ok(ImageSpec {
        url: i.url.clone(),
        checksum: value.to_ascii_lowercase(),
        checksum_type: ty,
        format: i.format,
    })
}

#[derive(Deserialize)]
struct ListQuery {
    #[serde(default)]
    selector: Option<String>,
}

async fn list_hosts(
    AxState(app): AxState<AppState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Vec<HostOut>>, ApiError> {
    let mut want = Vec::new();
    if let Some(sel) = q.selector.as_deref().filter(|s| !s.is_empty()) {
        for part in sel.split(',') {
            let (k, v) = part.split_once('=').ok_or_else(|| {
                ApiError::field(
                    StatusCode::BAD_REQUEST,
                    "selector",
                    format!("selector term {part:?} is not key=value"),
                )
            })?;
            want.push((k.trim().to_owned(), v.trim().to_owned()));
        }
    }
    let hosts = app.store.hosts().await?;
    Ok(Json(
        hosts
            .iter()
            .filter(|h| want.iter().all(|(k, v)| h.spec.labels.get(k) == Some(v)))
            .map(|h| host_out(h, None))
            .collect(),
    ))
}

/// `?dry_run=true`: validate and check for conflicts, write nothing (as `kubectl apply --dry-run=server`).
#[derive(Debug, Deserialize, Default)]
struct DryRun {
    #[serde(default)]
    dry_run: bool,
}

/// Refuses a new host whose name, boot MAC or BMC another host already has (what the store's unique keys would
/// refuse), for a dry run that writes nothing.
async fn check_free(app: &AppState, name: &HostName, spec: &HostSpec) -> Result<(), ApiError> {
    let identity = spec.bmc.as_ref().map(|b| b.address.identity());
    for h in app.store.hosts().await? {
        if h.name == *name {
            return Err(crate::store::StoreError::HostExists { host: name.to_string() }.into());
        }
        if spec.boot_mac.is_some() && h.spec.boot_mac == spec.boot_mac {
            return Err(crate::store::StoreError::MacInUse {
                mac: spec.boot_mac.map(|m| m.to_string()).unwrap_or_default(),
            }
            .into());
        }
        if let (Some(id), Some(b)) = (&identity, &h.spec.bmc)
            && b.address.identity() == *id
        {
            return Err(crate::store::StoreError::BmcInUse {
                address: b.address.to_string(),
                other: h.name.to_string(),
            }
            .into());
        }
    }
    Ok(())
}

async fn create_host(
    AxState(app): AxState<AppState>,
    Query(q): Query<DryRun>,
    body: Bytes,
) -> Result<(StatusCode, Json<HostOut>), ApiError> {
    let c: HostCreate = parse_body(&body)?;
    let (name, spec) = spec_from(&c)?;
    if let Some(b) = &spec.bmc {
        app.executor
            .accepts(&b.address)
            .map_err(|m| unprocessable("bmc.address", m))?;
    }
    if q.dry_run {
        check_free(&app, &name, &spec).await?;
        let t = now();
        let preview = Host {
            id: 0,
            name,
            spec,
            requests: Default::default(),
            state: State::Unmanaged,
            power: None,
            counters: Counters::default(),
            generation: 0,
            next_wake: None,
            created: t,
            updated: t,
        };
        return Ok((StatusCode::OK, Json(host_out(&preview, None))));
    }
    let h = app.store.create_host(&name, &spec, now()).await?;
    app.store
        .add_event(name.as_str(), now(), "enrolled", "host enrolled")
        .await?;
    app.executor.poke();
    Ok((StatusCode::CREATED, Json(host_out(&h, None))))
}

async fn get_host(AxState(app): AxState<AppState>, Path(name): Path<String>) -> Result<Json<HostOut>, ApiError> {
    let h = load(&app, &name).await?;
    let progress = match h.state.job() {
        Some(j) => app.store.agent_boot(h.id, j.boot).await?.and_then(|b| b.progress),
        None => None,
    };
    let mut out = host_out(&h, progress);
    // The newest of a failed BMC call, a recovery or a state change tells whether kiln is retrying a BMC right now.
    let events = app.store.events(Some(h.name.as_str()), 50).await?;
    if let Some(e) = events
        .iter()
        .filter(|e| matches!(e.kind.as_str(), "bmc_error" | "bmc_recovered" | "state"))
        .max_by_key(|e| e.id)
        .filter(|e| e.kind == "bmc_error" && !matches!(h.state, State::Error(_)))
    {
        out.bmc_trouble = Some(BmcTroubleOut {
            at: e.at.rfc3339(),
            message: e.message.clone(),
        });
    }
    Ok(Json(out))
}

async fn delete_host(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<HostOut>), ApiError> {
    let h = load(&app, &name).await?;
    let mut req = h.requests.clone();
    req.delete = true;
    let h = app.store.update_spec(h.id, &h.spec, &req, now()).await?;
    app.executor.poke();
    Ok((StatusCode::ACCEPTED, Json(host_out(&h, None))))
}

async fn provision(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<HostOut>), ApiError> {
    let h = load(&app, &name).await?;
    let p: ProvisionIn = parse_body(&body)?;
    let image = image_from(&p.image)?;
    if h.spec.options.externally_provisioned {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "host is externally provisioned; kiln never writes it",
        ));
    }
    if h.spec.boot_mac.is_none() {
        return Err(unprocessable(
            "boot_mac",
            "host has no boot MAC; kiln cannot network-boot it",
        ));
    }
    let mut spec = h.spec.clone();
    spec.image = Some(image);
    spec.user_data = p.user_data;
    spec.network_data = p.network_data;
    spec.meta_data = p.meta_data;
    let mut req = h.requests.clone();
    // Provisioning a host whose provision failed retries it now, with this image (Ironic's re-deploy).
    req.retry = matches!(&h.state, State::Error(e) if e.operation == crate::machine::Operation::Provisioning);
    let h = app.store.update_spec(h.id, &spec, &req, now()).await?;
    app.store
        .add_event(h.name.as_str(), now(), "provision", "image set")
        .await?;
    app.executor.poke();
    Ok((StatusCode::ACCEPTED, Json(host_out(&h, None))))
}

async fn deprovision(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<HostOut>), ApiError> {
    let h = load(&app, &name).await?;
    let d: DeprovisionIn = if body.is_empty() {
        DeprovisionIn::default()
    } else {
        parse_body(&body)?
    };
    let mut spec = h.spec.clone();
    spec.image = None;
    if let Some(e) = d.erase {
        spec.options.erase = e;
    }
    let h = app.store.update_spec(h.id, &spec, &h.requests, now()).await?;
    app.store
        .add_event(h.name.as_str(), now(), "deprovision", "image removed")
        .await?;
    app.executor.poke();
    Ok((StatusCode::ACCEPTED, Json(host_out(&h, None))))
}

async fn power(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<HostOut>), ApiError> {
    let h = load(&app, &name).await?;
    let p: PowerIn = parse_body(&body)?;
    let action = match p.action.as_str() {
        "on" => PowerAction::On,
        "off" => PowerAction::Off,
        "force-off" => PowerAction::ForceOff,
        "cycle" => PowerAction::Cycle,
        "reset" => PowerAction::Reset,
        other => {
            return Err(unprocessable(
                "action",
                format!("power action must be on, off, force-off, cycle or reset, got {other:?}"),
            ));
        }
    };
    if h.spec.bmc.is_none() {
        return Err(unprocessable("bmc", "host has no BMC"));
    }
    if h.state.job().is_some() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!(
                "host is {}; power requests are refused while kiln drives it",
                h.state.name()
            ),
        ));
    }
    let mut req = h.requests.clone();
    req.power = Some(action);
    // A host that keeps a power setting (`online`) keeps the one the operator asked for last.
    let mut spec = h.spec.clone();
    if spec.options.online.is_some() {
        match action {
            PowerAction::On => spec.options.online = Some(true),
            PowerAction::Off | PowerAction::ForceOff => spec.options.online = Some(false),
            PowerAction::Cycle | PowerAction::Reset => {}
        }
    }
    let h = app.store.update_spec(h.id, &spec, &req, now()).await?;
    app.executor.poke();
    Ok((StatusCode::ACCEPTED, Json(host_out(&h, None))))
}

async fn inspect(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<HostOut>), ApiError> {
    let h = load(&app, &name).await?;
    if !matches!(h.state, State::Available { .. } | State::Error(_)) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            format!("host is {}; inspection needs an available host", h.state.name()),
        ));
    }
    let mut req = h.requests.clone();
    req.inspect = true;
    let h = app.store.update_spec(h.id, &h.spec, &req, now()).await?;
    app.executor.poke();
    Ok((StatusCode::ACCEPTED, Json(host_out(&h, None))))
}

#[derive(Deserialize)]
struct EventQuery {
    #[serde(default)]
    limit: Option<i64>,
}

async fn host_events(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    Query(q): Query<EventQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let n = parse_name(&name)?;
    Ok(Json(
        app.store
            .events(Some(n.as_str()), q.limit.unwrap_or(100).clamp(1, 10_000))
            .await?,
    ))
}

async fn all_events(
    AxState(app): AxState<AppState>,
    Query(q): Query<EventQuery>,
) -> Result<Json<Vec<Event>>, ApiError> {
    Ok(Json(
        app.store.events(None, q.limit.unwrap_or(100).clamp(1, 10_000)).await?,
    ))
}

/// A timing row as the API shows it.
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct TimingOut {
    pub phase: String,
    pub started: String,
    pub ended: Option<String>,
    pub duration_ms: Option<i64>,
    pub outcome: Option<String>,
}

async fn timings(AxState(app): AxState<AppState>, Path(name): Path<String>) -> Result<Json<Vec<TimingOut>>, ApiError> {
    let h = load(&app, &name).await?;
    let rows: Vec<PhaseRecord> = app.store.phases(h.id).await?;
    Ok(Json(
        rows.into_iter()
            .map(|r| TimingOut {
                phase: r.phase,
                started: r.started.rfc3339(),
                ended: r.ended.map(|e| e.rfc3339()),
                duration_ms: r.ended.map(|e| e.since(r.started)),
                outcome: r.outcome,
            })
            .collect(),
    ))
}

/// A host's inspected hardware (`GET /api/v1/hosts/{name}/inspection`).
#[derive(Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct InspectionOut {
    /// When the agent reported it (RFC 3339).
    pub at: String,
    /// The agent's hardware inventory.
    pub inventory: Value,
}

async fn inspection(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
) -> Result<Json<InspectionOut>, ApiError> {
    let h = load(&app, &name).await?;
    match app.store.inspection(h.id).await? {
        Some((inventory, at)) => Ok(Json(InspectionOut {
            at: at.rfc3339(),
            inventory,
        })),
        None => Err(ApiError::not_found("inspection data")),
    }
}
