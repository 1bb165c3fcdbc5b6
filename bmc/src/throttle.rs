//! Per-BMC pacing: at most one request in flight to a BMC and a minimum gap between requests, shared by every
//! driver instance in the process that talks to the same BMC, so kiln is never the reason a BMC falls over.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock, Mutex, Weak};
use std::time::Duration;

use tokio::time::Instant;

/// The pacing state of one BMC.
#[derive(Debug)]
pub(crate) struct Throttle {
    last_done: tokio::sync::Mutex<Option<Instant>>,
    min_interval: Duration,
}

/// Held while a request is in flight; records the end time when dropped.
pub(crate) struct Turn<'a> {
    guard: tokio::sync::MutexGuard<'a, Option<Instant>>,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        *self.guard = Some(Instant::now());
    }
}

static REGISTRY: LazyLock<Mutex<HashMap<String, Weak<Throttle>>>> = LazyLock::new(Default::default);

impl Throttle {
    /// The throttle of the BMC named `key` (`"redfish host:port"`), shared with other live users of it.
    pub(crate) fn for_bmc(key: &str, min_interval: Duration) -> Arc<Throttle> {
        let mut registry = REGISTRY.lock().unwrap_or_else(|e| e.into_inner());
        registry.retain(|_, w| w.strong_count() > 0);
        if let Some(existing) = registry.get(key).and_then(Weak::upgrade) {
            return existing;
        }
        let throttle = Arc::new(Throttle {
            last_done: tokio::sync::Mutex::new(None),
            min_interval,
        });
        registry.insert(key.to_string(), Arc::downgrade(&throttle));
        throttle
    }

    /// Waits for the previous request to finish and for the minimum interval to pass.
    pub(crate) async fn turn(&self) -> Turn<'_> {
        let guard = self.last_done.lock().await;
        if let Some(last) = *guard {
            tokio::time::sleep_until(last + self.min_interval).await;
        }
        Turn { guard }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn one_at_a_time_with_a_gap() {
        let t = Throttle::for_bmc("test one_at_a_time", Duration::from_millis(100));
        let same = Throttle::for_bmc("test one_at_a_time", Duration::from_millis(5));
        assert!(Arc::ptr_eq(&t, &same));
        let start = Instant::now();
        drop(t.turn().await);
        drop(same.turn().await);
        drop(t.turn().await);
        assert!(Instant::now() - start >= Duration::from_millis(200));
        let other = Throttle::for_bmc("test other", Duration::from_millis(100));
        let before = Instant::now();
        drop(other.turn().await);
        assert_eq!(Instant::now(), before);
    }
}
