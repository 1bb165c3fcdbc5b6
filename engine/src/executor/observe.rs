//! What the executor reads before each decision: BMC connections per host, the per-host call budget, power
//! readings (and when a reading after a power action counts as settled), and the agent's heartbeats and results.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln_bmc::PowerState;
use rand::Rng;

use super::Executor;
use crate::bmcs::DynBmc;
use crate::machine::{AgentObs, BmcFailure, BmcObs, JobPhase, Observed, State};
use crate::model::Host;
use crate::store::{CommandStatus, StoreError};
use crate::types::Ts;

impl Executor {
    /// The power to show instead of `read` while a power action the BMC accepted is still settling.
    pub(super) fn settled_power(&self, host: i64, read: PowerState) -> Option<PowerState> {
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

    /// Records a BMC call if the per-minute budget allows it.
    pub(super) fn budget(&self, host: i64, n: usize) -> bool {
        self.budget_leaving(host, n, 0)
    }

    /// Like [`Self::budget`], but only if `reserve` more calls would still fit afterwards.
    pub(super) fn budget_leaving(&self, host: i64, n: usize, reserve: usize) -> bool {
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

    pub(super) async fn bmc_for(&self, h: &Host) -> Result<Arc<dyn DynBmc>, BmcFailure> {
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

    pub(super) fn forget_bmc(&self, host: i64) {
        self.bmcs.lock().expect("bmcs lock").remove(&host);
    }

    pub(super) async fn timed<T>(
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

    pub(super) async fn observe(&self, h: &Host, now: Ts) -> Result<(Observed, u64), StoreError> {
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
}
