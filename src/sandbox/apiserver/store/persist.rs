//! The store as an image that outlives the process, and what starting a stored
//! cluster at a given Kubernetes minor means (restart, upgrade, or refusal).
//!
//! Pure: no file is read or written here (`sandbox::datadir` does that). The image
//! holds what etcd holds for a real control plane: every object in its storage shape
//! (the v1 shape of every built-in kind, `convert.rs`), the resourceVersion counter, and
//! the minor the objects were last served at. Watch history is not kept: a watch from
//! before a restart answers 410 Expired, as after an etcd compaction.
//!
//! An upgrade rewrites no object. As on a real cluster, the objects stay what the
//! previous minor stored; only what is served changes (`versions::WINDOWS`). Objects of
//! a kind the new minor no longer serves at all (PodSecurityPolicy from 1.25) stay in
//! the image, unreachable, as they stay in etcd.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::{State, Store, meta_str};
use crate::sandbox::apiserver::types::GroupResource;
use crate::sandbox::apiserver::versions::KubernetesVersion;

/// What the image's `format` field says; another value is refused.
pub const FORMAT: &str = "calico-migrate-sandbox-store/1";

/// The store as written to a data dir.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoreImage {
    pub format: String,
    /// The minor the objects were last served at, as `1.N`.
    pub kubernetes: String,
    /// The last resourceVersion handed out; the next write gets the one after.
    pub resource_version: u64,
    /// Every object, in storage shape, ordered by group, resource, namespace, name.
    pub objects: Vec<StoredObject>,
}

/// One object and the group/resource it is stored under.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredObject {
    pub group: String,
    pub resource: String,
    pub object: Value,
}

/// Why an image cannot become a store.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImageError {
    #[error("it is format \"{0}\", not {FORMAT}: it was written by another program or version")]
    Format(String),
    #[error("its Kubernetes version is unreadable ({0})")]
    Version(String),
    #[error("object {index} ({what}) has no metadata.name")]
    Unnamed { index: usize, what: String },
    #[error("object {index} ({what}) is stored twice")]
    Duplicate { index: usize, what: String },
    #[error("object {index} ({what}) has resourceVersion {rv}, above the store's {store}")]
    FutureVersion {
        index: usize,
        what: String,
        rv: u64,
        store: u64,
    },
    #[error("CustomResourceDefinition {name} cannot be served: {why}")]
    Crd { name: String, why: String },
}

/// What starting a stored cluster at a minor does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    /// The same minor: a plain restart.
    Restart(KubernetesVersion),
    /// The next minor: an upgrade of the control plane.
    Upgrade {
        from: KubernetesVersion,
        to: KubernetesVersion,
    },
}

/// A minor a stored cluster cannot be started at.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    // eksctl docs, "Cluster upgrades": "Control plane version upgrades must be done for
    // one minor version at a time" (EKS rejects any other target version).
    #[error(
        "the cluster in the data dir runs Kubernetes {from}, and {to} skips {next}: a control \
         plane is upgraded one minor at a time, as on EKS; start it at {next} first"
    )]
    Skip {
        from: KubernetesVersion,
        to: KubernetesVersion,
        next: KubernetesVersion,
    },
    // EKS User Guide, "Update existing cluster to new Kubernetes version": "Once you
    // upgrade a cluster, you can't downgrade to a previous version."
    #[error(
        "the cluster in the data dir runs Kubernetes {from}, and {to} would downgrade it, \
         which EKS cannot do either: start it at {from} (a restart) or at the next minor \
         (an upgrade), or use another --data-dir"
    )]
    Downgrade {
        from: KubernetesVersion,
        to: KubernetesVersion,
    },
}

/// Starting a cluster stored at `stored` at `requested`.
pub fn transition(
    stored: KubernetesVersion,
    requested: KubernetesVersion,
) -> Result<Transition, TransitionError> {
    let (s, r) = (stored.minor(), requested.minor());
    if r == s {
        Ok(Transition::Restart(stored))
    } else if r < s {
        Err(TransitionError::Downgrade {
            from: stored,
            to: requested,
        })
    } else if r == s + 1 {
        Ok(Transition::Upgrade {
            from: stored,
            to: requested,
        })
    } else {
        // s + 1 <= r - 1 <= NEWEST, so the next minor is in range.
        let next = KubernetesVersion::new(s + 1).unwrap_or(requested);
        Err(TransitionError::Skip {
            from: stored,
            to: requested,
            next,
        })
    }
}

impl StoreImage {
    /// The minor the image was last served at.
    pub fn kubernetes_version(&self) -> Result<KubernetesVersion, ImageError> {
        KubernetesVersion::parse(&self.kubernetes)
            .map_err(|e| ImageError::Version(format!("\"{}\": {e}", self.kubernetes)))
    }
}

