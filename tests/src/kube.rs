//! A real Kubernetes API server for tests: etcd + kube-apiserver on loopback, built from Go modules by
//! `tests/kube/build.sh` (run by `tests/setup.sh`) and cached under `.cache/kube/<version>/`.
//!
//! [`KubeApiServer::start`] generates a CA and serving certificate (openssl), a service-account key pair and a static
//! token for an admin user (`system:masters`), starts etcd and kube-apiserver on free loopback ports, waits for
//! `/readyz`, and writes a kubeconfig. Both processes are killed and all files removed on drop; their pids are kept in
//! the lab's [`Record`] so a run killed with SIGKILL is cleaned up by the next one.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, Patch, PatchParams};

use crate::state::Record;

/// The Cluster API version whose CRDs `build.sh` caches.
pub const CAPI_VERSION: &str = "v1.14.2";

/// The Kubernetes version pinned in `tests/kube/go.mod` (e.g. `v1.37.2`).
pub fn k8s_version() -> String {
    let gomod = std::fs::read_to_string(crate::repo_root().join("tests/kube/go.mod")).unwrap_or_default();
    gomod
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some("k8s.io/kubernetes")).then(|| w.next()).flatten()
        })
        .find(|v| v.starts_with('v'))
        .unwrap_or("v0.0.0")
        .to_owned()
}

/// Where `build.sh` puts the binaries for the pinned version.
pub fn bin_dir() -> PathBuf {
    crate::cache_dir().join("kube").join(k8s_version())
}

/// The cached Cluster API CRDs (`config/crd/bases` of `sigs.k8s.io/cluster-api` plus kubeadm bootstrap and control
/// plane), one YAML file each.
pub fn capi_crd_dir() -> PathBuf {
    crate::cache_dir()
        .join("kube")
        .join(format!("cluster-api-{CAPI_VERSION}"))
        .join("crd")
}

/// The bearer token of the admin user.
pub const ADMIN_TOKEN: &str = "kiln-test-admin-token";

/// A running etcd + kube-apiserver pair.
#[derive(Debug)]
pub struct KubeApiServer {
    /// `https://127.0.0.1:<port>`.
    pub url: String,
    /// The kubeconfig for the admin user.
    pub kubeconfig: PathBuf,
    /// The CA certificate (PEM) the server's certificate chains to.
    pub ca_pem: Vec<u8>,
    etcd: Child,
    apiserver: Child,
    dir: tempfile::TempDir,
    _record: Record,
}

