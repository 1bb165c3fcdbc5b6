//! Agent jobs (inspect, prepare, provision, deprovision): starting one on a fresh boot (or queueing it for a slot),
//! booting the agent, the command it runs, following its heartbeats and results, and where the host goes when the
//! job ends. Pure, like the rest of the machine.

use kiln_bmc::{BootMode, BootTarget, PowerAction, PowerState};
use kiln_images::protocol::{CommandKind, ConfigDrive, ImageFormat, Outcome, RegistryAccess, RegistryCredentials};

use super::{
    Action, Decision, HostView, Job, JobKind, JobPhase, Observed, Operation, State, command_id, decide, error,
};
use crate::model::EraseMode;
use crate::types::Ts;

fn pxe_target(mode: BootMode) -> BootTarget {
    BootTarget::Pxe { mode }
}

/// Starts (or queues, when no slot is free) an agent job on a fresh boot.
pub(super) fn start_job(
    host: &HostView,
    obs: &Observed,
    now: Ts,
    kind: JobKind,
    retries: u32,
    reason: &str,
) -> Decision {
    if kind == JobKind::Provision
        && let Some(img) = host
            .spec
            .image
            .as_ref()
            .filter(|i| i.format == Some(ImageFormat::LiveIso))
    {
        return boot_live_iso(host, obs, now, &img.url, retries, reason);
    }
    if kind == JobKind::Deprovision && host.spec.options.erase == EraseMode::Disabled {
        // Metal3's `automatedCleaningMode: disabled`: the disks are the user's to keep. No agent boots (it would
        // have nothing to do); the host is powered off and becomes available with its disks untouched (and a
        // live ISO it ran ejected).
        let mut actions = vec![Action::RevokeTokens];
        if host.by_virtual_media() {
            actions.push(Action::EjectMedia);
        }
        actions.push(Action::Power(PowerAction::Off));
        return decide(
            State::Available { since: now },
            actions,
            now,
            format!("{reason}; cleaning disabled: powered off, disks left as they are"),
        );
    }
    let boot = host.boots + 1;
    let job = Job {
        phase: JobPhase::Delayed,
        boot,
        started: now,
        phase_since: now,
        retries,
    };
    if !obs.slot_free {
        return decide(
            kind.state(job),
            vec![Action::RevokeTokens],
            now.plus_secs(host.policy.busy_poll_secs),
            format!("{reason}; delayed: concurrency limit reached"),
        );
    }
    boot_job(host, now, kind, job, reason)
}

/// A live-iso deploy (Metal3's `image.format: live-iso`): the BMC inserts the image itself and the host boots it
/// from then on (the override is persistent), diskless; no agent runs, nothing is written. Deprovisioning boots the
/// agent's own ISO in its place (or ejects it, with cleaning disabled).
fn boot_live_iso(host: &HostView, obs: &Observed, now: Ts, url: &str, retries: u32, reason: &str) -> Decision {
    if !host.by_virtual_media() {
        let msg = format!(
            "{reason}, but a live-iso image boots from the BMC's virtual media, and this host's BMC address asks for \
             network boot: use its virtual-media scheme (redfish-virtualmedia://, idrac-virtualmedia://, \
             ilo5-virtualmedia://)"
        );
        return error(
            host,
            now,
            Operation::Provisioning,
            "live_iso_needs_virtual_media",
            msg,
            retries,
            obs.jitter,
        );
    }
    let power = match host.power {
        Some(PowerState::On | PowerState::PoweringOn | PowerState::PoweringOff) => PowerAction::Cycle,
        Some(PowerState::Off) | Some(PowerState::Unknown) | None => PowerAction::On,
    };
    decide(
        State::Provisioned {
            since: now,
            image_url: url.to_owned(),
        },
        vec![
            Action::RevokeTokens,
            Action::InsertMedia { url: url.to_owned() },
            Action::SetBoot {
                target: BootTarget::VirtualCd {
                    mode: host.spec.boot_mode,
                },
                once: false,
            },
            Action::Power(power),
        ],
        now,
        format!("{reason}; booting the live ISO from virtual media"),
    )
}

