//! kiln as a clusterctl infrastructure provider, driven by the real `clusterctl` (v1.14.2, built from Go modules)
//! over a local provider repository made from `deploy/clusterctl/`, against a real kube-apiserver:
//! 1. every flavor (kubeadm, RKE2, the ClusterClass `topology`) lists exactly the variables its header documents,
//!    renders, and is accepted by the API server with strict field validation against the real Cluster API, RKE2
//!    provider and kiln CRDs; the `topology` flavor brings its ClusterClass along only while the management cluster
//!    lacks it;
//! 2. the real Cluster API topology controller builds a cluster from kiln's ClusterClass: the KilnCluster gets the
//!    control plane endpoint from the Cluster's variable, and the control plane's and the workers'
//!    KilnMachineTemplates get the image and keep their host selectors.

use std::collections::BTreeSet;
use std::time::Duration;

use kiln_tests::clusterctl::Clusterctl;
use kiln_tests::kube::{
    CapiManagers, KubeApiServer, apply_manifest_dir, capi_crds, caprke2_crds, install_crds, parse_crds,
};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, ListParams};
use kube::{Client, ResourceExt};

const FLAVORS: [Option<&str>; 3] = [None, Some("rke2"), Some("topology")];

fn template_file(flavor: Option<&str>) -> String {
    match flavor {
        None => "cluster-template.yaml".into(),
        Some(f) => format!("cluster-template-{f}.yaml"),
    }
}

/// The variables a template's header comment documents (`# Variables: A, B, ...` up to the end of the comment).
fn documented_variables(flavor: Option<&str>) -> BTreeSet<String> {
    let path = kiln_tests::repo_root()
        .join("deploy/clusterctl/templates")
        .join(template_file(flavor));
    let text = std::fs::read_to_string(&path).unwrap();
    let header: Vec<&str> = text.lines().take_while(|l| l.starts_with('#')).collect();
    let start = header
        .iter()
        .position(|l| l.contains("Variables:"))
        .unwrap_or_else(|| panic!("{} documents no variables", path.display()));
    let doc = header[start..].join(" ");
    let doc = &doc[doc.find("Variables:").unwrap() + "Variables:".len()..];
    doc.split(|c: char| !(c.is_ascii_uppercase() || c == '_' || c.is_ascii_digit()))
        .filter(|w| w.len() > 2 && w.contains('_') || ["NAMESPACE"].contains(w))
        .map(str::to_owned)
        .collect()
}

/// Variables for every flavor; clusterctl takes them from its environment.
const VARS: [(&str, &str); 8] = [
    ("KUBERNETES_VERSION", "v1.37.2"),
    ("RKE2_VERSION", "v1.34.1+rke2r1"),
    ("CONTROL_PLANE_ENDPOINT_HOST", "10.0.0.1"),
    ("CONTROL_PLANE_MACHINE_COUNT", "1"),
    ("WORKER_MACHINE_COUNT", "2"),
    ("IMAGE_URL", "http://192.0.2.2/node.raw"),
    (
        "IMAGE_CHECKSUM",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ),
    ("IMAGE_FORMAT", "raw"),
];

/// The `Kind/name` of every document of a rendered stream.
fn kinds(yaml: &str) -> Vec<String> {
    let docs: Vec<serde_json::Value> = serde_saphyr::from_multiple(yaml).expect("clusterctl printed YAML");
    docs.iter()
        .filter(|v| !v.is_null())
        .map(|v| {
            format!(
                "{}/{}",
                v["kind"].as_str().unwrap_or("?"),
                v["metadata"]["name"].as_str().unwrap_or("?")
            )
        })
        .collect()
}

async fn create_namespace(client: &Client, name: &str) {
    let nss: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(client.clone());
    nss.create(
        &Default::default(),
        &serde_json::from_value(serde_json::json!({"metadata": {"name": name}})).unwrap(),
    )
    .await
    .unwrap();
}