fn openssl(dir: &Path, args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .context("run openssl")?;
    if !out.status.success() {
        bail!(
            "openssl {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

pub(crate) fn tail(path: &Path) -> String {
    let s = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

pub(crate) fn spawn(bin: &Path, args: &[String], log: &Path, record: &Record) -> anyhow::Result<Child> {
    let out = std::fs::File::create(log)?;
    let child = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        .spawn()
        .with_context(|| format!("start {}", bin.display()))?;
    record.add_pid(child.id());
    Ok(child)
}

/// Kills a child politely (SIGTERM, then SIGKILL after 5 s) and reaps it.
pub(crate) fn stop(child: &mut Child) {
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
}

impl KubeApiServer {
    /// The kube-apiserver and etcd binaries, or an error telling to run `tests/setup.sh`. etcd is the one built from
    /// `go.etcd.io/etcd/server/v3` when present, else Debian's `/usr/bin/etcd`.
    pub fn binaries() -> anyhow::Result<(PathBuf, PathBuf)> {
        let apiserver = bin_dir().join("kube-apiserver");
        if !apiserver.exists() {
            bail!(
                "{} is missing: run tests/setup.sh (it runs tests/kube/build.sh)",
                apiserver.display()
            );
        }
        let built = bin_dir().join("etcd");
        let etcd = if built.exists() {
            built
        } else {
            PathBuf::from("/usr/bin/etcd")
        };
        Ok((apiserver, etcd))
    }

    /// Starts etcd and kube-apiserver and waits (up to 90 s) until `/readyz` answers `ok`.
    pub async fn start() -> anyhow::Result<Self> {
        let (apiserver_bin, etcd_bin) = Self::binaries()?;
        let record = Record::new()?;
        let dir = tempfile::Builder::new().prefix("kiln-kube-").tempdir()?;
        let d = dir.path();
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        let mut ca = vec!["req", "-x509"];
        ca.extend(ec);
        ca.extend([
            "-keyout",
            "ca.key",
            "-out",
            "ca.crt",
            "-days",
            "2",
            "-subj",
            "/CN=kiln-test-ca",
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ]);
        openssl(d, &ca)?;
        let mut csr = vec!["req"];
        csr.extend(ec);
        csr.extend([
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=kube-apiserver",
        ]);
        openssl(d, &csr)?;
        std::fs::write(
            d.join("server.ext"),
            format!(
                "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n\
             subjectAltName=IP:127.0.0.1,IP:{},DNS:localhost,DNS:kubernetes.default.svc\n",
                crate::operator::SERVER
            ),
        )?;
        openssl(
            d,
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                "server.crt",
                "-days",
                "2",
                "-extfile",
                "server.ext",
            ],
        )?;
        openssl(
            d,
            &[
                "genpkey",
                "-algorithm",
                "EC",
                "-pkeyopt",
                "ec_paramgen_curve:P-256",
                "-out",
                "sa.key",
            ],
        )?;
        openssl(d, &["pkey", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
        std::fs::write(
            d.join("tokens.csv"),
            format!("{ADMIN_TOKEN},kiln-admin,kiln-admin-uid,system:masters\n"),
        )?;

        let (etcd_port, peer_port, port) = (crate::free_port(), crate::free_port(), crate::free_port());
        let p = |f: &str| d.join(f).display().to_string();
        let mut etcd_args: Vec<String> = vec![
            "--name=kiln-test".into(),
            format!("--data-dir={}", p("etcd")),
            format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"),
            format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"),
            format!("--initial-cluster=kiln-test=http://127.0.0.1:{peer_port}"),
        ];
        if etcd_bin != Path::new("/usr/bin/etcd") {
            etcd_args.push("--unsafe-no-fsync".into());
        }
        let etcd_log = d.join("etcd.log");
        let mut etcd = spawn(&etcd_bin, &etcd_args, &etcd_log, &record)?;
        let args: Vec<String> = vec![
            format!("--etcd-servers=http://127.0.0.1:{etcd_port}"),
            "--bind-address=127.0.0.1".into(),
            "--advertise-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
            format!("--cert-dir={}", p("certs")),
            format!("--tls-cert-file={}", p("server.crt")),
            format!("--tls-private-key-file={}", p("server.key")),
            format!("--client-ca-file={}", p("ca.crt")),
            format!("--token-auth-file={}", p("tokens.csv")),
            // Node: kubelets (the node image's, joined with kubeadm) act on their own Node and pods only.
            "--authorization-mode=Node,RBAC".into(),
            // kubeadm join authenticates with a bootstrap token (Cluster API's kubeadm bootstrap provider makes it).
            "--enable-bootstrap-token-auth=true".into(),
            "--service-account-issuer=https://kubernetes.default.svc".into(),
            format!("--service-account-key-file={}", p("sa.pub")),
            format!("--service-account-signing-key-file={}", p("sa.key")),
            "--service-cluster-ip-range=10.96.0.0/24".into(),
            "--allow-privileged=true".into(),
            "--endpoint-reconciler-type=none".into(),
            "--profiling=false".into(),
        ];
        let log = d.join("kube-apiserver.log");
        let apiserver = match spawn(&apiserver_bin, &args, &log, &record) {
            Ok(c) => c,
            Err(e) => {
                stop(&mut etcd);
                return Err(e);
            }
        };
        let ca_pem = std::fs::read(d.join("ca.crt"))?;
        let kubeconfig = d.join("kubeconfig");
        let url = format!("https://127.0.0.1:{port}");
        std::fs::write(&kubeconfig, admin_kubeconfig(&url, &ca_pem))?;
        let mut me = Self {
            url,
            kubeconfig,
            ca_pem,
            etcd,
            apiserver,
            dir,
            _record: record,
        };
        if let Err(e) = me.wait_ready(Duration::from_secs(90)).await {
            let msg = format!(
                "{e:#}\n--- kube-apiserver log ---\n{}\n--- etcd log ---\n{}",
                tail(&log),
                tail(&etcd_log)
            );
            drop(me);
            bail!(msg);
        }
        Ok(me)
    }

    async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .add_root_certificate(reqwest::Certificate::from_pem(&self.ca_pem)?)
            .timeout(Duration::from_secs(5))
            .build()?;
        let deadline = Instant::now() + timeout;
        let url = format!("{}/readyz", self.url);
        loop {
            if let Ok(Some(st)) = self.apiserver.try_wait() {
                bail!("kube-apiserver exited ({st})");
            }
            if let Ok(Some(st)) = self.etcd.try_wait() {
                bail!("etcd exited ({st})");
            }
            let ok = async {
                let r = http.get(&url).bearer_auth(ADMIN_TOKEN).send().await.ok()?;
                let status = r.status();
                let body = r.text().await.ok()?;
                Some(status.is_success() && body.trim() == "ok")
            }
            .await;
            if ok == Some(true) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("kube-apiserver not ready after {timeout:?}");
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// A kube-rs client for the admin user (through the written kubeconfig).
    pub async fn client(&self) -> anyhow::Result<kube::Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        Ok(kube::Client::try_from(config)?)
    }

    /// A client that impersonates `user` in `groups` (the admin may impersonate anyone), e.g. a ServiceAccount to
    /// check that an RBAC role suffices.
    pub async fn client_as(&self, user: &str, groups: &[&str]) -> anyhow::Result<kube::Client> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let kc = kube::config::Kubeconfig::read_from(&self.kubeconfig)?;
        let mut config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default()).await?;
        config.auth_info.impersonate = Some(user.to_owned());
        config.auth_info.impersonate_groups = Some(groups.iter().map(|g| g.to_string()).collect());
        Ok(kube::Client::try_from(config)?)
    }

    /// The admin kubeconfig for `server` (a URL: the test's own, or an address the machines reach the server at),
    /// with the CA embedded so that it can be copied into a Secret or onto another machine.
    pub fn admin_kubeconfig(&self, server: &str) -> String {
        admin_kubeconfig(server, &self.ca_pem)
    }

    /// The directory holding certificates, logs and the kubeconfig (removed on drop).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The tail of the kube-apiserver log (for failure messages).
    pub fn log_tail(&self) -> String {
        tail(&self.dir.path().join("kube-apiserver.log"))
    }
}

impl Drop for KubeApiServer {
    fn drop(&mut self) {
        stop(&mut self.apiserver);
        stop(&mut self.etcd);
    }
}

/// A kubeconfig for the admin user of the server at `url` whose CA is `ca_pem`, embedded.
fn admin_kubeconfig(url: &str, ca_pem: &[u8]) -> String {
    use base64::Engine as _;
    let ca = base64::engine::general_purpose::STANDARD.encode(ca_pem);
    format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: kiln-test\n  cluster:\n    server: {url}\n    \
         certificate-authority-data: {ca}\nusers:\n- name: kiln-admin\n  user:\n    token: {ADMIN_TOKEN}\n\
         contexts:\n- name: kiln-test\n  context:\n    cluster: kiln-test\n    user: kiln-admin\n    \
         namespace: default\ncurrent-context: kiln-test\n"
    )
}

/// Parses a (multi-document) YAML stream of CRDs.
pub fn parse_crds(yaml: &str) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).context("parse CRD YAML")?;
    docs.into_iter()
        .filter(|d| !d.is_null())
        .map(|d| serde_json::from_value(d).context("not a CustomResourceDefinition"))
        .collect()
}

