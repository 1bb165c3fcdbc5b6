//! Per-machine network data from a `KilnDataTemplate` with addresses through Cluster API's IPAM contract, against a
//! real kube-apiserver with Cluster API v1.14.2's `IPAddressClaim`/`IPAddress` CRDs, kiln's BareMetalHost and
//! KilnMachine controllers (as kiln's ServiceAccount, so the shipped role must grant what they do) and kiln's real
//! engine (in-process appliance, fake BMCs, simulated agents).
//!
//! The IPAM provider's part is played by the test kit (`kiln_tests::ipam`, pool `InClusterIPPool/pool-a`,
//! 192.168.10.21 upwards, gateway .1): the real in-cluster IPAM provider cannot be built on this machine.
//!
//! Checked: a machine waits, saying so, until its address is bound; two machines get distinct addresses; each host's
//! config drive carries the rendered `network_data.json` (its own NIC's MAC, its address, the pool's gateway as the
//! default route, DNS); a template naming a NIC no host has leaves the machine waiting for a host and says why; a
//! template with a bond (which kiln does not render) is refused naming it; deleting a machine deletes its claim and its
//! network data Secret.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kiln_kube::bmh::{BareMetalHost, ProvisioningState as S};
use kiln_kube::capi::KilnMachine;
use kiln_kube::data::{KilnDataTemplate, ip_address_claim_resource};
use kiln_kube::machine_controller;
use kiln_tests::inproc::{Lab, mac_of};
use kiln_tests::ipam;
use kiln_tests::kube::{MachineControllers, controller_client, create, server_with_crds};
use kube::api::{Api, DeleteParams, DynamicObject, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};

async fn wait<T>(what: &str, f: impl AsyncFnMut() -> Option<T>) -> T {
    kiln_tests::kube::eventually(what, Duration::from_secs(60), f).await
}

async fn machine(client: &Client, name: &str, template: &str) {
    let machines: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), "default", &machine_controller::machine_resource());
    let m: DynamicObject = serde_json::from_value(json!({
        "apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
        "metadata": {"name": name, "labels": {"cluster.x-k8s.io/cluster-name": "c1"}},
        "spec": {"clusterName": "c1", "bootstrap": {"dataSecretName": "bootstrap"},
                 "infrastructureRef": {"apiGroup": "infrastructure.cluster.x-k8s.io", "kind": "KilnMachine", "name": format!("k{name}")}}
    }))
    .unwrap();
    let m = machines
        .create(&PostParams::default(), &m)
        .await
        .expect("create Machine");
    create::<KilnMachine>(client, json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnMachine",
        "metadata": {"name": format!("k{name}"), "labels": {"cluster.x-k8s.io/cluster-name": "c1"},
            "ownerReferences": [{"apiVersion": "cluster.x-k8s.io/v1beta2", "kind": "Machine",
            "name": name, "uid": m.metadata.uid, "controller": true}]},
        "spec": {"hostSelector": {"matchLabels": {"role": "worker"}}, "dataTemplate": {"name": template},
                 "image": {"url": "http://192.0.2.2/node.qcow2", "checksum": "ab".repeat(32), "checksumType": "sha256", "format": "qcow2"}}
    }))
    .await;
}

