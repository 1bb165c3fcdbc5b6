//! Claiming a BareMetalHost for a KilnMachine: pick an `available`, unconsumed host matching the machine's
//! `hostSelector` (failure domain preferred), and take it with an update guarded by the host's `resourceVersion`, so
//! that two machines racing for one host cannot both win: the API server rejects the second write with 409 Conflict
//! and the loser re-reads and picks another host or waits.
//!
//! A claim is recorded only on the host (`spec.consumerRef`), so it survives a restart of kiln: a machine asking again
//! gets back the host it already holds ([`choose_host`] prefers it), and no host is claimed twice.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, SecretReference};
use kube::api::{Api, ListParams, PostParams};
use kube::{Client, Resource, ResourceExt};

use crate::bmh::{BareMetalHost, Image, ProvisioningState};
use crate::capi::{HostSelector, KilnMachine};
use crate::data::NetworkPlan;

/// Label that puts a host into a failure domain: CAPM3's, so that a Metal3 inventory's labels keep working.
pub const FAILURE_DOMAIN_LABEL: &str = "infrastructure.cluster.x-k8s.io/failure-domain";
/// CAPM3's label on a host released by a machine whose template has `nodeReuse`: its value is the machine's pool
/// (MachineDeployment or control plane name), whose next machine takes the host back first.
pub const NODE_REUSE_LABEL: &str = "infrastructure.cluster.x-k8s.io/node-reuse";
/// Annotation Cluster API puts on an object cloned from a template, naming the template.
const CLONED_FROM_NAME: &str = "cluster.x-k8s.io/cloned-from-name";

/// kiln's earlier label, still honoured where the host has no CAPM3 label.
pub const LEGACY_FAILURE_DOMAIN_LABEL: &str = "kiln.dev/failure-domain";

/// The failure domain a host is in: CAPM3's label, else kiln's earlier one.
pub fn failure_domain_of(host: &BareMetalHost) -> Option<&str> {
    let labels = host.metadata.labels.as_ref()?;
    labels
        .get(FAILURE_DOMAIN_LABEL)
        .or_else(|| labels.get(LEGACY_FAILURE_DOMAIN_LABEL))
        .map(String::as_str)
}

/// Whether `labels` satisfy the selector (Kubernetes LabelSelector semantics; an empty selector matches all).
pub fn selector_matches(sel: &HostSelector, labels: &BTreeMap<String, String>) -> bool {
    sel.match_labels.iter().all(|(k, v)| labels.get(k) == Some(v))
        && sel.match_expressions.iter().all(|e| {
            let values = e.values.as_deref().unwrap_or_default();
            let got = labels.get(&e.key);
            match e.operator.as_str() {
                "In" => got.is_some_and(|g| values.contains(g)),
                "NotIn" => got.is_none_or(|g| !values.contains(g)),
                "Exists" => got.is_some(),
                "DoesNotExist" => got.is_none(),
                _ => false, // unknown operators match nothing, as in Kubernetes
            }
        })
}

/// Whether `host` is consumed by `consumer` (same kind, namespace and name).
pub fn consumed_by(host: &BareMetalHost, consumer: &ObjectReference) -> bool {
    host.spec
        .consumer_ref
        .as_ref()
        .is_some_and(|c| c.kind == consumer.kind && c.name == consumer.name && c.namespace == consumer.namespace)
}

/// The host to claim (pure): the one `consumer` already holds, else an available, unconsumed, not deleted, not paused
/// host matching `selector`, preferring `failure_domain`, then by name. With a node-reuse `pool`, hosts kept for the
/// pool ([`NODE_REUSE_LABEL`]) come first: while one exists that is not available yet (being deprovisioned), the
/// machine waits for it rather than take another host.
pub fn choose_host<'a>(
    hosts: &'a [BareMetalHost],
    selector: &HostSelector,
    failure_domain: Option<&str>,
    consumer: &ObjectReference,
    pool: Option<&str>,
) -> Option<&'a BareMetalHost> {
    if let Some(mine) = hosts.iter().find(|h| consumed_by(h, consumer)) {
        return Some(mine);
    }
    let kept: Vec<&BareMetalHost> = hosts
        .iter()
        .filter(|h| {
            pool.is_some()
                && h.spec.consumer_ref.is_none()
                && h.metadata.deletion_timestamp.is_none()
                && h.labels().get(NODE_REUSE_LABEL).map(String::as_str) == pool
        })
        .collect();
    if !kept.is_empty() {
        return best_free(kept, selector, failure_domain);
    }
    best_free(hosts.iter().collect(), selector, failure_domain)
}

