//! The store: hosts, inspection data, per-phase timing, events, agent tokens and the agent command queue, behind
//! the [`Store`] trait with SQLite and PostgreSQL implementations ([`sql`]). This module owns the record shapes and
//! the mapping of hosts to rows (sealing BMC passwords); it must not decide anything about hosts.

pub mod sql;

use async_trait::async_trait;
use kiln_bmc::{BootMode, PowerState, Secret};
use kiln_images::protocol::{CommandKind, Outcome};
use serde::{Deserialize, Serialize};

use crate::crypto::{CryptoError, SecretKey};
use crate::machine::State;
use crate::model::{BmcInfo, Counters, Host, HostSpec, Requests, StatusUpdate};
use crate::types::{HostName, MacAddr, Ts};

pub use sql::{PgStore, SqliteStore, connect};

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("database operation {op} failed")]
    Db {
        op: &'static str,
        #[source]
        source: sqlx::Error,
    },
    #[error("database migration failed")]
    Migrate(#[source] sqlx::migrate::MigrateError),
    #[error("host {host} already exists")]
    HostExists { host: String },
    #[error("boot MAC {mac} is already used by another host")]
    MacInUse { mac: String },
    #[error("BMC {address} already drives host {other}; two hosts must not drive one machine")]
    BmcInUse { address: String, other: String },
    #[error("host {host} not found")]
    HostNotFound { host: String },
    #[error("host {host} changed since it was read (kiln or another client wrote it); read it again and retry")]
    Changed { host: String },
    #[error("stored record {what} is corrupt")]
    Corrupt { what: String },
    #[error("cannot unseal the BMC password of host {host}")]
    Crypto {
        host: String,
        #[source]
        source: CryptoError,
    },
    #[error("unsupported database URL {url}: use sqlite:PATH or postgres://...")]
    BadUrl { url: String },
}

impl StoreError {
    /// Whether retrying the same call may succeed (connection trouble, lock contention).
    pub fn is_transient(&self) -> bool {
        match self {
            StoreError::Db { source, .. } => {
                matches!(
                    source,
                    sqlx::Error::Io(_)
                        | sqlx::Error::PoolTimedOut
                        | sqlx::Error::PoolClosed
                        | sqlx::Error::WorkerCrashed
                ) || source
                    .as_database_error()
                    .is_some_and(|e| e.message().contains("locked"))
            }
            StoreError::Changed { .. } => true,
            StoreError::Migrate(_)
            | StoreError::HostExists { .. }
            | StoreError::MacInUse { .. }
            | StoreError::BmcInUse { .. }
            | StoreError::HostNotFound { .. }
            | StoreError::Corrupt { .. }
            | StoreError::Crypto { .. }
            | StoreError::BadUrl { .. } => false,
        }
    }
}

/// One timing record: a state or sub-phase and when it started and ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub phase: String,
    pub started: Ts,
    pub ended: Option<Ts>,
    pub outcome: Option<String>,
}

/// Something that happened to a host, for people.
/// A host's event (`at`: milliseconds since the Unix epoch).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Event {
    pub id: i64,
    pub host: String,
    pub at: Ts,
    pub kind: String,
    pub message: String,
}

/// What [`Store::take_token`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenHandout {
    /// The token, handed out now and never again.
    Token(Secret),
    /// The boot's token was handed out before.
    AlreadyTaken,
    /// No token was minted for the boot.
    None,
}

/// A stored agent token (the token itself is never stored in the clear: its SHA-256, and until the first iPXE
/// script fetch of its boot, the token sealed with the data directory's key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRecord {
    pub host_id: i64,
    pub boot: u64,
    pub phase: String,
    pub revoked: bool,
}

/// Where a queued agent command is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CommandStatus {
    Queued,
    Sent,
    Succeeded,
    Failed,
}

impl CommandStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommandStatus::Queued => "queued",
            CommandStatus::Sent => "sent",
            CommandStatus::Succeeded => "succeeded",
            CommandStatus::Failed => "failed",
        }
    }
    fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => CommandStatus::Queued,
            "sent" => CommandStatus::Sent,
            "succeeded" => CommandStatus::Succeeded,
            "failed" => CommandStatus::Failed,
            _ => return None,
        })
    }
}

/// A command for a host's agent.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentCommand {
    pub id: u64,
    pub boot: u64,
    pub command: CommandKind,
    pub status: CommandStatus,
    pub result: Option<Outcome>,
}

