//! The executor: gathers observations (BMC power, agent heartbeats and results, concurrency slots), calls the pure
//! [`step`](crate::machine::step), performs the actions through the BMC, the agent command queue and the store, and
//! persists the result with its timing records and events. It owns rate limits, job slots and the containment of a
//! panicking reconcile; it must not decide host transitions itself (retries included: the machine decides them from
//! the attempt count stored with the host).
//!
//! This module runs the passes (which hosts are due, one task per host, job slots, panics); `observe` reads the BMC
//! (under the per-host call budget) and the agent's results; `apply` reconciles one host: decide, act, commit.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use kiln_bmc::PowerState;
use kiln_images::protocol::Outcome;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info_span, warn};

use crate::bmcs::{BmcConnector, DynBmc};
use crate::machine::{BmcFailure, JobPhase, Policy, backoff_ms};
use crate::metrics::Metrics;
use crate::model::Host;
use crate::store::{Store, StoreError};
use crate::types::{HostName, Ts};

mod apply;
mod bell;
mod observe;
mod ownership;

pub use bell::{CommandBells, Waiter};

pub use ownership::{Ownership, ReplicaConfig, RoundOutcome, owner_of};

/// Wall-clock now, the executor's only clock read.
/// The later of `now()` and `at` (a reconcile that waited for a permit decides with the current time).
fn now_or(at: Ts) -> Ts {
    now().max(at)
}

pub fn now() -> Ts {
    Ts(std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0))
}

/// How long after a BMC accepted a power action a read of the old state is taken for "not applied yet" rather
/// than the host's power (sushy-tools applies actions up to 11 s later; real BMCs take seconds too).
const POWER_SETTLE: Duration = Duration::from_secs(20);

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    pub policy: Policy,
    /// Agent jobs (inspect, prepare, provision, deprovision) running at once; more are queued as `delayed`.
    pub max_concurrent_jobs: usize,
    /// BMC calls allowed per host per minute (power sync is skipped, actions deferred, beyond it).
    pub bmc_calls_per_minute: usize,
    /// Hosts reconciled in parallel.
    pub parallelism: usize,
    /// Longest sleep between passes when nothing pokes the executor.
    pub tick: Duration,
    /// Registries (`host` or `host:port`) of `oci://` images that the agent reaches over plain HTTP rather than
    /// HTTPS, as containerd's and Docker's insecure registries.
    pub insecure_registries: Vec<String>,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            max_concurrent_jobs: 20,
            bmc_calls_per_minute: 12,
            parallelism: 16,
            tick: Duration::from_millis(500),
            insecure_registries: Vec::new(),
        }
    }
}

/// Runs hosts through their lifecycle.
pub struct Executor {
    store: Arc<dyn Store>,
    connector: Arc<dyn BmcConnector>,
    metrics: Arc<Metrics>,
    config: ExecutorConfig,
    notify: Arc<Notify>,
    calls: Mutex<HashMap<i64, VecDeque<Instant>>>,
    bmcs: Mutex<HashMap<i64, CachedBmc>>,
    /// Hosts holding one of the `max_concurrent_jobs` slots: those whose stored state runs an agent job, and those
    /// whose reconcile in flight reserved one. Exactly these, so a slot is never held by a host that runs no job.
    slots: Mutex<HashSet<i64>>,
    woken: Mutex<HashSet<i64>>,
    /// Hosts whose reconcile task is running.
    inflight: Mutex<HashSet<i64>>,
    /// When each host last got an event saying an action waits for its BMC budget (at most one a minute).
    deferral_noted: Mutex<HashMap<i64, Instant>>,
    /// Hosts whose last reconcile panicked: not looked at again before the instant, and how many panics in a row.
    panicked: Mutex<HashMap<i64, (Instant, u32)>>,
    /// Power actions the BMC accepted but may not have carried out yet (many apply them seconds later): until the
    /// instant, a read of the old state is not shown as the host's power, so it does not flap on, off, on.
    settling: Mutex<HashMap<i64, (PowerState, Instant)>>,
    changes: tokio::sync::broadcast::Sender<HostName>,
    /// Virtual-media boot, when the appliance is configured for it.
    media: std::sync::OnceLock<Arc<crate::vmedia::VirtualMedia>>,
    /// With several replicas on one database: the hosts this one holds leases for (it drives no other).
    ownership: std::sync::OnceLock<Arc<Ownership>>,
    /// Idle agents' heartbeats held open until a command is queued for them.
    bells: CommandBells,
}

/// A connected BMC and the address+username it was connected with.
type CachedBmc = (String, Arc<dyn DynBmc>);

struct ActionError {
    failure: BmcFailure,
    what: String,
}

