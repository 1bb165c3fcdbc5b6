//! The real kube-apiserver (+ etcd) the Kubernetes tests run against starts, accepts kiln's generated CRDs and the
//! pinned Cluster API CRDs, and stores a Metal3 `BareMetalHost` manifest unchanged.

use k8s_openapi::api::core::v1::Namespace;
use kiln_kube::bmh::{BareMetalHost, BootMode, ChecksumType};
use kiln_tests::kube::{KubeApiServer, capi_crd_dir, install_crds, parse_crds, read_crd_dir};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::discovery::ApiResource;

/// A Metal3 inventory entry as users write it for baremetal-operator.
const METAL3_HOST: &str = r#"
apiVersion: metal3.io/v1alpha1
kind: BareMetalHost
metadata:
  name: worker-0
  labels: {role: worker}
spec:
  online: true
  bootMACAddress: "52:54:00:12:34:56"
  bootMode: legacy
  hardwareProfile: unknown
  description: rack 3, slot 12
  automatedCleaningMode: disabled
  bmc:
    address: redfish+http://192.0.2.1:8000/redfish/v1/Systems/abc
    credentialsName: worker-0-bmc
    disableCertificateVerification: true
  rootDeviceHints:
    deviceName: /dev/sda
    minSizeGigabytes: 10
  image:
    url: http://192.0.2.2/images/ubuntu.qcow2
    checksum: http://192.0.2.2/images/ubuntu.qcow2.sha256sum
    checksumType: sha256
    format: qcow2
  userData: {name: worker-0-user-data, namespace: default}
  raid:
    hardwareRAIDVolumes: []
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apiserver_serves_kiln_and_capi_crds() {
    let t0 = std::time::Instant::now();
    let server = KubeApiServer::start().await.expect("start etcd + kube-apiserver");
    eprintln!("kube-apiserver ready at {} after {:?}", server.url, t0.elapsed());
    let client = server.client().await.unwrap();
    let version = client.apiserver_version().await.unwrap();
    assert_eq!(format!("v{}.{}", version.major, version.minor), {
        let v = kiln_tests::kube::k8s_version();
        v.rsplit_once('.').unwrap().0.to_owned()
    });

    let mut crds = parse_crds(&kiln_kube::crds::crds_yaml()).unwrap();
    let capi = read_crd_dir(&capi_crd_dir()).unwrap();
    assert!(
        capi.iter()
            .any(|c| c.metadata.name.as_deref() == Some("machines.cluster.x-k8s.io"))
    );
    crds.extend(capi);
    install_crds(&client, &crds).await.expect("install CRDs");

    // A Metal3 manifest applies unchanged (server-side field validation is strict for unknown fields).
    let obj: serde_json::Value = serde_saphyr::from_str(METAL3_HOST).unwrap();
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let pp = PatchParams {
        field_validation: Some(kube::api::ValidationDirective::Strict),
        ..PatchParams::apply("kubectl")
    };
    hosts
        .patch("worker-0", &pp, &Patch::Apply(&obj))
        .await
        .expect("apply Metal3 BareMetalHost");
    let got = hosts.get("worker-0").await.unwrap();
    assert_eq!(got.spec.boot_mac_address.as_deref(), Some("52:54:00:12:34:56"));
    assert_eq!(got.spec.boot_mode, Some(BootMode::Legacy));
    let image = got.spec.image.unwrap();
    assert_eq!(image.checksum_type, Some(ChecksumType::Sha256));
    assert_eq!(got.spec.bmc.credentials_name, "worker-0-bmc");
    assert!(got.spec.raid.is_some(), "free-form Metal3 fields are preserved");

    // An unknown field is rejected, so the schema is really enforced.
    let mut bad = obj.clone();
    bad["spec"]["noSuchField"] = serde_json::json!(1);
    bad["metadata"]["name"] = "bad".into();
    let err = hosts
        .patch("bad", &pp, &Patch::Apply(&bad))
        .await
        .expect_err("unknown field must be rejected");
    assert!(err.to_string().contains("noSuchField"), "{err}");

    // The CAPI CRDs are served too: create a Cluster with the real v1beta2 schema.
    let ar = ApiResource::from_gvk_with_plural(
        &kube::api::GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", "Cluster"),
        "clusters",
    );
    let clusters: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ar);
    let cluster: DynamicObject = serde_json::from_value(serde_json::json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
        "metadata": {"name": "c1"},
        "spec": {"infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnCluster", "name": "c1"}}
    }))
    .unwrap();
    clusters
        .create(&PostParams::default(), &cluster)
        .await
        .expect("create a CAPI Cluster");

    // Namespaces work (RBAC admin via the static token).
    let ns: Api<Namespace> = Api::all(client.clone());
    assert!(ns.get("default").await.is_ok());
    drop(server);
}
