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
