//! A DaemonSet's revision history, as the DaemonSet controller keeps it in
//! ControllerRevisions (kubernetes pkg/controller/daemon/update.go `constructHistory`:
//! a revision whose data `Match`es the template is the current one, its `Revision` raised
//! to the highest of the others + 1; none: `snapshot` creates `<name>-<hash>` labelled
//! with the hash, data `getPatch`'s template with `$patch: replace`), and which of its
//! pods are up to date (pkg/controller/daemon/util/daemonset_util.go `IsPodUpdated`:
//! the `controller-revision-hash` label equal to the current hash, or the
//! `pod-template-generation` label equal to `GetTemplateGeneration`, the annotation
//! `deprecated.daemonset.template.generation`). Read at kubernetes master as stored on
//! 2026-12-03.
//!
//! Why it matters: a pod is up to date when its `controller-revision-hash` label names
//! the current revision *or* its `pod-template-generation` label equals the
//! DaemonSet's template generation. So a change outside the pod template (the update
//! strategy) restarts no pod, and a template put back as it was (a rollback) finds its
//! old revision again, whose pods are up to date without a restart.
//!
//! Modelled less than upstream: the hash is the sandbox's own (FNV over the template's
//! JSON, not `controller.ComputeHash`), hash collisions and `collisionCount` are not
//! handled, duplicate current revisions are not merged (the sandbox never makes two),
//! and old revisions are kept whatever `revisionHistoryLimit` says (`cleanupHistory`).

use serde_json::{Value, json};

use super::{gvr, label, name, namespace, owned_by, owner_ref, uid, wopts};
use crate::sandbox::Sandbox;
use crate::sandbox::apiserver::store::TEMPLATE_GENERATION;

const MANAGER: &str = "sandbox-controllers";

/// The label the DaemonSet controller puts on its revisions and pods (apps/v1
/// `DefaultDaemonSetUniqueLabelKey`).
pub const REVISION_HASH: &str = "controller-revision-hash";
/// The label of the template generation a pod was created from (extensions
/// `DaemonSetTemplateGenerationKey`).
pub const POD_TEMPLATE_GENERATION: &str = "pod-template-generation";

pub fn revisions_gvr() -> crate::sandbox::Gvr {
    gvr("apps", "v1", "controllerrevisions")
}

/// What a revision stores: a patch that puts the template back (`getPatch`).
pub fn revision_data(ds: &Value) -> Value {
    let mut template = ds
        .pointer("/spec/template")
        .cloned()
        .unwrap_or_else(|| json!({}));
    if let Some(m) = template.as_object_mut() {
        m.insert("$patch".into(), json!("replace"));
    }
    json!({"spec": {"template": template}})
}

fn revision_number(cr: &Value) -> i64 {
    cr.get("revision").and_then(Value::as_i64).unwrap_or(0)
}

/// The DaemonSet's template generation (`GetTemplateGeneration`: the annotation the API
/// server keeps).
pub fn template_generation(ds: &Value) -> Option<i64> {
    ds.pointer("/metadata/annotations")
        .and_then(|a| a.get(TEMPLATE_GENERATION))
        .and_then(Value::as_str)
        .and_then(|v| v.parse().ok())
}

/// The current revision of `ds` among `revisions` (every ControllerRevision of its
/// namespace): the one whose data is its template, made the newest if an older one
/// (a template put back); created when there is none. Returns its hash.
pub fn current_hash(sb: &Sandbox, ds: &Value, revisions: &[&Value]) -> String {
    let owned: Vec<&Value> = revisions
        .iter()
        .copied()
        .filter(|cr| owned_by(cr, uid(ds)))
        .collect();
    let data = revision_data(ds);
    let (current, old): (Vec<&Value>, Vec<&Value>) = owned
        .iter()
        .copied()
        .partition(|cr| cr.get("data") == Some(&data));
    let next = old.iter().map(|cr| revision_number(cr)).max().unwrap_or(0) + 1;
    let g = revisions_gvr();
    match current.iter().max_by_key(|cr| revision_number(cr)) {
        Some(cur) => {
            if revision_number(cur) < next {
                let _ = super::merge(
                    sb,
                    &g,
                    namespace(cur),
                    name(cur),
                    crate::sandbox::Subresource::Main,
                    &json!({"revision": next}),
                    MANAGER,
                );
            }
            label(cur, REVISION_HASH)
                .map(str::to_string)
                .unwrap_or_else(|| name(cur).to_string())
        }
        None => {
            let hash = template_hash(ds);
            let mut labels = ds
                .pointer("/spec/template/metadata/labels")
                .cloned()
                .unwrap_or_else(|| json!({}));
            labels[REVISION_HASH] = json!(hash);
            let cr = json!({
                "apiVersion": "apps/v1",
                "kind": "ControllerRevision",
                "metadata": {
                    "name": format!("{}-{hash}", name(ds)),
                    "namespace": namespace(ds),
                    "labels": labels,
                    "ownerReferences": owner_ref("apps/v1", "DaemonSet", ds),
                },
                "data": data,
                "revision": next,
            });
            let _ = sb.store().create(&g, namespace(ds), cr, &wopts(MANAGER));
            hash
        }
    }
}

