//! The host state machine: a pure [`step`] from (host, observation, now) to a [`Decision`]. No async, no clock
//! read, no logging, no I/O: the executor gathers observations, performs the actions and persists the result.
//!
//! State names are Metal3's `status.provisioning.state` values (see DESIGN.md's lifecycle table).

use kiln_bmc::{BootTarget, PowerAction, PowerState};
use kiln_images::protocol::{CommandKind, Outcome};
use serde::{Deserialize, Serialize};

pub use crate::policy::{Policy, backoff_ms};

use crate::model::{BmcAddress, HostSpec, Requests};
use crate::types::{HostName, MacAddr, Ts};

mod jobs;
use jobs::{run_job, start_job};

/// An operation that can fail; names the Metal3 error type the host shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Operation {
    Registering,
    Inspecting,
    Preparing,
    Provisioning,
    Deprovisioning,
}

impl Operation {
    /// Metal3's `errorType` spelling.
    pub fn error_type(self) -> &'static str {
        match self {
            Operation::Registering => "registration error",
            Operation::Inspecting => "inspection error",
            Operation::Preparing => "preparation error",
            Operation::Provisioning => "provisioning error",
            Operation::Deprovisioning => "deprovisioning error",
        }
    }
}

/// What went wrong, for people and for retry decisions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostError {
    pub operation: Operation,
    /// Machine-readable cause: `bmc_unreachable`, `bmc_auth`, `boot_timeout`, `command_timeout`, `agent_lost`, or
    /// the agent's own failure kind (`checksum_mismatch`, ...).
    pub kind: String,
    /// What happened and what to check, in words.
    pub message: String,
    /// Automatic retries already made of this operation.
    pub retries: u32,
    pub at: Ts,
    /// When the machine retries by itself; `None` once retries are exhausted (an operator must act).
    pub retry_at: Option<Ts>,
}

/// Where an agent-driven job (inspect, prepare, provision, deprovision) is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum JobPhase {
    /// Waiting for a concurrency slot (shown as `delayed`).
    Delayed,
    /// Boot-once network boot set and power-on sent; waiting for the agent's first heartbeat.
    Booting,
    /// A command is queued for (or running on) the agent.
    Running { command: u64 },
}

/// An agent-driven job: which boot of the host it uses and since when it is in its phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Job {
    #[serde(flatten)]
    pub phase: JobPhase,
    /// The agent boot this job uses (tokens and commands are scoped to it).
    pub boot: u64,
    pub started: Ts,
    pub phase_since: Ts,
    /// Automatic retries already made of this operation.
    pub retries: u32,
}

/// The host's state; each carries its data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum State {
    Unmanaged,
    Registering {
        since: Ts,
        attempt: u32,
        /// The BMC was asked for the host's NIC MACs (a host enrolled without a boot MAC).
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        macs_asked: bool,
    },
    Inspecting(Job),
    Preparing(Job),
    Available {
        since: Ts,
    },
    Provisioning(Job),
    Provisioned {
        since: Ts,
        image_url: String,
    },
    Deprovisioning(Job),
    ExternallyProvisioned {
        since: Ts,
    },
    Deleting {
        since: Ts,
    },
    Error(HostError),
}

