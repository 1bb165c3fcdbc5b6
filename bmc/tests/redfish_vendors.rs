//! The Redfish driver against the vendor-profile emulator (`kiln_tests::vendor_redfish`): every kiln-bmc operation on
//! every profile, then one test per quirk asserting the request sequence it requires. Loopback only.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kiln_bmc::{
    Bmc, BmcAddress, BmcError, BmcErrorKind, BmcOptions, BootMode, BootPersistence, BootTarget, Credentials,
    PowerAction, PowerState, RedfishBmc,
};
use kiln_tests::vendor_redfish::{self, ALL, Emu, Profile, Shared, WeakIfMatch, layout};

const IMAGE: &str = "http://10.0.0.1/images/kiln-deploy.iso";

fn opts() -> BmcOptions {
    BmcOptions {
        request_timeout: Duration::from_secs(5),
        retries: 2,
        retry_backoff: Duration::from_millis(10),
        min_request_interval: Duration::from_millis(1),
        poll_interval: Duration::from_millis(20),
        graceful_off_timeout: Duration::from_secs(2),
        task_timeout: Duration::from_secs(5),
        busy_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

async fn connect_with(addr: SocketAddr, path: &str, opts: BmcOptions) -> Result<RedfishBmc, BmcError> {
    let BmcAddress::Redfish(a) = format!("redfish+http://{addr}{path}").parse().unwrap() else {
        unreachable!()
    };
    RedfishBmc::connect(
        &a,
        Credentials::new(vendor_redfish::USER, vendor_redfish::PASSWORD),
        opts,
    )
    .await
}

async fn connect(addr: SocketAddr) -> RedfishBmc {
    connect_with(addr, "", opts()).await.unwrap()
}

fn emu(shared: &Shared) -> std::sync::MutexGuard<'_, Emu> {
    shared.lock().unwrap()
}

/// The `Boot` objects of every PATCH of the System.
fn boot_patches(shared: &Shared, profile: Profile) -> Vec<serde_json::Value> {
    emu(shared)
        .requests("PATCH", layout(profile).system)
        .into_iter()
        .map(|l| l.body["Boot"].clone())
        .collect()
}

/// Waits until the emulated host's power is `want`.
async fn settle(bmc: &RedfishBmc, want: PowerState) {
    for _ in 0..100 {
        if bmc.power_state().await.unwrap() == want {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("power never became {want:?}");
}

#[tokio::test]
async fn every_operation_on_every_profile() {
    for profile in ALL {
        let (addr, shared) = vendor_redfish::start(profile, |_| {}).await;
        let l = layout(profile);
        let bmc = connect(addr).await;
        let ctx = format!("{profile:?}");
        assert_eq!(bmc.system_path(), l.system, "{ctx}");
        assert!(bmc.uses_session(), "{ctx}");
        assert!(bmc.capabilities().virtual_media, "{ctx}");

        // Power status and on.
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off, "{ctx}");
        bmc.set_power(PowerAction::On).await.unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::On, "{ctx}");
        bmc.set_power(PowerAction::On).await.unwrap();
        assert_eq!(emu(&shared).resets, ["On"], "{ctx}: On of an on host sends nothing");

        // Boot devices, once and persistent.
        let cd = if profile == Profile::SupermicroX12 {
            "UsbCd"
        } else {
            "Cd"
        };
        let persistent = if profile == Profile::Xcc { "Once" } else { "Continuous" };
        for (target, persistence, name, enabled) in [
            (
                BootTarget::Pxe { mode: BootMode::Uefi },
                BootPersistence::Once,
                "Pxe",
                "Once",
            ),
            (
                BootTarget::Disk { mode: BootMode::Uefi },
                BootPersistence::Persistent,
                "Hdd",
                persistent,
            ),
            (
                BootTarget::VirtualCd { mode: BootMode::Uefi },
                BootPersistence::Once,
                cd,
                "Once",
            ),
            (
                BootTarget::VirtualCd { mode: BootMode::Uefi },
                BootPersistence::Persistent,
                cd,
                persistent,
            ),
            (
                BootTarget::Pxe { mode: BootMode::Uefi },
                BootPersistence::Persistent,
                "Pxe",
                persistent,
            ),
            (
                BootTarget::Disk { mode: BootMode::Uefi },
                BootPersistence::Once,
                "Hdd",
                "Once",
            ),
        ] {
            bmc.set_boot(target, persistence).await.unwrap();
            let e = emu(&shared);
            assert_eq!(
                (e.boot_target.as_str(), e.boot_enabled.as_str()),
                (name, enabled),
                "{ctx}: {target}"
            );
        }
        // UEFI is in place everywhere: never sent.
        assert!(
            boot_patches(&shared, profile)
                .iter()
                .all(|b| b.get("BootSourceOverrideMode").is_none()),
            "{ctx}"
        );
        // Legacy: switched where the mode is writable, explained where it is read-only, not ours without a mode.
        let legacy = bmc
            .set_boot(BootTarget::Disk { mode: BootMode::Legacy }, BootPersistence::Once)
            .await;
        match profile {
            Profile::Ilo5 | Profile::Idrac9 => {
                let e = legacy.unwrap_err();
                assert!(matches!(e, BmcError::Unsupported { .. }), "{ctx}: {e}");
                assert!(
                    e.to_string().contains("UEFI mode") && e.to_string().contains("BootSourceOverrideMode"),
                    "{ctx}: {e}"
                );
            }
            Profile::Ilo4 => {
                legacy.unwrap();
                assert_eq!(emu(&shared).boot_mode, None, "{ctx}");
            }
            _ => {
                legacy.unwrap();
                assert_eq!(emu(&shared).boot_mode.as_deref(), Some("Legacy"), "{ctx}");
                bmc.set_boot(BootTarget::Disk { mode: BootMode::Uefi }, BootPersistence::Once)
                    .await
                    .unwrap();
                assert_eq!(emu(&shared).boot_mode.as_deref(), Some("UEFI"), "{ctx}");
            }
        }

        // Virtual media: insert (idempotent), boot from it, eject.
        bmc.insert_media(IMAGE).await.unwrap();
        assert_eq!(emu(&shared).image.as_deref(), Some(IMAGE), "{ctx}");
        let writes = emu(&shared).writes().len();
        bmc.insert_media(IMAGE).await.unwrap();
        assert_eq!(emu(&shared).writes().len(), writes, "{ctx}: same image, nothing sent");
        bmc.set_boot(BootTarget::VirtualCd { mode: BootMode::Uefi }, BootPersistence::Once)
            .await
            .unwrap();
        bmc.set_power(PowerAction::Cycle).await.unwrap();
        settle(&bmc, PowerState::On).await;
        {
            let e = emu(&shared);
            assert_eq!(e.boots.last(), Some(&"virtual-cd"), "{ctx}: {:?}", e.writes());
        }
        bmc.eject_media().await.unwrap();
        assert_eq!(emu(&shared).image, None, "{ctx}");
        bmc.eject_media().await.unwrap();

        // Inventory.
        let inv = bmc.inventory().await.unwrap();
        assert!(
            inv.manufacturer.is_some() && inv.model.is_some() && inv.serial_number.is_some(),
            "{ctx}: {inv:?}"
        );
        assert_eq!(
            (inv.processor_count, inv.memory_mib),
            (Some(2), Some(192 * 1024)),
            "{ctx}"
        );
        assert_eq!(inv.disks.len(), 1, "{ctx}");
        assert_eq!(inv.nic_macs, [l.mac], "{ctx}");

        // Graceful off, reset from off, forced off.
        bmc.set_power(PowerAction::Off).await.unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off, "{ctx}");
        let graceful = if matches!(profile, Profile::Ilo4 | Profile::Ilo5) {
            "PushPowerButton"
        } else {
            "GracefulShutdown"
        };
        assert_eq!(emu(&shared).resets.last().map(String::as_str), Some(graceful), "{ctx}");
        bmc.set_power(PowerAction::Reset).await.unwrap();
        settle(&bmc, PowerState::On).await;
        bmc.set_power(PowerAction::ForceOff).await.unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off, "{ctx}");

        // Sessions: one, deleted on close; no request ever had `//` in its path.
        bmc.close().await.unwrap();
        let e = emu(&shared);
        assert_eq!(e.open_sessions(), 0, "{ctx}");
        assert_eq!(e.requests("POST", l.sessions).len(), 1, "{ctx}");
        assert!(e.log.iter().all(|r| !r.path.contains("//")), "{ctx}");
        assert!(e.log.iter().all(|r| r.status != 404), "{ctx}: {:?}", e.writes());
    }
}

