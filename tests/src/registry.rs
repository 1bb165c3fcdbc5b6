//! A real OCI registry for the lab: Debian's `docker-registry` (CNCF distribution 2.8, installed by
//! `tests/setup.sh`) serving a directory, optionally behind HTTP Basic authentication (htpasswd, bcrypt), and a push
//! of a disk image laid out as `oras push -a disktype=<format> --artifact-platform linux/amd64 repo:tag ./file` lays
//! it out: one layer titled with the file name, `disktype` on the manifest (Ironic's convention for `oci://` disk
//! images, which kiln-agent follows).
//!
//! The lab's registry must listen inside the lab's namespace, where the test process cannot reach it: images are
//! pushed through a registry on loopback serving the same directory ([`Registry::start`] with a plain command),
//! which is then stopped and started again inside the namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use oci_client::client::{ClientConfig, ClientProtocol, Config, ImageLayer};
use oci_client::manifest::OciImageManifest;
use oci_client::secrets::RegistryAuth;

/// The registry program (Debian's `docker-registry` package).
pub const PROGRAM: &str = "docker-registry";
/// What `oras push` gives a file without an explicit media type.
pub const ORAS_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// A running registry; killed on drop (also when the test panics).
pub struct Registry {
    child: Child,
    /// `host:port` it listens on.
    pub host: String,
    /// Its log.
    pub log: PathBuf,
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Registry {
    /// Starts `command` (`docker-registry`, or a wrapper such as `ip netns exec NS docker-registry`) serving the
    /// storage under `dir` on `listen`, with the `auth:` section `auth` of its configuration (empty: anonymous;
    /// [`htpasswd_auth`]: Basic); returns once `ready()` says it answers.
    ///
    /// # Errors
    /// The program is missing (with how to install it), exits, or does not answer within 30 s.
    pub fn start(
        mut command: Command,
        dir: &Path,
        listen: &str,
        auth: &str,
        ready: impl Fn() -> bool,
    ) -> anyhow::Result<Self> {
        if Command::new(PROGRAM).arg("--version").output().is_err() {
            bail!("{PROGRAM} is missing: install Debian's docker-registry package (`make test`'s tests/setup.sh does)");
        }
        std::fs::create_dir_all(dir)?;
        let config = dir.join(format!("config-{}.yml", listen.replace([':', '.'], "-")));
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: info\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: {listen}\n  \
                 secret: kiln-lab\n{auth}",
                dir.join("storage").display()
            ),
        )?;
        let log = dir.join(format!("registry-{}.log", listen.replace([':', '.'], "-")));
        let out = std::fs::File::create(&log)?;
        let mut child = command
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .with_context(|| format!("start {PROGRAM}"))?;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !ready() {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "{PROGRAM} on {listen} exited with {status}: {}",
                    std::fs::read_to_string(&log).unwrap_or_default()
                );
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "{PROGRAM} did not answer on {listen} within 30 s (log {})",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(Self {
            child,
            host: listen.to_owned(),
            log,
        })
    }

    /// A registry on loopback (a free port) serving `dir`, with the `auth:` section `auth`.
    ///
    /// # Errors
    /// As [`Registry::start`].
    pub fn on_loopback(dir: &Path, auth: &str) -> anyhow::Result<Self> {
        let port = crate::free_port();
        let listen = format!("127.0.0.1:{port}");
        Self::start(Command::new(PROGRAM), dir, &listen, auth, move || {
            crate::listening(port)
        })
    }

    /// The file a registry serving `dir` keeps the bytes of the blob `sha256:<hex>` in.
    pub fn blob_file(dir: &Path, hex: &str) -> PathBuf {
        dir.join("storage/docker/registry/v2/blobs/sha256")
            .join(&hex[..2])
            .join(hex)
            .join("data")
    }

    /// The process id (for a lab's record of what to reap).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

/// An htpasswd file (bcrypt, as distribution requires) for `users`, written by `htpasswd` from apache2-utils.
///
/// # Errors
/// `htpasswd` is missing or fails.
pub fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> anyhow::Result<PathBuf> {
    let mut lines = String::new();
    for (user, password) in users {
        let out = Command::new("htpasswd")
            .args(["-Bbn", user, password])
            .output()
            .context("run htpasswd: install apache2-utils (`make test`'s tests/setup.sh does)")?;
        anyhow::ensure!(out.status.success(), "htpasswd failed");
        lines.push_str(String::from_utf8_lossy(&out.stdout).trim());
        lines.push('\n');
    }
    std::fs::create_dir_all(dir)?;
    let path = dir.join("htpasswd");
    std::fs::write(&path, lines)?;
    Ok(path)
}

/// The `auth:` section of a registry's configuration for Basic authentication from an [`htpasswd`] file.
pub fn htpasswd_auth(htpasswd: &Path) -> String {
    format!(
        "auth:\n  htpasswd:\n    realm: kiln-lab\n    path: {}\n",
        htpasswd.display()
    )
}

/// A docker config file (`docker login`'s `config.json`) with `user`'s credentials for `registry`.
pub fn docker_config(registry: &str, user: &str, password: &str) -> String {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    serde_json::json!({ "auths": { registry: { "auth": auth } } }).to_string()
}

/// Pushes `data` to `host/repo_tag` over plain HTTP as `oras push -a disktype=<disktype> repo:tag ./<title>` does;
/// returns the layer's digest (`sha256:...`).
///
/// # Errors
/// The push fails.
pub async fn push_disk_image(
    host: &str,
    repo_tag: &str,
    data: Vec<u8>,
    title: &str,
    disktype: &str,
    auth: &RegistryAuth,
) -> anyhow::Result<String> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let client = oci_client::Client::new(ClientConfig {
        protocol: ClientProtocol::Http,
        ..ClientConfig::default()
    });
    let reference: oci_client::Reference = format!("{host}/{repo_tag}").parse()?;
    let layer = ImageLayer::new(
        data,
        ORAS_LAYER.into(),
        Some([(kiln_images::oci::TITLE.to_owned(), title.to_owned())].into()),
    );
    let config = Config::new(b"{}".to_vec(), "application/vnd.oci.empty.v1+json".into(), None);
    let annotations: BTreeMap<String, String> = [(kiln_images::oci::DISKTYPE.to_owned(), disktype.to_owned())].into();
    let manifest = OciImageManifest::build(std::slice::from_ref(&layer), &config, Some(annotations));
    let digest = manifest.layers[0].digest.clone();
    client
        .push(&reference, &[layer], config, auth, Some(manifest))
        .await
        .with_context(|| format!("push {repo_tag} to {host}"))?;
    Ok(digest)
}
