//! The workload cluster side of the providerID hand-over (path (b), as CAPM3 has it): when a kubelet registered its
//! Node without `--provider-id`, kiln finds the Node of a provisioned host and sets its `spec.providerID` to the
//! KilnMachine's, so Cluster API can set the Machine's nodeRef. It reads the workload kubeconfig Cluster API keeps in
//! `<cluster>-kubeconfig`; it never logs that kubeconfig, never puts it in an error, and never changes a providerID
//! that is already set (the field is immutable once set). It also keeps the Node's labels under the prefixes a
//! KilnCluster names ([`LABEL_SYNC_PREFIXES_ANNOTATION`], CAPM3's) equal to the host's ([`sync_labels`]).

use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::{Node, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, ResourceExt};
use serde_json::json;

/// A Node label a bootstrap template may have the kubelet register with (`--node-labels`), valued with the config
/// drive's `{{ ds.meta_data.name }}` (`<namespace>.<host>`, kiln's host name): the surest way to find a host's Node.
pub const HOST_LABEL: &str = "infrastructure.cluster.x-k8s.io/kiln-host";

/// The key of the workload kubeconfig in Cluster API's `<cluster>-kubeconfig` Secret.
const KUBECONFIG_KEY: &str = "value";

/// Errors reaching the workload cluster or changing its Node.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading the workload kubeconfig Secret {namespace}/{secret}")]
    ReadKubeconfig {
        namespace: String,
        secret: String,
        #[source]
        source: kube::Error,
    },
    /// The cause is left out on purpose: a YAML parser's message may quote the Secret's contents.
    #[error("the workload kubeconfig Secret {namespace}/{secret} is not a usable kubeconfig")]
    ParseKubeconfig { namespace: String, secret: String },
    #[error("connecting to workload cluster {cluster}")]
    Connect {
        cluster: String,
        #[source]
        source: kube::Error,
    },
    #[error("listing the Nodes of workload cluster {cluster}")]
    ListNodes {
        cluster: String,
        #[source]
        source: kube::Error,
    },
    #[error("setting spec.providerID of Node {node} in workload cluster {cluster}")]
    PatchNode {
        cluster: String,
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("reading Node {node} of workload cluster {cluster}")]
    ReadNode {
        cluster: String,
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("syncing labels to Node {node} in workload cluster {cluster}")]
    LabelNode {
        cluster: String,
        node: String,
        #[source]
        source: kube::Error,
    },
    #[error("workload cluster {cluster} did not answer within {after:?}")]
    Timeout { cluster: String, after: Duration },
}

/// CAPM3's annotation listing the label prefixes synced from a host to its Node (comma-separated; a label is synced
/// when the part of its key before `/` is one of them). kiln reads it on the KilnCluster, as CAPM3 on the
/// Metal3Cluster.
pub const LABEL_SYNC_PREFIXES_ANNOTATION: &str = "metal3.io/metal3-label-sync-prefixes";

/// The prefixes of a [`LABEL_SYNC_PREFIXES_ANNOTATION`] value.
pub fn label_sync_prefixes(annotation: &str) -> Vec<String> {
    annotation
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(str::to_owned)
        .collect()
}

/// The merge patch of a Node's labels that makes its labels under `prefixes` those of the host: set what differs,
/// remove what the host no longer has; `None` when nothing differs (pure). Other labels are never touched.
pub fn label_sync_patch(
    host: &std::collections::BTreeMap<String, String>,
    node: &std::collections::BTreeMap<String, String>,
    prefixes: &[String],
) -> Option<serde_json::Value> {
    let synced = |k: &String| k.split_once('/').is_some_and(|(p, _)| prefixes.iter().any(|x| x == p));
    let mut labels = serde_json::Map::new();
    for (k, v) in host.iter().filter(|(k, _)| synced(k)) {
        if node.get(k) != Some(v) {
            labels.insert(k.clone(), json!(v));
        }
    }
    for k in node.keys().filter(|k| synced(k) && !host.contains_key(*k)) {
        labels.insert(k.clone(), serde_json::Value::Null);
    }
    (!labels.is_empty()).then(|| json!({"metadata": {"labels": labels}}))
}

/// One call to workload cluster `cluster`, given up after `timeout`; a failed call becomes the error `what` makes of it.
async fn within<T>(
    cluster: &str,
    timeout: Duration,
    call: impl std::future::Future<Output = Result<T, kube::Error>>,
    what: impl FnOnce(kube::Error) -> Error,
) -> Result<T, Error> {
    tokio::time::timeout(timeout, call)
        .await
        .map_err(|_| Error::Timeout {
            cluster: cluster.into(),
            after: timeout,
        })?
        .map_err(what)
}

