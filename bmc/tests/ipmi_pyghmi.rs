//! The IPMI driver against pyghmi's fakebmc, the engine inside virtualbmc: unlike ipmi_sim it answers Get
//! Channel Cipher Suites (with suite 3 only), so negotiation must pick 3 from the list without trying 17.

mod support;

use std::time::{Duration, Instant};

use kiln_bmc::ipmi::CipherSuite;
use kiln_bmc::{
    Bmc, BmcAddress, BmcErrorKind, BmcOptions, BootMode, BootPersistence, BootTarget, Credentials, IpmiBmc,
    PowerAction, PowerState,
};
use kiln_tests::ipmi_loopback::PyghmiBmc;

fn opts() -> BmcOptions {
    BmcOptions {
        request_timeout: Duration::from_secs(3),
        min_request_interval: Duration::from_millis(1),
        ..Default::default()
    }
}

async fn connect(bmc: &PyghmiBmc, password: &str) -> Result<IpmiBmc, kiln_bmc::BmcError> {
    let BmcAddress::Ipmi(a) = bmc.address().parse().unwrap() else {
        unreachable!()
    };
    IpmiBmc::connect(&a, Credentials::new("admin", password), opts()).await
}

#[tokio::test]
async fn picks_suite_3_from_the_offered_list() {
    let peer = PyghmiBmc::start();
    let logs = support::capture_logs();
    let start = Instant::now();
    let bmc = connect(&peer, "password").await.unwrap();
    assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
    assert_eq!(bmc.cipher_suite().await, Some(CipherSuite::Suite3));
    let endpoint = format!("127.0.0.1:{}", peer.port);
    let text: String = logs
        .text()
        .lines()
        .filter(|l| l.contains(&endpoint))
        .collect::<Vec<_>>()
        .join("\n");
    assert!(text.contains("cipher suites offered"), "{text}");
    assert!(
        !text.contains("cipher suite rejected"),
        "suite 17 was not tried: {text}"
    );
    bmc.close().await;
}

#[tokio::test]
async fn power_and_boot_device() {
    let peer = PyghmiBmc::start();
    let bmc = connect(&peer, "password").await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    bmc.set_power(PowerAction::On).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::On);
    assert!(peer.ipmitool(&["chassis", "power", "status"]).contains("on"));
    bmc.set_power(PowerAction::Off).await.unwrap();
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);

    bmc.set_boot(BootTarget::Pxe { mode: BootMode::Legacy }, BootPersistence::Once)
        .await
        .unwrap();
    assert!(
        peer.ipmitool(&["chassis", "bootparam", "get", "5"])
            .contains("Force PXE")
    );
    bmc.set_boot(BootTarget::Disk { mode: BootMode::Legacy }, BootPersistence::Once)
        .await
        .unwrap();
    assert!(
        peer.ipmitool(&["chassis", "bootparam", "get", "5"])
            .contains("Force Boot from default Hard-Drive")
    );
    bmc.close().await;
}

#[tokio::test]
async fn wrong_password() {
    let peer = PyghmiBmc::start();
    let e = connect(&peer, "Wr0ng").await.unwrap_err();
    assert_eq!(e.kind(), BmcErrorKind::Auth, "{e}");
}
