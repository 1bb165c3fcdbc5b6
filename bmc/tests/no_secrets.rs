//! Passwords and session tokens never reach logs or error messages: every flow below runs with tracing at
//! TRACE for all targets (the `log` records of reqwest/hyper bridged in), then the capture (shared by the tests
//! of this binary, so each check also covers the others' flows) and the errors' Display and Debug are searched
//! for the secrets, raw and base64-encoded (HTTP basic auth).

mod support;

use std::time::Duration;

use kiln_bmc::{Bmc, BmcAddress, BmcOptions, BootMode, BootPersistence, BootTarget, Credentials, PowerAction};
use kiln_tests::ipmi_loopback::{self, IpmiSim};
use kiln_tests::sushy_loopback::{NODE0, Sushy, SushyOptions};
use support::mock_redfish::{self, Mock};

fn opts() -> BmcOptions {
    BmcOptions {
        request_timeout: Duration::from_secs(5),
        retry_backoff: Duration::from_millis(10),
        min_request_interval: Duration::from_millis(1),
        poll_interval: Duration::from_millis(50),
        ..Default::default()
    }
}

fn base64(input: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let bytes = input.as_bytes();
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(ALPHABET[(n >> (18 - 6 * i) & 0x3F) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

fn assert_clean(haystack: &str, secrets: &[&str]) {
    assert!(!haystack.is_empty(), "nothing was logged: the capture is not working");
    for secret in secrets {
        assert!(!haystack.contains(secret), "secret {secret:?} leaked into:\n{haystack}");
    }
}

#[tokio::test]
async fn redfish_basic_auth_leaks_nothing() {
    let logs = support::capture_logs();
    let good = "G00d-Sushy-Pw";
    let wrong = "Wr0ng-Sushy-Pw";
    let sushy = Sushy::start_with(
        &[NODE0],
        SushyOptions {
            users: vec![("admin".into(), good.into())],
            tls: false,
        },
    );
    let address: BmcAddress = sushy.address(None).parse().unwrap();

    let bmc = kiln_bmc::connect(&address, Credentials::new("admin", good), opts())
        .await
        .unwrap();
    bmc.power_state().await.unwrap();
    bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    bmc.inventory().await.unwrap();
    let mut errors = String::new();
    if let Err(e) = bmc.insert_media("http://127.0.0.1:1/unreachable.iso").await {
        errors += &format!("{e} {e:?}\n");
    }
    bmc.close().await.unwrap();
    let e = kiln_bmc::connect(&address, Credentials::new("admin", wrong), opts())
        .await
        .unwrap_err();
    errors += &format!("{e} {e:?}\n");

    let all = logs.text() + &errors;
    assert!(all.contains("redfish request"), "driver logs captured");
    assert!(
        all.contains("hyper") || all.contains("reqwest"),
        "HTTP stack logs captured"
    );
    assert_clean(
        &all,
        &[
            good,
            wrong,
            &base64(&format!("admin:{good}")),
            &base64(&format!("admin:{wrong}")),
        ],
    );
}

#[tokio::test]
async fn redfish_sessions_leak_nothing() {
    let logs = support::capture_logs();
    let (addr, mock) = mock_redfish::start(Mock {
        power: "On",
        ..Default::default()
    })
    .await;
    let address: BmcAddress = format!("redfish+http://{addr}").parse().unwrap();
    let o = BmcOptions {
        graceful_off_timeout: Duration::from_millis(100),
        ..opts()
    };

    let bmc = kiln_bmc::connect(
        &address,
        Credentials::new(mock_redfish::USER, mock_redfish::PASSWORD),
        o.clone(),
    )
    .await
    .unwrap();
    mock.lock().unwrap().sessions.clear(); // force a second login
    bmc.set_power(PowerAction::Off).await.unwrap();
    bmc.insert_media("http://10.0.0.1/x.iso").await.unwrap();
    let tokens: Vec<String> = mock.lock().unwrap().sessions.keys().cloned().collect();
    bmc.close().await.unwrap();
    let e = kiln_bmc::connect(&address, Credentials::new(mock_redfish::USER, "Wr0ng-M0ck-Pw"), o)
        .await
        .unwrap_err();
    let all = logs.text() + &format!("{e} {e:?}");
    assert_eq!(tokens.len(), 1);
    let mut secrets = vec![mock_redfish::PASSWORD, "Wr0ng-M0ck-Pw", "token-"];
    secrets.extend(tokens.iter().map(String::as_str));
    assert_clean(&all, &secrets);
}

#[tokio::test]
async fn ipmi_leaks_nothing() {
    let logs = support::capture_logs();
    let sim = IpmiSim::start();
    let address: BmcAddress = sim.address().parse().unwrap();
    let bmc = kiln_bmc::connect(
        &address,
        Credentials::new(ipmi_loopback::IPMI_USER, ipmi_loopback::IPMI_PASSWORD),
        opts(),
    )
    .await
    .unwrap();
    bmc.set_power(PowerAction::On).await.unwrap();
    bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    bmc.close().await.unwrap();
    let e = kiln_bmc::connect(
        &address,
        Credentials::new(ipmi_loopback::IPMI_USER, "Wr0ng-Ipmi-Pw"),
        opts(),
    )
    .await
    .unwrap_err();
    let all = logs.text() + &format!("{e} {e:?}");
    assert!(all.contains("IPMI session open"), "driver logs captured");
    assert_clean(&all, &[ipmi_loopback::IPMI_PASSWORD, "Wr0ng-Ipmi-Pw"]);
}
