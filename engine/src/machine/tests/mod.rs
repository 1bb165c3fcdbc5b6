//! Table tests of the state machine and property tests of its invariants.

use super::*;
use crate::model::{BmcInfo, HostOptions};
use kiln_bmc::{BootMode, Secret};
use kiln_images::protocol::ImageSpec;
use proptest::prelude::*;

const T0: Ts = Ts(1_000_000);

impl HostView {
    fn test() -> Self {
        HostView {
            learned_macs: Vec::new(),
            name: "node-1".parse().unwrap(),
            spec: HostSpec {
                bmc: Some(BmcInfo {
                    address: "redfish+http://127.0.0.1:8000/redfish/v1/Systems/1".parse().unwrap(),
                    username: "admin".into(),
                    password: Secret::new("pw"),
                    tls: Default::default(),
                }),
                boot_mac: Some("52:54:00:00:00:01".parse().unwrap()),
                ..Default::default()
            },
            requests: Requests::default(),
            state: State::Unmanaged,
            power: Some(PowerState::Off),
            boots: 0,
            policy: Policy::default(),
        }
    }
    fn in_state(mut self, s: State) -> Self {
        self.state = s;
        self
    }
    fn powered(mut self, p: PowerState) -> Self {
        self.power = Some(p);
        self
    }
    fn with_image(mut self, url: &str) -> Self {
        self.spec.image = Some(ImageSpec {
            url: url.into(),
            checksum: "ab".repeat(32),
            checksum_type: Default::default(),
            format: None,
        });
        self
    }
    fn no_bmc(mut self) -> Self {
        self.spec.bmc = None;
        self
    }
    fn opts(mut self, f: impl FnOnce(&mut HostOptions)) -> Self {
        f(&mut self.spec.options);
        self
    }
    fn boots(mut self, n: u64) -> Self {
        self.boots = n;
        self
    }
    fn delete(mut self) -> Self {
        self.requests.delete = true;
        self
    }
    fn power_req(mut self, a: PowerAction) -> Self {
        self.requests.power = Some(a);
        self
    }
}

fn obs() -> Observed {
    Observed {
        slot_free: true,
        jitter: 0.5,
        ..Default::default()
    }
}
fn read(p: PowerState) -> Observed {
    Observed {
        bmc: BmcObs::Power(p),
        ..obs()
    }
}
fn heartbeat() -> Observed {
    Observed {
        agent: AgentObs {
            last_heartbeat: Some(T0),
            result: None,
        },
        ..obs()
    }
}
fn result(o: Outcome) -> Observed {
    Observed {
        agent: AgentObs {
            last_heartbeat: Some(T0),
            result: Some(o),
        },
        ..obs()
    }
}
fn ok() -> Outcome {
    Outcome::Succeeded {
        detail: serde_json::Value::Null,
    }
}
fn job(phase: JobPhase, boot: u64) -> Job {
    Job {
        phase,
        boot,
        started: T0,
        phase_since: T0,
        retries: 0,
    }
}
fn booting(boot: u64) -> Job {
    job(JobPhase::Booting, boot)
}
fn running(boot: u64) -> Job {
    job(
        JobPhase::Running {
            command: command_id(boot),
        },
        boot,
    )
}
/// A network boot of the agent: old tokens revoked, the one token of `boot` minted for `phase`, boot once by PXE,
/// power.
fn pxe_boot(boot: u64, phase: &'static str, power: PowerAction) -> Vec<Action> {
    vec![
        Action::RevokeTokens,
        Action::MintToken { boot, phase },
        Action::SetBoot {
            target: BootTarget::Pxe { mode: BootMode::Uefi },
            once: true,
        },
        Action::Power(power),
    ]
}
fn at(j: Job, now: Ts) -> Job {
    Job {
        started: now,
        phase_since: now,
        ..j
    }
}

