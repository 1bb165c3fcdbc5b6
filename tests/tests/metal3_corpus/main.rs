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
//! either acts on it ([`ACTED_ON`]) or refuses it by name: through `kiln import`'s translation
//! (`kiln_http::import::translate`, in-process), and through the controller (kiln's CRD and BareMetalHost type keep
//! the field; a host with it applied to kube-apiserver is refused by name in its status, or enrolled with the field's
//! effect visible over REST or in `kiln_kube::engine::store::kiln_spec`'s output). Deviations are listed in
//! [`FIELD_DIFFERENCES`] and asserted to still hold.
//!
//! The third checks, end to end, one Metal3 behaviour kiln lacks: the preprovisioning network data standing in for
//! the instance's network data.
//!
//! The kiln CLI binary must be built (`cargo build -p kiln --bin kiln`, or `cargo test --workspace`): `cargo test -p
//! kiln-tests` alone does not build it.
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

mod fields;

/// The image checksum of the hosts kiln provisions in these tests.
const SHA256: &str = "f584b4c350929bc02992e0f97c5bf9b67435efbd8e5ec6be1cd58dd069667f5f";

// ---------------------------------------------------------------- known differences

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum FrontEnd {
    /// `kiln import` (the CLI, `POST /api/v1/import`, `kiln_http::import::translate`).
    Import,
    /// The BareMetalHost controller (`kiln_kube::host_controller` and `kiln_kube::engine::store`).
    Kube,
}

/// Corpus files where a front-end does not do what the file's `# expect:` (Metal3's semantics) says: (file, front-end,
/// a phrase of what that front-end does instead, why). The test asserts each one still differs, and that the
/// front-end's outcome contains the phrase.
const KNOWN_DIFFERENCES: &[(&str, FrontEnd, &str, &str)] = &[(
    "15-consumer-ref.yaml",
    FrontEnd::Import,
    "kiln does not act on consumerRef",
    "http/src/import.rs refuses consumerRef, the controller accepts it (it is the claim's record on the \
         BareMetalHost)",
)];

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
const KNOWN_TRANSLATION_DIFFERENCES: &[(&str, &str, &str)] = &[];

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

/// The appliance's settings: hosts never time out waiting for a boot that does not come, and virtual media is set
/// up (stand-in ramdisk files: no host ever boots the ISO).
fn settings(c: &mut kiln::server::Config) {
    c.policy.boot_timeout_secs = 3600;
    for f in ["vmlinuz", "initramfs", "grubx64.efi"] {
        std::fs::write(c.data_dir.join(f), format!("not a real {f}")).unwrap();
    }
    c.virtual_media = Some(kiln::server::VirtualMediaConfig {
        kernel: c.data_dir.join("vmlinuz"),
        initramfs: c.data_dir.join("initramfs"),
        efi_loader: c.data_dir.join("grubx64.efi"),
        bios_loader: None,
        cmdline: String::new(),
        url: None,
    });
}

async fn lab() -> Lab {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,kube_runtime=error".into()),
        )
        .with_test_writer()
        .try_init();
    Lab::start(settings).await
}

