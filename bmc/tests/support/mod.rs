//! Test peers for kiln-bmc's component tests: sushy-tools, OpenIPMI's ipmi_sim and pyghmi on loopback (the test kit's
//! launchers, shared with kiln's tests); an in-process mock Redfish
//! service with fault switches (`mock_redfish`; the vendor-profile emulator is `kiln_tests::vendor_redfish`). A log
//! capture for the "no secrets in logs" checks.
#![allow(dead_code)]

pub mod mock_redfish;

use std::io::Write;
use std::sync::{Arc, Mutex};

pub fn free_tcp_port() -> u16 {
    kiln_tests::free_port()
}

pub fn free_udp_port() -> u16 {
    kiln_tests::free_udp_port()
}

/// Serves `body` at every path on 127.0.0.1 (what sushy downloads for virtual media). Returns the URL base.
pub async fn serve_file(body: &'static [u8]) -> (String, tokio::task::JoinHandle<()>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().fallback(move || async move { body });
    let task = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    (format!("http://{addr}"), task)
}

/// Captures everything `tracing` emits (all targets, TRACE and up) in memory.
#[derive(Clone, Default)]
pub struct LogCapture(Arc<Mutex<Vec<u8>>>);

impl LogCapture {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

impl Write for LogCapture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for LogCapture {
    type Writer = LogCapture;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// The process-wide log capture: a global subscriber at TRACE for every target, with `log` records (reqwest,
/// hyper) bridged in. Global rather than per-thread because tracing's per-callsite interest cache makes
/// thread-scoped subscribers miss events in multi-threaded test binaries. Tests in one binary share it; filter
/// by the BMC's `host:port` where that matters.
pub fn capture_logs() -> LogCapture {
    static CAPTURE: std::sync::OnceLock<LogCapture> = std::sync::OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = LogCapture::default();
            let subscriber = tracing_subscriber::fmt()
                .with_max_level(tracing::Level::TRACE)
                .with_writer(capture.clone())
                .with_ansi(false)
                .finish();
            tracing::subscriber::set_global_default(subscriber).expect("one global subscriber per test binary");
            tracing_log::LogTracer::init().expect("install the log bridge");
            capture
        })
        .clone()
}
