//! The agent's main loop and command executor: heartbeat, take the next command, run it in a task while
//! heartbeating `busy_with`, stream progress, post the result (with the log tail on failure), then reboot or power
//! off if asked. A command id already finished is never run twice; its stored result is posted again instead.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use kiln_images::protocol::{Command, CommandKind, CommandResult, Heartbeat, Outcome, Progress};
use serde_json::json;

use crate::api::ApiClient;
use crate::console::LogTail;
use crate::erase::{self, Counter};
use crate::error::{AgentError, chain};
use crate::inspect;
use crate::power::PowerAction;

/// How often a running command reports progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(2);

/// What the agent needs to run commands.
#[derive(Debug)]
pub struct Agent {
    pub api: ApiClient,
    /// `/` in the ramdisk; where `/proc`, `/sys` and `/dev` are looked up.
    pub root: PathBuf,
    pub log: LogTail,
}

/// A finished command: its outcome and what to do with the machine afterwards.
#[derive(Debug)]
pub struct Finished {
    pub outcome: Outcome,
    pub then: Option<PowerAction>,
}

fn failed(e: &AgentError, log: &LogTail) -> Outcome {
    Outcome::Failed {
        kind: e.kind().to_string(),
        message: format!("{}\n--- agent log tail ---\n{}", chain(e), log.tail()),
    }
}

impl Agent {
    /// Runs one command to completion (progress is posted along the way).
    pub async fn execute(self: &Arc<Self>, cmd: &Command) -> Finished {
        let id = cmd.id;
        let span = tracing::info_span!("command", id, kind = kind_name(&cmd.kind));
        let _e = span.enter();
        self.log.marker(&format!("command {id} {}", kind_name(&cmd.kind)));
        let r: Result<(serde_json::Value, Option<PowerAction>), AgentError> = match &cmd.kind {
            CommandKind::Inspect => self.inspect().await.map(|d| (d, None)),
            CommandKind::WriteImage {
                image,
                root_device_hints,
                config_drive,
                registry,
            } => crate::write::write_image(
                self,
                id,
                image,
                root_device_hints,
                config_drive.as_ref(),
                registry.as_ref(),
            )
            .await
            .map(|d| (d, None)),
            CommandKind::EraseMetadata => self.erase(id, false).await.map(|d| (d, None)),
            CommandKind::EraseDisks => self.erase(id, true).await.map(|d| (d, None)),
            CommandKind::Reboot => Ok((json!({}), Some(PowerAction::Reboot))),
            CommandKind::PowerOff => Ok((json!({}), Some(PowerAction::PowerOff))),
        };
        match r {
            Ok((detail, then)) => {
                self.log.marker(&format!("command {id} succeeded"));
                Finished {
                    outcome: Outcome::Succeeded { detail },
                    then,
                }
            }
            Err(e) => {
                tracing::error!(error = %chain(&e), "command failed");
                self.log.marker(&format!("command {id} failed {}", e.kind()));
                Finished {
                    outcome: failed(&e, &self.log),
                    then: None,
                }
            }
        }
    }

    async fn inspect(self: &Arc<Self>) -> Result<serde_json::Value, AgentError> {
        let root = self.root.clone();
        let inv = tokio::task::spawn_blocking(move || inspect::inventory(&root, &inspect::local_ipv4()))
            .await
            .map_err(|e| AgentError::Read {
                path: self.root.join("sys"),
                source: std::io::Error::other(e),
            })?;
        tracing::info!(
            cpus = inv.cpu.count,
            memory_mib = inv.memory_mib,
            disks = inv.disks.len(),
            nics = inv.nics.len(),
            "inventory collected"
        );
        self.api.inventory(&inv).await?;
        Ok(json!({ "disks": inv.disks.len(), "nics": inv.nics.len() }))
    }

    /// Erases metadata (`whole == false`) or whole disks on every non-removable disk, reporting progress.
    async fn erase(self: &Arc<Self>, id: u64, whole: bool) -> Result<serde_json::Value, AgentError> {
        let disks: Vec<_> = inspect::read_disks(&self.root)
            .into_iter()
            .filter(|d| !d.removable)
            .collect();
        let counter = Arc::new(Counter::default());
        let root = self.root.clone();
        let c = counter.clone();
        let work = tokio::task::spawn_blocking(move || -> Result<Vec<serde_json::Value>, AgentError> {
            let mut out = Vec::new();
            for d in &disks {
                let short = d.name.trim_start_matches("/dev/");
                let path = root.join("dev").join(short);
                if whole {
                    let m = erase::erase_disk(&path, &c)?;
                    tracing::info!(disk = %d.name, method = ?m, "disk erased");
                    out.push(json!({ "disk": d.name, "method": format!("{m:?}").to_lowercase() }));
                } else {
                    let parts = erase::read_partitions(&root, short);
                    let n = erase::erase_metadata(&path, &parts, &c)?;
                    tracing::info!(disk = %d.name, partitions = parts.len(), bytes = n, "metadata erased");
                    out.push(json!({ "disk": d.name, "bytes_zeroed": n }));
                }
            }
            Ok(out)
        });
        let disks = self
            .with_progress(id, "erasing", work, move || {
                (
                    counter.done.load(Ordering::Relaxed),
                    counter.total.load(Ordering::Relaxed),
                )
            })
            .await
            .map_err(|e| AgentError::EraseDisk {
                disk: "*".into(),
                offset: 0,
                source: std::io::Error::other(e),
            })??;
        Ok(json!({ "disks": disks }))
    }

