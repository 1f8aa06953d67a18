//! Pods, ReplicaSets and controller status derived from a workload template,
//! so every DaemonSet/Deployment carries counts that match its pods.

use serde_json::{Map, Value, json};

use super::BASE_TIME;
use super::ids;
use super::net::NodeInfo;

/// The owner an object points at through ownerReferences.
pub struct Owner<'a> {
    pub api_version: &'a str,
    pub kind: &'a str,
    pub name: &'a str,
    pub uid: String,
}

impl Owner<'_> {
    fn reference(&self) -> Value {
        json!([{
            "apiVersion": self.api_version, "kind": self.kind, "name": self.name,
            "uid": self.uid, "controller": true, "blockOwnerDeletion": true,
        }])
    }
}

/// Set metadata.uid (the sandbox may assign its own; ownerReferences use this one).
pub fn set_uid(obj: &mut Value, seed: u64) -> String {
    let key = format!(
        "{}/{}/{}",
        obj["kind"].as_str().unwrap_or_default(),
        obj["metadata"]["namespace"].as_str().unwrap_or_default(),
        obj["metadata"]["name"].as_str().unwrap_or_default()
    );
    let uid = ids::uid(seed, &key);
    obj["metadata"]["uid"] = json!(uid);
    uid
}

/// Where a pod lands: its name, namespace, node and IP.
pub struct Placement<'a> {
    pub name: &'a str,
    pub namespace: &'a str,
    pub node: &'a NodeInfo,
    pub ip: &'a str,
}

/// A running, ready pod from a pod template.
pub fn pod_from_template(
    template: &Value,
    at: &Placement,
    extra_labels: &[(&str, String)],
    owner: &Owner,
    seed: u64,
) -> Value {
    let (name, namespace, node, pod_ip) = (at.name, at.namespace, at.node, at.ip);
    let mut labels = template["metadata"]["labels"]
        .as_object()
        .cloned()
        .unwrap_or_default();
    for (k, v) in extra_labels {
        labels.insert((*k).to_string(), json!(v));
    }
    let mut spec = template["spec"].clone();
    spec["nodeName"] = json!(node.name);
    if spec.get("serviceAccountName").is_none() {
        spec["serviceAccountName"] = json!("default");
    }
    // API defaults (k8s.io/kubernetes pkg/apis/core/v1/defaults.go): dnsPolicy is
    // ClusterFirst even for host-network pods unless the template says otherwise.
    spec["restartPolicy"] = json!("Always");
    for (k, v) in [
        ("dnsPolicy", json!("ClusterFirst")),
        ("schedulerName", json!("default-scheduler")),
        ("terminationGracePeriodSeconds", json!(30)),
        ("securityContext", json!({})),
    ] {
        if spec.get(k).is_none() {
            spec[k] = v;
        }
    }
    // The priority admission plugin resolves the built-in priority classes.
    let priority = match spec["priorityClassName"].as_str() {
        Some("system-node-critical") => Some(2_000_001_000),
        Some("system-cluster-critical") => Some(2_000_000_000),
        _ => None,
    };
    spec["priority"] = json!(priority.unwrap_or(0));
    let statuses: Vec<Value> = spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .map(|c| {
            let cname = c["name"].as_str().unwrap_or_default();
            json!({
                "name": cname,
                "image": c["image"],
                "imageID": format!("{}@sha256:{:016x}{:016x}{:016x}{:016x}",
                    c["image"].as_str().unwrap_or_default().split(':').next().unwrap_or_default(),
                    ids::hash(seed, cname), ids::hash(seed, "b"), ids::hash(seed, "c"), ids::hash(seed, "d")),
                "containerID": format!("containerd://{:016x}{:016x}{:016x}{:016x}",
                    ids::hash(seed, &format!("{namespace}/{name}/{cname}/1")),
                    ids::hash(seed, &format!("{namespace}/{name}/{cname}/2")),
                    ids::hash(seed, &format!("{namespace}/{name}/{cname}/3")),
                    ids::hash(seed, &format!("{namespace}/{name}/{cname}/4"))),
                "ready": true, "started": true, "restartCount": 0,
                "state": {"running": {"startedAt": BASE_TIME}},
            })
        })
        .collect();
    let cond = |t: &str| json!({"type": t, "status": "True", "lastProbeTime": null, "lastTransitionTime": BASE_TIME});
    let mut meta = Map::new();
    meta.insert("name".into(), json!(name));
    meta.insert("namespace".into(), json!(namespace));
    meta.insert("labels".into(), Value::Object(labels));
    if let Some(a) = template["metadata"].get("annotations") {
        meta.insert("annotations".into(), a.clone());
    }
    meta.insert("ownerReferences".into(), owner.reference());
    meta.insert("creationTimestamp".into(), json!(BASE_TIME));
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": meta,
        "spec": spec,
        "status": {
            "phase": "Running",
            "conditions": [cond("PodReadyToStartContainers"), cond("Initialized"), cond("Ready"),
                           cond("ContainersReady"), cond("PodScheduled")],
            "hostIP": node.ip, "hostIPs": [{"ip": node.ip}],
            "podIP": pod_ip, "podIPs": [{"ip": pod_ip}],
            "startTime": BASE_TIME,
            "containerStatuses": statuses,
            "qosClass": "Burstable",
        },
    });
    set_uid(&mut pod, seed);
    pod
}