/// Reads every `*.yaml` CRD file in `dir`.
pub fn read_crd_dir(dir: &Path) -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .with_context(|| format!("read {} (run tests/setup.sh)", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        out.extend(parse_crds(&std::fs::read_to_string(&f)?).with_context(|| f.display().to_string())?);
    }
    Ok(out)
}

/// Server-side applies CRDs and waits until each is `Established`.
pub async fn install_crds(client: &kube::Client, crds: &[CustomResourceDefinition]) -> anyhow::Result<()> {
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds {
        let name = crd.metadata.name.clone().context("CRD without a name")?;
        let mut crd = crd.clone();
        crd.metadata.managed_fields = None;
        crd.status = None;
        api.patch(&name, &PatchParams::apply("kiln-tests").force(), &Patch::Apply(&crd))
            .await
            .with_context(|| format!("apply CRD {name}"))?;
    }
    for crd in crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        let cond = kube::runtime::conditions::is_crd_established();
        tokio::time::timeout(
            Duration::from_secs(30),
            kube::runtime::wait::await_condition(api.clone(), &name, cond),
        )
        .await
        .with_context(|| format!("CRD {name} not established"))??;
    }
    Ok(())
}

/// Server-side applies every object of the `*.yaml` files in `dir` (not `kustomization.yaml`) with strict field
/// validation, finding each kind's resource through discovery. Returns the `kind/name`s applied.
pub async fn apply_manifest_dir(client: &kube::Client, dir: &Path) -> anyhow::Result<Vec<String>> {
    use kube::api::{DynamicObject, GroupVersionKind, ValidationDirective};
    use kube::discovery::{Discovery, Scope};
    let discovery = Discovery::new(client.clone()).run().await?;
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    // Namespaces first, so namespaced objects in the same directory can land.
    files.sort_by_key(|f| !f.to_string_lossy().contains("namespace"));
    let pp = PatchParams {
        field_validation: Some(ValidationDirective::Strict),
        ..PatchParams::apply("kiln-tests")
    };
    let mut applied = Vec::new();
    for f in files {
        let docs: Vec<serde_json::Value> =
            serde_saphyr::from_multiple(&std::fs::read_to_string(&f)?).with_context(|| f.display().to_string())?;
        for doc in docs.into_iter().filter(|d| !d.is_null()) {
            let obj: DynamicObject = serde_json::from_value(doc.clone())?;
            let tm = obj.types.clone().context("object without apiVersion/kind")?;
            let gvk = GroupVersionKind::try_from(&tm)?;
            let (ar, caps) = discovery
                .resolve_gvk(&gvk)
                .with_context(|| format!("unknown kind {gvk:?}"))?;
            let name = obj.metadata.name.clone().context("object without a name")?;
            let api: Api<DynamicObject> = match (caps.scope, obj.metadata.namespace.as_deref()) {
                (Scope::Namespaced, Some(ns)) => Api::namespaced_with(client.clone(), ns, &ar),
                (Scope::Namespaced, None) => Api::default_namespaced_with(client.clone(), &ar),
                (Scope::Cluster, _) => Api::all_with(client.clone(), &ar),
            };
            api.patch(&name, &pp, &Patch::Apply(&doc))
                .await
                .with_context(|| format!("apply {}/{name} from {}", tm.kind, f.display()))?;
            applied.push(format!("{}/{name}", tm.kind));
        }
    }
    Ok(applied)
}

