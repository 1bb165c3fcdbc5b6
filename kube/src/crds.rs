//! The CustomResourceDefinitions of kiln's Kubernetes kinds, generated from the Rust types.
//!
//! `deploy/crds/<plural>.<group>.yaml` is written from [`crd_files`]; a test fails when the checked-in files drift.
//! The lead wires [`crds_yaml`] (all CRDs as one multi-document YAML stream) as `kiln crds`.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

use crate::bmh::BareMetalHost;
use crate::capi::{
    KilnCluster, KilnClusterTemplate, KilnMachine, KilnMachineTemplate, KilnRemediation, KilnRemediationTemplate,
};
use crate::data::KilnDataTemplate;

/// Every CRD kiln serves, in a stable order.
pub fn crds() -> Vec<CustomResourceDefinition> {
    vec![
        BareMetalHost::crd(),
        KilnCluster::crd(),
        KilnClusterTemplate::crd(),
        KilnDataTemplate::crd(),
        KilnMachine::crd(),
        KilnMachineTemplate::crd(),
        KilnRemediation::crd(),
        KilnRemediationTemplate::crd(),
    ]
}

fn to_yaml(crd: &CustomResourceDefinition) -> String {
    serde_saphyr::to_string(crd).expect("a CRD always serializes to YAML")
}

/// `(file name, YAML)` for each CRD: `<plural>.<group>.yaml`.
pub fn crd_files() -> Vec<(String, String)> {
    crds()
        .iter()
        .map(|c| {
            let name = c.metadata.name.clone().unwrap_or_default();
            (format!("{name}.yaml"), format!("---\n{}", to_yaml(c)))
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream (what `kiln crds` prints).
pub fn crds_yaml() -> String {
    crd_files().into_iter().map(|(_, y)| y).collect()
}

/// Writes [`crd_files`] into `dir` (e.g. `deploy/crds`), creating it.
pub fn write_crds(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    for (name, yaml) in crd_files() {
        std::fs::write(dir.join(name), yaml)?;
    }
    Ok(())
}

/// clusterctl's `infrastructure-components.yaml`: the CRDs, then every manifest under `deploy/config/{manager,rbac}`
/// (sorted, `kustomization.yaml` excluded), each labelled `cluster.x-k8s.io/provider: infrastructure-kiln` by
/// clusterctl itself on install. `deploy` is the repository's `deploy/` directory.
pub fn components_yaml(deploy: &Path) -> std::io::Result<String> {
    let mut out = crds_yaml();
    for sub in ["manager", "rbac"] {
        let mut files: Vec<_> = std::fs::read_dir(deploy.join("config").join(sub))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml") && !p.ends_with("kustomization.yaml"))
            .collect();
        files.sort_by_key(|f| (!f.ends_with("namespace.yaml"), f.clone()));
        for f in files {
            let text = std::fs::read_to_string(&f)?;
            for doc in text.split("\n---\n") {
                out.push_str("---\n");
                out.push_str(doc.trim_start_matches("---\n").trim_end());
                out.push('\n');
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The checked-in `deploy/crds` must equal what the types generate. Regenerate with
    /// `KILN_UPDATE_CRDS=1 cargo test -p kiln crds_are_checked_in`.
    #[test]
    fn crds_are_checked_in() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/crds");
        if std::env::var_os("KILN_UPDATE_CRDS").is_some() {
            write_crds(&dir).unwrap();
        }
        let deploy = dir.parent().unwrap().to_path_buf();
        let components = deploy.join("clusterctl/infrastructure-components.yaml");
        if std::env::var_os("KILN_UPDATE_CRDS").is_some() {
            std::fs::write(&components, components_yaml(&deploy).unwrap()).unwrap();
        }
        let mut drift = Vec::new();
        if std::fs::read_to_string(&components).unwrap_or_default() != components_yaml(&deploy).unwrap() {
            drift.push("clusterctl/infrastructure-components.yaml".to_string());
        }
        for (name, yaml) in crd_files() {
            let on_disk = std::fs::read_to_string(dir.join(&name)).unwrap_or_default();
            if on_disk != yaml {
                drift.push(name);
            }
        }
        let mut extra: Vec<String> = std::fs::read_dir(&dir)
            .map(|d| {
                d.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default();
        extra.retain(|n| n.ends_with(".yaml") && !crd_files().iter().any(|(f, _)| f == n));
        assert!(
            drift.is_empty() && extra.is_empty(),
            "deploy/crds drifted from the Rust types (changed: {drift:?}, stale: {extra:?}); \
             run KILN_UPDATE_CRDS=1 cargo test -p kiln crds_are_checked_in"
        );
    }

    #[test]
    fn bmh_crd_is_metal3_shaped() {
        let crd = BareMetalHost::crd();
        assert_eq!(crd.metadata.name.as_deref(), Some("baremetalhosts.metal3.io"));
        let v = &crd.spec.versions[0];
        assert!(v.subresources.as_ref().unwrap().status.is_some());
        let schema = serde_json::to_value(v.schema.as_ref().unwrap()).unwrap();
        let spec = &schema["openAPIV3Schema"]["properties"]["spec"]["properties"];
        for f in [
            "bmc",
            "bootMACAddress",
            "bootMode",
            "online",
            "consumerRef",
            "image",
            "userData",
            "networkData",
            "metaData",
            "rootDeviceHints",
            "automatedCleaningMode",
            "externallyProvisioned",
            "architecture",
        ] {
            assert!(spec.get(f).is_some(), "spec.{f} missing");
        }
        assert!(spec["image"]["properties"].get("format").is_some());
        let status = &schema["openAPIV3Schema"]["properties"]["status"]["properties"];
        assert!(status["provisioning"]["properties"].get("ID").is_some());
        for f in [
            "operationalStatus",
            "errorType",
            "errorMessage",
            "poweredOn",
            "hardware",
            "operationHistory",
            "errorCount",
            "conditions",
        ] {
            assert!(status.get(f).is_some(), "status.{f} missing");
        }
    }
}
