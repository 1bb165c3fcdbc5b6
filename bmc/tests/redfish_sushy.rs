//! The Redfish driver against a real peer: sushy-tools' fake driver on loopback (installed by tests/setup.sh).
//! Power changes land 1-11 s after sushy accepts them, so these tests poll.

mod support;

use std::time::Duration;

use kiln_bmc::{
    AnyBmc, Bmc, BmcAddress, BmcError, BmcErrorKind, BmcOptions, BootMode, BootPersistence, BootTarget, Credentials,
    PowerAction, PowerState, RedfishBmc,
};
use kiln_tests::sushy_loopback::{NODE0, NODE1, Sushy, SushyOptions};

fn opts() -> BmcOptions {
    BmcOptions {
        request_timeout: Duration::from_secs(10),
        retry_backoff: Duration::from_millis(50),
        min_request_interval: Duration::from_millis(5),
        poll_interval: Duration::from_millis(250),
        graceful_off_timeout: Duration::from_secs(30),
        ..Default::default()
    }
}

fn creds() -> Credentials {
    Credentials::new("admin", "password")
}

async fn connect(address: &str) -> Result<RedfishBmc, BmcError> {
    match address.parse::<BmcAddress>().unwrap() {
        BmcAddress::Redfish(a) => RedfishBmc::connect(&a, creds(), opts()).await,
        other => panic!("not redfish: {other}"),
    }
}

