//! The appliance against a real Redfish peer: sushy-emulator (fake driver) on loopback, driven through kiln-bmc's
//! drivers by the executor. Registration reads power over Redfish, a power request reaches the emulator, and wrong
//! credentials end in an actionable registration error without the password leaking.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::machine::Policy;
use kiln::server::{Appliance, Config};
use serde_json::{Value, json};

const UUID: &str = "27946b59-9e44-4fa7-8e91-f3527a1ef094";

struct Sushy {
    port: u16,
    dir: tempfile::TempDir,
    child: Child,
}

impl Drop for Sushy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn venv_bin(name: &str) -> PathBuf {
    let bin = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .join(".cache/venv/bin")
        .join(name);
    assert!(bin.exists(), "{} is missing: run tests/setup.sh first", bin.display());
    bin
}

impl Sushy {
    fn start(user: (&str, &str)) -> Sushy {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let out = Command::new(venv_bin("python3"))
            .args([
                "-c",
                "import bcrypt,sys; print(bcrypt.hashpw(sys.argv[1].encode(), bcrypt.gensalt(4)).decode())",
                user.1,
            ])
            .output()
            .unwrap();
        assert!(out.status.success(), "bcrypt: {}", String::from_utf8_lossy(&out.stderr));
        std::fs::write(
            dir.path().join("htpasswd"),
            format!("{}:{}\n", user.0, String::from_utf8_lossy(&out.stdout).trim()),
        )
        .unwrap();
        let conf = format!(
            "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\nSUSHY_EMULATOR_FAKE_DRIVER = True\nSUSHY_EMULATOR_STATE_DIR = '{}'\n\
             SUSHY_EMULATOR_AUTH_FILE = '{}'\n\
             SUSHY_EMULATOR_FAKE_SYSTEMS = [{{'uuid': '{UUID}', 'name': 'node-0', 'power_state': 'Off', 'external_notifier': False, 'nics': [{{'mac': '52:54:00:aa:00:01', 'ip': '10.99.0.100'}}]}}]\n",
            dir.path().join("state").display(),
            dir.path().join("htpasswd").display()
        );
        std::fs::write(dir.path().join("sushy.conf"), conf).unwrap();
        let log = std::fs::File::create(dir.path().join("sushy.log")).unwrap();
        let child = Command::new(venv_bin("sushy-emulator"))
            .arg("--config")
            .arg(dir.path().join("sushy.conf"))
            .args(["--port", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start sushy-emulator");
        let s = Sushy { port, dir, child };
        let t = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                t.elapsed() < Duration::from_secs(30),
                "sushy did not start: {}",
                s.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }
    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("sushy.log")).unwrap_or_default()
    }
    fn address(&self) -> String {
        format!("redfish+http://127.0.0.1:{}/redfish/v1/Systems/{UUID}", self.port)
    }
}

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

#[tokio::test]
async fn executor_registers_and_powers_a_redfish_host_and_reports_bad_credentials() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let sushy = Sushy::start(("admin", "s3cret-redfish"));
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: dir.path().to_path_buf(),
        policy: Policy {
            idle_poll_secs: 1,
            busy_poll_secs: 1,
            backoff_base_secs: 1,
            ..Policy::default()
        },
        ..Config::default()
    };
    let app = Appliance::open(cfg, Arc::new(kiln::drivers::Drivers::default()))
        .await
        .unwrap();
    let token = app.state.admin_token.expose().to_owned();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kiln::server::run(app, listener, async {
        let _ = stop_rx.await;
    }));
    let c = reqwest::Client::new();

    let enroll = |name: &str, password: &str| json!({ "name": name, "bmc": { "address": sushy.address(), "username": "admin", "password": password }, "options": { "inspect": false } });
    let (s, b) = api(
        &c,
        &base,
        &token,
        reqwest::Method::POST,
        "/api/v1/hosts",
        Some(enroll("node-0", "s3cret-redfish")),
    )
    .await;
    assert_eq!(s, 201, "{b}");
    let (s, _) = api(
        &c,
        &base,
        &token,
        reqwest::Method::POST,
        "/api/v1/hosts",
        Some(enroll("node-bad", "wrong-password")),
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
