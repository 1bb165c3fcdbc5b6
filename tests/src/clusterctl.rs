//! The real `clusterctl` (built from `sigs.k8s.io/cluster-api` at [`crate::kube::CAPI_VERSION`] by `tests/capi/build.sh`) over a
//! local provider repository made from `deploy/clusterctl/`, laid out as a kiln release would publish it:
//! `infrastructure-kiln/v<version>/` holding `infrastructure-components.yaml`, `metadata.yaml` and every file of
//! `templates/` (cluster templates and ClusterClasses).
//!
//! Each run gets a clean environment (only `PATH` and the variables given), its own `HOME` and XDG config directory,
//! and `CLUSTERCTL_DISABLE_VERSIONCHECK`, so nothing from the user running the tests leaks into a rendered template
//! and nothing is fetched from GitHub.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

use crate::kube::capi_bin_dir;

/// kiln's provider version in the local repository (the workspace version).
pub const PROVIDER_VERSION: &str = concat!("v", env!("CARGO_PKG_VERSION"));

/// clusterctl's image override for kiln's components, as a user publishing kiln's image in their registry sets it.
const IMAGE_OVERRIDE: &str =
    "images:\n  infrastructure-kiln:\n    repository: registry.example.com/infra\n    tag: v0.1.0\n";

/// The controller image the override makes of the components' `localhost/kiln:latest`.
pub const OVERRIDDEN_IMAGE: &str = "registry.example.com/infra/kiln:v0.1.0";

/// A local clusterctl provider repository and configuration for kiln; removed on drop.
pub struct Clusterctl {
    dir: tempfile::TempDir,
    bin: PathBuf,
}

impl Clusterctl {
    /// Lays out the repository from `deploy/clusterctl/` and writes a clusterctl configuration naming it.
    ///
    /// # Errors
    /// When the clusterctl binary is missing or the files cannot be copied.
    pub fn new() -> anyhow::Result<Self> {
        let bin = capi_bin_dir().join("clusterctl");
        if !bin.is_file() {
            bail!(
                "{} is missing: run `KILN_SETUP_KUBE=1 tests/setup.sh` (or tests/capi/build.sh)",
                bin.display()
            );
        }
        let dir = tempfile::tempdir()?;
        let src = crate::repo_root().join("deploy/clusterctl");
        let release = dir.path().join("repo/infrastructure-kiln").join(PROVIDER_VERSION);
        std::fs::create_dir_all(&release)?;
        for f in ["infrastructure-components.yaml", "metadata.yaml"] {
            std::fs::copy(src.join(f), release.join(f)).with_context(|| format!("copy {f}"))?;
        }
        for e in std::fs::read_dir(src.join("templates"))? {
            let e = e?;
            std::fs::copy(e.path(), release.join(e.file_name()))?;
        }
        let config = format!(
            "providers:\n  - name: kiln\n    type: InfrastructureProvider\n    url: {}\n{IMAGE_OVERRIDE}",
            release.join("infrastructure-components.yaml").display()
        );
        std::fs::write(dir.path().join("clusterctl.yaml"), config)?;
        std::fs::create_dir_all(dir.path().join("home"))?;
        Ok(Self { dir, bin })
    }

    /// The release directory of the local repository.
    pub fn release_dir(&self) -> PathBuf {
        self.dir.path().join("repo/infrastructure-kiln").join(PROVIDER_VERSION)
    }