/// Where `tests/capi/build.sh` puts the Cluster API manager binaries.
pub fn capi_bin_dir() -> PathBuf {
    crate::cache_dir()
        .join("kube")
        .join(format!("cluster-api-{CAPI_VERSION}"))
        .join("bin")
}

/// The real Cluster API core manager and kubeadm bootstrap manager (built from `sigs.k8s.io/cluster-api` at
/// [`CAPI_VERSION`]), running against a [`KubeApiServer`] as its admin, without leader election. Their webhook servers
/// get a throwaway self-signed certificate: the CRDs are installed from `config/crd/bases`, which reference no
/// webhook, so the API server never calls them. Stopped on drop; logs in the server's directory.
pub struct CapiManagers {
    children: Vec<Child>,
    pub logs: Vec<PathBuf>,
    _record: Record,
}

impl CapiManagers {
    pub fn start(server: &KubeApiServer) -> anyhow::Result<Self> {
        Self::start_with(server, &[])
    }

    /// [`CapiManagers::start`] with extra arguments for both managers (e.g. `--feature-gates=ClusterTopology=true`).
    pub fn start_with(server: &KubeApiServer, extra: &[&str]) -> anyhow::Result<Self> {
        let bin = capi_bin_dir();
        for b in ["capi-core", "capi-kubeadm-bootstrap"] {
            if !bin.join(b).is_file() {
                bail!(
                    "{} is missing: run `KILN_SETUP_KUBE=1 tests/setup.sh` (or tests/capi/build.sh)",
                    bin.join(b).display()
                );
            }
        }
        let record = Record::new()?;
        let d = server.dir().join("capi");
        std::fs::create_dir_all(&d)?;
        openssl(
            &d,
            &[
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
                "-nodes",
                "-keyout",
                "tls.key",
                "-out",
                "tls.crt",
                "-days",
                "2",
                "-subj",
                "/CN=localhost",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ],
        )?;
        let mut me = Self {
            children: Vec::new(),
            logs: Vec::new(),
            _record: record,
        };
        for name in ["capi-core", "capi-kubeadm-bootstrap"] {
            let mut args: Vec<String> = vec![
                format!("--kubeconfig={}", server.kubeconfig.display()),
                "--leader-elect=false".into(),
                format!("--webhook-cert-dir={}", d.display()),
                format!("--webhook-port={}", crate::free_port()),
                format!("--health-addr=127.0.0.1:{}", crate::free_port()),
                format!("--diagnostics-address=127.0.0.1:{}", crate::free_port()),
                "--insecure-diagnostics".into(),
                "--sync-period=30s".into(),
                "--v=2".into(),
            ];
            args.extend(extra.iter().map(|a| (*a).to_owned()));
            let log = server.dir().join(format!("{name}.log"));
            let child = spawn(&bin.join(name), &args, &log, &me._record)?;
            me.children.push(child);
            me.logs.push(log);
        }
        Ok(me)
    }

