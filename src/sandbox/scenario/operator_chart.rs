//! The aws-calico chart 0.3.11 as `helm install` renders it: tigera-operator v1.20.1 in
//! its own namespace, the 19 CRDs of Calico v3.20 and the operator as Helm *templates*
//! (so the release owns them and `helm uninstall` deletes them), a policy/v1beta1
//! PodSecurityPolicy, and `Installation default` as a post-install hook.
//!
//! The chart's files are embedded as published (`data/aws-calico-0.3.11/`, the files of
//! aws/eks-charts gh-pages `aws-calico-0.3.11.tgz`; a test checks them against the
//! tarball byte for byte). As for 0.3.10 (`chart`), the seed renders the templates,
//! cuts and orders the documents as Helm does and builds every live object from the
//! rendered text, so the stored manifest, the hook record and the objects cannot
//! disagree with what real Helm makes of the tarball (tests/sandbox_kubectl.rs compares
//! them with real helm 3 and 4).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::BASE_TIME;
use super::chart::{self, ChartValues, RenderedChart, RenderedDoc};
use super::chart_render::Context;
use crate::helm::Chart;

/// The published chart's files in the tarball's order. Paths are relative to the chart
/// directory.
pub const CHART_FILES: &[(&str, &str)] = &[
    (
        "Chart.yaml",
        include_str!("data/aws-calico-0.3.11/Chart.yaml"),
    ),
    (
        "values.yaml",
        include_str!("data/aws-calico-0.3.11/values.yaml"),
    ),
    (
        "templates/_helpers.tpl",
        include_str!("data/aws-calico-0.3.11/templates/_helpers.tpl"),
    ),
    (
        "templates/crds/crd.projectcalico.org_apiservers.yaml",
        include_str!("data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_apiservers.yaml"),
    ),
    (
        "templates/crds/crd.projectcalico.org_bgpconfigurations.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_bgpconfigurations.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_bgppeers.yaml",
        include_str!("data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_bgppeers.yaml"),
    ),
    (
        "templates/crds/crd.projectcalico.org_blockaffinities.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_blockaffinities.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_clusterinformations.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_clusterinformations.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_felixconfigurations.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_felixconfigurations.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_globalnetworkpolicies.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_globalnetworkpolicies.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_globalnetworksets.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_globalnetworksets.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_hostendpoints.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_hostendpoints.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_imagesets.yaml",
        include_str!("data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_imagesets.yaml"),
    ),
    (
        "templates/crds/crd.projectcalico.org_ipamblocks.yaml",
        include_str!("data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_ipamblocks.yaml"),
    ),
    (
        "templates/crds/crd.projectcalico.org_ipamconfigs.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_ipamconfigs.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_ipamhandles.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_ipamhandles.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_ippools.yaml",
        include_str!("data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_ippools.yaml"),
    ),
    (
        "templates/crds/crd.projectcalico.org_kubecontrollersconfigurations.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_kubecontrollersconfigurations.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_networkpolicies.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_networkpolicies.yaml"
        ),
    ),
    (
        "templates/crds/crd.projectcalico.org_networksets.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/crd.projectcalico.org_networksets.yaml"
        ),
    ),
    (
        "templates/crds/operator.tigera.io_installations_crd.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/operator.tigera.io_installations_crd.yaml"
        ),
    ),
    (
        "templates/crds/operator.tigera.io_tigerastatuses_crd.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/crds/operator.tigera.io_tigerastatuses_crd.yaml"
        ),
    ),
    (
        "templates/crs/custom-resources.yaml",
        include_str!("data/aws-calico-0.3.11/templates/crs/custom-resources.yaml"),
    ),
    (
        "templates/tigera-operator/00-namespace-tigera-operator.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/tigera-operator/00-namespace-tigera-operator.yaml"
        ),
    ),
    (
        "templates/tigera-operator/02-configmap-calico-resources.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/tigera-operator/02-configmap-calico-resources.yaml"
        ),
    ),
    (
        "templates/tigera-operator/02-podsecuritypolicy-tigera-operator.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/tigera-operator/02-podsecuritypolicy-tigera-operator.yaml"
        ),
    ),
    (
        "templates/tigera-operator/02-role-tigera-operator.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/tigera-operator/02-role-tigera-operator.yaml"
        ),
    ),
    (
        "templates/tigera-operator/02-rolebinding-tigera-operator.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/tigera-operator/02-rolebinding-tigera-operator.yaml"
        ),
    ),
    (
        "templates/tigera-operator/02-serviceaccount-tigera-operator.yaml",
        include_str!(
            "data/aws-calico-0.3.11/templates/tigera-operator/02-serviceaccount-tigera-operator.yaml"
        ),
    ),
    (
        "templates/tigera-operator/02-tigera-operator.yaml",
        include_str!("data/aws-calico-0.3.11/templates/tigera-operator/02-tigera-operator.yaml"),
    ),
    (
        ".helmignore",
        include_str!("data/aws-calico-0.3.11/.helmignore"),
    ),
    (
        "README.md",
        include_str!("data/aws-calico-0.3.11/README.md"),
    ),
];

