//! A Metal3 compatibility corpus (`tests/corpus/metal3/`: BareMetalHost manifests with their Secrets, in the shapes
//! of Metal3's own documentation and examples) run through both of kiln's front-ends:
//!
//! - `kiln import --dry-run FILE` and `kiln import FILE`, the real CLI binary against an in-process appliance
//!   (`kiln_tests::inproc::Lab`), checked through the REST API;
//! - the same documents applied to a real kube-apiserver with kiln's CRDs and kiln's BareMetalHost controller driving
//!   a second in-process appliance's engine, checked through the BareMetalHost's status and the REST API.
//!
//! Each corpus file starts with `# expect: enrolled`, `# expect: refused: <phrase>` or `# expect: detached`, the
//! outcome Metal3's semantics call for; `# check: <JSON pointer> = <JSON>` lines are checked on the kiln host either
//! front-end made, `# bmc-login: <user> <password>` on the credentials kiln reached the BMC with. Where a front-end
//! does something else, the case is listed in [`KNOWN_DIFFERENCES`] (or, for a field of the kiln host the two
//! front-ends make differently, [`KNOWN_TRANSLATION_DIFFERENCES`]), and the test asserts that it still differs: a
//! fix fails the test until its entry is removed.
//!
//! The second test walks every top-level `spec` field of Metal3's upstream BareMetalHost CRD and proves that kiln
//! either acts on it ([`ACTED_ON`]) or refuses it by name, through both front-ends' translations.
//!
//! No BMC is ever dialed: the BMC addresses are in documentation ranges, and the lab's connector hands every host a
//! fake BMC (`kiln_bmc::FakeBmc`) whose boots go nowhere, so enrolled hosts register and then wait in inspection.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use kiln_bmc::FakeBmc;
use kiln_bmc::fake::PowerMode;
use kiln_kube::bmh::{BareMetalHost, OperationalStatus, ProvisioningState};
use kiln_kube::host_controller::{self, Config};
use kiln_tests::inproc::Lab;
use kiln_tests::kube::{KubeApiServer, install_crds, parse_crds};
use kube::api::{Api, Patch, PatchParams, PostParams, ValidationDirective};
use serde_json::{Value, json};

// ---------------------------------------------------------------- known differences

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FrontEnd {
    /// `kiln import` (the CLI, `kiln_http::import::translate` and the REST API).
    Import,
    /// The BareMetalHost controller (`kiln_kube::host_controller` and `kiln_kube::engine::store`).
    Kube,
}

/// Corpus files where a front-end does not do what the file's `# expect:` (Metal3's semantics) says: (file, front-end,
/// a phrase of what that front-end does instead, why). The test asserts each one still differs, and that the
/// front-end's outcome contains the phrase.
const KNOWN_DIFFERENCES: &[(&str, FrontEnd, &str, &str)] = &[
    (
        "05-externally-provisioned-image.yaml",
        FrontEnd::Import,
        "host is externally provisioned; kiln never writes it",
        "import.rs turns the image of an externally provisioned host into a provision request, which the REST API \
         refuses (409) after the host was enrolled, so the import fails and deletes the host again; `--dry-run` says \
         it would be enrolled. Metal3's docs recommend setting the image on externally provisioned hosts.",
    ),
    (
        "13-inspect-disabled-labels-description.yaml",
        FrontEnd::Kube,
        "/options/inspect",
        "the BareMetalHost controller ignores the inspect.metal3.io: disabled annotation (kiln_spec leaves \
         HostOptions::inspect at its default, true), so the host is inspected; `kiln import` honours it",
    ),
    (
        "13-inspect-disabled-labels-description.yaml",
        FrontEnd::Kube,
        "/labels/rack",
        "the kiln host of a BareMetalHost carries only the kiln.dev/baremetalhost label, not the BareMetalHost's \
         labels; `kiln import` copies them",
    ),
    (
        "14-detached.yaml",
        FrontEnd::Import,
        "is enrolled",
        "import.rs ignores the baremetalhost.metal3.io/detached annotation: the host is enrolled and driven \
         (registered, inspected, powered on), while Metal3 and kiln's controller leave a detached host alone",
    ),
    (
        "15-consumer-ref.yaml",
        FrontEnd::Import,
        "kiln does not act on consumerRef",
        "import.rs refuses consumerRef, the controller accepts it (it is the claim's record on the BareMetalHost)",
    ),
    (
        "16-network-data-without-image.yaml",
        FrontEnd::Import,
        "this host has no image",
        "import.rs refuses userData/networkData/metaData on a host without an image; Metal3 and the controller \
         accept them at enrollment and use them when the image is set",
    ),
];