/// What kiln knows about one agent boot.
#[derive(Debug, Clone, PartialEq)]
pub struct AgentBoot {
    pub first_heartbeat: Ts,
    pub last_heartbeat: Ts,
    pub progress: Option<serde_json::Value>,
}

/// What a status write records with it: timing records ended (phase, outcome) then started, and events (kind,
/// message), in this order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Journal {
    pub ended: Vec<(String, String)>,
    pub started: Vec<String>,
    pub events: Vec<(String, String)>,
}

impl Journal {
    pub fn is_empty(&self) -> bool {
        self.ended.is_empty() && self.started.is_empty() && self.events.is_empty()
    }
}

/// The lease a replica's write for a host is made under: the store refuses the write unless `replica` still holds
/// the host's lease at `epoch`, unexpired (a replica that was paused or cut off past its lease cannot act on a host
/// another replica took over).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub replica: String,
    pub epoch: u64,
}

/// A stream of [`Store::announce`]ments: (from replica, host).
pub type Announcements = futures::stream::BoxStream<'static, (String, Option<i64>)>;

/// Persistent state of the appliance. Every method is one short transaction.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Which backend this is (`sqlite`, `postgres`).
    fn backend(&self) -> &'static str;
    /// Enrolls one host, with an `enrolled` event saying `why` (e.g. "from BareMetalHost ns/name").
    async fn create_host(&self, name: &HostName, spec: &HostSpec, why: &str, now: Ts) -> Result<Host, StoreError> {
        let mut created = self
            .create_hosts(&[(name.clone(), spec.clone(), why.to_owned())], now)
            .await?;
        created
            .pop()
            .ok_or_else(|| StoreError::HostExists { host: name.to_string() })
    }
    /// Enrolls every host or, when one is refused (its name, boot MAC or BMC taken), none; each with its
    /// `enrolled` event (the third of each triple is its message), in the same transaction.
    async fn create_hosts(&self, hosts: &[(HostName, HostSpec, String)], now: Ts) -> Result<Vec<Host>, StoreError>;
    async fn host(&self, name: &HostName) -> Result<Option<Host>, StoreError>;
    async fn host_by_id(&self, id: i64) -> Result<Option<Host>, StoreError>;
    /// The host that boots by `mac`: its boot MAC, or one its BMC reported ([`Store::set_learned_macs`]).
    async fn host_by_mac(&self, mac: &MacAddr) -> Result<Option<Host>, StoreError>;
    /// The NIC MACs learned from a host's BMC, sorted.
    async fn learned_macs(&self, id: i64) -> Result<Vec<MacAddr>, StoreError>;
    /// Replaces the NIC MACs learned from a host's BMC; a MAC that is another host's (its boot MAC, or learned for
    /// it) is left out. Returns the MACs kept.
    async fn set_learned_macs(&self, id: i64, macs: &[MacAddr]) -> Result<Vec<MacAddr>, StoreError>;
    async fn hosts(&self) -> Result<Vec<Host>, StoreError>;
    /// The hosts running an agent job with neither a boot MAC nor a MAC learned from their BMC: those a discovery
    /// boot (an unknown MAC netbooting) may be bound to. Callers leave out hosts that boot by virtual media or whose
    /// job has not booted yet.
    async fn discovery_hosts(&self) -> Result<Vec<Host>, StoreError>;
    /// The ids of the hosts due for a look at `now` (next wake at or before it, or none set), in no particular order:
    /// what the executor asks on each pass (an index probe, so hosts at rest cost nothing until they are due). Ids
    /// only: with several replicas, each then reads the rows of its own share ([`Store::hosts_by_ids`]).
    async fn due_host_ids(&self, now: Ts) -> Result<Vec<i64>, StoreError>;
    /// The hosts with these ids (those that exist), in no particular order.
    async fn hosts_by_ids(&self, ids: &[i64]) -> Result<Vec<Host>, StoreError>;
    /// The id and state of every host whose stored state runs an agent job (the executor's job-slot count), without
    /// reading (or unsealing) anything else; a partial index holds exactly these rows.
    async fn job_states(&self) -> Result<Vec<(i64, State)>, StoreError>;
    /// The operator's write: spec and requests, only if the host is still at `generation` (the one the writer read;
    /// [`StoreError::Changed`] otherwise, so that a request is never lost to, or revived by, a write made in
    /// between); bumps the generation.
    async fn update_spec(
        &self,
        id: i64,
        generation: i64,
        spec: &HostSpec,
        requests: &Requests,
        now: Ts,
    ) -> Result<Host, StoreError>;
    /// The executor's write, only if the host is still at `generation`; returns whether it was written.
    async fn save_status(&self, id: i64, generation: i64, st: &StatusUpdate, now: Ts) -> Result<bool, StoreError> {
        Ok(self
            .commit_status(id, generation, st, &Journal::default(), None, now)
            .await?
            .is_some())
    }
    /// [`Store::save_status`] with the timing records and events of the change in the same transaction, so no reader
    /// sees a new state without its records; returns the records it ended (`None`: not written, the host moved on).
    /// With a `fence`, the write is also refused (`None`) unless the fence's replica still holds the host's lease
    /// at its epoch.
    async fn commit_status(
        &self,
        id: i64,
        generation: i64,
        st: &StatusUpdate,
        journal: &Journal,
        fence: Option<&Fence>,
        now: Ts,
    ) -> Result<Option<Vec<PhaseRecord>>, StoreError>;
    /// Registers replica `name`, or refreshes its heartbeat.
    async fn replica_heartbeat(&self, name: &str, now: Ts) -> Result<(), StoreError>;
    /// The replicas whose last heartbeat is at or after `since`, by name.
    async fn live_replicas(&self, since: Ts) -> Result<Vec<String>, StoreError>;
    /// Unregisters replica `name` and ends its leases at once (a graceful stop: the others take its hosts over
    /// without waiting for the leases to expire).
    async fn leave(&self, name: &str) -> Result<(), StoreError>;
    /// Every host's id (what the replicas divide).
    async fn host_ids(&self) -> Result<Vec<i64>, StoreError>;
    /// Takes host `id`'s lease for `replica` until `until`, if it is free (never taken, expired at `now`, or already
    /// this replica's); returns the epoch held, which is new whenever the holder changed or the lease had expired.
    /// `None`: another replica holds it (or the host is gone).
    async fn claim_lease(&self, id: i64, replica: &str, now: Ts, until: Ts) -> Result<Option<u64>, StoreError> {
        let claimed = self.claim_leases(&[id], replica, now, until).await?;
        Ok(claimed.first().map(|(_, epoch)| *epoch))
    }
    /// [`Store::claim_lease`] for many hosts in a few statements (a takeover claims a whole replica's share at
    /// once); returns the (host id, epoch) of those taken, in no particular order.
    async fn claim_leases(&self, ids: &[i64], replica: &str, now: Ts, until: Ts)
    -> Result<Vec<(i64, u64)>, StoreError>;
    /// Extends every lease `replica` holds unexpired at `now` to `until`; returns those leases' (host id, epoch).
    async fn renew_leases(&self, replica: &str, now: Ts, until: Ts) -> Result<Vec<(i64, u64)>, StoreError>;
    /// Ends `replica`'s lease of host `id` (another replica is to drive it).
    async fn release_lease(&self, id: i64, replica: &str) -> Result<(), StoreError>;
    /// Tells the other replicas sharing this store that host `host` (with `None`: some host) needs a look, from
    /// replica `from` (PostgreSQL `NOTIFY`; nothing on SQLite, which one process uses).
    async fn announce(&self, _from: &str, _host: Option<i64>) -> Result<(), StoreError> {
        Ok(())
    }
    /// The announcements of every replica as they arrive, as (from, host); `None` when this backend has none.
    async fn announcements(&self) -> Result<Option<Announcements>, StoreError> {
        Ok(None)
    }
    async fn delete_host(&self, id: i64) -> Result<(), StoreError>;

    async fn put_inspection(&self, host_id: i64, data: &serde_json::Value, now: Ts) -> Result<(), StoreError>;
    async fn inspection(&self, host_id: i64) -> Result<Option<(serde_json::Value, Ts)>, StoreError>;

    async fn start_phase(&self, host_id: i64, phase: &str, now: Ts) -> Result<(), StoreError>;
    /// Ends the open record of `phase` (no-op if none is open).
    async fn end_phase(
        &self,
        host_id: i64,
        phase: &str,
        now: Ts,
        outcome: &str,
    ) -> Result<Option<PhaseRecord>, StoreError>;
    async fn phases(&self, host_id: i64) -> Result<Vec<PhaseRecord>, StoreError>;
    /// The latest `limit` finished records of `phase` across all hosts, newest end first, with their host's name.
    async fn finished_phases(&self, phase: &str, limit: i64) -> Result<Vec<(String, PhaseRecord)>, StoreError>;

    async fn add_event(&self, host: &str, now: Ts, kind: &str, message: &str) -> Result<(), StoreError>;
    /// The latest `limit` events (of one host if given), oldest first.
    async fn events(&self, host: Option<&str>, limit: i64) -> Result<Vec<Event>, StoreError>;
    /// Deletes events older than `before`, and all but the newest `keep_per_host` of each host; returns how many.
    async fn prune_events(&self, before: Ts, keep_per_host: i64) -> Result<u64, StoreError>;

    /// Stores a token's hash for `boot` in `phase`; `handout`, if given, is kept sealed until [`Store::take_token`].
    async fn add_token(
        &self,
        hash: &str,
        host_id: i64,
        boot: u64,
        phase: &str,
        handout: Option<&Secret>,
        now: Ts,
    ) -> Result<(), StoreError>;
    /// Hands out the token of `boot` once: the first call gets it, later ones learn that it was already taken.
    async fn take_token(&self, host_id: i64, boot: u64) -> Result<TokenHandout, StoreError>;
    async fn token(&self, hash: &str) -> Result<Option<TokenRecord>, StoreError>;
    /// A token and its host, in one read (every agent request starts with it).
    async fn token_host(&self, hash: &str) -> Result<Option<(TokenRecord, Host)>, StoreError>;
    async fn revoke_tokens(&self, host_id: i64) -> Result<(), StoreError>;

    /// Records an agent's heartbeat; `true` when it is the boot's first.
    async fn heartbeat(&self, host_id: i64, boot: u64, now: Ts) -> Result<bool, StoreError>;
    /// Records an agent's progress report (a heartbeat too); `true` when its `phase` differs from the boot's
    /// previous report (or there was none). A report of the same phase is one statement.
    async fn record_progress(
        &self,
        host_id: i64,
        boot: u64,
        phase: &str,
        progress: &serde_json::Value,
        now: Ts,
    ) -> Result<bool, StoreError>;
    async fn agent_boot(&self, host_id: i64, boot: u64) -> Result<Option<AgentBoot>, StoreError>;

    /// Queues a command; idempotent on (`host_id`, `id`).
    async fn enqueue_command(
        &self,
        host_id: i64,
        boot: u64,
        id: u64,
        command: &CommandKind,
        now: Ts,
    ) -> Result<(), StoreError>;
    async fn command(&self, host_id: i64, id: u64) -> Result<Option<AgentCommand>, StoreError>;
    /// The oldest unfinished command of the boot.
    async fn pending_command(&self, host_id: i64, boot: u64) -> Result<Option<AgentCommand>, StoreError>;
    async fn set_command_status(
        &self,
        host_id: i64,
        id: u64,
        status: CommandStatus,
        result: Option<&Outcome>,
        now: Ts,
    ) -> Result<bool, StoreError>;
    /// Records the agent's result of command `id` of `boot` and its event (host name, kind, message) in one
    /// transaction, unless the command is already finished (a retried report) or is not one of that boot.
    async fn finish_command(
        &self,
        host_id: i64,
        boot: u64,
        id: u64,
        outcome: &Outcome,
        event: (&str, &str, &str),
        now: Ts,
    ) -> Result<Finish, StoreError>;
}