/// The chart's values.yaml.
pub fn default_values() -> Map<String, Value> {
    file("values.yaml")
        .map(chart::yaml)
        .and_then(|v| v.as_object().cloned())
        .unwrap_or_default()
}

fn file(path: &str) -> Option<&'static str> {
    CHART_FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, t)| *t)
}

/// What the templates see for the release of `v` (its name, namespace and the values
/// its user set, over values.yaml). No template includes a named one (`_helpers.tpl`
/// defines `tigera-operator.image`, which nothing calls).
fn context(v: &ChartValues) -> Context {
    let mut values = Value::Object(default_values());
    chart::coalesce(&mut values, &Value::Object(v.user_values.clone()));
    Context {
        root: v.template_root(values, "aws-calico"),
        includes: BTreeMap::new(),
    }
}

/// The release of `v`: chart 0.3.11 rendered, documents in install order and the hook.
pub fn render(v: &ChartValues) -> Result<RenderedChart, String> {
    chart::render_templates(CHART_FILES, &context(v))
}

/// The chart as the release record stores it.
pub fn stored_chart() -> Chart {
    chart::stored_chart_of(CHART_FILES)
}

/// The release record's hooks, as Helm stores them after a successful install (helm
/// v3.17.3 pkg/release/hook.go `Hook`; pkg/releaseutil/manifest_sorter.go sets name,
/// kind, path and manifest; pkg/action/hooks.go `execHook` gives a hook without a
/// delete policy `before-hook-creation` and records the run).
pub fn hook_records(hooks: &[RenderedDoc]) -> Vec<Value> {
    hooks
        .iter()
        .map(|h| {
            let events: Vec<&str> = h.object["metadata"]["annotations"]["helm.sh/hook"]
                .as_str()
                .unwrap_or_default()
                .split(',')
                .map(str::trim)
                .collect();
            json!({
                "name": h.object["metadata"]["name"],
                "kind": h.object["kind"],
                "path": format!("aws-calico/templates/{}", h.source),
                "manifest": h.text,
                "events": events,
                "last_run": {"started_at": BASE_TIME, "completed_at": BASE_TIME, "phase": "Succeeded"},
                "delete_policies": ["before-hook-creation"],
            })
        })
        .collect()
}

/// The values the seeded 0.3.11 release was installed with: none beyond the chart's.
pub fn seed_values(release_name: &str, namespace: &str) -> ChartValues {
    let meta = chart::yaml(file("Chart.yaml").unwrap_or_default());
    ChartValues {
        release_name: release_name.into(),
        namespace: namespace.into(),
        chart_version: meta["version"].as_str().unwrap_or_default().into(),
        app_version: meta["appVersion"].as_str().unwrap_or_default().into(),
        user_values: Map::new(),
        ..ChartValues::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chart_renders_its_objects_and_the_installation_hook() {
        let r = render(&seed_values("aws-calico", "kube-system")).unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<String> = r
            .docs
            .iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d.object["kind"].as_str().unwrap_or_default(),
                    d.object["metadata"]["name"].as_str().unwrap_or_default()
                )
            })
            .collect();
        // The OpenShift-only ConfigMap renders nothing; 19 CRDs and 6 others.
        assert_eq!(r.docs.len(), 25, "{kinds:?}");
        assert_eq!(kinds[0], "Namespace/tigera-operator");
        assert_eq!(kinds[1], "PodSecurityPolicy/tigera-operator");
        assert_eq!(kinds[2], "ServiceAccount/tigera-operator");
        assert_eq!(
            kinds.last().map(String::as_str),
            Some("Deployment/tigera-operator")
        );
        assert!(r.docs.iter().all(|d| !d.text.contains("{{")));
        assert_eq!(r.hooks.len(), 1);
        assert_eq!(r.hooks[0].object["spec"]["cni"]["type"], "AmazonVPC");
        let op = &r.docs[24].object;
        assert_eq!(
            op["spec"]["template"]["spec"]["containers"][0]["image"],
            "quay.io/tigera/operator:v1.20.1"
        );
        let hooks = hook_records(&r.hooks);
        assert_eq!(
            hooks[0]["path"],
            "aws-calico/templates/crs/custom-resources.yaml"
        );
        assert_eq!(hooks[0]["events"], json!(["post-install"]));
    }
}
