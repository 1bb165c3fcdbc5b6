//! kiln's HTTPS listener and its routes: the REST API, the agent API, `/healthz`, `/metrics`, the OpenAPI document
//! and the web page, served by hyper with bounded resources (header and handshake timeouts, a connection cap,
//! graceful shutdown).

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use axum::extract::State as AxState;
use axum::http::header;
use axum::response::IntoResponse;
use axum::{Json, Router, routing::get};
use serde::Deserialize;
use serde_json::json;
use tokio::net::TcpListener;

use crate::http_util::{ApiError, AppState};

/// What one client may hold of kiln's HTTP listener (a firmware's or an attacker's half-sent request must not keep a
/// connection open for good).
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HttpLimits {
    /// Seconds a client has to send a request's headers, and that an idle keep-alive connection stays open.
    pub header_read_timeout_secs: u64,
    /// Connections open at once; more are closed at once (and counted).
    pub max_connections: usize,
    /// Requests a second one client address may make, on average, to the routes reachable without the admin token
    /// (agent API, `/boot`); 0 turns the limit off.
    pub per_source_requests_per_second: u32,
    /// Requests one client address may make at once before the average applies.
    pub per_source_burst: u32,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_read_timeout_secs: 30,
            max_connections: 1024,
            per_source_requests_per_second: 50,
            per_source_burst: 200,
        }
    }
}

/// Builds the appliance's HTTP router: every route on one listener (the default, and the demo's layout).
pub fn router(state: AppState) -> Router {
    with_common(
        admin_routes(state.clone()).merge(provisioning_routes(state.clone())),
        state,
    )
}

/// The routes for the management network when the admin API has a listener of its own (`admin_listen`): the REST
/// API, the web page, `/metrics` and the OpenAPI document.
pub fn admin_router(state: AppState) -> Router {
    with_common(admin_routes(state.clone()), state)
}

/// The routes for the provisioning network when the admin API has a listener of its own: what agents and BMCs
/// reach (the agent API, the virtual-media ISOs), nothing that takes the admin token.
pub fn provisioning_router(state: AppState) -> Router {
    with_common(provisioning_routes(state.clone()), state)
}

fn with_common(routes: Router<AppState>, state: AppState) -> Router {
    routes
        .route("/healthz", get(healthz))
        .fallback(|| async { ApiError::not_found("route") })
        .with_state(state)
}

fn admin_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/openapi.json", get(openapi))
        .route("/", get(|| async { axum::response::Redirect::to("/ui") }))
        .route(
            "/ui",
            get(|| ui("text/html; charset=utf-8", include_str!("ui/index.html"))),
        )
        .route(
            "/ui/app.js",
            get(|| ui("text/javascript; charset=utf-8", include_str!("ui/app.js"))),
        )
        .route(
            "/ui/charts.js",
            get(|| ui("text/javascript; charset=utf-8", include_str!("ui/charts.js"))),
        )
        .route(
            "/ui/fleet.js",
            get(|| ui("text/javascript; charset=utf-8", include_str!("ui/fleet.js"))),
        )
        .route(
            "/ui/host.js",
            get(|| ui("text/javascript; charset=utf-8", include_str!("ui/host.js"))),
        )
        .route(
            "/ui/enroll.js",
            get(|| ui("text/javascript; charset=utf-8", include_str!("ui/enroll.js"))),
        )
        .route(
            "/ui/style.css",
            get(|| ui("text/css; charset=utf-8", include_str!("ui/style.css"))),
        )
        .merge(crate::api::router(state.clone()))
}

fn provisioning_routes(state: AppState) -> Router<AppState> {
    Router::new()
        .merge(crate::agent_api::router().layer(axum::middleware::from_fn_with_state(
            state.source_limiter.clone(),
            crate::ratelimit::limit,
        )))
        // Not limited: a BMC reads its virtual CD in many small ranges, and the ISO's name is 128 random bits.
        .merge(crate::media::router())
}

pub async fn healthz(AxState(app): AxState<AppState>) -> impl IntoResponse {
    let store_ok = app.store.events(None, 1).await.is_ok();
    let code = if store_ok {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(
            json!({ "status": if store_ok { "ok" } else { "store unavailable" }, "version": env!("CARGO_PKG_VERSION"), "store": app.store.backend(), "simulate": app.simulate }),
        ),
    )
}