/// The kiln host fields compared between the two front-ends for every file both enrolled.
const COMPARED: &[&str] = &[
    "/boot_mac",
    "/boot_mode",
    "/bmc/address",
    "/bmc/username",
    "/bmc/boot_method",
    "/bmc/tls",
    "/image",
    "/root_device_hints",
    "/options/inspect",
    "/options/externally_provisioned",
    "/options/erase",
    "/options/prepare",
    "/options/online",
    "/labels",
];

/// Kiln host fields the two front-ends make differently for a file: (file, or `*` for every file both enrolled,
/// JSON pointer, why). Asserted to still differ.
const KNOWN_TRANSLATION_DIFFERENCES: &[(&str, &str, &str)] = &[
    (
        "*",
        "/options/online",
        "`kiln import` stores spec.online as the host's options.online (kiln keeps an available or provisioned host \
         powered as online says); the controller leaves options.online unset and only sends power requests to \
         provisioned and externally provisioned hosts, so an available host with online: true stays off",
    ),
    (
        "13-inspect-disabled-labels-description.yaml",
        "/options/inspect",
        "see KNOWN_DIFFERENCES: the controller ignores inspect.metal3.io: disabled",
    ),
    (
        "13-inspect-disabled-labels-description.yaml",
        "/labels",
        "see KNOWN_DIFFERENCES: the controller does not copy the BareMetalHost's labels",
    ),
];

// ---------------------------------------------------------------- the corpus

#[derive(Clone, Debug, PartialEq)]
enum Expect {
    Enrolled,
    Refused(String),
    /// Metal3 does not manage the host: nothing may be enrolled for it (a refusal naming `detached` is fine too).
    Detached,
}

#[derive(Debug)]
struct Case {
    file: String,
    path: PathBuf,
    expect: Expect,
    checks: Vec<(String, Value)>,
    login: Option<(String, String)>,
    docs: Vec<Value>,
}

impl Case {
    /// (namespace, name, boot MAC) of each BareMetalHost in the file.
    fn hosts(&self) -> Vec<(String, String, Option<String>)> {
        self.docs
            .iter()
            .filter(|d| d["kind"] == "BareMetalHost")
            .map(|d| {
                (
                    namespace(d),
                    d["metadata"]["name"].as_str().unwrap().to_owned(),
                    d["spec"]["bootMACAddress"].as_str().map(str::to_ascii_lowercase),
                )
            })
            .collect()
    }

    fn known(&self, fe: FrontEnd) -> Vec<&'static str> {
        KNOWN_DIFFERENCES
            .iter()
            .filter(|(f, e, _, _)| *f == self.file && *e == fe)
            .map(|(_, _, phrase, _)| *phrase)
            .collect()
    }
}

fn namespace(d: &Value) -> String {
    d["metadata"]["namespace"].as_str().unwrap_or("default").to_owned()
}

fn corpus_dir() -> PathBuf {
    kiln_tests::repo_root().join("tests/corpus/metal3")
}

fn corpus() -> Vec<Case> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(corpus_dir())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    files.iter().map(|p| case(p)).collect()
}

fn case(path: &Path) -> Case {
    let file = path.file_name().unwrap().to_string_lossy().into_owned();
    let text = std::fs::read_to_string(path).unwrap();
    let first = text.lines().next().unwrap_or_default();
    let expect = match first.strip_prefix("# expect: ") {
        Some("enrolled") => Expect::Enrolled,
        Some("detached") => Expect::Detached,
        Some(r) if r.starts_with("refused: ") => Expect::Refused(r["refused: ".len()..].trim().to_owned()),
        _ => panic!("{file}: the first line must be `# expect: enrolled|detached|refused: <phrase>`, not {first:?}"),
    };
    let mut checks = Vec::new();
    let mut login = None;
    for l in text.lines().take_while(|l| l.starts_with('#')) {
        if let Some(c) = l.strip_prefix("# check: ") {
            let (ptr, v) = c.split_once(" = ").unwrap_or_else(|| panic!("{file}: bad check {c:?}"));
            let v: Value = serde_json::from_str(v).unwrap_or_else(|e| panic!("{file}: {c:?}: {e}"));
            checks.push((ptr.trim().to_owned(), v));
        } else if let Some(c) = l.strip_prefix("# bmc-login: ") {
            let (u, p) = c.split_once(' ').unwrap();
            login = Some((u.to_owned(), p.to_owned()));
        }
    }
    let docs: Vec<Value> = serde_saphyr::from_multiple(&text).unwrap_or_else(|e| panic!("{file}: {e}"));
    let docs: Vec<Value> = docs.into_iter().filter(|d| !d.is_null()).collect();
    assert!(
        docs.iter().any(|d| d["kind"] == "BareMetalHost"),
        "{file} has no BareMetalHost"
    );
    Case {
        file,
        path: path.to_owned(),
        expect,
        checks,
        login,
        docs,
    }
}

