//! The IPMI driver against misbehaving peers on loopback UDP: silence, nothing listening, truncated and
//! garbage answers, a full session table. Errors must come within the configured time and never panic.

mod support;

use std::time::{Duration, Instant};

use kiln_bmc::ipmi::packet::{self, OpenSessionResponse, Packet, Request, Response, payload_type};
use kiln_bmc::{BmcAddress, BmcError, BmcErrorKind, BmcOptions, Credentials, IpmiBmc};
use tokio::net::UdpSocket;

fn opts() -> BmcOptions {
    BmcOptions {
        request_timeout: Duration::from_millis(600),
        retries: 1,
        min_request_interval: Duration::from_millis(1),
        ipmi_cipher_query_timeout: Duration::from_millis(100),
        ..Default::default()
    }
}

async fn connect(port: u16) -> Result<IpmiBmc, BmcError> {
    let BmcAddress::Ipmi(a) = format!("ipmi://127.0.0.1:{port}").parse().unwrap() else {
        unreachable!()
    };
    IpmiBmc::connect(&a, Credentials::new("admin", "password"), opts()).await
}

/// A UDP peer that answers each datagram with what `reply` returns (nothing for `None`).
async fn peer(reply: impl Fn(&[u8]) -> Option<Vec<u8>> + Send + 'static) -> u16 {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let port = socket.local_addr().unwrap().port();
    tokio::spawn(async move {
        let mut buf = [0u8; 1024];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            if let Some(answer) = reply(&buf[..n]) {
                let _ = socket.send_to(&answer, from).await;
            }
        }
    });
    port
}

/// The answer of a correct BMC to Get Channel Authentication Capabilities (IPMI v2.0 supported).
fn auth_caps_answer(datagram: &[u8]) -> Option<Vec<u8>> {
    let Ok(Packet::V15 { message, .. }) = packet::decode(datagram, 0) else {
        return None;
    };
    let req = Request::decode(&message).ok()?;
    if req.cmd != 0x38 {
        return None; // Get Channel Cipher Suites and the rest: no answer, like ipmi_sim
    }
    let rsp = Response {
        netfn: req.netfn + 1,
        cmd: req.cmd,
        rq_seq: req.rq_seq,
        completion_code: 0,
        data: vec![0x01, 0x80 | 0x04, 0x04, 0x02, 0, 0, 0, 0],
    };
    Some(packet::encode_v15(&rsp.encode()))
}

#[tokio::test]
async fn a_silent_bmc_times_out_within_the_budget() {
    let port = peer(|_| None).await;
    let start = Instant::now();
    let e = connect(port).await.unwrap_err();
    let took = start.elapsed();
    assert!(matches!(e, BmcError::Timeout { .. }), "{e}");
    assert!(e.is_transient());
    assert!(took < Duration::from_millis(1500), "{took:?}");
}

#[tokio::test]
async fn nothing_listening_fails_fast() {
    let port = support::free_udp_port();
    let start = Instant::now();
    let e = connect(port).await.unwrap_err();
    assert_eq!(e.kind(), BmcErrorKind::Unreachable, "{e}");
    assert!(start.elapsed() < Duration::from_millis(1500));
}

#[tokio::test]
async fn truncated_answers_are_protocol_errors() {
    // Answers every datagram with a prefix of a valid auth-capabilities answer: every length is a clean error.
    for keep in [0usize, 3, 4, 5, 12, 14, 20] {
        let port = peer(move |d| {
            auth_caps_answer(d).map(|mut a| {
                a.truncate(keep);
                a
            })
        })
        .await;
        let e = connect(port).await.unwrap_err();
        assert!(matches!(e, BmcError::Protocol { .. }), "prefix of {keep}: {e}");
    }
    // Garbage that is not RMCP at all.
    let port = peer(|_| Some(vec![0xde, 0xad, 0xbe, 0xef, 0x00])).await;
    let e = connect(port).await.unwrap_err();
    assert_eq!(e.kind(), BmcErrorKind::Protocol, "{e}");
}

#[tokio::test]
async fn truncated_session_answers_are_protocol_errors() {
    // Auth capabilities fine, then an Open Session Response cut short.
    let port = peer(|d| {
        if let Some(a) = auth_caps_answer(d) {
            return Some(a);
        }
        match packet::decode(d, 0) {
            Ok(Packet::V20(p)) if p.payload_type == payload_type::OPEN_SESSION_REQUEST => {
                let answer = vec![p.payload[0], 0x00, 0x04, 0x00, 1, 2, 3, 4, 9, 9];
                Some(packet::encode_v20(
                    payload_type::OPEN_SESSION_RESPONSE,
                    false,
                    0,
                    0,
                    &answer,
                    None,
                ))
            }
            _ => None,
        }
    })
    .await;
    let e = connect(port).await.unwrap_err();
    assert!(matches!(e, BmcError::Protocol { .. }), "{e}");
    assert!(e.to_string().contains("Open Session"), "{e}");
}

#[tokio::test]
async fn a_full_session_table_is_busy_and_transient() {
    let port = peer(|d| {
        if let Some(a) = auth_caps_answer(d) {
            return Some(a);
        }
        match packet::decode(d, 0) {
            Ok(Packet::V20(p)) if p.payload_type == payload_type::OPEN_SESSION_REQUEST => {
                let req = packet::OpenSessionRequest::decode(&p.payload).ok()?;
                let rsp = OpenSessionResponse {
                    tag: req.tag,
                    status: 0x01, // insufficient resources to create a session
                    privilege: 0,
                    console_session_id: req.console_session_id,
                    accepted: None,
                };
                Some(packet::encode_v20(
                    payload_type::OPEN_SESSION_RESPONSE,
                    false,
                    0,
                    0,
                    &rsp.encode(),
                    None,
                ))
            }
            _ => None,
        }
    })
    .await;
    let e = connect(port).await.unwrap_err();
    assert!(matches!(e, BmcError::Busy { .. }), "{e}");
    assert!(e.is_transient());
    assert!(e.to_string().contains("insufficient resources"), "{e}");
}
