//! The real Cluster API (core + kubeadm bootstrap managers, v1.14.2, built from Go modules) with kiln as the
//! infrastructure provider, against a real kube-apiserver. kiln runs in-process with its store-backed engine, fake
//! BMCs and simulated agents (`kiln_tests::inproc`); the test plays cloud-init and kubelet: it renders the bootstrap
//! data kiln's agent wrote with the config drive's meta data and registers a Node with the `provider-id` kubelet
//! argument found there, so Cluster API's nodeRef proves that the providerID reached the Node through the config
//! drive (the "workload cluster" is the same API server, reached through the kubeconfig Secret Cluster API generates
//! from the cluster CA). The workers' KubeadmConfigTemplate does not pass `provider-id`, so their kubelets register
//! Nodes without one, and kiln sets it on the workload cluster's Node itself (path (b), [`kiln_kube::workload`]).
//!
//! 1. A Cluster with a control-plane Machine (KubeadmConfig init) and a MachineDeployment (KubeadmConfigTemplate,
//!    KilnMachineTemplate) of 1: the control plane gets kubeadm *init* data, and once its Node exists, the worker
//!    gets real kubeadm *join* data; each is exactly what kiln's agent wrote into that host's config drive. The
//!    worker's Node gets its providerID from kiln, then Cluster API its Machine's nodeRef.
//!    The control plane host's labels under the KilnCluster's label-sync prefix reach its Node (CAPM3's label sync).
//! 2. Scale the MachineDeployment to 2: a second worker host is claimed and provisioned, its Node found the same way.
//! 3. Scale back to 1: Cluster API deletes a Machine, kiln deprovisions (the agent erases) and releases its host,
//!    which is available again, kept for the MachineDeployment (its template has `nodeReuse`).
//! 4. The real `clusterctl move` to a second API server (a pivot): the BareMetalHosts (with their credentials) move
//!    with the cluster, kiln's appliance follows to the target, and every Machine runs again there without any host
//!    being written, erased or inspected again.

use kiln_tests::inproc as lab;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Secret};
use kiln_kube::bmh::{BareMetalHost, ProvisioningState as S};
use kiln_kube::capi::KilnMachine;
use kiln_kube::machine_controller::NODE_PROVIDER_ID_CONDITION;
use kiln_kube::runner::KubeSettings;
use kiln_tests::kube::{CapiManagers, KubeApiServer, capi_crds, install_crds, parse_crds};
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use lab::{Lab, mac_of};
use serde_json::{Value, json};

const NS: &str = "default";

fn gvk(group: &str, version: &str, kind: &str, plural: &str) -> ApiResource {
    ApiResource::from_gvk_with_plural(&GroupVersionKind::gvk(group, version, kind), plural)
}

async fn apply(client: &Client, ar: &ApiResource, obj: Value) {
    let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, ar);
    let o: DynamicObject = serde_json::from_value(obj).unwrap();
    api.create(&PostParams::default(), &o)
        .await
        .unwrap_or_else(|e| panic!("create {} {}: {e}", ar.kind, o.name_any()));
}

struct Ctx {
    client: Client,
    capi: CapiManagers,
}

impl Ctx {
    async fn wait<T>(&mut self, what: &str, secs: u64, mut f: impl AsyncFnMut(&Client) -> Option<T>) -> T {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(v) = f(&self.client).await {
                return v;
            }
            assert!(
                self.capi.running(),
                "a Cluster API manager exited\n{}",
                self.capi.log_tail()
            );
            if tokio::time::Instant::now() > deadline {
                panic!(
                    "timed out waiting for {what}\n{}\n{}",
                    dump(&self.client).await,
                    self.capi.log_tail()
                );
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

async fn dump(client: &Client) -> String {
    let mut out = String::new();
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), NS);
    for h in hosts
        .list(&Default::default())
        .await
        .map(|l| l.items)
        .unwrap_or_default()
    {
        out += &format!(
            "BareMetalHost {}: state {:?} consumer {:?}\n",
            h.name_any(),
            h.state(),
            h.spec.consumer_ref.as_ref().and_then(|c| c.name.clone())
        );
    }
    for (ar, what) in [
        (machine_ar(), "Machine"),
        (
            gvk(
                "bootstrap.cluster.x-k8s.io",
                "v1beta2",
                "KubeadmConfig",
                "kubeadmconfigs",
            ),
            "KubeadmConfig",
        ),
        (gvk("cluster.x-k8s.io", "v1beta2", "Cluster", "clusters"), "Cluster"),
    ] {
        let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &ar);
        for o in api.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
            out += &format!("{what} {}: status {}\n", o.name_any(), o.data["status"]);
        }
    }
    let kms: Api<KilnMachine> = Api::namespaced(client.clone(), NS);
    for k in kms.list(&Default::default()).await.map(|l| l.items).unwrap_or_default() {
        out += &format!(
            "KilnMachine {}: providerID {:?} status {}\n",
            k.name_any(),
            k.spec.provider_id,
            serde_json::to_string(&k.status).unwrap_or_default()
        );
    }
    out
}

