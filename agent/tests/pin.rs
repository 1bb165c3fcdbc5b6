//! The agent trusts the appliance's HTTPS API only through the CA pinned on its kernel command line: a server whose
//! chain carries that CA and whose certificate names the address in `kiln.api` is accepted; another CA, or kiln's CA
//! with a certificate for another name, is refused before any request (with the token) is sent.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use kiln_agent::api::{ApiClient, Backoff};
use kiln_agent::cmdline::{ApiBase, CaPin, Token};
use kiln_images::protocol::Heartbeat;
use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use sha2::{Digest, Sha256};

struct Ca {
    der: CertificateDer<'static>,
    issuer: Issuer<'static, KeyPair>,
}

fn ca() -> Ca {
    let key = KeyPair::generate().unwrap();
    let mut p = CertificateParams::new(Vec::<String>::new()).unwrap();
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let der = p.self_signed(&key).unwrap().der().clone();
    Ca {
        der,
        issuer: Issuer::new(p, key),
    }
}

fn leaf(ca: &Ca, name: &str) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let key = KeyPair::generate().unwrap();
    let cert = CertificateParams::new(vec![name.to_owned()])
        .unwrap()
        .signed_by(&key, &ca.issuer)
        .unwrap();
    (
        vec![cert.der().clone(), ca.der.clone()],
        PrivateKeyDer::try_from(key.serialize_der()).unwrap(),
    )
}

/// An HTTPS stand-in for the agent API on loopback; counts the requests that got through the handshake.
async fn serve(chain: Vec<CertificateDer<'static>>, key: PrivateKeyDer<'static>) -> (u16, Arc<AtomicU32>) {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cfg = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let requests = Arc::new(AtomicU32::new(0));
    let seen = requests.clone();
    tokio::spawn(async move {
        loop {
            let (tcp, _) = listener.accept().await.unwrap();
            let (acceptor, seen) = (acceptor.clone(), seen.clone());
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else { return };
                let svc = hyper::service::service_fn(move |_req| {
                    seen.fetch_add(1, Ordering::SeqCst);
                    async {
                        Ok::<_, std::convert::Infallible>(
                            hyper::Response::builder()
                                .header("content-type", "application/json")
                                .body(http_body_util::Full::new(bytes::Bytes::from_static(
                                    br#"{"command":null,"interval_secs":5}"#,
                                )))
                                .unwrap(),
                        )
                    }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    (port, requests)
}

fn client(port: u16, pin: &CertificateDer<'_>) -> ApiClient {
    let pin = CaPin(Sha256::digest(pin.as_ref()).into());
    ApiClient::with_ca(
        ApiBase::parse(&format!("https://127.0.0.1:{port}")).unwrap(),
        Some(Token::new("boot-token")),
        Backoff {
            base: Duration::from_millis(20),
            cap: Duration::from_millis(50),
        },
        Some(pin),
    )
    .unwrap()
}

async fn heartbeat(c: &ApiClient) -> Result<(), String> {
    let hb = Heartbeat {
        agent_version: "test".into(),
        busy_with: None,
        wait_secs: None,
    };
    match tokio::time::timeout(Duration::from_secs(2), c.heartbeat(&hb)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => Err(format!("{e:#}")),
        // The client retries transport errors with backoff: no answer in time means it was refused every time.
        Err(_) => Err("refused until the deadline".into()),
    }
}

#[tokio::test]
async fn the_pinned_ca_is_trusted() {
    let kiln = ca();
    let (chain, key) = leaf(&kiln, "127.0.0.1");
    let (port, requests) = serve(chain, key).await;
    heartbeat(&client(port, &kiln.der)).await.unwrap();
    assert_eq!(requests.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn another_ca_is_refused_before_the_token_is_sent() {
    let (kiln, impostor) = (ca(), ca());
    let (chain, key) = leaf(&impostor, "127.0.0.1");
    let (port, requests) = serve(chain, key).await;
    assert!(heartbeat(&client(port, &kiln.der)).await.is_err());
    assert_eq!(requests.load(Ordering::SeqCst), 0, "no request got past the handshake");
}

#[tokio::test]
async fn kilns_ca_with_a_certificate_for_another_name_is_refused() {
    let kiln = ca();
    let (chain, key) = leaf(&kiln, "kiln.invalid");
    let (port, requests) = serve(chain, key).await;
    assert!(heartbeat(&client(port, &kiln.der)).await.is_err());
    assert_eq!(requests.load(Ordering::SeqCst), 0);
}