/// `IsPodUpdated`: the pod names the current revision, or the template generation.
pub fn pod_updated(pod: &Value, hash: &str, template_generation: Option<i64>) -> bool {
    labels_updated(
        label(pod, REVISION_HASH),
        label(pod, POD_TEMPLATE_GENERATION),
        hash,
        template_generation,
    )
}

/// [`pod_updated`] from the pod's two labels.
pub fn labels_updated(
    revision_hash: Option<&str>,
    pod_template_generation: Option<&str>,
    hash: &str,
    template_generation: Option<i64>,
) -> bool {
    let by_hash = !hash.is_empty() && revision_hash == Some(hash);
    let by_generation = template_generation
        .is_some_and(|g| pod_template_generation == Some(g.to_string().as_str()));
    by_hash || by_generation
}

/// A stable short hash of the pod template (the real controller names revisions
/// `<daemonset>-<hash>`).
pub fn template_hash(o: &Value) -> String {
    let t = o
        .pointer("/spec/template")
        .map(Value::to_string)
        .unwrap_or_default();
    let h = t.bytes().fold(0xcbf29ce484222325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100000001b3)
    });
    format!("{:x}", h % 0xffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::controllers::{ds_gvr, list, merge, pods_gvr, workloads};
    use crate::sandbox::{PatchKind, SandboxOptions, Subresource};
    use std::sync::Arc;

    fn agent(image: &str) -> Value {
        json!({"apiVersion": "apps/v1", "kind": "DaemonSet",
               "metadata": {"name": "agent", "namespace": "default"},
               "spec": {"selector": {"matchLabels": {"app": "agent"}},
                        "updateStrategy": {"type": "OnDelete"},
                        "template": {"metadata": {"labels": {"app": "agent"}},
                                     "spec": {"containers": [{"name": "c", "image": image}]}}}})
    }

    /// One pass of the DaemonSet controller over two nodes; every pod made Ready.
    fn pass(sb: &Sandbox) {
        let nodes: Vec<Arc<Value>> = ["a", "b"]
            .iter()
            .map(|n| Arc::new(json!({"metadata": {"name": n}})))
            .collect();
        let pods: Vec<Arc<Value>> = list(sb, &pods_gvr(), None)
            .into_iter()
            .map(Arc::new)
            .collect();
        workloads::reconcile(sb, &nodes, &pods);
        for p in list(sb, &pods_gvr(), Some("default")) {
            let ready = json!({"status": {"conditions": [{"type": "Ready", "status": "True"}]}});
            let _ = merge(
                sb,
                &pods_gvr(),
                "default",
                name(&p),
                Subresource::Status,
                &ready,
                "test",
            );
        }
    }

    fn pods_by_node(sb: &Sandbox) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = list(sb, &pods_gvr(), Some("default"))
            .iter()
            .map(|p| {
                let node = p
                    .pointer("/spec/nodeName")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                (node.to_string(), name(p).to_string())
            })
            .collect();
        out.sort();
        out
    }

    fn patch(sb: &Sandbox, body: Value) {
        let r = sb.store().patch(
            &ds_gvr(),
            "default",
            "agent",
            PatchKind::Merge,
            body.to_string().as_bytes(),
            &wopts("test"),
        );
        assert!(r.is_ok(), "{r:?}");
    }

    fn daemonset(sb: &Sandbox) -> Value {
        sb.store()
            .get(&ds_gvr(), "default", "agent")
            .expect("the DaemonSet")
    }

    /// A strategy change bumps metadata.generation but not the template generation and
    /// restarts no pod; a template put back as it was finds its first revision again,
    /// whose pods stay (kubernetes pkg/controller/daemon/update.go constructHistory,
    /// util IsPodUpdated).
    #[test]
    fn only_a_template_change_outdates_pods_and_a_template_put_back_finds_its_revision() {
        let sb = Sandbox::new(SandboxOptions::default());
        let r = sb
            .store()
            .create(&ds_gvr(), "default", agent("v1"), &wopts("test"));
        assert!(r.is_ok(), "{r:?}");
        pass(&sb);
        let first = pods_by_node(&sb);
        assert_eq!(first.len(), 2, "{first:?}");
        patch(
            &sb,
            json!({"spec": {"updateStrategy": {"type": "RollingUpdate",
                                                        "rollingUpdate": {"maxUnavailable": 1}}}}),
        );
        let ds = daemonset(&sb);
        assert_eq!(ds.pointer("/metadata/generation"), Some(&json!(2)));
        assert_eq!(template_generation(&ds), Some(1));
        pass(&sb);
        assert_eq!(
            pods_by_node(&sb),
            first,
            "a strategy change restarts nothing"
        );

        // v2 on node a only (OnDelete, its pod deleted by hand), then v1 back.
        patch(
            &sb,
            json!({"spec": {"updateStrategy": {"type": "OnDelete", "rollingUpdate": null},
                                   "template": {"spec": {"containers": [{"name": "c", "image": "v2"}]}}}}),
        );
        assert_eq!(template_generation(&daemonset(&sb)), Some(2));
        assert!(crate::sandbox::controllers::delete(
            &sb,
            &pods_gvr(),
            "default",
            &first[0].1
        ));
        pass(&sb);
        let moved = pods_by_node(&sb);
        assert_ne!(moved[0], first[0]);
        assert_eq!(moved[1], first[1]);
        patch(
            &sb,
            json!({"spec": {"template": {"spec": {"containers": [{"name": "c", "image": "v1"}]}}}}),
        );
        let ds = daemonset(&sb);
        assert_eq!(template_generation(&ds), Some(3));
        pass(&sb);
        let revisions = list(&sb, &revisions_gvr(), Some("default"));
        assert_eq!(
            revisions.len(),
            2,
            "the first revision is found again, not copied"
        );
        let hash = current_hash(&sb, &ds, &revisions.iter().collect::<Vec<_>>());
        let pods = list(&sb, &pods_gvr(), Some("default"));
        let on = |node: &str| {
            pods.iter()
                .find(|p| p.pointer("/spec/nodeName") == Some(&json!(node)))
                .expect("a pod")
        };
        assert!(pod_updated(on("b"), &hash, Some(3)), "node b never left v1");
        assert!(!pod_updated(on("a"), &hash, Some(3)), "node a runs v2");
        let newest = revisions.iter().map(revision_number).max();
        let v1 = revisions
            .iter()
            .find(|r| label(r, REVISION_HASH) == label(on("b"), REVISION_HASH))
            .map(revision_number);
        assert_eq!(v1, newest, "v1's revision is the newest again");
    }

    #[test]
    fn a_pod_is_up_to_date_by_hash_or_by_template_generation() {
        let pod = |hash: &str, generation: &str| json!({"metadata": {"labels": {REVISION_HASH: hash, POD_TEMPLATE_GENERATION: generation}}});
        assert!(pod_updated(&pod("abc", "1"), "abc", Some(3)));
        assert!(pod_updated(&pod("old", "3"), "abc", Some(3)));
        assert!(!pod_updated(&pod("old", "1"), "abc", Some(3)));
        assert!(!pod_updated(&pod("old", "1"), "", None));
    }
}