impl Executor {
    pub fn new(
        store: Arc<dyn Store>,
        connector: Arc<dyn BmcConnector>,
        metrics: Arc<Metrics>,
        config: ExecutorConfig,
    ) -> Arc<Self> {
        Arc::new(Self {
            store,
            connector,
            metrics,
            config,
            notify: Arc::new(Notify::new()),
            calls: Mutex::default(),
            bmcs: Mutex::default(),
            slots: Mutex::default(),
            woken: Mutex::default(),
            inflight: Mutex::default(),
            deferral_noted: Mutex::default(),
            panicked: Mutex::default(),
            settling: Mutex::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
            media: std::sync::OnceLock::new(),
            ownership: std::sync::OnceLock::new(),
            bells: CommandBells::default(),
        })
    }

    /// Turns on virtual-media boot (once, at start-up); without it a virtual-media host's job fails with a message
    /// saying what to configure.
    pub fn set_virtual_media(&self, media: Arc<crate::vmedia::VirtualMedia>) {
        let _ = self.media.set(media);
    }

    /// Runs this executor as one of several replicas sharing the store (once, at start-up): it then drives only
    /// the hosts whose leases it holds ([`Ownership`]).
    pub fn set_replica(&self, config: ReplicaConfig) {
        let _ = self.ownership.set(Arc::new(Ownership::new(config)));
    }

    /// The replica's ownership, when several replicas share the store.
    pub fn ownership(&self) -> Option<&Arc<Ownership>> {
        self.ownership.get()
    }

    /// The virtual-media boot in use (the HTTPS listener serves its shelf).
    pub fn virtual_media(&self) -> Option<&Arc<crate::vmedia::VirtualMedia>> {
        self.media.get()
    }

    /// Whether hosts with this BMC address may be enrolled here (see [`BmcConnector::accepts`]).
    ///
    /// # Errors
    /// Why not, for the user.
    pub fn accepts(&self, address: &kiln_bmc::BmcAddress) -> Result<(), String> {
        self.connector.accepts(address)
    }

    /// Wakes the executor now (the API calls this after every change); with several replicas, every replica's.
    pub fn poke(&self) {
        self.notify.notify_one();
        self.announce(None);
    }

    /// Looks at one host on the next pass whatever its wake time (the agent API calls this on reports); with
    /// several replicas, the host's owner does, wherever the report arrived.
    pub fn wake(&self, host_id: i64) {
        self.wake_here(host_id);
        self.announce(Some(host_id));
    }

    /// The signals of commands queued for agents (the agent API holds an idle heartbeat on them).
    pub fn command_bells(&self) -> &CommandBells {
        &self.bells
    }

    /// A command was queued for this host's agent: ends a held heartbeat here and, with several replicas, on the
    /// replica the agent may be talking to.
    fn command_queued(&self, host_id: i64) {
        self.bells.ring(host_id);
        self.announce(Some(host_id));
    }

    fn wake_here(&self, host_id: i64) {
        self.woken.lock().expect("woken lock").insert(host_id);
        self.notify.notify_one();
    }

    /// Tells the other replicas (through the store) that a host needs a look, without waiting for it.
    fn announce(&self, host: Option<i64>) {
        let (Some(o), Ok(rt)) = (self.ownership.get(), tokio::runtime::Handle::try_current()) else {
            return;
        };
        let (store, from) = (self.store.clone(), o.name().to_owned());
        rt.spawn(async move {
            if let Err(e) = store.announce(&from, host).await {
                warn!(error = %crate::bmcs::chain(&e), "could not tell the other replicas about a change");
            }
        });
    }

