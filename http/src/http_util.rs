//! Shared pieces of the HTTP layer: the application state handed to handlers, JSON errors naming the bad field,
//! body parsing that reports unknown and missing fields, and bearer tokens.

use std::sync::Arc;

use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use kiln_bmc::Secret;
use serde::de::DeserializeOwned;
use serde_json::json;

use kiln_engine::executor::Executor;
use kiln_engine::metrics::Metrics;
use kiln_engine::store::{Store, StoreError};

/// What every handler gets.
#[derive(Clone)]
pub struct AppState {
    pub store: Arc<dyn Store>,
    pub executor: Arc<Executor>,
    pub metrics: Arc<Metrics>,
    /// The admin bearer token of `/api/v1`.
    pub admin_token: Arc<Secret>,
    /// Seconds between agent heartbeats.
    pub heartbeat_secs: u32,
    /// Counters of the netboot services (all zero when they do not run).
    pub pxe_counters: Arc<kiln_pxe::PxeCounters>,
    /// Whether `fake://` hosts are simulated (reported by `/healthz`, so that nobody mistakes a simulator for a
    /// real appliance).
    pub simulate: bool,
    /// The per-source limit of the routes reachable without the admin token (agent API, `/boot`).
    pub source_limiter: Arc<crate::ratelimit::SourceLimiter>,
    /// Cancelled when the appliance starts stopping: requests held open (idle agents' heartbeats) are answered.
    pub stopping: tokio_util::sync::CancellationToken,
}

/// A JSON error: `{"error": "...", "field": "..."}`.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub error: String,
    pub field: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            field: None,
        }
    }
    pub fn field(status: StatusCode, field: &str, error: impl Into<String>) -> Self {
        Self {
            status,
            error: error.into(),
            field: Some(field.to_owned()),
        }
    }
    pub fn unauthorized() -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "missing or invalid bearer token")
    }
    pub fn not_found(what: &str) -> Self {
        Self::new(StatusCode::NOT_FOUND, format!("{what} not found"))
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "error": self.error });
        if let Some(f) = self.field {
            body["field"] = json!(f);
        }
        let mut r = (self.status, axum::Json(body)).into_response();
        if self.status == StatusCode::UNAUTHORIZED {
            r.headers_mut()
                .insert("www-authenticate", axum::http::HeaderValue::from_static("Bearer"));
        }
        if self.status == StatusCode::SERVICE_UNAVAILABLE && !r.headers().contains_key("retry-after") {
            r.headers_mut()
                .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        }
        r
    }
}

impl From<kiln_engine::wire::Invalid> for ApiError {
    fn from(e: kiln_engine::wire::Invalid) -> Self {
        ApiError::field(StatusCode::UNPROCESSABLE_ENTITY, &e.field, e.message)
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match &e {
            StoreError::HostExists { .. } => ApiError::field(StatusCode::CONFLICT, "name", e.to_string()),
            StoreError::MacInUse { .. } => ApiError::field(StatusCode::CONFLICT, "boot_mac", e.to_string()),
            StoreError::BmcInUse { .. } => ApiError::field(StatusCode::CONFLICT, "bmc.address", e.to_string()),
            StoreError::HostNotFound { .. } => ApiError::new(StatusCode::NOT_FOUND, e.to_string()),
            StoreError::Changed { .. } => ApiError::new(StatusCode::CONFLICT, e.to_string()),
            StoreError::Db { .. }
            | StoreError::Migrate(_)
            | StoreError::Corrupt { .. }
            | StoreError::Crypto { .. }
            | StoreError::BadUrl { .. } => {
                tracing::error!(error = %kiln_engine::bmcs::chain(&e), "store failure");
                ApiError::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store unavailable; see the appliance log",
                )
            }
        }
    }
}

/// The name between backticks in a serde message (`unknown field `x``, `missing field `y``).
fn backticked(msg: &str) -> Option<String> {
    let start = msg.find('`')? + 1;
    let len = msg[start..].find('`')?;
    Some(msg[start..start + len].to_owned())
}

/// Parses a JSON body; malformed JSON is 400, unknown/missing/mistyped fields are 422 naming the field.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    let value: serde_json::Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, format!("request body is not valid JSON: {e}")))?;
    serde_json::from_value(value).map_err(|e| {
        let msg = e.to_string();
        let field = backticked(&msg).filter(|_| msg.contains("field"));
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            error: msg,
            field,
        }
    })
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")?
        .to_str()
        .ok()?
        .strip_prefix("Bearer ")
        .map(str::trim)
}