/// Makes Node `node`'s labels under `prefixes` those of the host (see [`label_sync_patch`]); returns whether it
/// changed anything.
///
/// # Errors
/// [`Error::ReadNode`], [`Error::LabelNode`], [`Error::Timeout`].
pub async fn sync_labels(
    workload: &Client,
    cluster: &str,
    node: &str,
    host: &std::collections::BTreeMap<String, String>,
    prefixes: &[String],
    timeout: Duration,
) -> Result<bool, Error> {
    let nodes: Api<Node> = Api::all(workload.clone());
    let n = within(cluster, timeout, nodes.get(node), |source| Error::ReadNode {
        cluster: cluster.into(),
        node: node.into(),
        source,
    })
    .await?;
    let Some(patch) = label_sync_patch(host, n.labels(), prefixes) else {
        return Ok(false);
    };
    let (pp, patch) = (PatchParams::default(), Patch::Merge(patch));
    let call = nodes.patch(node, &pp, &patch);
    within(cluster, timeout, call, |source| Error::LabelNode {
        cluster: cluster.into(),
        node: node.into(),
        source,
    })
    .await?;
    Ok(true)
}

/// What kiln knows about a provisioned host to recognise its Node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HostIdentity {
    /// The value of [`HOST_LABEL`] on its Node: kiln's host name, `<namespace>.<host>`.
    pub label: String,
    /// Names the kubelet may have registered with: the BareMetalHost name (Metal3's default hostname), kiln's host
    /// name (the config drive's `name`/`hostname`), the hostname found by inspection.
    pub names: Vec<String>,
    /// The host's inspected NIC addresses.
    pub addresses: Vec<IpAddr>,
}

impl HostIdentity {
    /// The identity of BareMetalHost `host` in `namespace`, with the hostname and addresses inspection found.
    pub fn new(namespace: &str, host: &str, hostname: Option<&str>, addresses: &[String]) -> Self {
        let label = format!("{namespace}.{host}");
        let mut names = vec![host.to_ascii_lowercase(), label.to_ascii_lowercase()];
        if let Some(h) = hostname.map(str::to_ascii_lowercase)
            && !names.contains(&h)
        {
            names.push(h);
        }
        Self {
            label,
            names,
            addresses: addresses.iter().filter_map(|a| a.parse().ok()).collect(),
        }
    }
}

/// What to do about the providerID of a host's Node (the pure decision).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// A Node already carries the providerID: nothing to do.
    Done { node: String },
    /// No Node of the host yet: look again later.
    NoNode,
    /// Set the providerID of this Node (its resourceVersion guards the write).
    Set {
        node: String,
        resource_version: Option<String>,
    },
    /// The host's Node carries another providerID, which cannot change.
    Conflict { node: String, existing: String },
    /// More than one Node fits the host: kiln does not guess.
    Ambiguous { nodes: Vec<String> },
}

fn provider_id_of(n: &Node) -> &str {
    n.spec.as_ref().and_then(|s| s.provider_id.as_deref()).unwrap_or("")
}

fn internal_ips(n: &Node) -> Vec<IpAddr> {
    n.status
        .as_ref()
        .and_then(|s| s.addresses.as_ref())
        .into_iter()
        .flatten()
        .filter(|a| a.type_ == "InternalIP")
        .filter_map(|a| a.address.parse().ok())
        .collect()
}

/// Picks the host's Node among `nodes` and decides what to do (pure). In order: a Node already carrying
/// `provider_id`; Nodes labelled [`HOST_LABEL`] with the host's label; Nodes named like the host whose InternalIPs,
/// when both sides know some, include one of the host's; Nodes without a providerID whose InternalIPs include one of
/// the host's. Exactly one Node must fit the first rule that finds any.
pub fn decide(nodes: &[Node], host: &HostIdentity, provider_id: &str) -> Decision {
    if let Some(n) = nodes.iter().find(|n| provider_id_of(n) == provider_id) {
        return Decision::Done { node: n.name_any() };
    }
    let shares_ip = |n: &Node| internal_ips(n).iter().any(|a| host.addresses.contains(a));
    let by_label: Vec<&Node> = nodes
        .iter()
        .filter(|n| n.labels().get(HOST_LABEL) == Some(&host.label))
        .collect();
    let by_name: Vec<&Node> = nodes
        .iter()
        .filter(|n| host.names.contains(&n.name_any().to_ascii_lowercase()))
        .filter(|n| host.addresses.is_empty() || internal_ips(n).is_empty() || shares_ip(n))
        .collect();
    let by_ip: Vec<&Node> = nodes
        .iter()
        .filter(|n| provider_id_of(n).is_empty() && shares_ip(n))
        .collect();
    let found = [by_label, by_name, by_ip].into_iter().find(|v| !v.is_empty());
    match found.as_deref() {
        None | Some([]) => Decision::NoNode,
        Some([n]) => match provider_id_of(n) {
            "" => Decision::Set {
                node: n.name_any(),
                resource_version: n.resource_version(),
            },
            other => Decision::Conflict {
                node: n.name_any(),
                existing: other.to_owned(),
            },
        },
        Some(many) => Decision::Ambiguous {
            nodes: many.iter().map(|n| n.name_any()).collect(),
        },
    }
}