#[test]
fn lifecycle_table() {
    let img = "http://img/os.raw";
    let t = T0;
    // (name, host, observation, expected next state, expected actions)
    let rows: Vec<(&str, HostView, Observed, State, Vec<Action>)> = vec![
        (
            "unmanaged without BMC stays",
            HostView::test().no_bmc(),
            obs(),
            State::Unmanaged,
            vec![],
        ),
        (
            "unmanaged with BMC registers",
            HostView::test(),
            obs(),
            State::Registering {
                since: t,
                attempt: 0,
                macs_asked: false,
            },
            vec![],
        ),
        (
            "registering reads power then inspects",
            HostView::test().in_state(State::Registering {
                since: t,
                attempt: 0,
                macs_asked: false,
            }),
            read(PowerState::Off),
            State::Inspecting(at(booting(1), t)),
            pxe_boot(1, "inspecting", PowerAction::On),
        ),
        (
            "registering without inspection goes available",
            HostView::test()
                .in_state(State::Registering {
                    since: t,
                    attempt: 0,
                    macs_asked: false,
                })
                .opts(|o| o.inspect = false),
            read(PowerState::On),
            State::Available { since: t },
            vec![],
        ),
        (
            "registering externally provisioned is adopted",
            HostView::test()
                .in_state(State::Registering {
                    since: t,
                    attempt: 0,
                    macs_asked: false,
                })
                .opts(|o| o.externally_provisioned = true),
            read(PowerState::On),
            State::ExternallyProvisioned { since: t },
            vec![],
        ),
        (
            "registering a host that runs its image is adopted as provisioned",
            HostView::test()
                .in_state(State::Registering {
                    since: t,
                    attempt: 0,
                    macs_asked: false,
                })
                .with_image("http://images/os.raw")
                .opts(|o| o.adopt_provisioned = true),
            read(PowerState::On),
            State::Provisioned {
                since: t,
                image_url: "http://images/os.raw".into(),
            },
            vec![],
        ),
        (
            "adopting without an image inspects as usual",
            HostView::test()
                .in_state(State::Registering {
                    since: t,
                    attempt: 0,
                    macs_asked: false,
                })
                .opts(|o| o.adopt_provisioned = true),
            read(PowerState::Off),
            State::Inspecting(at(booting(1), t)),
            pxe_boot(1, "inspecting", PowerAction::On),
        ),
        (
            "inspecting: heartbeat queues inspect",
            HostView::test().in_state(State::Inspecting(booting(1))).boots(1),
            heartbeat(),
            State::Inspecting(Job {
                phase_since: t,
                ..running(1)
            }),
            vec![Action::Enqueue {
                boot: 1,
                id: 1,
                kind: CommandKind::Inspect,
            }],
        ),
        (
            "inspecting: result powers off, available",
            HostView::test().in_state(State::Inspecting(running(1))).boots(1),
            result(ok()),
            State::Available { since: t },
            vec![Action::RevokeTokens, Action::Power(PowerAction::Off)],
        ),
        (
            "available with image provisions on a new boot (power cycle when on)",
            HostView::test()
                .in_state(State::Available { since: t })
                .boots(1)
                .with_image(img)
                .powered(PowerState::On),
            obs(),
            State::Provisioning(at(booting(2), t)),
            pxe_boot(2, "provisioning", PowerAction::Cycle),
        ),
        (
            "available with image but no slot is delayed",
            HostView::test()
                .in_state(State::Available { since: t })
                .boots(1)
                .with_image(img),
            Observed {
                slot_free: false,
                ..obs()
            },
            State::Provisioning(at(job(JobPhase::Delayed, 2), t)),
            vec![Action::RevokeTokens],
        ),
        (
            "delayed starts when a slot frees",
            HostView::test()
                .in_state(State::Provisioning(job(JobPhase::Delayed, 2)))
                .boots(1)
                .with_image(img),
            obs(),
            State::Provisioning(Job {
                phase_since: t,
                ..booting(2)
            }),
            pxe_boot(2, "provisioning", PowerAction::On),
        ),
        (
            "provisioning: written image boots from disk",
            HostView::test()
                .in_state(State::Provisioning(running(2)))
                .boots(2)
                .with_image(img),
            result(ok()),
            State::Provisioned {
                since: t,
                image_url: img.into(),
            },
            vec![
                Action::RevokeTokens,
                Action::SetBoot {
                    target: BootTarget::Disk { mode: BootMode::Uefi },
                    once: false,
                },
                Action::Power(PowerAction::Cycle),
            ],
        ),
        (
            "provisioned stays while the image is set",
            HostView::test()
                .in_state(State::Provisioned {
                    since: t,
                    image_url: img.into(),
                })
                .with_image(img)
                .powered(PowerState::On),
            read(PowerState::Off),
            State::Provisioned {
                since: t,
                image_url: img.into(),
            },
            vec![],
        ),
        (
            "provisioned deprovisions when the image is removed",
            HostView::test()
                .in_state(State::Provisioned {
                    since: t,
                    image_url: img.into(),
                })
                .boots(2)
                .powered(PowerState::On),
            obs(),
            State::Deprovisioning(at(booting(3), t)),
            pxe_boot(3, "deprovisioning", PowerAction::Cycle),
        ),
        (
            "deprovisioning: erased, powered off, available",
            HostView::test().in_state(State::Deprovisioning(running(3))).boots(3),
            result(ok()),
            State::Available { since: t },
            vec![Action::RevokeTokens, Action::Power(PowerAction::Off)],
        ),
        (
            "provisioned honours a power request",
            HostView::test()
                .in_state(State::Provisioned {
                    since: t,
                    image_url: img.into(),
                })
                .with_image(img)
                .power_req(PowerAction::Off),
            obs(),
            State::Provisioned {
                since: t,
                image_url: img.into(),
            },
            vec![Action::Power(PowerAction::Off), Action::ClearPowerRequest],
        ),
        (
            "delete powers off and revokes",
            HostView::test().in_state(State::Available { since: t }).delete(),
            obs(),
            State::Deleting { since: t },
            vec![Action::RevokeTokens, Action::Power(PowerAction::Off)],
        ),
        (
            "deleting forgets",
            HostView::test().in_state(State::Deleting { since: t }).delete(),
            obs(),
            State::Deleting { since: t },
            vec![Action::Forget],
        ),
    ];
    for (name, host, o, next, actions) in rows {
        let d = step(&host, &o, t);
        assert_eq!(d.next, next, "{name}: next state ({})", d.reason);
        assert_eq!(d.actions, actions, "{name}: actions");
        assert!(d.wake >= t, "{name}: wake in the past");
    }
}

