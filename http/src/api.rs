//! The REST API under `/api/v1`: hosts CRUD, provision/deprovision/power/inspect actions, events, per-phase timing
//! (per host, and one phase's durations across the fleet), inspection data. It validates input at the edge (errors
//! name the field) and writes operator intent to the store; it must not perform BMC calls or change host states (the
//! executor does).

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State as AxState};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use kiln_bmc::PowerAction;
use serde::Deserialize;

use crate::http_util::{ApiError, AppState, bearer, parse_body};
use kiln_engine::crypto::ct_eq;
use kiln_engine::executor::now;
use kiln_engine::machine::State;
use kiln_engine::model::{Counters, Host, HostSpec, Requests};
use kiln_engine::store::{Event, PhaseRecord, StoreError};
use kiln_engine::types::HostName;
use kiln_engine::wire::{
    BmcTroubleOut, DeprovisionIn, HostCreate, HostOut, HostTimingOut, InspectionOut, PowerIn, ProvisionIn, TimingOut,
    host_out, image_credentials_from, image_from, spec_from,
};

/// The authenticated routes under `/api/v1`.
pub fn router(app: AppState) -> Router<AppState> {
    Router::new()
        .route("/api/v1/hosts", get(list_hosts).post(create_host))
        .route("/api/v1/import", post(crate::import_api::import))
        .route("/api/v1/hosts/{name}", get(get_host).delete(delete_host))
        .route("/api/v1/hosts/{name}/provision", post(provision))
        .route("/api/v1/hosts/{name}/deprovision", post(deprovision))
        .route("/api/v1/hosts/{name}/power", post(power))
        .route("/api/v1/hosts/{name}/inspect", post(inspect))
        .route("/api/v1/hosts/{name}/events", get(host_events))
        .route("/api/v1/hosts/{name}/timings", get(timings))
        .route("/api/v1/hosts/{name}/inspection", get(inspection))
        .route("/api/v1/events", get(all_events))
        .route("/api/v1/timings", get(fleet_timings))
        .layer(axum::middleware::from_fn_with_state(app, require_admin))
}

async fn require_admin(AxState(app): AxState<AppState>, req: Request, next: Next) -> Response {
    match bearer(req.headers()) {
        Some(t) if ct_eq(t, app.admin_token.expose()) => next.run(req).await,
        _ => ApiError::unauthorized().into_response(),
    }
}

fn unprocessable(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, field, msg)
}

fn parse_name(name: &str) -> Result<HostName, ApiError> {
    name.parse()
        .map_err(|e: kiln_engine::types::ParseError| ApiError::field(StatusCode::BAD_REQUEST, "name", e.0))
}

/// Applies an operator's change to a host: reads it, lets `change` check the preconditions and compute the new spec
/// and requests, and writes them only if nothing wrote the host in between; otherwise reads it again and re-checks,
/// so that a request is never lost to, or revived by, the executor's or another client's write.
async fn modify(
    app: &AppState,
    name: &str,
    mut change: impl FnMut(&Host) -> Result<(HostSpec, Requests), ApiError>,
) -> Result<Host, ApiError> {
    let mut attempt = 0;
    loop {
        let h = load(app, name).await?;
        let (spec, req) = change(&h)?;
        match app.store.update_spec(h.id, h.generation, &spec, &req, now()).await {
            Err(StoreError::Changed { .. }) if attempt < 8 => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(5 * attempt)).await;
            }
            r => return Ok(r?),
        }
    }
}