/// Whether the engine has said what it makes of a host: past registration, or failed.
fn engine_settled(h: &Value) -> bool {
    !h["error"].is_null() || !matches!(h["state"].as_str(), Some("registering" | "enrolled" | "") | None)
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

/// Judges a front-end's outcome for a file against its expectation and the known differences: `Some` failure.
fn judge(case: &Case, fe: FrontEnd, outcome: &Result<(), String>) -> Option<String> {
    let known = case.known(fe);
    match (outcome, known.is_empty()) {
        (Ok(()), true) => None,
        (Err(e), true) => Some(format!("{} through {fe:?}: {e}", case.file)),
        (Ok(()), false) => Some(format!(
            "{} through {fe:?} now meets its expectation: remove its entries from KNOWN_DIFFERENCES",
            case.file
        )),
        (Err(e), false) => known.iter().find(|p| !e.contains(**p)).map(|phrase| {
            format!(
                "{} through {fe:?} differs otherwise than KNOWN_DIFFERENCES says ({phrase:?}): {e}",
                case.file
            )
        }),
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

/// What `kiln import --dry-run FILE` and `kiln import FILE` said.
struct ImportRun {
    dry_ok: bool,
    dry_out: String,
    dry_err: String,
    ok: bool,
    err: String,
    said: String,
}

async fn run_import(cli: &Cli, case: &Case) -> ImportRun {
    let (dry_ok, dry_out, dry_err) = cli.import(&case.path, true).await;
    let (ok, out, err) = cli.import(&case.path, false).await;
    let said =
        format!("`kiln import --dry-run`: exit ok={dry_ok} {dry_out}{dry_err}; `kiln import`: exit ok={ok} {out}{err}");
    ImportRun {
        dry_ok,
        dry_out,
        dry_err,
        ok,
        err,
        said,
    }
}

/// What `kiln import` made of one file, judged once the engine settled the hosts it enrolled (up to 30 s); the kiln
/// hosts it made, by BareMetalHost name.
async fn import_outcome(lab: &Lab, case: &Case, run: &ImportRun) -> (Result<(), String>, BTreeMap<String, Value>) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    let mut hosts = BTreeMap::new();
    loop {
        hosts.clear();
        for (_, name, _) in case.hosts() {
            if let Some(h) = kiln_host(lab, &name).await {
                hosts.insert(name, h);
            }
        }
        if hosts.values().all(engine_settled) || tokio::time::Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let said = &run.said;
    let outcome = async {
        match &case.expect {
            Expect::Enrolled => {
                if !(run.dry_ok && run.dry_out.contains("would be")) {
                    return Err(format!("the dry run refused it: {said}"));
                }
                if !run.ok {
                    return Err(format!("refused: {said}"));
                }
                for (_, name, _) in case.hosts() {
                    let h = hosts
                        .get(&name)
                        .ok_or_else(|| format!("kiln has no host {name}: {said}"))?;
                    if !h["error"].is_null() {
                        return Err(format!("kiln's host {name} is in {}: {}", h["state"], h["error"]));
                    }
                    run_checks(case, h)?;
                    check_login(lab, case, &name).await?;
                }
                Ok(())
            }
            Expect::Refused(phrase) => {
                if run.dry_ok || !run.dry_err.contains(phrase.as_str()) {
                    return Err(format!("the dry run did not refuse it with {phrase:?}: {said}"));
                }
                if run.ok || !run.err.contains(phrase.as_str()) {
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
                if !run.ok && !run.err.contains("detached") {
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
        || (!matches!(
            st.provisioning.state,
            ProvisioningState::None | ProvisioningState::Registering
        ) && kiln.is_some())
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
    let mut runs = Vec::new();
    for c in &cases {
        runs.push(run_import(&cli, c).await);
    }

    // 2. The same documents through kube-apiserver and kiln's BareMetalHost controller.
    let kube = KubeSide::start().await;
    fakes(&kube.lab, &cases, |ns, n| format!("{ns}.{n}"));
    let namespaces: BTreeSet<String> = cases.iter().flat_map(|c| c.docs.iter().map(namespace)).collect();
    ensure_namespaces(&kube.client, &namespaces).await;
    // One file at a time, each settled before the next: many hosts created at once starve the store's connection
    // pool (`create_hosts` holds a transaction while it reads with another connection).
    let (mut applied, mut by_kube) = (Vec::new(), Vec::new());
    for c in &cases {
        let a = apply_docs(&kube.client, &c.docs).await;
        by_kube.push(through_kube(&kube.lab, &kube.client, c, &a).await);
        applied.push(a);
    }
    // Late errors (a registration that fails after the host appeared) would show by now.
    tokio::time::sleep(Duration::from_secs(2)).await;
    for (i, (c, a)) in cases.iter().zip(&applied).enumerate() {
        if by_kube[i].0.is_ok() {
            by_kube[i] = through_kube(&kube.lab, &kube.client, c, a).await;
        }
    }

    let mut by_import = Vec::new();
    for (c, run) in cases.iter().zip(&runs) {
        by_import.push(import_outcome(&import_lab, c, run).await);
    }

    // 3. Report everything, then judge.
    for (i, c) in cases.iter().enumerate() {
        eprintln!(
            "{:48} import: {:?}\n{:48} kube:   {:?}",
            c.file, by_import[i].0, "", by_kube[i].0
        );
    }
    let mut failures: Vec<String> = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        failures.extend(judge(c, FrontEnd::Import, &by_import[i].0));
        failures.extend(judge(c, FrontEnd::Kube, &by_kube[i].0));
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
                if known && x == y {
                    failures.push(format!(
                        "{} {name} {ptr}: both front-ends now agree; remove it from KNOWN_TRANSLATION_DIFFERENCES",
                        c.file
                    ));
                } else if !known && x != y {
                    failures.push(format!(
                        "{} {name} {ptr}: kiln import made {x}, the controller {y}",
                        c.file
                    ));
                }
            }
        }
    }
    assert!(compared_files >= 5, "only {compared_files} hosts were enrolled by both");

    kube.stop().await;
    let mut import_lab = import_lab;
    import_lab.stop().await;
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    eprintln!("metal3 corpus: {} files in {:?}", cases.len(), started.elapsed());
}

// ---------------------------------------------------------------- preprovisioning network data as network data

/// Metal3 writes the Secret named by `preprovisioningNetworkDataName` into the instance's config drive as its
/// network data when the host names no `networkData` (baremetal-operator
/// `internal/controller/metal3.io/host_config_data.go`, `NetworkData()`; metal3-docs
/// `advanced_instance_customization.md`: "the pre-provisioning secret is automatically applied to networkData if no
/// alternative secret is specified"). kiln does the same: the config drive its agent writes carries it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preprovisioning_network_data_is_the_instance_network_data_without_network_data() {
    let lab = Lab::start(|_| {}).await;
    let name = "pp-net-1";
    lab.add_fake(name);
    let mac = kiln_tests::inproc::mac_of(name);
    let network = json!({
        "links": [{"id": "enp1s0", "type": "phy", "ethernet_mac_address": mac}],
        "networks": [{"id": "prov", "link": "enp1s0", "type": "ipv4", "ip_address": "192.0.2.51",
                      "netmask": "255.255.255.0"}],
        "services": [{"type": "dns", "address": "192.0.2.53"}]
    });
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pp.yaml");
    std::fs::write(
        &file,
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-bmc\nstringData:\n  username: admin\n  password: \
             {pw}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: {name}-preprov\nstringData:\n  \
             networkData: '{network}'\n---\napiVersion: metal3.io/v1alpha1\nkind: BareMetalHost\nmetadata:\n  \
             name: {name}\nspec:\n  online: true\n  bootMACAddress: \"{mac}\"\n  bmc:\n    address: \
             redfish+http://127.0.0.1:9/redfish/v1/Systems/{name}\n    credentialsName: {name}-bmc\n  \
             preprovisioningNetworkDataName: {name}-preprov\n  image:\n    url: \
             http://192.0.2.250/images/os.qcow2\n    checksum: {SHA256}\n    checksumType: sha256\n    format: qcow2\n",
            pw = kiln_tests::inproc::PASSWORD,
        ),
    )
    .unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, &lab.admin).unwrap();
    let cli = Cli {
        kiln: kiln_tests::lab::target_bin("kiln").expect("the kiln binary (cargo build -p kiln --bin kiln)"),
        server: lab.base.clone(),
        token,
        ca: kiln_http::tls::ca_path(lab.dir.path()),
    };
    let (ok, out, err) = cli.import(&file, false).await;
    assert!(ok, "kiln import: {out}{err}");
    lab.wait_state(name, "provisioned").await;
    let drive = lab
        .drives
        .lock()
        .unwrap()
        .get(name)
        .cloned()
        .expect("the agent wrote a config drive");
    assert_eq!(
        drive["network_data"], network,
        "the preprovisioning network data is the installed OS's network data too: {drive}"
    );
    let mut lab = lab;
    lab.stop().await;
}
