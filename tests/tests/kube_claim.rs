//! KilnMachines racing for BareMetalHosts against a real kube-apiserver: the resourceVersion-guarded claim lets
//! exactly one machine win each host, a loser waits (claims nothing) until a host frees up, and a claim survives a
//! "restart" (a fresh client asking again gets the same host back; no host is claimed twice).

use std::collections::BTreeSet;

use kiln_kube::bmh::{BareMetalHost, BareMetalHostStatus, ProvisionStatus, ProvisioningState};
use kiln_kube::capi::{HostSelector, KilnMachine, KilnMachineSpec};
use kiln_kube::claim::{Claim, claim_host, consumed_by, consumer_ref, release_host};
use kiln_tests::kube::{KubeApiServer, install_crds, parse_crds};
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

async fn available_host(client: &Client, name: &str, role: &str) {
    let api: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");
    let h: BareMetalHost = serde_json::from_value(json!({
        "apiVersion": "metal3.io/v1alpha1", "kind": "BareMetalHost",
        "metadata": {"name": name, "labels": {"role": role}},
        "spec": {"online": false, "bmc": {"address": "ipmi://192.0.2.1", "credentialsName": "bmc"}}
    }))
    .unwrap();
    api.create(&PostParams::default(), &h).await.unwrap();
    let status = BareMetalHostStatus {
        provisioning: ProvisionStatus {
            state: ProvisioningState::Available,
            ..Default::default()
        },
        ..Default::default()
    };
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await
    .unwrap();
}

async fn machine(client: &Client, name: &str, role: &str) -> KilnMachine {
    let api: Api<KilnMachine> = Api::namespaced(client.clone(), "default");
    let mut spec = KilnMachineSpec {
        host_selector: HostSelector {
            match_labels: [("role".to_string(), role.to_string())].into(),
            ..Default::default()
        },
        ..Default::default()
    };
    spec.image = None;
    api.create(&PostParams::default(), &KilnMachine::new(name, spec))
        .await
        .unwrap()
}

fn claim() -> Claim {
    Claim {
        user_data_secret: Some("bootstrap-data".into()),
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_claims_never_share_a_host() {
    let server = KubeApiServer::start().await.expect("start etcd + kube-apiserver");
    let client = server.client().await.unwrap();
    install_crds(&client, &parse_crds(&kiln_kube::crds::crds_yaml()).unwrap())
        .await
        .unwrap();
    let hosts: Api<BareMetalHost> = Api::namespaced(client.clone(), "default");

    // Two machines, one available worker host (and a control-plane host neither selector matches).
    available_host(&client, "h0", "worker").await;
    available_host(&client, "cp0", "control-plane").await;
    let m1 = machine(&client, "m1", "worker").await;
    let m2 = machine(&client, "m2", "worker").await;
    let (c1, c2) = (client.clone(), client.clone());
    let (r1, r2) = tokio::join!(async { claim_host(&c1, &m1, &claim(), None).await }, async {
        claim_host(&c2, &m2, &claim(), None).await
    });
    let (r1, r2) = (r1.unwrap(), r2.unwrap());
    assert!(
        r1.is_some() != r2.is_some(),
        "exactly one machine wins the host: {r1:?} {r2:?}"
    );
    let (winner, loser) = if r1.is_some() { (&m1, &m2) } else { (&m2, &m1) };
    let h0 = hosts.get("h0").await.unwrap();
    assert!(consumed_by(&h0, &consumer_ref(winner)));
    assert_eq!(h0.spec.consumer_ref.as_ref().unwrap().uid, winner.metadata.uid);
    assert_eq!(
        h0.spec.user_data.as_ref().unwrap().name.as_deref(),
        Some("bootstrap-data")
    );
    assert!(h0.spec.online);
    assert!(
        hosts.get("cp0").await.unwrap().spec.consumer_ref.is_none(),
        "selector respected"
    );

    // "Restart": a fresh client asking again gets the same answers; nothing is claimed twice.
    let fresh = server.client().await.unwrap();
    assert_eq!(
        claim_host(&fresh, winner, &claim(), None).await.unwrap().as_deref(),
        Some("h0")
    );
    assert_eq!(
        claim_host(&fresh, loser, &claim(), None).await.unwrap(),
        None,
        "the loser waits"
    );

    // Five machines race for three more hosts: three distinct winners, two waiting.
    for i in 1..=3 {
        available_host(&client, &format!("h{i}"), "worker").await;
    }
    let mut ms = Vec::new();
    for i in 3..=6 {
        ms.push(machine(&client, &format!("m{i}"), "worker").await);
    }
    ms.push(loser.clone());
    let results = futures::future::join_all(ms.iter().map(|m| {
        let c = client.clone();
        async move { claim_host(&c, m, &claim(), None).await.unwrap() }
    }))
    .await;
    let won: Vec<String> = results.iter().flatten().cloned().collect();
    assert_eq!(won.len(), 3, "three hosts, three winners: {results:?}");
    assert_eq!(
        won.iter().collect::<BTreeSet<_>>().len(),
        3,
        "no host claimed twice: {won:?}"
    );
    let all = hosts.list(&Default::default()).await.unwrap().items;
    let consumers: Vec<String> = all
        .iter()
        .filter_map(|h| h.spec.consumer_ref.as_ref())
        .filter_map(|c| c.name.clone())
        .collect();
    assert_eq!(consumers.len(), 4, "h0..h3 consumed once each: {consumers:?}");
    assert_eq!(consumers.iter().collect::<BTreeSet<_>>().len(), 4);

    // Releasing the winner's host frees it (after the host controller deprovisions it, it becomes claimable again).
    assert_eq!(
        release_host(&client, winner, None).await.unwrap().as_deref(),
        Some("h0")
    );
    let h0 = hosts.get("h0").await.unwrap();
    assert!(h0.spec.consumer_ref.is_none() && h0.spec.user_data.is_none() && !h0.spec.online);
    let waiting = ms.iter().zip(&results).find(|(_, r)| r.is_none()).unwrap().0;
    assert_eq!(
        claim_host(&client, waiting, &claim(), None).await.unwrap().as_deref(),
        Some("h0")
    );
    assert_eq!(
        hosts.get("h0").await.unwrap().spec.consumer_ref.unwrap().name,
        Some(waiting.name_any())
    );
    drop(server);
}