#[cfg(test)]
mod seed_tests {
    use super::*;
    use crate::sandbox::controllers::{ds_gvr, list, list_shared, nodes_gvr, pods_gvr, workloads};

    /// The seed's revision of each DaemonSet is the one the controller finds for its
    /// stored template: a pass creates none, and every seeded pod is up to date by hash.
    /// (Otherwise a template put back by a rollback would not find the seeded pods'
    /// revision, and would restart the nodes that never left it.)
    #[test]
    fn the_seeded_revisions_are_the_current_ones() {
        let sb = crate::sandbox::controllers::small_seeded_sandbox(3);
        let before = list(&sb, &revisions_gvr(), None).len();
        assert!(before > 0);
        let nodes = list_shared(&sb, &nodes_gvr());
        let pods = list_shared(&sb, &pods_gvr());
        workloads::reconcile(&sb, &nodes, &pods);
        let revisions = list(&sb, &revisions_gvr(), None);
        assert_eq!(revisions.len(), before, "a pass made a revision of its own");
        for ds in list(&sb, &ds_gvr(), None) {
            let hash = current_hash(&sb, &ds, &revisions.iter().collect::<Vec<_>>());
            for p in list(&sb, &pods_gvr(), Some(namespace(&ds)))
                .iter()
                .filter(|p| owned_by(p, uid(&ds)))
            {
                assert_eq!(label(p, REVISION_HASH), Some(hash.as_str()), "{}", name(p));
            }
        }
    }
}