/// The best of `hosts` that is free to claim: available, unconsumed, not deleted, paused or detached, matching
/// `selector`; in `failure_domain` first, then by name.
fn best_free<'a>(
    hosts: Vec<&'a BareMetalHost>,
    selector: &HostSelector,
    failure_domain: Option<&str>,
) -> Option<&'a BareMetalHost> {
    let mut free: Vec<&BareMetalHost> = hosts
        .into_iter()
        .filter(|h| {
            h.spec.consumer_ref.is_none()
                && h.metadata.deletion_timestamp.is_none()
                && !h.is_paused()
                && !h.is_detached()
                && matches!(h.state(), ProvisioningState::Available | ProvisioningState::Ready)
                && selector_matches(selector, h.metadata.labels.as_ref().unwrap_or(&BTreeMap::new()))
        })
        .collect();
    free.sort_by_key(|h| {
        let in_fd = failure_domain.is_some_and(|fd| failure_domain_of(h) == Some(fd));
        (!in_fd, h.name_any())
    });
    free.first().copied()
}

/// The node-reuse pool of a machine (see [`NODE_REUSE_LABEL`]): its MachineDeployment's or control plane's name, when
/// the KilnMachineTemplate it was cloned from has `nodeReuse`; `None` otherwise.
///
/// # Errors
/// A failed read of the template.
pub async fn reuse_pool(client: &Client, machine: &KilnMachine) -> Result<Option<String>, kube::Error> {
    let labels = machine.labels();
    let Some(pool) = labels
        .get("cluster.x-k8s.io/deployment-name")
        .or_else(|| labels.get("cluster.x-k8s.io/control-plane-name"))
        .filter(|p| p.len() <= 63)
    else {
        return Ok(None);
    };
    let Some(template) = machine.annotations().get(CLONED_FROM_NAME) else {
        return Ok(None);
    };
    let ns = machine.namespace().unwrap_or_else(|| "default".into());
    let templates: Api<crate::capi::KilnMachineTemplate> = Api::namespaced(client.clone(), &ns);
    Ok(templates
        .get_opt(template)
        .await?
        .filter(|t| t.spec.node_reuse)
        .map(|_| pool.clone()))
}

/// What a claim writes into the host.
#[derive(Clone, Debug, Default)]
pub struct Claim {
    pub image: Option<Image>,
    /// The bootstrap data Secret (same namespace), written to the config drive as user data.
    pub user_data_secret: Option<String>,
    pub network_data_secret: Option<String>,
    /// Network data to render for the claimed host (its KilnDataTemplate with the machine's addresses): written as
    /// the machine's network data Secret just before the host is claimed, and only hosts it can be rendered for
    /// (their inspection found every NIC it names) are claimed.
    pub network_data: Option<NetworkPlan>,
}

