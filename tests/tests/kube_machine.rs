//! A KilnMachine owned by a real Cluster API `Machine` (the pinned v1.14.2 CRDs) against a real kube-apiserver, with
//! kiln's BareMetalHost and KilnMachine controllers and kiln's real engine (store, executor and agent API of an
//! in-process appliance with fake BMCs and simulated agents, `kiln_tests::inproc`): the machine waits for the Machine's
//! bootstrap data Secret, claims the matching host, the bootstrap data is what reaches the agent as user data,
//! providerID/addresses/ready are set once the host is provisioned, and deleting the machine releases the host, which
//! is deprovisioned back to `available`. The machine's `Ready` condition says what it waits for (bootstrap data, a
//! matching host) and which host it runs on.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kiln_kube::bmh::{BareMetalHost, ProvisioningState as S};
use kiln_kube::capi::KilnMachine;
use kiln_kube::machine_controller;
use kiln_tests::inproc::{Lab, mac_of};
use kiln_tests::kube::{MachineControllers, controller_client, create, server_with_crds};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use serde_json::json;

async fn wait<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    kiln_tests::kube::eventually(what, Duration::from_secs(60), f).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kilnmachine_claims_host_with_bootstrap_data_and_releases_it() {
    let (server, client) = server_with_crds().await.expect("kube-apiserver with the CRDs");

    // deploy/'s namespace, ServiceAccount and RBAC; the controllers run as that ServiceAccount, proving the role
    // grants enough.
    let sa = controller_client(&server, &client).await.unwrap();
    // Sanity: the ServiceAccount is really restricted (no rights on, e.g., ConfigMaps).
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(sa.clone(), "default");
    assert!(
        cms.list(&Default::default()).await.is_err(),
        "the ServiceAccount must not list ConfigMaps"
    );

    // kiln's appliance in-process, with hardware (a fake BMC, simulated firmware and agent) for the host default/h0.
    let mut lab = Lab::start(|_| {}).await;
    lab.add_fake("default.h0");
    let controllers = MachineControllers::start(&sa, lab.engine());

    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let kms: Api<KilnMachine> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    create::<Secret>(
        &client,
        json!({"metadata": {"name": "bmc"}, "stringData": {"username": "u", "password": "p"}}),
    )
    .await;
    create::<BareMetalHost>(
        &client,
        json!({
            "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
            "metadata": {"name": "h0", "labels": {"role": "worker"}},
            "spec": {"online": false, "bootMACAddress": mac_of("default.h0"),
                     "bmc": {"address": "redfish+http://127.0.0.1:9/redfish/v1/Systems/h0", "credentialsName": "bmc"}}
        }),
    )
    .await;
    wait("h0 available", async || {
        (hosts.get("h0").await.ok()?.state() == S::Available).then_some(())
    })
    .await;
    // The agent's inventory carries the address h0's NIC got; it reaches the BareMetalHost's status.
    let h0_ip = kiln_tests::inproc::ip_of("default.h0");
    wait("h0's NIC address in its status", async || {
        let hw = hosts.get("h0").await.ok()?.status?.hardware?;
        hw.nics
            .iter()
            .any(|n| n.ip.as_deref() == Some(h0_ip.as_str()))
            .then_some(())
    })
    .await;

    // A CAPI Machine (real v1beta2 schema) without bootstrap data yet, and its KilnMachine.
    let machines: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &machine_controller::machine_resource());
    let machine: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": "m0"},
        "spec": {"clusterName": "c1", "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfig", "name": "m0"}},
                 "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnMachine", "name": "km0"}}
    }))
    .unwrap();
    let machine = machines
        .create(&PostParams::default(), &machine)
        .await
        .expect("create CAPI Machine");
    create::<KilnMachine>(&client, json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnMachine",
        "metadata": {"name": "km0", "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "name": "m0", "uid": machine.metadata.uid, "controller": true}]},
        "spec": {"hostSelector": {"matchLabels": {"role": "worker"}},
                 "image": {"url": "http://192.0.2.2/node.qcow2", "checksum": "ab".repeat(32), "checksumType": "sha256", "format": "qcow2"}}
    }))
    .await;

    // No bootstrap data yet: the host stays unclaimed, and the machine's Ready condition says why.
    let ready = async |km: &str| {
        let km = kms.get(km).await.ok()?;
        km.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == machine_controller::READY_CONDITION)
    };
    let c = wait("km0 says it waits for bootstrap data", async || {
        ready("km0").await.filter(|c| c.reason == "WaitingForBootstrapData")
    })
    .await;
    assert_eq!(
        (c.status.as_str(), c.message.as_str()),
        ("False", "Machine m0 has no bootstrap data yet")
    );
    assert!(
        hosts.get("h0").await.unwrap().spec.consumer_ref.is_none(),
        "claimed before bootstrap data existed"
    );

    // Bootstrap data appears (as CAPI's bootstrap provider writes it: keys `value` and `format`).
    let bootstrap = "#cloud-config\nruncmd: [kubeadm join 10.0.0.1:6443]\n";
    create::<Secret>(
        &client,
        json!({"metadata": {"name": "m0-bootstrap"}, "type": "cluster.x-k8s.io/secret",
        "stringData": {"value": bootstrap, "format": "cloud-config"}}),
    )
    .await;
    let mut m = machine.clone();
    m.data["spec"]["bootstrap"]["dataSecretName"] = json!("m0-bootstrap");
    machines
        .replace("m0", &PostParams::default(), &m)
        .await
        .expect("set dataSecretName");

    let km = wait("km0 ready", async || {
        let km = kms.get("km0").await.ok()?;
        km.status.as_ref().is_some_and(|s| s.ready).then_some(km)
    })
    .await;
    assert_eq!(km.spec.provider_id.as_deref(), Some("kiln://default/h0"));
    let c = ready("km0").await.expect("a Ready condition");
    assert_eq!(
        (c.status.as_str(), c.reason.as_str(), c.message.as_str()),
        ("True", "HostProvisioned", "BareMetalHost h0 is provisioned")
    );
    let st = km.status.unwrap();
    assert_eq!(st.initialization.map(|i| i.provisioned), Some(true));
    assert!(
        st.addresses
            .iter()
            .any(|a| a.type_ == "InternalIP" && a.address == h0_ip),
        "{:?}",
        st.addresses
    );
    let h0 = hosts.get("h0").await.unwrap();
    assert_eq!(
        h0.spec.consumer_ref.as_ref().and_then(|c| c.name.as_deref()),
        Some("km0")
    );
    assert_eq!(h0.status.unwrap().provisioning.image.url, "http://192.0.2.2/node.qcow2");
    let drive = lab.drives.lock().unwrap().get("default.h0").cloned();
    let drive = drive.expect("the agent wrote an image with a config drive");
    assert_eq!(
        drive["user_data"], bootstrap,
        "the bootstrap data is the host's user data"
    );
    assert!(secrets.get("m0-bootstrap").await.is_ok());

    // A second machine finds no available host to match: its Ready condition says so.
    let m1: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": "m1"},
        "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "m0-bootstrap"},
                 "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnMachine", "name": "km1"}}
    }))
    .unwrap();
    let m1 = machines
        .create(&PostParams::default(), &m1)
        .await
        .expect("create Machine m1");
    create::<KilnMachine>(&client, json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnMachine",
        "metadata": {"name": "km1", "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "name": "m1", "uid": m1.metadata.uid, "controller": true}]},
        "spec": {"hostSelector": {"matchLabels": {"role": "worker"}}}
    }))
    .await;
    let c = wait("km1 says it waits for a host", async || {
        ready("km1").await.filter(|c| c.reason == "WaitingForHost")
    })
    .await;
    assert_eq!(c.status, "False");
    assert!(c.message.contains("hostSelector"), "{c:?}");
    kms.delete("km1", &DeleteParams::default()).await.unwrap();
    wait("km1 gone", async || {
        kms.get_opt("km1").await.ok()?.is_none().then_some(())
    })
    .await;

    // Deleting the KilnMachine releases the host, which is deprovisioned and available again.
    kms.delete("km0", &DeleteParams::default()).await.unwrap();
    wait("km0 gone", async || {
        kms.get_opt("km0").await.ok()?.is_none().then_some(())
    })
    .await;
    wait("h0 available again", async || {
        let h = hosts.get("h0").await.ok()?;
        (h.spec.consumer_ref.is_none() && h.state() == S::Available && h.spec.image.is_none()).then_some(())
    })
    .await;
    let (code, kiln_h0) = lab.api(reqwest::Method::GET, "/api/v1/hosts/default.h0", None).await;
    assert_eq!(code, 200, "{kiln_h0}");
    assert_eq!(kiln_h0["state"], "available", "{kiln_h0}");
    assert!(kiln_h0["image"].is_null(), "the engine's host has no image: {kiln_h0}");
    assert!(
        hosts
            .get("h0")
            .await
            .unwrap()
            .status
            .unwrap()
            .provisioning
            .image
            .url
            .is_empty()
    );

    controllers.stop().await;
    lab.stop().await;
    drop(server);
}