fn describe(o: &StoredObject) -> String {
    let ns = meta_str(&o.object, "namespace");
    let name = meta_str(&o.object, "name");
    let res = if o.group.is_empty() {
        o.resource.clone()
    } else {
        format!("{}.{}", o.resource, o.group)
    };
    if ns.is_empty() {
        format!("{res} {name}")
    } else {
        format!("{res} {ns}/{name}")
    }
}

impl Store {
    /// Everything a restart needs, taken under one lock so it is one consistent state.
    pub fn image(&self) -> StoreImage {
        let st = self.lock();
        let mut groups: Vec<&GroupResource> = st.objects.keys().collect();
        groups.sort();
        let mut objects = Vec::new();
        for gr in groups {
            for v in st.objects[gr].values() {
                objects.push(StoredObject {
                    group: gr.group.clone(),
                    resource: gr.resource.clone(),
                    object: (**v).clone(),
                });
            }
        }
        StoreImage {
            format: FORMAT.to_string(),
            kubernetes: st.kubernetes.to_string(),
            resource_version: st.rv,
            objects,
        }
    }

    /// A store holding `image`'s objects, serving the built-ins of `kubernetes` and every
    /// stored CRD. Objects keep their resourceVersions; the counter continues from the
    /// image's. Nothing is checked about the minor here: see [`transition`].
    pub fn from_image(
        image: StoreImage,
        history: usize,
        seed: u64,
        kubernetes: KubernetesVersion,
    ) -> Result<Store, ImageError> {
        if image.format != FORMAT {
            return Err(ImageError::Format(image.format));
        }
        // Fresh uids must not repeat the stored ones: draw from a stream of their own.
        let mut st = State::new(
            history,
            seed ^ image.resource_version.rotate_left(32),
            kubernetes,
        );
        st.rv = image.resource_version;
        // Watches from before the restart cannot resume: their history is gone.
        st.floor = image.resource_version;
        let mut crds = Vec::new();
        for (index, o) in image.objects.into_iter().enumerate() {
            let what = describe(&o);
            let name = meta_str(&o.object, "name").to_string();
            if name.is_empty() {
                return Err(ImageError::Unnamed { index, what });
            }
            let rv: u64 = meta_str(&o.object, "resourceVersion").parse().unwrap_or(0);
            if rv > st.rv {
                return Err(ImageError::FutureVersion {
                    index,
                    what,
                    rv,
                    store: st.rv,
                });
            }
            let ns = meta_str(&o.object, "namespace").to_string();
            let gr = GroupResource {
                group: o.group,
                resource: o.resource,
            };
            if gr.group == "apiextensions.k8s.io" && gr.resource == "customresourcedefinitions" {
                crds.push(o.object.clone());
            }
            let map = st.objects.entry(gr).or_default();
            if map.insert((ns, name), Arc::new(o.object)).is_some() {
                return Err(ImageError::Duplicate { index, what });
            }
        }
        for crd in crds {
            st.serve_crd(&crd).map_err(|e| ImageError::Crd {
                name: meta_str(&crd, "name").to_string(),
                why: e.to_string(),
            })?;
        }
        Ok(Store {
            state: std::sync::Arc::new(std::sync::Mutex::new(st)),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sandbox::apiserver::store::{ListOptions, WriteOptions};
    use crate::sandbox::apiserver::types::Gvr;
    use serde_json::json;

    fn kv(m: u32) -> KubernetesVersion {
        KubernetesVersion::new(m).unwrap()
    }

    #[test]
    fn one_minor_up_upgrades_the_same_restarts_others_are_refused() {
        assert_eq!(transition(kv(21), kv(21)), Ok(Transition::Restart(kv(21))));
        assert_eq!(
            transition(kv(21), kv(22)),
            Ok(Transition::Upgrade {
                from: kv(21),
                to: kv(22)
            })
        );
        let skip = transition(kv(21), kv(23)).unwrap_err();
        assert_eq!(
            skip.to_string(),
            "the cluster in the data dir runs Kubernetes 1.21, and 1.23 skips 1.22: a control \
             plane is upgraded one minor at a time, as on EKS; start it at 1.22 first"
        );
        let down = transition(kv(25), kv(24)).unwrap_err();
        assert!(matches!(down, TransitionError::Downgrade { .. }));
        assert!(
            down.to_string().starts_with(
                "the cluster in the data dir runs Kubernetes 1.25, and 1.24 would downgrade it"
            ),
            "{down}"
        );
    }

    fn crd_v1beta1() -> Value {
        json!({
            "apiVersion": "apiextensions.k8s.io/v1beta1",
            "kind": "CustomResourceDefinition",
            "metadata": {"name": "felixconfigurations.crd.projectcalico.org"},
            "spec": {"group": "crd.projectcalico.org", "version": "v1", "scope": "Cluster",
                     "names": {"kind": "FelixConfiguration", "plural": "felixconfigurations"}}
        })
    }

    #[test]
    fn a_seed_at_a_later_minor_keeps_a_retired_kind_as_an_upgrade_would() {
        let s = Store::new(100, 1, kv(25));
        let psp = json!({"apiVersion": "policy/v1beta1", "kind": "PodSecurityPolicy",
                         "metadata": {"name": "tigera-operator"}, "spec": {}});
        assert_eq!(s.load(vec![psp]).map_err(|e| e.to_string()), Ok(1));
        let gvr = Gvr::new("policy", "v1beta1", "podsecuritypolicies");
        assert!(s.list(&gvr, None, &ListOptions::default()).is_err());
        assert!(
            s.image()
                .objects
                .iter()
                .any(|o| o.resource == "podsecuritypolicies")
        );
        // A kind no minor serves is still refused, and so is a retired one that this
        // minor serves at another version (the v1beta1 PDB at 1.25 is served at v1).
        let none =
            json!({"apiVersion": "policy/v1beta1", "kind": "Nonsense", "metadata": {"name": "x"}});
        assert!(s.load(vec![none]).is_err());
        let pdb = json!({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                         "metadata": {"name": "d", "namespace": "kube-system"}, "spec": {}});
        assert!(s.load(vec![pdb]).is_err());
    }

    #[test]
    fn an_image_upgraded_serves_what_the_next_minor_serves() {
        let s = Store::new(100, 1, kv(24));
        let crd = Gvr::new("apiextensions.k8s.io", "v1", "customresourcedefinitions");
        let w = WriteOptions::default();
        s.create(&crd, "", crd_v1beta1_as_v1(), &w).unwrap();
        let psp = Gvr::new("policy", "v1beta1", "podsecuritypolicies");
        s.create(
            &psp,
            "",
            json!({"apiVersion": "policy/v1beta1", "kind": "PodSecurityPolicy", "metadata": {"name": "p"}, "spec": {}}),
            &w,
        )
        .unwrap();
        let pdb1 = Gvr::new("policy", "v1beta1", "poddisruptionbudgets");
        s.create(
            &pdb1,
            "kube-system",
            json!({"apiVersion": "policy/v1beta1", "kind": "PodDisruptionBudget",
                   "metadata": {"name": "d", "namespace": "kube-system"},
                   "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"k": "v"}}}}),
            &w,
        )
        .unwrap();
        let before = s.image();
        let rv = s.resource_version();
        assert_eq!(before.resource_version, rv);
        let text = serde_json::to_string(&before).unwrap();
        let image: StoreImage = serde_json::from_str(&text).unwrap();
        assert_eq!(image, before);

        let up = Store::from_image(image, 100, 1, kv(25)).unwrap();
        assert_eq!(up.kubernetes_version(), kv(25));
        assert_eq!(up.resource_version(), rv);
        // PSPs are no longer served; the object stays stored, unreachable.
        assert!(up.list(&psp, None, &ListOptions::default()).is_err());
        assert!(
            up.image()
                .objects
                .iter()
                .any(|o| o.resource == "podsecuritypolicies")
        );
        // The PDB reads at policy/v1 with its selector, not at v1beta1.
        assert!(up.get(&pdb1, "kube-system", "d").is_err());
        let pdb = up
            .get(
                &Gvr::new("policy", "v1", "poddisruptionbudgets"),
                "kube-system",
                "d",
            )
            .unwrap();
        assert_eq!(pdb["spec"]["selector"], json!({"matchLabels": {"k": "v"}}));
        // The CRD's type is served again, and the next write continues the counter.
        let fc = Gvr::new("crd.projectcalico.org", "v1", "felixconfigurations");
        let made = up
            .create(
                &fc,
                "",
                json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "FelixConfiguration", "metadata": {"name": "default"}}),
                &w,
            )
            .unwrap();
        assert_eq!(
            made["metadata"]["resourceVersion"],
            json!((rv + 1).to_string())
        );
    }

    fn crd_v1beta1_as_v1() -> Value {
        let mut crd = crate::sandbox::apiserver::convert::crd_v1beta1_to_v1(crd_v1beta1());
        crd["apiVersion"] = json!("apiextensions.k8s.io/v1");
        crd
    }

    #[test]
    fn damaged_images_are_refused() {
        let s = Store::new(100, 1, kv(21));
        let mut img = s.image();
        img.format = "something/2".into();
        assert!(matches!(
            Store::from_image(img, 100, 1, kv(21)),
            Err(ImageError::Format(_))
        ));
        let mut img = s.image();
        img.objects.push(img.objects[0].clone());
        assert!(matches!(
            Store::from_image(img, 100, 1, kv(21)),
            Err(ImageError::Duplicate { .. })
        ));
        let mut img = s.image();
        img.resource_version = 1;
        assert!(matches!(
            Store::from_image(img, 100, 1, kv(21)),
            Err(ImageError::FutureVersion { .. })
        ));
    }
}
