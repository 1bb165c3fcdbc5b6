//! The Redfish driver against a service with sessions, ETags and task monitors, and against faults: 503s,
//! malformed JSON, a BMC that does not answer, expired sessions, a host that ignores GracefulShutdown.

mod support;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kiln_bmc::{
    Bmc, BmcAddress, BmcError, BmcErrorKind, BmcOptions, BootMode, BootPersistence, BootTarget, Credentials,
    PowerAction, PowerState, RedfishBmc,
};
use support::mock_redfish::{self, Mock, PASSWORD, USER};

fn opts() -> BmcOptions {
    BmcOptions {
        request_timeout: Duration::from_secs(5),
        retries: 3,
        retry_backoff: Duration::from_millis(20),
        min_request_interval: Duration::from_millis(1),
        poll_interval: Duration::from_millis(50),
        graceful_off_timeout: Duration::from_millis(300),
        task_timeout: Duration::from_secs(5),
        ..Default::default()
    }
}

async fn connect_with(addr: SocketAddr, password: &str, opts: BmcOptions) -> Result<RedfishBmc, BmcError> {
    let BmcAddress::Redfish(a) = format!("redfish+http://{addr}").parse().unwrap() else {
        unreachable!()
    };
    RedfishBmc::connect(&a, Credentials::new(USER, password), opts).await
}

async fn connect(addr: SocketAddr) -> RedfishBmc {
    connect_with(addr, PASSWORD, opts()).await.unwrap()
}

#[tokio::test]
async fn one_session_reused_then_deleted() {
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    let bmc = connect(addr).await;
    assert!(bmc.uses_session());
    for _ in 0..5 {
        assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    }
    bmc.inventory().await.unwrap();
    assert_eq!(mock.lock().unwrap().sessions_created, 1);
    bmc.close().await.unwrap();
    let m = mock.lock().unwrap();
    assert_eq!((m.sessions_deleted, m.sessions.len()), (1, 0));
}

#[tokio::test]
async fn an_expired_session_is_replaced_once() {
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    let bmc = connect(addr).await;
    mock.lock().unwrap().sessions.clear(); // the BMC timed the session out
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(mock.lock().unwrap().sessions_created, 2);
    bmc.close().await.unwrap();
    assert!(mock.lock().unwrap().sessions.is_empty());
}

#[tokio::test]
async fn wrong_password_is_an_auth_error_and_leaks_no_session() {
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    let e = connect_with(addr, "Wr0ng-M0ck", opts()).await.unwrap_err();
    assert_eq!(e.kind(), BmcErrorKind::Auth, "{e}");
    let text = format!("{e} {e:?}");
    assert!(
        text.contains("Invalid user name or password"),
        "extended info surfaced: {text}"
    );
    assert!(!text.contains("Wr0ng-M0ck") && !text.contains(PASSWORD), "{text}");
    let m = mock.lock().unwrap();
    assert_eq!(
        (m.failed_logins, m.sessions.len()),
        (1, 0),
        "no retry of a failed login"
    );
}

