//! One reconcile of one host: observe, decide with the pure machine, carry out the decision's actions (BMC, agent
//! commands, tokens, store), and commit the new status with its journal (phases and events) in one transaction.

use std::time::{Duration, Instant};

use kiln_bmc::{BootPersistence, PowerAction, PowerState};
use kiln_images::protocol::CommandKind;
use tracing::{info, warn};

use super::{ActionError, Executor, POWER_SETTLE};
use crate::machine::{
    Action, AfterActionFailure, BmcFailure, BmcObs, Decision, HostView, Observed, State, after_action_failure, step,
};
use crate::model::{Host, StatusUpdate};
use crate::store::{Journal, PhaseRecord, StoreError};
use crate::types::{MacAddr, Ts};

impl Executor {
    /// Commits a host's new status and journal; with several replicas, only under this replica's lease of the host
    /// (`None`: not written, because the host moved on or is another replica's now).
    pub(super) async fn commit_status_of(
        &self,
        h: &Host,
        st: &StatusUpdate,
        journal: &Journal,
        now: Ts,
    ) -> Result<Option<Vec<PhaseRecord>>, StoreError> {
        let fence = match self.ownership.get() {
            None => None,
            Some(o) => match o.fence(h.id) {
                Some(f) => Some(f),
                None => return Ok(None),
            },
        };
        self.store
            .commit_status(h.id, h.generation, st, journal, fence.as_ref(), now)
            .await
    }

    /// Whether this replica may act on host `id` now (always, without replicas).
    pub(super) fn may_act(&self, id: i64) -> bool {
        self.ownership.get().is_none_or(|o| o.owns(id))
    }

    pub(super) async fn reconcile(&self, h: Host, now: Ts) -> Result<(), StoreError> {
        if !self.may_act(h.id) {
            return Ok(());
        }
        let (mut obs, mut calls) = self.observe(&h, now).await?;
        // A slot is taken only by a decision that starts a job (never by a host that merely registers or waits, so
        // another host is not shown `delayed` behind a slot nobody uses): decide on whether one is free, then take
        // it; if another host took the last one meanwhile, decide again without it.
        obs.slot_free = h.state.holds_slot() || self.slot_available(h.id);
        let learned_macs = if h.spec.boot_mac.is_none() {
            self.store.learned_macs(h.id).await?
        } else {
            Vec::new()
        };
        let view = HostView {
            name: h.name.clone(),
            spec: h.spec.clone(),
            learned_macs,
            requests: h.requests.clone(),
            state: h.state.clone(),
            power: match &obs.bmc {
                BmcObs::Power(p) => Some(self.settled_power(h.id, *p).unwrap_or(*p)),
                BmcObs::NotRead | BmcObs::Failed(_) => h.power,
            },
            boots: h.counters.boots,
            policy: self.config.policy,
        };
        let mut d = step(&view, &obs, now);
        if !h.state.holds_slot() && d.next.holds_slot() && !self.take_slot(h.id) {
            obs.slot_free = false;
            d = step(&view, &obs, now);
        }
        let result = self.apply(&h, &view, d, &obs, now, &mut calls).await;
        let holds = match &result {
            Ok(Some(st)) => st.holds_slot(),
            Ok(None) | Err(_) => h.state.holds_slot(),
        };
        // Give back a slot reserved for nothing, or one the host no longer holds.
        self.set_slot(h.id, holds);
        result.map(|_| ())
    }

