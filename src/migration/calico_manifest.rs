//! What align-versions takes from the target Calico's own manifest install (for
//! v3.30.3, projectcalico/calico manifests/calico-policy-only.yaml): the CRDs and RBAC
//! that version's agents read, created or updated before any agent runs it, and the
//! images of calico-node and typha. Pure: objects in, objects out.
//!
//! Left out on purpose (docs/plan.md, "The current path"):
//! - calico-kube-controllers (its Deployment, ServiceAccount, RBAC and PDB): its policy,
//!   namespace, service-account and workload-endpoint controllers serve an etcd datastore,
//!   and its node controller cleans a deleted node's Calico IPAM data, which EKS with the
//!   AWS VPC CNI does not use (docs.tigera.io, reference/kube-controllers/configuration);
//!   the aws-calico chart never ran it. The operator renders its own in calico-system.
//! - ConfigMap calico-config and the install-cni init container: Calico's CNI, which the
//!   VPC CNI replaces on EKS.
//! - Env the manifest sets that the chart does not (USE_POD_CIDR, CALICO_MANAGE_CNI): both
//!   concern Calico's CNI, and operator v1.38.6 refuses a calico-node with env vars no
//!   converter handler consumes (tigera/operator v1.38.6
//!   pkg/controller/migration/convert/convert.go:73-74, "unexpected env vars").
//! - PodDisruptionBudgets and the typha Service: the chart's own stay.
//! - RBAC other than calico-node's: ClusterRole and binding calico-cni-plugin are the
//!   identity of Calico's CNI plugin (the VPC CNI replaces it on EKS), and
//!   calico-tier-getter lets the kube-controller-manager read `projectcalico.org` tiers,
//!   which only the Calico API server serves (the policy-only manifest does not run it).

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::facts::{name_of, str_at};

/// The one identity whose RBAC the alignment applies: calico-node's (typha runs as it
/// too in the chart and in the manifest); see the module doc for the others.
const AGENT_IDENTITY: &str = "calico-node";

/// The kube-system workloads whose images the alignment moves, and their containers.
pub const CALICO_NODE: &str = "calico-node";
pub const CALICO_TYPHA: &str = "calico-typha";

/// What the alignment applies, in order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Alignment {
    /// Every CustomResourceDefinition of the manifest.
    pub crds: Vec<Value>,
    /// calico-node's ServiceAccount, ClusterRole and ClusterRoleBinding, in that order.
    pub rbac: Vec<Value>,
    /// Image per container name, per workload (`calico-node`, `calico-typha`).
    pub images: BTreeMap<&'static str, BTreeMap<String, String>>,
}

/// Why the manifest cannot be aligned to.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AlignError {
    #[error(
        "the Calico manifest has no {0}; give the target version's policy-only manifest \
         (manifests/calico-policy-only.yaml of that Calico release)"
    )]
    Missing(String),
    #[error(
        "the Calico manifest runs {image} in {workload}, not Calico {target}; give the \
         manifest of Calico {target} or a profile for the version it installs"
    )]
    OtherVersion {
        workload: String,
        image: String,
        target: String,
    },
}

fn kind_of(o: &Value) -> &str {
    str_at(o, "/kind").unwrap_or_default()
}

fn agent_rbac(o: &Value) -> bool {
    name_of(o) == AGENT_IDENTITY
}

/// The images of one workload's pod template, by container name (init containers
/// included).
fn images_of(workload: &Value) -> BTreeMap<String, String> {
    ["initContainers", "containers"]
        .iter()
        .filter_map(|k| workload.pointer(&format!("/spec/template/spec/{k}")))
        .filter_map(Value::as_array)
        .flatten()
        .filter_map(|c| Some((str_at(c, "/name")?.into(), str_at(c, "/image")?.into())))
        .collect()
}

/// The tag of an image reference (`docker.io/calico/node:v3.30.3` -> `v3.30.3`).
pub fn image_tag(image: &str) -> Option<&str> {
    let (_, tag) = image.rsplit_once(':')?;
    (!tag.contains('/') && !image.contains('@')).then_some(tag)
}