/// HPE iLO 5 and older iDRAC refuse any PATCH naming BootSourceOverrideMode (ab62d86): it is sent only when it must
/// change, and then the refusal says what to do, with iLO's detail (only in MessageArgs) in the message.
#[tokio::test]
async fn read_only_boot_mode_is_not_sent() {
    for profile in [Profile::Ilo5, Profile::Idrac9] {
        let (addr, shared) = vendor_redfish::start(profile, |_| {}).await;
        let bmc = connect(addr).await;
        bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once)
            .await
            .unwrap();
        assert_eq!(
            boot_patches(&shared, profile),
            [serde_json::json!({"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"})]
        );
        let e = bmc
            .set_boot(BootTarget::Pxe { mode: BootMode::Legacy }, BootPersistence::Once)
            .await
            .unwrap_err();
        let text = e.to_string();
        let detail = if profile == Profile::Ilo5 {
            "iLO.2.15.PropertyNotWritableOrUnknown [BootSourceOverrideMode]"
        } else {
            "SYS410"
        };
        assert!(matches!(e, BmcError::Unsupported { .. }), "{text}");
        assert!(
            text.contains(detail) && text.contains("UEFI mode") && text.contains("BIOS"),
            "{text}"
        );
        assert_eq!(emu(&shared).boot_mode.as_deref(), Some("UEFI"));
        bmc.close().await.unwrap();
    }
}