impl State {
    /// Metal3's state name.
    pub fn name(&self) -> &'static str {
        match self {
            State::Unmanaged => "unmanaged",
            State::Registering { .. } => "registering",
            State::Inspecting(_) => "inspecting",
            State::Preparing(_) => "preparing",
            State::Available { .. } => "available",
            State::Provisioning(_) => "provisioning",
            State::Provisioned { .. } => "provisioned",
            State::Deprovisioning(_) => "deprovisioning",
            State::ExternallyProvisioned { .. } => "externally provisioned",
            State::Deleting { .. } => "deleting",
            State::Error(_) => "error",
        }
    }

    /// Registration from its start (first attempt, the BMC not yet asked for NICs).
    pub fn registering(now: Ts) -> State {
        State::Registering {
            since: now,
            attempt: 0,
            macs_asked: false,
        }
    }

    /// The agent job, for states that run one.
    pub fn job(&self) -> Option<&Job> {
        match self {
            State::Inspecting(j) | State::Preparing(j) | State::Provisioning(j) | State::Deprovisioning(j) => Some(j),
            State::Unmanaged
            | State::Registering { .. }
            | State::Available { .. }
            | State::Provisioned { .. }
            | State::ExternallyProvisioned { .. }
            | State::Deleting { .. }
            | State::Error(_) => None,
        }
    }

    /// The sub-phase name used for timing records (`provisioning.booting`), if the state has sub-phases.
    pub fn sub_phase(&self) -> Option<String> {
        self.job().map(|j| {
            let p = match j.phase {
                JobPhase::Delayed => "delayed",
                JobPhase::Booting => "booting",
                JobPhase::Running { .. } => "running",
            };
            format!("{}.{p}", self.name())
        })
    }

    /// The operational status shown beside the state: `delayed`, `error` or `ok`.
    pub fn operational_status(&self) -> &'static str {
        match self {
            State::Error(_) => "error",
            s if s.job().is_some_and(|j| j.phase == JobPhase::Delayed) => "delayed",
            _ => "ok",
        }
    }

    /// Whether this state holds one of the limited concurrent-job slots.
    pub fn holds_slot(&self) -> bool {
        self.job().is_some_and(|j| j.phase != JobPhase::Delayed)
    }
}

/// A failed BMC call as the executor saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BmcFailure {
    pub message: String,
    pub transient: bool,
    /// The BMC refused the credentials.
    pub auth: bool,
}

/// What the executor read from the BMC before this step.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum BmcObs {
    /// Not read this time (rate limit, or not needed); use the host's last known power.
    #[default]
    NotRead,
    Power(PowerState),
    Failed(BmcFailure),
}

/// What the executor read about the current boot's agent.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct AgentObs {
    /// Last heartbeat of the agent of the current job's boot.
    pub last_heartbeat: Option<Ts>,
    /// The outcome of the command the job is waiting for, once reported.
    pub result: Option<Outcome>,
}

/// Everything observed for one step.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Observed {
    pub bmc: BmcObs,
    pub agent: AgentObs,
    /// A concurrency slot is free for this host to start an agent job.
    pub slot_free: bool,
    /// A uniform random number in [0, 1) for backoff jitter (supplied so `step` stays pure).
    pub jitter: f64,
}

/// The host as the machine sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct HostView {
    pub name: HostName,
    pub spec: HostSpec,
    /// NIC MACs learned from the BMC (hosts enrolled without a boot MAC); netboot finds the host by any of them.
    pub learned_macs: Vec<MacAddr>,
    pub requests: Requests,
    pub state: State,
    /// Last known power state.
    pub power: Option<PowerState>,
    /// Agent boots so far.
    pub boots: u64,
    pub policy: Policy,
}

impl HostView {
    /// Whether the agent boots from the BMC's virtual media (the address scheme says so, as with Metal3) rather
    /// than from the network.
    pub fn by_virtual_media(&self) -> bool {
        self.spec
            .bmc
            .as_ref()
            .is_some_and(|b| b.address.boot_method() == kiln_bmc::BootMethod::VirtualMedia)
    }

    /// Whether kiln can recognise this host's network boot only by a discovery boot (an agent reporting this host's
    /// BMC address): no boot MAC, none learned from the BMC, and not booted by virtual media.
    pub fn awaits_discovery(&self) -> bool {
        self.spec.boot_mac.is_none() && self.learned_macs.is_empty() && !self.by_virtual_media()
    }

    /// What ends the agent boot under way (if any): its token is revoked and, with virtual media, the ISO ejected.
    pub fn end_boot(&self) -> Vec<Action> {
        let mut actions = vec![Action::RevokeTokens];
        if self.by_virtual_media() && self.state.job().is_some_and(|j| j.phase != JobPhase::Delayed) {
            actions.push(Action::EjectMedia);
        }
        actions
    }
}

