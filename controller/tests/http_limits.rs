//! kiln's HTTPS listener bounds what a client can hold: a connection that never completes its TLS handshake, a
//! half-sent request and an idle connection are closed after the header-read timeout, and connections beyond the cap
//! are closed at once, while normal requests are served. Plain HTTP to it gets no answer.

use std::sync::Arc;
use std::time::{Duration, Instant};

use kiln::server::{Appliance, Config, HttpLimits};
use rustls::pki_types::pem::PemObject;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Reads until the server closes the connection (or `limit` passes); returns when it closed, if it did.
async fn closed_within(stream: &mut (impl tokio::io::AsyncRead + Unpin), limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_connections_are_closed_and_the_connection_count_is_capped() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let cfg = Config {
        data_dir: dir.path().to_path_buf(),
        http: HttpLimits {
            header_read_timeout_secs: 2,
            max_connections: 4,
            ..HttpLimits::default()
        },
        ..Config::default()
    };
    let app = Appliance::open(cfg, Arc::new(kiln_engine::bmcs::NoDrivers))
        .await
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(kiln::server::run(app, listener, async {
        let _ = stop_rx.await;
    }));
    let https = kiln_tests::inproc::https_client(dir.path());
    let health = https.get(format!("https://{addr}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
    assert!(
        reqwest::get(format!("http://{addr}/healthz")).await.is_err(),
        "plain HTTP is not served on the API listener"
    );
    let ca = std::fs::read(kiln_http::tls::ca_path(dir.path())).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(&ca) {
        roots.add(c.unwrap()).unwrap();
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(
        rustls::ClientConfig::builder()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    ));
    let tls = async || {
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
        connector.connect(name, tcp).await.unwrap()
    };

    // A request whose headers never end is closed after the header-read timeout.
    let mut half = tls().await;
    half.write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\nX-Slow: ")
        .await
        .unwrap();
    let t = closed_within(&mut half, Duration::from_secs(10)).await;
    assert!(
        t.is_some_and(|t| t < Duration::from_secs(5)),
        "half-sent request kept open: {t:?}"
    );

    // So is a connection that never sends anything, and an idle keep-alive connection after a response.
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let t = closed_within(&mut silent, Duration::from_secs(10)).await;
    assert!(
        t.is_some_and(|t| t < Duration::from_secs(5)),
        "silent connection kept open: {t:?}"
    );
    let mut idle = tls().await;
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n")
        .await
        .unwrap();
    let t = closed_within(&mut idle, Duration::from_secs(10)).await;
    assert!(
        t.is_some_and(|t| t < Duration::from_secs(5)),
        "idle keep-alive connection kept open: {t:?}"
    );

    // Four connections hold every slot: a fifth is closed at once, unanswered.
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(TcpStream::connect(addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut fifth = TcpStream::connect(addr).await.unwrap();
    let _ = fifth.write_all(b"GET /healthz HTTP/1.1\r\nHost: kiln\r\n\r\n").await;
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), fifth.read_to_end(&mut buf)).await;
    assert!(
        buf.is_empty(),
        "a connection beyond the cap was served: {}",
        String::from_utf8_lossy(&buf)
    );
    // Once the held ones time out, kiln serves again.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let health = https.get(format!("https://{addr}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);

    let _ = stop_tx.send(());
    server.await.unwrap().unwrap();
}

/// The routes anyone on the provisioning network reaches without the admin token (here the agent API) are limited
/// per client address: a flood from one host gets 429 with Retry-After after its burst, is counted in /metrics, and
/// the admin API stays available. Runs the real binary in a network namespace of its own, so that the client has a
/// provisioning-network address (loopback clients are the appliance's own processes and are not limited).
#[test]
fn a_flood_from_one_source_gets_429_after_its_burst() {
    let listen = format!("{}:8443", kiln_tests::netns::SERVER_IP);
    let kiln = RealKiln::start(
        "[http]\nper_source_requests_per_second = 5\nper_source_burst = 20\n",
        &["--listen", &listen],
        &[&listen],
    );
    let (data, curl) = (&kiln.data, |args: &[&str]| kiln.curl(args));
    // 60 forged heartbeats on one connection, as fast as curl sends them.
    let url = format!("https://{listen}/agent/v1/heartbeat");
    let mut args = vec!["-w", "%{http_code}\n"];
    for _ in 0..60 {
        args.extend([
            "-o",
            "/dev/null",
            "-X",
            "POST",
            "-H",
            "Authorization: Bearer forged",
            "--data",
            "{}",
            url.as_str(),
        ]);
    }
    let codes = curl(&args);
    let codes: Vec<&str> = codes.lines().collect();
    assert_eq!(codes.len(), 60, "{codes:?}");
    let refused = codes.iter().filter(|c| **c == "429").count();
    assert!(
        codes[..20].iter().all(|c| *c == "401"),
        "the burst is served (and the token refused): {codes:?}"
    );
    assert!(refused >= 30, "a flood is limited: {codes:?}");
    let headers = curl(&["-D", "-", "-o", "/dev/null", "-X", "POST", "--data", "{}", &url]);
    assert!(headers.to_ascii_lowercase().contains("retry-after:"), "{headers}");
    // The admin API is not behind the limit, and the refusals are counted.
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let metrics = curl(&[
        "-H",
        &format!("Authorization: Bearer {}", token.trim()),
        &format!("https://{listen}/metrics"),
    ]);
    let line = metrics
        .lines()
        .find(|l| l.starts_with("kiln_http_rate_limited_total "))
        .unwrap_or_else(|| panic!("{metrics}"));
    let n: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
    assert!(n >= refused as u64, "{line}");
}

/// `kiln serve` in a network namespace of its own (so that clients have provisioning-network addresses), with its
/// data directory and log in a temporary directory; killed when dropped.
struct RealKiln {
    _record: kiln_tests::state::Record,
    ns: kiln_tests::netns::Netns,
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    child: std::process::Child,
}

impl RealKiln {
    /// Starts it with `config` (TOML) and `args`, and waits until `/healthz` answers on each of `listeners`.
    fn start(config: &str, args: &[&str], listeners: &[&str]) -> Self {
        let record = kiln_tests::state::Record::new().unwrap();
        let ns = kiln_tests::netns::Netns::create(&record).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("data");
        std::fs::write(dir.path().join("kiln.toml"), config).unwrap();
        let child = ns
            .command(env!("CARGO_BIN_EXE_kiln"))
            .arg("serve")
            .args(args)
            .arg("--config")
            .arg(dir.path().join("kiln.toml"))
            .arg("--data-dir")
            .arg(&data)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(dir.path().join("kiln.log")).unwrap())
            .spawn()
            .unwrap();
        record.add_pid(child.id());
        let kiln = Self {
            _record: record,
            ns,
            _dir: dir,
            data,
            child,
        };
        for listen in listeners {
            let health = format!("https://{listen}/healthz");
            let t = Instant::now();
            while !kiln
                .curl(&["-o", "/dev/null", "-w", "%{http_code}", &health])
                .starts_with("200")
            {
                assert!(
                    t.elapsed() < Duration::from_secs(20),
                    "kiln serve did not answer on {listen}"
                );
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        kiln
    }

    /// curl inside the namespace, trusting kiln's CA (so host names are verified); returns what it printed.
    fn curl(&self, args: &[&str]) -> String {
        let out = self
            .ns
            .command("curl")
            .args(["-s", "--cacert"])
            .arg(self.data.join("tls/ca.pem"))
            .args(args)
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn admin_token(&self) -> String {
        std::fs::read_to_string(self.data.join("admin.token"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

impl Drop for RealKiln {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// With `--admin-listen`, the admin API (REST, web page, metrics, OpenAPI) answers only there (the management
/// network), and the provisioning network's listener serves only what agents and BMCs need: an admin token sent to
/// it opens nothing. One certificate serves both addresses; the CLI works against the admin listener.
#[test]
fn the_admin_api_can_listen_apart_from_the_provisioning_network() {
    let provisioning = format!("{}:8443", kiln_tests::netns::SERVER_IP);
    let admin = "127.0.0.1:9443";
    let kiln = RealKiln::start(
        "",
        &["--listen", &provisioning, "--admin-listen", admin],
        &[&provisioning, admin],
    );
    let auth = format!("Authorization: Bearer {}", kiln.admin_token());
    let code = |method: &str, base: &str, path: &str| {
        kiln.curl(&[
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            method,
            "-H",
            &auth,
            "-H",
            "content-type: application/json",
            "--data-binary",
            if method == "POST" { "{}" } else { "" },
            &format!("https://{base}{path}"),
        ])
    };
    for path in ["/api/v1/hosts", "/metrics", "/ui", "/api/v1/openapi.json"] {
        assert_eq!(
            code("GET", &provisioning, path),
            "404",
            "{path} on the provisioning listener"
        );
        assert_eq!(code("GET", admin, path), "200", "{path} on the admin listener");
    }
    assert_eq!(
        code("POST", &provisioning, "/api/v1/hosts"),
        "404",
        "no enrollment through the provisioning network"
    );
    // The agent API is on the provisioning network (refusing the admin token as an agent token), not on the admin one.
    assert_eq!(code("POST", &provisioning, "/agent/v1/heartbeat"), "401");
    assert_eq!(code("POST", admin, "/agent/v1/heartbeat"), "404");
    // The CLI, pointed at the admin listener, verifies the same certificate.
    let out = kiln
        .ns
        .command(env!("CARGO_BIN_EXE_kiln"))
        .args(["host", "list", "--server", &format!("https://{admin}"), "--ca-file"])
        .arg(kiln.data.join("tls/ca.pem"))
        .arg("--token-file")
        .arg(kiln.data.join("admin.token"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}