/// A client of workload cluster `cluster` from its kubeconfig Secret in `namespace`, or `None` while Cluster API has
/// not written it. Every request through it gives up after `timeout`.
///
/// # Errors
/// [`Error::ReadKubeconfig`], [`Error::ParseKubeconfig`], [`Error::Connect`].
pub async fn client(mgmt: &Client, namespace: &str, cluster: &str, timeout: Duration) -> Result<Option<Client>, Error> {
    let secret = format!("{cluster}-kubeconfig");
    let secrets: Api<Secret> = Api::namespaced(mgmt.clone(), namespace);
    let s = secrets.get_opt(&secret).await.map_err(|source| Error::ReadKubeconfig {
        namespace: namespace.into(),
        secret: secret.clone(),
        source,
    })?;
    let Some(bytes) = s.and_then(|s| s.data).and_then(|mut d| d.remove(KUBECONFIG_KEY)) else {
        return Ok(None);
    };
    let unusable = || Error::ParseKubeconfig {
        namespace: namespace.into(),
        secret: secret.clone(),
    };
    let text = String::from_utf8(bytes.0).map_err(|_| unusable())?;
    let kubeconfig = Kubeconfig::from_yaml(&text).map_err(|_| unusable())?;
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .map_err(|_| unusable())?;
    config.connect_timeout = Some(timeout);
    config.read_timeout = Some(timeout);
    config.write_timeout = Some(timeout);
    Client::try_from(config).map(Some).map_err(|source| Error::Connect {
        cluster: cluster.into(),
        source,
    })
}

