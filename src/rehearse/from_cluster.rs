//! `rehearse --from-cluster`: the live cluster's nodes (names and labels), namespaces
//! (with labels) and every policy object, read only, seeded into the rehearsal's
//! sandbox in place of the generated ones, so a team rehearses with its own policies.
//!
//! Not copied: pods (their addresses belong to the real VPC; the probe workload stands
//! in for them), the Calico install itself (the sandbox keeps the aws-calico 0.3.10
//! install its scenario builds) and Fargate nodes (no DaemonSet pod runs there).

use std::collections::{BTreeMap, BTreeSet};

use anyhow::Context as _;
use serde_json::{Map, Value, json};

use crate::cluster::objects::{ObjRef, Objects, strip_server_fields};
use crate::migration::facts::{name_of, str_at};
use crate::migration::policies::POLICY_KINDS;

/// What a rehearsal takes from a live cluster.
#[derive(Debug, Clone, Default)]
pub struct ClusterCopy {
    /// Non-Fargate nodes: name and labels.
    pub nodes: Vec<(String, Map<String, Value>)>,
    /// Namespaces with their labels.
    pub namespaces: Vec<Value>,
    /// Every policy object of the kinds the migration must never lose.
    pub policies: Vec<Value>,
}

/// Read the copy (LIST only: nothing in the cluster changes).
pub async fn read(objects: &Objects) -> anyhow::Result<ClusterCopy> {
    let nodes = objects
        .list("v1", "Node", None, None)
        .await
        .context("listing nodes")?
        .into_iter()
        .filter(|n| !crate::kinds::is(n, crate::kinds::is_fargate))
        .map(|n| {
            let labels = n
                .pointer("/metadata/labels")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default();
            (name_of(&n).to_string(), labels)
        })
        .collect::<Vec<_>>();
    if nodes.is_empty() {
        anyhow::bail!(
            "the cluster has no EC2 node (Fargate nodes are not copied): nothing to rehearse on"
        );
    }
    let namespaces = objects
        .list("v1", "Namespace", None, None)
        .await
        .context("listing namespaces")?
        .iter()
        .map(|n| {
            json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {
                "name": name_of(n),
                "labels": n.pointer("/metadata/labels").cloned().unwrap_or(json!({})),
            }})
        })
        .collect();
    let mut policies = Vec::new();
    for (api, kind) in POLICY_KINDS {
        let list = objects
            .list(api, kind, None, None)
            .await
            .with_context(|| format!("listing {kind} ({api})"))?;
        policies.extend(list.iter().map(|o| {
            let mut o = strip_server_fields(o);
            if let Some(m) = o.get_mut("metadata").and_then(Value::as_object_mut) {
                m.remove("ownerReferences");
                m.remove("finalizers");
                m.remove("annotations");
            }
            o
        }));
    }
    Ok(ClusterCopy {
        nodes,
        namespaces,
        policies,
    })
}

/// Kinds of the scenario's own policy objects, replaced by the cluster's.
fn is_policy(o: &Value) -> bool {
    ObjRef::of(o).is_some_and(|r| {
        POLICY_KINDS
            .iter()
            .any(|(api, kind)| r.api_version == *api && r.kind == *kind)
    })
}