async fn metrics(AxState(app): AxState<AppState>) -> Result<impl IntoResponse, ApiError> {
    let mut by_state: BTreeMap<(String, String), u64> = BTreeMap::new();
    for h in app.store.hosts().await? {
        *by_state
            .entry((h.state.name().to_owned(), h.state.operational_status().to_owned()))
            .or_default() += 1;
    }
    let mut text = app.metrics.render(&by_state);
    text.push_str("# HELP kiln_http_rate_limited_total Requests answered 429 by the per-source limit.\n");
    text.push_str("# TYPE kiln_http_rate_limited_total counter\n");
    text.push_str(&format!(
        "kiln_http_rate_limited_total {}\n",
        app.source_limiter.limited()
    ));
    text.push_str("# HELP kiln_pxe_events_total DHCP, TFTP and HTTP boot counters.\n");
    text.push_str("# TYPE kiln_pxe_events_total counter\n");
    for (name, v) in app.pxe_counters.snapshot() {
        text.push_str(&format!("kiln_pxe_events_total{{event=\"{name}\"}} {v}\n"));
    }
    Ok(([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text))
}

/// The web page's static files. The page is a client of the REST API with the admin token the user pastes (kept in
/// the tab's sessionStorage), so serving it needs no auth; the CSP allows only kiln's own scripts and styles.
async fn ui(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'self'; script-src 'self'; style-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}

async fn openapi() -> impl IntoResponse {
    static DOC: std::sync::LazyLock<String> = std::sync::LazyLock::new(crate::openapi::document_text);
    ([(header::CONTENT_TYPE, "application/json")], DOC.as_str())
}

/// Serves `app` on `listener` until `shutdown` completes, then lets open requests finish (10 s at most). Unlike
/// `axum::serve`, it bounds what a client can hold: request headers (and an idle keep-alive connection) time out,
/// and connections beyond the cap are closed at once.
pub async fn serve(
    listener: TcpListener,
    app: Router,
    limits: HttpLimits,
    tls: Option<tokio_rustls::TlsAcceptor>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    // HTTP/1.1 only: kiln's clients (the agent, firmware, the CLI, browsers on plain HTTP) speak it, and hyper's
    // header-read timeout then covers a connection from its first byte (the auto builder waits for a version
    // preface first, untimed).
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(std::time::Duration::from_secs(limits.header_read_timeout_secs.max(1)));
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let slots = Arc::new(tokio::sync::Semaphore::new(limits.max_connections.max(1)));
    let mut refused: u64 = 0;
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => {
                    // Out of file descriptors and the like: wait a moment rather than spin.
                    tracing::warn!(error = %e, "accepting an HTTP connection failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            refused += 1;
            if refused.is_power_of_two() {
                tracing::warn!(%peer, refused, max = limits.max_connections, "HTTP connection limit reached; closing new ones");
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        match &tls {
            None => {
                let app = app.clone().layer(axum::Extension(axum::extract::ConnectInfo(peer)));
                let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
                let conn = graceful.watch(conn);
                tokio::spawn(async move {
                    if let Err(e) = conn.await {
                        tracing::debug!(%peer, error = %e, "HTTP connection ended with an error");
                    }
                    drop(slot);
                });
            }
            Some(acceptor) => {
                // The handshake gets the same time as a request's headers: a client that opens a connection and
                // sends nothing (or half a ClientHello) must not hold its slot.
                let app = app.clone().layer(axum::Extension(axum::extract::ConnectInfo(peer)));
                let (acceptor, builder) = (acceptor.clone(), builder.clone());
                let handshake = std::time::Duration::from_secs(limits.header_read_timeout_secs.max(1));
                let watcher = graceful.watcher();
                tokio::spawn(async move {
                    let stream = match tokio::time::timeout(handshake, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "TLS handshake timed out");
                            return;
                        }
                    };
                    let conn = builder.serve_connection(TokioIo::new(stream), TowerToHyperService::new(app));
                    if let Err(e) = watcher.watch(conn).await {
                        tracing::debug!(%peer, error = %e, "HTTPS connection ended with an error");
                    }
                    drop(slot);
                });
            }
        }
    }
    drop(listener);
    if tokio::time::timeout(std::time::Duration::from_secs(10), graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open HTTP connections did not finish within 10 s of shutdown");
    }
    Ok(())
}