fn boot_job(host: &HostView, now: Ts, kind: JobKind, job: Job, reason: &str) -> Decision {
    let power = match host.power {
        // A host on or changing power state is cycled: the boot must start after the boot device was set (the
        // driver lets a power-off under way finish first).
        Some(PowerState::On | PowerState::PoweringOn | PowerState::PoweringOff) => PowerAction::Cycle,
        Some(PowerState::Off) | Some(PowerState::Unknown) | None => PowerAction::On,
    };
    let next = kind.state(Job {
        phase: JobPhase::Booting,
        phase_since: now,
        ..job
    });
    let mut actions = vec![
        Action::RevokeTokens,
        Action::MintToken {
            boot: job.boot,
            phase: next.name(),
        },
    ];
    let how = if host.by_virtual_media() {
        actions.push(Action::InsertAgentMedia { boot: job.boot });
        actions.push(Action::SetBoot {
            target: BootTarget::VirtualCd {
                mode: host.spec.boot_mode,
            },
            once: true,
        });
        "booting the agent from virtual media"
    } else {
        actions.push(Action::SetBoot {
            target: pxe_target(host.spec.boot_mode),
            once: true,
        });
        "network-booting the agent"
    };
    actions.push(Action::Power(power));
    decide(
        next,
        actions,
        now.plus_secs(host.policy.busy_poll_secs),
        format!("{reason}; {how}"),
    )
}

fn command_for(host: &HostView, kind: JobKind) -> CommandKind {
    match kind {
        JobKind::Inspect => CommandKind::Inspect,
        JobKind::Prepare => CommandKind::EraseMetadata,
        JobKind::Deprovision => match host.spec.options.erase {
            EraseMode::Full => CommandKind::EraseDisks,
            // `Disabled` never gets here: `start_job` and `run_job` deprovision such a host without the agent.
            EraseMode::Metadata | EraseMode::Disabled => CommandKind::EraseMetadata,
        },
        JobKind::Provision => {
            let mut meta = serde_json::json!({ "name": host.name.as_str(), "hostname": host.name.as_str(), "uuid": host.name.as_str() });
            if let (Some(serde_json::Value::Object(extra)), Some(m)) = (&host.spec.meta_data, meta.as_object_mut()) {
                m.extend(extra.clone());
            }
            CommandKind::WriteImage {
                image: host.spec.image.clone().expect("provision job only runs with an image"),
                root_device_hints: host.spec.root_device_hints.clone(),
                config_drive: Some(ConfigDrive {
                    meta_data: meta,
                    user_data: host.spec.user_data.clone(),
                    // Without network data of its own, the installed OS gets the ramdisk's (Metal3 does the same
                    // with preprovisioningNetworkDataName): a host with static addressing stays reachable.
                    network_data: host
                        .spec
                        .network_data
                        .clone()
                        .or_else(|| host.spec.preprovisioning_network_data.clone()),
                }),
                registry: registry_access(&host.spec),
            }
        }
    }
}

/// For an `oci://` image: the credentials the agent pulls it with (plain HTTP is the executor's to set, from
/// kiln's configuration).
fn registry_access(spec: &crate::model::HostSpec) -> Option<RegistryAccess> {
    let image = spec.image.as_ref()?;
    image.url.starts_with("oci://").then(|| RegistryAccess {
        credentials: spec.image_credentials.as_ref().map(|c| RegistryCredentials {
            username: c.username.clone(),
            password: c.password.expose().to_owned(),
        }),
        plain_http: false,
    })
}