#[test]
fn registration_failures_are_actionable() {
    let h = HostView::test().in_state(State::Registering {
        since: T0,
        attempt: 0,
        macs_asked: false,
    });
    let auth = BmcFailure {
        message: "401 Unauthorized".into(),
        transient: false,
        auth: true,
    };
    let d = step(
        &h,
        &Observed {
            bmc: BmcObs::Failed(auth),
            ..obs()
        },
        T0,
    );
    let State::Error(e) = d.next else {
        panic!("{:?}", d.next)
    };
    assert_eq!((e.operation, e.kind.as_str()), (Operation::Registering, "bmc_auth"));
    assert!(e.message.contains("username and password"), "{}", e.message);

    let down = BmcFailure {
        message: "connection refused".into(),
        transient: true,
        auth: false,
    };
    let d = step(
        &h,
        &Observed {
            bmc: BmcObs::Failed(down.clone()),
            ..obs()
        },
        T0,
    );
    assert_eq!(
        d.next,
        State::Registering {
            since: T0,
            attempt: 1,
            macs_asked: false
        }
    );
    assert!(d.wake > T0);
    let last = h.clone().in_state(State::Registering {
        since: T0,
        attempt: 3,
        macs_asked: false,
    });
    let d = step(
        &last,
        &Observed {
            bmc: BmcObs::Failed(down),
            ..obs()
        },
        T0,
    );
    assert!(
        matches!(&d.next, State::Error(e) if e.kind == "bmc_unreachable" && e.retry_at.is_none()),
        "{:?}",
        d.next
    );
}