async fn wait_power(bmc: &impl Bmc<Error = BmcError>, want: PowerState) {
    let start = tokio::time::Instant::now();
    loop {
        if bmc.power_state().await.unwrap() == want {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(40),
            "power did not become {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Reads a resource straight from sushy, bypassing the driver.
async fn raw_get(sushy: &Sushy, path: &str) -> serde_json::Value {
    let url = format!("http://127.0.0.1:{}{path}", sushy.port);
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

#[tokio::test]
async fn discovers_the_only_system_and_its_capabilities() {
    let sushy = Sushy::start_with(&[NODE0], SushyOptions::default());
    let bmc = connect(&sushy.address(None)).await.unwrap();
    assert_eq!(bmc.system_path(), format!("/redfish/v1/Systems/{}", NODE0.uuid));
    assert!(!bmc.uses_session(), "sushy has no SessionService: basic auth");
    let caps = bmc.capabilities();
    assert!(caps.virtual_media && caps.uefi_http_boot && caps.inventory, "{caps:?}");
    bmc.close().await.unwrap();
}

#[tokio::test]
async fn system_by_name_follows_the_redirect() {
    let sushy = Sushy::start_with(&[NODE0], SushyOptions::default());
    let bmc = connect(&sushy.address(Some(NODE0.name))).await.unwrap();
    assert_eq!(bmc.system_path(), format!("/redfish/v1/Systems/{}", NODE0.uuid));
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test]
async fn ambiguous_and_missing_systems() {
    let sushy = Sushy::start_with(&[NODE0, NODE1], SushyOptions::default());
    let e = connect(&sushy.address(None)).await.unwrap_err();
    let BmcError::AmbiguousSystem { systems, .. } = &e else {
        panic!("{e}")
    };
    assert_eq!(systems.len(), 2, "{e}");
    assert!(e.to_string().contains(NODE0.uuid), "{e}");

    let e = connect(&sushy.address(Some("no-such-node"))).await.unwrap_err();
    assert!(matches!(e, BmcError::NotFound { .. }), "{e}");
    assert!(e.to_string().contains("no-such-node"), "{e}");
    assert!(!e.is_transient());
}

#[tokio::test]
async fn power_on_and_force_off_are_idempotent() {
    let sushy = Sushy::start_with(&[NODE0], SushyOptions::default());
    let bmc = connect(&sushy.address(Some(NODE0.uuid))).await.unwrap();
    let resets = || sushy.count_requests("ComputerSystem.Reset");

    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    bmc.set_power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(resets(), 0, "ForceOff of an off host sends nothing");

    bmc.set_power(PowerAction::On).await.unwrap();
    assert_eq!(resets(), 1);
    wait_power(&bmc, PowerState::On).await;
    bmc.set_power(PowerAction::On).await.unwrap();
    assert_eq!(resets(), 1, "On of an on host sends nothing");

    bmc.set_power(PowerAction::ForceOff).await.unwrap();
    wait_power(&bmc, PowerState::Off).await;
    assert_eq!(resets(), 2);
}

#[tokio::test]
async fn graceful_off_and_reset() {
    let sushy = Sushy::start_with(&[NODE1], SushyOptions::default());
    let bmc = connect(&sushy.address(Some(NODE1.name))).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    // Reset of a running host is a ForceRestart: accepted, the host stays (or comes back) on.
    bmc.set_power(PowerAction::Reset).await.unwrap();
    wait_power(&bmc, PowerState::On).await;
    // Graceful off waits for the host to go off (sushy's fake honours GracefulShutdown).
    bmc.set_power(PowerAction::Off).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
}

#[tokio::test]
async fn boot_override_once_and_persistent() {
    let sushy = Sushy::start_with(&[NODE0], SushyOptions::default());
    let bmc = connect(&sushy.address(None)).await.unwrap();
    let system = format!("/redfish/v1/Systems/{}", NODE0.uuid);
    let patches = || sushy.count_requests("\"PATCH ");

    bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    let boot = &raw_get(&sushy, &system).await["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Pxe");
    assert_eq!(boot["BootSourceOverrideMode"], "UEFI");

    bmc.set_boot(BootTarget::Disk { mode: BootMode::Legacy }, BootPersistence::Persistent)
        .await
        .unwrap();
    let boot = &raw_get(&sushy, &system).await["Boot"];
    assert_eq!(boot["BootSourceOverrideTarget"], "Hdd");
    assert_eq!(boot["BootSourceOverrideMode"], "Legacy");
    let before = patches();
    bmc.set_boot(BootTarget::Disk { mode: BootMode::Legacy }, BootPersistence::Persistent)
        .await
        .unwrap();
    assert_eq!(patches(), before, "setting what is in place sends no PATCH");

    bmc.set_boot(BootTarget::UefiHttp, BootPersistence::Once).await.unwrap();
    // sushy's fake driver accepts UefiHttp but stores it as network boot and reads back "Pxe".
    let target = raw_get(&sushy, &system).await["Boot"]["BootSourceOverrideTarget"].clone();
    assert!(target == "UefiHttp" || target == "Pxe", "{target}");
    bmc.set_boot(BootTarget::VirtualCd { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    assert_eq!(raw_get(&sushy, &system).await["Boot"]["BootSourceOverrideTarget"], "Cd");
}

#[tokio::test]
async fn virtual_media_insert_and_eject() {
    install_crypto();
    let sushy = Sushy::start_with(&[NODE0], SushyOptions::default());
    let (base, server) = support::serve_file(b"not really an ISO").await;
    let image = format!("{base}/kiln.iso");
    let bmc = connect(&sushy.address(None)).await.unwrap();
    let cd = format!("/redfish/v1/Systems/{}/VirtualMedia/Cd", NODE0.uuid);

    bmc.eject_media().await.unwrap();
    bmc.insert_media(&image).await.unwrap();
    let media = raw_get(&sushy, &cd).await;
    assert_eq!(media["Inserted"], true, "{media}");
    assert_eq!(media["Image"], image.as_str());
    let inserts = sushy.count_requests("InsertMedia");
    bmc.insert_media(&image).await.unwrap();
    assert_eq!(
        sushy.count_requests("InsertMedia"),
        inserts,
        "inserting the same image again sends nothing"
    );

    bmc.eject_media().await.unwrap();
    assert_eq!(raw_get(&sushy, &cd).await["Inserted"], false);
    bmc.eject_media().await.unwrap();
    server.abort();
}

#[tokio::test]
async fn inventory_copes_with_absent_collections() {
    let sushy = Sushy::start_with(&[NODE0], SushyOptions::default());
    let bmc = connect(&sushy.address(None)).await.unwrap();
    let inv = bmc.inventory().await.unwrap();
    assert_eq!(inv.manufacturer.as_deref(), Some("Sushy Emulator"));
    assert_eq!(inv.uuid.as_deref(), Some(NODE0.uuid));
    assert_eq!(inv.nic_macs, vec![NODE0.mac.to_string()]);
}

#[tokio::test]
async fn basic_auth_and_wrong_credentials() {
    let sushy = Sushy::start_with(
        &[NODE0],
        SushyOptions {
            users: vec![("admin".into(), "password".into())],
            tls: false,
        },
    );
    let bmc = connect(&sushy.address(None)).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);

    let address: BmcAddress = sushy.address(None).parse().unwrap();
    let wrong = Credentials::new("admin", "Wr0ng-Pa55word");
    let e = kiln_bmc::connect(&address, wrong, opts()).await.unwrap_err();
    assert_eq!(e.kind(), BmcErrorKind::Auth, "{e}");
    assert!(!e.is_transient());
    let text = format!("{e} {e:?}");
    assert!(text.contains("\"admin\""), "{text}");
    assert!(!text.contains("Wr0ng-Pa55word"), "{text}");
}

#[tokio::test]
async fn tls_verification_is_on_by_default() {
    install_crypto();
    let sushy = Sushy::start_with(
        &[NODE0],
        SushyOptions {
            users: vec![],
            tls: true,
        },
    );
    let address: BmcAddress = sushy.address(None).parse().unwrap();

    let e = kiln_bmc::connect(&address, creds(), opts()).await.unwrap_err();
    assert!(
        matches!(e, BmcError::Tls { .. }),
        "{e}: {:?}",
        std::error::Error::source(&e)
    );
    assert!(!e.is_transient());

    let trusted = BmcOptions {
        ca_bundle_pem: Some(sushy.ca_pem()),
        ..opts()
    };
    let bmc = kiln_bmc::connect(&address, creds(), trusted).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);

    let insecure = BmcOptions {
        disable_certificate_verification: true,
        ..opts()
    };
    let bmc: AnyBmc = kiln_bmc::connect(&address, creds(), insecure).await.unwrap();
    assert_eq!(bmc.protocol(), "redfish");
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
}
