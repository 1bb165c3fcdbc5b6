//! The executor: gathers observations (BMC power, agent heartbeats and results, concurrency slots), calls the pure
//! [`step`](crate::machine::step), performs the actions through the BMC, the agent command queue and the store, and
//! persists the result with its timing records and events. It owns rate limits and action retries; it must not
//! decide host transitions itself.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::FutureExt;
use kiln_bmc::{BootPersistence, PowerAction, PowerState};
use kiln_images::protocol::Outcome;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::bmcs::{BmcConnector, DynBmc};
use crate::machine::{
    Action, AfterActionFailure, AgentObs, BmcFailure, BmcObs, Decision, HostView, JobPhase, Observed, Policy, State,
    after_action_failure, backoff_ms, step,
};
use crate::metrics::Metrics;
use crate::model::{Host, StatusUpdate};
use crate::store::{CommandStatus, Journal, PhaseRecord, Store, StoreError};
use crate::types::{HostName, Ts};

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
#[derive(Debug, Clone, Copy)]
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
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        Self {
            policy: Policy::default(),
            max_concurrent_jobs: 20,
            bmc_calls_per_minute: 12,
            parallelism: 16,
            tick: Duration::from_millis(500),
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
        })
    }

    /// Wakes the executor now (the API calls this after every change).
    /// Whether hosts with this BMC address may be enrolled here (see [`BmcConnector::accepts`]).
    ///
    /// # Errors
    /// Why not, for the user.
    pub fn accepts(&self, address: &kiln_bmc::BmcAddress) -> Result<(), String> {
        self.connector.accepts(address)
    }

    pub fn poke(&self) {
        self.notify.notify_one();
    }

    /// Looks at one host on the next pass whatever its wake time (the agent API calls this on reports).
    pub fn wake(&self, host_id: i64) {
        self.woken.lock().expect("woken lock").insert(host_id);
        self.notify.notify_one();
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
        loop {
            while tasks.try_join_next().is_some() {}
            if let Err(e) = self.pass(&mut tasks, &permits).await {
                warn!(error = %crate::bmcs::chain(&e), "executor pass failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = self.notify.notified() => {}
                _ = tokio::time::sleep(self.config.tick) => {}
            }
        }
        while tasks.join_next().await.is_some() {}
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
        let hosts = self.store.hosts().await?;
        {
            // Hosts at rest hold a slot exactly when their stored state runs a job; an in-flight host keeps what its
            // reconcile reserved or released (it updates the set before it leaves the in-flight set).
            let mut slots = self.slots.lock().expect("slots lock");
            slots.retain(|id| inflight.contains(id));
            slots.extend(
                hosts
                    .iter()
                    .filter(|h| !inflight.contains(&h.id) && h.state.holds_slot())
                    .map(|h| h.id),
            );
        }
        let now = now();
        let mut woken = std::mem::take(&mut *self.woken.lock().expect("woken lock"));
        let backing_off: HashSet<i64> = {
            let mut p = self.panicked.lock().expect("panicked lock");
            p.retain(|id, _| hosts.iter().any(|h| h.id == *id));
            p.iter()
                .filter(|(_, (until, _))| *until > Instant::now())
                .map(|(id, _)| *id)
                .collect()
        };
        let mut due: Vec<Host> = hosts
            .into_iter()
            .filter(|h| !inflight.contains(&h.id) && !backing_off.contains(&h.id))
            .filter(|h| woken.remove(&h.id) || h.next_wake.is_none_or(|w| w <= now))
            .collect();
        // Wakes of hosts still in flight are kept for a later pass.
        self.woken.lock().expect("woken lock").extend(woken);
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

    /// The power to show instead of `read` while a power action the BMC accepted is still settling.
    fn settled_power(&self, host: i64, read: PowerState) -> Option<PowerState> {
        let mut settling = self.settling.lock().expect("settling lock");
        match settling.get(&host) {
            Some((target, until)) if *target != read && Instant::now() < *until => Some(*target),
            Some(_) => {
                settling.remove(&host);
                None
            }
            None => None,
        }
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
        self.poke();
    }

    /// Records a BMC call if the per-minute budget allows it.
    fn budget(&self, host: i64, n: usize) -> bool {
        self.budget_leaving(host, n, 0)
    }

    /// Like [`Self::budget`], but only if `reserve` more calls would still fit afterwards.
    fn budget_leaving(&self, host: i64, n: usize, reserve: usize) -> bool {
        let mut calls = self.calls.lock().expect("calls lock");
        let q = calls.entry(host).or_default();
        let cutoff = Instant::now().checked_sub(Duration::from_secs(60));
        while q.front().is_some_and(|t| cutoff.is_some_and(|c| *t < c)) {
            q.pop_front();
        }
        if q.len() + n + reserve > self.config.bmc_calls_per_minute {
            return false;
        }
        for _ in 0..n {
            q.push_back(Instant::now());
        }
        true
    }

    async fn bmc_for(&self, h: &Host) -> Result<Arc<dyn DynBmc>, BmcFailure> {
        let Some(info) = &h.spec.bmc else {
            return Err(BmcFailure {
                message: "host has no BMC address".into(),
                transient: false,
                auth: false,
            });
        };
        let key = format!("{}|{}|{:?}", info.address, info.username, info.tls);
        if let Some((k, b)) = self.bmcs.lock().expect("bmcs lock").get(&h.id)
            && *k == key
        {
            return Ok(b.clone());
        }
        let b = self.timed("connect", self.connector.connect(&h.name, info)).await?;
        self.bmcs.lock().expect("bmcs lock").insert(h.id, (key, b.clone()));
        Ok(b)
    }

    fn forget_bmc(&self, host: i64) {
        self.bmcs.lock().expect("bmcs lock").remove(&host);
    }

    async fn timed<T>(
        &self,
        op: &'static str,
        f: impl std::future::Future<Output = Result<T, BmcFailure>>,
    ) -> Result<T, BmcFailure> {
        let t = Instant::now();
        let r = f.await;
        let outcome = match &r {
            Ok(_) => "ok",
            Err(e) if e.transient => "transient_error",
            Err(_) => "error",
        };
        self.metrics.inc(
            "kiln_bmc_calls_total",
            vec![("op", op.into()), ("outcome", outcome.into())],
        );
        self.metrics.observe(
            "kiln_bmc_call_duration_seconds",
            vec![("op", op.into())],
            t.elapsed().as_secs_f64(),
        );
        r
    }

    async fn observe(&self, h: &Host, now: Ts) -> Result<(Observed, u64), StoreError> {
        let mut calls = 0;
        let wants_power = match &h.state {
            State::Registering { .. } => true,
            State::Available { .. }
            | State::Provisioned { .. }
            | State::ExternallyProvisioned { .. }
            | State::Error(_) => true,
            State::Unmanaged
            | State::Inspecting(_)
            | State::Preparing(_)
            | State::Provisioning(_)
            | State::Deprovisioning(_)
            | State::Deleting { .. } => false,
        };
        // A pending power request keeps one call of the budget for itself: periodic reads must not starve it.
        let reserve = usize::from(h.requests.power.is_some());
        let bmc = if wants_power && h.spec.bmc.is_some() && self.budget_leaving(h.id, 1, reserve) {
            calls += 1;
            match self.bmc_for(h).await {
                Ok(b) => match self.timed("power_state", b.power_state()).await {
                    Ok(p) => BmcObs::Power(p),
                    Err(f) => {
                        self.forget_bmc(h.id);
                        BmcObs::Failed(f)
                    }
                },
                Err(f) => BmcObs::Failed(f),
            }
        } else {
            BmcObs::NotRead
        };
        let mut agent = AgentObs::default();
        if let Some(job) = h.state.job() {
            agent.last_heartbeat = self.store.agent_boot(h.id, job.boot).await?.map(|b| b.last_heartbeat);
            if let JobPhase::Running { command } = job.phase
                && let Some(c) = self.store.command(h.id, command).await?
            {
                agent.result = match c.status {
                    CommandStatus::Succeeded | CommandStatus::Failed => c.result,
                    CommandStatus::Queued | CommandStatus::Sent => None,
                };
            }
        }
        let _ = now;
        Ok((
            Observed {
                bmc,
                agent,
                slot_free: false,
                jitter: rand::rng().random::<f64>(),
            },
            calls,
        ))
    }

    async fn reconcile(&self, h: Host, now: Ts) -> Result<(), StoreError> {
        let (mut obs, mut calls) = self.observe(&h, now).await?;
        let reserved = !h.state.holds_slot() && self.take_slot(h.id);
        obs.slot_free = reserved;
        let view = HostView {
            name: h.name.clone(),
            spec: h.spec.clone(),
            requests: h.requests.clone(),
            state: h.state.clone(),
            power: match &obs.bmc {
                BmcObs::Power(p) => Some(self.settled_power(h.id, *p).unwrap_or(*p)),
                BmcObs::NotRead | BmcObs::Failed(_) => h.power,
            },
            boots: h.counters.boots,
            policy: self.config.policy,
        };
        let d = step(&view, &obs, now);
        let result = self.apply(&h, &view, d, &obs, now, &mut calls).await;
        let holds = match &result {
            Ok(Some(st)) => st.holds_slot(),
            Ok(None) | Err(_) => h.state.holds_slot(),
        };
        // Give back a slot reserved for nothing, or one the host no longer holds.
        self.set_slot(h.id, holds);
        result.map(|_| ())
    }

    /// Performs the decision's actions and persists; returns the state now stored (None if the write lost).
    async fn apply(
        &self,
        h: &Host,
        view: &HostView,
        d: Decision,
        obs: &Observed,
        now: Ts,
        calls: &mut u64,
    ) -> Result<Option<State>, StoreError> {
        let bmc_calls = d
            .actions
            .iter()
            .filter(|a| matches!(a, Action::SetBoot { .. } | Action::Power(_)))
            .count();
        if bmc_calls > 0 && h.spec.bmc.is_some() && !self.budget(h.id, bmc_calls) {
            // Over the per-host BMC budget: try again when the window has room, and say why the host waits (an
            // operator otherwise sees a request accepted and nothing happen for up to a minute).
            let st = self.status(h, view, &h.state, h.requests.clone(), *calls, now.plus_secs(10));
            let mut journal = Journal::default();
            let note = {
                let mut noted = self.deferral_noted.lock().expect("deferral lock");
                let due = noted.get(&h.id).is_none_or(|t| t.elapsed() >= Duration::from_secs(60));
                if due {
                    noted.insert(h.id, Instant::now());
                }
                due
            };
            if note {
                journal.events.push((
                    "bmc_budget".into(),
                    format!(
                        "waiting for this host's BMC call budget ({} calls a minute, bmc_calls_per_minute) before: {}",
                        self.config.bmc_calls_per_minute, d.reason
                    ),
                ));
            }
            self.metrics.inc("kiln_bmc_budget_deferrals_total", vec![]);
            return Ok(self
                .store
                .commit_status(h.id, h.generation, &st, &journal, now)
                .await?
                .map(|_| h.state.clone()));
        }
        let mut requests = h.requests.clone();
        let mut power = view.power;
        for a in &d.actions {
            let r = match a {
                Action::SetBoot { target, once } => {
                    *calls += 1;
                    let p = if *once {
                        BootPersistence::Once
                    } else {
                        BootPersistence::Persistent
                    };
                    match self.bmc_for(h).await {
                        Ok(b) => self.timed("set_boot", b.set_boot(*target, p)).await,
                        Err(f) => Err(f),
                    }
                    .map_err(|failure| ActionError {
                        failure,
                        what: format!("setting the boot device to {target}"),
                    })
                }
                Action::Power(pa) => {
                    if h.spec.bmc.is_none() {
                        continue;
                    }
                    *calls += 1;
                    let r = match self.bmc_for(h).await {
                        Ok(b) => self.timed("set_power", b.set_power(*pa)).await,
                        Err(f) => Err(f),
                    };
                    if r.is_ok() {
                        let target = match pa {
                            PowerAction::Off | PowerAction::ForceOff => PowerState::Off,
                            PowerAction::On | PowerAction::Cycle | PowerAction::Reset => PowerState::On,
                        };
                        power = Some(target);
                        let until = Instant::now() + POWER_SETTLE;
                        self.settling
                            .lock()
                            .expect("settling lock")
                            .insert(h.id, (target, until));
                    }
                    r.map_err(|failure| ActionError {
                        failure,
                        what: format!("power {}", format!("{pa:?}").to_lowercase()),
                    })
                }
                Action::Enqueue { boot, id, kind } => {
                    self.store.enqueue_command(h.id, *boot, *id, kind, now).await?;
                    Ok(())
                }
                Action::RevokeTokens => {
                    self.store.revoke_tokens(h.id).await?;
                    Ok(())
                }
                Action::MintToken { boot, phase } => {
                    let token = kiln_bmc::Secret::new(crate::crypto::random_hex(32));
                    let hash = crate::crypto::hash_token(token.expose());
                    self.store
                        .add_token(&hash, h.id, *boot, phase, Some(&token), now)
                        .await?;
                    Ok(())
                }
                Action::ClearPowerRequest => {
                    requests.power = None;
                    Ok(())
                }
                Action::ClearInspectRequest => {
                    requests.inspect = false;
                    Ok(())
                }
                Action::ClearRetryRequest => {
                    requests.retry = false;
                    Ok(())
                }
                Action::Forget => {
                    self.store.delete_host(h.id).await?;
                    self.store
                        .add_event(h.name.as_str(), now, "deleted", "host removed")
                        .await?;
                    self.store.end_phase(h.id, h.state.name(), now, "ok").await?;
                    info!(from = h.state.name(), "host deleted");
                    let _ = self.changes.send(h.name.clone());
                    self.forget_bmc(h.id);
                    return Ok(None);
                }
            };
            if let Err(e) = r {
                return self.action_failed(h, view, &d, obs, e, now, *calls).await;
            }
        }
        let mut st = StatusUpdate {
            power,
            ..self.status(h, view, &d.next, requests, *calls, d.wake)
        };
        let recovered = bmc_calls > 0 && h.counters.bmc_attempts > 0;
        if recovered {
            st.counters.bmc_attempts = 0;
        }
        let mut journal = Journal::default();
        if recovered {
            journal
                .events
                .push(("bmc_recovered".into(), "the BMC answered again".into()));
        }
        change_journal(&mut journal, h, &d.next, &d.reason);
        let Some(ended) = self.store.commit_status(h.id, h.generation, &st, &journal, now).await? else {
            // The operator changed the host meanwhile; the actions are idempotent, so look again at once.
            self.poke();
            return Ok(None);
        };
        self.recorded_change(h, &d.next, &d.reason, &ended, now);
        if h.state != d.next || h.power != power {
            let _ = self.changes.send(h.name.clone());
        }
        Ok(Some(d.next))
    }

    fn status(
        &self,
        h: &Host,
        view: &HostView,
        next: &State,
        requests: crate::model::Requests,
        calls: u64,
        wake: Ts,
    ) -> StatusUpdate {
        let mut counters = h.counters;
        counters.boots = counters.boots.max(next.job().map_or(0, |j| j.boot));
        counters.bmc_calls += calls;
        if next.name() != h.state.name() {
            match next {
                State::Error(_) => counters.errors += 1,
                State::Provisioned { .. } => counters.deploys += 1,
                _ => {}
            }
        }
        StatusUpdate {
            state: next.clone(),
            requests,
            power: view.power,
            counters,
            next_wake: Some(wake),
        }
    }

    /// A BMC action of `d` failed: the state machine decides between a retry and giving up; the attempt count it
    /// decides on is persisted with the host.
    #[allow(clippy::too_many_arguments)]
    async fn action_failed(
        &self,
        h: &Host,
        view: &HostView,
        d: &Decision,
        obs: &Observed,
        e: ActionError,
        now: Ts,
        calls: u64,
    ) -> Result<Option<State>, StoreError> {
        let attempts = h.counters.bmc_attempts.saturating_add(1);
        // The next attempt connects afresh: a BMC that restarted has forgotten our session.
        self.forget_bmc(h.id);
        let verdict = after_action_failure(view, &d.next, &e.failure, &e.what, attempts, now, obs.jitter);
        match verdict {
            AfterActionFailure::Retry { wake, message } => {
                warn!(attempt = attempts, transient = e.failure.transient, "{message}");
                let mut st = self.status(h, view, &h.state, h.requests.clone(), calls, wake);
                st.counters.bmc_attempts = attempts;
                let journal = Journal {
                    events: vec![("bmc_error".into(), message)],
                    ..Journal::default()
                };
                if self
                    .store
                    .commit_status(h.id, h.generation, &st, &journal, now)
                    .await?
                    .is_none()
                {
                    return Ok(None);
                }
                Ok(Some(h.state.clone()))
            }
            AfterActionFailure::GiveUp(next) => {
                let message = format!("{} failed: {}", e.what, e.failure.message);
                warn!(attempt = attempts, transient = e.failure.transient, "{message}");
                let mut requests = h.requests.clone();
                for a in &next.actions {
                    if *a == Action::ClearPowerRequest {
                        requests.power = None;
                    }
                }
                let mut st = self.status(h, view, &next.next, requests, calls, next.wake);
                st.counters.bmc_attempts = 0;
                let mut journal = Journal {
                    events: vec![("bmc_error".into(), message)],
                    ..Journal::default()
                };
                change_journal(&mut journal, h, &next.next, &next.reason);
                let Some(ended) = self.store.commit_status(h.id, h.generation, &st, &journal, now).await? else {
                    return Ok(None);
                };
                self.recorded_change(h, &next.next, &next.reason, &ended, now);
                let _ = self.changes.send(h.name.clone());
                Ok(Some(next.next))
            }
        }
    }

    /// The metrics and the one log line of a state change that was committed with `ended` records.
    fn recorded_change(&self, h: &Host, next: &State, reason: &str, ended: &[PhaseRecord], now: Ts) {
        for r in ended {
            let secs = now.since(r.started) as f64 / 1000.0;
            let base = r.phase.split('.').next().unwrap_or(&r.phase).to_owned();
            let sub = r.phase.split('.').nth(1).unwrap_or("").to_owned();
            let outcome = r.outcome.clone().unwrap_or_default();
            self.metrics.observe(
                "kiln_phase_duration_seconds",
                vec![("state", base), ("phase", sub), ("outcome", outcome)],
                secs,
            );
        }
        if next.name() != h.state.name() {
            self.metrics
                .inc("kiln_state_transitions_total", vec![("to", next.name().into())]);
            info!(from = h.state.name(), to = next.name(), reason, "state change");
        }
    }
}

/// The timing records and events of moving `h` to `next`, added to `journal`: committed with the new state.
fn change_journal(journal: &mut Journal, h: &Host, next: &State, reason: &str) {
    let outcome = if matches!(next, State::Error(_)) { "error" } else { "ok" };
    let (old_sub, new_sub) = (h.state.sub_phase(), next.sub_phase());
    if old_sub != new_sub
        && let Some(o) = &old_sub
    {
        journal.ended.push((o.clone(), outcome.into()));
    }
    if next.name() != h.state.name() {
        journal.ended.push((h.state.name().into(), outcome.into()));
        journal.started.push(next.name().into());
        journal.events.push((
            "state".into(),
            format!("{} -> {}: {reason}", h.state.name(), next.name()),
        ));
    }
    if old_sub != new_sub
        && let Some(n) = &new_sub
    {
        journal.started.push(n.clone());
        journal.events.push(("phase".into(), format!("{n}: {reason}")));
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
