//! A stand-in appliance for the agent's tests: the four `/agent/v1` endpoints plus an image route, on loopback. (The
//! ramdisk, the OS image and the VMs that boot them come from the test kit, `kiln_tests`.)

#![allow(dead_code)]

use std::collections::VecDeque;
use std::path::Path;

use std::sync::{Arc, Mutex};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use kiln_images::protocol::{
    Command as AgentCommand, CommandKind, CommandResult, HardwareInventory, Heartbeat, HeartbeatReply, Progress,
};

/// What the stand-in appliance saw.
#[derive(Debug, Default)]
pub struct Seen {
    pub heartbeats: Vec<Heartbeat>,
    pub inventory: Vec<HardwareInventory>,
    pub progress: Vec<Progress>,
    pub results: Vec<CommandResult>,
    pub unauthorized: u32,
}

/// A minimal appliance: hands out `script` one command at a time, the next only after the previous result arrived.
#[derive(Debug)]
pub struct Appliance {
    pub token: String,
    pub script: Mutex<VecDeque<AgentCommand>>,
    pub current: Mutex<Option<AgentCommand>>,
    pub seen: Mutex<Seen>,
}

fn authorized(app: &Appliance, h: &HeaderMap) -> bool {
    let ok = h.get("authorization").and_then(|v| v.to_str().ok()) == Some(&format!("Bearer {}", app.token));
    if !ok {
        app.seen.lock().unwrap().unauthorized += 1;
    }
    ok
}

async fn heartbeat(
    State(app): State<Arc<Appliance>>,
    h: HeaderMap,
    Json(hb): Json<Heartbeat>,
) -> Result<Json<HeartbeatReply>, StatusCode> {
    if !authorized(&app, &h) {
        return Err(StatusCode::UNAUTHORIZED);
    }
    app.seen.lock().unwrap().heartbeats.push(hb);
    let mut cur = app.current.lock().unwrap();
    let done = |c: &AgentCommand| app.seen.lock().unwrap().results.iter().any(|r| r.command_id == c.id);
    if cur.as_ref().is_none_or(done) {
        *cur = app.script.lock().unwrap().pop_front();
    }
    Ok(Json(HeartbeatReply {
        command: cur.clone(),
        interval_secs: 1,
    }))
}

async fn inventory(State(app): State<Arc<Appliance>>, h: HeaderMap, Json(inv): Json<HardwareInventory>) -> StatusCode {
    if !authorized(&app, &h) {
        return StatusCode::UNAUTHORIZED;
    }
    app.seen.lock().unwrap().inventory.push(inv);
    StatusCode::NO_CONTENT
}

async fn progress(State(app): State<Arc<Appliance>>, h: HeaderMap, Json(p): Json<Progress>) -> StatusCode {
    if !authorized(&app, &h) {
        return StatusCode::UNAUTHORIZED;
    }
    app.seen.lock().unwrap().progress.push(p);
    StatusCode::NO_CONTENT
}

async fn result(State(app): State<Arc<Appliance>>, h: HeaderMap, Json(r): Json<CommandResult>) -> StatusCode {
    if !authorized(&app, &h) {
        return StatusCode::UNAUTHORIZED;
    }
    app.seen.lock().unwrap().results.push(r);
    StatusCode::NO_CONTENT
}

/// Starts the appliance on `127.0.0.1:0`; returns it and its port.
pub async fn start_appliance(token: &str, script: Vec<CommandKind>, files: &Path) -> (Arc<Appliance>, u16) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    (serve(listener, token, script, files), port)
}

/// Starts the appliance on a given loopback port.
pub async fn start_appliance_on(port: u16, token: &str, script: Vec<CommandKind>, files: &Path) -> Arc<Appliance> {
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
    serve(listener, token, script, files)
}

/// Files under `files` are served at `/files/...` (with Range support). The server task ends with the runtime.
fn serve(listener: tokio::net::TcpListener, token: &str, script: Vec<CommandKind>, files: &Path) -> Arc<Appliance> {
    let app = Arc::new(Appliance {
        token: token.to_string(),
        script: Mutex::new(
            script
                .into_iter()
                .enumerate()
                .map(|(i, kind)| AgentCommand { id: i as u64 + 1, kind })
                .collect(),
        ),
        current: Mutex::new(None),
        seen: Mutex::new(Seen::default()),
    });
    let router = axum::Router::new()
        .route("/agent/v1/heartbeat", post(heartbeat))
        .route("/agent/v1/inventory", post(inventory))
        .route("/agent/v1/progress", post(progress))
        .route("/agent/v1/result", post(result))
        .with_state(app.clone())
        .nest_service("/files", tower_http::services::ServeDir::new(files));
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    app
}
