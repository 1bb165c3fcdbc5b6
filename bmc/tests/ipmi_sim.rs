//! The IPMI driver against a real peer: OpenIPMI's ipmi_sim (RMCP+, cipher suite 3 only, never answers Get
//! Channel Cipher Suites) on loopback, cross-checked with `ipmitool -I lanplus -C 3`.

mod support;

use std::time::{Duration, Instant};

use kiln_bmc::ipmi::CipherSuite;
use kiln_bmc::{
    Bmc, BmcAddress, BmcError, BmcErrorKind, BmcOptions, BootMode, BootPersistence, BootTarget, Credentials, IpmiBmc,
    IpmiPrivilege, PowerAction, PowerState,
};
use kiln_tests::ipmi_loopback::{IPMI_PASSWORD, IPMI_USER, IpmiSim};

fn opts() -> BmcOptions {
    BmcOptions {
        request_timeout: Duration::from_secs(3),
        retries: 2,
        min_request_interval: Duration::from_millis(5),
        poll_interval: Duration::from_millis(100),
        graceful_off_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

async fn connect_with(sim: &IpmiSim, creds: Credentials, opts: BmcOptions) -> Result<IpmiBmc, BmcError> {
    match sim.address().parse::<BmcAddress>().unwrap() {
        BmcAddress::Ipmi(a) => IpmiBmc::connect(&a, creds, opts).await,
        other => panic!("not ipmi: {other}"),
    }
}

async fn connect(sim: &IpmiSim) -> IpmiBmc {
    connect_with(sim, Credentials::new(IPMI_USER, IPMI_PASSWORD), opts())
        .await
        .unwrap()
}

#[tokio::test]
async fn negotiates_suite_3_fast_and_remembers_it() {
    let sim = IpmiSim::start();
    IpmiBmc::forget_cipher_suite(&format!("127.0.0.1:{}", sim.port));
    let start = Instant::now();
    let bmc = connect(&sim).await;
    let first = start.elapsed();
    assert_eq!(bmc.cipher_suite().await, Some(CipherSuite::Suite3));
    // ipmitool's default waits 10 s for the unanswered cipher suite query; we allow ourselves 2.
    assert!(first < Duration::from_secs(2), "negotiation took {first:?}");
    bmc.close().await;

    let start = Instant::now();
    let bmc = connect(&sim).await;
    let second = start.elapsed();
    assert_eq!(bmc.cipher_suite().await, Some(CipherSuite::Suite3));
    assert!(
        second < first,
        "the remembered suite skips negotiation: {second:?} vs {first:?}"
    );
    assert!(second < Duration::from_millis(500), "{second:?}");
    bmc.close().await;
}

#[tokio::test]
async fn power_control_matches_ipmitool() {
    let sim = IpmiSim::start();
    let bmc = connect(&sim).await;
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert!(sim.ipmitool(&["chassis", "power", "status"]).contains("off"));

    bmc.set_power(PowerAction::On).await.unwrap();
    assert_eq!(sim.chassis_when(|c| c.0 == "1").0, "1");
    assert!(sim.ipmitool(&["chassis", "power", "status"]).contains("on"));
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    let log_len = sim.chassis_log().len();
    bmc.set_power(PowerAction::On).await.unwrap();
    assert!(
        !sim.chassis_log()[log_len..].iter().any(|l| l.starts_with("set")),
        "On of an on host changes nothing: {:?}",
        sim.chassis_log()
    );

    bmc.set_power(PowerAction::Reset).await.unwrap();
    assert!(sim.logged("set reset 1"), "{:?}", sim.chassis_log());
    bmc.set_power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(sim.chassis_when(|c| c.0 == "0").0, "0");
    bmc.set_power(PowerAction::ForceOff).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);

    // Power set by ipmitool is what we read.
    sim.ipmitool(&["chassis", "power", "on"]);
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    // Graceful off: ipmi_sim turns "soft" into "shutdown 1", which the script honours at once.
    bmc.set_power(PowerAction::Off).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert!(sim.logged("set shutdown 1"), "{:?}", sim.chassis_log());
    // Cycle of an off host powers it on.
    bmc.set_power(PowerAction::Cycle).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    bmc.close().await;
}

#[tokio::test]
async fn boot_device_matches_ipmitool() {
    let sim = IpmiSim::start();
    let bmc = connect(&sim).await;

    bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    assert_eq!(sim.chassis_when(|c| c.1 == "pxe").1, "pxe");
    let param5 = sim.ipmitool(&["chassis", "bootparam", "get", "5"]);
    assert!(param5.contains("Force PXE"), "{param5}");

    bmc.set_boot(BootTarget::Disk { mode: BootMode::Legacy }, BootPersistence::Persistent)
        .await
        .unwrap();
    assert_eq!(sim.chassis_when(|c| c.1 == "default").1, "default");
    bmc.set_boot(BootTarget::VirtualCd { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    assert_eq!(sim.chassis_when(|c| c.1 == "cdrom").1, "cdrom");

    // What ipmitool sets, we accept as already in place or override.
    sim.ipmitool(&["chassis", "bootdev", "pxe"]);
    assert_eq!(sim.chassis_when(|c| c.1 == "pxe").1, "pxe");
    bmc.set_boot(BootTarget::Disk { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    assert_eq!(sim.chassis_when(|c| c.1 == "default").1, "default");

    let e = bmc
        .set_boot(BootTarget::UefiHttp, BootPersistence::Once)
        .await
        .unwrap_err();
    assert_eq!(e.kind(), BmcErrorKind::Unsupported);
    assert!(bmc.insert_media("http://x/y.iso").await.is_err());
    bmc.eject_media().await.unwrap();
    bmc.close().await;
}

#[tokio::test]
async fn inventory_and_operator_privilege() {
    let sim = IpmiSim::start();
    let bmc = connect(&sim).await;
    let inv = bmc.inventory().await.unwrap();
    assert!(inv.manufacturer.is_some(), "{inv:?}");
    bmc.close().await;

    let operator = BmcOptions {
        ipmi_privilege: IpmiPrivilege::Operator,
        ..opts()
    };
    let bmc = connect_with(&sim, Credentials::new("operator", "operator-pw"), operator)
        .await
        .unwrap();
    bmc.set_power(PowerAction::On).await.unwrap();
    assert_eq!(sim.chassis_when(|c| c.0 == "1").0, "1");
    bmc.close().await;
}

#[tokio::test]
async fn wrong_credentials_are_auth_errors() {
    let sim = IpmiSim::start();
    let e = connect_with(&sim, Credentials::new(IPMI_USER, "Wr0ng-Pa55"), opts())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), BmcErrorKind::Auth, "{e}");
    assert!(!e.is_transient());
    let text = format!("{e} {e:?}");
    assert!(!text.contains("Wr0ng-Pa55") && !text.contains(IPMI_PASSWORD), "{text}");

    let e = connect_with(&sim, Credentials::new("nobody", IPMI_PASSWORD), opts())
        .await
        .unwrap_err();
    assert_eq!(e.kind(), BmcErrorKind::Auth, "{e}");

    // The BMC still serves good credentials afterwards (the failed sessions were released).
    let bmc = connect(&sim).await;
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    bmc.close().await;
}

#[tokio::test]
async fn suite_17_is_refused_by_ipmi_sim() {
    let sim = IpmiSim::start();
    let forced = BmcOptions {
        ipmi_cipher_suite: Some(17),
        ..opts()
    };
    let start = Instant::now();
    let e = connect_with(&sim, Credentials::new(IPMI_USER, IPMI_PASSWORD), forced)
        .await
        .unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(2));
    assert!(matches!(e, BmcError::SessionRejected { .. }), "{e}");
    assert!(e.to_string().contains("algorithm"), "{e}");
}

#[tokio::test]
async fn many_calls_share_one_session() {
    let mut sim = IpmiSim::start();
    let bmc = connect(&sim).await;
    for _ in 0..20 {
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    }
    // ipmi_sim's default session table is small; 20 sessions would have failed.
    bmc.close().await;
    assert!(sim.is_alive());
}