/// Something the executor must do, in order, before committing the next state.
// Actions live for one step and come a handful at a time; boxing the command would only add noise.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    SetBoot {
        target: BootTarget,
        once: bool,
    },
    Power(PowerAction),
    /// Queue a command for the agent of `boot`.
    Enqueue {
        boot: u64,
        id: u64,
        kind: CommandKind,
    },
    /// Invalidate every agent token of the host.
    RevokeTokens,
    /// Mint the one agent token of boot `boot` in state `phase`, to be handed out by the first iPXE script fetch of
    /// that boot (never by a DHCP or later script lookup).
    MintToken {
        boot: u64,
        phase: &'static str,
    },
    /// Build boot `boot`'s agent ISO (it carries the boot's token, taken from the store now) and insert it as the
    /// host's virtual CD.
    InsertAgentMedia {
        boot: u64,
    },
    /// Eject the host's virtual media and stop serving its ISO.
    EjectMedia,
    /// Insert the ISO at `url` (a live-iso image) as the host's virtual CD.
    InsertMedia {
        url: String,
    },
    /// Read the host's NIC MACs from its BMC's inventory and keep them as the MACs netboot knows the host by (a
    /// failed read is an event, not an error: the job that needs a MAC says what is missing).
    LearnMacs,
    ClearPowerRequest,
    ClearInspectRequest,
    ClearRetryRequest,
    /// Remove the host from the store.
    Forget,
}

/// The result of a step.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    pub next: State,
    pub actions: Vec<Action>,
    /// When to look at the host again.
    pub wake: Ts,
    /// Why, in a few words (logged by the executor on a state change).
    pub reason: String,
}

/// The command id of a job's boot (one command per boot).
pub fn command_id(boot: u64) -> u64 {
    boot
}

fn decide(next: State, actions: Vec<Action>, wake: Ts, reason: impl Into<String>) -> Decision {
    Decision {
        next,
        actions,
        wake,
        reason: reason.into(),
    }
}

/// Which agent job a state runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum JobKind {
    Inspect,
    Prepare,
    Provision,
    Deprovision,
}

impl JobKind {
    fn state(self, job: Job) -> State {
        match self {
            JobKind::Inspect => State::Inspecting(job),
            JobKind::Prepare => State::Preparing(job),
            JobKind::Provision => State::Provisioning(job),
            JobKind::Deprovision => State::Deprovisioning(job),
        }
    }
    fn operation(self) -> Operation {
        match self {
            JobKind::Inspect => Operation::Inspecting,
            JobKind::Prepare => Operation::Preparing,
            JobKind::Provision => Operation::Provisioning,
            JobKind::Deprovision => Operation::Deprovisioning,
        }
    }
}

/// Decides what to do with a host. Pure: same inputs, same decision.
pub fn step(host: &HostView, obs: &Observed, now: Ts) -> Decision {
    let idle = now.plus_secs(host.policy.idle_poll_secs);
    if host.requests.delete {
        return match &host.state {
            State::Deleting { .. } => decide(host.state.clone(), vec![Action::Forget], now, "deleted"),
            _ => {
                let mut actions = host.end_boot();
                if host.spec.bmc.is_some() && !matches!(host.state, State::ExternallyProvisioned { .. }) {
                    actions.push(Action::Power(PowerAction::Off));
                }
                decide(State::Deleting { since: now }, actions, now, "delete requested")
            }
        };
    }
    if host.requests.retry && !matches!(&host.state, State::Error(e) if e.operation == Operation::Provisioning) {
        // Only a failed provision is retried on request; by now the host has moved on (or never failed).
        return decide(
            host.state.clone(),
            vec![Action::ClearRetryRequest],
            now,
            "retry request dropped: no failed provision to retry",
        );
    }
    match &host.state {
        State::Unmanaged => match host.spec.bmc {
            Some(_) => decide(State::registering(now), vec![], now, "BMC credentials set"),
            None => decide(State::Unmanaged, vec![], idle, "no BMC address yet"),
        },
        State::Registering {
            since,
            attempt,
            macs_asked,
        } => registering(host, obs, now, *since, *attempt, *macs_asked),
        State::Inspecting(job) => run_job(host, obs, now, JobKind::Inspect, *job),
        State::Preparing(job) => run_job(host, obs, now, JobKind::Prepare, *job),
        State::Provisioning(job) => {
            if host.spec.image.is_none() {
                return start_job(
                    host,
                    obs,
                    now,
                    JobKind::Deprovision,
                    0,
                    "image removed during provisioning",
                );
            }
            run_job(host, obs, now, JobKind::Provision, *job)
        }
        State::Deprovisioning(job) => run_job(host, obs, now, JobKind::Deprovision, *job),
        State::Available { .. } => {
            if host.spec.bmc.is_none() {
                return decide(State::Unmanaged, vec![], now, "BMC credentials removed");
            }
            if host.spec.options.externally_provisioned {
                return decide(State::ExternallyProvisioned { since: now }, vec![], now, "adopted");
            }
            if host.requests.inspect {
                let mut d = start_job(host, obs, now, JobKind::Inspect, 0, "inspection requested");
                d.actions.push(Action::ClearInspectRequest);
                return d;
            }
            if host.spec.image.is_some() {
                return start_job(host, obs, now, JobKind::Provision, 0, "image set");
            }
            settled(host, now, "idle")
        }
        State::Provisioned { image_url, .. } => match &host.spec.image {
            None => start_job(host, obs, now, JobKind::Deprovision, 0, "image removed"),
            Some(img) if img.url != *image_url => start_job(host, obs, now, JobKind::Deprovision, 0, "image changed"),
            Some(_) => settled(host, now, "running its OS"),
        },
        State::ExternallyProvisioned { .. } => {
            if !host.spec.options.externally_provisioned {
                return start_job(
                    host,
                    obs,
                    now,
                    JobKind::Deprovision,
                    0,
                    "no longer externally provisioned",
                );
            }
            settled(host, now, "externally provisioned")
        }
        State::Deleting { .. } => decide(host.state.clone(), vec![Action::Forget], now, "deleted"),
        State::Error(err) => in_error(host, obs, now, err),
    }
}

