//! kiln's web page in a real browser (Debian's Chromium, headless) against the appliance with a fake BMC and a
//! simulated agent: the page logs in with the admin token from the URL fragment, lists the hosts with their states,
//! and opens a host with its hardware, per-phase timing and events. Without a token it asks for one and shows no
//! data; the page's CSP allows only kiln's own script.

use std::process::Command;

use kiln_tests::inproc::Lab;

/// The base64 SHA-256 of the public key of kiln's server certificate, which Chromium is told to trust (as an admin
/// trusts kiln's CA in their browser).
fn server_spki(data_dir: &std::path::Path) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary \
             | base64",
        )
        .arg("sh")
        .arg(data_dir.join("tls/server.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

/// The DOM after the page's scripts ran (Chromium `--dump-dom`; virtual time lets its timers fire).
fn dump_dom(url: &str, spki: &str) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=10000",
            "--dump-dom",
        ])
        .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(url)
        .output()
        .expect("run chromium (tests/setup.sh installs it)");
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_hosts_states_and_timings_in_a_browser() {
    let lab = Lab::start(|_| {}).await;
    lab.enroll("node-1").await;
    lab.enroll("node-2").await;
    lab.wait_state("node-1", "available").await;
    lab.wait_state("node-2", "available").await;

    // Headers of the page itself.
    let r = lab.client.get(format!("{}/ui", lab.base)).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(csp.contains("script-src 'self'"), "{csp}");

    let base = lab.base.clone();
    let admin = lab.admin.clone();
    let spki = server_spki(lab.dir.path());
    let spki2 = spki.clone();
    let dom = tokio::task::spawn_blocking(move || dump_dom(&format!("{base}/ui#token={admin}&host=node-1"), &spki2))
        .await
        .unwrap();
    // The host list.
    for want in ["node-1", "node-2", "available", "52:54:00:00:00:31", "2 available"] {
        assert!(dom.contains(want), "the page lacks {want:?}:\n{dom}");
    }
    // The opened host: hardware from inspection, per-phase timing, events.
    for want in ["2 × vcpu", "2048 MiB", "inspecting.booting", "registering", "state"] {
        assert!(dom.contains(want), "the host view lacks {want:?}:\n{dom}");
    }
    assert!(
        dom.contains(r#"<form id="login" hidden="#),
        "the login form is shown while logged in"
    );
    assert!(!dom.contains(&lab.admin), "the token must not end up in the page");
    assert!(
        !dom.contains(kiln_tests::inproc::PASSWORD),
        "no BMC password in the page"
    );

    // Without a token: the login form, no data.
    let base = lab.base.clone();
    let dom = tokio::task::spawn_blocking(move || dump_dom(&format!("{base}/ui"), &spki))
        .await
        .unwrap();
    assert!(dom.contains(r#"<form id="login">"#), "no login form:\n{dom}");
    assert!(
        dom.contains(r#"<section id="hosts" hidden"#),
        "hosts shown without a token:\n{dom}"
    );
    assert!(!dom.contains("node-1"), "data shown without a token:\n{dom}");
}
