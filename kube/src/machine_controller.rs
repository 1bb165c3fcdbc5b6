//! The KilnMachine controller (Cluster API InfraMachine contract): waits for the owning Machine's bootstrap data
//! Secret, claims a matching available BareMetalHost ([`crate::claim`]) and points it at the image and the bootstrap
//! data; once the host is provisioned it sets `spec.providerID` (`kiln://<namespace>/<host>`), the addresses found by
//! inspection, and `status.ready` / `status.initialization.provisioned`. Deleting the KilnMachine releases the host
//! (the BareMetalHost controller then deprovisions it back to `available`) before the finalizer is removed.
//! Objects carrying `cluster.x-k8s.io/paused` are left alone.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use kube::api::{Api, ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::bmh::{BareMetalHost, Image, ProvisioningState};
use crate::capi::{
    HostRef, Initialization, KilnMachine, KilnMachineStatus, MACHINE_FINALIZER, MachineAddress, PAUSED_ANNOTATION,
};
use crate::claim::{Claim, claim_host, release_host};

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed")]
    Kube(#[from] kube::Error),
}

/// Timing knobs (tests shorten them).
#[derive(Clone, Debug)]
pub struct Config {
    /// Requeue while waiting for bootstrap data, a free host, or provisioning.
    pub wait_requeue: Duration,
    /// Requeue of ready machines.
    pub idle_requeue: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            wait_requeue: Duration::from_secs(10),
            idle_requeue: Duration::from_secs(300),
        }
    }
}

struct Ctx {
    client: Client,
    config: Config,
}

/// The CAPI `Machine` kind the owner references point at (v1beta2, as served by Cluster API v1.14).
pub fn machine_resource() -> ApiResource {
    ApiResource::from_gvk_with_plural(
        &GroupVersionKind::gvk("cluster.x-k8s.io", "v1beta2", "Machine"),
        "machines",
    )
}

/// Runs the controller over all namespaces until `shutdown` completes.
pub async fn run(
    client: Client,
    config: Config,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let machines: Api<KilnMachine> = Api::all(client.clone());
    let hosts: Api<BareMetalHost> = Api::all(client.clone());
    let ctx = Arc::new(Ctx { client, config });
    Controller::new(machines, watcher::Config::default())
        .watches(hosts, watcher::Config::default(), |h: BareMetalHost| {
            let c = h.spec.consumer_ref?;
            if c.kind.as_deref() != Some("KilnMachine") {
                return None;
            }
            Some(ObjectRef::new(c.name.as_deref()?).within(c.namespace.as_deref()?))
        })
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile,
            |_, _, ctx: Arc<Ctx>| Action::requeue(ctx.config.wait_requeue),
            ctx,
        )
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "kilnmachine reconcile");
            }
        })
        .await;
}

async fn reconcile(m: Arc<KilnMachine>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    if m.annotations().contains_key(PAUSED_ANNOTATION) {
        return Ok(Action::await_change());
    }
    let ns = m.namespace().unwrap_or_else(|| "default".into());
    let api: Api<KilnMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let has_finalizer = m.finalizers().iter().any(|f| f == MACHINE_FINALIZER);
    if m.metadata.deletion_timestamp.is_some() {
        if has_finalizer {
            release_host(&ctx.client, &m).await?;
            let f: Vec<&String> = m.finalizers().iter().filter(|f| *f != MACHINE_FINALIZER).collect();
            let patch = json!({"metadata": {"finalizers": f, "resourceVersion": m.resource_version()}});
            api.patch(&m.name_any(), &PatchParams::default(), &Patch::Merge(patch))
                .await?;
        }
        return Ok(Action::await_change());
    }
    if !has_finalizer {
        let mut f = m.finalizers().to_vec();
        f.push(MACHINE_FINALIZER.into());
        let patch = json!({"metadata": {"finalizers": f, "resourceVersion": m.resource_version()}});
        api.patch(&m.name_any(), &PatchParams::default(), &Patch::Merge(patch))
            .await?;
        return Ok(Action::await_change());
    }
    let wait = Action::requeue(ctx.config.wait_requeue);

    // The owning Machine and its bootstrap data Secret.
    let Some(owner) = m.owner_references().iter().find(|o| o.kind == "Machine") else {
        return Ok(wait);
    };
    let machines: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &machine_resource());
    let Some(machine) = machines.get_opt(&owner.name).await? else {
        return Ok(wait);
    };
    let Some(data_secret) = machine.data["spec"]["bootstrap"]["dataSecretName"]
        .as_str()
        .map(str::to_owned)
    else {
        return Ok(wait);
    };

    let claim = Claim {
        image: m.spec.image.as_ref().map(|i| Image {
            url: i.url.clone(),
            checksum: i.checksum.clone(),
            checksum_type: i.checksum_type,
            disk_format: i.disk_format,
            oci_auth_secret_name: None,
        }),
        user_data_secret: Some(data_secret),
        network_data_secret: m.spec.network_data_name.clone(),
    };
    let Some(host_name) = claim_host(&ctx.client, &m, &claim).await? else {
        return Ok(wait);
    };
    let hosts: Api<BareMetalHost> = Api::namespaced(ctx.client.clone(), &ns);
    let host = hosts.get(&host_name).await?;
    let provisioned = host.state() == ProvisioningState::Provisioned;
    let status = KilnMachineStatus {
        ready: provisioned,
        initialization: Some(Initialization { provisioned }),
        host_ref: Some(HostRef {
            name: host_name.clone(),
        }),
        addresses: if provisioned { addresses(&host) } else { Vec::new() },
        ..m.status.clone().unwrap_or_default()
    };
    if provisioned && m.spec.provider_id.is_none() {
        let id = crate::capi::provider_id(&ns, &host_name);
        api.patch(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"providerID": id}})),
        )
        .await?;
    }
    if m.status.as_ref() != Some(&status) {
        api.patch_status(
            &m.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    }
    Ok(if provisioned {
        Action::requeue(ctx.config.idle_requeue)
    } else {
        wait
    })
}

/// Machine addresses from the host's inspection data (pure): its hostname and NIC addresses.
pub fn addresses(host: &BareMetalHost) -> Vec<MachineAddress> {
    let Some(hw) = host.status.as_ref().and_then(|s| s.hardware.as_ref()) else {
        return Vec::new();
    };
    let mut out: Vec<MachineAddress> = hw
        .hostname
        .iter()
        .map(|h| MachineAddress {
            type_: "Hostname".into(),
            address: h.clone(),
        })
        .collect();
    out.extend(hw.nics.iter().filter_map(|n| n.ip.clone()).map(|ip| MachineAddress {
        type_: "InternalIP".into(),
        address: ip,
    }));
    out
}