/// What the executor does after a BMC action of a decision failed.
#[derive(Debug, Clone, PartialEq)]
pub enum AfterActionFailure {
    /// Keep the host where it was and try the decision again at `wake` (the failure is transient and attempts
    /// remain); `message` says which attempt failed.
    Retry { wake: Ts, message: String },
    /// Give up: commit this decision (an error state naming the operation, or the request dropped).
    GiveUp(Decision),
}

/// Decides what follows a failed BMC action (`what` failed with `f`) taken for `attempted`; `attempts` counts the
/// consecutive failures of it so far, this one included (persisted in the host's counters, so restarts do not reset
/// it). Transient failures are retried with backoff up to the policy's `max_retries`; then, or at once for
/// credential and permanent failures, an operation in progress fails, and a request on a settled host is dropped.
pub fn after_action_failure(
    host: &HostView,
    attempted: &State,
    f: &BmcFailure,
    what: &str,
    attempts: u32,
    now: Ts,
    jitter: f64,
) -> AfterActionFailure {
    let p = &host.policy;
    let message = format!("{what} failed: {}", f.message);
    if f.transient && !f.auth && attempts <= p.max_retries {
        return AfterActionFailure::Retry {
            wake: now.plus_ms(backoff_ms(p, attempts.saturating_sub(1), jitter)),
            message: format!("{message} (attempt {attempts} of {}; retrying)", p.max_retries + 1),
        };
    }
    let kind = if f.auth { "bmc_auth" } else { "bmc_unreachable" };
    let hint = if f.auth {
        "the BMC refused the credentials"
    } else {
        "check that the BMC is reachable and healthy"
    };
    let retries = attempted.job().map_or(0, |j| j.retries);
    let op = match attempted {
        State::Registering { .. } => Some(Operation::Registering),
        State::Inspecting(_) => Some(Operation::Inspecting),
        State::Preparing(_) => Some(Operation::Preparing),
        State::Provisioning(_) => Some(Operation::Provisioning),
        State::Deprovisioning(_) => Some(Operation::Deprovisioning),
        State::Unmanaged
        | State::Available { .. }
        | State::Provisioned { .. }
        | State::ExternallyProvisioned { .. }
        | State::Deleting { .. }
        | State::Error(_) => None,
    };
    let mut d = match (op, attempted) {
        (Some(op), _) => error(host, now, op, kind, format!("{message} ({hint})"), retries, jitter),
        (None, State::Deleting { .. }) => decide(attempted.clone(), vec![], now, "power-off failed; deleting anyway"),
        (None, _) => decide(
            host.state.clone(),
            vec![],
            now.plus_secs(p.idle_poll_secs),
            format!("{message} ({hint}); request dropped"),
        ),
    };
    // The decision is committed as is; its actions are not carried out (the BMC just failed them). A power request
    // that could not be carried out is dropped, and says so in the reason.
    d.actions = vec![Action::ClearPowerRequest];
    AfterActionFailure::GiveUp(d)
}