/// What [`Store::finish_command`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// The result and its event are recorded.
    Recorded,
    /// The command had its result already: nothing written.
    AlreadyFinished,
    /// The boot has no such command.
    NotFound,
}

/// A host row as plain text and integers: the shape both SQL dialects read and write.
#[derive(Debug, Clone, Default)]
pub(crate) struct HostRow {
    pub id: i64,
    pub name: String,
    pub labels: String,
    pub bmc_address: Option<String>,
    pub bmc_username: Option<String>,
    pub bmc_password: Option<String>,
    /// Per-host BMC TLS settings (JSON), `NULL` for the default.
    pub bmc_tls: Option<String>,
    /// What names the machine behind the BMC (unique: two hosts never drive one machine).
    pub bmc_identity: Option<String>,
    pub boot_mac: Option<String>,
    pub boot_mode: String,
    pub root_device_hints: String,
    pub image: Option<String>,
    pub user_data: Option<String>,
    pub network_data: Option<String>,
    /// Sealed like `network_data`.
    pub preprovisioning_network_data: Option<String>,
    /// Sealed JSON `{username, password}` for the registry of an `oci://` image.
    pub image_credentials: Option<String>,
    pub meta_data: Option<String>,
    pub options: String,
    pub requests: String,
    pub state_name: String,
    pub state: String,
    pub error_kind: Option<String>,
    pub error_message: Option<String>,
    pub power: Option<String>,
    pub counters: String,
    pub generation: i64,
    pub next_wake_ms: Option<i64>,
    pub created_ms: i64,
    pub updated_ms: i64,
}