/// Lenovo XCC: 428 without If-Match (then every PATCH carries the ETag), no Continuous override (a one-time
/// override set again before every power on), and an ETag changed between read and write is re-read once.
#[tokio::test]
async fn xcc_if_match_and_persistent_boot_without_continuous() {
    let (addr, shared) = vendor_redfish::start(Profile::Xcc, |_| {}).await;
    let bmc = connect(addr).await;
    bmc.set_boot(BootTarget::Disk { mode: BootMode::Uefi }, BootPersistence::Persistent)
        .await
        .unwrap();
    {
        let e = emu(&shared);
        let writes = e.writes();
        assert_eq!(writes.len(), 3, "{writes:?}");
        assert_eq!(writes[1], "PATCH /redfish/v1/Systems/1 -> 428");
        assert!(writes[2].starts_with("PATCH /redfish/v1/Systems/1 If-Match:\"") && writes[2].ends_with("-> 204"));
        assert_eq!((e.boot_target.as_str(), e.boot_enabled.as_str()), ("Hdd", "Once"));
    }
    assert!(
        boot_patches(&shared, Profile::Xcc)
            .iter()
            .all(|b| b["BootSourceOverrideEnabled"] != "Continuous")
    );
    // Every boot finds the override in place again.
    bmc.set_power(PowerAction::On).await.unwrap();
    assert_eq!(emu(&shared).boot_enabled, "Disabled", "the one-time override was used");
    bmc.set_power(PowerAction::Cycle).await.unwrap();
    bmc.set_power(PowerAction::Reset).await.unwrap();
    assert_eq!(emu(&shared).boots, ["disk", "disk", "disk"]);

    // Virtual media by PATCH: If-Match from the start now; a concurrent change makes it 412, re-read, retried.
    let before = emu(&shared).log.len();
    emu(&shared).concurrent_changes = 2;
    bmc.insert_media(IMAGE).await.unwrap();
    let media: Vec<String> = emu(&shared).log[before..]
        .iter()
        .filter(|r| r.method == "PATCH")
        .map(|r| r.to_string())
        .collect();
    assert_eq!(media.len(), 2, "{media:?}");
    assert!(
        media[0].contains("If-Match:") && media[0].ends_with("-> 412"),
        "{media:?}"
    );
    assert!(
        media[1].contains("If-Match:") && media[1].ends_with("-> 204"),
        "{media:?}"
    );
    assert_ne!(media[0], media[1].replace("204", "412"), "a new ETag was read");
    assert_eq!(emu(&shared).image.as_deref(), Some(IMAGE));
    bmc.eject_media().await.unwrap();
    assert_eq!(emu(&shared).image, None);
    bmc.close().await.unwrap();
}

