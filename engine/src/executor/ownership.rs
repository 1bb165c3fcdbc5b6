//! Host ownership among several replicas on one database: each replica heartbeats in the store, the live replicas
//! divide the hosts by rendezvous hashing (a replica joining or leaving moves only its share), and a replica drives
//! only hosts whose lease it holds. A lease expires unless renewed; its epoch changes with every change of holder and
//! fences the holder's writes ([`crate::store::Fence`]). Locally, a replica trusts its leases only for two thirds of
//! their time to live after the renewal began, so a replica that was paused or cut off stops acting before another
//! can take its hosts.

use std::collections::{HashMap, HashSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::store::{Fence, Store, StoreError};
use crate::types::Ts;

/// One replica's identity and lease timing.
#[derive(Debug, Clone)]
pub struct ReplicaConfig {
    /// Unique among the replicas sharing the database (the host name of the pod or machine, say).
    pub name: String,
    /// How long a lease lasts unless renewed; also how long a replica that stops heartbeating counts as live. A
    /// crashed replica's hosts are taken over after about this long.
    pub lease_ttl: Duration,
}

/// The hosts this replica holds, with their epochs, and until when it may act on them.
pub struct Ownership {
    config: ReplicaConfig,
    held: Mutex<HashMap<i64, u64>>,
    valid_until: Mutex<Option<Instant>>,
}

/// What one round of [`Ownership::round`] changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct RoundOutcome {
    pub held: usize,
    pub gained: usize,
    pub released: usize,
    pub replicas: usize,
}

/// A stable 64-bit mix of a replica name and a host id (FNV-1a, then a splitmix finaliser): the same on every
/// replica and every build, unlike the standard library's hasher.
fn score(replica: &str, host: i64) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in replica.bytes().chain(host.to_le_bytes()) {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h ^= h >> 30;
    h = h.wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h ^= h >> 27;
    h = h.wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^ (h >> 31)
}

/// The live replica that should own `host` (highest score; ties by name).
pub fn owner_of(replicas: &[String], host: i64) -> Option<&str> {
    replicas
        .iter()
        .max_by(|a, b| score(a, host).cmp(&score(b, host)).then_with(|| b.cmp(a)))
        .map(String::as_str)
}

impl Ownership {
    pub fn new(config: ReplicaConfig) -> Self {
        Self {
            config,
            held: Mutex::default(),
            valid_until: Mutex::default(),
        }
    }

    pub fn name(&self) -> &str {
        &self.config.name
    }

    /// How often [`Ownership::round`] should run: three times per lease.
    pub fn period(&self) -> Duration {
        (self.config.lease_ttl / 3).max(Duration::from_millis(100))
    }

    fn valid(&self) -> bool {
        self.valid_until
            .lock()
            .expect("ownership lock")
            .is_some_and(|t| Instant::now() < t)
    }

    /// The fence to write host `id` under, if this replica may act on it now.
    pub fn fence(&self, id: i64) -> Option<Fence> {
        if !self.valid() {
            return None;
        }
        self.held.lock().expect("ownership lock").get(&id).map(|epoch| Fence {
            replica: self.config.name.clone(),
            epoch: *epoch,
        })
    }

    /// Whether this replica may act on host `id` now.
    pub fn owns(&self, id: i64) -> bool {
        self.fence(id).is_some()
    }

    /// Heartbeats, renews this replica's leases, takes the free leases of the hosts it should own and releases the
    /// hosts another live replica should own (except those in `busy`, whose reconcile is running).
    ///
    /// # Errors
    /// The store's; the leases are then no longer trusted until a round succeeds.
    pub async fn round(&self, store: &dyn Store, now: Ts, busy: &HashSet<i64>) -> Result<RoundOutcome, StoreError> {
        let started = Instant::now();
        let r = self.round_inner(store, now, busy).await;
        match &r {
            Ok(_) => {
                *self.valid_until.lock().expect("ownership lock") = Some(started + self.config.lease_ttl * 2 / 3);
            }
            Err(_) => {
                // The leases were not renewed: trusted only until the last successful round's bound.
            }
        }
        r
    }

    async fn round_inner(&self, store: &dyn Store, now: Ts, busy: &HashSet<i64>) -> Result<RoundOutcome, StoreError> {
        let name = self.config.name.as_str();
        let ttl = i64::try_from(self.config.lease_ttl.as_millis()).unwrap_or(i64::MAX);
        let until = now.plus_ms(ttl);
        store.replica_heartbeat(name, now).await?;
        let mut held: HashMap<i64, u64> = store.renew_leases(name, now, until).await?.into_iter().collect();
        let replicas = store.live_replicas(now.plus_ms(-ttl)).await?;
        let mut out = RoundOutcome {
            replicas: replicas.len(),
            ..RoundOutcome::default()
        };
        let mut to_claim = Vec::new();
        for id in store.host_ids().await? {
            let mine = owner_of(&replicas, id) == Some(name);
            if mine && !held.contains_key(&id) {
                to_claim.push(id);
            } else if !mine && held.contains_key(&id) && !busy.contains(&id) {
                store.release_lease(id, name).await?;
                held.remove(&id);
                out.released += 1;
            }
        }
        // A takeover (or the first round) claims a whole share: in batches, not a statement per host.
        for (id, epoch) in store.claim_leases(&to_claim, name, now, until).await? {
            held.insert(id, epoch);
            out.gained += 1;
        }
        out.held = held.len();
        *self.held.lock().expect("ownership lock") = held;
        Ok(out)
    }

    /// A graceful stop: the others may take this replica's hosts at once.
    ///
    /// # Errors
    /// The store's.
    pub async fn leave(&self, store: &dyn Store) -> Result<(), StoreError> {
        *self.valid_until.lock().expect("ownership lock") = None;
        store.leave(&self.config.name).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendezvous_spreads_hosts_and_moves_only_a_leavers_share() {
        let three: Vec<String> = ["kiln-a", "kiln-b", "kiln-c"].iter().map(|s| s.to_string()).collect();
        let two: Vec<String> = three[..2].to_vec();
        let mut per = HashMap::new();
        let mut moved = 0;
        for host in 0..3000 {
            let o3 = owner_of(&three, host).unwrap();
            *per.entry(o3).or_insert(0) += 1;
            let o2 = owner_of(&two, host).unwrap();
            if o3 != "kiln-c" {
                assert_eq!(o2, o3, "a host of a replica that stayed moved");
            } else {
                moved += 1;
            }
        }
        for (r, n) in &per {
            assert!((800..1200).contains(n), "{r} owns {n} of 3000: {per:?}");
        }
        assert_eq!(moved, per["kiln-c"]);
        assert_eq!(owner_of(&[], 1), None);
    }
}
