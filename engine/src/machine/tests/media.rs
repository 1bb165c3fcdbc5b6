//! Virtual-media boots of the agent and live-iso deploys.

use super::*;

#[test]
fn a_virtual_media_host_boots_the_agent_from_its_iso_and_ejects_it_when_the_job_ends() {
    let mut h = HostView::test().in_state(State::Registering {
        since: T0,
        attempt: 0,
        macs_asked: false,
    });
    h.spec.bmc.as_mut().unwrap().address = "redfish-virtualmedia+http://127.0.0.1:8000/redfish/v1/Systems/1"
        .parse()
        .unwrap();
    // No boot MAC is needed: nothing netboots, the ISO carries the token.
    h.spec.boot_mac = None;
    let d = step(&h, &read(PowerState::Off), T0);
    let State::Inspecting(j) = d.next.clone() else {
        panic!("{:?}", d.next)
    };
    assert_eq!(
        d.actions,
        vec![
            Action::RevokeTokens,
            Action::MintToken {
                boot: j.boot,
                phase: "inspecting"
            },
            Action::InsertAgentMedia { boot: j.boot },
            Action::SetBoot {
                target: BootTarget::VirtualCd { mode: BootMode::Uefi },
                once: true
            },
            Action::Power(PowerAction::On),
        ]
    );
    // The agent's result ends the boot: token revoked, ISO ejected, powered off.
    let after = h.clone().in_state(State::Inspecting(running(j.boot)));
    let o = Observed {
        agent: AgentObs {
            last_heartbeat: Some(T0),
            result: Some(ok()),
        },
        ..read(PowerState::On)
    };
    let d = step(&after, &o, T0);
    assert!(matches!(d.next, State::Available { .. }), "{:?}", d.next);
    assert_eq!(
        d.actions,
        vec![
            Action::RevokeTokens,
            Action::EjectMedia,
            Action::Power(PowerAction::Off)
        ]
    );
    // A boot that times out is ended the same way, and the message speaks of virtual media, not PXE.
    let booting = h.clone().in_state(State::Inspecting(booting(j.boot)));
    let late = T0.plus_secs(Policy::default().boot_timeout_secs + 1);
    let d = step(&booting, &read(PowerState::On), late);
    let State::Error(e) = &d.next else {
        panic!("{:?}", d.next)
    };
    assert!(e.message.contains("virtual media"), "{}", e.message);
    assert!(!e.message.contains("PXE"), "{}", e.message);
    assert!(d.actions.contains(&Action::EjectMedia), "{:?}", d.actions);
    // A provision ends with the ISO ejected before the host boots its disk.
    let prov = h
        .clone()
        .with_image("http://x/os.img")
        .in_state(State::Provisioning(running(j.boot)));
    let d = step(&prov, &o, T0);
    assert!(matches!(d.next, State::Provisioned { .. }), "{:?}", d.next);
    let eject = d.actions.iter().position(|a| *a == Action::EjectMedia);
    let disk = d.actions.iter().position(|a| matches!(a, Action::SetBoot { .. }));
    assert!(eject.is_some() && eject < disk, "{:?}", d.actions);
    // A queued (delayed) job has nothing inserted: nothing to eject.
    let delayed = h.in_state(State::Inspecting(job(JobPhase::Delayed, 1))).delete();
    let d = step(&delayed, &read(PowerState::Off), T0);
    assert!(!d.actions.contains(&Action::EjectMedia), "{:?}", d.actions);
}

#[test]
fn a_live_iso_is_booted_by_the_bmc_and_never_written() {
    let mut h = HostView::test().in_state(State::Available { since: T0 });
    h.spec.bmc.as_mut().unwrap().address = "idrac-virtualmedia://127.0.0.1/redfish/v1/Systems/System.Embedded.1"
        .parse()
        .unwrap();
    h.spec.image = Some(ImageSpec {
        url: "http://x/live.iso".into(),
        checksum: String::new(),
        checksum_type: Default::default(),
        format: Some(kiln_images::protocol::ImageFormat::LiveIso),
    });
    let d = step(&h, &read(PowerState::Off), T0);
    assert_eq!(
        d.next,
        State::Provisioned {
            since: T0,
            image_url: "http://x/live.iso".into()
        }
    );
    assert_eq!(
        d.actions,
        vec![
            Action::RevokeTokens,
            Action::InsertMedia {
                url: "http://x/live.iso".into()
            },
            Action::SetBoot {
                target: BootTarget::VirtualCd { mode: BootMode::Uefi },
                once: false
            },
            Action::Power(PowerAction::On),
        ],
        "no agent, no token, the CD for every boot"
    );
    // Deprovisioning with cleaning disabled ejects it; with cleaning, the agent's ISO replaces it.
    let mut live = h.clone().in_state(d.next.clone());
    live.spec.image = None;
    let d = step(
        &live.clone().opts(|o| o.erase = crate::model::EraseMode::Disabled),
        &read(PowerState::On),
        T0,
    );
    assert!(d.actions.contains(&Action::EjectMedia), "{:?}", d.actions);
    let d = step(&live, &read(PowerState::On), T0);
    assert!(matches!(d.next, State::Deprovisioning(_)), "{:?}", d.next);
    assert!(
        d.actions.iter().any(|a| matches!(a, Action::InsertAgentMedia { .. })),
        "{:?}",
        d.actions
    );
    // A network-booting host cannot boot an ISO: it fails at once, saying what to use.
    let mut pxe = h;
    pxe.spec.bmc.as_mut().unwrap().address = "redfish://127.0.0.1/redfish/v1/Systems/1".parse().unwrap();
    let d = step(&pxe, &read(PowerState::Off), T0);
    let State::Error(e) = &d.next else {
        panic!("{:?}", d.next)
    };
    assert_eq!(e.kind, "live_iso_needs_virtual_media");
    assert!(e.message.contains("redfish-virtualmedia://"), "{}", e.message);
}