/// Where the AllowableValues do not say that Continuous is refused, the refusal itself leads to the one-time
/// override (Ironic's fallback).
#[tokio::test]
async fn continuous_refused_falls_back_to_once() {
    let (addr, shared) = vendor_redfish::start(Profile::Xcc, |e| e.advertise_enabled_values = false).await;
    let bmc = connect(addr).await;
    bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Persistent)
        .await
        .unwrap();
    let enabled: Vec<serde_json::Value> = boot_patches(&shared, Profile::Xcc)
        .iter()
        .map(|b| b["BootSourceOverrideEnabled"].clone())
        .collect();
    assert_eq!(
        enabled,
        ["Continuous", "Continuous", "Once"],
        "{:?}",
        emu(&shared).writes()
    );
    bmc.set_power(PowerAction::On).await.unwrap();
    bmc.set_power(PowerAction::ForceOff).await.unwrap();
    bmc.set_power(PowerAction::On).await.unwrap();
    assert_eq!(emu(&shared).boots, ["pxe", "pxe"]);
    // A one-time override replaces the emulated persistent one.
    bmc.set_boot(BootTarget::Disk { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    bmc.set_power(PowerAction::Cycle).await.unwrap();
    bmc.set_power(PowerAction::Cycle).await.unwrap();
    assert_eq!(emu(&shared).boots, ["pxe", "pxe", "disk", "default"]);
    bmc.close().await.unwrap();
}

/// AMI/Gigabyte serve only weak ETags: sent back as they are; where the BMC wants the strong form (412), it gets
/// it, as sushy does.
#[tokio::test]
async fn weak_etags_are_sent_as_is_then_strong() {
    let (addr, shared) = vendor_redfish::start(Profile::AmiGigabyte, |_| {}).await;
    let bmc = connect(addr).await;
    bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    assert_eq!(
        emu(&shared).writes()[1..],
        [
            "PATCH /redfish/v1/Systems/Self -> 428",
            "PATCH /redfish/v1/Systems/Self If-Match:W/\"5eed\" -> 204"
        ]
    );
    bmc.close().await.unwrap();

    let (addr, shared) =
        vendor_redfish::start(Profile::AmiGigabyte, |e| e.weak_if_match = WeakIfMatch::RequireStrong).await;
    let bmc = connect(addr).await;
    bmc.set_boot(BootTarget::Disk { mode: BootMode::Uefi }, BootPersistence::Persistent)
        .await
        .unwrap();
    assert_eq!(
        emu(&shared).writes()[1..],
        [
            "PATCH /redfish/v1/Systems/Self -> 428",
            "PATCH /redfish/v1/Systems/Self If-Match:W/\"5eed\" -> 412",
            "PATCH /redfish/v1/Systems/Self If-Match:\"5eed\" -> 204"
        ]
    );
    assert_eq!(emu(&shared).boot_target, "Hdd");
    bmc.close().await.unwrap();
}

/// Supermicro X12: InsertMedia refuses Inserted/WriteProtected (sent again with the image alone), and the virtual
/// CD boots only as UsbCd.
#[tokio::test]
async fn supermicro_insert_media_and_usb_cd() {
    let (addr, shared) = vendor_redfish::start(Profile::SupermicroX12, |_| {}).await;
    let bmc = connect(addr).await;
    bmc.insert_media(IMAGE).await.unwrap();
    let inserts = emu(&shared).requests("POST", "VirtualMedia.InsertMedia");
    let seen: Vec<(serde_json::Value, u16)> = inserts.iter().map(|r| (r.body.clone(), r.status)).collect();
    assert_eq!(
        seen,
        [
            (
                serde_json::json!({"Image": IMAGE, "Inserted": true, "WriteProtected": true}),
                400
            ),
            (serde_json::json!({"Image": IMAGE}), 204)
        ]
    );
    bmc.set_boot(BootTarget::VirtualCd { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    assert_eq!(
        boot_patches(&shared, Profile::SupermicroX12)[0]["BootSourceOverrideTarget"],
        "UsbCd"
    );
    bmc.set_power(PowerAction::On).await.unwrap();
    assert_eq!(emu(&shared).boots, ["virtual-cd"]);
    bmc.close().await.unwrap();
}

/// iLO 4 / iLO 5 1.x have no GracefulShutdown: a graceful off presses the power button, says so, and forces the
/// power off only when the OS does not react.
#[tokio::test]
async fn ilo_graceful_off_presses_the_power_button() {
    let logs = support::capture_logs();
    for profile in [Profile::Ilo4, Profile::Ilo5] {
        let (addr, shared) = vendor_redfish::start(profile, |e| e.power = "On").await;
        let bmc = connect(addr).await;
        bmc.set_power(PowerAction::Off).await.unwrap();
        assert_eq!(emu(&shared).resets, ["PushPowerButton"]);
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
        bmc.close().await.unwrap();

        let (addr, shared) = vendor_redfish::start(profile, |e| {
            e.power = "On";
            e.acpi = false;
        })
        .await;
        let quick = BmcOptions {
            graceful_off_timeout: Duration::from_millis(300),
            ..opts()
        };
        let bmc = connect_with(addr, "", quick).await.unwrap();
        bmc.set_power(PowerAction::Off).await.unwrap();
        assert_eq!(emu(&shared).resets, ["PushPowerButton", "ForceOff"]);
        bmc.close().await.unwrap();
        let text = logs.text();
        let line = text
            .lines()
            .find(|l| l.contains(&addr.to_string()) && l.contains("pressing the power button"))
            .unwrap_or_else(|| panic!("no log line says the power button was used:\n{text}"));
        assert!(line.contains("PushPowerButton"), "{line}");
    }
}

/// AMI: the inline ResetType list has two names glued together and disagrees with the ActionInfo; the ActionInfo
/// wins (PowerCycle is only there), and the malformed list is never believed.
#[tokio::test]
async fn action_info_wins_over_a_malformed_inline_list() {
    let (addr, shared) = vendor_redfish::start(Profile::AmiGigabyte, |e| e.power = "On").await;
    let bmc = connect(addr).await;
    bmc.set_power(PowerAction::Cycle).await.unwrap();
    bmc.set_power(PowerAction::Off).await.unwrap();
    assert_eq!(emu(&shared).resets, ["PowerCycle", "GracefulShutdown"]);
    bmc.close().await.unwrap();

    // Without the ActionInfo nothing is believed: each ResetType is tried, the next when one is refused.
    let (addr, shared) = vendor_redfish::start(Profile::AmiGigabyte, |e| {
        e.power = "On";
        e.action_info = false;
    })
    .await;
    let bmc = connect(addr).await;
    bmc.set_power(PowerAction::Off).await.unwrap();
    bmc.set_power(PowerAction::Reset).await.unwrap();
    assert_eq!(emu(&shared).resets, ["GracefulShutdown", "On"]);
    let posted: Vec<String> = emu(&shared)
        .requests("POST", "ComputerSystem.Reset")
        .iter()
        .map(|r| r.body["ResetType"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(
        !posted.iter().any(|t| t.contains("GracefulShutdownGracefulRestart")),
        "{posted:?}"
    );
    bmc.close().await.unwrap();
}

/// iLO's InvalidOperationForSystemState and iDRAC's SYS518 right after a power action are asked again with
/// backoff, so a power cycle does not leave the host off; for a bounded time only.
#[tokio::test]
async fn not_ready_after_a_power_action_is_retried() {
    let (addr, shared) = vendor_redfish::start(Profile::Ilo5, |e| {
        e.power = "On";
        e.not_ready_for = Duration::from_millis(400);
    })
    .await;
    let bmc = connect(addr).await;
    let start = Instant::now();
    bmc.set_power(PowerAction::Cycle).await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(350), "{:?}", start.elapsed());
    {
        let e = emu(&shared);
        assert_eq!(e.resets, ["ForceOff", "On"]);
        assert_eq!(e.power, "On", "the host is not left off");
        let refused = e
            .requests("POST", "ComputerSystem.Reset")
            .iter()
            .filter(|r| r.status == 400)
            .count();
        assert!(refused >= 1, "{:?}", e.writes());
    }
    bmc.close().await.unwrap();

    let (addr, shared) = vendor_redfish::start(Profile::Idrac9, |e| {
        e.power = "On";
        e.not_ready_for = Duration::from_millis(300);
    })
    .await;
    let bmc = connect(addr).await;
    bmc.set_power(PowerAction::Cycle).await.unwrap();
    bmc.set_power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(emu(&shared).resets, ["PowerCycle", "ForceOff"]);
    assert!(
        emu(&shared)
            .requests("POST", "ComputerSystem.Reset")
            .iter()
            .any(|r| r.status == 400)
    );
    bmc.close().await.unwrap();

    // A BMC that never gets ready: a transient Busy error after busy_timeout, naming the refusal.
    let (addr, shared) = vendor_redfish::start(Profile::Ilo4, |e| {
        e.power = "On";
        e.not_ready_for = Duration::from_secs(60);
    })
    .await;
    let bounded = BmcOptions {
        busy_timeout: Duration::from_millis(300),
        ..opts()
    };
    let bmc = connect_with(addr, "", bounded).await.unwrap();
    let start = Instant::now();
    let e = bmc.set_power(PowerAction::Cycle).await.unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(3), "{:?}", start.elapsed());
    assert!(matches!(e, BmcError::Busy { .. }) && e.is_transient(), "{e}");
    assert!(e.to_string().contains("InvalidOperationForSystemState"), "{e}");
    assert_eq!(emu(&shared).resets, ["ForceOff"]);
    bmc.close().await.unwrap();
}

/// Addresses written in lower case reach the System on every profile (iLO ignores case, the others are found in
/// the Systems collection); ids ending in `/` never produce `//` in a URL.
#[tokio::test]
async fn lower_case_paths_and_trailing_slashes() {
    for profile in ALL {
        let (addr, shared) = vendor_redfish::start(profile, |e| e.reset_target = false).await;
        let l = layout(profile);
        let bmc = connect_with(addr, &l.system.to_ascii_lowercase(), opts())
            .await
            .unwrap();
        assert_eq!(bmc.system_path(), l.system, "{profile:?}");
        bmc.set_power(PowerAction::On).await.unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::On, "{profile:?}");
        bmc.close().await.unwrap();
        let e = emu(&shared);
        let reset = e.requests("POST", "ComputerSystem.Reset");
        assert_eq!(reset.len(), 1, "{profile:?}: {:?}", e.writes());
        assert_eq!(reset[0].path, format!("{}/Actions/ComputerSystem.Reset", l.system));
        assert!(e.log.iter().all(|r| !r.path.contains("//")), "{profile:?}");
    }
    // A System that is not there is still NotFound.
    let (addr, _shared) = vendor_redfish::start(Profile::Idrac9, |_| {}).await;
    let e = connect_with(addr, "/redfish/v1/Systems/System.Embedded.2", opts())
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::NotFound { .. }), "{e}");
}