fn to_json<T: Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("kiln's own types serialize")
}

fn from_json<T: for<'de> Deserialize<'de>>(s: &str, what: &str) -> Result<T, StoreError> {
    serde_json::from_str(s).map_err(|_| StoreError::Corrupt { what: what.to_owned() })
}

fn power_str(p: Option<PowerState>) -> Option<String> {
    p.map(|p| to_json(&p).trim_matches('"').to_owned())
}

impl HostRow {
    pub(crate) fn set_spec(&mut self, spec: &HostSpec, key: &SecretKey) -> Result<(), StoreError> {
        let crypto = |source| StoreError::Crypto {
            host: self.name.clone(),
            source,
        };
        self.labels = to_json(&spec.labels);
        self.bmc_address = spec.bmc.as_ref().map(|b| b.address.to_string());
        self.bmc_username = spec.bmc.as_ref().map(|b| b.username.clone());
        self.bmc_tls = spec
            .bmc
            .as_ref()
            .filter(|b| !b.tls.is_default())
            .map(|b| to_json(&b.tls));
        self.bmc_identity = spec.bmc.as_ref().map(|b| b.address.identity());
        self.bmc_password = match &spec.bmc {
            Some(b) => Some(key.seal(&b.password, &self.name).map_err(crypto)?),
            None => None,
        };
        self.boot_mac = spec.boot_mac.map(|m| m.to_string());
        self.boot_mode = to_json(&spec.boot_mode).trim_matches('"').to_owned();
        self.root_device_hints = to_json(&spec.root_device_hints);
        self.image = spec.image.as_ref().map(to_json);
        // What cloud-init gets (bootstrap tokens, keys, addresses) is sealed like the BMC password.
        let seal = |t: &str, what: &str| seal_text(key, t, &format!("{what}:{}", self.name));
        self.user_data = spec.user_data.as_deref().map(|t| seal(t, "user-data")).transpose()?;
        self.network_data = spec
            .network_data
            .as_ref()
            .map(|v| seal(&to_json(v), "network-data"))
            .transpose()?;
        self.meta_data = spec
            .meta_data
            .as_ref()
            .map(|v| seal(&to_json(v), "meta-data"))
            .transpose()?;
        self.preprovisioning_network_data = spec
            .preprovisioning_network_data
            .as_ref()
            .map(|v| seal(&to_json(v), "preprovisioning-network-data"))
            .transpose()?;
        self.image_credentials = spec
            .image_credentials
            .as_ref()
            .map(|c| {
                let exposed = serde_json::json!({ "username": c.username, "password": c.password.expose() });
                seal(&exposed.to_string(), "image-credentials")
            })
            .transpose()?;
        self.options = to_json(&spec.options);
        Ok(())
    }

