//! The KilnCluster controller (Cluster API InfraCluster contract) and the KilnRemediation controller (external
//! remediation for MachineHealthChecks).
//!
//! - KilnCluster: there is no cloud infrastructure to create for bare metal, so a KilnCluster with a control-plane
//!   endpoint is provisioned at once: `status.ready`, `status.initialization.provisioned` and the failure domains
//!   from the spec. Paused objects are left alone.
//! - KilnRemediation (named like the unhealthy Machine, as MachineHealthCheck creates it): power-cycles the Machine's
//!   host through the engine up to `spec.strategy.retryLimit` times, `timeoutSeconds` apart; after that marks the
//!   Machine for deletion (annotation `cluster.x-k8s.io/delete-machine`) and sets phase `Deleting`.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::capi::{
    Initialization, KilnCluster, KilnClusterStatus, KilnMachine, KilnRemediation, cluster_of, is_paused,
};
use crate::engine::{Engine, EngineError, HostKey};
use crate::machine_controller::machine_resource;

/// Annotation that makes CAPI prefer a Machine when scaling down / delete it.
pub const DELETE_MACHINE_ANNOTATION: &str = "cluster.x-k8s.io/delete-machine";

/// Errors of one reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API call failed")]
    Kube(#[from] kube::Error),
    #[error("engine call failed")]
    Engine(#[from] EngineError),
}

/// The status a KilnCluster should have (pure).
pub fn cluster_status(c: &KilnCluster) -> KilnClusterStatus {
    let ready = !c.spec.control_plane_endpoint.host.is_empty();
    KilnClusterStatus {
        ready,
        initialization: Some(Initialization { provisioned: ready }),
        failure_domains: c.spec.failure_domains.clone(),
        conditions: c.status.as_ref().map(|s| s.conditions.clone()).unwrap_or_default(),
    }
}

/// Runs the KilnCluster controller until `shutdown` completes.
pub async fn run_clusters(client: Client, shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static) {
    let api: Api<KilnCluster> = Api::all(client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile_cluster,
            |_, _, _| Action::requeue(Duration::from_secs(10)),
            Arc::new(client),
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile_cluster(c: Arc<KilnCluster>, client: Arc<Client>) -> Result<Action, Error> {
    if c.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if is_paused(&*c, cluster_of(&client, &*c).await?.as_ref()) {
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    let status = cluster_status(&c);
    if c.status.as_ref() != Some(&status) {
        let api: Api<KilnCluster> = Api::namespaced((*client).clone(), &c.namespace().unwrap_or_default());
        api.patch_status(
            &c.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await?;
    }
    Ok(Action::await_change())
}

struct RemCtx<E> {
    client: Client,
    engine: Arc<E>,
}

/// Runs the KilnRemediation controller until `shutdown` completes.
pub async fn run_remediations<E: Engine>(
    client: Client,
    engine: Arc<E>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let api: Api<KilnRemediation> = Api::all(client.clone());
    Controller::new(api, watcher::Config::default())
        .graceful_shutdown_on(shutdown)
        .run(
            reconcile_remediation,
            |_, _, _| Action::requeue(Duration::from_secs(5)),
            Arc::new(RemCtx { client, engine }),
        )
        .for_each(|_| async {})
        .await;
}

async fn reconcile_remediation<E: Engine>(r: Arc<KilnRemediation>, ctx: Arc<RemCtx<E>>) -> Result<Action, Error> {
    if r.metadata.deletion_timestamp.is_some() {
        return Ok(Action::await_change());
    }
    if is_paused(&*r, cluster_of(&ctx.client, &*r).await?.as_ref()) {
        // Never reboot a host of a paused Cluster (`clusterctl move` pauses it): look again later.
        return Ok(Action::requeue(Duration::from_secs(10)));
    }
    let ns = r.namespace().unwrap_or_default();
    let api: Api<KilnRemediation> = Api::namespaced(ctx.client.clone(), &ns);
    let machines: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, &machine_resource());
    let Some(machine) = machines.get_opt(&r.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let mut status = r.status.clone().unwrap_or_default();
    let limit = r.spec.strategy.retry_limit.max(0);
    let timeout = Duration::from_secs(r.spec.strategy.timeout_seconds.unwrap_or(300).max(1) as u64);

    let now = k8s_openapi::jiff::Timestamp::now();
    if let Some(last) = &status.last_remediated {
        let elapsed = now.duration_since(last.0).unsigned_abs();
        if elapsed < timeout {
            // give the last reboot its time before rebooting again or giving up
            return Ok(Action::requeue(timeout - elapsed));
        }
    }
    if status.retry_count >= limit {
        if status.phase.as_deref() != Some("Deleting") {
            machines
                .patch(
                    &machine.name_any(),
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": {DELETE_MACHINE_ANNOTATION: "yes"}}})),
                )
                .await?;
            status.phase = Some("Deleting".into());
            write_remediation(&api, &r, &status).await?;
        }
        return Ok(Action::await_change());
    }
    // The host: Machine.spec.infrastructureRef → KilnMachine.status.hostRef.
    let Some(km_name) = machine.data["spec"]["infrastructureRef"]["name"].as_str() else {
        return Ok(Action::requeue(timeout));
    };
    let kms: Api<KilnMachine> = Api::namespaced(ctx.client.clone(), &ns);
    let host = kms
        .get_opt(km_name)
        .await?
        .and_then(|k| k.status)
        .and_then(|s| s.host_ref);
    let Some(host) = host else {
        return Ok(Action::requeue(timeout));
    };
    ctx.engine
        .reboot_host(&HostKey {
            namespace: ns.clone(),
            name: host.name,
        })
        .await?;
    status.retry_count += 1;
    status.last_remediated = Some(Time(now));
    status.phase = Some("Running".into());
    write_remediation(&api, &r, &status).await?;
    Ok(Action::requeue(timeout))
}

async fn write_remediation(
    api: &Api<KilnRemediation>,
    r: &KilnRemediation,
    status: &crate::capi::KilnRemediationStatus,
) -> Result<(), kube::Error> {
    api.patch_status(
        &r.name_any(),
        &PatchParams::default(),
        &Patch::Merge(json!({ "status": status })),
    )
    .await?;
    Ok(())
}