/// PoweringOn/PoweringOff are reported as such, and not acted on again.
#[tokio::test]
async fn transitional_power_states_are_typed() {
    for profile in [Profile::DmtfMockup, Profile::Ilo5] {
        let (addr, shared) = vendor_redfish::start(profile, |e| {
            e.transition = Duration::from_millis(400);
            e.not_ready_for = Duration::ZERO;
        })
        .await;
        let bmc = connect(addr).await;
        bmc.set_power(PowerAction::On).await.unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::PoweringOn, "{profile:?}");
        bmc.set_power(PowerAction::On).await.unwrap();
        assert_eq!(emu(&shared).resets, ["On"], "{profile:?}: already powering on");
        settle(&bmc, PowerState::On).await;

        // Another client starts a graceful off; this one sees the transition and does not act on it again.
        let graceful = tokio::spawn(async move {
            let bmc = connect(addr).await;
            bmc.set_power(PowerAction::Off).await.unwrap();
            bmc.close().await.unwrap();
        });
        let mut seen_powering_off = false;
        for _ in 0..50 {
            if bmc.power_state().await.unwrap() == PowerState::PoweringOff {
                seen_powering_off = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(seen_powering_off, "{profile:?}");
        bmc.set_power(PowerAction::Off).await.unwrap();
        graceful.await.unwrap();
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off, "{profile:?}");
        let resets = emu(&shared).resets.clone();
        assert_eq!(resets.len(), 2, "{profile:?}: {resets:?}");
        bmc.close().await.unwrap();
    }
}