async fn apply_text(client: &Client, text: &str) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("cluster.yaml"), text).unwrap();
    apply_manifest_dir(client, dir.path())
        .await
        .unwrap_or_else(|e| panic!("apply the rendered cluster: {e:#}\n{text}"))
}

async fn server_with_crds() -> (KubeApiServer, Client) {
    let server = KubeApiServer::start().await.expect("start etcd + kube-apiserver");
    let client = server.client().await.unwrap();
    let mut crds = parse_crds(&kiln_kube::crds::crds_yaml()).unwrap();
    crds.extend(capi_crds().unwrap());
    crds.extend(caprke2_crds().expect("RKE2 provider CRDs (run tests/capi/build.sh)"));
    install_crds(&client, &crds).await.unwrap();
    (server, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clusterctl_renders_every_flavor_and_the_api_server_accepts_it() {
    let cc = Clusterctl::new().unwrap();
    let (server, client) = server_with_crds().await;

    // The provider's components, as `clusterctl init` would install them, apply as one stream.
    let components = cc
        .run(
            &[
                "generate",
                "provider",
                "--infrastructure",
                &format!("kiln:{}", kiln_tests::clusterctl::PROVIDER_VERSION),
            ],
            &[],
        )
        .expect("clusterctl generate provider");
    let applied = apply_text(&client, &components).await;
    assert!(
        applied.contains(&"Deployment/kiln-controller".to_string()),
        "{applied:?}"
    );
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::namespaced(client.clone(), "kiln-system");
    let d = deployments.get("kiln-controller").await.unwrap();
    let d = serde_json::to_value(&d).unwrap();
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        kiln_tests::clusterctl::OVERRIDDEN_IMAGE
    );

    for flavor in FLAVORS {
        let file = template_file(flavor);
        let (required, optional) = cc.list_variables(flavor).unwrap();
        let listed: BTreeSet<String> = required.iter().chain(&optional).cloned().collect();
        assert_eq!(
            listed,
            documented_variables(flavor),
            "{file}: clusterctl's variables vs the header"
        );

        let ns = flavor.unwrap_or("kubeadm");
        create_namespace(&client, ns).await;
        let text = cc
            .generate(&server.kubeconfig, "c1", flavor, ns, &VARS)
            .unwrap_or_else(|e| panic!("{file}: {e:#}"));
        let rendered = kinds(&text);
        let applied = apply_text(&client, &text).await;
        assert_eq!(applied, rendered, "{file}");
        assert!(applied.contains(&"Cluster/c1".to_string()), "{file}: {applied:?}");
        if flavor == Some("topology") {
            // The ClusterClass and its templates come along while the management cluster lacks them...
            for k in [
                "ClusterClass/kiln-kubeadm",
                "KilnClusterTemplate/kiln-kubeadm",
                "KubeadmControlPlaneTemplate/kiln-kubeadm-control-plane",
                "KilnMachineTemplate/kiln-kubeadm-control-plane",
                "KilnMachineTemplate/kiln-kubeadm-worker",
                "KubeadmConfigTemplate/kiln-kubeadm-worker",
            ] {
                assert!(applied.contains(&k.to_string()), "{k} missing: {applied:?}");
            }
            // ...and not once it has them: a second cluster of the class is just a Cluster.
            let second = cc.generate(&server.kubeconfig, "c2", flavor, ns, &VARS).unwrap();
            assert_eq!(kinds(&second), ["Cluster/c2"]);
            assert_eq!(apply_text(&client, &second).await, ["Cluster/c2"]);
        } else {
            assert_eq!(applied.len(), 7, "{file}: {applied:?}");
        }
    }
    drop(server);
}

fn ar(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

async fn wait_for<T>(what: &str, capi: &CapiManagers, mut f: impl AsyncFnMut() -> Option<T>) -> T {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}\n{}",
            capi.log_tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_topology_controller_builds_a_cluster_from_kilns_clusterclass() {
    let cc = Clusterctl::new().unwrap();
    let (server, client) = server_with_crds().await;
    let capi = CapiManagers::start_with(&server, &["--feature-gates=ClusterTopology=true"]).unwrap();
    let ns = "default";
    let text = cc
        .generate(&server.kubeconfig, "c1", Some("topology"), ns, &VARS)
        .unwrap();
    apply_text(&client, &text).await;

    let kiln_clusters: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ar(
            "infrastructure.cluster.x-k8s.io",
            "v1beta1",
            "KilnCluster",
            "kilnclusters",
        ),
    );
    let kc = wait_for("the topology controller's KilnCluster", &capi, async || {
        kiln_clusters
            .list(&ListParams::default())
            .await
            .ok()?
            .items
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(
        kc.data["spec"]["controlPlaneEndpoint"],
        serde_json::json!({"host": "10.0.0.1", "port": 6443}),
        "{kc:?}"
    );
    assert_eq!(
        kc.labels().get("cluster.x-k8s.io/cluster-name").map(String::as_str),
        Some("c1")
    );

    let kcps: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ar(
            "controlplane.cluster.x-k8s.io",
            "v1beta2",
            "KubeadmControlPlane",
            "kubeadmcontrolplanes",
        ),
    );
    let kcp = wait_for("the KubeadmControlPlane", &capi, async || {
        kcps.list(&ListParams::default()).await.ok()?.items.into_iter().next()
    })
    .await;
    assert_eq!(kcp.data["spec"]["version"], "v1.37.2");
    assert_eq!(
        kcp.data["spec"]["kubeadmConfigSpec"]["joinConfiguration"]["nodeRegistration"]["kubeletExtraArgs"][0]["name"],
        "provider-id"
    );
    let machine_templates: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ar(
            "infrastructure.cluster.x-k8s.io",
            "v1beta1",
            "KilnMachineTemplate",
            "kilnmachinetemplates",
        ),
    );
    let cp_template = kcp.data["spec"]["machineTemplate"]["spec"]["infrastructureRef"]["name"]
        .as_str()
        .expect("the KubeadmControlPlane names its KilnMachineTemplate")
        .to_owned();
    let cp = machine_templates.get(&cp_template).await.unwrap();
    assert!(cp.labels().contains_key("topology.cluster.x-k8s.io/owned"), "{cp:?}");
    let spec = &cp.data["spec"]["template"]["spec"];
    assert_eq!(spec["image"]["url"], "http://192.0.2.2/node.raw", "{cp:?}");
    assert_eq!(spec["image"]["checksumType"], "sha256");
    assert_eq!(spec["image"]["format"], "raw");
    assert_eq!(spec["hostSelector"]["matchLabels"]["kiln.dev/role"], "control-plane");

    // The worker class: a MachineDeployment whose KilnMachineTemplate has the image and the workers' selector.
    let mds: Api<DynamicObject> = Api::namespaced_with(
        client.clone(),
        ns,
        &ar("cluster.x-k8s.io", "v1beta2", "MachineDeployment", "machinedeployments"),
    );
    let md = wait_for("the workers' MachineDeployment", &capi, async || {
        mds.list(&ListParams::default()).await.ok()?.items.into_iter().next()
    })
    .await;
    assert_eq!(md.data["spec"]["replicas"], 2);
    let worker_template = md.data["spec"]["template"]["spec"]["infrastructureRef"]["name"]
        .as_str()
        .unwrap()
        .to_owned();
    let w = machine_templates.get(&worker_template).await.unwrap();
    let spec = &w.data["spec"]["template"]["spec"];
    assert_eq!(spec["image"]["url"], "http://192.0.2.2/node.raw", "{w:?}");
    assert_eq!(spec["hostSelector"]["matchExpressions"][0]["operator"], "NotIn");

    drop(capi);
    drop(server);
}