    pub(crate) fn set_status(&mut self, st: &StatusUpdate) {
        self.state_name = st.state.name().to_owned();
        self.state = to_json(&st.state);
        (self.error_kind, self.error_message) = match &st.state {
            State::Error(e) => (Some(e.kind.clone()), Some(e.message.clone())),
            _ => (None, None),
        };
        self.requests = to_json(&st.requests);
        self.power = power_str(st.power);
        self.counters = to_json(&st.counters);
        self.next_wake_ms = st.next_wake.map(|t| t.0);
    }

    pub(crate) fn into_host(self, key: &SecretKey) -> Result<Host, StoreError> {
        let name: HostName = self.name.parse().map_err(|_| StoreError::Corrupt {
            what: format!("host name {:?}", self.name),
        })?;
        let corrupt = |what: &str| StoreError::Corrupt {
            what: format!("{what} of host {name}"),
        };
        let bmc = match (self.bmc_address, self.bmc_username, self.bmc_password) {
            (Some(a), Some(u), Some(p)) => Some(BmcInfo {
                address: a.parse().map_err(|_| corrupt("bmc address"))?,
                username: u,
                password: key.open(&p, name.as_str()).map_err(|source| StoreError::Crypto {
                    host: name.to_string(),
                    source,
                })?,
                tls: self
                    .bmc_tls
                    .as_deref()
                    .map(|t| from_json(t, "BMC TLS settings"))
                    .transpose()?
                    .unwrap_or_default(),
            }),
            _ => None,
        };
        let boot_mode: BootMode = from_json(&format!("\"{}\"", self.boot_mode), "boot mode")?;
        let spec = HostSpec {
            labels: from_json(&self.labels, "labels")?,
            bmc,
            boot_mac: self
                .boot_mac
                .map(|m| m.parse::<MacAddr>())
                .transpose()
                .map_err(|_| corrupt("boot mac"))?,
            boot_mode,
            root_device_hints: from_json(&self.root_device_hints, "root device hints")?,
            image: self.image.map(|s| from_json(&s, "image")).transpose()?,
            user_data: self
                .user_data
                .map(|s| open_text(key, &s, &format!("user-data:{name}")))
                .transpose()?,
            network_data: self
                .network_data
                .map(|s| {
                    open_text(key, &s, &format!("network-data:{name}")).and_then(|t| from_json(&t, "network data"))
                })
                .transpose()?,
            meta_data: self
                .meta_data
                .map(|s| open_text(key, &s, &format!("meta-data:{name}")).and_then(|t| from_json(&t, "meta data")))
                .transpose()?,
            preprovisioning_network_data: self
                .preprovisioning_network_data
                .map(|s| {
                    open_text(key, &s, &format!("preprovisioning-network-data:{name}"))
                        .and_then(|t| from_json(&t, "preprovisioning network data"))
                })
                .transpose()?,
            image_credentials: self
                .image_credentials
                .map(|s| {
                    open_text(key, &s, &format!("image-credentials:{name}"))
                        .and_then(|t| from_json(&t, "image credentials"))
                })
                .transpose()?,
            options: from_json(&self.options, "options")?,
        };
        let power = self
            .power
            .map(|p| from_json::<PowerState>(&format!("\"{p}\""), "power"))
            .transpose()?;
        Ok(Host {
            id: self.id,
            name,
            spec,
            requests: from_json(&self.requests, "requests")?,
            state: from_json(&self.state, "state")?,
            power,
            counters: from_json::<Counters>(&self.counters, "counters")?,
            generation: self.generation,
            next_wake: self.next_wake_ms.map(Ts),
            created: Ts(self.created_ms),
            updated: Ts(self.updated_ms),
        })
    }
}