    /// Reads the host's NIC MACs from its BMC's inventory and keeps those no other host has; says what it learned
    /// in the host's events. A failed read is only an event: the job that needs a MAC says what is missing.
    async fn learn_macs(&self, h: &Host, now: Ts) -> Result<(), StoreError> {
        let inventory = match self.bmc_for(h).await {
            Ok(b) => self.timed("inventory", b.inventory()).await,
            Err(f) => Err(f),
        };
        let message = match inventory {
            Ok(inv) => {
                let reported: Vec<MacAddr> = inv.nic_macs.iter().filter_map(|m| m.parse().ok()).collect();
                let kept = self.store.set_learned_macs(h.id, &reported).await?;
                let list = |macs: &[MacAddr]| macs.iter().map(ToString::to_string).collect::<Vec<_>>().join(", ");
                match (kept.is_empty(), reported.len() == kept.len()) {
                    (true, _) if reported.is_empty() => "the BMC reported no NIC MAC addresses".to_owned(),
                    (true, _) => format!(
                        "the BMC reported NICs {} but each is another host's MAC already",
                        list(&reported)
                    ),
                    (false, true) => format!(
                        "netboot recognises the host by the NICs its BMC reported: {}",
                        list(&kept)
                    ),
                    (false, false) => format!(
                        "netboot recognises the host by {} (of the NICs its BMC reported, the others are other hosts' MACs)",
                        list(&kept)
                    ),
                }
            }
            Err(f) => format!("reading the host's NICs from its BMC failed: {}", f.message),
        };
        info!(host = %h.name, "{message}");
        self.store
            .add_event(h.name.as_str(), now, "learned_macs", &message)
            .await
    }

    /// Builds boot `boot`'s agent ISO with the boot's token (taken from the store now, once), shelves it for kiln's
    /// HTTPS listener and has the BMC insert it. What is not configured or cannot be built is a failure that needs
    /// the operator (not transient).
    async fn insert_agent_media(&self, h: &Host, boot: u64, now: Ts) -> Result<Result<(), BmcFailure>, StoreError> {
        let fail = |message: String| BmcFailure {
            message,
            transient: false,
            auth: false,
        };
        let Some(media) = self.media.get() else {
            return Ok(Err(fail(format!(
                "{} asks for virtual-media boot, and this kiln has no [virtual_media] in its configuration (the \
                 agent kernel, initramfs and EFI loader from `kiln ramdisk build`)",
                h.spec.bmc.as_ref().map(|b| b.address.to_string()).unwrap_or_default()
            ))));
        };
        let network = match &h.spec.preprovisioning_network_data {
            Some(d) => match crate::vmedia::agent_network(d, h.spec.boot_mac.as_ref()) {
                Ok(n) => n,
                Err(e) => return Ok(Err(fail(format!("preprovisioning network data: {e}")))),
            },
            None => crate::vmedia::AgentNetwork::default(),
        };
        let token = match self.store.take_token(h.id, boot).await? {
            crate::store::TokenHandout::Token(t) => t,
            crate::store::TokenHandout::AlreadyTaken | crate::store::TokenHandout::None => {
                return Ok(Err(fail(format!(
                    "the agent token of boot {boot} was already issued (or never minted)"
                ))));
            }
        };
        let boot_media = crate::vmedia::BootMedia {
            host: h.name.as_str(),
            mac: h.spec.boot_mac,
            token: &token,
            network: &network,
        };
        let iso = match media.build_iso(&boot_media) {
            Ok(iso) => iso,
            Err(e) => return Ok(Err(fail(e))),
        };
        let mib = iso.len() as f64 / 1048576.0;
        let name = media.shelf.put(h.id, iso);
        let url = format!("{}/boot/media/{name}.iso", media.config.media_url);
        let r = match self.bmc_for(h).await {
            Ok(b) => self.timed("insert_media", b.insert_media(&url)).await,
            Err(f) => Err(f),
        };
        if r.is_err() {
            media.shelf.remove_host(h.id);
        } else {
            let net = if network.addresses.is_empty() {
                "DHCP".to_owned()
            } else {
                network.kernel_args().join(" ")
            };
            self.store
                .add_event(
                    h.name.as_str(),
                    now,
                    "virtual_media",
                    &format!("boot {boot}: the BMC took kiln's agent ISO ({mib:.1} MiB); the ramdisk's network: {net}"),
                )
                .await?;
        }
        Ok(r)
    }