#[test]
fn a_host_without_a_boot_mac_learns_its_macs_from_the_bmc_or_boots_for_discovery() {
    // A Redfish host enrolled without a boot MAC (Metal3 allows it): the BMC is asked for its NICs first.
    let mut h = HostView::test().in_state(State::Registering {
        since: T0,
        attempt: 0,
        macs_asked: false,
    });
    h.spec.boot_mac = None;
    let d = step(&h, &read(PowerState::Off), T0);
    assert_eq!(
        d.next,
        State::Registering {
            since: T0,
            attempt: 0,
            macs_asked: true
        }
    );
    assert_eq!(d.actions, vec![Action::LearnMacs]);
    // With the MACs its BMC reported, it is inspected like any host.
    let mut learned = h.clone().in_state(d.next.clone());
    learned.learned_macs = vec!["52:54:00:00:00:22".parse().unwrap()];
    let d = step(&learned, &read(PowerState::Off), T0);
    assert!(matches!(d.next, State::Inspecting(_)), "{:?}", d.next);
    // The BMC reported none: the host is booted all the same, for a discovery boot (kiln binds an unknown MAC's
    // agent that reports this host's BMC address), and a boot timeout then says what to check.
    let asked = h.clone().in_state(State::Registering {
        since: T0,
        attempt: 0,
        macs_asked: true,
    });
    assert!(asked.awaits_discovery());
    let d = step(&asked, &read(PowerState::Off), T0);
    assert!(matches!(d.next, State::Inspecting(_)), "{:?}", d.next);
    assert!(
        d.actions.iter().any(|a| matches!(a, Action::MintToken { .. })),
        "the discovery boot has its token: {:?}",
        d.actions
    );
    // An IPMI BMC cannot tell: no question is asked, the host is booted for discovery.
    let mut ipmi = h.clone();
    ipmi.spec.bmc.as_mut().unwrap().address = "ipmi://127.0.0.1:6230".parse().unwrap();
    let d = step(&ipmi, &read(PowerState::Off), T0);
    assert!(matches!(d.next, State::Inspecting(_)), "{:?}", d.next);
    assert!(!d.actions.contains(&Action::LearnMacs), "{:?}", d.actions);
    // Once bound (its MACs learned), it no longer waits for a discovery boot.
    let mut bound = ipmi.clone();
    bound.learned_macs = vec!["52:54:00:00:00:22".parse().unwrap()];
    assert!(!bound.awaits_discovery());
}

#[test]
fn boot_timeout_then_retry_with_backoff_then_give_up() {
    let p = Policy::default();
    let h = HostView::test()
        .in_state(State::Provisioning(booting(2)))
        .boots(2)
        .with_image("http://x/i");
    let late = T0.plus_secs(p.boot_timeout_secs);
    assert!(matches!(
        step(&h, &obs(), late.plus_ms(-1)).next,
        State::Provisioning(_)
    ));
    let d = step(&h, &obs(), late);
    let State::Error(e) = &d.next else {
        panic!("{:?}", d.next)
    };
    assert_eq!(
        (e.operation, e.kind.as_str(), e.retries),
        (Operation::Provisioning, "boot_timeout", 0)
    );
    assert!(e.message.contains("52:54:00:00:00:01"));
    let retry_at = e.retry_at.unwrap();
    assert_eq!(d.wake, retry_at);
    // Before retry_at nothing happens; at it a new boot starts with retries counted.
    let eh = h.clone().in_state(d.next.clone());
    assert_eq!(step(&eh, &obs(), retry_at.plus_ms(-1)).next, d.next);
    let r = step(&eh, &obs(), retry_at);
    assert!(
        matches!(
            r.next,
            State::Provisioning(Job {
                phase: JobPhase::Booting,
                boot: 3,
                retries: 1,
                ..
            })
        ),
        "{:?}",
        r.next
    );
    // Exhausted: no retry_at, waits for the operator; deprovision clears it.
    let mut exhausted = e.clone();
    exhausted.retries = p.max_retries;
    let d = step(&h.clone().in_state(State::Error(exhausted.clone())), &obs(), T0);
    let State::Error(e2) = &d.next else { panic!() };
    assert!(e2.retry_at.is_none() || e2 == &exhausted);
    let mut no_image = h.clone().in_state(State::Error(HostError {
        retry_at: None,
        ..exhausted
    }));
    no_image.spec.image = None;
    assert!(matches!(step(&no_image, &obs(), T0).next, State::Deprovisioning(_)));
}