/// `.status` of a DaemonSet whose `n` pods are all ready and up to date.
pub fn daemonset_status(n: usize) -> Value {
    json!({
        "currentNumberScheduled": n, "desiredNumberScheduled": n, "numberAvailable": n,
        "numberMisscheduled": 0, "numberReady": n, "observedGeneration": 1,
        "updatedNumberScheduled": n,
    })
}

/// `.status` of a Deployment whose `n` replicas are all available.
pub fn deployment_status(n: usize) -> Value {
    let mut s = json!({
        "observedGeneration": 1, "replicas": n, "updatedReplicas": n, "readyReplicas": n,
        "availableReplicas": n,
        "conditions": [
            {"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable",
             "message": "Deployment has minimum availability.",
             "lastUpdateTime": BASE_TIME, "lastTransitionTime": BASE_TIME},
            {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable",
             "message": "ReplicaSet has successfully progressed.",
             "lastUpdateTime": BASE_TIME, "lastTransitionTime": BASE_TIME},
        ],
    });
    if n == 0 {
        // The API omits zero counts.
        for k in [
            "replicas",
            "updatedReplicas",
            "readyReplicas",
            "availableReplicas",
        ] {
            if let Some(m) = s.as_object_mut() {
                m.remove(k);
            }
        }
    }
    s
}

/// The `controller-revision-hash` of a seeded DaemonSet's pods and first revision.
fn seeded_revision_hash(ds: &Value, seed: u64) -> String {
    let name = ds["metadata"]["name"].as_str().unwrap_or_default();
    let ns = ds["metadata"]["namespace"].as_str().unwrap_or_default();
    ids::suffix(seed, &format!("{ns}/{name}/crh"), 10)
}

/// The ControllerRevision the DaemonSet controller keeps for a seeded DaemonSet's
/// template (revision 1, named and labelled by the hash its pods carry).
pub fn daemonset_revision(ds: &Value, seed: u64) -> Value {
    let name = ds["metadata"]["name"].as_str().unwrap_or_default();
    let hash = seeded_revision_hash(ds, seed);
    let mut labels = ds
        .pointer("/spec/template/metadata/labels")
        .cloned()
        .unwrap_or_else(|| json!({}));
    labels[crate::sandbox::controllers::history::REVISION_HASH] = json!(hash);
    json!({
        "apiVersion": "apps/v1",
        "kind": "ControllerRevision",
        "metadata": {
            "name": format!("{name}-{hash}"),
            "namespace": ds["metadata"]["namespace"],
            "labels": labels,
            "ownerReferences": [{
                "apiVersion": "apps/v1", "kind": "DaemonSet", "name": name,
                "uid": ds["metadata"]["uid"], "controller": true, "blockOwnerDeletion": true,
            }],
        },
        "data": crate::sandbox::controllers::history::revision_data(ds),
        "revision": 1,
    })
}

/// One pod per node for a DaemonSet, owned by it; host-network pods take the node IP.
pub fn daemonset_pods(
    ds: &Value,
    nodes: &[NodeInfo],
    pod_ip: &mut dyn FnMut(&NodeInfo) -> String,
    seed: u64,
) -> Vec<Value> {
    let name = ds["metadata"]["name"].as_str().unwrap_or_default();
    let ns = ds["metadata"]["namespace"].as_str().unwrap_or_default();
    let owner = Owner {
        api_version: "apps/v1",
        kind: "DaemonSet",
        name,
        uid: ds["metadata"]["uid"]
            .as_str()
            .unwrap_or_default()
            .to_string(),
    };
    let template = &ds["spec"]["template"];
    let host_net = template["spec"]["hostNetwork"] == json!(true);
    let revision_hash = seeded_revision_hash(ds, seed);
    nodes
        .iter()
        .map(|node| {
            // The DaemonSet controller pins each pod to its node with matchFields
            // (k8s.io/kubernetes pkg/controller/daemon/util ReplaceDaemonSetPodNodeNameNodeAffinity).
            let mut template = template.clone();
            pin_to_node(&mut template["spec"], &node.name);
            let template = &template;
            let pod_name = format!(
                "{name}-{}",
                ids::suffix(seed, &format!("{ns}/{name}/{}", node.name), 5)
            );
            let ip = if host_net {
                node.ip.clone()
            } else {
                pod_ip(node)
            };
            pod_from_template(
                template,
                &Placement {
                    name: &pod_name,
                    namespace: ns,
                    node,
                    ip: &ip,
                },
                &[
                    ("controller-revision-hash", revision_hash.clone()),
                    ("pod-template-generation", "1".to_string()),
                ],
                &owner,
                seed,
            )
        })
        .collect()
}