    /// Awaits `work` while posting `Progress { phase, bytes }` from `sample() -> (done, total)` every few seconds.
    pub async fn with_progress<T>(
        &self,
        id: u64,
        phase: &str,
        work: impl Future<Output = T>,
        sample: impl Fn() -> (u64, u64),
    ) -> T {
        tokio::pin!(work);
        let mut tick = tokio::time::interval(PROGRESS_EVERY);
        tick.tick().await;
        loop {
            tokio::select! {
                r = &mut work => {
                    // The final count, so that even a short command reports once.
                    self.post_progress(id, phase, sample()).await;
                    return r;
                }
                _ = tick.tick() => self.post_progress(id, phase, sample()).await,
            }
        }
    }

    async fn post_progress(&self, id: u64, phase: &str, (done, total): (u64, u64)) {
        let p = Progress {
            command_id: id,
            phase: phase.to_string(),
            bytes_read: done,
            bytes_written: done,
            total_bytes: (total > 0).then_some(total),
        };
        if let Err(e) = self.api.progress(&p).await {
            tracing::debug!(error = %chain(&e), "progress not delivered");
        }
    }
}

fn kind_name(k: &CommandKind) -> &'static str {
    match k {
        CommandKind::Inspect => "inspect",
        CommandKind::WriteImage { .. } => "write_image",
        CommandKind::EraseMetadata => "erase_metadata",
        CommandKind::EraseDisks => "erase_disks",
        CommandKind::Reboot => "reboot",
        CommandKind::PowerOff => "power_off",
    }
}

/// Heartbeats forever, running the commands the appliance hands out. Returns only on a permanent API failure or
/// when a reboot/power-off could not be performed.
///
/// # Errors
/// The permanent [`AgentError`] that stopped the loop.
pub async fn run(agent: Arc<Agent>) -> Result<(), AgentError> {
    let version = env!("CARGO_PKG_VERSION").to_string();
    let mut done: HashMap<u64, CommandResult> = HashMap::new();
    agent.log.marker("heartbeat");
    let mut first = true;
    // Until the appliance says otherwise, the interval of kiln's default configuration.
    let mut interval = Duration::from_secs(5);
    loop {
        let asked = std::time::Instant::now();
        let reply = agent
            .api
            .heartbeat(&Heartbeat {
                agent_version: version.clone(),
                busy_with: None,
                wait_secs: Some(long_poll_secs(interval)),
            })
            .await?;
        if first {
            agent.log.marker("connected");
            first = false;
        }
        interval = Duration::from_secs(u64::from(reply.interval_secs.clamp(1, 300)));
        let Some(cmd) = reply.command else {
            // An appliance that held the heartbeat has used up (most of) the interval already; one that answered
            // at once (an older one) is asked again an interval after the question, as before.
            tokio::time::sleep(interval.saturating_sub(asked.elapsed())).await;
            continue;
        };
        if let Some(r) = done.get(&cmd.id) {
            tracing::info!(id = cmd.id, "command already finished, posting its result again");
            agent.api.result(r).await?;
            tokio::time::sleep(interval).await;
            continue;
        }
        let finished = run_command(&agent, cmd.clone(), interval).await?;
        let result = CommandResult {
            command_id: cmd.id,
            outcome: finished.outcome,
        };
        agent.api.result(&result).await?;
        agent.log.marker(&format!("result {} reported", cmd.id));
        done.insert(cmd.id, result);
        if let Some(action) = finished.then {
            agent.log.marker(match action {
                PowerAction::Reboot => "rebooting",
                PowerAction::PowerOff => "powering-off",
            });
            crate::power::power(action)?;
        }
    }
}

/// How long an idle heartbeat offers to wait for a command: the interval, within the API client's request timeout.
fn long_poll_secs(interval: Duration) -> u32 {
    u32::try_from(interval.as_secs().min(30)).unwrap_or(30)
}

/// Runs a command in its own task and heartbeats `busy_with` until it ends.
async fn run_command(agent: &Arc<Agent>, cmd: Command, interval: Duration) -> Result<Finished, AgentError> {
    let id = cmd.id;
    let a = agent.clone();
    let mut task = tokio::spawn(async move { a.execute(&cmd).await });
    loop {
        tokio::select! {
            r = &mut task => {
                return Ok(r.unwrap_or_else(|e| Finished {
                    outcome: Outcome::Failed { kind: "panic".into(), message: format!("command task died: {e}\n{}", agent.log.tail()) },
                    then: None,
                }));
            }
            _ = tokio::time::sleep(interval) => {
                let hb = Heartbeat { agent_version: env!("CARGO_PKG_VERSION").into(), busy_with: Some(id), wait_secs: None };
                // One attempt: a missed busy heartbeat must not hold up the command's result.
                if let Err(e) = agent.api.heartbeat_once(&hb).await {
                    tracing::warn!(error = %chain(&e), "busy heartbeat failed");
                }
            }
        }
    }
}
