//! kiln's web page in a real browser (Debian's Chromium, headless, driven over the DevTools protocol) against the
//! appliance with fake BMCs and simulated agents, as an operator uses it: the fleet page with its counts, the host in
//! error and the phase it failed in, a host writing with its progress, the delayed queue, the durations and the host
//! table (filters, sorting, long values elided); a host's timeline with a bar per phase; the enroll form with the
//! API's message next to the field it names, then a host enrolled; a confirmation before deprovision and delete; the
//! CSP (no inline script or style, nothing from another origin, no secret in the page). Screenshots of each page at
//! 1400x900 and the browser's log land in one directory under `target/lab-logs/`, whose path is printed.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kiln_engine::netboot::{BootInstructions, Handout, StoreLookup};
use kiln_engine::types::MacAddr;
use kiln_tests::chromium::Browser;
use kiln_tests::inproc::{Lab, PASSWORD, https_client, mac_of};
use kiln_tests::logs::LogDir;
use reqwest::Method;
use serde_json::{Value, json};

/// The base64 SHA-256 of the public key of kiln's server certificate, which Chromium is told to trust (as an admin
/// trusts kiln's CA in their browser).
fn server_spki(data_dir: &Path) -> String {
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(
            "openssl x509 -in \"$1\" -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256 -binary \
             | base64",
        )
        .arg("sh")
        .arg(data_dir.join("tls/server.pem"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

// ---------------------------------------------------------------- a host the test boots itself

/// The agent of a host whose network boots the lab's firmware ignores (its NIC is "dead"): the test takes each boot's
/// token from kiln's netboot lookup as firmware would, answers `inspect` at once, and writes an image slowly without
/// ever finishing, so that the fleet shows a host writing (and holding the only job slot).
async fn slow_agent(lookup: Arc<Mutex<Option<StoreLookup>>>, data_dir: PathBuf, host: &'static str) {
    const TOTAL: u64 = 64 << 30;
    let mac: MacAddr = mac_of(host).parse().unwrap();
    let http = https_client(&data_dir);
    let mut boot: Option<(String, String)> = None;
    let mut seen = HashSet::new();
    let mut writer: Option<tokio::task::JoinHandle<()>> = None;
    loop {
        let l = lookup.lock().unwrap().clone().expect("the appliance runs");
        if let Ok(Some(BootInstructions::Agent {
            token: Some(t),
            api_url,
            ..
        })) = l
            .boot_instructions(&mac, kiln_engine::executor::now(), Handout::Take)
            .await
        {
            // A new boot ends the agent of the previous one.
            if let Some(w) = writer.take() {
                w.abort();
            }
            boot = Some((t.expose().to_owned(), api_url));
        }
        if let Some((token, api)) = boot.clone() {
            let post = |path: &str, body: Value| {
                http.post(format!("{api}/agent/v1/{path}"))
                    .bearer_auth(&token)
                    .json(&body)
                    .send()
            };
            match post("heartbeat", json!({ "agent_version": "ui-test" })).await {
                Ok(r) if r.status() == 401 => {
                    boot = None;
                    if let Some(w) = writer.take() {
                        w.abort();
                    }
                }
                Ok(r) => {
                    let reply: Value = r.json().await.unwrap_or(Value::Null);
                    let cmd = &reply["command"];
                    if let Some(id) = cmd["id"].as_u64()
                        && seen.insert(id)
                    {
                        match cmd["command"].as_str() {
                            Some("inspect") => {
                                let inv = json!({
                                    "system": { "vendor": "QEMU", "product": "Standard PC", "serial": "SN-slow", "uuid": "u" },
                                    "cpu": { "model": "vcpu", "count": 4, "architecture": "x86_64" },
                                    "memory_mib": 8192,
                                    "disks": [{ "name": "/dev/sda", "size_bytes": TOTAL, "rotational": false, "removable": false }],
                                    "nics": [{ "name": "eth0", "mac": mac_of(host), "link_up": true, "ipv4": [] }],
                                    "boot_mode": "uefi",
                                });
                                assert_eq!(post("inventory", inv).await.unwrap().status(), 204);
                                let res = json!({ "command_id": id, "outcome": "succeeded", "detail": {} });
                                assert!(post("result", res).await.unwrap().status().is_success());
                            }
                            Some("write_image") => {
                                let (http, api, token) = (http.clone(), api.clone(), token.clone());
                                writer = Some(tokio::spawn(async move {
                                    let mut written = 0u64;
                                    loop {
                                        written = (written + (96 << 20)).min(TOTAL / 100 * 99);
                                        let p = json!({ "command_id": id, "phase": "writing", "bytes_read": written,
                                                        "bytes_written": written, "total_bytes": TOTAL });
                                        let _ = http
                                            .post(format!("{api}/agent/v1/progress"))
                                            .bearer_auth(&token)
                                            .json(&p)
                                            .send()
                                            .await;
                                        tokio::time::sleep(Duration::from_millis(250)).await;
                                    }
                                }));
                            }
                            other => panic!("{host}: unexpected command {other:?}"),
                        }
                    }
                }
                Err(_) => {}
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

// ---------------------------------------------------------------- the page's own files

/// The page's files as served: each carries the CSP; the HTML has no inline script, style or event handler and
/// loads only kiln's own files; the scripts never parse HTML, never set inline styles, never touch localStorage and
/// name no other origin (the SVG namespace is a name, not a place).
async fn check_served_files(lab: &Lab) {
    let get = |path: &str| lab.client.get(format!("{}{path}", lab.base)).send();
    let r = get("/ui").await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap().to_owned();
    assert!(
        csp.contains("default-src 'self'") && csp.contains("script-src 'self'") && csp.contains("style-src 'self'"),
        "{csp}"
    );
    let html = r.text().await.unwrap();
    let lower = html.to_ascii_lowercase();
    let mut scripts = Vec::new();
    for (at, _) in lower.match_indices("<script") {
        let tag_end = at + lower[at..].find('>').unwrap();
        let tag = &html[at..=tag_end];
        let src = tag
            .split("src=\"")
            .nth(1)
            .and_then(|s| s.split('"').next())
            .unwrap_or_else(|| panic!("an inline script: {tag}"));
        assert!(
            src.starts_with("/ui/") && src.ends_with(".js"),
            "a script from elsewhere: {tag}"
        );
        assert!(
            lower[tag_end + 1..].starts_with("</script>"),
            "a script with a body: {}",
            &html[at..(tag_end + 80).min(html.len())]
        );
        scripts.push(src.to_owned());
    }
    assert!(scripts.len() >= 5, "the page's scripts: {scripts:?}");
    assert!(!lower.contains("<style"), "an inline style sheet");
    assert!(!lower.contains(" style="), "an inline style attribute");
    for word in lower.split(|c: char| c.is_whitespace() || c == '<') {
        if let Some((name, _)) = word.split_once('=') {
            assert!(
                !(name.starts_with("on") && name.len() > 2 && name.bytes().all(|b| b.is_ascii_lowercase())),
                "an inline event handler: {word}"
            );
        }
    }
    for attr in [" src=\"", " href=\"", " action=\""] {
        for (at, _) in lower.match_indices(attr) {
            let v = &html[at + attr.len()..];
            assert!(
                v.starts_with('/') || v.starts_with('#'),
                "a link out of kiln: {}",
                &v[..v.find('"').unwrap_or(v.len())]
            );
        }
    }
    // Example addresses in placeholders are words for the user; nothing else may name a scheme.
    let mut without_placeholders = String::new();
    let mut rest = html.as_str();
    while let Some(at) = rest.find("placeholder=\"") {
        without_placeholders.push_str(&rest[..at]);
        let after = &rest[at + "placeholder=\"".len()..];
        rest = &after[after.find('"').unwrap() + 1..];
    }
    without_placeholders.push_str(rest);
    assert!(
        !without_placeholders.contains("http://") && !without_placeholders.contains("https://"),
        "the page names another origin"
    );

    for src in scripts.iter().map(String::as_str).chain(["/ui/style.css"]) {
        let r = get(src).await.unwrap();
        assert_eq!(r.status(), 200, "{src}");
        assert_eq!(r.headers()["content-security-policy"].to_str().unwrap(), csp, "{src}");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff", "{src}");
        let text = r.text().await.unwrap();
        let forbidden: &[&str] = if src.ends_with(".css") {
            &["url(", "@import", "http:", "https:"]
        } else {
            &[
                "innerHTML",
                "outerHTML",
                "insertAdjacentHTML",
                "document.write",
                "eval(",
                "new Function",
                "setAttribute(\"style\"",
                "cssText",
                "localStorage.",
                "localStorage[",
            ]
        };
        for f in forbidden {
            assert!(!text.contains(f), "{src} uses {f}");
        }
        let names: Vec<&str> = text
            .match_indices("http")
            .map(|(at, _)| &text[at..])
            .filter(|s| s.starts_with("http://") || s.starts_with("https://"))
            .map(|s| &s[..s.find(['"', '\'', '`', ' ']).unwrap_or(s.len())])
            .collect();
        assert!(
            names.iter().all(|n| *n == "http://www.w3.org/2000/svg"),
            "{src} names another origin: {names:?}"
        );
    }
}

// ---------------------------------------------------------------- the test

async fn host_list(lab: &Lab) -> Vec<Value> {
    let (code, hosts) = lab.api(Method::GET, "/api/v1/hosts", None).await;
    assert_eq!(code, 200, "{hosts}");
    hosts.as_array().unwrap().clone()
}

/// The names of the rows of the host table, in order.
const ROWS: &str = "[...document.querySelectorAll('#host-rows tr')].map((r) => r.dataset.host)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_web_page_shows_the_fleet_draws_time_and_enrolls_hosts() {
    let logs = LogDir::new("ui").unwrap();
    println!("screenshots and the browser's log: {}", logs.path().display());
    // One job slot, so that a host writing keeps others queued; a short boot timeout and no automatic retry, so that
    // a host whose network boot never reaches kiln fails soon and stays in error.
    let lab = Lab::start(|c| {
        c.max_concurrent_jobs = 1;
        c.policy.boot_timeout_secs = 6;
        c.policy.max_retries = 0;
    })
    .await;
    let image =
        json!({ "image": { "url": "http://10.0.0.1/os.raw", "checksum": format!("sha256:{}", "ab".repeat(32)) } });

    // node-1 and node-2 are inspected; node-1 is provisioned.
    lab.enroll("node-1").await;
    lab.enroll("node-2").await;
    lab.wait_state("node-1", "available").await;
    lab.wait_state("node-2", "available").await;
    let (code, body) = lab
        .api(Method::POST, "/api/v1/hosts/node-1/provision", Some(image.clone()))
        .await;
    assert_eq!(code, 202, "{body}");
    lab.wait_state("node-1", "provisioned").await;
    // node-4's network boot never reaches kiln: inspection fails in its booting phase.
    lab.dead_nics.lock().unwrap().insert("node-4".into());
    lab.enroll("node-4").await;
    let (failed, h4) = lab.wait_host("node-4", |h| h["state"] == "error").await;
    assert!(failed, "node-4 did not fail: {h4}");
    // node-3 is inspected and then writes its image, slowly, holding the only job slot.
    lab.dead_nics.lock().unwrap().insert("node-3".into());
    let agent = tokio::spawn(slow_agent(lab.lookup.clone(), lab.dir.path().to_path_buf(), "node-3"));
    lab.enroll("node-3").await;
    lab.wait_state("node-3", "available").await;
    let (code, body) = lab
        .api(Method::POST, "/api/v1/hosts/node-3/provision", Some(image.clone()))
        .await;
    assert_eq!(code, 202, "{body}");
    let (writing, h3) = lab
        .wait_host("node-3", |h| h["progress"]["bytes_written"].as_u64().unwrap_or(0) > 0)
        .await;
    assert!(writing, "node-3 is not writing: {h3}");
    // node-6, then node-7, wait for the slot.
    for n in ["node-6", "node-7"] {
        lab.enroll(n).await;
        let (queued, h) = lab.wait_host(n, |h| h["operational_status"] == "delayed").await;
        assert!(queued, "{n} is not queued: {h}");
    }

    check_served_files(&lab).await;

    let mut b = Browser::start(&server_spki(lab.dir.path()), &logs).await;

    // ------------------------------------------------------------ without a token: the login form and no data
    let anon = b.tab(true).await;
    b.open(&anon, &format!("{}/ui", lab.base)).await;
    b.wait_eq(
        &anon,
        "the login form alone",
        "[document.getElementById('login').hidden, document.getElementById('fleet').hidden, \
         document.body.textContent.includes('node-1')]",
        json!([false, true, false]),
    )
    .await;
    b.screenshot(&anon, "login").await;

    // ------------------------------------------------------------ the fleet page
    let tab = b.tab(false).await;
    b.open(&tab, &format!("{}/ui#token={}", lab.base, lab.admin)).await;
    let hosts = host_list(&lab).await;
    let mut names: Vec<String> = hosts.iter().map(|h| h["name"].as_str().unwrap().to_owned()).collect();
    names.sort();
    assert_eq!(names, ["node-1", "node-2", "node-3", "node-4", "node-6", "node-7"]);
    b.wait_eq(&tab, "a row per host", ROWS, json!(names)).await;
    // A tile per state present and per operational status, with the API's counts.
    let mut want = BTreeMap::from([("total".to_owned(), json!(hosts.len()))]);
    for s in ["ok", "delayed", "error"] {
        want.insert(format!("status:{s}"), json!(0));
    }
    for h in &hosts {
        for key in [
            format!("state:{}", h["state"].as_str().unwrap()),
            format!("status:{}", h["operational_status"].as_str().unwrap()),
        ] {
            let n = want.get(&key).and_then(Value::as_u64).unwrap_or(0);
            want.insert(key, json!(n + 1));
        }
    }
    assert_eq!(want["state:provisioning"], 1, "{want:?}");
    b.wait_eq(
        &tab,
        "the counts per state and status",
        "Object.fromEntries([...document.querySelectorAll('[data-count]')].map((t) => [t.dataset.count, \
         Number(t.querySelector('.n').textContent)]))",
        json!(want),
    )
    .await;
    // The host in error, with the first line of the reason and the phase that failed.
    let reason = h4["error"]["message"]
        .as_str()
        .unwrap()
        .lines()
        .next()
        .unwrap()
        .to_owned();
    b.wait_eq(
        &tab,
        "node-4 among the errors",
        "[...document.querySelectorAll('#errors li')].map((li) => [li.dataset.host, \
         li.querySelector('.failed-phase').textContent, li.querySelector('.reason').textContent])",
        json!([["node-4", "inspecting.booting", reason]]),
    )
    .await;
    // The host writing: a progress bar, bytes of the total, a rate and an ETA once two samples a second apart exist.
    let line = b
        .wait_for(
            &tab,
            "node-3 writing with a rate and an ETA",
            r"(() => { const li = document.querySelector('#writing li[data-host=node-3]'); if (!li) return false;
                 const p = li.querySelector('progress'); const t = li.querySelector('.num').textContent;
                 return p.value > 0 && p.value < 1 && /iB \/ 64\.0 GiB \(\d+%\)/.test(t) && / MiB\/s/.test(t)
                   && /ETA \d/.test(t) ? t : false; })()",
        )
        .await;
    println!("node-3 on the fleet page: {line}");
    b.wait_eq(
        &tab,
        "the delayed queue in order",
        "[...document.querySelectorAll('#queue li')].map((li) => li.dataset.host)",
        json!(["node-6", "node-7"]),
    )
    .await;
    // The durations: a dot per finished inspection and provisioning the API reports.
    let (code, inspections) = lab
        .api(Method::GET, "/api/v1/timings?phase=inspecting&limit=200", None)
        .await;
    assert_eq!(code, 200, "{inspections}");
    let inspections = inspections.as_array().unwrap().clone();
    let inspected: HashSet<&str> = inspections.iter().map(|t| t["host"].as_str().unwrap()).collect();
    assert_eq!(inspected, HashSet::from(["node-1", "node-2", "node-3", "node-4"]));
    assert!(
        inspections
            .iter()
            .any(|t| t["host"] == "node-4" && t["outcome"] == "error")
    );
    let ended: Vec<&str> = inspections.iter().map(|t| t["ended"].as_str().unwrap()).collect();
    assert!(ended.windows(2).all(|w| w[0] >= w[1]), "not newest first: {ended:?}");
    let (_, provisionings) = lab.api(Method::GET, "/api/v1/timings?phase=provisioning", None).await;
    assert_eq!(
        provisionings
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["host"].as_str().unwrap())
            .collect::<Vec<_>>(),
        ["node-1"],
        "only node-1 finished provisioning: {provisionings}"
    );
    let (code, bad) = lab.api(Method::GET, "/api/v1/timings?phase=nap", None).await;
    assert_eq!((code, &bad["field"]), (400, &json!("phase")), "{bad}");
    b.wait_eq(
        &tab,
        "a dot per finished operation",
        "['inspecting', 'provisioning'].map((p) => \
         document.querySelectorAll(`#durations svg [data-phase=${p}] circle.dot`).length)",
        json!([inspections.len(), 1]),
    )
    .await;
    // Nothing wider than a 1400 px window; a long BMC address is elided, whole in its title.
    let bmc = hosts.iter().find(|h| h["name"] == "node-1").unwrap()["bmc"]["address"].clone();
    b.wait_eq(
        &tab,
        "the table fits and elides",
        "(() => { const td = document.querySelector('#host-rows tr[data-host=node-1] td.bmc'); \
         return [document.documentElement.scrollWidth <= window.innerWidth, td.title, \
         getComputedStyle(td).textOverflow, td.scrollWidth > td.clientWidth]; })()",
        json!([true, bmc, "ellipsis", true]),
    )
    .await;
    b.screenshot(&tab, "fleet").await;

    // Sorting: by name, then backwards; by state (ties by name).
    b.click(&tab, "th[data-sort=name] button").await;
    let mut backwards = names.clone();
    backwards.reverse();
    b.wait_eq(&tab, "rows by name, backwards", ROWS, json!(backwards)).await;
    b.click(&tab, "th[data-sort=state] button").await;
    let mut by_state: Vec<(String, String)> = hosts
        .iter()
        .map(|h| {
            (
                h["state"].as_str().unwrap().to_owned(),
                h["name"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    by_state.sort();
    let by_state: Vec<String> = by_state.into_iter().map(|(_, n)| n).collect();
    b.wait_eq(&tab, "rows by state", ROWS, json!(by_state)).await;
    assert_eq!(
        b.eval(
            &tab,
            "document.querySelector('th[data-sort=state]').getAttribute('aria-sort')"
        )
        .await,
        "ascending"
    );
    b.click(&tab, "th[data-sort=name] button").await;
    b.wait_eq(&tab, "rows by name", ROWS, json!(names)).await;
    // Filters: free text, labels, state (and the tiles, which set the state filter).
    b.type_into(&tab, "#filter-text", "node-3").await;
    b.wait_eq(&tab, "text filter", ROWS, json!(["node-3"])).await;
    b.type_into(&tab, "#filter-text", "").await;
    b.type_into(&tab, "#filter-label", "rack=r2").await;
    b.wait_eq(&tab, "label filter, no match", ROWS, json!([])).await;
    b.type_into(&tab, "#filter-label", "rack=r1").await;
    b.wait_eq(&tab, "label filter, all match", ROWS, json!(names)).await;
    b.type_into(&tab, "#filter-label", "").await;
    b.click(&tab, "[data-count='status:delayed']").await;
    b.wait_eq(&tab, "delayed hosts only", ROWS, json!(["node-6", "node-7"]))
        .await;
    b.click(&tab, "[data-count='state:error']").await;
    b.wait_eq(&tab, "hosts in error only", ROWS, json!(["node-4"])).await;
    b.click(&tab, "[data-count='state:error']").await;
    b.wait_eq(&tab, "no state filter", ROWS, json!(names)).await;

    // ------------------------------------------------------------ a host's page and timeline
    b.click(&tab, "#host-rows tr[data-host=node-1] td.state").await;
    b.wait_for(
        &tab,
        "node-1's page",
        "location.hash === '#host=node-1' && document.getElementById('hardware').textContent.includes('2 × vcpu')",
    )
    .await;
    let (_, timings) = lab.api(Method::GET, "/api/v1/hosts/node-1/timings", None).await;
    let timings = timings.as_array().unwrap().clone();
    let phases: Vec<&str> = timings.iter().map(|t| t["phase"].as_str().unwrap()).collect();
    for p in [
        "registering",
        "inspecting",
        "inspecting.booting",
        "inspecting.running",
        "available",
    ] {
        assert!(phases.contains(&p), "node-1 never went through {p}: {phases:?}");
    }
    for p in [
        "provisioning",
        "provisioning.booting",
        "provisioning.running",
        "provisioned",
    ] {
        assert!(phases.contains(&p), "node-1 never went through {p}: {phases:?}");
    }
    let tops: Vec<&str> = phases.iter().copied().filter(|p| !p.contains('.')).collect();
    let open = timings.iter().filter(|t| t["ended"].is_null()).count();
    assert_eq!(open, 1, "only the current state is open: {timings:?}");
    b.wait_eq(
        &tab,
        "a bar per phase and sub-phase of node-1",
        "(() => { const q = (s) => document.querySelectorAll('#timeline svg ' + s).length; \
         return [q('.bar'), q('.bar.top'), q('.bar.sub'), q('.bar.o-open'), q('.bar.o-error')]; })()",
        json!([timings.len(), tops.len(), timings.len() - tops.len(), open, 0]),
    )
    .await;
    // In sequence, left to right, none of zero width, each sub-phase inside its phase.
    b.wait_eq(
        &tab,
        "the phases in sequence",
        "(() => { const box = (r) => [Number(r.getAttribute('x')), Number(r.getAttribute('width'))]; \
         const tops = [...document.querySelectorAll('#timeline .bar.top')]; let ok = true; \
         tops.forEach((r, i) => { const [x, w] = box(r); if (w <= 0) ok = false; \
           if (i > 0) { const [px, pw] = box(tops[i - 1]); if (x < px + pw) ok = false; } \
           for (const s of r.parentNode.querySelectorAll('.bar.sub')) { const [sx, sw] = box(s); \
             if (!s.dataset.phase.startsWith(r.dataset.phase + '.') || sx < x - 0.1 || sx + sw > x + w + 0.1) ok = false; } }); \
         return [tops.map((r) => r.dataset.phase), ok]; })()",
        json!([tops, true]),
    )
    .await;
    for want in ["inspecting.booting", "provisioning.running"] {
        b.wait_for(
            &tab,
            "the timing table",
            &format!(
                "document.getElementById('timings').textContent.includes({})",
                json!(want)
            ),
        )
        .await;
    }
    b.wait_for(
        &tab,
        "the events",
        "document.getElementById('events').textContent.includes('state')",
    )
    .await;
    b.screenshot(&tab, "host-node-1").await;

    // node-4's timeline: its failed phase and sub-phase in the colour of errors.
    b.eval(&tab, "location.hash = '#host=node-4'").await;
    let (_, t4) = lab.api(Method::GET, "/api/v1/hosts/node-4/timings", None).await;
    let errors4: Vec<&str> = t4
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["outcome"] == "error")
        .map(|t| t["phase"].as_str().unwrap())
        .collect();
    assert_eq!(errors4, ["inspecting", "inspecting.booting"]);
    b.wait_eq(
        &tab,
        "node-4's failed phases",
        "[...document.querySelectorAll('#timeline .bar.o-error')].map((r) => r.dataset.phase)",
        json!(errors4),
    )
    .await;
    b.screenshot(&tab, "host-node-4").await;

    // ------------------------------------------------------------ confirmation before destructive actions
    b.eval(&tab, "location.hash = '#host=node-1'").await;
    b.wait_for(
        &tab,
        "node-1's page",
        "document.getElementById('host-name').textContent.startsWith('node-1 ')",
    )
    .await;
    b.click(&tab, "[data-action=deprovision]").await;
    b.wait_eq(
        &tab,
        "the deprovision dialog",
        "[document.getElementById('confirm').open, document.getElementById('confirm-title').textContent, \
         document.getElementById('confirm-erase').hidden]",
        json!([true, "Deprovision node-1?", false]),
    )
    .await;
    b.screenshot(&tab, "confirm-deprovision").await;
    b.click(&tab, "#confirm-cancel").await;
    b.wait_eq(
        &tab,
        "the dialog closed",
        "[document.getElementById('confirm').open, document.getElementById('confirm').returnValue]",
        json!([false, "cancel"]),
    )
    .await;
    let (_, h1) = lab.api(Method::GET, "/api/v1/hosts/node-1", None).await;
    assert_eq!(
        (&h1["state"], h1["image"].is_object()),
        (&json!("provisioned"), true),
        "a cancelled deprovision changed node-1: {h1}"
    );

    b.eval(&tab, "location.hash = '#host=node-7'").await;
    b.wait_for(
        &tab,
        "node-7's page",
        "document.getElementById('host-name').textContent.startsWith('node-7 ')",
    )
    .await;
    b.click(&tab, "[data-action=delete]").await;
    b.wait_eq(
        &tab,
        "the delete dialog",
        "[document.getElementById('confirm').open, document.getElementById('confirm-ok').textContent]",
        json!([true, "Delete node-7"]),
    )
    .await;
    let (code, h7) = lab.api(Method::GET, "/api/v1/hosts/node-7", None).await;
    assert_eq!(
        (code, &h7["state"]),
        (200, &json!("inspecting")),
        "node-7 changed before the confirmation: {h7}"
    );
    b.click(&tab, "#confirm-ok").await;
    let (deleted, h7) = lab
        .wait_host("node-7", |h| h["state"] == "deleting" || h["name"].is_null())
        .await;
    assert!(deleted, "node-7 was not deleted: {h7}");

    // ------------------------------------------------------------ enrolling from the page
    lab.add_fake("node-5");
    b.eval(&tab, "location.hash = '#enroll'").await;
    b.wait_for(&tab, "the enroll form", "!document.getElementById('enroll').hidden")
        .await;
    let bad = "redfish-uefihttp://127.0.0.1:9/redfish/v1/Systems/node-5";
    let good = "redfish+http://127.0.0.1:9/redfish/v1/Systems/node-5";
    for (field, value) in [
        ("name", "node-5"),
        ("bmc_address", bad),
        ("bmc_username", "admin"),
        ("bmc_password", PASSWORD),
        ("boot_mac", mac_of("node-5").as_str()),
        ("labels", "rack=r1, role=worker"),
        ("deviceName", "/dev/vda"),
    ] {
        b.type_into(&tab, &format!("#enroll-form [name={field}]"), value).await;
    }
    // What the API answers to this host (a dry run writes nothing).
    let (code, refused) = lab
        .api(
            Method::POST,
            "/api/v1/hosts?dry_run=true",
            Some(
                json!({ "name": "node-5", "bmc": { "address": bad, "username": "admin", "password": PASSWORD },
                         "boot_mac": mac_of("node-5") }),
            ),
        )
        .await;
    assert_eq!((code, &refused["field"]), (422, &json!("bmc.address")), "{refused}");
    b.click(&tab, "#enroll-submit").await;
    b.wait_eq(
        &tab,
        "the API's message next to the BMC address",
        "(() => { const p = document.querySelector('.field-error[data-error-for=\"bmc.address\"]'); \
         return p.hidden ? null : [p.textContent, p.previousElementSibling.querySelector('input').name, \
         document.querySelector('[name=bmc_address]').getAttribute('aria-invalid'), \
         [...document.querySelectorAll('.field-error')].filter((e) => !e.hidden).length]; })()",
        json!([refused["error"], "bmc_address", "true", 1]),
    )
    .await;
    b.screenshot(&tab, "enroll-refused").await;
    assert!(!lab.host_names().await.contains(&"node-5".to_owned()));
    assert_eq!(
        b.eval(
            &tab,
            &format!(
                "[document.querySelector('[name=bmc_password]').value === {pw}, \
                 document.documentElement.outerHTML.includes({pw})]",
                pw = json!(PASSWORD)
            )
        )
        .await,
        json!([true, false]),
        "the password is only in its input"
    );
    b.type_into(&tab, "#enroll-form [name=bmc_address]", good).await;
    b.click(&tab, "#enroll-submit").await;
    b.wait_eq(
        &tab,
        "node-5 enrolled",
        "[document.getElementById('enroll-done').hidden, document.getElementById('enroll-done').textContent.startsWith('node-5 enrolled'), \
         [...document.querySelectorAll('.field-error')].filter((e) => !e.hidden).length, \
         document.querySelector('[name=bmc_password]').value]",
        json!([false, true, 0, ""]),
    )
    .await;
    b.screenshot(&tab, "enroll-done").await;
    let (_, h5) = lab.api(Method::GET, "/api/v1/hosts/node-5", None).await;
    assert_eq!(h5["bmc"]["address"], good, "{h5}");
    assert_eq!(h5["labels"], json!({ "rack": "r1", "role": "worker" }));
    assert_eq!(h5["root_device_hints"], json!({ "deviceName": "/dev/vda" }));
    // kiln's BMC connection for node-5 uses the password typed in the form.
    let mut typed = None;
    for _ in 0..200 {
        typed = lab.credentials.lock().unwrap().get("node-5").map(|c| c.1.clone());
        if typed.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        typed.as_deref(),
        Some(PASSWORD),
        "kiln did not connect with the password typed"
    );
    b.click(&tab, "#nav a[data-view=fleet]").await;
    b.wait_for(
        &tab,
        "node-5 in the fleet",
        "document.querySelector('#host-rows tr[data-host=node-5]') !== null",
    )
    .await;

    // ------------------------------------------------------------ importing Metal3 manifests by pasting them
    lab.add_fake("node-8");
    lab.add_fake("node-9");
    b.eval(&tab, "location.hash = '#enroll'").await;
    b.wait_for(&tab, "the import form", "!document.getElementById('enroll').hidden")
        .await;
    let bmh = |name: &str, extra: &str| {
        format!(
            "---\napiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  name: {name}\n  labels:\n    rack: r2\n\
             spec:\n  online: true\n  bootMACAddress: {}\n  bmc:\n    address: redfish+http://127.0.0.1:9/redfish/v1/Systems/{name}\n\
             \x20   credentialsName: {name}-bmc\n{extra}---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-bmc\n\
             stringData:\n  username: admin\n  password: {PASSWORD}\n",
            mac_of(name)
        )
    };
    let raid = "  raid:\n    hardwareRAIDVolumes:\n    - level: \"1\"\n";
    b.type_into(
        &tab,
        "#import-yaml",
        &format!("{}{}", bmh("node-8", ""), bmh("node-9", raid)),
    )
    .await;
    b.click(&tab, "#import-submit").await;
    b.wait_eq(
        &tab,
        "the refusal, naming the document and field",
        "(() => { const l = document.getElementById('import-refused'); return l.hidden ? null : \
         [...l.querySelectorAll('li')].map((li) => li.textContent.split(': ')[0]); })()",
        json!(["BareMetalHost default/node-9 spec.raid"]),
    )
    .await;
    b.screenshot(&tab, "import-refused").await;
    assert!(
        !lab.host_names().await.contains(&"node-8".to_owned()),
        "node-8 was enrolled although the import was refused"
    );
    b.type_into(
        &tab,
        "#import-yaml",
        &format!("{}{}", bmh("node-8", ""), bmh("node-9", "")),
    )
    .await;
    b.click(&tab, "#import-check").await;
    b.wait_eq(
        &tab,
        "the dry run's answer",
        "(() => { const d = document.getElementById('import-done'); return d.hidden ? null : \
         [...d.querySelectorAll('li')].map((li) => li.textContent); })()",
        json!(["node-8 would be enrolled", "node-9 would be enrolled"]),
    )
    .await;
    assert!(
        !lab.host_names().await.contains(&"node-8".to_owned()),
        "a dry run wrote"
    );
    b.click(&tab, "#import-submit").await;
    b.wait_eq(
        &tab,
        "both imported, the pasted secrets gone from the page",
        "(() => { const d = document.getElementById('import-done'); return d.hidden || !d.textContent.startsWith('Imported') \
         ? null : [d.querySelectorAll('li a').length, document.getElementById('import-yaml').value]; })()",
        json!([2, ""]),
    )
    .await;
    b.screenshot(&tab, "import-done").await;
    let (_, h8) = lab.api(Method::GET, "/api/v1/hosts/node-8", None).await;
    assert_eq!(h8["labels"], json!({ "rack": "r2" }), "{h8}");
    assert_eq!(h8["boot_mac"], json!(mac_of("node-8")), "{h8}");

    // ------------------------------------------------------------ the CSP held, no secret in the page
    assert_eq!(b.eval(&tab, "window.__csp").await, json!([]), "CSP violations");
    assert_eq!(
        b.eval(
            &tab,
            &format!(
                "performance.getEntriesByType('resource').map((e) => e.name).filter((n) => !n.startsWith({}))",
                json!(format!("{}/", lab.base))
            )
        )
        .await,
        json!([]),
        "the page loaded something from another origin"
    );
    assert_eq!(
        b.eval(
            &tab,
            &format!(
                "[document.documentElement.outerHTML.includes({t}) || location.href.includes({t}), \
                 document.documentElement.outerHTML.includes({pw}), localStorage.length, Object.keys(sessionStorage)]",
                t = json!(lab.admin),
                pw = json!(PASSWORD)
            )
        )
        .await,
        json!([false, false, 0, ["kiln-token"]]),
        "a secret reached the page or lasting storage"
    );
    b.close().await;
    agent.abort();
}