/// Read the alignment out of the manifest's objects, checking that it is the
/// manifest of `target` (its calico/node image carries that tag).
pub fn alignment(manifest: &[Value], target: &str) -> Result<Alignment, AlignError> {
    let crds: Vec<Value> = manifest
        .iter()
        .filter(|o| kind_of(o) == "CustomResourceDefinition")
        .cloned()
        .collect();
    if crds.is_empty() {
        return Err(AlignError::Missing("CustomResourceDefinition".into()));
    }
    let mut rbac = Vec::new();
    for kind in ["ServiceAccount", "ClusterRole", "ClusterRoleBinding"] {
        rbac.extend(
            manifest
                .iter()
                .filter(|o| kind_of(o) == kind && agent_rbac(o))
                .cloned(),
        );
    }
    if !rbac
        .iter()
        .any(|o| kind_of(o) == "ClusterRole" && name_of(o) == CALICO_NODE)
    {
        return Err(AlignError::Missing("ClusterRole calico-node".into()));
    }
    let mut images = BTreeMap::new();
    for (workload, kind, main) in [
        (CALICO_NODE, "DaemonSet", "calico-node"),
        (CALICO_TYPHA, "Deployment", "calico-typha"),
    ] {
        let w = manifest
            .iter()
            .find(|o| kind_of(o) == kind && name_of(o) == workload)
            .ok_or_else(|| AlignError::Missing(format!("{kind} {workload}")))?;
        let by_name = images_of(w);
        let image = by_name
            .get(main)
            .ok_or_else(|| AlignError::Missing(format!("container {main} in {kind} {workload}")))?;
        if image_tag(image) != Some(target) {
            return Err(AlignError::OtherVersion {
                workload: format!("{kind} {workload}"),
                image: image.clone(),
                target: target.into(),
            });
        }
        images.insert(workload, by_name);
    }
    Ok(Alignment { crds, rbac, images })
}

/// The ClusterRole to apply over `live`: the manifest's rules, then every live rule
/// they do not already hold, so the agents still on the old version keep what they
/// read until their node's turn (rollback restores the captured role).
pub fn role_over(manifest_role: &Value, live: Option<&Value>) -> Value {
    let mut role = manifest_role.clone();
    let mut rules: Vec<Value> = role
        .get("rules")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    for old in live
        .and_then(|l| l.get("rules"))
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if !rules.contains(old) {
            rules.push(old.clone());
        }
    }
    role["rules"] = Value::Array(rules);
    role
}

/// A merge patch moving the containers of `live` (a pod-template workload) to the
/// images of `want` by container name; None when every container already has its
/// image. Containers the manifest does not name keep theirs; merge patches replace
/// lists whole, so the lists are sent complete.
pub fn images_patch(live: &Value, want: &BTreeMap<String, String>) -> Option<Value> {
    let mut spec = serde_json::Map::new();
    for key in ["initContainers", "containers"] {
        let Some(list) = live
            .pointer(&format!("/spec/template/spec/{key}"))
            .and_then(Value::as_array)
        else {
            continue;
        };
        let mut out = list.clone();
        let mut changed = false;
        for c in &mut out {
            let name = str_at(c, "/name").unwrap_or_default();
            if let Some(image) = want.get(name)
                && str_at(c, "/image") != Some(image.as_str())
            {
                c["image"] = json!(image);
                changed = true;
            }
        }
        if changed {
            spec.insert(key.to_string(), Value::Array(out));
        }
    }
    (!spec.is_empty()).then(|| json!({"spec": {"template": {"spec": spec}}}))
}

