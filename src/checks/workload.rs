//! The probe workload as plain manifests (no I/O): two namespaces that mirror the
//! cluster's common policy pattern (NetworkPolicy `default`: ingress isolation with
//! same-namespace allow, docs/upstream.md, "The seeded cluster's policies"), one
//! client and one server pod per node in each, and one client per node in a
//! namespace the cluster's GlobalNetworkPolicies exempt (so the IMDS allow there is probed too).

use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// Label on every namespace and pod the checks create: cleanup finds them by it.
pub const PROBE_LABEL: &str = "calico-migrate.io/probe";
/// Annotation naming the node a probe pod is pinned to.
pub const NODE_ANNOTATION: &str = "calico-migrate.io/node";
/// The two probe namespaces.
pub const NAMESPACE_A: &str = "calico-migrate-probe-a";
pub const NAMESPACE_B: &str = "calico-migrate-probe-b";
/// Whether `ns` is one of the probe namespaces (their objects are the tool's own).
pub fn is_probe_namespace(ns: &str) -> bool {
    ns == NAMESPACE_A || ns == NAMESPACE_B
}
/// The port the server pods listen on (TCP).
pub const SERVER_PORT: u16 = 8080;
/// The upstream e2e image; its `connect` and `netexec` subcommands are what probes use.
pub const DEFAULT_IMAGE: &str = "registry.k8s.io/e2e-test-images/agnhost:2.53";

/// What a probe pod does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Role {
    Client,
    Server,
}

/// One probe pod: where it lives and what it does.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ProbePod {
    pub namespace: String,
    pub name: String,
    pub node: String,
    pub role: Role,
}

impl ProbePod {
    /// `namespace/name`, the policy engine's key.
    pub fn key(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }
}

/// A short stable suffix for a node (node names can exceed label/name limits).
pub fn node_tag(node: &str) -> String {
    hex::encode(&Sha256::digest(node.as_bytes())[..5])
}

/// Every probe pod for these nodes. `exempt_namespace` gets one client per node.
pub fn probe_pods(nodes: &[String], exempt_namespace: Option<&str>) -> Vec<ProbePod> {
    let mut out = Vec::with_capacity(nodes.len() * 5);
    for node in nodes {
        let tag = node_tag(node);
        for ns in [NAMESPACE_A, NAMESPACE_B] {
            for (role, prefix) in [(Role::Client, "client"), (Role::Server, "server")] {
                out.push(ProbePod {
                    namespace: ns.to_string(),
                    name: format!("{prefix}-{tag}"),
                    node: node.clone(),
                    role,
                });
            }
        }
        if let Some(ns) = exempt_namespace {
            out.push(ProbePod {
                namespace: ns.to_string(),
                name: format!("calico-migrate-probe-{tag}"),
                node: node.clone(),
                role: Role::Client,
            });
        }
    }
    out
}

/// A probe namespace with the pod security labels EKS clusters commonly enforce.
pub fn namespace_manifest(name: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": {
            PROBE_LABEL: "true",
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/warn": "restricted",
        }},
    })
}

/// The cluster's common pattern: ingress isolation, same-namespace allowed.
pub fn default_policy_manifest(namespace: &str) -> Value {
    json!({
        "apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "default", "namespace": namespace, "labels": {PROBE_LABEL: "true"}},
        "spec": {"podSelector": {}, "ingress": [{"from": [{"podSelector": {}}]}]},
    })
}

/// A probe pod pinned to its node, tolerating every taint, `restricted`-compliant.
pub fn pod_manifest(pod: &ProbePod, image: &str) -> Value {
    let (args, ports) = match pod.role {
        Role::Client => (json!(["pause"]), json!([])),
        Role::Server => (
            json!(["netexec", format!("--http-port={SERVER_PORT}")]),
            json!([{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}]),
        ),
    };
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": pod.name, "namespace": pod.namespace,
            "labels": {PROBE_LABEL: "true", "app.kubernetes.io/name": "calico-migrate-probe",
                "calico-migrate.io/role": match pod.role { Role::Client => "client", Role::Server => "server" }},
            "annotations": {NODE_ANNOTATION: pod.node},
        },
        "spec": {
            "nodeName": pod.node,
            "tolerations": [{"operator": "Exists"}],
            "automountServiceAccountToken": false,
            "terminationGracePeriodSeconds": 0,
            "securityContext": {"runAsNonRoot": true, "runAsUser": 65534,
                "seccompProfile": {"type": "RuntimeDefault"}},
            "containers": [{
                "name": "agnhost", "image": image, "args": args, "ports": ports,
                "resources": {"requests": {"cpu": "5m", "memory": "16Mi"},
                              "limits": {"memory": "64Mi"}},
                "securityContext": {"allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}},
            }],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn five_pods_per_node_with_stable_distinct_names() {
        let nodes = vec![
            "ip-10-0-1-1.eu-west-1.compute.internal".to_string(),
            "n2".into(),
        ];
        let pods = probe_pods(&nodes, Some("kube-system"));
        assert_eq!(pods.len(), 10);
        let keys: std::collections::BTreeSet<_> = pods.iter().map(ProbePod::key).collect();
        assert_eq!(keys.len(), 10);
        assert_eq!(probe_pods(&nodes, Some("kube-system")), pods);
        assert!(pods.iter().all(|p| p.name.len() < 64));
        assert_eq!(probe_pods(&nodes, None).len(), 8);
    }

    #[test]
    fn pods_are_pinned_labelled_and_tolerate_every_taint() {
        let p = &probe_pods(&["n1".to_string()], None)[1];
        let m = pod_manifest(p, DEFAULT_IMAGE);
        assert_eq!(m["spec"]["nodeName"], "n1");
        assert_eq!(m["metadata"]["labels"][PROBE_LABEL], "true");
        assert_eq!(m["spec"]["tolerations"][0]["operator"], "Exists");
        assert_eq!(
            m["spec"]["containers"][0]["ports"][0]["containerPort"],
            8080
        );
        assert!(m["spec"]["containers"][0]["resources"]["requests"]["cpu"].is_string());
        let ns = namespace_manifest(NAMESPACE_A);
        assert_eq!(
            ns["metadata"]["labels"]["pod-security.kubernetes.io/enforce"],
            "restricted"
        );
    }
}
