//! The HTTP side of the Redfish driver (DMTF DSP0266): authentication (session or basic), pacing, retries with
//! backoff, task monitors and error mapping. It knows nothing about Systems or power; `super` does.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::model::{ErrorBody, ServiceRoot, SessionService, Task};
use crate::address::RedfishAddress;
use crate::config::{BmcOptions, Credentials};
use crate::error::BmcError;
use crate::throttle::Throttle;
use crate::types::Secret;

/// DSP0266 section 13.3.4: the header carrying a session token.
const X_AUTH_TOKEN: &str = "X-Auth-Token";

/// How requests are authenticated.
#[derive(Debug, Clone)]
enum Auth {
    /// Before discovery: the service root needs no authentication (DSP0266 section 13.3.1).
    Anonymous,
    Basic,
    Session {
        token: Secret,
        location: Option<String>,
    },
}

/// An answer from the BMC with a 2xx status.
#[derive(Debug)]
pub(crate) struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    /// The path of the final URL, after redirects (sushy answers a System by name with a 307 to its UUID).
    pub final_path: String,
    pub body: Vec<u8>,
}

/// One Redfish service.
pub(crate) struct Client {
    http: reqwest::Client,
    origin: String,
    pub(crate) bmc: String,
    creds: Credentials,
    pub(crate) opts: BmcOptions,
    throttle: Arc<Throttle>,
    auth: Mutex<Auth>,
    sessions_path: Mutex<Option<String>>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("redfish::Client")
            .field("bmc", &self.bmc)
            .field("user", &self.creds.username)
            .finish()
    }
}

/// The largest response body kiln reads from a BMC (an inventory of a large server is well under 1 MiB).
const MAX_BODY: usize = 16 << 20;

/// A redirect to another origin, refused.
#[derive(Debug, thiserror::Error)]
#[error("refusing a redirect to {0}: it is not on the BMC's origin")]
struct CrossOriginRedirect(String);

/// Follows up to 5 redirects, all on the BMC's origin: a token or password header must never be carried elsewhere.
fn same_origin_redirects(origin: &str) -> reqwest::redirect::Policy {
    let ours = reqwest::Url::parse(origin).ok().map(|u| u.origin());
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("too many redirects");
        }
        match &ours {
            Some(o) if attempt.url().origin() == *o => attempt.follow(),
            _ => {
                let to = attempt.url().to_string();
                attempt.error(CrossOriginRedirect(to))
            }
        }
    })
}

