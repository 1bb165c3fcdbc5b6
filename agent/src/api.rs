//! The appliance's agent API client (`/agent/v1/*`, see [`kiln_images::protocol`]): one POST per call, bearer
//! token (none for a discovery boot's `/agent/v1/discover`, which returns it), and a retry loop with capped exponential backoff and jitter for when the appliance is unreachable.

use std::time::Duration;

use kiln_images::protocol::{
    CommandResult, Discover, DiscoverReply, HardwareInventory, Heartbeat, HeartbeatReply, Progress,
};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::cmdline::{ApiBase, CaPin, Token};
use crate::error::AgentError;

/// Backoff policy: `base * 2^attempt`, capped, with up to 25 % random jitter either way.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub cap: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff {
            base: Duration::from_millis(500),
            cap: Duration::from_secs(30),
        }
    }
}

impl Backoff {
    /// The delay before retry number `attempt` (0-based); `jitter` in `[-1, 1]` scales the ±25 % spread.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self.base.saturating_mul(1u32 << attempt.min(20));
        let d = exp.min(self.cap).as_secs_f64() * (1.0 + 0.25 * jitter.clamp(-1.0, 1.0));
        Duration::from_secs_f64(d.max(0.0))
    }
}

/// A client for one appliance and one boot token (`None` until a discovery boot has been given its token).
#[derive(Debug, Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    base: ApiBase,
    token: Option<Token>,
    backoff: Backoff,
}

impl ApiClient {
    /// # Errors
    /// [`AgentError::Client`] when the TLS stack cannot be set up.
    pub fn new(base: ApiBase, token: Token, backoff: Backoff) -> Result<Self, AgentError> {
        Self::with_ca(base, Some(token), backoff, None)
    }