    /// Wakes this replica on the other replicas' announcements until `cancel` (reconnecting after a failure).
    async fn listen_to_replicas(self: Arc<Self>, me: String, cancel: CancellationToken) {
        use futures::StreamExt;
        loop {
            match self.store.announcements().await {
                Ok(None) => return,
                Ok(Some(mut stream)) => loop {
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        next = stream.next() => match next {
                            Some((from, _)) if from == me => {}
                            Some((_, Some(id))) => {
                                self.bells.ring(id);
                                self.wake_here(id);
                            }
                            Some((_, None)) => self.notify.notify_one(),
                            None => break,
                        },
                    }
                },
                Err(e) => warn!(error = %crate::bmcs::chain(&e), "listening to the other replicas failed; retrying"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Names of hosts whose state or power changed, as the executor commits them (front-ends such as the
    /// BareMetalHost controller subscribe to refresh their view at once instead of polling). A slow subscriber
    /// sees `Lagged` and should refresh everything.
    pub fn subscribe(&self) -> tokio::sync::broadcast::Receiver<HostName> {
        self.changes.subscribe()
    }

    pub fn notifier(&self) -> Arc<Notify> {
        self.notify.clone()
    }

    /// Reconciles due hosts until `cancel` fires. Each host's reconcile runs as its own task, so a slow BMC (a
    /// graceful power-off, a hung connection waiting for its timeout) delays only its own host; later passes skip
    /// hosts still in flight. On cancel every reconcile already started finishes, so no host is left between an
    /// action and its persisted state.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        let permits = Arc::new(tokio::sync::Semaphore::new(self.config.parallelism.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut last_round: Option<Instant> = None;
        if let Some(o) = self.ownership.get() {
            tasks.spawn(self.clone().listen_to_replicas(o.name().to_owned(), cancel.clone()));
        }
        loop {
            while tasks.try_join_next().is_some() {}
            if let Some(o) = self.ownership.get()
                && last_round.is_none_or(|t| t.elapsed() >= o.period())
            {
                last_round = Some(Instant::now());
                self.ownership_round(o).await;
            }
            if let Err(e) = self.pass(&mut tasks, &permits).await {
                warn!(error = %crate::bmcs::chain(&e), "executor pass failed");
            }
            let tick = match self.ownership.get() {
                Some(o) => self.config.tick.min(o.period()),
                None => self.config.tick,
            };
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(tick) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
        if let Some(o) = self.ownership.get() {
            match o.leave(self.store.as_ref()).await {
                Ok(()) => tracing::info!(replica = o.name(), "left: the other replicas take this one's hosts"),
                Err(e) => warn!(error = %crate::bmcs::chain(&e), "could not leave; the leases expire instead"),
            }
        }
    }

    /// One ownership round: heartbeat, renew, take and release leases; says when the share changed.
    async fn ownership_round(&self, o: &Ownership) {
        let busy = self.inflight.lock().expect("inflight lock").clone();
        match o.round(self.store.as_ref(), now(), &busy).await {
            Ok(r) if r.gained > 0 || r.released > 0 => {
                tracing::info!(
                    replica = o.name(),
                    replicas = r.replicas,
                    held = r.held,
                    gained = r.gained,
                    released = r.released,
                    "host leases changed"
                );
                for (change, n) in [("gained", r.gained), ("released", r.released)] {
                    self.metrics
                        .add("kiln_lease_changes_total", vec![("change", change.into())], n as u64);
                }
                self.notify.notify_one();
            }
            Ok(_) => {}
            Err(e) => {
                warn!(error = %crate::bmcs::chain(&e), "renewing host leases failed; acting only until they lapse")
            }
        }
    }

    /// Starts a reconcile of every host that is due now and not already being reconciled; returns how many.
    ///
    /// # Errors
    /// The store error that prevented listing hosts.
    async fn pass(
        self: &Arc<Self>,
        tasks: &mut tokio::task::JoinSet<()>,
        permits: &Arc<tokio::sync::Semaphore>,
    ) -> Result<usize, StoreError> {
        // The in-flight set is read before the hosts: a reconcile that ended before this line has saved its state,
        // so no host is ever decided from a stale row while its previous decision is still being carried out.
        let inflight = self.inflight.lock().expect("inflight lock").clone();
        {
            // Hosts at rest hold a slot exactly when their stored state runs a job; an in-flight host keeps what its
            // reconcile reserved or released (it updates the set before it leaves the in-flight set).
            let mut jobs = self.store.job_states().await?;
            if let Some(o) = self.ownership.get() {
                // Each replica runs at most max_concurrent_jobs of its own hosts' jobs.
                jobs.retain(|(id, _)| o.owns(*id));
            }
            let mut slots = self.slots.lock().expect("slots lock");
            slots.retain(|id| inflight.contains(id));
            slots.extend(
                jobs.iter()
                    .filter(|(id, st)| !inflight.contains(id) && st.holds_slot())
                    .map(|(id, _)| *id),
            );
        }
        let now = now();
        let backing_off: HashSet<i64> = {
            let mut p = self.panicked.lock().expect("panicked lock");
            // Entries of hosts that never reconciled again (deleted meanwhile) go after a day.
            p.retain(|_, (until, _)| until.elapsed() < Duration::from_secs(86_400));
            p.iter()
                .filter(|(_, (until, _))| *until > Instant::now())
                .map(|(id, _)| *id)
                .collect()
        };
        // The hosts due now (an index probe: hosts at rest cost nothing until their next wake), and those woken by
        // the API or the agent since the last pass. Wakes of hosts in flight or backing off wait for a later pass.
        let woken = std::mem::take(&mut *self.woken.lock().expect("woken lock"));
        let (later, woken): (HashSet<i64>, HashSet<i64>) = woken
            .into_iter()
            .partition(|id| inflight.contains(id) || backing_off.contains(id));
        self.woken.lock().expect("woken lock").extend(later);
        // Ids first (an index probe); rows only of the hosts this replica will reconcile now, so a replica never
        // reads or unseals another replica's share.
        let mut ids: HashSet<i64> = self.store.due_host_ids(now).await?.into_iter().collect();
        ids.extend(woken);
        ids.retain(|id| !inflight.contains(id) && !backing_off.contains(id));
        if let Some(o) = self.ownership.get() {
            ids.retain(|id| o.owns(*id));
        }
        let ids: Vec<i64> = ids.into_iter().collect();
        let mut due: Vec<Host> = self.store.hosts_by_ids(&ids).await?;
        // Queued hosts go first, oldest first, so the delayed queue is FIFO (the semaphore is fair).
        due.sort_by_key(|h| {
            (
                h.state.job().is_none_or(|j| j.phase != JobPhase::Delayed),
                h.state.job().map(|j| j.started),
            )
        });
        let n = due.len();
        for h in due {
            self.inflight.lock().expect("inflight lock").insert(h.id);
            let me = self.clone();
            let permits = permits.clone();
            tasks.spawn(async move {
                let _permit = permits.acquire_owned().await;
                let (id, name, held) = (h.id, h.name.clone(), h.state.holds_slot());
                let span = info_span!("reconcile", host = %h.name, state = h.state.name());
                // A panic in one host's reconcile (a driver bug, a corrupt record) is contained: recorded, and the
                // host looked at again after a backoff, while every other host goes on.
                let r = std::panic::AssertUnwindSafe(me.reconcile(h, now_or(now)).instrument(span))
                    .catch_unwind()
                    .await;
                match r {
                    Ok(Ok(())) => {
                        me.panicked.lock().expect("panicked lock").remove(&id);
                    }
                    Ok(Err(e)) => warn!(host = %name, error = %crate::bmcs::chain(&e), "reconcile failed"),
                    Err(panic) => {
                        let what = panic_message(panic.as_ref());
                        me.contain_panic(id, &name, held, what).await;
                    }
                }
                me.inflight.lock().expect("inflight lock").remove(&id);
            });
        }
        Ok(n)
    }

    /// Whether `host` holds a job slot or one is free (without taking it).
    fn slot_available(&self, host: i64) -> bool {
        let slots = self.slots.lock().expect("slots lock");
        slots.contains(&host) || slots.len() < self.config.max_concurrent_jobs
    }

    /// Reserves a job slot for `host` if one is free.
    fn take_slot(&self, host: i64) -> bool {
        let mut slots = self.slots.lock().expect("slots lock");
        if slots.contains(&host) {
            return true;
        }
        if slots.len() < self.config.max_concurrent_jobs {
            slots.insert(host);
            true
        } else {
            false
        }
    }

    /// Records whether `host` holds a slot after its reconcile.
    fn set_slot(&self, host: i64, holds: bool) {
        let mut slots = self.slots.lock().expect("slots lock");
        if holds {
            slots.insert(host);
        } else {
            slots.remove(&host);
        }
    }

    /// After a reconcile panicked: the host keeps the slot its stored state says it holds, an event says what
    /// happened, and the host is looked at again after a backoff that grows with repeated panics.
    async fn contain_panic(&self, id: i64, name: &HostName, held: bool, what: String) {
        self.set_slot(id, held);
        self.forget_bmc(id);
        let count = {
            let mut p = self.panicked.lock().expect("panicked lock");
            let entry = p.entry(id).or_insert((Instant::now(), 0));
            entry.1 += 1;
            let p = &self.config.policy;
            let wait = Duration::from_millis(backoff_ms(p, entry.1 - 1, rand::rng().random::<f64>()).max(0) as u64);
            entry.0 = Instant::now() + wait;
            entry.1
        };
        tracing::error!(host = %name, panic = %what, count, "reconcile panicked; retrying after a backoff");
        self.metrics.inc("kiln_reconcile_panics_total", vec![]);
        let msg = format!("kiln's reconcile of this host panicked ({what}); it is retried after a backoff");
        if let Err(e) = self
            .store
            .add_event(name.as_str(), now(), "reconcile_panic", &msg)
            .await
        {
            warn!(host = %name, error = %crate::bmcs::chain(&e), "could not record the panic");
        }
        self.notify.notify_one();
    }
}

/// The message of a caught panic.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic without a message".to_owned())
}

/// Called by the agent API when a result arrives for a command, so the executor looks at the host at once.
pub fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Succeeded { .. } => "succeeded",
        Outcome::Failed { .. } => "failed",
    }
}