#[tokio::test]
async fn dropping_without_close_still_deletes_the_session() {
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    drop(connect(addr).await);
    for _ in 0..100 {
        if mock.lock().unwrap().sessions.is_empty() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("the session of a dropped driver was not deleted");
}

#[tokio::test]
async fn boot_override_sends_if_match_when_required() {
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    let bmc = connect(addr).await;
    bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    {
        let m = mock.lock().unwrap();
        assert_eq!(m.boot_target, "Pxe");
        assert_eq!(m.patches, 2, "one 428 without If-Match, then one with it");
    }
    // A System without BootSourceOverrideMode: the mode is not ours to set, the device is in place already.
    bmc.set_boot(BootTarget::Pxe { mode: BootMode::Legacy }, BootPersistence::Once)
        .await
        .unwrap();
    assert_eq!(mock.lock().unwrap().patches, 2, "nothing to change: no PATCH");
    // Someone else changed the System since our last call: the ETag read just before the PATCH is used.
    mock.lock().unwrap().etag += 10;
    bmc.set_boot(BootTarget::Disk { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .unwrap();
    assert_eq!(mock.lock().unwrap().boot_target, "Hdd");
    // A refusal carries the service's @Message.ExtendedInfo.
    let e = bmc
        .set_boot(BootTarget::UefiHttp, BootPersistence::Once)
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::Http { status: 400, .. }), "{e}");
    assert!(e.to_string().contains("Base.1.8.PropertyValueNotInList"), "{e}");
    bmc.close().await.unwrap();
}

/// HPE iLO 5 (and iDRAC before 4.x) treat `BootSourceOverrideMode` as read-only and refuse any PATCH that names it:
/// kiln sends the mode only when it must change, and a needed change that is refused says what to do.
#[tokio::test]
async fn a_read_only_boot_mode_is_not_sent_and_a_needed_change_is_explained() {
    let (addr, mock) = mock_redfish::start(Mock {
        boot_mode: Some("UEFI"),
        boot_mode_read_only: true,
        ..Mock::default()
    })
    .await;
    let bmc = connect(addr).await;
    bmc.set_boot(BootTarget::Pxe { mode: BootMode::Uefi }, BootPersistence::Once)
        .await
        .expect("the mode already matches: not sent, and the boot override is set");
    assert_eq!(mock.lock().unwrap().boot_target, "Pxe");
    let e = bmc
        .set_boot(BootTarget::Disk { mode: BootMode::Legacy }, BootPersistence::Once)
        .await
        .unwrap_err();
    let text = e.to_string();
    assert!(
        matches!(e, BmcError::Unsupported { .. }) && text.contains("UEFI mode") && text.contains("BIOS"),
        "{text}"
    );
    // A BMC where the mode is writable gets it when it must change.
    let (addr, mock) = mock_redfish::start(Mock {
        boot_mode: Some("UEFI"),
        ..Mock::default()
    })
    .await;
    connect(addr)
        .await
        .set_boot(BootTarget::Pxe { mode: BootMode::Legacy }, BootPersistence::Once)
        .await
        .unwrap();
    assert_eq!(mock.lock().unwrap().boot_mode, Some("Legacy"));
}

#[tokio::test]
async fn graceful_off_falls_back_to_force_off() {
    let (addr, mock) = mock_redfish::start(Mock {
        power: "On",
        ..Default::default()
    })
    .await;
    let bmc = connect(addr).await;
    let start = Instant::now();
    bmc.set_power(PowerAction::Off).await.unwrap();
    assert!(
        start.elapsed() >= Duration::from_millis(250),
        "waited for the graceful shutdown"
    );
    assert_eq!(mock.lock().unwrap().resets, ["GracefulShutdown", "ForceOff"]);
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    bmc.close().await.unwrap();
}

#[tokio::test]
async fn reset_honours_the_allowable_values() {
    // Only On, ForceOff and GracefulShutdown are allowed: a reset becomes ForceOff, wait, On.
    let (addr, mock) = mock_redfish::start(Mock {
        power: "On",
        ..Default::default()
    })
    .await;
    let bmc = connect(addr).await;
    bmc.set_power(PowerAction::Reset).await.unwrap();
    assert_eq!(mock.lock().unwrap().resets, ["ForceOff", "On"]);
    bmc.set_power(PowerAction::Cycle).await.unwrap();
    assert_eq!(mock.lock().unwrap().resets, ["ForceOff", "On", "ForceOff", "On"]);
    bmc.close().await.unwrap();

    let (addr, mock) = mock_redfish::start(Mock {
        allowed_resets: vec!["ForceOn", "ForceOff", "ForceRestart"],
        ..Default::default()
    })
    .await;
    let bmc = connect(addr).await;
    bmc.set_power(PowerAction::On).await.unwrap();
    assert_eq!(mock.lock().unwrap().resets, ["ForceOn"]);
    let e = bmc.set_power(PowerAction::Off).await;
    assert!(e.is_ok(), "no GracefulShutdown: Off is a ForceOff: {e:?}");
    assert_eq!(mock.lock().unwrap().resets, ["ForceOn", "ForceOff"]);
    bmc.close().await.unwrap();
}

#[tokio::test]
async fn virtual_media_under_the_manager_with_a_task_monitor() {
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    let bmc = connect(addr).await;
    assert!(bmc.capabilities().virtual_media);
    bmc.insert_media("http://10.0.0.1/boot.iso").await.unwrap();
    {
        let m = mock.lock().unwrap();
        assert_eq!(m.image.as_deref(), Some("http://10.0.0.1/boot.iso"));
        assert_eq!(m.task_polls, 3, "the task monitor was polled to completion");
    }
    bmc.insert_media("http://10.0.0.1/boot.iso").await.unwrap();
    assert_eq!(mock.lock().unwrap().task_polls, 3, "same image: nothing sent");
    bmc.eject_media().await.unwrap();
    assert_eq!(mock.lock().unwrap().image, None);
    let inv = bmc.inventory().await.unwrap();
    assert_eq!((inv.processor_count, inv.memory_mib), (Some(2), Some(8192)));
    bmc.close().await.unwrap();
}

#[tokio::test]
async fn service_unavailable_is_retried_with_backoff() {
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    let bmc = connect(addr).await;
    let gets = mock.lock().unwrap().system_gets;
    mock.lock().unwrap().fail_next_503 = 2;
    assert_eq!(bmc.power_state().await.unwrap(), PowerState::Off);
    assert_eq!(mock.lock().unwrap().system_gets, gets + 3);

    mock.lock().unwrap().fail_next_503 = 100;
    let e = bmc.power_state().await.unwrap_err();
    assert!(matches!(e, BmcError::Http { status: 503, .. }), "{e}");
    assert!(e.is_transient());
    assert_eq!(
        mock.lock().unwrap().system_gets,
        gets + 3 + 4,
        "retries: 3, so 4 attempts"
    );
    mock.lock().unwrap().fail_next_503 = 0;
    bmc.close().await.unwrap();
}

#[tokio::test]
async fn malformed_json_is_a_clear_protocol_error() {
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    let bmc = connect(addr).await;
    mock.lock().unwrap().malformed = true;
    let e = bmc.power_state().await.unwrap_err();
    assert_eq!(e.kind(), BmcErrorKind::Protocol, "{e}");
    assert!(e.to_string().contains("malformed JSON"), "{e}");
    mock.lock().unwrap().malformed = false;
    bmc.close().await.unwrap();
}

#[tokio::test]
async fn a_silent_bmc_times_out_within_the_budget() {
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    let quick = BmcOptions {
        request_timeout: Duration::from_millis(300),
        retries: 1,
        ..opts()
    };
    let bmc = connect_with(addr, PASSWORD, quick).await.unwrap();
    mock.lock().unwrap().hang = true;
    let start = Instant::now();
    let e = bmc.power_state().await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, BmcError::Timeout { .. }), "{e}");
    assert!(e.is_transient());
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(2),
        "{took:?}"
    );
}