#[test]
fn provisioning_a_failed_host_again_retries_at_once_with_fresh_retries() {
    let p = Policy::default();
    let failed = HostError {
        operation: Operation::Provisioning,
        kind: "checksum_mismatch".into(),
        message: "m".into(),
        retries: p.max_retries,
        at: T0,
        retry_at: None,
    };
    let mut h = HostView::test()
        .in_state(State::Error(failed.clone()))
        .powered(PowerState::On)
        .boots(4)
        .with_image("http://x/fixed");
    h.requests.retry = true;
    let d = step(&h, &obs(), T0.plus_secs(1));
    assert!(
        matches!(
            d.next,
            State::Provisioning(Job {
                phase: JobPhase::Booting,
                boot: 5,
                retries: 0,
                ..
            })
        ),
        "{:?}",
        d.next
    );
    assert_eq!(d.actions.last(), Some(&Action::ClearRetryRequest));
    assert!(d.actions.contains(&Action::Power(PowerAction::Cycle)));
    // Anywhere else the request is dropped without touching the state.
    for s in [
        State::Available { since: T0 },
        State::Error(HostError {
            operation: Operation::Inspecting,
            ..failed
        }),
    ] {
        let d = step(&h.clone().in_state(s.clone()), &obs(), T0);
        assert_eq!((d.next, d.actions), (s, vec![Action::ClearRetryRequest]));
    }
}

#[test]
fn agent_failure_and_silence_become_errors() {
    let h = HostView::test()
        .in_state(State::Provisioning(running(2)))
        .boots(2)
        .with_image("http://x/i");
    let d = step(
        &h,
        &result(Outcome::Failed {
            kind: "checksum_mismatch".into(),
            message: "expected ab got cd".into(),
        }),
        T0,
    );
    assert!(matches!(&d.next, State::Error(e) if e.kind == "checksum_mismatch" && e.message.contains("expected ab")));
    let silent = Observed {
        agent: AgentObs {
            last_heartbeat: Some(T0),
            result: None,
        },
        ..obs()
    };
    let d = step(&h, &silent, T0.plus_secs(Policy::default().heartbeat_timeout_secs));
    assert!(matches!(&d.next, State::Error(e) if e.kind == "agent_lost"));
}

fn arb_state() -> impl Strategy<Value = State> {
    let job = (0u8..3, 1u64..5, 0u32..4).prop_map(|(p, boot, retries)| {
        let phase = match p {
            0 => JobPhase::Delayed,
            1 => JobPhase::Booting,
            _ => JobPhase::Running {
                command: command_id(boot),
            },
        };
        Job {
            phase,
            boot,
            started: T0,
            phase_since: T0,
            retries,
        }
    });
    prop_oneof![
        Just(State::Unmanaged),
        (0u32..5).prop_map(|a| State::Registering {
            since: T0,
            attempt: a,
            macs_asked: false
        }),
        job.clone().prop_map(State::Inspecting),
        job.clone().prop_map(State::Preparing),
        Just(State::Available { since: T0 }),
        job.clone().prop_map(State::Provisioning),
        Just(State::Provisioned {
            since: T0,
            image_url: "http://x/a".into()
        }),
        job.prop_map(State::Deprovisioning),
        Just(State::ExternallyProvisioned { since: T0 }),
        (0u32..5, proptest::option::of(0i64..10_000)).prop_map(|(r, at)| State::Error(HostError {
            operation: Operation::Provisioning,
            kind: "x".into(),
            message: "m".into(),
            retries: r,
            at: T0,
            retry_at: at.map(|a| T0.plus_ms(a)),
        })),
    ]
}