/// Finds the host's Node in the workload cluster and sets its providerID when it has none; returns the decision
/// taken. A `Set` whose Node changed in between (a kubelet registering, another writer) fails with a conflict and is
/// decided again on the next call.
///
/// # Errors
/// [`Error::ListNodes`], [`Error::PatchNode`], [`Error::Timeout`].
pub async fn ensure_provider_id(
    workload: &Client,
    cluster: &str,
    host: &HostIdentity,
    provider_id: &str,
    timeout: Duration,
) -> Result<Decision, Error> {
    let nodes: Api<Node> = Api::all(workload.clone());
    let list = within(cluster, timeout, nodes.list(&ListParams::default()), |source| {
        Error::ListNodes {
            cluster: cluster.into(),
            source,
        }
    })
    .await?;
    let decision = decide(&list.items, host, provider_id);
    if let Decision::Set { node, resource_version } = &decision {
        let patch = json!({"metadata": {"resourceVersion": resource_version}, "spec": {"providerID": provider_id}});
        let (pp, patch) = (PatchParams::default(), Patch::Merge(patch));
        let call = nodes.patch(node, &pp, &patch);
        within(cluster, timeout, call, |source| Error::PatchNode {
            cluster: cluster.into(),
            node: node.clone(),
            source,
        })
        .await?;
    }
    Ok(decision)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_under_the_prefixes_follow_the_host_and_others_are_left_alone() {
        let map = |kv: &[(&str, &str)]| kv.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect();
        let prefixes = label_sync_prefixes(" rack.example.com , ,zone.example.com");
        assert_eq!(prefixes, ["rack.example.com", "zone.example.com"]);
        let host = map(&[
            ("rack.example.com/row", "r8"),
            ("zone.example.com/az", "a"),
            ("role", "worker"),
        ]);
        let node = map(&[
            ("rack.example.com/row", "r7"),
            ("rack.example.com/old", "x"),
            ("kubernetes.io/hostname", "n1"),
            ("zone.example.com/az", "a"),
        ]);
        assert_eq!(
            label_sync_patch(&host, &node, &prefixes),
            Some(json!({"metadata": {"labels": {"rack.example.com/row": "r8", "rack.example.com/old": null}}}))
        );
        let synced = map(&[
            ("rack.example.com/row", "r8"),
            ("zone.example.com/az", "a"),
            ("x/y", "z"),
        ]);
        assert_eq!(label_sync_patch(&host, &synced, &prefixes), None);
        // A prefix must match the whole part before `/`: `rack.example.com.evil/row` is not synced.
        let host = map(&[("rack.example.com.evil/row", "1")]);
        assert_eq!(label_sync_patch(&host, &Default::default(), &prefixes), None);
    }

    const ID: &str = "kiln://metal3/node-0";

    fn node(name: &str, provider_id: Option<&str>, label: Option<&str>, ips: &[&str]) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name, "resourceVersion": "7",
                         "labels": label.map(|l| json!({HOST_LABEL: l})).unwrap_or(json!({}))},
            "spec": {"providerID": provider_id},
            "status": {"addresses": ips.iter().map(|a| json!({"type": "InternalIP", "address": a})).collect::<Vec<_>>()},
        }))
        .unwrap()
    }

    fn host(ips: &[&str]) -> HostIdentity {
        let ips: Vec<String> = ips.iter().map(|s| s.to_string()).collect();
        HostIdentity::new("metal3", "node-0", Some("node-0"), &ips)
    }

    fn set(name: &str) -> Decision {
        Decision::Set {
            node: name.into(),
            resource_version: Some("7".into()),
        }
    }

    #[test]
    fn identity_names_the_bmh_and_the_kiln_host() {
        let h = HostIdentity::new("metal3", "Node-0", Some("n0.lab"), &["10.0.0.5".into(), "nope".into()]);
        assert_eq!(h.label, "metal3.Node-0");
        assert_eq!(h.names, ["node-0", "metal3.node-0", "n0.lab"]);
        assert_eq!(h.addresses, ["10.0.0.5".parse::<IpAddr>().unwrap()]);
    }

    #[test]
    fn decisions() {
        let table: Vec<(&str, Vec<Node>, HostIdentity, Decision)> = vec![
            ("no nodes", vec![], host(&[]), Decision::NoNode),
            (
                "another host's node only",
                vec![node("node-1", None, None, &["10.0.0.6"])],
                host(&["10.0.0.5"]),
                Decision::NoNode,
            ),
            (
                "already set by the kubelet",
                vec![node("x", Some(ID), None, &[])],
                host(&[]),
                Decision::Done { node: "x".into() },
            ),
            (
                "by label, whatever the name",
                vec![
                    node("node-0", None, None, &[]),
                    node("x", None, Some("metal3.node-0"), &[]),
                ],
                host(&[]),
                set("x"),
            ),
            (
                "by BMH name",
                vec![node("node-0", None, None, &[])],
                host(&[]),
                set("node-0"),
            ),
            (
                "by kiln host name",
                vec![node("metal3.node-0", None, None, &[])],
                host(&[]),
                set("metal3.node-0"),
            ),
            (
                "name and address agree",
                vec![node("node-0", None, None, &["10.0.0.5"])],
                host(&["10.0.0.5"]),
                set("node-0"),
            ),
            (
                "same name, other address: a stale or foreign node",
                vec![node("node-0", None, None, &["10.0.0.9"])],
                host(&["10.0.0.5"]),
                Decision::NoNode,
            ),
            (
                "by address alone",
                vec![node("ip-10-0-0-5", None, None, &["10.0.0.5"])],
                host(&["10.0.0.5"]),
                set("ip-10-0-0-5"),
            ),
            (
                "address alone never picks a node with a providerID",
                vec![node("ip-10-0-0-5", Some("kiln://metal3/old"), None, &["10.0.0.5"])],
                host(&["10.0.0.5"]),
                Decision::NoNode,
            ),
            (
                "set to something else",
                vec![node("node-0", Some("metal3://abc"), None, &[])],
                host(&[]),
                Decision::Conflict {
                    node: "node-0".into(),
                    existing: "metal3://abc".into(),
                },
            ),
            (
                "two fit",
                vec![node("node-0", None, None, &[]), node("metal3.node-0", None, None, &[])],
                host(&[]),
                Decision::Ambiguous {
                    nodes: vec!["node-0".into(), "metal3.node-0".into()],
                },
            ),
        ];
        for (what, nodes, h, want) in table {
            assert_eq!(decide(&nodes, &h, ID), want, "{what}");
        }
    }
}