    /// The last lines of each manager's log.
    pub fn log_tail(&self) -> String {
        self.logs
            .iter()
            .map(|l| format!("--- {} ---\n{}", l.display(), tail(l)))
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Whether both managers are still running.
    pub fn running(&mut self) -> bool {
        self.children.iter_mut().all(|c| matches!(c.try_wait(), Ok(None)))
    }
}

impl Drop for CapiManagers {
    fn drop(&mut self) {
        for c in &mut self.children {
            stop(c);
        }
    }
}

/// The Cluster API CRDs as its release manifests install them: `config/crd/bases` plus the contract label
/// (`cluster.x-k8s.io/v1beta2: v1beta2`) its kustomization adds, which the managers need to resolve references.
pub fn capi_crds() -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut crds = read_crd_dir(&capi_crd_dir())?;
    for c in &mut crds {
        c.metadata
            .labels
            .get_or_insert_default()
            .insert("cluster.x-k8s.io/v1beta2".into(), "v1beta2".into());
    }
    Ok(crds)
}

/// The cached CRDs of the Cluster API RKE2 bootstrap and control plane providers (fetched by `tests/capi/build.sh`),
/// with the contract label their release manifests carry.
pub fn caprke2_crds() -> anyhow::Result<Vec<CustomResourceDefinition>> {
    let mut crds = read_crd_dir(&crate::cache_dir().join("kube").join("caprke2-v0.21.0").join("crd"))?;
    for c in &mut crds {
        c.metadata
            .labels
            .get_or_insert_default()
            .insert("cluster.x-k8s.io/v1beta2".into(), "v1beta1".into());
    }
    Ok(crds)
}

/// The API server made reachable inside a lab namespace at `https://127.0.0.1:6443` (its certificate names
/// 127.0.0.1): a socat in the host namespace serves a unix socket that forwards to the server, and a socat inside the
/// namespace forwards its port to that socket. Nothing listens outside loopback. Stopped on drop.
pub struct NsBridge {
    children: Vec<Child>,
    /// A kubeconfig for the admin user that works inside the namespace.
    pub kubeconfig: PathBuf,
}