pub(crate) fn command_from_parts(
    id: i64,
    boot: i64,
    command: &str,
    status: &str,
    result: Option<String>,
) -> Result<AgentCommand, StoreError> {
    Ok(AgentCommand {
        id: id as u64,
        boot: boot as u64,
        command: from_json(command, "agent command")?,
        status: CommandStatus::parse(status).ok_or(StoreError::Corrupt {
            what: "command status".into(),
        })?,
        result: result.map(|r| from_json(&r, "command result")).transpose()?,
    })
}

/// Seals `text` with the data directory's key, bound to `context` (`sealed:` + the key's `v1:` format).
pub(crate) fn seal_text(key: &SecretKey, text: &str, context: &str) -> Result<String, StoreError> {
    key.seal(&Secret::new(text), context)
        .map(|s| format!("sealed:{s}"))
        .map_err(|source| StoreError::Crypto {
            host: context.to_owned(),
            source,
        })
}

/// The text [`seal_text`] sealed; a value stored before sealing (no `sealed:` prefix) is read as it is.
pub(crate) fn open_text(key: &SecretKey, stored: &str, context: &str) -> Result<String, StoreError> {
    match stored.strip_prefix("sealed:") {
        Some(sealed) => key
            .open(sealed, context)
            .map(|s| s.expose().to_owned())
            .map_err(|source| StoreError::Crypto {
                host: context.to_owned(),
                source,
            }),
        None => Ok(stored.to_owned()),
    }
}

pub(crate) fn json_text<T: Serialize>(v: &T) -> String {
    to_json(v)
}

pub(crate) fn json_value(s: &str, what: &str) -> Result<serde_json::Value, StoreError> {
    from_json(s, what)
}
