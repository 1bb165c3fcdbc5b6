//! Headless Chromium (Debian's package, installed by tests/setup.sh) driven over the DevTools protocol, for tests of
//! kiln's web page: open a tab, evaluate script, wait for a condition, type and click like a user, take screenshots.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::logs::LogDir;

/// Headless Chromium on the DevTools protocol over a pipe (`--remote-debugging-pipe`: NUL-terminated JSON messages,
/// commands on its fd 3, answers and events on its fd 4; a shell maps those to this process's pipes).
pub struct Browser {
    child: tokio::process::Child,
    to: tokio::process::ChildStdin,
    from: BufReader<tokio::process::ChildStdout>,
    next_id: u64,
    shots: PathBuf,
    _profile: tempfile::TempDir,
}

/// A DevTools session attached to one tab.
pub struct Tab(String);

fn truthy(v: &Value) -> bool {
    !matches!(v, Value::Null | Value::Bool(false)) && v.as_f64() != Some(0.0) && v.as_str() != Some("")
}

impl Browser {
    pub async fn start(spki: &str, logs: &LogDir) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let log = std::fs::File::create(logs.file("chromium.log")).unwrap();
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(r#"exec chromium "$@" 3<&0 4>&1 </dev/null >/dev/null"#)
            .arg("sh")
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                "--hide-scrollbars",
                "--remote-debugging-pipe",
            ])
            .arg(format!("--ignore-certificate-errors-spki-list={spki}"))
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("run chromium (tests/setup.sh installs it)");
        Browser {
            to: child.stdin.take().unwrap(),
            from: BufReader::new(child.stdout.take().unwrap()),
            child,
            next_id: 0,
            shots: logs.path().to_path_buf(),
            _profile: profile,
        }
    }

    pub async fn send(&mut self, tab: Option<&Tab>, method: &str, params: Value) -> u64 {
        self.next_id += 1;
        let mut msg = json!({ "id": self.next_id, "method": method, "params": params });
        if let Some(t) = tab {
            msg["sessionId"] = json!(t.0);
        }
        let mut bytes = serde_json::to_vec(&msg).unwrap();
        bytes.push(0);
        self.to.write_all(&bytes).await.unwrap();
        self.to.flush().await.unwrap();
        self.next_id
    }

    /// Sends a command and waits for its answer (events in between are skipped).
    pub async fn call(&mut self, tab: Option<&Tab>, method: &str, params: Value) -> Value {
        let id = self.send(tab, method, params).await;
        let from = &mut self.from;
        let answer = tokio::time::timeout(Duration::from_secs(60), async move {
            loop {
                let mut buf = Vec::new();
                let n = from.read_until(0, &mut buf).await.unwrap();
                assert!(n > 0, "chromium closed its DevTools pipe (see chromium.log)");
                if buf.last() == Some(&0) {
                    buf.pop();
                }
                let v: Value = serde_json::from_slice(&buf).unwrap();
                if v["id"] == id {
                    return v;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method}: no answer from chromium in 60 s"));
        if let Some(e) = answer.get("error") {
            panic!("{method}: {e}");
        }
        answer["result"].clone()
    }

    /// A new tab at 1400x900 that records the CSP violations of its documents in `window.__csp` (the recorder is
    /// the browser's script, which the page's CSP does not govern). `isolated`: a fresh browser context, with
    /// storage of its own.
    pub async fn tab(&mut self, isolated: bool) -> Tab {
        let mut params = json!({ "url": "about:blank" });
        if isolated {
            let c = self.call(None, "Target.createBrowserContext", json!({})).await;
            params["browserContextId"] = c["browserContextId"].clone();
        }
        let t = self.call(None, "Target.createTarget", params).await;
        let s = self
            .call(
                None,
                "Target.attachToTarget",
                json!({ "targetId": t["targetId"], "flatten": true }),
            )
            .await;
        let tab = Tab(s["sessionId"].as_str().unwrap().to_owned());
        self.call(Some(&tab), "Page.enable", json!({})).await;
        self.call(
            Some(&tab),
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": 1400, "height": 900, "deviceScaleFactor": 1, "mobile": false }),
        )
        .await;
        self.call(
            Some(&tab),
            "Page.addScriptToEvaluateOnNewDocument",
            json!({ "source": "window.__csp = []; document.addEventListener('securitypolicyviolation', (e) => \
                               window.__csp.push(e.violatedDirective + ' ' + e.blockedURI + ' ' + e.sourceFile + ':' + e.lineNumber));" }),
        )
        .await;
        tab
    }

    /// The value of a JavaScript expression in the tab (promises awaited).
    pub async fn eval(&mut self, tab: &Tab, js: &str) -> Value {
        let r = self
            .call(
                Some(tab),
                "Runtime.evaluate",
                json!({ "expression": js, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(e) = r.get("exceptionDetails") {
            panic!(
                "{js}: {}",
                e["exception"]["description"].as_str().unwrap_or(&e.to_string())
            );
        }
        r["result"]["value"].clone()
    }

    /// Polls `js` (every 100 ms, up to 20 s: the page refreshes every 2 s) until `done` holds; on time-out keeps a
    /// screenshot and fails with the last value.
    pub async fn wait_until(&mut self, tab: &Tab, what: &str, js: &str, done: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        for _ in 0..200 {
            last = self.eval(tab, js).await;
            if done(&last) {
                return last;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let name: String = what
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
            .collect();
        let shot = self.screenshot(tab, &format!("failed-{name}")).await;
        panic!(
            "{what}: not so after 20 s\n{js}\nlast value: {last}\nthe page: {}",
            shot.display()
        );
    }

    pub async fn wait_for(&mut self, tab: &Tab, what: &str, js: &str) -> Value {
        self.wait_until(tab, what, js, truthy).await
    }

    pub async fn wait_eq(&mut self, tab: &Tab, what: &str, js: &str, want: Value) -> Value {
        self.wait_until(tab, what, js, |v| *v == want).await
    }

    pub async fn open(&mut self, tab: &Tab, url: &str) {
        self.call(Some(tab), "Page.navigate", json!({ "url": url })).await;
        self.wait_for(
            tab,
            "the page loaded",
            "typeof Kiln === 'object' && document.readyState === 'complete'",
        )
        .await;
    }

    /// Types into an input as a user does (focus, select what is there, insert text: input events fire).
    pub async fn type_into(&mut self, tab: &Tab, selector: &str, text: &str) {
        let found = self
            .eval(
                tab,
                &format!(
                    "(() => {{ const e = document.querySelector({}); if (!e) return false; e.focus(); e.select(); \
                     return true; }})()",
                    json!(selector)
                ),
            )
            .await;
        assert_eq!(found, json!(true), "no input {selector}");
        if text.is_empty() {
            for kind in ["rawKeyDown", "keyUp"] {
                self.call(
                    Some(tab),
                    "Input.dispatchKeyEvent",
                    json!({ "type": kind, "key": "Backspace", "code": "Backspace", "windowsVirtualKeyCode": 8 }),
                )
                .await;
            }
        } else {
            self.call(Some(tab), "Input.insertText", json!({ "text": text })).await;
        }
    }

    /// Clicks the element at its centre with the mouse, as a user does.
    pub async fn click(&mut self, tab: &Tab, selector: &str) {
        let at = self
            .eval(
                tab,
                &format!(
                    "(() => {{ const e = document.querySelector({}); if (!e) return null; e.scrollIntoView({{ block: \
                     'center' }}); const r = e.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; \
                     }})()",
                    json!(selector)
                ),
            )
            .await;
        assert!(at.is_array(), "nothing to click at {selector}");
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                Some(tab),
                "Input.dispatchMouseEvent",
                json!({ "type": kind, "x": at[0], "y": at[1], "button": "left", "clickCount": 1 }),
            )
            .await;
        }
    }

    pub async fn screenshot(&mut self, tab: &Tab, name: &str) -> PathBuf {
        let r = self
            .call(Some(tab), "Page.captureScreenshot", json!({ "format": "png" }))
            .await;
        let path = self.shots.join(format!("{name}.png"));
        std::fs::write(
            &path,
            base64::engine::general_purpose::STANDARD
                .decode(r["data"].as_str().unwrap())
                .expect("a base64 screenshot"),
        )
        .unwrap();
        println!("screenshot: {}", path.display());
        path
    }

    pub async fn close(mut self) {
        self.send(None, "Browser.close", json!({})).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}