impl Client {
    /// Builds the HTTP client; does not talk to the BMC yet.
    pub(crate) fn new(address: &RedfishAddress, creds: Credentials, opts: BmcOptions) -> Result<Self, BmcError> {
        let bmc = address.endpoint();
        // kiln uses ring everywhere (one rustls provider per process); a no-op when main already installed it.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut builder = reqwest::Client::builder()
            .timeout(opts.request_timeout)
            .connect_timeout(opts.connect_timeout)
            .pool_max_idle_per_host(1)
            .user_agent(concat!("kiln-bmc/", env!("CARGO_PKG_VERSION")))
            .redirect(same_origin_redirects(&address.origin()));
        if opts.disable_certificate_verification {
            builder = builder.tls_danger_accept_invalid_certs(true);
        }
        if let Some(pem) = &opts.ca_bundle_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem).map_err(|e| BmcError::Tls {
                bmc: bmc.clone(),
                source: format!("the CA bundle does not parse: {e}").into(),
            })?;
            for cert in certs {
                builder = builder.add_root_certificate(cert);
            }
        }
        let http = builder.build().map_err(|e| BmcError::Tls {
            bmc: bmc.clone(),
            source: Box::new(e),
        })?;
        let throttle = Throttle::for_bmc(&format!("redfish {bmc}"), opts.min_request_interval);
        Ok(Self {
            http,
            origin: address.origin(),
            bmc,
            creds,
            opts,
            throttle,
            auth: Mutex::new(Auth::Anonymous),
            sessions_path: Mutex::new(None),
        })
    }

    fn auth(&self) -> Auth {
        self.auth.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set_auth(&self, auth: Auth) {
        *self.auth.lock().unwrap_or_else(|e| e.into_inner()) = auth;
    }

    /// Authenticates every request with HTTP basic authentication from now on.
    pub(crate) fn use_basic_auth(&self) {
        self.set_auth(Auth::Basic);
    }

    /// Whether the client authenticates with a session token (else basic auth).
    pub(crate) fn uses_session(&self) -> bool {
        matches!(self.auth(), Auth::Session { .. })
    }

    /// Logs in: a session when the service has a SessionService, basic authentication otherwise or when
    /// session creation is not implemented (DSP0266 section 13.3).
    pub(crate) async fn login(&self, root: &ServiceRoot) -> Result<(), BmcError> {
        let sessions = match (
            &root.links.as_ref().and_then(|l| l.sessions.clone()),
            &root.session_service,
        ) {
            (Some(link), _) => Some(link.id.clone()),
            (None, Some(service)) => match self.get_json::<SessionService>(&service.id).await {
                Ok(s) if s.service_enabled != Some(false) => s.sessions.map(|l| l.id),
                Ok(_) => None,
                Err(e) if e.kind() == crate::error::BmcErrorKind::Refused => None,
                Err(e) => return Err(e),
            },
            (None, None) => None,
        };
        let Some(sessions) = sessions else {
            tracing::debug!(bmc = %self.bmc, "no SessionService: using basic authentication");
            self.set_auth(Auth::Basic);
            return Ok(());
        };
        *self.sessions_path.lock().unwrap_or_else(|e| e.into_inner()) = Some(sessions.clone());
        self.create_session(&sessions).await
    }

    async fn create_session(&self, sessions: &str) -> Result<(), BmcError> {
        let body = serde_json::json!({"UserName": self.creds.username, "Password": self.creds.password.expose()});
        // Sent without authentication and never retried blindly: a BMC counts failed logins.
        let operation = format!("POST {sessions}");
        let response = self.send_once(Method::POST, sessions, Some(&body), None, false).await;
        let (status, headers, _final_path, bytes) = response?;
        match status {
            s if s.is_success() => {
                let token = headers
                    .get(X_AUTH_TOKEN)
                    .and_then(|v| v.to_str().ok())
                    .ok_or_else(|| self.protocol(&operation, "session created without an X-Auth-Token header"))?;
                let location = headers
                    .get(header::LOCATION)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string)
                    .or_else(|| {
                        serde_json::from_slice::<serde_json::Value>(&bytes)
                            .ok()
                            .and_then(|v| v.get("@odata.id")?.as_str().map(str::to_string))
                    })
                    .map(|l| self.path_of(&operation, &l))
                    .transpose()?;
                tracing::debug!(bmc = %self.bmc, session = ?location, "created Redfish session");
                self.set_auth(Auth::Session {
                    token: Secret::new(token),
                    location,
                });
                Ok(())
            }
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => Err(self.auth_failed(status, &bytes)),
            StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED | StatusCode::NOT_IMPLEMENTED => {
                tracing::debug!(bmc = %self.bmc, %status, "session creation not available: using basic authentication");
                self.set_auth(Auth::Basic);
                Ok(())
            }
            _ => Err(self.http_error(&operation, status, &bytes)),
        }
    }

    /// Deletes the session, if any (leaked sessions lock some BMCs out). Afterwards requests use basic auth.
    pub(crate) async fn logout(&self) -> Result<(), BmcError> {
        let Auth::Session { location, .. } = self.auth() else {
            return Ok(());
        };
        let result = match &location {
            Some(path) => self.request(Method::DELETE, path, None).await.map(|_| ()),
            None => Ok(()),
        };
        self.set_auth(Auth::Anonymous);
        if result.is_ok() {
            tracing::debug!(bmc = %self.bmc, session = ?location, "deleted Redfish session");
        }
        result
    }

    /// The token and session URL, for a best-effort delete when the driver is dropped without `close`.
    pub(crate) fn take_session(&self) -> Option<(reqwest::Client, String, Secret)> {
        let mut auth = self.auth.lock().unwrap_or_else(|e| e.into_inner());
        if let Auth::Session {
            token,
            location: Some(location),
        } = &*auth
        {
            let out = (self.http.clone(), format!("{}{}", self.origin, location), token.clone());
            *auth = Auth::Anonymous;
            return Some(out);
        }
        None
    }

    /// GET and decode JSON.
    pub(crate) async fn get_json<T: DeserializeOwned>(&self, path: &str) -> Result<T, BmcError> {
        let reply = self.request(Method::GET, path, None).await?;
        self.decode(&format!("GET {path}"), &reply.body)
    }

    pub(crate) fn decode<T: DeserializeOwned>(&self, operation: &str, body: &[u8]) -> Result<T, BmcError> {
        serde_json::from_slice(body).map_err(|e| self.protocol(operation, &format!("malformed JSON: {e}")))
    }

    /// GET a resource and also return its ETag (header, else `@odata.etag`).
    pub(crate) async fn get_with_etag<T: DeserializeOwned>(&self, path: &str) -> Result<(T, Option<String>), BmcError> {
        let reply = self.request(Method::GET, path, None).await?;
        let value: T = self.decode(&format!("GET {path}"), &reply.body)?;
        let etag = reply
            .headers
            .get(header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .or_else(|| {
                serde_json::from_slice::<serde_json::Value>(&reply.body)
                    .ok()
                    .and_then(|v| v.get("@odata.etag")?.as_str().map(str::to_string))
            });
        Ok((value, etag))
    }

    /// A request with authentication, pacing, retries and error mapping; follows a task monitor to completion
    /// when the BMC answers 202 with a Location.
    pub(crate) async fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
    ) -> Result<Reply, BmcError> {
        self.request_with(method, path, body, None).await
    }

    pub(crate) async fn request_with(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, BmcError> {
        let reply = self.request_inner(method.clone(), path, body, if_match).await?;
        if reply.status == StatusCode::ACCEPTED
            && method != Method::GET
            && let Some(location) = reply.headers.get(header::LOCATION).and_then(|v| v.to_str().ok())
        {
            let monitor = self.path_of(&format!("{method} {path}"), location)?;
            return self.follow_task(&format!("{method} {path}"), &monitor).await;
        }
        Ok(reply)
    }

    async fn request_inner(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
    ) -> Result<Reply, BmcError> {
        let operation = format!("{method} {path}");
        // POST actions are not idempotent on every BMC: retry them only when the request surely did not land (a
        // connect error, including a connect timeout). A POST that timed out waiting for its answer is left to the
        // caller, whose operations re-read the state before acting again (`set_power` is idempotent).
        let idempotent = method != Method::POST;
        let mut attempt = 0;
        let mut relogged = false;
        loop {
            let result = self.send_once(method.clone(), path, body, if_match, true).await;
            let retry = match &result {
                Err(BmcError::Connect { .. }) => true,
                Err(e) => idempotent && e.is_transient(),
                Ok((status, ..)) => match *status {
                    StatusCode::SERVICE_UNAVAILABLE | StatusCode::TOO_MANY_REQUESTS => true,
                    StatusCode::INTERNAL_SERVER_ERROR | StatusCode::BAD_GATEWAY | StatusCode::GATEWAY_TIMEOUT => {
                        idempotent
                    }
                    _ => false,
                },
            };
            if retry && attempt < self.opts.retries {
                let delay = self.opts.backoff(attempt);
                attempt += 1;
                match &result {
                    Ok((status, ..)) => {
                        tracing::debug!(bmc = %self.bmc, %operation, %status, ?delay, attempt, "retrying")
                    }
                    Err(e) => tracing::debug!(bmc = %self.bmc, %operation, error = %e, ?delay, attempt, "retrying"),
                }
                tokio::time::sleep(delay).await;
                continue;
            }
            let (status, headers, final_path, bytes) = result?;
            if status.is_success() {
                return Ok(Reply {
                    status,
                    headers,
                    final_path,
                    body: bytes,
                });
            }
            if status == StatusCode::UNAUTHORIZED {
                // An expired session: log in again once.
                let sessions = self.sessions_path.lock().unwrap_or_else(|e| e.into_inner()).clone();
                if let (false, Auth::Session { .. }, Some(sessions)) = (relogged, self.auth(), sessions) {
                    relogged = true;
                    tracing::debug!(bmc = %self.bmc, "session rejected: logging in again");
                    self.create_session(&sessions).await?;
                    continue;
                }
                return Err(self.auth_failed(status, &bytes));
            }
            return Err(self.http_error(&operation, status, &bytes));
        }
    }

    /// One HTTP exchange, paced by the per-BMC throttle. Returns any status; maps transport errors.
    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        if_match: Option<&str>,
        authenticate: bool,
    ) -> Result<(StatusCode, HeaderMap, String, Vec<u8>), BmcError> {
        let operation = format!("{method} {path}");
        let url = format!("{}{}", self.origin, self.path_of(&operation, path)?);
        let mut request = self
            .http
            .request(method, &url)
            .header(header::ACCEPT, "application/json");
        if authenticate {
            match self.auth() {
                Auth::Anonymous => {}
                Auth::Basic => request = request.basic_auth(&self.creds.username, Some(self.creds.password.expose())),
                Auth::Session { token, .. } => {
                    let mut value = HeaderValue::from_str(token.expose())
                        .map_err(|_| self.protocol("session creation", "the X-Auth-Token is not a valid header"))?;
                    value.set_sensitive(true);
                    request = request.header(X_AUTH_TOKEN, value);
                }
            }
        }
        if let Some(etag) = if_match {
            request = request.header(header::IF_MATCH, etag);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let _turn = self.throttle.turn().await;
        let started = Instant::now();
        let response = request.send().await.map_err(|e| self.transport_error(&operation, e))?;
        let status = response.status();
        let headers = response.headers().clone();
        let final_path = response.url().path().to_string();
        // Bounded: a BMC (or something posing as one) cannot make kiln buffer an endless body.
        let too_big = || self.protocol(&operation, &format!("the response body exceeds {} MiB", MAX_BODY >> 20));
        if response.content_length().is_some_and(|n| n > MAX_BODY as u64) {
            return Err(too_big());
        }
        let mut bytes = Vec::new();
        let mut response = response;
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&operation, e))?
        {
            if bytes.len() + chunk.len() > MAX_BODY {
                return Err(too_big());
            }
            bytes.extend_from_slice(&chunk);
        }
        tracing::debug!(bmc = %self.bmc, %operation, %status, elapsed_ms = started.elapsed().as_millis() as u64, "redfish request");
        Ok((status, headers, final_path, bytes))
    }

    /// Polls a task monitor (DSP0266 section 12.2) until the task is done.
    async fn follow_task(&self, operation: &str, monitor: &str) -> Result<Reply, BmcError> {
        let deadline = Instant::now() + self.opts.task_timeout;
        loop {
            tokio::time::sleep(self.opts.poll_interval).await;
            let reply = self.request_inner(Method::GET, monitor, None, None).await?;
            let task: Option<Task> = serde_json::from_slice(&reply.body).ok();
            let state = task.as_ref().and_then(|t| t.task_state.clone());
            match state.as_deref() {
                Some("Exception" | "Killed" | "Cancelled" | "Interrupted") => {
                    let detail = task
                        .and_then(|t| t.messages)
                        .into_iter()
                        .flatten()
                        .filter_map(|m| m.message)
                        .collect::<Vec<_>>()
                        .join("; ");
                    return Err(BmcError::TaskFailed {
                        bmc: self.bmc.clone(),
                        operation: operation.to_string(),
                        detail: format!("task {}: {detail}", state.unwrap_or_default()),
                    });
                }
                Some("Completed") => return Ok(reply),
                _ if reply.status != StatusCode::ACCEPTED => return Ok(reply),
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(BmcError::Timeout {
                    bmc: self.bmc.clone(),
                    operation: format!("{operation} (task {monitor})"),
                    after: self.opts.task_timeout,
                });
            }
        }
    }

    /// A URL the BMC supplied (`@odata.id`, an action target, a `Location`), as a path on the BMC's own origin:
    /// `/redfish/v1/x` as is, `https://host:port/redfish/v1/x` only if scheme, host and port are the BMC's. Anything
    /// else is refused: credentials and session tokens never go to another origin.
    ///
    /// # Errors
    /// `Protocol` naming the URL and the operation.
    pub(crate) fn path_of(&self, operation: &str, location: &str) -> Result<String, BmcError> {
        path_on_origin(&self.origin, location)
            .map_err(|why| self.protocol(operation, &format!("refusing the BMC-supplied URL {location:?}: {why}")))
    }

    fn transport_error(&self, operation: &str, e: reqwest::Error) -> BmcError {
        // A timeout while connecting means the request never left: it is a connect error, retried even for a POST
        // (a hung or rebooting BMC whose TCP stack drops SYNs). Only a timeout waiting for an answer is `Timeout`.
        if e.is_timeout() && !e.is_connect() {
            return BmcError::Timeout {
                bmc: self.bmc.clone(),
                operation: operation.to_string(),
                after: self.opts.request_timeout,
            };
        }
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
        while let Some(c) = cause {
            // `io::Error::source` skips the error it wraps, so look inside it too.
            let wrapped = c.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref());
            if c.is::<rustls::Error>() || wrapped.is_some_and(|w| w.is::<rustls::Error>()) {
                return BmcError::Tls {
                    bmc: self.bmc.clone(),
                    source: Box::new(e),
                };
            }
            cause = match wrapped {
                Some(w) => Some(w as &(dyn std::error::Error + 'static)),
                None => c.source(),
            };
        }
        if e.is_redirect() {
            let mut why = "too many redirects".to_string();
            let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(&e);
            while let Some(c) = cause {
                if c.is::<CrossOriginRedirect>() {
                    why = c.to_string();
                }
                cause = c.source();
            }
            return self.protocol(operation, &why);
        }
        BmcError::Connect {
            bmc: self.bmc.clone(),
            source: Box::new(e),
        }
    }

    fn auth_failed(&self, status: StatusCode, body: &[u8]) -> BmcError {
        let mut detail = format!("HTTP {}", status.as_u16());
        if let Some(summary) = serde_json::from_slice::<ErrorBody>(body).ok().and_then(|b| b.summary()) {
            detail = format!("{detail}: {summary}");
        }
        BmcError::AuthFailed {
            bmc: self.bmc.clone(),
            username: self.creds.username.clone(),
            detail,
        }
    }

    pub(crate) fn http_error(&self, operation: &str, status: StatusCode, body: &[u8]) -> BmcError {
        let message = serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .and_then(|b| b.summary())
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                text.chars().take(200).collect()
            });
        match status {
            StatusCode::NOT_FOUND => BmcError::NotFound {
                bmc: self.bmc.clone(),
                resource: operation.to_string(),
            },
            StatusCode::NOT_IMPLEMENTED | StatusCode::METHOD_NOT_ALLOWED => BmcError::Unsupported {
                bmc: self.bmc.clone(),
                operation: operation.to_string(),
            },
            _ => BmcError::Http {
                bmc: self.bmc.clone(),
                operation: operation.to_string(),
                status: status.as_u16(),
                message,
            },
        }
    }

    pub(crate) fn protocol(&self, operation: &str, detail: &str) -> BmcError {
        BmcError::Protocol {
            bmc: self.bmc.clone(),
            operation: operation.to_string(),
            detail: detail.to_string(),
        }
    }

    pub(crate) fn poll_interval(&self) -> Duration {
        self.opts.poll_interval
    }
}

/// A URL a BMC supplied, as a path on the BMC's `origin` (`https://host:port`): what `Client::path_of` checks every
/// request path with, public so that the fuzz harness can hold it to "never leaves the origin".
///
/// # Errors
/// Why the URL is refused: neither an absolute path nor an absolute URL on `origin`.
pub fn path_on_origin(origin: &str, location: &str) -> Result<String, String> {
    if location.starts_with('/') && !location.starts_with("//") {
        return Ok(location.to_string());
    }
    let url = reqwest::Url::parse(location).map_err(|_| "not an absolute path or URL".to_string())?;
    let ours = reqwest::Url::parse(origin).map_err(|_| "the BMC's own address is not a URL".to_string())?;
    if url.origin() != ours.origin() {
        return Err(format!("it is not on the BMC's origin {origin}"));
    }
    Ok(match url.query() {
        Some(q) => format!("{}?{q}", url.path()),
        None => url.path().to_string(),
    })
}
