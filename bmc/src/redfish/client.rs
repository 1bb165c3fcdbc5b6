//! The HTTP side of the Redfish driver (DMTF DSP0266): authentication (session or basic), pacing, retries with
//! backoff, task monitors and error mapping. It knows nothing about Systems or power; `super` does.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{self, HeaderMap, HeaderValue};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use tokio::time::Instant;

use super::model::{ErrorBody, ServiceRoot, SessionService, Task};
use super::quirks;
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
    /// Set once the service answered a PATCH without `If-Match` with 428 (Lenovo XCC): from then on every PATCH
    /// carries the ETag read just before it.
    if_match_required: AtomicBool,
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
            if_match_required: AtomicBool::new(false),
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
        // Sent without authentication and never retried blindly: a BMC counts failed logins. The one refusal that is
        // retried is a full session table (iDRAC holds 8 sessions, iLO a few more), which is no failed login: wait
        // for one to end or expire, with backoff, for at most `busy_timeout`.
        let operation = format!("POST {sessions}");
        let started = Instant::now();
        let mut attempt = 0;
        let (status, headers, bytes) = loop {
            let (status, headers, _final_path, bytes) =
                self.send_once(Method::POST, sessions, Some(&body), None, false).await?;
            if status.is_success() || !quirks::is_session_limit(status.as_u16(), &self.error_message(&bytes)) {
                break (status, headers, bytes);
            }
            let waited = started.elapsed();
            let message = self.error_message(&bytes);
            if waited >= self.opts.busy_timeout {
                tracing::warn!(bmc = %self.bmc, waited_ms = waited.as_millis() as u64, attempts = attempt + 1, %message,
                    "the BMC's session table stayed full: giving up");
                return Err(BmcError::Busy {
                    bmc: self.bmc.clone(),
                    reason: format!(
                        "its session table is full (HTTP {}{}) and no session ended within {:?}; end other clients' \
                         sessions or wait for them to expire",
                        status.as_u16(),
                        if message.is_empty() {
                            String::new()
                        } else {
                            format!(": {message}")
                        },
                        self.opts.busy_timeout
                    ),
                });
            }
            let delay = self.opts.backoff(attempt).min(self.opts.busy_timeout - waited);
            attempt += 1;
            // Said once at warn (the caller sees why connecting takes long), then at debug for each further try.
            if attempt == 1 {
                tracing::warn!(bmc = %self.bmc, %status, %message, busy_timeout_ms = self.opts.busy_timeout.as_millis() as u64,
                    "the BMC's session table is full: waiting for a session to end");
            } else {
                tracing::debug!(bmc = %self.bmc, %status, waited_ms = waited.as_millis() as u64,
                    delay_ms = delay.as_millis() as u64, attempt, "the BMC's session table is still full");
            }
            tokio::time::sleep(delay).await;
        };
        if attempt > 0 && status.is_success() {
            tracing::info!(bmc = %self.bmc, waited_ms = started.elapsed().as_millis() as u64, attempts = attempt + 1,
                "the BMC had a free session again: logged in");
        }
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

    /// PATCH `path` under DSP0266 section 13.2.3's ETag rules as real BMCs apply them. `etag` is the ETag read
    /// just before (from [`Self::get_with_etag`]).
    ///
    /// - The first PATCH carries no `If-Match` until the service has answered one with 428 (Lenovo XCC); from
    ///   then on every PATCH carries the ETag, as it is (a weak `W/"..."` too: AMI and Gigabyte serve only weak
    ///   ones, and most accept them back).
    /// - 412 (Precondition Failed): the resource is read again; a changed ETag (someone changed it between our
    ///   read and write) is sent once more; a weak ETag the BMC refuses is sent in its strong form, as sushy does.
    pub(crate) async fn patch(
        &self,
        path: &str,
        body: &serde_json::Value,
        etag: Option<&str>,
    ) -> Result<Reply, BmcError> {
        let required = self.if_match_required.load(Ordering::Relaxed);
        let sent = if required { etag.map(str::to_string) } else { None };
        let error = match self
            .request_with(Method::PATCH, path, Some(body), sent.as_deref())
            .await
        {
            Ok(reply) => return Ok(reply),
            Err(e) => e,
        };
        match error {
            BmcError::Http { status: 428, .. } => {
                tracing::debug!(bmc = %self.bmc, path, "the BMC requires If-Match (428): sending ETags from now on");
                self.if_match_required.store(true, Ordering::Relaxed);
                let etag = match etag {
                    Some(e) => e.to_string(),
                    None => self.fresh_etag(path).await?,
                };
                match self.request_with(Method::PATCH, path, Some(body), Some(&etag)).await {
                    Err(e @ BmcError::Http { status: 412, .. }) => {
                        self.after_precondition_failed(path, body, &etag, e).await
                    }
                    other => other,
                }
            }
            e @ BmcError::Http { status: 412, .. } => match sent {
                Some(sent) => self.after_precondition_failed(path, body, &sent, e).await,
                None => Err(e),
            },
            e => Err(e),
        }
    }

    /// The PATCH with `If-Match: sent` failed with 412 (`failed`): re-read the ETag and try what may work.
    async fn after_precondition_failed(
        &self,
        path: &str,
        body: &serde_json::Value,
        sent: &str,
        failed: BmcError,
    ) -> Result<Reply, BmcError> {
        let fresh = self.fresh_etag(path).await?;
        let mut candidates = Vec::new();
        if fresh != sent {
            candidates.push((
                fresh.clone(),
                "the ETag changed between read and write (412): retrying once with the new one",
            ));
        }
        if let Some(strong) = quirks::strong_etag(&fresh) {
            candidates.push((
                strong,
                "the BMC refuses its own weak ETag in If-Match (412): sending its strong form",
            ));
        }
        let mut last = failed;
        for (candidate, why) in candidates {
            tracing::info!(bmc = %self.bmc, path, "{why}");
            match self
                .request_with(Method::PATCH, path, Some(body), Some(&candidate))
                .await
            {
                Ok(reply) => return Ok(reply),
                Err(e @ BmcError::Http { status: 412, .. }) => last = e,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    async fn fresh_etag(&self, path: &str) -> Result<String, BmcError> {
        self.get_with_etag::<serde_json::Value>(path).await?.1.ok_or_else(|| {
            self.protocol(
                &format!("PATCH {path}"),
                "the BMC requires If-Match but sends no ETag for the resource",
            )
        })
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
        let mut not_ready_since: Option<Instant> = None;
        let mut not_ready_attempt = 0;
        loop {
            let result = self.send_once(method.clone(), path, body, if_match, true).await;
            // A change refused because the previous one has not settled (iLO's InvalidOperationForSystemState right
            // after a reset, iDRAC's SYS518) was not performed: ask again with backoff, for at most busy_timeout, so
            // that the "on" of a power cycle is not lost and the host left off.
            if method != Method::GET
                && let Ok((status, _, _, bytes)) = &result
                && !status.is_success()
            {
                let message = self.error_message(bytes);
                if quirks::is_not_ready(status.as_u16(), &message) {
                    let since = *not_ready_since.get_or_insert_with(Instant::now);
                    let waited = since.elapsed();
                    if waited >= self.opts.busy_timeout {
                        return Err(BmcError::Busy {
                            bmc: self.bmc.clone(),
                            reason: format!(
                                "{operation} was still refused after {:?} of asking again while the BMC finished a \
                                 previous operation (HTTP {}: {message})",
                                self.opts.busy_timeout,
                                status.as_u16()
                            ),
                        });
                    }
                    let delay = self
                        .opts
                        .backoff(not_ready_attempt)
                        .min(self.opts.busy_timeout - waited);
                    not_ready_attempt += 1;
                    if not_ready_attempt == 1 {
                        tracing::info!(bmc = %self.bmc, %operation, %status, %message,
                            busy_timeout_ms = self.opts.busy_timeout.as_millis() as u64,
                            "the BMC is not ready after a previous operation: asking again with backoff");
                    } else {
                        tracing::debug!(bmc = %self.bmc, %operation, delay_ms = delay.as_millis() as u64,
                            attempt = not_ready_attempt, "the BMC is still not ready");
                    }
                    tokio::time::sleep(delay).await;
                    continue;
                }
            }
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
    ///
    /// Runs of `/` inside the path are folded into one: a member id ending in `/` (HPE iLO) joined with a suffix
    /// must not reach the BMC as `//Actions/...`, which some BMCs answer with 404.
    pub(crate) fn path_of(&self, operation: &str, location: &str) -> Result<String, BmcError> {
        let path = path_on_origin(&self.origin, location)
            .map_err(|why| self.protocol(operation, &format!("refusing the BMC-supplied URL {location:?}: {why}")))?;
        Ok(fold_slashes(&path))
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

    /// The one-line message of an error body: its Redfish messages with ids and arguments, else its first 200
    /// characters.
    fn error_message(&self, body: &[u8]) -> String {
        serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .and_then(|b| b.summary())
            .unwrap_or_else(|| {
                let text = String::from_utf8_lossy(body);
                let text = text.trim();
                text.chars().take(200).collect()
            })
    }

    pub(crate) fn http_error(&self, operation: &str, status: StatusCode, body: &[u8]) -> BmcError {
        let message = self.error_message(body);
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

/// `path` with every run of `/` before the query folded into one.
fn fold_slashes(path: &str) -> String {
    let (path, query) = match path.split_once('?') {
        Some((p, q)) => (p, Some(q)),
        None => (path, None),
    };
    let mut out = String::with_capacity(path.len());
    for c in path.chars() {
        if c == '/' && out.ends_with('/') {
            continue;
        }
        out.push(c);
    }
    if let Some(q) = query {
        out.push('?');
        out.push_str(q);
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slashes_are_folded_before_the_query() {
        assert_eq!(
            fold_slashes("/redfish/v1/Systems/1//Actions/ComputerSystem.Reset/"),
            "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset/"
        );
        assert_eq!(fold_slashes("/a///b?x=//y"), "/a/b?x=//y");
        assert_eq!(fold_slashes("/"), "/");
    }
}
