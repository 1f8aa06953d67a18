//! What calico-node's startup writes before felix runs, in KDD mode: the cluster-wide
//! ClusterInformation `default` and FelixConfiguration `default`, each created when
//! missing. The built-in seed holds both already (`scenario::calico`); a cluster where
//! real Helm installed the chart gets them from its first calico-node, as a real one.
//!
//! Sources, at calico v3.19.1 (the chart 0.3.10's release):
//! - projectcalico/node v3.19.1 `pkg/startup/startup.go:218-222` calls
//!   `ensureDefaultConfig` (1149-1286) before felix starts: `EnsureInitialized` with the
//!   `CLUSTER_TYPE` env (1154; kubeadm and rancher are added only when their ConfigMaps
//!   exist, 1156-1170, which EKS has neither of), then FelixConfiguration `default`
//!   created when absent with `reportingInterval: 0s` and `logSeverityScreen: Info`
//!   (1190-1201; `defaultLogSeverity` "Info", `globalFelixConfigName` "default",
//!   86-87). The per-node FelixConfiguration is not written in KDD (1246).
//! - projectcalico/libcalico-go 6ccf0906db1d (the node's go.mod pin)
//!   `lib/clientv3/client.go:203-215` `EnsureInitialized` -> `ensureClusterInformation`
//!   (220-260): `kdd` appended to the cluster type (222-233); when absent, created with
//!   `calicoVersion` (the node's VERSION, its image tag), `clusterType`, a random
//!   `clusterGUID` (32 hex digits of a UUID) and `datastoreReady: true`.
//!
//! Modelled less: only creation. An existing object is left as it is (upstream also
//! updates `calicoVersion` when another version starts, and fills a missing GUID,
//! ready flag or cluster type, client.go:268-300), a failed create does not hold the
//! pod back (upstream calico-node exits), and the ServiceAccount's RBAC is not checked
//! for these two creates.

use serde_json::{Value, json};

use super::{get, gvr, wopts};
use crate::sandbox::Sandbox;

const GROUP: &str = "crd.projectcalico.org";
const MANAGER: &str = "calico-node";

/// The env var `name` of container `calico-node`, as the pod spec gives it.
fn env<'a>(p: &'a Value, name: &str) -> Option<&'a str> {
    p.pointer("/spec/containers")?
        .as_array()?
        .iter()
        .find(|c| c["name"] == "calico-node")?
        .get("env")?
        .as_array()?
        .iter()
        .find(|e| e["name"] == name)?
        .get("value")?
        .as_str()
}

/// The calico-node container's image tag, e.g. `v3.19.1` (the binary's VERSION).
fn version(p: &Value) -> Option<&str> {
    let image = p
        .pointer("/spec/containers")?
        .as_array()?
        .iter()
        .find(|c| c["name"] == "calico-node")?
        .get("image")?
        .as_str()?;
    let (_, tag) = image.rsplit_once(':')?;
    (!tag.contains('/')).then_some(tag)
}

/// `CLUSTER_TYPE` with `kdd` appended last (client.go:222-233).
pub fn cluster_type(p: &Value) -> String {
    match env(p, "CLUSTER_TYPE").map(|t| t.trim_end_matches(',')) {
        Some(t) if !t.is_empty() => format!("{t},kdd"),
        _ => "kdd".to_string(),
    }
}

/// Hex of 16 bytes drawn from `seed`, as libcalico-go's GUID is a UUID's 16 bytes.
fn guid(seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    (0..16).map(|_| format!("{:02x}", rng.u8(..))).collect()
}

/// The two objects calico-node pod `p` makes sure of at startup; true if one was created.
pub fn ensure_default_config(sb: &Sandbox, p: &Value) -> bool {
    if env(p, "DATASTORE_TYPE").is_some_and(|d| d != "kubernetes") {
        return false;
    }
    let mut created = false;
    let ci = gvr(GROUP, "v1", "clusterinformations");
    if sb.store().resource_type(&ci).is_some() && get(sb, &ci, "", "default").is_none() {
        let seed = sb.seed() ^ super::pods::fnv(super::uid(p));
        let obj = json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "ClusterInformation",
            "metadata": {"name": "default"},
            "spec": {
                "calicoVersion": version(p).unwrap_or_default(),
                "clusterGUID": guid(seed),
                "clusterType": cluster_type(p),
                "datastoreReady": true,
            },
        });
        created |= sb.store().create(&ci, "", obj, &wopts(MANAGER)).is_ok();
    }
    let fc = gvr(GROUP, "v1", "felixconfigurations");
    if sb.store().resource_type(&fc).is_some() && get(sb, &fc, "", "default").is_none() {
        let obj = json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "FelixConfiguration",
            "metadata": {"name": "default"},
            "spec": {"logSeverityScreen": "Info", "reportingInterval": "0s"},
        });
        created |= sb.store().create(&fc, "", obj, &wopts(MANAGER)).is_ok();
    }
    created
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::{ListOptions, SandboxOptions};

    fn pod(cluster_type: Option<&str>) -> Value {
        let mut env = vec![json!({"name": "DATASTORE_TYPE", "value": "kubernetes"})];
        if let Some(t) = cluster_type {
            env.push(json!({"name": "CLUSTER_TYPE", "value": t}));
        }
        json!({"metadata": {"name": "calico-node-x", "uid": "u1"},
               "spec": {"containers": [{"name": "calico-node", "image": "quay.io/calico/node:v3.19.1", "env": env}]}})
    }

    #[test]
    fn the_cluster_type_ends_with_kdd() {
        assert_eq!(cluster_type(&pod(Some("k8s,ecs"))), "k8s,ecs,kdd");
        assert_eq!(cluster_type(&pod(Some("k8s,"))), "k8s,kdd");
        assert_eq!(cluster_type(&pod(None)), "kdd");
    }

    #[tokio::test]
    async fn missing_defaults_are_created_once_existing_ones_are_kept() {
        let sb = Sandbox::new(SandboxOptions::default());
        let p = pod(Some("k8s,ecs"));
        // No Calico CRDs: nothing to write to.
        assert!(!ensure_default_config(&sb, &p));
        sb.load(crate::sandbox::scenario::calico::calico_crds())
            .unwrap();
        assert!(ensure_default_config(&sb, &p));
        let ci = get(&sb, &gvr(GROUP, "v1", "clusterinformations"), "", "default").unwrap();
        assert_eq!(ci["spec"]["calicoVersion"], "v3.19.1");
        assert_eq!(ci["spec"]["clusterType"], "k8s,ecs,kdd");
        assert_eq!(ci["spec"]["datastoreReady"], true);
        assert_eq!(ci["spec"]["clusterGUID"].as_str().map(str::len), Some(32));
        let fc = get(&sb, &gvr(GROUP, "v1", "felixconfigurations"), "", "default").unwrap();
        assert_eq!(
            fc["spec"],
            json!({"logSeverityScreen": "Info", "reportingInterval": "0s"})
        );
        assert!(!ensure_default_config(&sb, &p), "already there");
        let n = sb
            .store()
            .list(
                &gvr(GROUP, "v1", "felixconfigurations"),
                None,
                &ListOptions::default(),
            )
            .unwrap()
            .items
            .len();
        assert_eq!(n, 1);
    }
}
