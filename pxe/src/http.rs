//! HTTP boot endpoints as an axum `Router` the controller mounts: `GET /boot/{mac}.ipxe` (per-host script from
//! `HostLookup`) and `GET /boot/files/...` (kernel, initramfs, iPXE binaries; byte ranges via tower-http
//! `ServeFile`), confined to the files directory exactly as TFTP is: a symlink that leads out of it is refused.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::Request;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tower::ServiceExt;
use tower_http::services::ServeFile;

use crate::MacAddr;
use crate::counters::{PxeCounters, bump};
use crate::ipxe;
use crate::lookup::{BootAction, BootEvent, HostLookup};

#[derive(Clone)]
struct BootState {
    lookup: Arc<dyn HostLookup>,
    counters: Arc<PxeCounters>,
    /// The files directory, canonical (`None` if it does not exist: every file is then not found).
    files_root: Option<Arc<PathBuf>>,
}

/// The boot router: mount it at the root of kiln's HTTP listener (`Router::merge`).
pub fn router(lookup: Arc<dyn HostLookup>, files_dir: PathBuf, counters: Arc<PxeCounters>) -> Router {
    let files_root = std::fs::canonicalize(&files_dir).ok().map(Arc::new);
    if files_root.is_none() {
        tracing::warn!(dir = %files_dir.display(), "boot files directory missing: /boot/files serves nothing");
    }
    Router::new()
        .route("/boot/{script}", get(script))
        .route("/boot/files/{*path}", get(file))
        .with_state(BootState {
            lookup,
            counters,
            files_root,
        })
}

async fn file(State(st): State<BootState>, Path(path): Path<String>, req: Request) -> Response {
    let Some(root) = &st.files_root else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match crate::tftp::resolve_in_root(root, &path).await {
        Ok(real) => match ServeFile::new(real).oneshot(req).await {
            Ok(r) => r.into_response(),
            Err(e) => match e {},
        },
        Err(refusal) if crate::tftp::is_access_violation(&refusal) => {
            tracing::info!(path, "boot file refused: outside the files directory");
            StatusCode::FORBIDDEN.into_response()
        }
        Err(_) => StatusCode::NOT_FOUND.into_response(),
    }
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
        // A symlink inside the files directory that leads out of it is refused, as TFTP refuses it.
        let outside = tempfile::tempdir().unwrap();
        std::fs::write(outside.path().join("secret"), b"kiln.db").unwrap();
        std::os::unix::fs::symlink(outside.path().join("secret"), dir.path().join("escape")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("vmlinuz"), dir.path().join("kernel")).unwrap();
        let r = app.clone().oneshot(get("/boot/files/escape")).await.unwrap();
        assert_eq!(r.status(), StatusCode::FORBIDDEN);
        let r = app.clone().oneshot(get("/boot/files/kernel")).await.unwrap();
        assert_eq!(r.status(), StatusCode::OK, "a symlink within the directory is fine");
        let r = app.clone().oneshot(get("/boot/files/%2e%2e/vmlinuz")).await.unwrap();
        assert_ne!(r.status(), StatusCode::OK);
    }
}