fn template(name: &str, nic: &str) -> Value {
    let pool = json!({"apiGroup": "ipam.cluster.x-k8s.io", "kind": "InClusterIPPool", "name": "pool-a"});
    json!({
        "apiVersion": "infrastructure.cluster.x-k8s.io/v1beta1", "kind": "KilnDataTemplate",
        "metadata": {"name": name},
        "spec": {"networkData": {
            "links": {"ethernets": [{"id": "enp1s0", "mtu": 1500, "macAddress": {"fromHostInterface": nic}}]},
            "networks": {"ipv4": [{"id": "prov", "link": "enp1s0", "fromPoolRef": pool,
                "routes": [{"network": "0.0.0.0", "prefix": 0, "gateway": {"fromPoolRef": pool}}]}]},
            "services": {"dns": ["192.168.10.53"]}
        }}
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn machines_get_network_data_with_distinct_pool_addresses_and_give_them_back() {
    let (server, client) = server_with_crds().await.expect("kube-apiserver with the CRDs");
    let sa = controller_client(&server, &client).await.unwrap();

    let mut lab = Lab::start(|_| {}).await;
    let controllers = MachineControllers::start(&sa, lab.engine());

    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let kms: Api<KilnMachine> = Api::namespaced(client.clone(), "default");
    let secrets: Api<Secret> = Api::namespaced(client.clone(), "default");
    let claims: Api<DynamicObject> = Api::namespaced_with(client.clone(), "default", &ip_address_claim_resource());
    create::<Secret>(
        &client,
        json!({"metadata": {"name": "bmc"}, "stringData": {"username": "u", "password": "p"}}),
    )
    .await;
    create::<Secret>(
        &client,
        json!({"metadata": {"name": "bootstrap"}, "stringData": {"value": "#cloud-config\n", "format": "cloud-config"}}),
    )
    .await;
    for h in ["h0", "h1"] {
        lab.add_fake(&format!("default.{h}"));
        create::<BareMetalHost>(
            &client,
            json!({
                "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
                "metadata": {"name": h, "labels": {"role": "worker"}},
                "spec": {"online": false, "bootMACAddress": mac_of(&format!("default.{h}")),
                         "bmc": {"address": format!("redfish+http://127.0.0.1:9/redfish/v1/Systems/{h}"), "credentialsName": "bmc"}}
            }),
        )
        .await;
    }
    for h in ["h0", "h1"] {
        wait(&format!("{h} available"), async || {
            (hosts.get(h).await.ok()?.state() == S::Available).then_some(())
        })
        .await;
    }
    create::<KilnDataTemplate>(&client, template("workers", "eth0")).await;
    create::<KilnDataTemplate>(&client, template("wrong-nic", "eth9")).await;

    let ready = async |km: &str| {
        let km = kms.get(km).await.ok()?;
        km.status?
            .conditions
            .into_iter()
            .find(|c| c.type_ == machine_controller::READY_CONDITION)
    };

    // No IPAM provider yet: the machine's claim stays unbound, and the machine says what it waits for.
    machine(&client, "m0", "workers").await;
    let c = wait("km0 waits for its address", async || {
        ready("km0").await.filter(|c| c.reason == "WaitingForIPAddresses")
    })
    .await;
    assert_eq!(
        c.message,
        "IPAddressClaim km0-prov has no address from InClusterIPPool/pool-a yet (is an IPAM provider serving \
         ipam.cluster.x-k8s.io running?)"
    );
    let claim = claims.get("km0-prov").await.expect("kiln made the claim");
    assert_eq!(claim.data["spec"]["poolRef"]["name"], "pool-a");
    assert_eq!(claim.data["spec"]["clusterName"], "c1");
    let owner = &claim.owner_references()[0];
    assert_eq!((owner.kind.as_str(), owner.name.as_str()), ("KilnMachine", "km0"));
    assert!(
        hosts
            .list(&Default::default())
            .await
            .unwrap()
            .items
            .iter()
            .all(|h| h.spec.consumer_ref.is_none()),
        "a host was claimed before the machine's address was bound"
    );

    // The provider runs: both machines get distinct addresses, and each host's config drive its network data.
    let provider = ipam::Provider::start(
        client.clone(),
        ipam::Pool {
            namespace: "default".into(),
            name: "pool-a".into(),
            first: Ipv4Addr::new(192, 168, 10, 21),
            prefix: 24,
            gateway: Ipv4Addr::new(192, 168, 10, 1),
        },
    );
    machine(&client, "m1", "workers").await;
    let mut seen = BTreeMap::new();
    for km in ["km0", "km1"] {
        let host = wait(&format!("{km} provisioned"), async || {
            let k = kms.get(km).await.ok()?;
            k.status.filter(|s| s.ready)?.host_ref.map(|h| h.name)
        })
        .await;
        let drive = lab.drives.lock().unwrap().get(&format!("default.{host}")).cloned();
        let network = drive.expect("the agent wrote a config drive")["network_data"].clone();
        let address = network["networks"][0]["ip_address"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        assert_eq!(
            network,
            json!({
                "links": [{"id": "enp1s0", "type": "phy", "ethernet_mac_address": mac_of(&format!("default.{host}")), "mtu": 1500}],
                "networks": [{"id": "prov", "type": "ipv4", "link": "enp1s0", "ip_address": address,
                    "netmask": "255.255.255.0", "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "192.168.10.1"}]}],
                "services": [{"type": "dns", "address": "192.168.10.53"}]
            }),
            "{km} on {host}"
        );
        assert!(address.starts_with("192.168.10."), "{address}");
        let secret = secrets
            .get(&format!("{km}-networkdata"))
            .await
            .expect("the network data Secret");
        assert_eq!(secret.owner_references()[0].name, km);
        seen.insert(km, address);
    }
    assert_ne!(seen["km0"], seen["km1"], "two machines share an address: {seen:?}");

    // A template naming a NIC no host has: with no host it can render for, the machine waits and says why.
    kms.delete("km1", &DeleteParams::default()).await.unwrap();
    wait("km1 gone", async || {
        kms.get_opt("km1").await.ok()?.is_none().then_some(())
    })
    .await;
    assert!(
        claims.get_opt("km1-prov").await.unwrap().is_none(),
        "km1's claim is left"
    );
    machine(&client, "m2", "wrong-nic").await;
    let c = wait("km2 waits for a host with its NIC", async || {
        ready("km2").await.filter(|c| c.reason == "WaitingForHost")
    })
    .await;
    assert!(
        c.message.contains("has the NICs KilnDataTemplate wrong-nic names"),
        "{c:?}"
    );

    // CAPM3 template fields kiln does not render (a bond here) are refused, naming the field, not dropped.
    let mut bonded = template("bonded", "eth0");
    bonded["spec"]["networkData"]["links"]["bonds"] = json!([{"id": "bond0", "bondMode": "802.3ad",
        "bondLinks": ["enp1s0"], "macAddress": {"fromHostInterface": "eth0"}}]);
    create::<KilnDataTemplate>(&client, bonded).await;
    machine(&client, "m3", "bonded").await;
    let c = wait("km3 refuses its template", async || {
        ready("km3").await.filter(|c| c.reason == "InvalidDataTemplate")
    })
    .await;
    assert!(
        c.message
            .starts_with("KilnDataTemplate bonded: networkData.links.bonds: kiln does not render this"),
        "{c:?}"
    );
    assert!(
        claims.get_opt("km3-prov").await.unwrap().is_none(),
        "a claim for a refused template"
    );

    // Deleting machines gives their addresses back (claims deleted) and removes their network data.
    for km in ["km0", "km2", "km3"] {
        kms.delete(km, &DeleteParams::default()).await.unwrap();
        wait(&format!("{km} gone"), async || {
            kms.get_opt(km).await.ok()?.is_none().then_some(())
        })
        .await;
        assert!(
            claims.get_opt(&format!("{km}-prov")).await.unwrap().is_none(),
            "{km}'s claim is left"
        );
        assert!(
            secrets.get_opt(&format!("{km}-networkdata")).await.unwrap().is_none(),
            "{km}'s Secret is left"
        );
    }
    for h in ["h0", "h1"] {
        wait(&format!("{h} available again"), async || {
            let h = hosts.get(h).await.ok()?;
            (h.spec.consumer_ref.is_none() && h.state() == S::Available && h.spec.network_data.is_none()).then_some(())
        })
        .await;
    }

    controllers.stop().await;
    provider.stop().await;
    lab.stop().await;
    drop(server);
}
