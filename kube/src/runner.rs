//! `kiln serve --kube`: runs the Kubernetes controllers (BareMetalHost, KilnMachine, KilnCluster, KilnRemediation)
//! beside the appliance, on kiln's own store-backed engine, while this replica holds the leader Lease.
//!
//! Leader election uses a `coordination.k8s.io/v1` Lease through kube-lease-manager. The controllers start when the
//! Lease is won and stop when `kiln serve` shuts down (the Lease is then released, so a standby takes over at once).
//! Losing the Lease while running is fail-stop: the controllers are stopped and [`run`] returns
//! [`RunError::LostLease`], which ends `kiln serve` so its supervisor restarts it as a standby, as controller-runtime's
//! managers do.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use kube::Client;
use kube_lease_manager::LeaseManagerBuilder;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use super::{cluster_controller, host_controller, machine_controller};
use crate::engine::Engine;

/// How long stopping waits for running reconciles, and then for the Lease release.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(8);

/// The `[kube]` section of kiln's config.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(default, deny_unknown_fields)]
pub struct KubeSettings {
    /// Kubeconfig file; default `$KUBECONFIG`, `~/.kube/config`, or the in-cluster service account.
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the leader Lease; default `$POD_NAMESPACE`, else `kiln-system`.
    pub lease_namespace: Option<String>,
    pub lease_name: String,
    /// This replica's identity in the Lease; default `$POD_NAME`, else `<hostname>-<pid>`.
    pub identity: Option<String>,
    pub lease_duration_secs: u64,
    /// Requeue interval while a host or machine is busy (tests shorten it).
    pub busy_requeue_secs: u64,
}

impl Default for KubeSettings {
    fn default() -> Self {
        Self {
            kubeconfig: None,
            lease_namespace: None,
            lease_name: "kiln-controller".into(),
            identity: None,
            lease_duration_secs: 15,
            busy_requeue_secs: 5,
        }
    }
}

impl KubeSettings {
    fn namespace(&self) -> String {
        self.lease_namespace
            .clone()
            .or_else(|| std::env::var("POD_NAMESPACE").ok())
            .unwrap_or_else(|| "kiln-system".into())
    }

    fn identity(&self) -> String {
        self.identity
            .clone()
            .or_else(|| std::env::var("POD_NAME").ok())
            .unwrap_or_else(|| {
                let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
                format!("{}-{}", host.trim(), std::process::id())
            })
    }
}

/// Errors of the Kubernetes front-end.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("cannot read kubeconfig {path}")]
    Kubeconfig {
        path: String,
        #[source]
        source: kube::config::KubeconfigError,
    },
    #[error("cannot build a Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("cannot find a Kubernetes configuration (kubeconfig or in-cluster)")]
    Infer(#[source] kube::config::InferConfigError),
    #[error("leader election failed")]
    Lease(#[source] kube_lease_manager::LeaseManagerError),
    #[error("lost the leader Lease {0}; stopping so that another replica takes over")]
    LostLease(String),
}

/// A client for the configured cluster.
///
/// # Errors
/// [`RunError`] when no configuration is found or it is unusable.
pub async fn client(settings: &KubeSettings) -> Result<Client, RunError> {
    let config = match &settings.kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| RunError::Kubeconfig {
                path: path.display().to_string(),
                source,
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| RunError::Kubeconfig {
                    path: path.display().to_string(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(RunError::Infer)?,
    };
    Client::try_from(config).map_err(RunError::Client)
}

/// Waits for the leader Lease, then runs every controller until `cancel` fires (returns `Ok`) or the Lease is lost.
///
/// # Errors
/// [`RunError::LostLease`] after losing leadership; [`RunError::Lease`] when the Lease cannot be used at all.
pub async fn run<E: Engine>(
    client: Client,
    engine: Arc<E>,
    settings: KubeSettings,
    cancel: CancellationToken,
) -> Result<(), RunError> {
    let lease = format!("{}/{}", settings.namespace(), settings.lease_name);
    let identity = settings.identity();
    let manager = LeaseManagerBuilder::new(client.clone(), &settings.lease_name)
        .with_namespace(settings.namespace())
        .with_identity(&identity)
        .with_duration(settings.lease_duration_secs)
        .with_grace(settings.lease_duration_secs.div_ceil(3).max(1))
        .with_field_manager("kiln")
        .build()
        .await
        .map_err(RunError::Lease)?;
    let (mut leader, task) = manager.watch().await;
    tracing::info!(%lease, %identity, "waiting for the leader lease");
    loop {
        if *leader.borrow_and_update() {
            break;
        }
        tokio::select! {
            _ = cancel.cancelled() => {
                drop(leader);
                let _ = task.await;
                return Ok(());
            }
            changed = leader.changed() => {
                if changed.is_err() {
                    return Err(lease_task_error(task).await);
                }
            }
        }
    }
    tracing::info!(%lease, %identity, "leader: starting the Kubernetes controllers");
    let stop = CancellationToken::new();
    let busy = Duration::from_secs(settings.busy_requeue_secs.max(1));
    let mut controllers = tokio::task::JoinSet::new();
    controllers.spawn(host_controller::run(
        client.clone(),
        engine.clone(),
        host_controller::Config {
            busy_requeue: busy,
            ..host_controller::Config::default()
        },
        stop.clone().cancelled_owned(),
    ));
    controllers.spawn(machine_controller::run(
        client.clone(),
        machine_controller::Config {
            wait_requeue: busy,
            ..machine_controller::Config::default()
        },
        stop.clone().cancelled_owned(),
    ));
    controllers.spawn(cluster_controller::run_clusters(
        client.clone(),
        stop.clone().cancelled_owned(),
    ));
    controllers.spawn(cluster_controller::run_remediations(
        client,
        engine,
        stop.clone().cancelled_owned(),
    ));
    let outcome = loop {
        tokio::select! {
            _ = cancel.cancelled() => break Ok(()),
            changed = leader.changed() => {
                if changed.is_err() || !*leader.borrow_and_update() {
                    tracing::error!(%lease, %identity, "lost the leader lease");
                    break Err(RunError::LostLease(lease.clone()));
                }
            }
        }
    };
    stop.cancel();
    // Running reconciles get a grace period to finish (they are idempotent, so cutting one short is safe), as
    // controller-runtime's managers do.
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while controllers.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "controllers still busy after the grace period; stopping them");
        controllers.shutdown().await;
    }
    drop(leader); // releases the Lease so a standby takes over without waiting for it to expire
    if tokio::time::timeout(SHUTDOWN_GRACE, task).await.is_err() {
        tracing::warn!(%lease, "could not release the lease in time; it expires on its own");
    }
    tracing::info!(%lease, "Kubernetes controllers stopped");
    outcome
}

async fn lease_task_error(
    task: tokio::task::JoinHandle<Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>>,
) -> RunError {
    match task.await {
        Ok(Err(e)) => RunError::Lease(e),
        _ => RunError::LostLease("the lease manager stopped".into()),
    }
}
