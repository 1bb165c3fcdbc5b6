//! The agent API under `/agent/v1` (endpoints documented in `kiln_images::protocol`): one-time boot tokens are
//! checked against the host's current boot and phase, heartbeats hand out the next queued command, reports are
//! stored, and a discovery boot is bound to its host by BMC address (and handed its boot's token). It owns token
//! checks; it must not change host states (the executor does, from what is stored here).

use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State as AxState;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use kiln_images::protocol::{
    Command, CommandResult, Discover, DiscoverReply, HardwareInventory, Heartbeat, HeartbeatReply, Progress,
};

use crate::http_util::{ApiError, AppState, bearer, parse_body};
use kiln_engine::crypto::hash_token;
use kiln_engine::executor::{now, outcome_label};
use kiln_engine::model::Host;
use kiln_engine::store::{CommandStatus, Finish, TokenHandout};

/// The routes under `/agent/v1`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/agent/v1/heartbeat", post(heartbeat))
        .route("/agent/v1/inventory", post(inventory))
        .route("/agent/v1/progress", post(progress))
        .route("/agent/v1/result", post(result))
        .route("/agent/v1/discover", post(discover))
}

/// The host and boot a token is valid for, right now.
async fn authenticate(app: &AppState, headers: &HeaderMap, endpoint: &'static str) -> Result<(Host, u64), ApiError> {
    let deny = |why: &'static str| {
        app.metrics.inc(
            "kiln_agent_requests_total",
            vec![("endpoint", endpoint.into()), ("outcome", why.into())],
        );
        tracing::warn!(endpoint, why, "agent request refused");
        ApiError::unauthorized()
    };
    let token = bearer(headers).ok_or_else(|| deny("no_token"))?;
    let hash = hash_token(token);
    let Some((rec, host)) = app.store.token_host(&hash).await? else {
        // Which refusal it is, for the counter: a token nobody minted, or one whose host was deleted.
        return Err(match app.store.token(&hash).await? {
            Some(_) => deny("host_gone"),
            None => deny("unknown_token"),
        });
    };
    if rec.revoked {
        return Err(deny("revoked_token"));
    }
    // Valid only for the boot and phase it was minted for: an old boot's agent is turned away. A token of the boot
    // being started (minted, and the host powered on, before the executor commits the boot) is not refused: the
    // agent is told to come back, since a fast boot (virtual media read at LAN speed, a simulated host) can reach
    // kiln before that commit.
    let current = host.state.job().map(|j| j.boot);
    if current != Some(rec.boot) || host.state.name() != rec.phase {
        if rec.boot > host.counters.boots {
            app.metrics.inc(
                "kiln_agent_requests_total",
                vec![("endpoint", endpoint.into()), ("outcome", "boot_starting".into())],
            );
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("boot {} of this host is still being started; retry", rec.boot),
            ));
        }
        return Err(deny("stale_token"));
    }
    app.metrics.inc(
        "kiln_agent_requests_total",
        vec![("endpoint", endpoint.into()), ("outcome", "ok".into())],
    );
    Ok((host, rec.boot))
}

