//! Findings of the security review of the provisioning network, reproduced against the real `kiln serve` binary (with
//! its netboot routes on, a host on a real Redfish peer, sushy-emulator): an iPXE script hands out a boot's agent
//! token once, a second fetch gets none and is recorded, a forged token opens nothing, a thousand script fetches add
//! a bounded number of rows, and `/boot/files` refuses a symlink out of its directory. (The listener's limits, the
//! per-source rate limit and the management/provisioning split are in `http_limits.rs`; private files in `cli.rs`.)

use std::path::Path;
use std::time::{Duration, Instant};

use kiln_tests::serve::{KilnServe, ok};
use kiln_tests::sushy_loopback::{NODE0, Sushy};
use serde_json::Value;

const MAC: &str = "52:54:00:5e:c0:01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netboot_hands_out_one_token_per_boot_and_keeps_boot_files_in_their_directory() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sushy = Sushy::start(("admin", "sec-Redfish-pw"));
    let tmp = tempfile::tempdir().unwrap();
    let (data, files, outside) = (
        tmp.path().join("data"),
        tmp.path().join("files"),
        tmp.path().join("outside"),
    );
    std::fs::create_dir_all(&files).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(files.join("vmlinuz"), b"kernel").unwrap();
    std::fs::write(files.join("initramfs"), b"initramfs").unwrap();
    std::fs::write(outside.join("secret"), b"not for the network").unwrap();
    std::os::unix::fs::symlink(outside.join("secret"), files.join("escape")).unwrap();
    let (port, boot_port) = (kiln_tests::free_port(), kiln_tests::free_port());
    let boot = format!("http://127.0.0.1:{boot_port}");
    let config = format!(
        "heartbeat_secs = 1\n\
         [policy]\nidle_poll_secs = 1\nbusy_poll_secs = 1\nboot_timeout_secs = 600\n\
         [pxe]\nstate_dir = \"{pxe}\"\n\
         [pxe.dhcp]\nmode = \"off\"\n\
         [pxe.tftp]\nenabled = false\n\
         [pxe.boot]\nhttp_base = \"{boot}\"\nfiles_dir = \"{files}\"\n\
         [agent_boot]\nkernel_url = \"{boot}/boot/files/vmlinuz\"\ninitrd_url = \"{boot}/boot/files/initramfs\"\n",
        pxe = data.join("pxe").display(),
        files = files.display(),
    );
    let bin = Path::new(env!("CARGO_BIN_EXE_kiln"));
    let _server = KilnServe::start(bin, &data, port, &config, &[]);
    let kiln = |args: &[&str]| kiln_tests::serve::cli(bin, &data, port, args);
    let pw = tmp.path().join("pw");
    std::fs::write(&pw, "sec-Redfish-pw\n").unwrap();
    ok(kiln(&[
        "host",
        "enroll",
        "node-s",
        "--bmc",
        &sushy.address_of(&NODE0),
        "--username",
        "admin",
        "--password-file",
        pw.to_str().unwrap(),
        "--boot-mac",
        MAC,
    ]));
    // Registered, then powered on to boot the agent: the boot's token is minted and waits for the script fetch.
    let t = Instant::now();
    loop {
        let h: Value = serde_json::from_str(&ok(kiln(&["host", "show", "node-s", "-o", "json"]))).unwrap();
        if h["host"]["state"] == "inspecting" && h["host"]["power"] == "on" {
            break;
        }
        assert!(t.elapsed() < Duration::from_secs(60), "never booting its agent: {h}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let http = reqwest::Client::new();
    let get = |path: String| {
        let (http, url) = (http.clone(), format!("{boot}{path}"));
        async move {
            let r = http.get(url).send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        }
    };
    let token_of = |script: &str| {
        script
            .split_whitespace()
            .find_map(|w| w.strip_prefix("kiln.token="))
            .map(str::to_owned)
    };
    // The script of this boot, with its token, once; the next fetch boots the agent without one.
    let mut first = get(format!("/boot/{MAC}.ipxe")).await;
    let t = Instant::now();
    while token_of(&first.1).is_none() {
        assert!(t.elapsed() < Duration::from_secs(10), "no token in {first:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
        first = get(format!("/boot/{MAC}.ipxe")).await;
    }
    let token = token_of(&first.1).unwrap();
    let second = get(format!("/boot/{MAC}.ipxe")).await;
    assert_eq!(second.0, 200);
    assert!(second.1.contains("kernel"), "still a boot script: {second:?}");
    assert_eq!(token_of(&second.1), None, "a second fetch got a token: {second:?}");
    let ca = reqwest::Certificate::from_pem(&std::fs::read(data.join("tls/ca.pem")).unwrap()).unwrap();
    let https = reqwest::Client::builder().add_root_certificate(ca).build().unwrap();
    let admin = std::fs::read_to_string(data.join("admin.token"))
        .unwrap()
        .trim()
        .to_owned();
    let events = || {
        let r = https
            .get(format!(
                "https://127.0.0.1:{port}/api/v1/hosts/node-s/events?limit=10000"
            ))
            .bearer_auth(&admin)
            .send();
        async move { r.await.unwrap().json::<Value>().await.unwrap() }
    };
    let seen = events().await;
    assert!(seen.to_string().contains("token_already_issued"), "{seen}");

    // The agent API: the token handed out works, a forged one and none do not.
    let heartbeat = |bearer: Option<String>| {
        let mut r = https
            .post(format!("https://127.0.0.1:{port}/agent/v1/heartbeat"))
            .json(&serde_json::json!({ "agent_version": "security-test" }));
        if let Some(b) = bearer {
            r = r.bearer_auth(b);
        }
        async move { r.send().await.unwrap().status().as_u16() }
    };
    assert_eq!(heartbeat(Some("forged-token".into())).await, 401);
    assert_eq!(heartbeat(None).await, 401);
    assert_eq!(heartbeat(Some(token)).await, 200, "the boot's own token");

    // A thousand script fetches and lookups of unknown MACs add a bounded number of rows.
    let before = events().await.as_array().unwrap().len();
    for i in 0..1000u32 {
        let mac = if i % 2 == 0 {
            MAC.to_owned()
        } else {
            format!("52:54:00:5e:{:02x}:{:02x}", i >> 8, i & 0xff)
        };
        let (code, script) = get(format!("/boot/{mac}.ipxe")).await;
        assert!(token_of(&script).is_none(), "fetch {i} ({code}) got a token");
    }
    let after = events().await.as_array().unwrap().len();
    assert!(after - before <= 5, "1000 fetches added {} events", after - before);

    // /boot/files: the directory's files, never what a symlink in it points at outside.
    assert_eq!(get("/boot/files/vmlinuz".into()).await, (200, "kernel".into()));
    let (code, body) = get("/boot/files/escape".into()).await;
    assert_eq!(code, 403, "a symlink out of the directory is refused: {body}");
    assert!(!body.contains("not for the network"));
    let (code, body) = get("/boot/files/../outside/secret".into()).await;
    assert!(matches!(code, 400 | 403 | 404), "{code} {body}");
    assert!(!body.contains("not for the network"));
}