    /// Performs the decision's actions and persists; returns the state now stored (None if the write lost).
    pub(super) async fn apply(
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
            .filter(|a| {
                matches!(
                    a,
                    Action::SetBoot { .. }
                        | Action::Power(_)
                        | Action::LearnMacs
                        | Action::InsertAgentMedia { .. }
                        | Action::EjectMedia
                        | Action::InsertMedia { .. }
                )
            })
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
                .commit_status_of(h, &st, &journal, now)
                .await?
                .map(|_| h.state.clone()));
        }
        // The last look before acting: a replica whose lease lapsed meanwhile (paused, cut off) touches nothing.
        if !d.actions.is_empty() && !self.may_act(h.id) {
            return Ok(None);
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
                    let kind = self.with_registry_protocol(kind);
                    self.store.enqueue_command(h.id, *boot, *id, &kind, now).await?;
                    self.command_queued(h.id);
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
                Action::InsertAgentMedia { boot } => {
                    *calls += 1;
                    self.insert_agent_media(h, *boot, now)
                        .await?
                        .map_err(|failure| ActionError {
                            failure,
                            what: "inserting the agent's virtual media".into(),
                        })
                }
                Action::InsertMedia { url } => {
                    *calls += 1;
                    match self.bmc_for(h).await {
                        Ok(b) => self.timed("insert_media", b.insert_media(url)).await,
                        Err(f) => Err(f),
                    }
                    .map_err(|failure| ActionError {
                        failure,
                        what: format!("inserting {url} as virtual media"),
                    })
                }
                Action::EjectMedia => {
                    *calls += 1;
                    if let Some(m) = self.media.get() {
                        m.shelf.remove_host(h.id);
                    }
                    match self.bmc_for(h).await {
                        Ok(b) => self.timed("eject_media", b.eject_media()).await,
                        Err(f) => Err(f),
                    }
                    .map_err(|failure| ActionError {
                        failure,
                        what: "ejecting the virtual media".into(),
                    })
                }
                Action::LearnMacs => {
                    *calls += 1;
                    self.learn_macs(h, now).await?;
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
        let Some(ended) = self.commit_status_of(h, &st, &journal, now).await? else {
            // The operator changed the host meanwhile; the actions are idempotent, so look again at once.
            self.notify.notify_one();
            return Ok(None);
        };
        self.recorded_change(h, &d.next, &d.reason, &ended, now);
        if h.state != d.next || h.power != power {
            let _ = self.changes.send(h.name.clone());
        }
        Ok(Some(d.next))
    }

    pub(super) fn status(
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
    pub(super) async fn action_failed(
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
                if self.commit_status_of(h, &st, &journal, now).await?.is_none() {
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
                let Some(ended) = self.commit_status_of(h, &st, &journal, now).await? else {
                    return Ok(None);
                };
                self.recorded_change(h, &next.next, &next.reason, &ended, now);
                let _ = self.changes.send(h.name.clone());
                Ok(Some(next.next))
            }
        }
    }

    /// The metrics and the one log line of a state change that was committed with `ended` records.
    pub(super) fn recorded_change(&self, h: &Host, next: &State, reason: &str, ended: &[PhaseRecord], now: Ts) {
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

impl Executor {
    /// A command pulling an `oci://` image from a registry this appliance lists as insecure speaks plain HTTP to it.
    fn with_registry_protocol(&self, kind: &CommandKind) -> CommandKind {
        let mut kind = kind.clone();
        if let CommandKind::WriteImage {
            image,
            registry: Some(access),
            ..
        } = &mut kind
        {
            let registry = image
                .url
                .strip_prefix("oci://")
                .and_then(|rest| rest.split('/').next())
                .unwrap_or_default();
            access.plain_http = self
                .config
                .insecure_registries
                .iter()
                .any(|r| r.eq_ignore_ascii_case(registry));
        }
        kind
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