pub(super) fn run_job(host: &HostView, obs: &Observed, now: Ts, kind: JobKind, job: Job) -> Decision {
    if kind == JobKind::Deprovision && host.spec.options.erase == EraseMode::Disabled {
        // Cleaning was disabled while the job was under way: no command is (or will be) sent to erase anything.
        let mut actions = host.end_boot();
        actions.push(Action::Power(PowerAction::Off));
        return decide(
            State::Available { since: now },
            actions,
            now,
            "cleaning disabled: powered off, disks left as they are",
        );
    }
    let p = &host.policy;
    let busy = now.plus_secs(p.busy_poll_secs);
    let op = kind.operation();
    match job.phase {
        JobPhase::Delayed => {
            if obs.slot_free {
                boot_job(host, now, kind, job, "slot free")
            } else {
                decide(kind.state(job), vec![], busy, "delayed: concurrency limit reached")
            }
        }
        JobPhase::Booting => {
            if obs.agent.last_heartbeat.is_some() {
                let id = command_id(job.boot);
                let next = kind.state(Job {
                    phase: JobPhase::Running { command: id },
                    phase_since: now,
                    ..job
                });
                let actions = vec![Action::Enqueue {
                    boot: job.boot,
                    id,
                    kind: command_for(host, kind),
                }];
                return decide(next, actions, busy, "agent heartbeat received; command queued");
            }
            let deadline = job.phase_since.plus_secs(p.boot_timeout_secs);
            if now >= deadline {
                let mac = host
                    .spec
                    .boot_mac
                    .map(|m| m.to_string())
                    .unwrap_or_else(|| "(none set)".into());
                let msg = if host.by_virtual_media() {
                    format!(
                        "no heartbeat from kiln-agent within {}s of booting from virtual media: check that the BMC could \
                         fetch kiln's ISO (kiln's events and log say when it was read), that the host boots it \
                         (UEFI; Secure Boot off), that the ramdisk's network (preprovisioning network data, or DHCP) \
                         reaches kiln, and the host's console",
                        p.boot_timeout_secs
                    )
                } else if host.awaits_discovery() {
                    format!(
                        "no heartbeat from kiln-agent within {}s of network boot: the host has no boot MAC (and its \
                         BMC reported none), so kiln offered a discovery boot to unknown MACs and waited for an agent \
                         reporting this host's BMC address. Check that the host PXE-boots, that its agent can read its \
                         BMC's address in-band (an IPMI system interface; the events say which addresses were \
                         reported), that no other waiting host has a BMC at the same address, or set bootMACAddress \
                         (kiln: --boot-mac)",
                        p.boot_timeout_secs
                    )
                } else {
                    format!(
                        "no heartbeat from kiln-agent within {}s of network boot: check that the host PXE-boots from \
                         MAC {mac}, that DHCP reaches kiln, and the host's console",
                        p.boot_timeout_secs
                    )
                };
                return error(host, now, op, "boot_timeout", msg, job.retries, obs.jitter);
            }
            decide(
                kind.state(job),
                vec![],
                busy.min(deadline),
                "waiting for the agent to boot",
            )
        }
        JobPhase::Running { command } => {
            match &obs.agent.result {
                Some(Outcome::Succeeded { .. }) => return finish_job(host, now, kind, job),
                Some(Outcome::Failed { kind: fk, message }) => {
                    let msg = format!("kiln-agent reported {fk} for command {command}: {message}");
                    return error(host, now, op, fk, msg, job.retries, obs.jitter);
                }
                None => {}
            }
            if now >= job.phase_since.plus_secs(p.command_timeout_secs) {
                let msg = format!(
                    "the agent did not finish command {command} within {}s",
                    p.command_timeout_secs
                );
                return error(host, now, op, "command_timeout", msg, job.retries, obs.jitter);
            }
            let last = obs.agent.last_heartbeat.unwrap_or(job.phase_since).max(job.phase_since);
            if now >= last.plus_secs(p.heartbeat_timeout_secs) {
                let msg = format!(
                    "kiln-agent stopped heartbeating for {}s: the host may have rebooted or lost its network",
                    p.heartbeat_timeout_secs
                );
                return error(host, now, op, "agent_lost", msg, job.retries, obs.jitter);
            }
            decide(kind.state(job), vec![], busy, "waiting for the agent's result")
        }
    }
}

fn finish_job(host: &HostView, now: Ts, kind: JobKind, _job: Job) -> Decision {
    match kind {
        JobKind::Inspect if host.spec.options.prepare => {
            // Preparing uses its own boot; the slot is kept (we hold it now).
            let job = Job {
                phase: JobPhase::Delayed,
                boot: host.boots + 1,
                started: now,
                phase_since: now,
                retries: 0,
            };
            boot_job(host, now, JobKind::Prepare, job, "inspected; preparing")
        }
        JobKind::Inspect | JobKind::Prepare | JobKind::Deprovision => {
            let mut actions = host.end_boot();
            actions.push(Action::Power(PowerAction::Off));
            decide(
                State::Available { since: now },
                actions,
                now,
                "agent work done; powered off",
            )
        }
        JobKind::Provision => {
            let url = host.spec.image.as_ref().map(|i| i.url.clone()).unwrap_or_default();
            decide(
                State::Provisioned {
                    since: now,
                    image_url: url,
                },
                [
                    host.end_boot(),
                    vec![
                        Action::SetBoot {
                            target: BootTarget::Disk {
                                mode: host.spec.boot_mode,
                            },
                            once: false,
                        },
                        Action::Power(PowerAction::Cycle),
                    ],
                ]
                .concat(),
                now,
                "image written; booting from disk",
            )
        }
    }
}
