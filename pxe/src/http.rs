//! HTTP boot endpoints as an axum `Router` the controller mounts: `GET /boot/{mac}.ipxe` (per-host script from
//! `HostLookup`) and `GET /boot/files/...` (kernel, initramfs, iPXE binaries; byte ranges via tower-http `ServeDir`).

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower_http::services::ServeDir;

use crate::counters::{PxeCounters, bump};
use crate::ipxe;
use crate::lookup::{BootAction, BootEvent, HostLookup};
use crate::mac::MacAddr;

#[derive(Clone)]
struct BootState {
    lookup: Arc<dyn HostLookup>,
    counters: Arc<PxeCounters>,
}

/// The boot router: mount it at the root of kiln's HTTP listener (`Router::merge`).
pub fn router(lookup: Arc<dyn HostLookup>, files_dir: PathBuf, counters: Arc<PxeCounters>) -> Router {
    Router::new()
        .route("/boot/{script}", get(script))
        .nest_service("/boot/files", ServeDir::new(files_dir))
        .with_state(BootState { lookup, counters })
}

async fn script(State(st): State<BootState>, Path(script): Path<String>) -> Response {
    let not_found = |st: &BootState| {
        bump(&st.counters.http_scripts_not_found);
        (StatusCode::NOT_FOUND, "no boot script for this host\n").into_response()
    };
    let Some(mac) = script.strip_suffix(".ipxe").and_then(|m| m.parse::<MacAddr>().ok()) else {
        return not_found(&st);
    };
    let Some(host) = st.lookup.script_host(mac).await else {
        tracing::info!(%mac, "ipxe script for unknown host");
        return not_found(&st);
    };
    let Some(body) = ipxe::render(mac, &host) else {
        return not_found(&st);
    };
    let action = match host.action {
        BootAction::Agent { .. } => "agent",
        BootAction::LocalDisk => "local_disk",
        BootAction::Nothing => "nothing",
    };
    bump(&st.counters.http_scripts);
    tracing::info!(%mac, action, "ipxe script served");
    st.lookup
        .record(mac, BootEvent::IpxeScriptFetched { action: action.into() })
        .await;
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], body).into_response()
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::Request;
    use tower::ServiceExt;

    use super::*;
    use crate::lookup::{BootHost, StaticLookup};

    #[tokio::test]
    async fn scripts_files_and_ranges() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("vmlinuz"), b"0123456789").unwrap();
        let lookup = Arc::new(StaticLookup::new());
        let mac: MacAddr = "52:54:00:00:00:01".parse().unwrap();
        lookup.insert(
            mac,
            BootHost {
                ipv4: None,
                hostname: None,
                action: BootAction::LocalDisk,
            },
        );
        let app = router(lookup.clone(), dir.path().to_owned(), Arc::new(PxeCounters::default()));

        let get = |uri: &str| Request::get(uri).body(Body::empty()).unwrap();
        let r = app.clone().oneshot(get("/boot/52:54:00:00:00:01.ipxe")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        let body = axum::body::to_bytes(r.into_body(), 1 << 20).await.unwrap();
        assert!(
            std::str::from_utf8(&body)
                .unwrap()
                .contains("sanboot --no-describe --drive 0x80")
        );
        assert_eq!(
            lookup.events(),
            vec![(
                mac,
                BootEvent::IpxeScriptFetched {
                    action: "local_disk".into()
                }
            )]
        );

        for uri in [
            "/boot/52:54:00:00:00:02.ipxe",
            "/boot/nonsense.ipxe",
            "/boot/52:54:00:00:00:01",
        ] {
            assert_eq!(
                app.clone().oneshot(get(uri)).await.unwrap().status(),
                StatusCode::NOT_FOUND,
                "{uri}"
            );
        }

        let r = app
            .clone()
            .oneshot(
                Request::get("/boot/files/vmlinuz")
                    .header("range", "bytes=2-4")
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
        assert_eq!(axum::body::to_bytes(r.into_body(), 100).await.unwrap().as_ref(), b"234");
        let r = app.clone().oneshot(get("/boot/files/../vmlinuz")).await.unwrap();
        assert_ne!(r.status(), StatusCode::OK);
    }
}