/// Replace every string equal to a key of `names` (node names appear as whole values:
/// names, `nodeName`, hostname labels, DaemonSet pods' `matchFields`).
fn rename(v: &mut Value, names: &BTreeMap<String, String>) {
    match v {
        Value::String(s) => {
            if let Some(n) = names.get(s.as_str()) {
                *s = n.clone();
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|x| rename(x, names)),
        Value::Object(m) => m.values_mut().for_each(|x| rename(x, names)),
        _ => {}
    }
}

/// Put the copy into scenario objects built with as many nodes as the copy has and
/// no generated user namespace: the scenario's nodes take the cluster's names and
/// labels, its policy objects give way to the cluster's, and the cluster's
/// namespaces join (labels merged where the scenario has the namespace too).
pub fn adopt(mut objects: Vec<Value>, copy: &ClusterCopy) -> anyhow::Result<Vec<Value>> {
    let mut generated: Vec<String> = objects
        .iter()
        .filter(|o| o["kind"] == "Node")
        .map(|o| name_of(o).to_string())
        .collect();
    generated.sort();
    if generated.len() != copy.nodes.len() {
        anyhow::bail!(
            "the scenario has {} node(s), the cluster {}: build it with as many",
            generated.len(),
            copy.nodes.len()
        );
    }
    let names: BTreeMap<String, String> = generated
        .iter()
        .cloned()
        .zip(copy.nodes.iter().map(|(n, _)| n.clone()))
        .collect();
    let labels: BTreeMap<&str, &Map<String, Value>> =
        copy.nodes.iter().map(|(n, l)| (n.as_str(), l)).collect();
    objects.retain(|o| !is_policy(o));
    for o in objects.iter_mut() {
        rename(o, &names);
        if o["kind"] == "Node"
            && let Some(l) = labels.get(name_of(o))
            && let Some(m) = o
                .pointer_mut("/metadata/labels")
                .and_then(Value::as_object_mut)
        {
            for (k, v) in l.iter() {
                m.insert(k.clone(), v.clone());
            }
        }
    }
    let present: BTreeSet<String> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .map(|o| name_of(o).to_string())
        .collect();
    for ns in &copy.namespaces {
        let name = name_of(ns).to_string();
        if present.contains(&name) {
            if let Some(o) = objects
                .iter_mut()
                .find(|o| o["kind"] == "Namespace" && name_of(o) == name)
                && let (Some(m), Some(l)) = (
                    o.pointer_mut("/metadata/labels")
                        .and_then(Value::as_object_mut),
                    ns.pointer("/metadata/labels").and_then(Value::as_object),
                )
            {
                for (k, v) in l {
                    m.insert(k.clone(), v.clone());
                }
            }
        } else {
            objects.push(ns.clone());
        }
    }
    // Policies of namespaces that are not copied (none, normally) would not load.
    let namespaces: BTreeSet<String> = objects
        .iter()
        .filter(|o| o["kind"] == "Namespace")
        .map(|o| name_of(o).to_string())
        .collect();
    objects.extend(
        copy.policies
            .iter()
            .filter(|p| str_at(p, "/metadata/namespace").is_none_or(|ns| namespaces.contains(ns)))
            .cloned(),
    );
    Ok(objects)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::scenario::{self, ScenarioConfig};

    fn copy() -> ClusterCopy {
        let labels = |zone: &str| {
            json!({"topology.kubernetes.io/zone": zone, "team": "platform"})
                .as_object()
                .cloned()
                .unwrap_or_default()
        };
        ClusterCopy {
            nodes: vec![
                ("node-a.internal".into(), labels("eu-west-1a")),
                ("node-b.internal".into(), labels("eu-west-1b")),
            ],
            namespaces: vec![
                json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "shop", "labels": {"tenant": "shop"}}}),
                json!({"apiVersion": "v1", "kind": "Namespace",
                       "metadata": {"name": "kube-system", "labels": {"extra": "yes"}}}),
            ],
            policies: vec![
                json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
                       "metadata": {"name": "default", "namespace": "shop"},
                       "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]}}),
                json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy",
                       "metadata": {"name": "team-deny-imds"},
                       "spec": {"selector": "all()", "types": ["Egress"], "egress": [{"action": "Allow"}]}}),
            ],
        }
    }

    #[test]
    fn nodes_take_the_cluster_names_and_policies_replace_the_scenarios() {
        let objects = scenario::build(&ScenarioConfig {
            nodes: 2,
            namespaces: 0,
            ..ScenarioConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        let out = adopt(objects, &copy()).unwrap_or_else(|e| panic!("{e}"));
        let nodes: Vec<&str> = out
            .iter()
            .filter(|o| o["kind"] == "Node")
            .map(name_of)
            .collect();
        assert_eq!(nodes, ["node-a.internal", "node-b.internal"]);
        let text = serde_json::to_string(&out).unwrap_or_default();
        assert!(
            !text.contains("ip-10-0-"),
            "every reference to a generated node name is renamed"
        );
        let node_a = out
            .iter()
            .find(|o| name_of(o) == "node-a.internal")
            .cloned()
            .unwrap_or_default();
        assert_eq!(node_a["metadata"]["labels"]["team"], "platform");
        let gnps: Vec<&str> = out
            .iter()
            .filter(|o| o["kind"] == "GlobalNetworkPolicy")
            .map(name_of)
            .collect();
        assert_eq!(gnps, ["team-deny-imds"], "the scenario's own GNP gives way");
        assert!(
            out.iter()
                .any(|o| o["kind"] == "Namespace" && name_of(o) == "shop")
        );
        let ks = out
            .iter()
            .find(|o| o["kind"] == "Namespace" && name_of(o) == "kube-system")
            .cloned()
            .unwrap_or_default();
        assert_eq!(ks["metadata"]["labels"]["extra"], "yes");
        assert!(
            out.iter()
                .filter(|o| o["kind"] == "Namespace" && name_of(o) == "kube-system")
                .count()
                == 1
        );
    }

    #[test]
    fn node_counts_must_agree() {
        let objects = scenario::build(&ScenarioConfig {
            nodes: 3,
            namespaces: 0,
            ..ScenarioConfig::default()
        })
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(adopt(objects, &copy()).is_err());
    }
}