/// A host at rest (available, provisioned, externally provisioned): an operator's power request first, then the
/// power the host's `online` setting asks for (Metal3's `spec.online`: on keeps the host on, off keeps it off).
fn settled(host: &HostView, now: Ts, reason: &str) -> Decision {
    if host.requests.power.is_none() {
        let act = match (host.spec.options.online, host.power) {
            (Some(true), Some(PowerState::Off)) => Some(PowerAction::On),
            (Some(false), Some(PowerState::On)) => Some(PowerAction::Off),
            _ => None,
        };
        if let Some(a) = act {
            return decide(
                host.state.clone(),
                vec![Action::Power(a)],
                now.plus_secs(host.policy.busy_poll_secs),
                format!("online is {}: power {a:?}", host.spec.options.online == Some(true)),
            );
        }
    }
    idle_with_power(host, host.state.clone(), now, reason)
}

fn idle_with_power(host: &HostView, state: State, now: Ts, reason: &str) -> Decision {
    let idle = now.plus_secs(host.policy.idle_poll_secs);
    match host.requests.power {
        Some(a) => decide(
            state,
            vec![Action::Power(a), Action::ClearPowerRequest],
            now,
            format!("power {a:?} requested"),
        ),
        None => decide(state, vec![], idle, reason),
    }
}

/// Whether kiln must learn the host's NIC MACs from its BMC before it can netboot it: no boot MAC was given (Metal3
/// allows that), none was learned yet, and the BMC can tell (Redfish's EthernetInterfaces; IPMI cannot).
fn needs_macs_from_bmc(host: &HostView) -> bool {
    host.spec.boot_mac.is_none()
        && host.learned_macs.is_empty()
        && !host.spec.options.externally_provisioned
        // Virtual media carries the token on the ISO: no MAC is needed to find the booting host.
        && !host.by_virtual_media()
        && host
            .spec
            .bmc
            .as_ref()
            .is_some_and(|b| matches!(b.address, BmcAddress::Redfish(_) | BmcAddress::Fake(_)))
}

fn registering(host: &HostView, obs: &Observed, now: Ts, since: Ts, attempt: u32, macs_asked: bool) -> Decision {
    let p = &host.policy;
    match &obs.bmc {
        BmcObs::Power(_) if !macs_asked && needs_macs_from_bmc(host) => decide(
            State::Registering {
                since,
                attempt,
                macs_asked: true,
            },
            vec![Action::LearnMacs],
            now,
            "registered; no boot MAC given: asking the BMC for the host's NIC MACs",
        ),
        BmcObs::Power(_) => {
            if host.spec.options.externally_provisioned {
                decide(
                    State::ExternallyProvisioned { since: now },
                    vec![],
                    now,
                    "registered, externally provisioned",
                )
            } else if let (true, Some(img)) = (host.spec.options.adopt_provisioned, &host.spec.image) {
                decide(
                    State::Provisioned {
                        since: now,
                        image_url: img.url.clone(),
                    },
                    vec![],
                    now,
                    "registered, adopted as provisioned: it already runs its image",
                )
            } else if host.spec.options.inspect {
                start_job(host, obs, now, JobKind::Inspect, 0, "registered")
            } else {
                decide(
                    State::Available { since: now },
                    vec![],
                    now,
                    "registered, inspection disabled",
                )
            }
        }
        BmcObs::Failed(f) if f.transient && !f.auth && attempt < p.max_retries => {
            let wake = now.plus_ms(backoff_ms(p, attempt, obs.jitter));
            decide(
                State::Registering {
                    since,
                    attempt: attempt + 1,
                    macs_asked,
                },
                vec![],
                wake,
                "BMC not reachable yet, retrying",
            )
        }
        BmcObs::Failed(f) => {
            let (kind, hint) = if f.auth {
                (
                    "bmc_auth",
                    "the BMC refused the credentials: check the username and password",
                )
            } else {
                (
                    "bmc_unreachable",
                    "check the BMC address, that it is reachable from kiln, and its TLS settings",
                )
            };
            let message = format!("{hint} ({})", f.message);
            error(host, now, Operation::Registering, kind, message, attempt, obs.jitter)
        }
        BmcObs::NotRead => decide(
            State::Registering {
                since,
                attempt,
                macs_asked,
            },
            vec![],
            now.plus_secs(p.busy_poll_secs),
            "waiting to read the BMC",
        ),
    }
}

