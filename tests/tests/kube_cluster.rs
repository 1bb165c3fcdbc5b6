//! KilnCluster and KilnRemediation controllers against a real kube-apiserver with the real Cluster API CRDs: a
//! KilnCluster with an endpoint becomes provisioned with its failure domains; a KilnRemediation reboots the Machine's
//! host through kiln's real engine (an in-process appliance with fake BMCs and simulated agents,
//! `kiln_tests::inproc`), power-cycling it through its BMC, up to the retry limit and then marks the Machine for
//! deletion.

use std::time::Duration;

use kiln_bmc::PowerAction;
use kiln_bmc::fake::FakeCall;
use kiln_kube::bmh::BootMode;
use kiln_kube::capi::{KilnCluster, KilnMachine, KilnRemediation};
use kiln_kube::cluster_controller::{self, DELETE_MACHINE_ANNOTATION};
use kiln_kube::engine::{BmcAccess, Engine, HostKey, HostSpec, SecretBytes};
use kiln_kube::machine_controller::machine_resource;
use kiln_tests::inproc::{Lab, mac_of};
use kiln_tests::kube::{KubeApiServer, capi_crd_dir, install_crds, parse_crds, read_crd_dir};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

async fn wait<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    kiln_tests::kube::eventually(what, Duration::from_secs(60), f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_becomes_provisioned_and_remediation_reboots_then_gives_up() {
    let server = KubeApiServer::start().await.expect("start etcd + kube-apiserver");
    let client = server.client().await.unwrap();
    let mut crds = parse_crds(&kiln_kube::crds::crds_yaml()).unwrap();
    crds.extend(read_crd_dir(&capi_crd_dir()).unwrap());
    install_crds(&client, &crds).await.unwrap();

    // kiln's appliance in-process, with hardware (a fake BMC, simulated firmware and agent) for the host default/h0.
    let mut lab = Lab::start(|_| {}).await;
    let fake = lab.add_fake("default.h0");
    let engine = lab.engine();
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let t1 = tokio::spawn(cluster_controller::run_clusters(
        client.clone(),
        stopped(stop_rx.clone()),
    ));
    let t2 = tokio::spawn(cluster_controller::run_remediations(
        client.clone(),
        engine.clone(),
        stopped(stop_rx.clone()),
    ));

    // KilnCluster: provisioned with its failure domains.
    let clusters: Api<KilnCluster> = Api::namespaced(client.clone(), "default");
    let kc: KilnCluster = serde_json::from_value(json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnCluster",
        "metadata": {"name": "c1"},
        "spec": {"controlPlaneEndpoint": {"host": "10.0.0.1", "port": 6443},
                 "failureDomains": [{"name": "rack1", "controlPlane": true}]}
    }))
    .unwrap();
    clusters.create(&PostParams::default(), &kc).await.unwrap();
    let st = wait("c1 provisioned", async || {
        clusters
            .get("c1")
            .await
            .ok()?
            .status
            .filter(|s| s.initialization.as_ref().is_some_and(|i| i.provisioned))
    })
    .await;
    assert!(st.ready);
    assert_eq!(st.failure_domains[0].name, "rack1");

    // A Machine whose KilnMachine holds host h0, known to the engine.
    let key = HostKey {
        namespace: "default".into(),
        name: "h0".into(),
    };
    let spec = HostSpec {
        bmc: BmcAccess {
            address: "redfish+http://127.0.0.1:9/redfish/v1/Systems/h0".into(),
            username: "u".into(),
            password: SecretBytes(b"p".to_vec()),
            disable_certificate_verification: false,
        },
        boot_mac_address: Some(mac_of("default.h0")),
        boot_mode: BootMode::Uefi,
        online: true,
        consumer: None,
        image: None,
        image_credentials: None,
        user_data: None,
        network_data: None,
        meta_data: None,
        preprovisioning_network_data: None,
        inspect: true,
        labels: Default::default(),
        root_device_hints: None,
        automated_cleaning_mode: kiln_kube::bmh::AutomatedCleaningMode::Disabled,
        externally_provisioned: false,
        adopt_provisioned: false,
        architecture: None,
    };
    engine.apply_host(&key, &spec).await.unwrap();
    // kiln registers and inspects it (through the simulated agent); a host is rebooted only once kiln is done with it.
    wait("h0 available", async || {
        let (code, h) = lab.api(reqwest::Method::GET, "/api/v1/hosts/default.h0", None).await;
        assert_ne!(h["state"], "error", "{h}");
        (code == 200 && h["state"] == "available").then_some(())
    })
    .await;
    let cycles = || {
        fake.calls()
            .iter()
            .filter(|c| **c == FakeCall::SetPower(PowerAction::Cycle))
            .count()
    };
    let before = cycles();
    let machines: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &machine_resource());
    let m: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine", "metadata": {"name": "m0"},
        "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "x"},
                 "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnMachine", "name": "km0"}}
    }))
    .unwrap();
    machines.create(&PostParams::default(), &m).await.unwrap();
    let kms: Api<KilnMachine> = Api::namespaced(client.clone(), "default");
    let km: KilnMachine = serde_json::from_value(json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnMachine", "metadata": {"name": "km0"}, "spec": {}
    }))
    .unwrap();
    kms.create(&PostParams::default(), &km).await.unwrap();
    kms.patch_status(
        "km0",
        &PatchParams::default(),
        &Patch::Merge(json!({"status": {"hostRef": {"name": "h0"}}})),
    )
    .await
    .unwrap();

    // Remediation named like the Machine (as MachineHealthCheck creates it): two reboots one second apart, then
    // the Machine is marked for deletion.
    let rems: Api<KilnRemediation> = Api::namespaced(client.clone(), "default");
    let r: KilnRemediation = serde_json::from_value(json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnRemediation", "metadata": {"name": "m0"},
        "spec": {"strategy": {"type": "Reboot", "retryLimit": 2, "timeoutSeconds": 1}}
    }))
    .unwrap();
    rems.create(&PostParams::default(), &r).await.unwrap();
    let st = wait("remediation gives up", async || {
        rems.get("m0")
            .await
            .ok()?
            .status
            .filter(|s| s.phase.as_deref() == Some("Deleting"))
    })
    .await;
    assert_eq!(st.retry_count, 2);
    // The last reboot request may still be on its way to the BMC when the remediation gives up.
    wait("the second power cycle", async || {
        (cycles() >= before + 2).then_some(())
    })
    .await;
    assert_eq!(
        cycles() - before,
        2,
        "the host was rebooted exactly retryLimit times: {:?}",
        fake.calls()
    );
    let m = machines.get("m0").await.unwrap();
    assert_eq!(
        m.metadata
            .annotations
            .unwrap()
            .get(DELETE_MACHINE_ANNOTATION)
            .map(String::as_str),
        Some("yes")
    );

    let _ = stop_tx.send(true);
    for t in [t1, t2] {
        tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("controller stops")
            .unwrap();
    }
    lab.stop().await;
    drop(server);
}