fn machine_ar() -> ApiResource {
    gvk("cluster.x-k8s.io", "v1beta2", "Machine", "machines")
}

/// The value of a kubelet argument in rendered kubeadm configuration: kubeadm v1beta4's list form (`- name: NAME` then
/// `value: VALUE`) or v1beta3's map form (`NAME: VALUE`).
fn kubelet_arg(text: &str, name: &str) -> Option<String> {
    let unquote = |v: &str| v.trim().trim_matches(['"', '\'']).to_owned();
    let mut lines = text.lines();
    while let Some(l) = lines.next() {
        let t = l.trim().trim_start_matches("- ");
        if t == format!("name: {name}") {
            let next = lines.next()?.trim().trim_start_matches("- ");
            return next.strip_prefix("value:").map(unquote);
        }
        if let Some(v) = t.strip_prefix(&format!("{name}:")) {
            return Some(unquote(v));
        }
    }
    None
}

/// Plays cloud-init and the kubelet on each host kiln provisioned: renders the bootstrap data the agent wrote as
/// cloud-init does (a `## template: jinja` document; `{{ ds.meta_data.providerid }}` from the config drive's meta
/// data), and registers a Node with the `provider-id` kubelet argument it finds there. So the Node's providerID comes
/// from the config drive, not from the KilnMachine: Cluster API sets a Machine's nodeRef only if the two agree.
/// Without that argument the Node is registered without a providerID, as a kubelet not given `--provider-id` does.
fn register_nodes(
    client: Client,
    drives: Arc<std::sync::Mutex<HashMap<String, Value>>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let nodes: Api<Node> = Api::all(client.clone());
        loop {
            let written: Vec<(String, Value)> = drives
                .lock()
                .unwrap()
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (kiln_host, drive) in written {
                let host = kiln_host
                    .strip_prefix(&format!("{NS}."))
                    .unwrap_or(&kiln_host)
                    .to_owned();
                let user_data = drive["user_data"].as_str().unwrap_or_default();
                if !user_data.starts_with("## template: jinja") {
                    continue;
                }
                let Some(pid) = drive["meta_data"]["providerid"].as_str() else {
                    continue;
                };
                let rendered = user_data.replace("{{ ds.meta_data.providerid }}", pid);
                let spec = match kubelet_arg(&rendered, "provider-id") {
                    Some(arg) => json!({"providerID": arg}),
                    None => json!({}),
                };
                if nodes.get_opt(&host).await.ok().flatten().is_none() {
                    let node: Node = serde_json::from_value(json!({
                        "metadata": {"name": host},
                        "spec": spec,
                    }))
                    .unwrap();
                    let _ = nodes.create(&PostParams::default(), &node).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

/// The user data kiln's agent wrote for a host, and the bootstrap Secret of the Machine that claimed it.
async fn delivered(lab: &Lab, client: &Client, machine: &str) -> (String, String) {
    let machines: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &machine_ar());
    let m = machines.get(machine).await.unwrap();
    let secret_name = m.data["spec"]["bootstrap"]["dataSecretName"]
        .as_str()
        .unwrap()
        .to_owned();
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    let s = secrets.get(&secret_name).await.unwrap();
    let value = String::from_utf8(s.data.unwrap()["value"].0.clone()).unwrap();
    let infra = m.data["spec"]["infrastructureRef"]["name"].as_str().unwrap();
    let kms: Api<KilnMachine> = Api::namespaced(client.clone(), NS);
    let host = kms.get(infra).await.unwrap().status.unwrap().host_ref.unwrap().name;
    let drive = lab.drives.lock().unwrap()[&format!("{NS}.{host}")].clone();
    (drive["user_data"].as_str().unwrap_or_default().to_owned(), value)
}

/// A worker Machine's Node was registered without a providerID and kiln set it: the Node's providerID is the
/// KilnMachine's, and the KilnMachine's condition says kiln set it.
async fn assert_kiln_set_provider_id(client: &Client, machine: &str) {
    let machines: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &machine_ar());
    let m = machines.get(machine).await.unwrap();
    let node = m.data["status"]["nodeRef"]["name"].as_str().unwrap();
    let infra = m.data["spec"]["infrastructureRef"]["name"].as_str().unwrap();
    let km = Api::<KilnMachine>::namespaced(client.clone(), NS)
        .get(infra)
        .await
        .unwrap();
    let n = Api::<Node>::all(client.clone()).get(node).await.unwrap();
    let want = km.spec.provider_id.clone().unwrap();
    assert_eq!(n.spec.unwrap().provider_id.as_ref(), Some(&want), "Node {node}");
    let cond = km
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == NODE_PROVIDER_ID_CONDITION)
        .unwrap_or_else(|| panic!("KilnMachine {infra} has no {NODE_PROVIDER_ID_CONDITION} condition"));
    // The test registered this Node without a providerID, so kiln set it. The condition says so, or, when the status
    // write that followed kiln's patch lost a race and a later reconcile found the Node already done, that the Node
    // has the providerID.
    assert!(
        cond.status == "True" && matches!(cond.reason.as_str(), "ProviderIDSetByKiln" | "NodeHasProviderID"),
        "{cond:?}"
    );
}

/// Machines of the MachineDeployment that have a Node.
async fn running_workers(client: &Client) -> Vec<String> {
    let machines: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &machine_ar());
    machines
        .list(&kube::api::ListParams::default().labels("cluster.x-k8s.io/deployment-name=c1-md"))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
        .into_iter()
        .filter(|m| m.metadata.deletion_timestamp.is_none() && m.data["status"]["nodeRef"]["name"].is_string())
        .map(|m| m.name_any())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_api_machinedeployment_scales_on_kiln_hosts_with_real_bootstrap_data() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn,kube_client=off".into()),
        )
        .with_test_writer()
        .try_init();
    let server = KubeApiServer::start().await.expect("start etcd + kube-apiserver");
    let client = server.client().await.unwrap();
    let mut crds = parse_crds(&kiln_kube::crds::crds_yaml()).unwrap();
    crds.extend(capi_crds().unwrap());
    install_crds(&client, &crds).await.unwrap();
    let capi = CapiManagers::start(&server).expect("start the Cluster API managers");
    let mut ctx = Ctx {
        client: client.clone(),
        capi,
    };

    let settings = KubeSettings {
        kubeconfig: Some(server.kubeconfig.clone()),
        lease_namespace: Some(NS.into()),
        identity: Some("kiln".into()),
        busy_requeue_secs: 1,
        ..KubeSettings::default()
    };
    let mut lab = Lab::start_with(|_| {}, Some(settings.clone())).await;

    // Three hosts: one for the control plane, two for workers.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "bmc-creds"}, "stringData": {"username": "admin", "password": lab::PASSWORD}}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    let bmh = gvk("metal3.io", "v1alpha1", "BareMetalHost", "baremetalhosts");
    for (n, role) in [("cp-0", "control-plane"), ("w-1", "worker"), ("w-2", "worker")] {
        lab.add_fake(&format!("{NS}.{n}"));
        apply(
            &client,
            &bmh,
            json!({
                "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                "metadata": {"name": n, "labels": {"role": role}},
                "spec": {"online": true, "bootMACAddress": mac_of(&format!("{NS}.{n}")),
                         "bmc": {"address": format!("redfish+http://127.0.0.1:9/redfish/v1/Systems/{n}"), "credentialsName": "bmc-creds"}}
            }),
        )
        .await;
    }
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), NS);
    ctx.wait("three available hosts", 60, async |_| {
        let l = hosts.list(&Default::default()).await.ok()?;
        (l.items.iter().filter(|h| h.state() == S::Available).count() == 3).then_some(())
    })
    .await;

    // The cluster CA is the test API server's, so the kubeconfig Cluster API generates reaches it as the workload
    // cluster.
    let ca = |f: &str| std::fs::read_to_string(server.dir().join(f)).unwrap();
    secrets
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({
                "metadata": {"name": "c1-ca", "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
                "type": "cluster.x-k8s.io/secret",
                "stringData": {"tls.crt": ca("ca.crt"), "tls.key": ca("ca.key")},
            }))
            .unwrap(),
        )
        .await
        .unwrap();
    let port: u16 = server.url.rsplit(':').next().unwrap().parse().unwrap();
    let image = json!({"url": "http://192.0.2.2/node.qcow2", "checksum": "ab".repeat(32), "checksumType": "sha256", "format": "qcow2"});
    let infra = |kind: &str, plural: &str| gvk("infrastructure.cluster.x-k8s.io", "v1beta1", kind, plural);
    let boot = |kind: &str, plural: &str| gvk("bootstrap.cluster.x-k8s.io", "v1beta2", kind, plural);
    apply(
        &client,
        &infra("KilnCluster", "kilnclusters"),
        json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnCluster",
               "metadata": {"name": "c1"},
               "spec": {"controlPlaneEndpoint": {"host": "127.0.0.1", "port": port}}}),
    )
    .await;
    apply(
        &client,
        &gvk("cluster.x-k8s.io", "v1beta2", "Cluster", "clusters"),
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Cluster",
               "metadata": {"name": "c1"},
               "spec": {"infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnCluster", "name": "c1"}}}),
    )
    .await;
    // The control plane: one Machine with kubeadm init configuration.
    apply(
        &client,
        &boot("KubeadmConfig", "kubeadmconfigs"),
        json!({"apiVersion": "bootstrap.cluster.x-k8s.io/v1beta2", "kind": "KubeadmConfig",
               "metadata": {"name": "c1-cp-0"},
               "spec": {"initConfiguration": {"nodeRegistration": {"name": "{{ ds.meta_data.name }}",
                        "kubeletExtraArgs": [{"name": "provider-id", "value": "{{ ds.meta_data.providerid }}"}]}}}}),
    )
    .await;
    apply(
        &client,
        &infra("KilnMachine", "kilnmachines"),
        json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnMachine",
               "metadata": {"name": "c1-cp-0"},
               "spec": {"hostSelector": {"matchLabels": {"role": "control-plane"}}, "image": image}}),
    )
    .await;
    apply(
        &client,
        &machine_ar(),
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
               "metadata": {"name": "c1-cp-0", "labels": {"cluster.x-k8s.io/control-plane": ""}},
               "spec": {"clusterName": "c1", "version": "v1.34.1",
                        "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfig", "name": "c1-cp-0"}},
                        "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnMachine", "name": "c1-cp-0"}}}),
    )
    .await;
    // The workers: a MachineDeployment of one.
    apply(
        &client,
        &boot("KubeadmConfigTemplate", "kubeadmconfigtemplates"),
        json!({"apiVersion": "bootstrap.cluster.x-k8s.io/v1beta2", "kind": "KubeadmConfigTemplate",
               "metadata": {"name": "c1-md"},
               // No `provider-id` kubelet argument: kiln sets the Nodes' providerID (path (b)).
               "spec": {"template": {"spec": {"joinConfiguration": {"nodeRegistration": {"name": "{{ ds.meta_data.name }}"}}}}}}),
    )
    .await;
    apply(
        &client,
        &infra("KilnMachineTemplate", "kilnmachinetemplates"),
        json!({"apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnMachineTemplate",
               "metadata": {"name": "c1-md"},
               "spec": {"template": {"spec": {"hostSelector": {"matchLabels": {"role": "worker"}}, "image": image}},
                        "nodeReuse": true}}),
    )
    .await;
    let md_ar = gvk("cluster.x-k8s.io", "v1beta2", "MachineDeployment", "machinedeployments");
    apply(
        &client,
        &md_ar,
        json!({"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "MachineDeployment",
               "metadata": {"name": "c1-md"},
               // What CAPI's defaulting webhook would fill in (the test installs the CRDs without webhooks).
               "spec": {"clusterName": "c1", "replicas": 1,
                        "rollout": {"strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}},
                        "deletion": {"order": "Newest"},
                        "selector": {"matchLabels": {"cluster.x-k8s.io/deployment-name": "c1-md"}},
                        "template": {"metadata": {"labels": {"cluster.x-k8s.io/deployment-name": "c1-md"}},
                                     "spec": {"clusterName": "c1", "version": "v1.34.1",
                                              "bootstrap": {"configRef": {"apiGroup": "bootstrap.cluster.x-k8s.io", "kind": "KubeadmConfigTemplate", "name": "c1-md"}},
                                              "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnMachineTemplate", "name": "c1-md"}}}}}),
    )
    .await;
    let kubelet = register_nodes(client.clone(), lab.drives.clone());

    // 1. Control plane first (init data), then the worker (join data), both delivered by kiln.
    let machines: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &machine_ar());
    let t = tokio::time::Instant::now();
    ctx.wait("the control-plane Machine has a Node", 180, async |_| {
        let m = machines.get("c1-cp-0").await.ok()?;
        m.data["status"]["nodeRef"]["name"].is_string().then_some(())
    })
    .await;
    println!("control plane machine running after {:?}", t.elapsed());
    let (written, bootstrap) = delivered(&lab, &client, "c1-cp-0").await;
    assert!(bootstrap.contains("kubeadm init"), "init data: {bootstrap}");
    assert_eq!(written, bootstrap, "the config drive carries the bootstrap data");
    let workers = ctx
        .wait("one worker Machine with a Node", 180, async |c| {
            let w = running_workers(c).await;
            (w.len() == 1).then_some(w)
        })
        .await;
    println!("first worker running after {:?}", t.elapsed());
    let (written, bootstrap) = delivered(&lab, &client, &workers[0]).await;
    assert!(bootstrap.contains("kubeadm join"), "join data: {bootstrap}");
    assert_eq!(written, bootstrap, "the config drive carries the join data");
    assert!(
        kubelet_arg(&bootstrap, "provider-id").is_none(),
        "the worker's kubelet gets no provider-id: {bootstrap}"
    );
    assert_kiln_set_provider_id(&client, &workers[0]).await;

    // Label sync (CAPM3's): the KilnCluster names a prefix; the control plane host's labels under it reach its Node,
    // follow changes and removals, and no other label is touched.
    let kcs: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &infra("KilnCluster", "kilnclusters"));
    kcs.patch(
        "c1",
        &PatchParams::default(),
        &Patch::Merge(
            json!({"metadata": {"annotations": {"metal3.io/metal3-label-sync-prefixes": "rack.example.com"}}}),
        ),
    )
    .await
    .unwrap();
    let nodes: Api<Node> = Api::all(client.clone());
    for (value, want) in [
        (json!("r7"), Some("r7")),
        (json!("r8"), Some("r8")),
        (Value::Null, None),
    ] {
        hosts
            .patch(
                "cp-0",
                &PatchParams::default(),
                &Patch::Merge(
                    json!({"metadata": {"labels": {"rack.example.com/row": value, "other.example.com/x": "y"}}}),
                ),
            )
            .await
            .unwrap();
        ctx.wait(&format!("Node cp-0 labelled {want:?}"), 60, async |_| {
            let n = nodes.get("cp-0").await.ok()?;
            (n.labels().get("rack.example.com/row").map(String::as_str) == want).then_some(())
        })
        .await;
    }
    assert!(
        !nodes
            .get("cp-0")
            .await
            .unwrap()
            .labels()
            .contains_key("other.example.com/x"),
        "only labels under the prefixes are synced"
    );

    // 2. Scale to 2.
    let mds: Api<DynamicObject> = Api::namespaced_with(client.clone(), NS, &md_ar);
    let scale = async |n: i64| {
        mds.patch(
            "c1-md",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": n}})),
        )
        .await
        .unwrap();
    };
    scale(2).await;
    let t = tokio::time::Instant::now();
    let two = ctx
        .wait("two worker Machines with Nodes", 180, async |c| {
            let w = running_workers(c).await;
            (w.len() == 2).then_some(w)
        })
        .await;
    println!("scaled 1 -> 2 in {:?}", t.elapsed());
    for w in &two {
        assert_kiln_set_provider_id(&client, w).await;
    }
    let consumers: Vec<String> = hosts
        .list(&Default::default())
        .await
        .unwrap()
        .items
        .iter()
        .filter_map(|h| h.spec.consumer_ref.as_ref().and_then(|c| c.name.clone()))
        .collect();
    assert_eq!(consumers.len(), 3, "every host is consumed once: {consumers:?}");

    // 3. Scale back to 1: one worker host is deprovisioned and released.
    scale(1).await;
    let t = tokio::time::Instant::now();
    let released = ctx
        .wait("a worker host released and available", 240, async |_| {
            let l = hosts.list(&Default::default()).await.ok()?;
            l.items
                .iter()
                .find(|h| {
                    h.labels().get("role").map(String::as_str) == Some("worker")
                        && h.spec.consumer_ref.is_none()
                        && h.state() == S::Available
                })
                .map(|h| h.name_any())
        })
        .await;
    println!("scaled 2 -> 1 in {:?}: {released} released", t.elapsed());
    // The template has nodeReuse: the host is kept for the MachineDeployment's next machine (CAPM3's label).
    assert_eq!(
        hosts
            .get(&released)
            .await
            .unwrap()
            .labels()
            .get(kiln_kube::claim::NODE_REUSE_LABEL)
            .map(String::as_str),
        Some("c1-md")
    );
    let commands = lab.commands.lock().unwrap()[&format!("{NS}.{released}")].clone();
    assert!(
        commands.iter().any(|c| c.starts_with("erase")),
        "the released host was erased: {commands:?}"
    );
    ctx.wait("one worker Machine left", 60, async |c| {
        (running_workers(c).await.len() == 1).then_some(())
    })
    .await;
    let left = running_workers(&client).await;
    assert!(
        two.contains(&left[0]),
        "the remaining worker is one of the two: {left:?} {two:?}"
    );

    // 4. `clusterctl move` to a second management cluster, as a pivot does; kiln follows it. Nothing is written or
    // erased again: the BareMetalHosts and their credentials move with the cluster, kiln keeps every host through the
    // source's deletions, and adopts them in the target.
    let target = KubeApiServer::start().await.expect("start the target API server");
    let tclient = target.client().await.unwrap();
    install_crds(&tclient, &crds).await.unwrap();
    for c in [&client, &tclient] {
        kiln_tests::clusterctl::record_init(c)
            .await
            .expect("record clusterctl init");
    }
    let commands_before = lab.commands.lock().unwrap().clone();
    let cc = kiln_tests::clusterctl::Clusterctl::new().unwrap();
    let t = tokio::time::Instant::now();
    // kiln runs on this runtime: clusterctl must not hold up one of its two worker threads.
    let out = match tokio::task::block_in_place(|| cc.move_to(&server.kubeconfig, &target.kubeconfig, NS)) {
        Ok(out) => out,
        Err(e) => panic!("{e:#}\n{}", dump(&client).await),
    };
    println!("clusterctl move in {:?}:\n{out}", t.elapsed());
    assert!(
        hosts.list(&Default::default()).await.unwrap().items.is_empty(),
        "the hosts left the source"
    );
    let source_kms: Api<KilnMachine> = Api::namespaced(client.clone(), NS);
    assert!(source_kms.list(&Default::default()).await.unwrap().items.is_empty());
    // The source's managers go; kiln's appliance (same store) now serves the target.
    lab.stop().await;
    lab.kube = Some(KubeSettings {
        kubeconfig: Some(target.kubeconfig.clone()),
        ..settings
    });
    lab.serve().await;
    ctx.capi = CapiManagers::start(&target).expect("start the Cluster API managers on the target");
    ctx.client = tclient.clone();
    let t = tokio::time::Instant::now();
    let thosts: Api<BareMetalHost> = Api::namespaced(tclient.clone(), NS);
    ctx.wait("the moved hosts as they were", 120, async |_| {
        let l = thosts.list(&Default::default()).await.ok()?;
        let provisioned = l
            .items
            .iter()
            .filter(|h| h.state() == S::Provisioned && h.spec.consumer_ref.is_some());
        let available = l
            .items
            .iter()
            .filter(|h| h.state() == S::Available && h.spec.consumer_ref.is_none());
        (provisioned.count() == 2 && available.count() == 1).then_some(())
    })
    .await;
    let tmachines: Api<DynamicObject> = Api::namespaced_with(tclient.clone(), NS, &machine_ar());
    ctx.wait("the moved Machines running with their Nodes", 180, async |c| {
        let cp = tmachines.get("c1-cp-0").await.ok()?;
        (cp.data["status"]["nodeRef"]["name"].is_string() && running_workers(c).await == left).then_some(())
    })
    .await;
    println!("target cluster running again after {:?}", t.elapsed());
    for h in thosts.list(&Default::default()).await.unwrap().items {
        let a = h.annotations();
        assert!(
            !a.contains_key("baremetalhost.metal3.io/paused") && !a.contains_key("baremetalhost.metal3.io/status"),
            "{} is resumed and its status copy dropped: {a:?}",
            h.name_any()
        );
    }
    let secrets_moved: Api<Secret> = Api::namespaced(tclient.clone(), NS);
    let creds = secrets_moved
        .get("bmc-creds")
        .await
        .expect("the BMC credentials moved with the hosts");
    assert_eq!(creds.metadata.owner_references.map(|o| o.len()), Some(3));
    assert_eq!(
        *lab.commands.lock().unwrap(),
        commands_before,
        "no host was written, erased or inspected again by the move"
    );
    kubelet.abort();
    drop(lab);
    drop(ctx);
    drop(target);
    drop(server);
}