/// The ReplicaSet and pods behind a Deployment; `placement` picks each pod's node.
pub fn deployment_children(
    deploy: &Value,
    nodes: &[NodeInfo],
    placement: &mut dyn FnMut(usize) -> usize,
    pod_ip: &mut dyn FnMut(&NodeInfo) -> String,
    seed: u64,
) -> Vec<Value> {
    let name = deploy["metadata"]["name"].as_str().unwrap_or_default();
    let ns = deploy["metadata"]["namespace"].as_str().unwrap_or_default();
    let replicas = deploy["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
    let hash = ids::suffix(seed, &format!("{ns}/{name}/pth"), 10);
    let rs_name = format!("{name}-{hash}");
    let mut template = deploy["spec"]["template"].clone();
    template["metadata"]["labels"]["pod-template-hash"] = json!(hash);
    let mut selector = deploy["spec"]["selector"].clone();
    selector["matchLabels"]["pod-template-hash"] = json!(hash);
    // The Deployment controller labels a ReplicaSet with the pod template's
    // labels plus pod-template-hash, not with the Deployment's own labels.
    let rs_labels = template["metadata"]["labels"].clone();
    let mut rs = json!({
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "metadata": {
            "name": rs_name, "namespace": ns, "labels": rs_labels,
            "annotations": {"deployment.kubernetes.io/desired-replicas": replicas.to_string(),
                            "deployment.kubernetes.io/max-replicas": (replicas + 1).to_string(),
                            "deployment.kubernetes.io/revision": "1"},
            "ownerReferences": Owner { api_version: "apps/v1", kind: "Deployment", name,
                uid: deploy["metadata"]["uid"].as_str().unwrap_or_default().to_string() }.reference(),
            "creationTimestamp": BASE_TIME,
        },
        "spec": {"replicas": replicas, "selector": selector, "template": template.clone()},
        "status": {"replicas": replicas, "fullyLabeledReplicas": replicas, "readyReplicas": replicas,
                   "availableReplicas": replicas, "observedGeneration": 1},
    });
    let rs_uid = set_uid(&mut rs, seed);
    let owner = Owner {
        api_version: "apps/v1",
        kind: "ReplicaSet",
        name: &rs_name,
        uid: rs_uid,
    };
    let host_net = template["spec"]["hostNetwork"] == json!(true);
    let mut out = vec![];
    let mut used_hosts = Vec::new();
    for i in 0..replicas {
        if nodes.is_empty() {
            break;
        }
        let mut n = placement(i) % nodes.len();
        // Host-network pods with a fixed port cannot share a node.
        if host_net {
            while used_hosts.contains(&n) && used_hosts.len() < nodes.len() {
                n = (n + 1) % nodes.len();
            }
            used_hosts.push(n);
        }
        let node = &nodes[n];
        let pod_name = format!(
            "{rs_name}-{}",
            ids::suffix(seed, &format!("{ns}/{rs_name}/{i}"), 5)
        );
        let ip = if host_net {
            node.ip.clone()
        } else {
            pod_ip(node)
        };
        let at = Placement {
            name: &pod_name,
            namespace: ns,
            node,
            ip: &ip,
        };
        out.push(pod_from_template(&template, &at, &[], &owner, seed));
    }
    out.insert(0, rs);
    out
}

/// Add `matchFields metadata.name In [node]` to every required node-affinity
/// term (or create the one term), as the DaemonSet controller does.
fn pin_to_node(spec: &mut Value, node: &str) {
    let field = json!([{"key": "metadata.name", "operator": "In", "values": [node]}]);
    let terms = &mut spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"];
    match terms.as_array_mut() {
        Some(ts) if !ts.is_empty() => {
            for t in ts {
                t["matchFields"] = field.clone();
            }
        }
        _ => *terms = json!([{"matchFields": field}]),
    }
}