async fn load(app: &AppState, name: &str) -> Result<Host, ApiError> {
    let n = parse_name(name)?;
    app.store
        .host(&n)
        .await?
        .ok_or_else(|| ApiError::not_found(&format!("host {name}")))
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
/// What the enrolled hosts already use: names, boot MACs and BMC identities (read once per request, so a manifest
/// of many hosts is checked against the store in one read, not one per document).
#[derive(Default)]
pub(crate) struct Taken {
    names: std::collections::HashSet<HostName>,
    macs: std::collections::HashSet<kiln_engine::types::MacAddr>,
    /// BMC identity (an address's endpoint and System) → the host using it, with its address as written.
    bmcs: std::collections::HashMap<String, (HostName, String)>,
}

impl Taken {
    pub(crate) async fn load(app: &AppState) -> Result<Self, ApiError> {
        let mut taken = Self::default();
        for h in app.store.hosts().await? {
            taken.add(&h.name, &h.spec);
        }
        Ok(taken)
    }

    /// Counts `name` and what `spec` uses as taken (a manifest's earlier documents, say).
    pub(crate) fn add(&mut self, name: &HostName, spec: &HostSpec) {
        self.names.insert(name.clone());
        if let Some(mac) = spec.boot_mac {
            self.macs.insert(mac);
        }
        if let Some(b) = &spec.bmc {
            self.bmcs
                .insert(b.address.identity(), (name.clone(), b.address.to_string()));
        }
    }

    /// Refuses a host whose name, boot MAC or BMC is taken, as the store would.
    pub(crate) fn check(&self, name: &HostName, spec: &HostSpec) -> Result<(), ApiError> {
        if self.names.contains(name) {
            return Err(kiln_engine::store::StoreError::HostExists { host: name.to_string() }.into());
        }
        if let Some(mac) = spec.boot_mac
            && self.macs.contains(&mac)
        {
            return Err(kiln_engine::store::StoreError::MacInUse { mac: mac.to_string() }.into());
        }
        if let Some(b) = &spec.bmc
            && let Some((other, address)) = self.bmcs.get(&b.address.identity())
        {
            return Err(kiln_engine::store::StoreError::BmcInUse {
                address: address.clone(),
                other: other.to_string(),
            }
            .into());
        }
        Ok(())
    }
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
        Taken::load(&app).await?.check(&name, &spec)?;
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
    let h = app.store.create_host(&name, &spec, "host enrolled", now()).await?;
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
    if h.spec.boot_mac.is_none() {
        out.learned_macs = app
            .store
            .learned_macs(h.id)
            .await?
            .iter()
            .map(ToString::to_string)
            .collect();
    }
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
    let h = modify(&app, &name, |h| {
        let mut req = h.requests.clone();
        req.delete = true;
        Ok((h.spec.clone(), req))
    })
    .await?;
    app.executor.poke();
    Ok((StatusCode::ACCEPTED, Json(host_out(&h, None))))
}

async fn provision(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<(StatusCode, Json<HostOut>), ApiError> {
    let p: ProvisionIn = parse_body(&body)?;
    let image = image_from(&p.image)?;
    let credentials = image_credentials_from(&p.image);
    let h = modify(&app, &name, |h| {
        if h.spec.options.externally_provisioned {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                "host is externally provisioned; kiln never writes it",
            ));
        }
        let mut spec = h.spec.clone();
        spec.image = Some(image.clone());
        spec.image_credentials = credentials.clone();
        spec.user_data = p.user_data.clone();
        spec.network_data = p.network_data.clone();
        spec.meta_data = p.meta_data.clone();
        let mut req = h.requests.clone();
        // Provisioning a host whose provision failed retries it now, with this image (Ironic's re-deploy).
        req.retry = matches!(&h.state, State::Error(e) if e.operation == kiln_engine::machine::Operation::Provisioning);
        Ok((spec, req))
    })
    .await?;
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
    let d: DeprovisionIn = if body.is_empty() {
        DeprovisionIn::default()
    } else {
        parse_body(&body)?
    };
    let h = modify(&app, &name, |h| {
        let mut spec = h.spec.clone();
        spec.image = None;
        spec.image_credentials = None;
        if let Some(e) = d.erase {
            spec.options.erase = e;
        }
        Ok((spec, h.requests.clone()))
    })
    .await?;
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
    let h = modify(&app, &name, |h| {
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
        Ok((spec, req))
    })
    .await?;
    app.executor.poke();
    Ok((StatusCode::ACCEPTED, Json(host_out(&h, None))))
}

async fn inspect(
    AxState(app): AxState<AppState>,
    Path(name): Path<String>,
) -> Result<(StatusCode, Json<HostOut>), ApiError> {
    let h = modify(&app, &name, |h| {
        if !matches!(h.state, State::Available { .. } | State::Error(_)) {
            return Err(ApiError::new(
                StatusCode::CONFLICT,
                format!("host is {}; inspection needs an available host", h.state.name()),
            ));
        }
        let mut req = h.requests.clone();
        req.inspect = true;
        Ok((h.spec.clone(), req))
    })
    .await?;
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

/// The phases whose durations `GET /api/v1/timings` reports: the operations kiln times, and the sub-phases of the
/// agent jobs (`provisioning.running`).
const TIMED: [&str; 5] = [
    "registering",
    "inspecting",
    "preparing",
    "provisioning",
    "deprovisioning",
];
const JOB_SUB_PHASES: [&str; 3] = ["delayed", "booting", "running"];

#[derive(Deserialize)]
struct FleetTimingQuery {
    #[serde(default)]
    phase: Option<String>,
    #[serde(default)]
    limit: Option<i64>,
}

/// The latest finished records of one phase across the hosts, newest first: what the web page draws as the fleet's
/// distribution of inspection and provisioning durations, in one request instead of one per host.
async fn fleet_timings(
    AxState(app): AxState<AppState>,
    Query(q): Query<FleetTimingQuery>,
) -> Result<Json<Vec<HostTimingOut>>, ApiError> {
    let phase = q.phase.unwrap_or_default();
    let known = match phase.split_once('.') {
        Some((op, sub)) => TIMED[1..].contains(&op) && JOB_SUB_PHASES.contains(&sub),
        None => TIMED.contains(&phase.as_str()),
    };
    if !known {
        return Err(ApiError::field(
            StatusCode::BAD_REQUEST,
            "phase",
            format!(
                "phase must be one of {} (or a job's sub-phase: inspecting.running, provisioning.booting, ...), \
                 got {phase:?}",
                TIMED.join(", ")
            ),
        ));
    }
    let rows = app
        .store
        .finished_phases(&phase, q.limit.unwrap_or(200).clamp(1, 10_000))
        .await?;
    Ok(Json(
        rows.into_iter()
            .filter_map(|(host, r)| {
                let ended = r.ended?;
                Some(HostTimingOut {
                    host,
                    phase: r.phase,
                    started: r.started.rfc3339(),
                    ended: ended.rfc3339(),
                    duration_ms: ended.since(r.started),
                    outcome: r.outcome,
                })
            })
            .collect(),
    ))
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