/// The `consumerRef` for a KilnMachine.
pub fn consumer_ref(machine: &KilnMachine) -> ObjectReference {
    ObjectReference {
        api_version: Some(KilnMachine::api_version(&()).into_owned()),
        kind: Some(KilnMachine::kind(&()).into_owned()),
        name: machine.metadata.name.clone(),
        namespace: machine.metadata.namespace.clone(),
        uid: machine.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Claims a host for `machine`; `Ok(None)` when no host is free (the caller waits and retries).
/// Retries on 409 Conflict (another claimer won the host it chose) with a fresh list.
pub async fn claim_host(
    client: &Client,
    machine: &KilnMachine,
    claim: &Claim,
    pool: Option<&str>,
) -> Result<Option<String>, kube::Error> {
    let ns = machine.namespace().unwrap_or_else(|| "default".into());
    let api: Api<BareMetalHost> = Api::namespaced(client.clone(), &ns);
    let consumer = consumer_ref(machine);
    for _ in 0..10 {
        let mut hosts = api.list(&ListParams::default()).await?.items;
        if let Some(plan) = &claim.network_data {
            hosts.retain(|h| consumed_by(h, &consumer) || plan.render(h).is_ok());
        }
        let Some(host) = choose_host(
            &hosts,
            &machine.spec.host_selector,
            machine.spec.failure_domain.as_deref(),
            &consumer,
            pool,
        ) else {
            return Ok(None);
        };
        if consumed_by(host, &consumer) {
            return Ok(Some(host.name_any()));
        }
        let mut taken = host.clone(); // carries metadata.resourceVersion: the update is conditional on it
        if let Some(l) = taken.metadata.labels.as_mut() {
            l.remove(NODE_REUSE_LABEL); // taken back by its pool, or by anyone once no machine of the pool waits
        }
        taken.spec.consumer_ref = Some(consumer.clone());
        taken.spec.online = true;
        if let Some(image) = &claim.image {
            taken.spec.image = Some(image.clone());
        }
        let secret = |name: &String| SecretReference {
            name: Some(name.clone()),
            namespace: Some(ns.clone()),
        };
        if let Some(s) = &claim.user_data_secret {
            taken.spec.user_data = Some(secret(s));
        }
        if let Some(s) = &claim.network_data_secret {
            taken.spec.network_data = Some(secret(s));
        }
        if let Some(plan) = &claim.network_data {
            // Rendered for this host and written before the host names it: a lost race renders for the next one.
            let data = plan.render(host).expect("hosts it cannot render for were left out");
            let name = crate::data::write_network_data(client, machine, &data).await?;
            taken.spec.network_data = Some(secret(&name));
        }
        match api.replace(&host.name_any(), &PostParams::default(), &taken).await {
            Ok(h) => return Ok(Some(h.name_any())),
            Err(kube::Error::Api(e)) if e.code == 409 => continue, // lost the race for this host: look again
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

/// Releases the host `machine` holds: clears consumerRef, image and data, powers it off (the host controller then
/// deprovisions it back to `available`), and keeps it for the machine's node-reuse `pool` if it has one. Guarded by
/// resourceVersion like the claim; retried on conflict.
pub async fn release_host(
    client: &Client,
    machine: &KilnMachine,
    pool: Option<&str>,
) -> Result<Option<String>, kube::Error> {
    let ns = machine.namespace().unwrap_or_else(|| "default".into());
    let api: Api<BareMetalHost> = Api::namespaced(client.clone(), &ns);
    let consumer = consumer_ref(machine);
    for _ in 0..10 {
        let hosts = api.list(&ListParams::default()).await?.items;
        let Some(host) = hosts.iter().find(|h| consumed_by(h, &consumer)) else {
            return Ok(None);
        };
        let mut freed = host.clone();
        freed.spec.consumer_ref = None;
        freed.spec.image = None;
        freed.spec.user_data = None;
        freed.spec.network_data = None;
        freed.spec.online = false;
        if let Some(p) = pool {
            freed
                .metadata
                .labels
                .get_or_insert_default()
                .insert(NODE_REUSE_LABEL.into(), p.into());
        }
        match api.replace(&host.name_any(), &PostParams::default(), &freed).await {
            Ok(h) => return Ok(Some(h.name_any())),
            Err(kube::Error::Api(e)) if e.code == 409 => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;

    fn labels(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn expr(key: &str, op: &str, values: &[&str]) -> LabelSelectorRequirement {
        LabelSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        }
    }

    #[test]
    fn selector_semantics() {
        let l = labels(&[("role", "worker"), ("rack", "3")]);
        assert!(selector_matches(&HostSelector::default(), &l));
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| HostSelector {
            match_labels: labels(ml),
            match_expressions: me,
        };
        assert!(selector_matches(&sel(&[("role", "worker")], vec![]), &l));
        assert!(!selector_matches(&sel(&[("role", "cp")], vec![]), &l));
        assert!(selector_matches(&sel(&[], vec![expr("rack", "In", &["2", "3"])]), &l));
        assert!(!selector_matches(&sel(&[], vec![expr("rack", "NotIn", &["3"])]), &l));
        assert!(selector_matches(&sel(&[], vec![expr("gpu", "NotIn", &["yes"])]), &l));
        assert!(selector_matches(&sel(&[], vec![expr("rack", "Exists", &[])]), &l));
        assert!(!selector_matches(
            &sel(&[], vec![expr("rack", "DoesNotExist", &[])]),
            &l
        ));
        assert!(!selector_matches(&sel(&[], vec![expr("rack", "Bogus", &["3"])]), &l));
    }

    fn host(name: &str, state: ProvisioningState, l: &[(&str, &str)], consumer: Option<&str>) -> BareMetalHost {
        let mut h = BareMetalHost::new(name, Default::default());
        h.metadata.namespace = Some("ns".into());
        h.metadata.labels = Some(labels(l));
        h.status = Some(crate::bmh::BareMetalHostStatus {
            provisioning: crate::bmh::ProvisionStatus {
                state,
                ..Default::default()
            },
            ..Default::default()
        });
        h.spec.consumer_ref = consumer.map(|c| ObjectReference {
            kind: Some("KilnMachine".into()),
            name: Some(c.into()),
            namespace: Some("ns".into()),
            ..Default::default()
        });
        h
    }

    #[test]
    fn choice_prefers_own_then_failure_domain_and_never_takes_consumed_hosts() {
        use ProvisioningState as P;
        let me = ObjectReference {
            kind: Some("KilnMachine".into()),
            name: Some("m1".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        };
        let sel = HostSelector {
            match_labels: labels(&[("role", "worker")]),
            ..Default::default()
        };
        let hosts = vec![
            host("a", P::Available, &[("role", "worker")], Some("other")),
            host("b", P::Inspecting, &[("role", "worker")], None),
            host("c", P::Available, &[("role", "cp")], None),
            host("d", P::Available, &[("role", "worker")], None),
            host(
                "e",
                P::Available,
                &[("role", "worker"), (FAILURE_DOMAIN_LABEL, "fd2")],
                None,
            ),
        ];
        assert_eq!(choose_host(&hosts, &sel, None, &me, None).unwrap().name_any(), "d");
        assert_eq!(
            choose_host(&hosts, &sel, Some("fd2"), &me, None).unwrap().name_any(),
            "e"
        );
        assert_eq!(
            choose_host(&hosts, &sel, Some("fd9"), &me, None).unwrap().name_any(),
            "d"
        );
        assert_eq!(
            FAILURE_DOMAIN_LABEL, "infrastructure.cluster.x-k8s.io/failure-domain",
            "CAPM3's label"
        );
        // kiln's earlier label still counts where the CAPM3 one is absent.
        let mut legacy = hosts.clone();
        legacy.push(host(
            "f",
            P::Available,
            &[("role", "worker"), (LEGACY_FAILURE_DOMAIN_LABEL, "fd3")],
            None,
        ));
        assert_eq!(
            choose_host(&legacy, &sel, Some("fd3"), &me, None).unwrap().name_any(),
            "f"
        );
        let mut mine = hosts.clone();
        mine.push(host("z", P::Provisioned, &[("role", "worker")], Some("m1")));
        assert_eq!(choose_host(&mine, &sel, None, &me, None).unwrap().name_any(), "z");
        assert!(choose_host(&hosts[..3], &sel, None, &me, None).is_none());
    }

    #[test]
    fn a_pool_takes_back_its_kept_host_first_and_waits_for_it() {
        use ProvisioningState as P;
        let me = ObjectReference {
            kind: Some("KilnMachine".into()),
            name: Some("m2".into()),
            namespace: Some("ns".into()),
            ..Default::default()
        };
        let sel = HostSelector::default();
        let mut hosts = vec![
            host("a", P::Available, &[], None),
            host("k", P::Available, &[(NODE_REUSE_LABEL, "md-0")], None),
        ];
        assert_eq!(
            choose_host(&hosts, &sel, None, &me, Some("md-0")).unwrap().name_any(),
            "k"
        );
        // Another pool, or no node reuse: the kept host is just a host.
        assert_eq!(
            choose_host(&hosts, &sel, None, &me, Some("md-1")).unwrap().name_any(),
            "a"
        );
        assert_eq!(choose_host(&hosts, &sel, None, &me, None).unwrap().name_any(), "a");
        // Still being deprovisioned: the pool's machine waits for it rather than take `a`.
        hosts[1] = host("k", P::Deprovisioning, &[(NODE_REUSE_LABEL, "md-0")], None);
        assert!(choose_host(&hosts, &sel, None, &me, Some("md-0")).is_none());
        // Taken by someone else meanwhile: nothing is kept any more, any free host will do.
        hosts[1] = host("k", P::Provisioned, &[(NODE_REUSE_LABEL, "md-0")], Some("other"));
        assert_eq!(
            choose_host(&hosts, &sel, None, &me, Some("md-0")).unwrap().name_any(),
            "a"
        );
    }
}