/// Whether every rule of `want` is held by `live`'s rules.
pub fn holds_rules(live: &Value, want: &Value) -> bool {
    let rules = |o: &Value| {
        o.get("rules")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default()
    };
    let have = rules(live);
    rules(want).iter().all(|r| have.contains(r))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn workload(kind: &str, name: &str, image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": kind, "metadata": {"name": name, "namespace": "kube-system"},
               "spec": {"template": {"spec": {"containers": [{"name": name, "image": image}]}}}})
    }

    fn manifest(tag: &str) -> Vec<Value> {
        vec![
            json!({"apiVersion": "apiextensions.k8s.io/v1", "kind": "CustomResourceDefinition", "metadata": {"name": "tiers.crd.projectcalico.org"}}),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "calico-kube-controllers", "namespace": "kube-system"}}),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "calico-cni-plugin", "namespace": "kube-system"}}),
            json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "calico-node", "namespace": "kube-system"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "calico-tier-getter"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRoleBinding", "metadata": {"name": "calico-node"}}),
            json!({"apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole", "metadata": {"name": "calico-node"},
                   "rules": [{"apiGroups": ["crd.projectcalico.org"], "resources": ["tiers"], "verbs": ["list"]}]}),
            workload(
                "DaemonSet",
                "calico-node",
                &format!("docker.io/calico/node:{tag}"),
            ),
            workload(
                "Deployment",
                "calico-typha",
                &format!("docker.io/calico/typha:{tag}"),
            ),
            workload(
                "Deployment",
                "calico-kube-controllers",
                &format!("docker.io/calico/kube-controllers:{tag}"),
            ),
        ]
    }

    #[test]
    fn the_alignment_takes_crds_the_agents_rbac_and_images() {
        let a = alignment(&manifest("v3.30.3"), "v3.30.3").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(a.crds.len(), 1);
        let rbac: Vec<String> = a
            .rbac
            .iter()
            .map(|o| format!("{} {}", kind_of(o), name_of(o)))
            .collect();
        assert_eq!(
            rbac,
            [
                "ServiceAccount calico-node",
                "ClusterRole calico-node",
                "ClusterRoleBinding calico-node"
            ]
        );
        assert_eq!(
            a.images[CALICO_NODE]["calico-node"],
            "docker.io/calico/node:v3.30.3"
        );
        assert_eq!(a.images.len(), 2);
    }

    #[test]
    fn a_manifest_of_another_version_or_kind_is_refused() {
        let err = alignment(&manifest("v3.29.0"), "v3.30.3").err();
        assert!(
            matches!(err, Some(AlignError::OtherVersion { .. })),
            "{err:?}"
        );
        let mut m = manifest("v3.30.3");
        m.retain(|o| kind_of(o) != "CustomResourceDefinition");
        let err = alignment(&m, "v3.30.3").err().map(|e| e.to_string());
        assert!(err.is_some_and(|e| e.contains("no CustomResourceDefinition")));
    }

    #[test]
    fn the_role_keeps_old_rules_and_images_move_by_container_name() {
        let new = json!({"rules": [{"resources": ["tiers"]}]});
        let old = json!({"rules": [{"resources": ["pods"]}, {"resources": ["tiers"]}]});
        let r = role_over(&new, Some(&old));
        assert_eq!(
            r["rules"],
            json!([{"resources": ["tiers"]}, {"resources": ["pods"]}])
        );
        assert!(holds_rules(&r, &new) && holds_rules(&r, &old) && !holds_rules(&new, &old));
        let live = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "calico-node", "image": "quay.io/calico/node:v3.19.1", "env": [{"name": "A"}]},
            {"name": "sidecar", "image": "busybox:1"}]}}}});
        let want: BTreeMap<String, String> = [(
            "calico-node".to_string(),
            "docker.io/calico/node:v3.30.3".to_string(),
        )]
        .into();
        let p = images_patch(&live, &want).unwrap_or_default();
        let cs = &p["spec"]["template"]["spec"]["containers"];
        assert_eq!(cs[0]["image"], "docker.io/calico/node:v3.30.3");
        assert_eq!(cs[0]["env"], json!([{"name": "A"}]));
        assert_eq!(cs[1]["image"], "busybox:1");
        let mut moved = live.clone();
        moved["spec"]["template"]["spec"]["containers"] = cs.clone();
        assert_eq!(images_patch(&moved, &want), None);
        assert_eq!(image_tag("docker.io/calico/node:v3.30.3"), Some("v3.30.3"));
        assert_eq!(image_tag("localhost:5000/calico/node"), None);
    }
}
