//! The executor: gathers observations (BMC power, agent heartbeats and results, concurrency slots), calls the pure
//! [`step`](crate::machine::step), performs the actions through the BMC, the agent command queue and the store, and
//! persists the result with its timing records and events. It owns rate limits and action retries; it must not
//! decide host transitions itself.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use kiln_bmc::{BootPersistence, PowerAction, PowerState};
use kiln_images::protocol::Outcome;
use rand::Rng;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::bmcs::{BmcConnector, DynBmc};
use crate::machine::{
    Action, AgentObs, BmcFailure, BmcObs, Decision, HostView, JobPhase, Observed, Policy, State, backoff_ms, step,
};
use crate::metrics::Metrics;
use crate::model::{Host, StatusUpdate};
use crate::store::{CommandStatus, Store, StoreError};
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
    action_attempts: Mutex<HashMap<i64, u32>>,
    busy: Mutex<usize>,
    woken: Mutex<std::collections::HashSet<i64>>,
    /// Hosts whose reconcile task is running.
    inflight: Mutex<std::collections::HashSet<i64>>,
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
            action_attempts: Mutex::default(),
            busy: Mutex::new(0),
            woken: Mutex::default(),
            inflight: Mutex::default(),
            changes: tokio::sync::broadcast::channel(1024).0,
        })
    }

    /// Wakes the executor now (the API calls this after every change).
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
        // In-flight hosts count as holding a slot until their reconcile ends (they may be taking one right now).
        *self.busy.lock().expect("busy lock") = hosts
            .iter()
            .filter(|h| h.state.holds_slot() || inflight.contains(&h.id))
            .count();
        let now = now();
        let mut woken = std::mem::take(&mut *self.woken.lock().expect("woken lock"));
        let mut due: Vec<Host> = hosts
            .into_iter()
            .filter(|h| !inflight.contains(&h.id))
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
                let id = h.id;
                let span = info_span!("reconcile", host = %h.name, state = h.state.name());
                if let Err(e) = me.reconcile(h, now_or(now)).instrument(span).await {
                    warn!(error = %crate::bmcs::chain(&e), "reconcile failed");
                }
                me.inflight.lock().expect("inflight lock").remove(&id);
            });
        }
        Ok(n)
    }

    fn take_slot(&self) -> bool {
        let mut b = self.busy.lock().expect("busy lock");
        if *b < self.config.max_concurrent_jobs {
            *b += 1;
            true
        } else {
            false
        }
    }

    fn release_slot(&self) {
        let mut b = self.busy.lock().expect("busy lock");
        *b = b.saturating_sub(1);
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
        let key = format!("{}|{}", info.address, info.username);
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
        let reserved = !h.state.holds_slot() && self.take_slot();
        obs.slot_free = reserved;
        let view = HostView {
            name: h.name.clone(),
            spec: h.spec.clone(),
            requests: h.requests.clone(),
            state: h.state.clone(),
            power: match &obs.bmc {
                BmcObs::Power(p) => Some(*p),
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
        if (reserved || h.state.holds_slot()) && !holds {
            self.release_slot();
        }
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
            // Over the per-host BMC budget: try again when the window has room.
            let st = self.status(h, view, &h.state, h.requests.clone(), *calls, now.plus_secs(10));
            return Ok(self
                .store
                .save_status(h.id, h.generation, &st, now)
                .await?
                .then(|| h.state.clone()));
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
                        power = Some(match pa {
                            PowerAction::Off | PowerAction::ForceOff => PowerState::Off,
                            PowerAction::On | PowerAction::Cycle | PowerAction::Reset => PowerState::On,
                        });
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
        if self
            .action_attempts
            .lock()
            .expect("attempts lock")
            .remove(&h.id)
            .is_some()
        {
            self.store
                .add_event(h.name.as_str(), now, "bmc_recovered", "the BMC answered again")
                .await?;
        }
        let st = StatusUpdate {
            power,
            ..self.status(h, view, &d.next, requests, *calls, d.wake)
        };
        if !self.store.save_status(h.id, h.generation, &st, now).await? {
            // The operator changed the host meanwhile; the actions are idempotent, so look again at once.
            self.poke();
            return Ok(None);
        }
        if h.state != d.next || h.power != power {
            let _ = self.changes.send(h.name.clone());
        }
        self.record_change(h, &d.next, &d.reason, now).await?;
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
        let attempts = {
            let mut m = self.action_attempts.lock().expect("attempts lock");
            let a = m.entry(h.id).or_default();
            *a += 1;
            *a
        };
        // The next attempt connects afresh: a BMC that restarted has forgotten our session.
        self.forget_bmc(h.id);
        let p = &self.config.policy;
        let msg = format!("{} failed: {}", e.what, e.failure.message);
        warn!(attempt = attempts, transient = e.failure.transient, "{msg}");
        if e.failure.transient && attempts <= p.max_retries {
            let msg = format!("{msg} (attempt {attempts} of {}; retrying)", p.max_retries + 1);
            self.store.add_event(h.name.as_str(), now, "bmc_error", &msg).await?;
            let wake = now.plus_ms(backoff_ms(p, attempts - 1, obs.jitter));
            let st = self.status(h, view, &h.state, h.requests.clone(), calls, wake);
            return Ok(self
                .store
                .save_status(h.id, h.generation, &st, now)
                .await?
                .then(|| h.state.clone()));
        }
        self.store.add_event(h.name.as_str(), now, "bmc_error", &msg).await?;
        self.action_attempts.lock().expect("attempts lock").remove(&h.id);
        let next = crate::machine::action_failed(view, &d.next, &e.failure, &msg, now, obs.jitter);
        let st = self.status(h, view, &next.next, h.requests.clone(), calls, next.wake);
        let st = crate::model::StatusUpdate {
            requests: {
                let mut r = h.requests.clone();
                r.power = None;
                r
            },
            ..st
        };
        if !self.store.save_status(h.id, h.generation, &st, now).await? {
            return Ok(None);
        }
        let _ = self.changes.send(h.name.clone());
        self.record_change(h, &next.next, &next.reason, now).await?;
        Ok(Some(next.next))
    }

    /// Events, timing records, metrics and the one log line of a state change.
    async fn record_change(&self, h: &Host, next: &State, reason: &str, now: Ts) -> Result<(), StoreError> {
        let outcome = if matches!(next, State::Error(_)) { "error" } else { "ok" };
        let (old_sub, new_sub) = (h.state.sub_phase(), next.sub_phase());
        if old_sub != new_sub
            && let Some(o) = &old_sub
        {
            self.end_phase(h.id, o, now, outcome).await?;
        }
        if next.name() != h.state.name() {
            self.end_phase(h.id, h.state.name(), now, outcome).await?;
            self.store.start_phase(h.id, next.name(), now).await?;
            let msg = format!("{} -> {}: {reason}", h.state.name(), next.name());
            self.store.add_event(h.name.as_str(), now, "state", &msg).await?;
            self.metrics
                .inc("kiln_state_transitions_total", vec![("to", next.name().into())]);
            info!(from = h.state.name(), to = next.name(), reason, "state change");
        }
        if old_sub != new_sub
            && let Some(n) = &new_sub
        {
            self.store.start_phase(h.id, n, now).await?;
            self.store
                .add_event(h.name.as_str(), now, "phase", &format!("{n}: {reason}"))
                .await?;
        }
        Ok(())
    }

    async fn end_phase(&self, host: i64, phase: &str, now: Ts, outcome: &str) -> Result<(), StoreError> {
        if let Some(r) = self.store.end_phase(host, phase, now, outcome).await? {
            let secs = now.since(r.started) as f64 / 1000.0;
            let base = phase.split('.').next().unwrap_or(phase).to_owned();
            let sub = phase.split('.').nth(1).unwrap_or("").to_owned();
            self.metrics.observe(
                "kiln_phase_duration_seconds",
                vec![("state", base), ("phase", sub), ("outcome", outcome.into())],
                secs,
            );
        }
        Ok(())
    }
}

/// Called by the agent API when a result arrives for a command, so the executor looks at the host at once.
pub fn outcome_label(o: &Outcome) -> &'static str {
    match o {
        Outcome::Succeeded { .. } => "succeeded",
        Outcome::Failed { .. } => "failed",
    }
}