fn error(
    host: &HostView,
    now: Ts,
    operation: Operation,
    kind: &str,
    message: String,
    retries: u32,
    jitter: f64,
) -> Decision {
    let p = &host.policy;
    let retry_at = (retries < p.max_retries).then(|| now.plus_ms(backoff_ms(p, retries, jitter)));
    let wake = retry_at.unwrap_or(now.plus_secs(p.idle_poll_secs));
    let mut actions = host.end_boot();
    if matches!(
        operation,
        Operation::Inspecting | Operation::Preparing | Operation::Deprovisioning
    ) {
        // Only kiln's agent (or nothing: a host that never netbooted) runs there, never a user's OS, so there is
        // nothing to shut down gracefully; a graceful off of a host stuck in its firmware would wait out the BMC
        // driver's whole graceful-off timeout first.
        actions.push(Action::Power(PowerAction::ForceOff));
    }
    let next = State::Error(HostError {
        operation,
        kind: kind.to_owned(),
        message: message.clone(),
        retries,
        at: now,
        retry_at,
    });
    decide(next, actions, wake, message)
}

fn in_error(host: &HostView, obs: &Observed, now: Ts, err: &HostError) -> Decision {
    let idle = now.plus_secs(host.policy.idle_poll_secs);
    let retries = err.retries + 1;
    // Operator intent first: a deprovision clears a failed provision, an image set retries it.
    match err.operation {
        Operation::Provisioning if host.spec.image.is_none() => {
            return start_job(
                host,
                obs,
                now,
                JobKind::Deprovision,
                0,
                "image removed after a failed provision",
            );
        }
        Operation::Registering
        | Operation::Inspecting
        | Operation::Preparing
        | Operation::Provisioning
        | Operation::Deprovisioning => {}
    }
    if host.requests.retry && host.spec.image.is_some() {
        // Only reached for a failed provision (see `step`): a fresh series of retries with the current spec.
        let mut d = start_job(host, obs, now, JobKind::Provision, 0, "provision requested again");
        d.actions.push(Action::ClearRetryRequest);
        return d;
    }
    if host.requests.inspect && err.operation != Operation::Registering {
        let mut d = start_job(host, obs, now, JobKind::Inspect, 0, "inspection requested");
        d.actions.push(Action::ClearInspectRequest);
        return d;
    }
    match err.retry_at {
        Some(at) if now >= at => match err.operation {
            Operation::Registering => decide(State::registering(now), vec![], now, "retrying registration"),
            Operation::Inspecting => start_job(host, obs, now, JobKind::Inspect, retries, "retrying inspection"),
            Operation::Preparing => start_job(host, obs, now, JobKind::Prepare, retries, "retrying preparation"),
            Operation::Provisioning => start_job(host, obs, now, JobKind::Provision, retries, "retrying provisioning"),
            Operation::Deprovisioning => {
                start_job(host, obs, now, JobKind::Deprovision, retries, "retrying deprovisioning")
            }
        },
        Some(at) => decide(host.state.clone(), vec![], at, "waiting to retry"),
        None => idle_with_power(
            host,
            host.state.clone(),
            now,
            "retries exhausted; waiting for the operator",
        )
        .with_wake_at_most(idle),
    }
}

impl Decision {
    fn with_wake_at_most(mut self, at: Ts) -> Self {
        self.wake = self.wake.min(at);
        self
    }
}

#[cfg(test)]
mod tests;