/// UEFI HTTP boot is claimed only where the System offers it; iLO 4's plain BootSourceOverrideSupported list counts.
#[tokio::test]
async fn uefi_http_boot_only_where_offered() {
    for profile in ALL {
        let (addr, shared) = vendor_redfish::start(profile, |_| {}).await;
        let bmc = connect(addr).await;
        let offered = vendor_redfish::boot_targets(profile).contains(&"UefiHttp");
        assert_eq!(bmc.capabilities().uefi_http_boot, offered, "{profile:?}");
        let result = bmc.set_boot(BootTarget::UefiHttp, BootPersistence::Once).await;
        if offered {
            result.unwrap();
            assert_eq!(emu(&shared).boot_target, "UefiHttp", "{profile:?}");
        } else {
            let e = result.unwrap_err();
            assert_eq!(e.kind(), BmcErrorKind::Unsupported, "{profile:?}: {e}");
            assert!(
                emu(&shared).requests("PATCH", "/Systems/").is_empty(),
                "{profile:?}: nothing sent"
            );
        }
        bmc.close().await.unwrap();
    }
}

/// A full session table (iDRAC's 8 with RAC0218; a 503 elsewhere) is waited out with backoff and said so in the
/// log; a table that stays full is a transient Busy error after busy_timeout. No password or token in any of it.
#[tokio::test]
async fn a_full_session_table_is_waited_out() {
    let logs = support::capture_logs();
    for profile in [Profile::Idrac9, Profile::AmiGigabyte] {
        let (addr, shared) = vendor_redfish::start(profile, |e| e.other_sessions = e.max_sessions).await;
        let release = {
            let shared = shared.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(400)).await;
                emu(&shared).other_sessions -= 1;
            })
        };
        let start = Instant::now();
        let bmc = connect(addr).await;
        assert!(
            start.elapsed() >= Duration::from_millis(350),
            "{profile:?}: {:?}",
            start.elapsed()
        );
        release.await.unwrap();
        let logins: Vec<u16> = emu(&shared)
            .requests("POST", "/Sessions")
            .iter()
            .map(|r| r.status)
            .collect();
        let refused = if profile == Profile::Idrac9 { 400 } else { 503 };
        assert!(
            logins.len() >= 2 && logins[..logins.len() - 1].iter().all(|s| *s == refused),
            "{logins:?}"
        );
        assert_eq!(logins.last(), Some(&201));
        let tokens = emu(&shared).tokens();
        bmc.power_state().await.unwrap();
        bmc.close().await.unwrap();
        let text = logs.text();
        assert!(
            text.lines()
                .any(|l| l.contains(&addr.to_string()) && l.contains("session table is full: waiting")),
            "{profile:?}: the wait is not in the log:\n{text}"
        );
        for secret in tokens.iter().map(String::as_str).chain([vendor_redfish::PASSWORD]) {
            assert!(!text.contains(secret), "a secret reached the log");
        }
    }

    let (addr, shared) = vendor_redfish::start(Profile::Idrac9, |e| e.other_sessions = 8).await;
    let bounded = BmcOptions {
        busy_timeout: Duration::from_millis(300),
        ..opts()
    };
    let e = connect_with(addr, "", bounded).await.unwrap_err();
    assert!(matches!(e, BmcError::Busy { .. }), "{e}");
    assert!(e.is_transient() && e.kind() == BmcErrorKind::Refused, "{e}");
    let text = format!("{e} {e:?}");
    assert!(
        text.contains("session table is full") && text.contains("RAC0218"),
        "{text}"
    );
    assert!(!text.contains(vendor_redfish::PASSWORD), "{text}");
    assert_eq!(emu(&shared).open_sessions(), 0);
}
