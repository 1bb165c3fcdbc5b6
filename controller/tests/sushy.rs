//! The appliance against a real Redfish peer: sushy-emulator (fake driver) on loopback, driven through kiln-bmc's
//! drivers by the executor. Registration reads power over Redfish, a power request reaches the emulator, and wrong
//! credentials end in an actionable registration error without the password leaking.

use std::sync::Arc;
use std::time::Duration;

use kiln::server::{Appliance, Config};
use kiln_engine::machine::Policy;
use kiln_tests::sushy_loopback::{FakeSystem, NODE0, NODE7, Sushy};
use serde_json::{Value, json};

async fn api(
    c: &reqwest::Client,
    base: &str,
    token: &str,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut r = c.request(method, format!("{base}{path}")).bearer_auth(token);
    if let Some(b) = body {
        r = r.json(&b);
    }
    let resp = r.send().await.unwrap();
    let s = resp.status().as_u16();
    (s, resp.json().await.unwrap_or(Value::Null))
}

/// `kiln serve` in-process with the real BMC drivers and fast polls, on a loopback port.
struct RunningAppliance {
    dir: tempfile::TempDir,
    token: String,
    base: String,
    stop_tx: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
}

async fn appliance(attempts: u32) -> RunningAppliance {
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: dir.path().to_path_buf(),
        policy: Policy {
            idle_poll_secs: 1,
            busy_poll_secs: 1,
            backoff_base_secs: 1,
            max_retries: attempts - 1,
            ..Policy::default()
        },
        ..Config::default()
    };
    let app = Appliance::open(cfg, Arc::new(kiln_engine::drivers::Drivers::default()))
        .await
        .unwrap();
    let token = app.state.admin_token.expose().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("https://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kiln::server::run(app, listener, async {
        let _ = stop_rx.await;
    }));
    RunningAppliance {
        dir,
        token,
        base,
        stop_tx,
        server,
    }
}

#[tokio::test]
async fn executor_registers_and_powers_a_redfish_host_and_reports_bad_credentials() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sushy = Sushy::start(("admin", "s3cret-redfish"));
    let RunningAppliance {
        dir: _dir,
        token,
        base,
        stop_tx,
        server,
    } = appliance(1 + Policy::default().max_retries).await;
    let c = kiln_tests::inproc::https_client(_dir.path());

    let enroll = |name: &str, system: &FakeSystem, password: &str| json!({ "name": name, "bmc": { "address": sushy.address_of(system), "username": "admin", "password": password }, "options": { "inspect": false } });
    let (s, b) = api(
        &c,
        &base,
        &token,
        reqwest::Method::POST,
        "/api/v1/hosts",
        Some(enroll("node-0", &NODE0, "s3cret-redfish")),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, _) = api(
        &c,
        &base,
        &token,
        reqwest::Method::POST,
        "/api/v1/hosts",
        Some(enroll("node-bad", &NODE7, "wrong-password")),
    )
    .await;
    assert_eq!(s, 201);

    let wait = |name: &'static str, pred: fn(&Value) -> bool| {
        let (c, base, token) = (c.clone(), base.clone(), token.clone());
        async move {
            let mut last = Value::Null;
            for _ in 0..300 {
                let (_, h) = api(
                    &c,
                    &base,
                    &token,
                    reqwest::Method::GET,
                    &format!("/api/v1/hosts/{name}"),
                    None,
                )
                .await;
                if pred(&h) {
                    return h;
                }
                last = h;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            panic!("{name}: condition never met; last {last}");
        }
    };
    let h = wait("node-0", |h| h["state"] == "available").await;
    assert_eq!(h["power"], "off", "power read over Redfish");
    let bad = wait("node-bad", |h| h["state"] == "error").await;
    assert_eq!(bad["error"]["kind"], "bmc_auth", "{bad}");
    assert!(
        bad["error"]["message"].as_str().unwrap().contains("credentials"),
        "{bad}"
    );
    assert!(!bad.to_string().contains("wrong-password"));

    // A power request reaches the emulator; kiln's power sync sees it applied (sushy applies it 1-11 s later).
    let (s, b) = api(
        &c,
        &base,
        &token,
        reqwest::Method::POST,
        "/api/v1/hosts/node-0/power",
        Some(json!({ "action": "on" })),
    )
    .await;
    assert_eq!(s, 202, "{b}");
    let _ = wait("node-0", |h| h["power"] == "on").await;
    let (_, ev) = api(
        &c,
        &base,
        &token,
        reqwest::Method::GET,
        "/api/v1/hosts/node-0/events",
        None,
    )
    .await;
    assert!(ev.to_string().contains("registering -> available"), "{ev}");
    let m = c
        .get(format!("{base}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        m.contains("kiln_bmc_calls_total{op=\"set_power\",outcome=\"ok\"} 1"),
        "{m}"
    );

    stop_tx.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(!sushy.log().is_empty());
}

/// Per-host TLS settings reach the Redfish driver: behind a self-signed certificate (sushy-emulator with TLS), the
/// host enrolled with verification disabled registers, and the one that verifies fails with an error that says the
/// certificate is the problem and how to accept it.
#[tokio::test]
async fn per_host_tls_verification_reaches_the_redfish_driver() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sushy = Sushy::start_tls(("admin", "tls-redfish-pw"));
    let RunningAppliance {
        dir: _dir,
        token,
        base,
        stop_tx,
        server,
    } = appliance(1).await;
    let c = kiln_tests::inproc::https_client(_dir.path());
    let post = |body: Value| api(&c, &base, &token, reqwest::Method::POST, "/api/v1/hosts", Some(body));
    let (s, b) = post(
        json!({ "name": "insecure", "bmc": { "address": sushy.address_of(&NODE0), "username": "admin",
        "password": "tls-redfish-pw", "disable_certificate_verification": true }, "options": { "inspect": false } }),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    assert_eq!(b["bmc"]["tls"]["disable_certificate_verification"], true, "{b}");
    let (s, b) = post(
        json!({ "name": "verifying", "bmc": { "address": sushy.address_of(&NODE7), "username": "admin",
        "password": "tls-redfish-pw" }, "options": { "inspect": false } }),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, b) = post(
        json!({ "name": "bad-ca", "bmc": { "address": sushy.address_of(&NODE0), "username": "admin",
        "password": "x", "ca_cert": "not a pem" } }),
    )
    .await;
    assert_eq!((s, b["field"].as_str()), (422, Some("bmc.ca_cert")), "{b}");

    let get = |name: &'static str| {
        let (c, base, token) = (c.clone(), base.clone(), token.clone());
        async move {
            api(
                &c,
                &base,
                &token,
                reqwest::Method::GET,
                &format!("/api/v1/hosts/{name}"),
                None,
            )
            .await
            .1
        }
    };
    let mut last = (Value::Null, Value::Null);
    for _ in 0..600 {
        last = (get("insecure").await, get("verifying").await);
        if last.0["state"] == "available" && last.1["state"] == "error" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let (ok, refused) = last;
    assert_eq!(ok["state"], "available", "{ok}");
    assert_eq!(refused["state"], "error", "{refused}");
    let msg = refused["error"]["message"].as_str().unwrap_or_default().to_lowercase();
    assert!(msg.contains("certificate") && msg.contains("tls"), "{refused}");
    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}
