//! The agent's API client against the stand-in appliance on loopback: it waits out an appliance that is not there
//! yet (backoff), sends the bearer token, and gives up at once when the token is refused.

mod common;

use std::time::Duration;

use kiln_agent::api::{ApiClient, Backoff};
use kiln_agent::cmdline::{ApiBase, Token};
use kiln_images::protocol::{CommandKind, Heartbeat};

fn hb() -> Heartbeat {
    Heartbeat {
        agent_version: "test".into(),
        busy_with: None,
        wait_secs: None,
    }
}

fn fast() -> Backoff {
    Backoff {
        base: Duration::from_millis(50),
        cap: Duration::from_millis(200),
    }
}

#[tokio::test]
async fn heartbeat_retries_until_the_appliance_is_up() {
    // Reserve a port, free it, and start the appliance there only after the agent began trying.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let client = ApiClient::new(
        ApiBase::parse(&format!("http://127.0.0.1:{port}")).unwrap(),
        Token::new("t1"),
        fast(),
    )
    .unwrap();
    let files = tempfile::tempdir().unwrap();
    let hb_task = tokio::spawn(async move { client.heartbeat(&hb()).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(!hb_task.is_finished(), "nothing listens yet");
    let app = common::start_appliance_on(port, "t1", vec![CommandKind::Inspect], files.path()).await;
    let reply = tokio::time::timeout(Duration::from_secs(10), hb_task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(reply.command.map(|c| (c.id, c.kind)), Some((1, CommandKind::Inspect)));
    assert_eq!(app.seen.lock().unwrap().heartbeats.len(), 1);
}

#[tokio::test]
async fn a_refused_token_is_a_permanent_error() {
    let files = tempfile::tempdir().unwrap();
    let (app, port) = common::start_appliance("right", vec![], files.path()).await;
    let client = ApiClient::new(
        ApiBase::parse(&format!("http://127.0.0.1:{port}/")).unwrap(),
        Token::new("wrong"),
        fast(),
    )
    .unwrap();
    let err = tokio::time::timeout(Duration::from_secs(5), client.heartbeat(&hb()))
        .await
        .unwrap()
        .unwrap_err();
    assert!(!err.is_transient());
    assert!(err.to_string().contains("401"), "{err}");
    assert_eq!(app.seen.lock().unwrap().unauthorized, 1, "no retries on 401");
}