// ---------------------------------------------------------------- the lab side

/// A fake BMC that answers registration and power calls at once and whose boots go nowhere (no simulated firmware,
/// no agent): a host behind it registers and then waits in inspection.
fn quiet_fake(lab: &Lab, host: &str, mac: &str) {
    let f = FakeBmc::new(host)
        .with_mode(PowerMode::Auto { delay: Duration::ZERO })
        .with_inventory(kiln_bmc::Inventory {
            nic_macs: vec![mac.to_owned()],
            ..Default::default()
        });
    lab.fakes.lock().unwrap().insert(host.to_owned(), f);
}

/// A lab whose hosts never time out while waiting for a boot that does not come.
async fn lab() -> Lab {
    Lab::start(|c| c.policy.boot_timeout_secs = 3600).await
}

/// Gives every host of the corpus a fake BMC under the name the front-end gives it.
fn fakes(lab: &Lab, cases: &[Case], name: impl Fn(&str, &str) -> String) {
    for (i, c) in cases.iter().enumerate() {
        for (j, (ns, n, mac)) in c.hosts().into_iter().enumerate() {
            let mac = mac.unwrap_or_else(|| format!("52:54:00:ff:{i:02x}:{j:02x}"));
            quiet_fake(lab, &name(&ns, &n), &mac);
        }
    }
}

async fn kiln_host(lab: &Lab, name: &str) -> Option<Value> {
    let (code, body) = lab
        .api(reqwest::Method::GET, &format!("/api/v1/hosts/{name}"), None)
        .await;
    match code {
        200 => Some(body),
        404 => None,
        _ => panic!("GET /api/v1/hosts/{name}: {code} {body}"),
    }
}

/// The file's `# check:` lines against a kiln host; `Err` names each one that fails.
fn run_checks(case: &Case, host: &Value) -> Result<(), String> {
    let failed: Vec<String> = case
        .checks
        .iter()
        .filter(|(ptr, want)| host.pointer(ptr).unwrap_or(&Value::Null) != want)
        .map(|(ptr, want)| {
            format!(
                "check {ptr}: want {want}, kiln has {}",
                host.pointer(ptr).unwrap_or(&Value::Null)
            )
        })
        .collect();
    if failed.is_empty() {
        Ok(())
    } else {
        Err(failed.join("; "))
    }
}