    /// A client that trusts the appliance through the pinned CA `ca` (`kiln.ca=`), or the system's roots if `None`.
    ///
    /// # Errors
    /// [`AgentError::Client`] when the TLS stack cannot be set up.
    pub fn with_ca(
        base: ApiBase,
        token: Option<Token>,
        backoff: Backoff,
        ca: Option<CaPin>,
    ) -> Result<Self, AgentError> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let builder = || {
            reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(10))
                .timeout(Duration::from_secs(60))
        };
        if let Some(pin) = ca {
            let http = builder()
                .tls_backend_preconfigured(crate::pin::client_config(pin))
                .build()
                .map_err(|source| AgentError::Client { source })?;
            return Ok(ApiClient {
                http,
                base,
                token,
                backoff,
            });
        }
        // The platform verifier refuses to start without system CA certificates (a bare ramdisk); plain-HTTP
        // appliances must still work, so fall back to an empty trust store (HTTPS then fails verification).
        let http = builder().build().or_else(|e| {
            tracing::warn!(error = %e, "no system CA certificates; HTTPS to the appliance will fail");
            builder()
                .tls_certs_only([])
                .build()
                .map_err(|source| AgentError::Client { source })
        })?;
        Ok(ApiClient {
            http,
            base,
            token,
            backoff,
        })
    }

    async fn post_once<B: Serialize, R: DeserializeOwned>(&self, ep: &str, body: &B) -> Result<Option<R>, AgentError> {
        let url = self.base.endpoint(ep);
        let http_err = |source| AgentError::Http {
            url: url.clone(),
            source,
        };
        let mut req = self.http.post(&url);
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.expose());
        }
        let resp = req.json(body).send().await.map_err(http_err)?;
        let status = resp.status();
        if !status.is_success() {
            let body = resp.text().await.unwrap_or_default();
            return Err(AgentError::Status {
                url,
                status: status.as_u16(),
                body: body.chars().take(200).collect(),
            });
        }
        if status == reqwest::StatusCode::NO_CONTENT {
            return Ok(None);
        }
        let bytes = resp.bytes().await.map_err(http_err)?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(None);
        }
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| AgentError::Status {
                url: url.clone(),
                status: status.as_u16(),
                body: format!("undecodable reply: {e}"),
            })
    }

    /// POSTs until it succeeds or fails permanently, sleeping with backoff between transient failures.
    async fn post<B: Serialize, R: DeserializeOwned>(&self, ep: &str, body: &B) -> Result<Option<R>, AgentError> {
        let mut attempt = 0u32;
        loop {
            match self.post_once(ep, body).await {
                Ok(r) => return Ok(r),
                Err(e) if e.is_transient() => {
                    let delay = self.backoff.delay(attempt, rand::random::<f64>() * 2.0 - 1.0);
                    tracing::warn!(endpoint = ep, attempt, ?delay, error = %crate::error::chain(&e), "appliance unreachable, retrying");
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `POST /agent/v1/discover` (no token): asks which host this discovery boot is, until the appliance binds it.
    /// A 404 (no host waiting has a BMC at these addresses, yet) or 409 (more than one has: the appliance never
    /// guesses) is retried like an unreachable appliance, since an operator can resolve either while the host waits;
    /// the host's own boot timeout ends the wait. On success the client carries the returned token from then on.
    ///
    /// # Errors
    /// A permanent failure (a malformed reply, a refused request).
    pub async fn discover(&mut self, d: &Discover) -> Result<String, AgentError> {
        let mut attempt = 0u32;
        loop {
            match self.post_once::<_, DiscoverReply>("discover", d).await {
                Ok(Some(reply)) => {
                    self.token = Some(Token::new(reply.token));
                    return Ok(reply.host);
                }
                Ok(None) => {
                    return Err(AgentError::Status {
                        url: self.base.endpoint("discover"),
                        status: 204,
                        body: "empty discover reply".into(),
                    });
                }
                Err(e) if e.is_transient() || matches!(e, AgentError::Status { status: 404 | 409, .. }) => {
                    let delay = self.backoff.delay(attempt, rand::random::<f64>() * 2.0 - 1.0);
                    tracing::warn!(attempt, ?delay, error = %crate::error::chain(&e), "not bound to a host yet, retrying");
                    tokio::time::sleep(delay).await;
                    attempt = attempt.saturating_add(1);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// `POST /agent/v1/heartbeat`; retries until the appliance answers.
    ///
    /// # Errors
    /// A permanent failure (token rejected, malformed reply).
    pub async fn heartbeat(&self, hb: &Heartbeat) -> Result<HeartbeatReply, AgentError> {
        self.post::<_, HeartbeatReply>("heartbeat", hb)
            .await?
            .ok_or_else(|| AgentError::Status {
                url: self.base.endpoint("heartbeat"),
                status: 204,
                body: "empty heartbeat reply".into(),
            })
    }

    /// One `POST /agent/v1/heartbeat` without retries (used while a command runs).
    ///
    /// # Errors
    /// Any failure.
    pub async fn heartbeat_once(&self, hb: &Heartbeat) -> Result<Option<HeartbeatReply>, AgentError> {
        self.post_once("heartbeat", hb).await
    }

    /// `POST /agent/v1/inventory`.
    ///
    /// # Errors
    /// A permanent failure.
    pub async fn inventory(&self, inv: &HardwareInventory) -> Result<(), AgentError> {
        self.post::<_, serde_json::Value>("inventory", inv).await.map(drop)
    }

    /// `POST /agent/v1/progress`, one attempt only: progress is advisory and must not stall the work.
    ///
    /// # Errors
    /// Any failure; callers log and carry on.
    pub async fn progress(&self, p: &Progress) -> Result<(), AgentError> {
        self.post_once::<_, serde_json::Value>("progress", p).await.map(drop)
    }

    /// `POST /agent/v1/result`.
    ///
    /// # Errors
    /// A permanent failure.
    pub async fn result(&self, r: &CommandResult) -> Result<(), AgentError> {
        self.post::<_, serde_json::Value>("result", r).await.map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, 0.0), Duration::from_millis(500));
        assert_eq!(b.delay(3, 0.0), Duration::from_secs(4));
        assert_eq!(b.delay(30, 0.0), Duration::from_secs(30));
        assert_eq!(b.delay(30, 1.0), Duration::from_millis(37_500));
        assert_eq!(b.delay(0, -1.0), Duration::from_millis(375));
        assert_eq!(b.delay(0, -7.0), Duration::from_millis(375), "jitter is clamped");
    }
}
