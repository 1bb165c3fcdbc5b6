//! Per-source rate limits for the routes anyone on the provisioning network can reach without the admin token: the
//! netboot routes (`/boot`: iPXE scripts, boot files) and the agent API. (The virtual-media ISOs are not limited: a
//! BMC reads its virtual CD in many small ranges, and an ISO's name is 128 random bits.) One token bucket per
//! client address (`[http] per_source_requests_per_second`, `per_source_burst`); a client over its budget gets 429
//! with `Retry-After` and is counted (`kiln_http_rate_limited_total`), and one warning per source a minute says so.
//! Buckets of sources quiet for a minute are dropped, so a scan from many addresses cannot grow the table for good.
//! Loopback clients are not limited: they are processes of the appliance's own machine (the simulator's agents, a
//! local proxy), not hosts on the provisioning network.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// The limiter shared by every rate-limited route of one appliance.
#[derive(Debug)]
pub struct SourceLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
    limited: AtomicU64,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
    warned: Option<Instant>,
}

/// Sources kept at most; beyond it, quiet ones are dropped first.
const MAX_SOURCES: usize = 65_536;
const QUIET: Duration = Duration::from_secs(60);

impl SourceLimiter {
    /// `rate` requests a second on average, `burst` at once; a rate of 0 turns the limit off.
    pub fn new(rate: u32, burst: u32) -> Self {
        Self {
            rate: f64::from(rate),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::default(),
            limited: AtomicU64::new(0),
        }
    }

    /// Takes one request's token for `source`: `Ok(())`, or `Err(seconds until one is available, warn now)`.
    pub fn take(&self, source: IpAddr, now: Instant) -> Result<(), (u64, bool)> {
        if self.rate <= 0.0 || source.is_loopback() {
            return Ok(());
        }
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= MAX_SOURCES && !buckets.contains_key(&source) {
            buckets.retain(|_, b| now.duration_since(b.at) < QUIET);
        }
        let b = buckets.entry(source).or_insert(Bucket {
            tokens: self.burst,
            at: now,
            warned: None,
        });
        b.tokens = (b.tokens + now.duration_since(b.at).as_secs_f64() * self.rate).min(self.burst);
        b.at = now;
        if b.tokens >= 1.0 {
            b.tokens -= 1.0;
            return Ok(());
        }
        self.limited.fetch_add(1, Ordering::Relaxed);
        let warn = b.warned.is_none_or(|w| now.duration_since(w) >= QUIET);
        if warn {
            b.warned = Some(now);
        }
        let wait = ((1.0 - b.tokens) / self.rate).ceil().max(1.0) as u64;
        Err((wait, warn))
    }

    /// Requests refused so far.
    pub fn limited(&self) -> u64 {
        self.limited.load(Ordering::Relaxed)
    }
}

impl Default for SourceLimiter {
    fn default() -> Self {
        Self::new(0, 0)
    }
}

/// The middleware: needs the connection's address (`ConnectInfo`, which kiln's listener sets); a request without
/// one (an in-process test calling the router directly) is not limited.
pub async fn limit(State(limiter): State<std::sync::Arc<SourceLimiter>>, req: Request, next: Next) -> Response {
    let source = req.extensions().get::<ConnectInfo<SocketAddr>>().map(|c| c.0.ip());
    if let Some(source) = source
        && let Err((wait, warn)) = limiter.take(source, Instant::now())
    {
        if warn {
            tracing::warn!(%source, path = %req.uri().path(), "rate limit reached for this source; answering 429");
        }
        let mut r = (StatusCode::TOO_MANY_REQUESTS, "too many requests from this address\n").into_response();
        r.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(wait));
        return r;
    }
    next.run(req).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_per_source() {
        let l = SourceLimiter::new(10, 5);
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let t = Instant::now();
        for _ in 0..5 {
            assert!(l.take(a, t).is_ok());
        }
        let (wait, warn) = l.take(a, t).unwrap_err();
        assert!(warn && wait >= 1);
        assert!(!l.take(a, t).unwrap_err().1, "one warning, not one per request");
        assert!(l.take(b, t).is_ok(), "another source has its own budget");
        assert!(l.take(a, t + Duration::from_millis(100)).is_ok(), "refilled at 10/s");
        assert_eq!(l.limited(), 2);
        let off = SourceLimiter::new(0, 0);
        assert!((0..1000).all(|_| off.take(a, t).is_ok()));
        let local: IpAddr = "127.0.0.1".parse().unwrap();
        assert!(
            (0..1000).all(|_| l.take(local, t).is_ok()),
            "loopback is the appliance's own machine"
        );
    }

    #[test]
    fn the_table_of_sources_is_bounded() {
        let l = SourceLimiter::new(1, 1);
        let t = Instant::now();
        for i in 0..(MAX_SOURCES as u32 + 10) {
            let _ = l.take(IpAddr::from(i.to_be_bytes()), t);
        }
        let later = t + QUIET + Duration::from_secs(1);
        let _ = l.take("192.0.2.1".parse().unwrap(), later);
        assert!(l.buckets.lock().unwrap().len() <= MAX_SOURCES);
    }
}