async fn heartbeat(
    AxState(app): AxState<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<HeartbeatReply>, ApiError> {
    let (host, boot) = authenticate(&app, &headers, "heartbeat").await?;
    let hb: Heartbeat = parse_body(&body)?;
    let first = app.store.heartbeat(host.id, boot, now()).await?;
    if first {
        app.store
            .add_event(
                host.name.as_str(),
                now(),
                "agent",
                &format!("agent {} first heartbeat (boot {boot})", hb.agent_version),
            )
            .await?;
        app.executor.wake(host.id);
    }
    let mut command = next_command(&app, host.id, boot, hb.busy_with).await?;
    // An idle agent that says it can wait is answered when a command is queued for it, or after at most its wait
    // and the heartbeat interval (so a lost ring costs one interval, as without the wait).
    let wait = hb.wait_secs.unwrap_or(0).min(app.heartbeat_secs).min(MAX_HOLD_SECS);
    if command.is_none() && hb.busy_with.is_none() && wait > 0 {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(u64::from(wait));
        let waiter = app.executor.command_bells().wait_for(host.id);
        loop {
            let rung = waiter.bell().notified();
            tokio::pin!(rung);
            rung.as_mut().enable();
            command = next_command(&app, host.id, boot, None).await?;
            // A ring for something else (another replica's news of this host) waits again until the deadline.
            if command.is_some() {
                break;
            }
            tokio::select! {
                _ = &mut rung => {}
                () = tokio::time::sleep_until(deadline) => break,
                () = app.stopping.cancelled() => break,
            }
        }
    }
    Ok(Json(HeartbeatReply {
        command,
        interval_secs: app.heartbeat_secs,
    }))
}

/// The longest an idle heartbeat is held, whatever the agent and interval say (well below the agent's request
/// timeout).
const MAX_HOLD_SECS: u32 = 30;

/// The command to hand out with a heartbeat: the boot's pending command, until the agent says it is busy with it (a
/// lost reply is resent); marked sent when first handed out.
async fn next_command(
    app: &AppState,
    host_id: i64,
    boot: u64,
    busy_with: Option<u64>,
) -> Result<Option<Command>, ApiError> {
    let Some(c) = app.store.pending_command(host_id, boot).await? else {
        return Ok(None);
    };
    if busy_with == Some(c.id) {
        return Ok(None);
    }
    if c.status == CommandStatus::Queued {
        app.store
            .set_command_status(host_id, c.id, CommandStatus::Sent, None, now())
            .await?;
    }
    Ok(Some(Command {
        id: c.id,
        kind: c.command,
    }))
}

async fn inventory(AxState(app): AxState<AppState>, headers: HeaderMap, body: Bytes) -> Result<StatusCode, ApiError> {
    let (host, _) = authenticate(&app, &headers, "inventory").await?;
    let inv: HardwareInventory = parse_body(&body)?;
    let value =
        serde_json::to_value(&inv).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    app.store.put_inspection(host.id, &value, now()).await?;
    app.store
        .add_event(
            host.name.as_str(),
            now(),
            "inspection",
            &format!(
                "{} CPUs, {} MiB, {} disks, {} NICs",
                inv.cpu.count,
                inv.memory_mib,
                inv.disks.len(),
                inv.nics.len()
            ),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn progress(AxState(app): AxState<AppState>, headers: HeaderMap, body: Bytes) -> Result<StatusCode, ApiError> {
    let (host, boot) = authenticate(&app, &headers, "progress").await?;
    let p: Progress = parse_body(&body)?;
    let value = serde_json::to_value(&p).map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, e.to_string()))?;
    let changed = app
        .store
        .record_progress(host.id, boot, &p.phase, &value, now())
        .await?;
    if changed {
        app.store
            .add_event(
                host.name.as_str(),
                now(),
                "progress",
                &format!("agent phase {} (command {})", p.phase, p.command_id),
            )
            .await?;
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn result(AxState(app): AxState<AppState>, headers: HeaderMap, body: Bytes) -> Result<StatusCode, ApiError> {
    let (host, boot) = authenticate(&app, &headers, "result").await?;
    let r: CommandResult = parse_body(&body)?;
    let message = format!("command {} {}", r.command_id, outcome_label(&r.outcome));
    let event = (host.name.as_str(), "agent", message.as_str());
    match app
        .store
        .finish_command(host.id, boot, r.command_id, &r.outcome, event, now())
        .await?
    {
        Finish::Recorded => {}
        Finish::AlreadyFinished => return Ok(StatusCode::NO_CONTENT), // a retried report
        Finish::NotFound => {
            return Err(ApiError::field(
                StatusCode::NOT_FOUND,
                "command_id",
                format!("no command {} for this boot", r.command_id),
            ));
        }
    }
    app.executor.wake(host.id);
    Ok(StatusCode::NO_CONTENT)
}

/// The IP addresses a host's BMC address names: the address itself, or what its name resolves to (bounded: a
/// resolver that does not answer makes the host no candidate, never a stalled request).
async fn bmc_ips(h: &Host) -> Vec<std::net::IpAddr> {
    let host = match h.spec.bmc.as_ref().map(|b| &b.address) {
        Some(kiln_bmc::BmcAddress::Ipmi(a)) => a.host.clone(),
        Some(kiln_bmc::BmcAddress::Redfish(a)) => a.host.clone(),
        Some(kiln_bmc::BmcAddress::Fake(_)) | None => return Vec::new(),
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    if let Ok(ip) = bare.parse() {
        return vec![ip];
    }
    match tokio::time::timeout(Duration::from_secs(3), tokio::net::lookup_host((bare, 0))).await {
        Ok(Ok(addrs)) => addrs.map(|a| a.ip()).collect(),
        _ => Vec::new(),
    }
}

/// `POST /agent/v1/discover` (no token): binds a discovery boot to the one waiting host whose BMC is at an address
/// the agent read in-band, learns the agent's NIC MACs for that host, and hands over the boot's token, once. Never
/// guesses: several candidates are refused (409) and each gets an event naming the others.
async fn discover(AxState(app): AxState<AppState>, body: Bytes) -> Result<Json<DiscoverReply>, ApiError> {
    let d: Discover = parse_body(&body)?;
    let outcome = |why: &'static str| {
        app.metrics.inc(
            "kiln_agent_requests_total",
            vec![("endpoint", "discover".into()), ("outcome", why.into())],
        );
    };
    let addresses = d
        .bmc_addresses
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ");
    if d.bmc_addresses.is_empty() {
        outcome("no_bmc_address");
        return Err(ApiError::field(
            StatusCode::NOT_FOUND,
            "bmc_addresses",
            format!(
                "the agent booted from {} could read no BMC address in-band (no IPMI system interface?): kiln cannot \
                 tell which host it is; set the host's boot MAC",
                d.boot_mac
            ),
        ));
    }
    let mut matches = Vec::new();
    for h in app.store.discovery_hosts().await? {
        if !kiln_engine::netboot::awaits_discovery_boot(&h) {
            continue;
        }
        if bmc_ips(&h).await.iter().any(|ip| d.bmc_addresses.contains(ip)) {
            matches.push(h);
        }
    }
    let host = match matches.len() {
        0 => {
            outcome("no_candidate");
            tracing::info!(mac = %d.boot_mac, bmc = %addresses, "discovery boot matches no waiting host");
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                format!("no host waiting for a discovery boot has a BMC at {addresses}"),
            ));
        }
        1 => matches.remove(0),
        _ => {
            outcome("ambiguous");
            let names = matches
                .iter()
                .map(|h| h.name.to_string())
                .collect::<Vec<_>>()
                .join(", ");
            let msg = format!(
                "the agent booted from {} reports BMC address {addresses}, which is the BMC of several hosts waiting \
                 for a discovery boot ({names}): kiln does not guess; set bootMACAddress on them",
                d.boot_mac
            );
            for h in &matches {
                app.store
                    .add_event(h.name.as_str(), now(), "discovery_ambiguous", &msg)
                    .await?;
            }
            return Err(ApiError::new(StatusCode::CONFLICT, msg));
        }
    };
    let Some(job) = host.state.job() else {
        outcome("no_candidate");
        return Err(ApiError::new(StatusCode::NOT_FOUND, "the host stopped waiting"));
    };
    let token = match app.store.take_token(host.id, job.boot).await? {
        TokenHandout::Token(t) => t,
        TokenHandout::None => {
            outcome("boot_starting");
            return Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("boot {} of this host is still being started; retry", job.boot),
            ));
        }
        TokenHandout::AlreadyTaken => {
            outcome("already_bound");
            let msg = format!(
                "a second agent (booted from {}) reported this host's BMC address {addresses} after boot {} was \
                 already bound: refused; inspect or provision the host again to boot it anew",
                d.boot_mac, job.boot
            );
            app.store
                .add_event(host.name.as_str(), now(), "discovery_refused", &msg)
                .await?;
            return Err(ApiError::new(StatusCode::CONFLICT, msg));
        }
    };
    let mut macs = vec![d.boot_mac];
    macs.extend(d.macs.iter().filter(|m| **m != d.boot_mac).copied());
    let kept = app.store.set_learned_macs(host.id, &macs).await?;
    let kept = kept.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
    app.store
        .add_event(
            host.name.as_str(),
            now(),
            "discovered",
            &format!(
                "the agent booted from {} reports BMC address {addresses}: bound to this host (boot {}); kiln now \
                 recognises it by {kept}",
                d.boot_mac, job.boot
            ),
        )
        .await?;
    outcome("bound");
    app.executor.wake(host.id);
    Ok(Json(DiscoverReply {
        host: host.name.to_string(),
        token: token.expose().to_owned(),
    }))
}