fn arb_obs() -> impl Strategy<Value = Observed> {
    (0u8..4, any::<bool>(), 0u8..3, any::<bool>(), 0.0f64..1.0).prop_map(|(b, hb, res, slot, jitter)| Observed {
        bmc: match b {
            0 => BmcObs::NotRead,
            1 => BmcObs::Power(PowerState::On),
            2 => BmcObs::Power(PowerState::Off),
            _ => BmcObs::Failed(BmcFailure {
                message: "down".into(),
                transient: true,
                auth: false,
            }),
        },
        agent: AgentObs {
            last_heartbeat: hb.then_some(T0),
            result: match res {
                0 => None,
                1 => Some(ok()),
                _ => Some(Outcome::Failed {
                    kind: "io".into(),
                    message: "x".into(),
                }),
            },
        },
        slot_free: slot,
        jitter,
    })
}

proptest! {
    /// A provisioned host with its image still set is never powered off or written, unless the operator asked.
    #[test]
    fn provisioned_host_is_left_alone(o in arb_obs(), dt in 0i64..10_000_000, on in any::<bool>()) {
        let h = HostView::test()
            .in_state(State::Provisioned { since: T0, image_url: "http://x/a".into() })
            .with_image("http://x/a")
            .powered(if on { PowerState::On } else { PowerState::Off });
        let d = step(&h, &o, T0.plus_ms(dt));
        prop_assert!(d.actions.is_empty(), "{:?}", d.actions);
        prop_assert_eq!(d.next.name(), "provisioned");
    }

    /// Writes happen only in provisioning, for the job's own boot, and only after that boot's agent heartbeated;
    /// two jobs never share a boot (so never two deploys writing at once).
    #[test]
    fn writes_only_from_the_current_provisioning_boot(s in arb_state(), o in arb_obs(), img in any::<bool>(), boots in 0u64..6, dt in 0i64..2_000_000) {
        let mut h = HostView::test().in_state(s.clone()).boots(boots.max(s.job().map_or(0, |j| j.boot)));
        if img { h = h.with_image("http://x/a"); }
        let d = step(&h, &o, T0.plus_ms(dt));
        for a in &d.actions {
            if let Action::Enqueue { boot, kind, .. } = a {
                prop_assert!(o.agent.last_heartbeat.is_some());
                prop_assert_eq!(Some(*boot), s.job().map(|j| j.boot));
                if matches!(kind, CommandKind::WriteImage { .. }) {
                    prop_assert!(matches!(s, State::Provisioning(_)));
                    let running = matches!(d.next, State::Provisioning(Job { phase: JobPhase::Running { .. }, .. }));
                    prop_assert!(running);
                }
            }
        }
        if let (Some(new), Some(old)) = (d.next.job(), s.job()) {
            prop_assert!(new.boot == old.boot || new.boot > h.boots, "a new job reuses an old boot");
        }
        if let Some(new) = d.next.job() {
            prop_assert_eq!(new.phase != JobPhase::Delayed, d.next.holds_slot());
            if !o.slot_free && !s.holds_slot() { prop_assert!(!d.next.holds_slot(), "took a slot that was not free"); }
        }
        prop_assert!(d.wake >= T0.plus_ms(dt));
    }
}