#[tokio::test]
async fn nothing_listening_is_a_connect_error() {
    let port = support::free_tcp_port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let e = connect_with(addr, PASSWORD, BmcOptions { retries: 0, ..opts() })
        .await
        .unwrap_err();
    assert!(matches!(e, BmcError::Connect { .. }), "{e}");
    assert_eq!(e.kind(), BmcErrorKind::Unreachable);
}

#[tokio::test]
async fn a_connect_timeout_is_a_retried_connect_error() {
    // A listener whose accept queue is full and never drained: the kernel drops further SYNs, so connecting
    // times out (a hung BMC's TCP stack) without any traffic leaving loopback.
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(1).unwrap();
    let addr = listener.local_addr().unwrap();
    let mut fillers = Vec::new();
    for _ in 0..4 {
        if let Ok(Ok(s)) = tokio::time::timeout(Duration::from_millis(200), tokio::net::TcpStream::connect(addr)).await
        {
            fillers.push(s);
        }
    }
    let quick = BmcOptions {
        connect_timeout: Duration::from_millis(300),
        retries: 2,
        ..opts()
    };
    let start = Instant::now();
    let e = connect_with(addr, PASSWORD, quick).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, BmcError::Connect { .. }), "{e}");
    assert!(e.is_transient());
    assert!(took >= Duration::from_millis(900), "three attempts of 300 ms: {took:?}");
    drop((listener, fillers));
}

/// Something else listening on loopback that records what reaches it (it must be nothing).
async fn witness() -> (SocketAddr, std::sync::Arc<std::sync::Mutex<Vec<String>>>) {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let s = seen.clone();
    let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
        let s = s.clone();
        async move {
            s.lock()
                .unwrap()
                .push(format!("{} {} {:?}", req.method(), req.uri(), req.headers()));
            "{}"
        }
    });
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (addr, seen)
}

/// A BMC-supplied URL on another origin (port) is refused before anything is sent to it: the password of a
/// session login never leaves the BMC's origin.
#[tokio::test]
async fn a_session_link_to_another_origin_is_refused() {
    let (elsewhere, seen) = witness().await;
    let (addr, mock) = mock_redfish::start(Mock {
        sessions_link: format!("http://{elsewhere}/redfish/v1/SessionService/Sessions"),
        ..Mock::default()
    })
    .await;
    let e = connect_with(addr, PASSWORD, opts()).await.unwrap_err();
    assert!(e.to_string().contains("refusing the BMC-supplied URL"), "{e}");
    assert!(e.to_string().contains("not on the BMC's origin"), "{e}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "sent to another origin: {:?}",
        seen.lock().unwrap()
    );
    assert_eq!(mock.lock().unwrap().sessions_created, 0);
}

/// A redirect to another origin is refused: the session token is not carried there.
#[tokio::test]
async fn a_redirect_to_another_origin_is_refused() {
    let (elsewhere, seen) = witness().await;
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    let bmc = connect(addr).await;
    mock.lock().unwrap().redirect_system_to = Some(format!("http://{elsewhere}/redfish/v1/Systems/1"));
    let e = bmc.power_state().await.unwrap_err();
    assert!(e.to_string().contains("refusing a redirect"), "{e}");
    assert!(
        seen.lock().unwrap().is_empty(),
        "followed to another origin: {:?}",
        seen.lock().unwrap()
    );
    mock.lock().unwrap().redirect_system_to = None;
    bmc.close().await.unwrap();
}

/// A response body beyond the cap is refused, not buffered.
#[tokio::test]
async fn an_endless_body_is_refused() {
    let (addr, mock) = mock_redfish::start(Mock::default()).await;
    let bmc = connect(addr).await;
    mock.lock().unwrap().pad_system = 17 << 20;
    let e = bmc.power_state().await.unwrap_err();
    assert!(e.to_string().contains("exceeds 16 MiB"), "{e}");
    mock.lock().unwrap().pad_system = 0;
    bmc.close().await.unwrap();
}