/// Waits (up to 10 s) until kiln reached the host's BMC, and compares the credentials it used.
async fn check_login(lab: &Lab, case: &Case, host: &str) -> Result<(), String> {
    let Some((user, pass)) = &case.login else {
        return Ok(());
    };
    for _ in 0..100 {
        if let Some((u, p)) = lab.credentials.lock().unwrap().get(host).cloned() {
            return if (&u, &p) == (user, pass) {
                Ok(())
            } else {
                Err(format!(
                    "kiln logged in to the BMC as {u:?} with a {}-byte password, not {user:?} with {pass:?}",
                    p.len()
                ))
            };
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err("kiln never reached the host's BMC".into())
}

/// Asserts a front-end's outcome for a file against its expectation and the known differences.
fn judge(case: &Case, fe: FrontEnd, outcome: &Result<(), String>) {
    let known = case.known(fe);
    match (outcome, known.is_empty()) {
        (Ok(()), true) => {}
        (Err(e), true) => panic!("{} through {fe:?}: {e}", case.file),
        (Ok(()), false) => panic!(
            "{} through {fe:?} now meets its expectation: remove its entries from KNOWN_DIFFERENCES",
            case.file
        ),
        (Err(e), false) => {
            for phrase in known {
                assert!(
                    e.contains(phrase),
                    "{} through {fe:?} differs otherwise than KNOWN_DIFFERENCES says ({phrase:?}): {e}",
                    case.file
                );
            }
        }
    }
}

// ---------------------------------------------------------------- kiln import

struct Cli {
    kiln: PathBuf,
    server: String,
    token: PathBuf,
    ca: PathBuf,
}

impl Cli {
    async fn import(&self, file: &Path, dry_run: bool) -> (bool, String, String) {
        let mut cmd = tokio::process::Command::new(&self.kiln);
        cmd.arg("import").arg(file);
        if dry_run {
            cmd.arg("--dry-run");
        }
        let out = cmd
            .args(["--server", &self.server, "--token-file"])
            .arg(&self.token)
            .arg("--ca-file")
            .arg(&self.ca)
            .env("RUST_BACKTRACE", "0")
            .output()
            .await
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

/// `kiln import --dry-run` then `kiln import` of one file; the kiln hosts it made, by BareMetalHost name.
async fn through_import(lab: &Lab, cli: &Cli, case: &Case) -> (Result<(), String>, BTreeMap<String, Value>) {
    let (dry_ok, dry_out, dry_err) = cli.import(&case.path, true).await;
    let (ok, out, err) = cli.import(&case.path, false).await;
    let said =
        format!("`kiln import --dry-run`: exit ok={dry_ok} {dry_out}{dry_err}; `kiln import`: exit ok={ok} {out}{err}");
    let mut hosts = BTreeMap::new();
    for (_, name, _) in case.hosts() {
        if let Some(h) = kiln_host(lab, &name).await {
            hosts.insert(name, h);
        }
    }
    let outcome = async {
        match &case.expect {
            Expect::Enrolled => {
                if !(dry_ok && dry_out.contains("would be")) {
                    return Err(format!("the dry run refused it: {said}"));
                }
                if !ok {
                    return Err(format!("refused: {said}"));
                }
                for (_, name, _) in case.hosts() {
                    let h = hosts
                        .get(&name)
                        .ok_or_else(|| format!("kiln has no host {name}: {said}"))?;
                    run_checks(case, h)?;
                    check_login(lab, case, &name).await?;
                }
                Ok(())
            }
            Expect::Refused(phrase) => {
                if dry_ok || !dry_err.contains(phrase.as_str()) {
                    return Err(format!("the dry run did not refuse it with {phrase:?}: {said}"));
                }
                if ok || !err.contains(phrase.as_str()) {
                    return Err(format!("not refused with {phrase:?}: {said}"));
                }
                match hosts.keys().next() {
                    Some(n) => Err(format!("refused, yet {n} was enrolled: {said}")),
                    None => Ok(()),
                }
            }
            Expect::Detached => {
                if let Some(n) = hosts.keys().next() {
                    return Err(format!("{n} is enrolled although it is detached: {said}"));
                }
                if !ok && !err.contains("detached") {
                    return Err(format!("refused, but not for being detached: {said}"));
                }
                Ok(())
            }
        }
    }
    .await;
    (outcome, hosts)
}

// ---------------------------------------------------------------- the BareMetalHost controller

async fn apply_docs(client: &kube::Client, docs: &[Value]) -> Result<(), String> {
    let pp = PatchParams {
        field_validation: Some(ValidationDirective::Strict),
        ..PatchParams::apply("metal3-corpus")
    };
    // Secrets first, as `kubectl apply` of a file in this order would land them.
    let mut ordered: Vec<&Value> = docs.iter().filter(|d| d["kind"] == "Secret").collect();
    ordered.extend(docs.iter().filter(|d| d["kind"] == "BareMetalHost"));
    for d in ordered {
        let ns = namespace(d);
        let name = d["metadata"]["name"].as_str().unwrap();
        let r = if d["kind"] == "Secret" {
            Api::<Secret>::namespaced(client.clone(), &ns)
                .patch(name, &pp, &Patch::Apply(d))
                .await
                .map(|_| ())
        } else {
            Api::<BareMetalHost>::namespaced(client.clone(), &ns)
                .patch(name, &pp, &Patch::Apply(d))
                .await
                .map(|_| ())
        };
        r.map_err(|e| format!("kube-apiserver refused {} {ns}/{name}: {e}", d["kind"]))?;
    }
    Ok(())
}

async fn ensure_namespaces(client: &kube::Client, names: &BTreeSet<String>) {
    let api: Api<Namespace> = Api::all(client.clone());
    for n in names {
        if api.get_opt(n).await.unwrap().is_none() {
            let ns: Namespace = serde_json::from_value(json!({"metadata": {"name": n}})).unwrap();
            api.create(&PostParams::default(), &ns).await.unwrap();
        }
    }
}

/// Whether the controller has said what it makes of a BareMetalHost: an error, detached, or a state with the kiln
/// host behind it.
fn settled(bmh: Option<&BareMetalHost>, kiln: Option<&Value>) -> bool {
    let Some(st) = bmh.and_then(|b| b.status.as_ref()) else {
        return false;
    };
    !st.error_message.is_empty()
        || st.operational_status == OperationalStatus::Detached
        || (st.provisioning.state != ProvisioningState::None && kiln.is_some())
}

/// What the controller made of one file, once every BareMetalHost of it settled (or 60 s passed); the kiln hosts it
/// made, by BareMetalHost name.
async fn through_kube(
    lab: &Lab,
    client: &kube::Client,
    case: &Case,
    applied: &Result<(), String>,
) -> (Result<(), String>, BTreeMap<String, Value>) {
    let mut hosts = BTreeMap::new();
    if let Err(e) = applied {
        return (Err(e.clone()), hosts);
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let mut seen: Vec<(String, Option<BareMetalHost>, Option<Value>)> = Vec::new();
    loop {
        seen.clear();
        for (ns, name, _) in case.hosts() {
            let bmh = Api::<BareMetalHost>::namespaced(client.clone(), &ns)
                .get_opt(&name)
                .await
                .unwrap();
            let kiln = kiln_host(lab, &format!("{ns}.{name}")).await;
            seen.push((name, bmh, kiln));
        }
        if seen.iter().all(|(_, b, k)| settled(b.as_ref(), k.as_ref())) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for (name, _, k) in &seen {
        if let Some(k) = k {
            hosts.insert(name.clone(), k.clone());
        }
    }
    let outcome = async {
        for (name, bmh, kiln) in &seen {
            let status = bmh.as_ref().and_then(|b| b.status.clone()).unwrap_or_default();
            let said = format!(
                "BareMetalHost {name}: state {:?}, operationalStatus {:?}, errorType {:?}, errorMessage {:?}; kiln \
                 host: {}",
                status.provisioning.state,
                status.operational_status,
                status.error_type,
                status.error_message,
                if kiln.is_some() { "present" } else { "absent" }
            );
            match &case.expect {
                Expect::Enrolled => {
                    if !status.error_message.is_empty() || status.provisioning.state == ProvisioningState::None {
                        return Err(format!("not enrolled: {said}"));
                    }
                    let k = kiln.as_ref().ok_or_else(|| format!("kiln has no host: {said}"))?;
                    run_checks(case, k)?;
                    let (ns, _, _) = case.hosts().into_iter().find(|(_, n, _)| n == name).unwrap();
                    check_login(lab, case, &format!("{ns}.{name}")).await?;
                }
                Expect::Refused(phrase) => {
                    if !status.error_message.contains(phrase.as_str()) || status.error_type.is_none() {
                        return Err(format!("not refused with {phrase:?}: {said}"));
                    }
                    if kiln.is_some() {
                        return Err(format!("refused, yet kiln has the host: {said}"));
                    }
                }
                Expect::Detached => {
                    if status.operational_status != OperationalStatus::Detached || kiln.is_some() {
                        return Err(format!("not detached: {said}"));
                    }
                }
            }
        }
        Ok(())
    }
    .await;
    (outcome, hosts)
}

/// Starts etcd + kube-apiserver with kiln's CRDs, an in-process appliance, and kiln's BareMetalHost controller
/// against that appliance's engine.
struct KubeSide {
    server: KubeApiServer,
    client: kube::Client,
    lab: Lab,
    stop: tokio::sync::oneshot::Sender<()>,
    ctrl: tokio::task::JoinHandle<()>,
}

impl KubeSide {
    async fn start() -> KubeSide {
        let server = KubeApiServer::start().await.expect("start etcd + kube-apiserver");
        let client = server.client().await.unwrap();
        install_crds(&client, &parse_crds(&kiln_kube::crds::crds_yaml()).unwrap())
            .await
            .unwrap();
        let lab = lab().await;
        let config = Config {
            busy_requeue: Duration::from_millis(300),
            idle_requeue: Duration::from_secs(5),
            error_requeue: Duration::from_millis(500),
            ..Config::default()
        };
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let ctrl = tokio::spawn(host_controller::run(client.clone(), lab.engine(), config, async move {
            let _ = stop_rx.await;
        }));
        KubeSide {
            server,
            client,
            lab,
            stop,
            ctrl,
        }
    }

    async fn stop(mut self) {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.ctrl)
            .await
            .expect("controller shuts down")
            .unwrap();
        self.lab.stop().await;
        drop(self.server);
    }
}

/// The kiln host as far as it is compared between front-ends.
fn compared(host: &Value, ptr: &str) -> Value {
    let mut v = host.pointer(ptr).cloned().unwrap_or(Value::Null);
    if ptr == "/labels"
        && let Some(m) = v.as_object_mut()
    {
        m.remove(kiln_kube::engine::store::BMH_LABEL);
    }
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metal3_corpus_through_both_front_ends() {
    let started = std::time::Instant::now();
    let cases = corpus();
    assert!(cases.len() >= 15, "the corpus has {} files", cases.len());
    for (file, _, _, _) in KNOWN_DIFFERENCES {
        assert!(
            cases.iter().any(|c| c.file == *file),
            "KNOWN_DIFFERENCES names {file}, not in the corpus"
        );
    }

    // 1. `kiln import`, the CLI binary against an in-process appliance.
    let import_lab = lab().await;
    fakes(&import_lab, &cases, |_, n| n.to_owned());
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, &import_lab.admin).unwrap();
    let cli = Cli {
        kiln: kiln_tests::lab::target_bin("kiln").expect("the kiln binary (cargo build -p kiln --bin kiln)"),
        server: import_lab.base.clone(),
        token,
        ca: kiln_http::tls::ca_path(import_lab.dir.path()),
    };
    let mut by_import = Vec::new();
    for c in &cases {
        by_import.push(through_import(&import_lab, &cli, c).await);
    }

    // 2. The same documents through kube-apiserver and kiln's BareMetalHost controller.
    let kube = KubeSide::start().await;
    fakes(&kube.lab, &cases, |ns, n| format!("{ns}.{n}"));
    let namespaces: BTreeSet<String> = cases.iter().flat_map(|c| c.docs.iter().map(namespace)).collect();
    ensure_namespaces(&kube.client, &namespaces).await;
    let mut applied = Vec::new();
    for c in &cases {
        applied.push(apply_docs(&kube.client, &c.docs).await);
    }
    let mut by_kube = Vec::new();
    for (c, a) in cases.iter().zip(&applied) {
        by_kube.push(through_kube(&kube.lab, &kube.client, c, a).await);
    }
    // Late errors (a registration that fails after the host appeared) would show by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, (c, a)) in cases.iter().zip(&applied).enumerate() {
        if by_kube[i].0.is_ok() {
            by_kube[i] = through_kube(&kube.lab, &kube.client, c, a).await;
        }
    }

    // 3. Report everything, then judge.
    for (i, c) in cases.iter().enumerate() {
        eprintln!(
            "{:48} import: {:?}\n{:48} kube:   {:?}",
            c.file, by_import[i].0, "", by_kube[i].0
        );
    }
    for (i, c) in cases.iter().enumerate() {
        judge(c, FrontEnd::Import, &by_import[i].0);
        judge(c, FrontEnd::Kube, &by_kube[i].0);
    }

    // 4. Where both front-ends enrolled a host, they made the same kiln host but for the known differences.
    for (file, ptr, _) in KNOWN_TRANSLATION_DIFFERENCES {
        assert!(COMPARED.contains(ptr), "{ptr} is not compared");
        assert!(
            *file == "*" || cases.iter().any(|c| c.file == *file),
            "KNOWN_TRANSLATION_DIFFERENCES names {file}"
        );
    }
    let mut compared_files = 0;
    for (i, c) in cases.iter().enumerate() {
        for (_, name, _) in c.hosts() {
            let (Some(a), Some(b)) = (by_import[i].1.get(&name), by_kube[i].1.get(&name)) else {
                continue;
            };
            compared_files += 1;
            for ptr in COMPARED {
                let (x, y) = (compared(a, ptr), compared(b, ptr));
                let known = KNOWN_TRANSLATION_DIFFERENCES
                    .iter()
                    .any(|(f, p, _)| (*f == "*" || *f == c.file) && p == ptr);
                if known {
                    assert_ne!(
                        x, y,
                        "{} {name} {ptr}: both front-ends now agree; remove it from KNOWN_TRANSLATION_DIFFERENCES",
                        c.file
                    );
                } else {
                    assert_eq!(x, y, "{} {name} {ptr}: kiln import vs the controller", c.file);
                }
            }
        }
    }
    assert!(compared_files >= 5, "only {compared_files} hosts were enrolled by both");

    kube.stop().await;
    let mut import_lab = import_lab;
    import_lab.stop().await;
    eprintln!("metal3 corpus: {} files in {:?}", cases.len(), started.elapsed());
}