    /// Runs `clusterctl <args> --config <ours>` with only `vars` in its environment; returns its standard output.
    ///
    /// # Errors
    /// When it cannot start or exits non-zero (the error carries its standard error).
    pub fn run(&self, args: &[&str], vars: &[(&str, &str)]) -> anyhow::Result<String> {
        let home = self.dir.path().join("home");
        let out = Command::new(&self.bin)
            .args(args)
            .arg("--config")
            .arg(self.dir.path().join("clusterctl.yaml"))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", &home)
            .env("XDG_CONFIG_HOME", home.join(".config"))
            .env("CLUSTERCTL_DISABLE_VERSIONCHECK", "true")
            .envs(vars.iter().copied())
            .output()
            .with_context(|| format!("run {}", self.bin.display()))?;
        if !out.status.success() {
            bail!(
                "clusterctl {} failed ({}): {}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8(out.stdout)?)
    }

    /// `clusterctl generate cluster <name> --infrastructure kiln:<version> --target-namespace <namespace>
    /// [--flavor <flavor>]` against the management cluster of `kubeconfig`, with the template variables `vars`. (The
    /// version is given because the test clusters have no clusterctl inventory to find it in.)
    ///
    /// # Errors
    /// As [`Clusterctl::run`].
    pub fn generate(
        &self,
        kubeconfig: &Path,
        name: &str,
        flavor: Option<&str>,
        namespace: &str,
        vars: &[(&str, &str)],
    ) -> anyhow::Result<String> {
        let kubeconfig = kubeconfig.display().to_string();
        let provider = format!("kiln:{PROVIDER_VERSION}");
        let mut args = vec![
            "generate",
            "cluster",
            name,
            "--infrastructure",
            &provider,
            "--kubeconfig",
            &kubeconfig,
            "--target-namespace",
            namespace,
        ];
        if let Some(f) = flavor {
            args.extend(["--flavor", f]);
        }
        self.run(&args, vars)
    }

    /// The variables clusterctl finds in a flavor's template: (required, optional with a default). Needs no
    /// management cluster.
    ///
    /// # Errors
    /// As [`Clusterctl::run`], or when the listing has an unexpected shape.
    pub fn list_variables(&self, flavor: Option<&str>) -> anyhow::Result<(Vec<String>, Vec<String>)> {
        let provider = format!("kiln:{PROVIDER_VERSION}");
        let mut args = vec![
            "generate",
            "cluster",
            "c",
            "--infrastructure",
            &provider,
            "--target-namespace",
            "default",
            "--list-variables",
        ];
        if let Some(f) = flavor {
            args.extend(["--flavor", f]);
        }
        let text = self.run(&args, &[])?;
        let (mut required, mut optional) = (Vec::new(), Vec::new());
        let mut into: Option<&mut Vec<String>> = None;
        for line in text.lines() {
            match line.trim_end() {
                "Required Variables:" => into = Some(&mut required),
                "Optional Variables:" => into = Some(&mut optional),
                l if l.starts_with("  - ") => {
                    let name = l[4..].split_whitespace().next().unwrap_or_default();
                    into.as_mut()
                        .context("a variable before its heading")?
                        .push(name.to_owned());
                }
                _ => {}
            }
        }
        Ok((required, optional))
    }

    /// `clusterctl move` of namespace `namespace` from the management cluster of `from` to that of `to`.
    ///
    /// # Errors
    /// As [`Clusterctl::run`].
    pub fn move_to(&self, from: &Path, to: &Path, namespace: &str) -> anyhow::Result<String> {
        let (from, to) = (from.display().to_string(), to.display().to_string());
        self.run(
            &[
                "move",
                "--kubeconfig",
                &from,
                "--to-kubeconfig",
                &to,
                "--namespace",
                namespace,
                "-v",
                "3",
            ],
            &[],
        )
    }
}

/// The providers a `clusterctl init --infrastructure kiln` records for the managers the tests run:
/// (inventory name, `providerName`, type, version, namespace).
const PROVIDERS: [(&str, &str, &str, &str, &str); 3] = [
    (
        "cluster-api",
        "cluster-api",
        "CoreProvider",
        crate::kube::CAPI_VERSION,
        "capi-system",
    ),
    (
        "bootstrap-kubeadm",
        "kubeadm",
        "BootstrapProvider",
        crate::kube::CAPI_VERSION,
        "capi-kubeadm-bootstrap-system",
    ),
    (
        "infrastructure-kiln",
        "kiln",
        "InfrastructureProvider",
        PROVIDER_VERSION,
        "kiln-system",
    ),
];

/// Records in a test API server what `clusterctl init` leaves behind besides the controllers, which the tests run
/// themselves: clusterctl's inventory (the `Provider` CRD and one `Provider` per installed provider) and the
/// `clusterctl.cluster.x-k8s.io` label on every installed CRD, by which `clusterctl move` finds the kinds to move.
/// The CRDs must already be installed (their provider labels come from the providers' own manifests).
///
/// # Errors
/// A failed API call, or the cached inventory CRD missing (run `tests/capi/build.sh`).
pub async fn record_init(client: &kube::Client) -> anyhow::Result<()> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
    let inventory_crd = crate::kube::capi_bin_dir().join("../clusterctl-api.yaml");
    let text = std::fs::read_to_string(&inventory_crd)
        .with_context(|| format!("read {} (run tests/capi/build.sh)", inventory_crd.display()))?;
    crate::kube::install_crds(client, &crate::kube::parse_crds(&text)?).await?;
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in crds.list(&Default::default()).await? {
        let label = serde_json::json!({"metadata": {"labels": {"clusterctl.cluster.x-k8s.io": ""}}});
        crds.patch(
            &crd.metadata.name.unwrap_or_default(),
            &PatchParams::default(),
            &Patch::Merge(label),
        )
        .await?;
    }
    let ar = kube::api::ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("clusterctl.cluster.x-k8s.io", "v1alpha3", "Provider"),
        "providers",
    );
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    for (name, provider, kind, version, ns) in PROVIDERS {
        if namespaces.get_opt(ns).await?.is_none() {
            namespaces
                .create(
                    &PostParams::default(),
                    &serde_json::from_value(serde_json::json!({"metadata": {"name": ns}}))?,
                )
                .await?;
        }
        let p: DynamicObject = serde_json::from_value(serde_json::json!({
            "apiVersion": "clusterctl.cluster.x-k8s.io/v1alpha3", "kind": "Provider",
            "metadata": {"name": name, "namespace": ns,
                         "labels": {"clusterctl.cluster.x-k8s.io": "", "cluster.x-k8s.io/provider": name}},
            "providerName": provider, "type": kind, "version": version,
        }))?;
        Api::<DynamicObject>::namespaced_with(client.clone(), ns, &ar)
            .create(&PostParams::default(), &p)
            .await
            .with_context(|| format!("record provider {name}"))?;
    }
    Ok(())
}