impl KubeApiServer {
    pub fn bridge_into(&self, ns: &crate::netns::Netns, record: &Record) -> anyhow::Result<NsBridge> {
        let sock = self.dir().join("apiserver-bridge.sock");
        let _ = std::fs::remove_file(&sock);
        let hostport = self.url.trim_start_matches("https://");
        let outer = Command::new("socat")
            .arg(format!("UNIX-LISTEN:{},fork", sock.display()))
            .arg(format!("TCP:{hostport}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("start socat (run tests/setup.sh)")?;
        record.add_pid(outer.id());
        let mut bridge = NsBridge {
            children: vec![outer],
            kubeconfig: self.dir().join("kubeconfig-in-ns"),
        };
        crate::cmd::wait_for("the bridge socket", Duration::from_secs(10), || {
            sock.exists().then_some(())
        })?;
        // Port 6443 on every address of the namespace (its loopback, and the lab network where its VMs reach it as
        // `https://10.99.0.1:6443`), and the server's own port on the namespace's loopback, so that a kubeconfig
        // written for the host (the workload cluster's kubeconfig Secret) works inside the namespace too.
        let port = hostport.rsplit(':').next().unwrap_or("6443");
        for listen in [
            "TCP-LISTEN:6443,fork,reuseaddr".to_owned(),
            format!("TCP-LISTEN:{port},bind=127.0.0.1,fork,reuseaddr"),
        ] {
            let inner = ns
                .command("socat")
                .arg(listen)
                .arg(format!("UNIX-CONNECT:{}", sock.display()))
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("start socat in the namespace")?;
            record.add_pid(inner.id());
            bridge.children.push(inner);
        }
        let kc = std::fs::read_to_string(&self.kubeconfig)?.replace(&self.url, "https://127.0.0.1:6443");
        std::fs::write(&bridge.kubeconfig, kc)?;
        Ok(bridge)
    }
}

impl Drop for NsBridge {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Creates a namespaced object in `default` from JSON, panicking with the API's answer if it is refused (tests).
pub async fn create<K>(client: &kube::Client, obj: serde_json::Value) -> K
where
    K: kube::Resource<Scope = kube::core::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + std::fmt::Debug
        + serde::de::DeserializeOwned
        + serde::Serialize,
{
    let api: Api<K> = Api::namespaced(client.clone(), "default");
    api.create(
        &Default::default(),
        &serde_json::from_value(obj).expect("a valid object"),
    )
    .await
    .unwrap_or_else(|e| panic!("create: {e}"))
}

/// Polls `f` until it yields a value, panicking with `what` after `timeout`.
pub async fn eventually<T>(what: &str, timeout: Duration, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(tokio::time::Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
}

/// Applies `deploy/config/{manager,rbac}` (kiln's namespace, ServiceAccount and ClusterRole) with `admin` and returns
/// a client acting as that ServiceAccount, so controllers run by a test have exactly the rights kiln's deployment
/// grants.
pub async fn controller_client(server: &KubeApiServer, admin: &kube::Client) -> anyhow::Result<kube::Client> {
    let deploy = crate::repo_root().join("deploy/config");
    apply_manifest_dir(admin, &deploy.join("manager")).await?;
    let applied = apply_manifest_dir(admin, &deploy.join("rbac")).await?;
    anyhow::ensure!(
        applied.contains(&"ClusterRole/kiln-controller".to_string()),
        "deploy/config/rbac has no ClusterRole kiln-controller: {applied:?}"
    );
    server
        .client_as(
            "system:serviceaccount:kiln-system:kiln-controller",
            &[
                "system:serviceaccounts",
                "system:serviceaccounts:kiln-system",
                "system:authenticated",
            ],
        )
        .await
}

/// A real kube-apiserver with kiln's CRDs and Cluster API's (the pinned release's, IPAM kinds included) installed,
/// and an admin client.
pub async fn server_with_crds() -> anyhow::Result<(KubeApiServer, kube::Client)> {
    let server = KubeApiServer::start().await?;
    let client = server.client().await?;
    let mut crds = parse_crds(&kiln_kube::crds::crds_yaml())?;
    crds.extend(read_crd_dir(&capi_crd_dir())?);
    install_crds(&client, &crds).await?;
    Ok((server, client))
}

/// kiln's BareMetalHost and KilnMachine controllers on an engine, as a client, with a test's short requeues.
pub struct MachineControllers {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl MachineControllers {
    pub fn start<E: kiln_kube::engine::Engine + 'static>(client: &kube::Client, engine: std::sync::Arc<E>) -> Self {
        use kiln_kube::{host_controller, machine_controller};
        let (stop, rx) = tokio::sync::watch::channel(false);
        let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
            let _ = rx.wait_for(|s| *s).await;
        };
        let hc = host_controller::Config {
            busy_requeue: Duration::from_millis(200),
            idle_requeue: Duration::from_secs(1),
            error_requeue: Duration::from_millis(500),
            ..Default::default()
        };
        let mc = machine_controller::Config {
            wait_requeue: Duration::from_millis(300),
            idle_requeue: Duration::from_secs(2),
        };
        let tasks = vec![
            tokio::spawn(host_controller::run(client.clone(), engine, hc, stopped(rx.clone()))),
            tokio::spawn(machine_controller::run(client.clone(), mc, stopped(rx))),
        ];
        Self { stop, tasks }
    }

    /// Stops both and waits (10 s at most) for them to end.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(10), t)
                .await
                .expect("controller stops")
                .expect("controller task");
        }
    }
}
