//! The IPAM provider's side of Cluster API's IPAM contract, played by the tests for one pool.
//!
//! The real in-cluster IPAM provider cannot be built here: the Go module proxy refuses
//! `sigs.k8s.io/cluster-api-ipam-provider-in-cluster` (and Metal3's `ip-address-manager`). This does what such a
//! provider does for each `IPAddressClaim` of its pool: creates an `IPAddress` named after the claim with the pool's
//! next free address, prefix and gateway, and binds it in the claim's `status.addressRef`.

use std::net::Ipv4Addr;
use std::time::Duration;

use kiln_kube::data::{ip_address_claim_resource, ip_address_resource};
use kube::api::{Api, DynamicObject, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;

/// One pool: claims whose `spec.poolRef.name` is `name` get addresses from `first` upwards.
#[derive(Clone, Debug)]
pub struct Pool {
    pub namespace: String,
    pub name: String,
    pub first: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
}

/// The provider, running until [`Provider::stop`].
pub struct Provider {
    stop: tokio::sync::watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Provider {
    pub fn start(client: Client, pool: Pool) -> Self {
        let (stop, rx) = tokio::sync::watch::channel(false);
        let task = tokio::spawn(serve(client, pool, rx));
        Self { stop, task }
    }

    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn serve(client: Client, pool: Pool, stop: tokio::sync::watch::Receiver<bool>) {
    let claims: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), &pool.namespace, &ip_address_claim_resource());
    let addresses: Api<DynamicObject> = Api::namespaced_with(client, &pool.namespace, &ip_address_resource());
    let mut next = u32::from(pool.first);
    while !*stop.borrow() {
        for c in claims
            .list(&Default::default())
            .await
            .map(|l| l.items)
            .unwrap_or_default()
        {
            if c.data["spec"]["poolRef"]["name"] != pool.name.as_str()
                || c.data["status"]["addressRef"]["name"].is_string()
            {
                continue;
            }
            let name = c.name_any();
            let mut a = DynamicObject::new(&name, &ip_address_resource()).within(&pool.namespace);
            a.data = json!({"spec": {
                "claimRef": {"name": name},
                "poolRef": c.data["spec"]["poolRef"],
                "address": Ipv4Addr::from(next).to_string(),
                "prefix": pool.prefix,
                "gateway": pool.gateway.to_string(),
            }});
            if addresses.create(&PostParams::default(), &a).await.is_ok() {
                next += 1;
            }
            let status = json!({"status": {"addressRef": {"name": name}}});
            let _ = claims
                .patch_status(&name, &PatchParams::default(), &Patch::Merge(status))
                .await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The address bound to a claim, read back from its `IPAddress`.
pub async fn claimed_address(client: &Client, namespace: &str, claim: &str) -> Option<String> {
    let claims: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ip_address_claim_resource());
    let addresses: Api<DynamicObject> = Api::namespaced_with(client.clone(), namespace, &ip_address_resource());
    let c = claims.get_opt(claim).await.ok()??;
    let a = addresses
        .get_opt(c.data["status"]["addressRef"]["name"].as_str()?)
        .await
        .ok()??;
    a.data["spec"]["address"].as_str().map(str::to_owned)
}