#[test]
fn failed_bmc_actions_are_retried_then_map_to_the_operation() {
    let h = HostView::test()
        .in_state(State::Available { since: T0 })
        .with_image("http://x/i");
    let f = BmcFailure {
        message: "timeout".into(),
        transient: true,
        auth: false,
    };
    let give_up =
        |attempted: &State, attempts: u32| match after_action_failure(&h, attempted, &f, "power on", attempts, T0, 0.0)
        {
            AfterActionFailure::GiveUp(d) => Some(d),
            AfterActionFailure::Retry { .. } => None,
        };
    let provisioning = State::Provisioning(booting(1));
    // Transient failures are retried up to max_retries, counting the attempts the host has persisted.
    for attempts in 1..=h.policy.max_retries {
        match after_action_failure(&h, &provisioning, &f, "power on", attempts, T0, 0.0) {
            AfterActionFailure::Retry { wake, message } => {
                assert!(wake > T0);
                assert!(message.contains(&format!("attempt {attempts} of")), "{message}");
            }
            AfterActionFailure::GiveUp(d) => panic!("gave up after {attempts}: {d:?}"),
        }
    }
    let d = give_up(&provisioning, h.policy.max_retries + 1).expect("gives up");
    assert!(
        matches!(&d.next, State::Error(e) if e.operation == Operation::Provisioning && e.kind == "bmc_unreachable" && e.message.contains("power on failed"))
    );
    let d = give_up(&State::Available { since: T0 }, h.policy.max_retries + 1).expect("gives up");
    assert_eq!(d.next, h.state);
    assert_eq!(d.actions, vec![Action::ClearPowerRequest]);
    let d = give_up(&State::Deleting { since: T0 }, h.policy.max_retries + 1).expect("gives up");
    assert_eq!(d.next, State::Deleting { since: T0 });
    // Refused credentials are not retried.
    let auth = BmcFailure {
        auth: true,
        ..f.clone()
    };
    assert!(matches!(
        after_action_failure(&h, &provisioning, &auth, "power on", 1, T0, 0.0),
        AfterActionFailure::GiveUp(_)
    ));
}

#[test]
fn online_keeps_a_settled_host_powered_as_asked() {
    let mut h = HostView::test().in_state(State::Available { since: T0 });
    h.spec.options.online = Some(true);
    let d = step(&h, &Observed::default(), T0);
    assert_eq!(d.actions, vec![Action::Power(PowerAction::On)], "{}", d.reason);
    let h = h.powered(PowerState::On);
    assert!(step(&h, &Observed::default(), T0).actions.is_empty());
    let mut h = h;
    h.spec.options.online = Some(false);
    assert_eq!(
        step(&h, &Observed::default(), T0).actions,
        vec![Action::Power(PowerAction::Off)]
    );
    // Unset: power is left to the operator's requests.
    h.spec.options.online = None;
    assert!(step(&h, &Observed::default(), T0).actions.is_empty());
}

#[test]
fn cleaning_disabled_never_erases() {
    let mut h = HostView::test().in_state(State::Provisioned {
        since: T0,
        image_url: "http://x/i".into(),
    });
    h.spec.options.erase = crate::model::EraseMode::Disabled;
    let obs = Observed {
        slot_free: true,
        ..Default::default()
    };
    let d = step(&h, &obs, T0);
    assert_eq!(d.next, State::Available { since: T0 }, "{}", d.reason);
    assert!(
        !d.actions
            .iter()
            .any(|a| matches!(a, Action::Enqueue { .. } | Action::SetBoot { .. })),
        "{:?}",
        d.actions
    );
    // A deprovision already under way when cleaning was disabled sends no erase command either.
    let h = h.in_state(State::Deprovisioning(booting(1)));
    let obs = Observed {
        slot_free: true,
        agent: AgentObs {
            last_heartbeat: Some(T0),
            result: None,
        },
        ..Default::default()
    };
    let d = step(&h, &obs, T0);
    assert_eq!(d.next, State::Available { since: T0 });
    assert!(!d.actions.iter().any(|a| matches!(a, Action::Enqueue { .. })));
}

mod media;
