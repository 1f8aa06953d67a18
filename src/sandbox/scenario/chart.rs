//! The aws-calico chart 0.3.10 (Calico v3.19.1) as `helm install` renders it.
//!
//! The chart's files are embedded as published (`data/aws-calico-0.3.10/`, the
//! files of aws/eks-charts gh-pages `aws-calico-0.3.10.tgz`, sha256 5756b82f...; the
//! sources are aws/eks-charts `stable/aws-calico/` at chart 0.3.10). The seed renders
//! its templates with the release's values (`chart_render`: the Go-template subset
//! they use), cuts and orders the result as Helm does, and builds every live object
//! from the rendered text, so the stored manifest and the objects cannot disagree.
//! The release record keeps the chart as Helm stores it: metadata from Chart.yaml,
//! the template sources, values.yaml, and the other files (crds/, README.md,
//! .helmignore).

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::chart_render::{self, Context};
use crate::helm::{Chart, ChartFile, ChartMetadata};

/// The published chart's files in the tarball's order (Helm's loader keeps it for
/// `templates` and `files`). Paths are relative to the chart directory.
pub const CHART_FILES: &[(&str, &str)] = &[
    (
        "Chart.yaml",
        include_str!("data/aws-calico-0.3.10/Chart.yaml"),
    ),
    (
        "values.yaml",
        include_str!("data/aws-calico-0.3.10/values.yaml"),
    ),
    (
        "templates/_helpers.tpl",
        include_str!("data/aws-calico-0.3.10/templates/_helpers.tpl"),
    ),
    (
        "templates/config-map.yaml",
        include_str!("data/aws-calico-0.3.10/templates/config-map.yaml"),
    ),
    (
        "templates/daemon-set.yaml",
        include_str!("data/aws-calico-0.3.10/templates/daemon-set.yaml"),
    ),
    (
        "templates/deployment.yaml",
        include_str!("data/aws-calico-0.3.10/templates/deployment.yaml"),
    ),
    (
        "templates/pod-disruption-budget.yaml",
        include_str!("data/aws-calico-0.3.10/templates/pod-disruption-budget.yaml"),
    ),
    (
        "templates/podsecuritypolicy.yaml",
        include_str!("data/aws-calico-0.3.10/templates/podsecuritypolicy.yaml"),
    ),
    (
        "templates/rbac.yaml",
        include_str!("data/aws-calico-0.3.10/templates/rbac.yaml"),
    ),
    (
        "templates/service-accounts.yaml",
        include_str!("data/aws-calico-0.3.10/templates/service-accounts.yaml"),
    ),
    (
        "templates/service.yaml",
        include_str!("data/aws-calico-0.3.10/templates/service.yaml"),
    ),
    (
        ".helmignore",
        include_str!("data/aws-calico-0.3.10/.helmignore"),
    ),
    (
        "README.md",
        include_str!("data/aws-calico-0.3.10/README.md"),
    ),
    (
        "crds/crds.yaml",
        include_str!("data/aws-calico-0.3.10/crds/crds.yaml"),
    ),
];

/// One embedded chart file by path ("" when absent).
pub fn chart_file(path: &str) -> &'static str {
    CHART_FILES
        .iter()
        .find(|(p, _)| *p == path)
        .map(|(_, t)| *t)
        .unwrap_or_default()
}

/// A YAML text as JSON (Null when it does not parse; the embedded files all do, see
/// the tests).
pub(super) fn yaml(text: &str) -> Value {
    serde_saphyr::from_str(text).unwrap_or(Value::Null)
}

/// The chart's values.yaml.
fn default_values() -> Map<String, Value> {
    yaml(chart_file("values.yaml"))
        .as_object()
        .cloned()
        .unwrap_or_default()
}

fn str_at<'a>(v: &'a Value, path: &str) -> &'a str {
    v.pointer(path).and_then(Value::as_str).unwrap_or_default()
}

/// The values the chart was installed with, and the release it belongs to.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartValues {
    pub release_name: String,
    pub namespace: String,
    pub chart_version: String,
    pub app_version: String,
    pub calico_tag: String,
    pub node_image: String,
    pub typha_image: String,
    pub autoscaler_image: String,
    pub autoscaler_tag: String,
    pub node_resources: Value,
    pub typha_resources: Value,
    pub autoscaler_resources: Value,
    /// `calico.node.extraEnv`, appended after the chart's own env.
    pub node_extra_env: Vec<Value>,
    /// Values the user set (the release's `config`).
    pub user_values: Map<String, Value>,
}

/// The chart's own values (values.yaml), as `ChartValues::default` holds them.
impl Default for ChartValues {
    fn default() -> Self {
        let chart = yaml(chart_file("Chart.yaml"));
        let d = Value::Object(default_values());
        Self {
            release_name: "aws-calico".into(),
            namespace: "kube-system".into(),
            chart_version: str_at(&chart, "/version").into(),
            app_version: str_at(&chart, "/appVersion").into(),
            calico_tag: str_at(&d, "/calico/tag").into(),
            node_image: str_at(&d, "/calico/node/image").into(),
            typha_image: str_at(&d, "/calico/typha/image").into(),
            autoscaler_image: str_at(&d, "/autoscaler/image").into(),
            autoscaler_tag: str_at(&d, "/autoscaler/tag").into(),
            node_resources: d["calico"]["node"]["resources"].clone(),
            typha_resources: d["calico"]["typha"]["resources"].clone(),
            autoscaler_resources: d["calico"]["typha_autoscaler"]["resources"].clone(),
            node_extra_env: Vec::new(),
            user_values: Map::new(),
        }
    }
}

/// `dst` with `src` merged in, maps key by key (Helm's coalescing of user values
/// over the chart's, pkg/chartutil/coalesce.go).
pub(super) fn coalesce(dst: &mut Value, src: &Value) {
    match (dst, src) {
        (Value::Object(d), Value::Object(s)) => {
            for (k, v) in s {
                match d.get_mut(k) {
                    Some(existing) if existing.is_object() && v.is_object() => {
                        coalesce(existing, v)
                    }
                    _ => {
                        d.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        (d, s) => *d = s.clone(),
    }
}

impl ChartValues {
    /// The seed organisation's install: CPU/memory limits for node and typha set
    /// through values (their Terraform also set `skip_crds = true`).
    pub fn seed_organisation(release_name: &str) -> Self {
        let mut v = Self {
            release_name: release_name.into(),
            ..Self::default()
        };
        v.node_resources = json!({"requests": {"memory": "128Mi", "cpu": "100m"},
                                  "limits": {"memory": "256Mi", "cpu": "500m"}});
        v.typha_resources = json!({"requests": {"memory": "128Mi", "cpu": "100m"},
                                   "limits": {"memory": "256Mi", "cpu": "500m"}});
        v.user_values = json!({"calico": {
            "node": {"resources": v.node_resources},
            "typha": {"resources": v.typha_resources},
        }})
        .as_object()
        .cloned()
        .unwrap_or_default();
        v
    }

    /// `helm.sh/chart` value.
    pub fn chart_label(&self) -> String {
        format!("aws-calico-{}", self.chart_version)
    }

    /// The chart's default values.yaml as JSON (stored in the release's chart).
    pub fn chart_defaults(&self) -> Map<String, Value> {
        default_values()
    }

    /// The values the templates see: values.yaml, this struct's fields, then the
    /// user's values over them.
    pub fn values(&self) -> Value {
        let mut v = Value::Object(default_values());
        v["calico"]["tag"] = json!(self.calico_tag);
        v["calico"]["node"]["image"] = json!(self.node_image);
        v["calico"]["node"]["resources"] = self.node_resources.clone();
        v["calico"]["node"]["extraEnv"] = json!(self.node_extra_env);
        v["calico"]["typha"]["image"] = json!(self.typha_image);
        v["calico"]["typha"]["resources"] = self.typha_resources.clone();
        v["calico"]["typha_autoscaler"]["resources"] = self.autoscaler_resources.clone();
        v["autoscaler"]["image"] = json!(self.autoscaler_image);
        v["autoscaler"]["tag"] = json!(self.autoscaler_tag);
        coalesce(&mut v, &Value::Object(self.user_values.clone()));
        v
    }

    /// `.Values`, `.Release` (a first install, revision 1) and `.Chart` as a template
    /// sees them for this release of chart `chart_name`.
    pub(super) fn template_root(&self, values: Value, chart_name: &str) -> Value {
        json!({
            "Values": values,
            "Release": {"Name": self.release_name, "Namespace": self.namespace,
                        "Service": "Helm", "IsInstall": true, "IsUpgrade": false,
                        "Revision": 1},
            "Chart": {"Name": chart_name, "Version": self.chart_version,
                      "AppVersion": self.app_version},
        })
    }

    /// What the templates see: `.Values`, `.Release`, `.Chart`, and the named
    /// templates of `_helpers.tpl` rendered for these values.
    pub(super) fn context(&self) -> Context {
        let values = self.values();
        let chart_name = "aws-calico";
        let trunc = |s: &str| -> String {
            s.chars()
                .take(63)
                .collect::<String>()
                .trim_end_matches('-')
                .to_string()
        };
        // aws/eks-charts stable/aws-calico/templates/_helpers.tpl:5-7 (name), 12-14
        // (chart), 21-32 (fullname), 37-44 (labels), 49-55 (serviceAccountName), chart
        // 0.3.10.
        let name_override = str_at(&values, "/nameOverride");
        let name = if name_override.is_empty() {
            chart_name
        } else {
            name_override
        };
        let fullname_override = str_at(&values, "/fullnameOverride");
        let fullname = if !fullname_override.is_empty() {
            trunc(fullname_override)
        } else if self.release_name.contains(name) {
            trunc(&self.release_name)
        } else {
            trunc(&format!("{}-{name}", self.release_name))
        };
        let chart = trunc(&format!("{chart_name}-{}", self.chart_version).replace('+', "_"));
        let mut labels = format!(
            "helm.sh/chart: {chart}\napp.kubernetes.io/instance: {}",
            self.release_name
        );
        if !self.app_version.is_empty() {
            labels.push_str(&format!(
                "\napp.kubernetes.io/version: {:?}",
                self.app_version
            ));
        }
        labels.push_str("\napp.kubernetes.io/managed-by: Helm");
        let sa_name = str_at(&values, "/serviceAccount/name");
        let sa_create = values
            .pointer("/serviceAccount/create")
            .and_then(Value::as_bool)
            .unwrap_or(false);
        let service_account = match (sa_create, sa_name.is_empty()) {
            (true, true) => fullname.clone(),
            (false, true) => "default".to_string(),
            (_, false) => sa_name.to_string(),
        };
        let includes = BTreeMap::from([
            ("aws-calico.name".to_string(), trunc(name)),
            ("aws-calico.chart".to_string(), chart),
            ("aws-calico.fullname".to_string(), fullname),
            ("aws-calico.labels".to_string(), labels),
            ("aws-calico.serviceAccountName".to_string(), service_account),
        ]);
        Context {
            root: self.template_root(values, chart_name),
            includes,
        }
    }
}

/// One document of the release manifest: the template it came from (under
/// `templates/`), its text as Helm stores it, and the object it reads as.
#[derive(Debug, Clone, PartialEq)]
pub struct RenderedDoc {
    pub source: &'static str,
    pub text: String,
    pub object: Value,
}

/// What a chart's templates render to: the release's documents in Helm's install
/// order, and its hooks (documents annotated `helm.sh/hook`), which Helm keeps out of
/// the manifest and records apart (helm v3.17.3 pkg/releaseutil/manifest_sorter.go
/// `SortManifests`).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct RenderedChart {
    pub docs: Vec<RenderedDoc>,
    pub hooks: Vec<RenderedDoc>,
}

/// Every document the templates of `files` render for `ctx`: templates by path
/// (partials `_*` render nothing, nor do files that render only whitespace), each cut
/// into documents, hooks set apart, then a stable sort by kind (`SortManifests`,
/// kind_sorter.go).
pub fn render_templates(
    files: &'static [(&'static str, &'static str)],
    ctx: &Context,
) -> Result<RenderedChart, String> {
    let mut templates: Vec<&(&str, &str)> = files
        .iter()
        .filter(|(p, _)| p.starts_with("templates/"))
        .filter(|(p, _)| !p.rsplit('/').next().unwrap_or(p).starts_with('_'))
        .collect();
    templates.sort_by_key(|(p, _)| *p);
    let mut out = RenderedChart::default();
    for (path, src) in templates {
        let source = path.trim_start_matches("templates/");
        let text = chart_render::render(src, ctx).map_err(|e| {
            format!("The embedded aws-calico template {path} does not render: {e}.")
        })?;
        for doc in chart_render::split_manifests(&text) {
            let object: Value = serde_saphyr::from_str(&doc).map_err(|e| {
                format!("The rendered aws-calico template {path} is not YAML: {e}.")
            })?;
            if object.get("kind").and_then(Value::as_str).is_none() {
                return Err(format!(
                    "A document rendered from the aws-calico template {path} has no kind."
                ));
            }
            let hook = object
                .pointer("/metadata/annotations/helm.sh~1hook")
                .is_some();
            let d = RenderedDoc {
                source,
                text: doc,
                object,
            };
            if hook {
                out.hooks.push(d);
            } else {
                out.docs.push(d);
            }
        }
    }
    out.docs
        .sort_by_key(|d| chart_render::install_rank(d.object["kind"].as_str().unwrap_or("")));
    Ok(out)
}

/// Every document chart 0.3.10 renders for `v`, in Helm's install order (it has no
/// hooks).
pub fn render(v: &ChartValues) -> Result<Vec<RenderedDoc>, String> {
    Ok(render_templates(CHART_FILES, &v.context())?.docs)
}

/// Every object of the chart as rendered, in Helm's install order, each with the
/// template file it came from (none when the chart does not render).
pub fn rendered_objects(v: &ChartValues) -> Vec<(&'static str, Value)> {
    render(v)
        .unwrap_or_default()
        .into_iter()
        .map(|d| (d.source, d.object))
        .collect()
}

/// The release manifest: each document as `---`, `# Source: <chart>/templates/<file>`,
/// its text and a newline (helm v3.17.3 pkg/action/action.go, `renderResources`).
pub fn manifest(docs: &[RenderedDoc]) -> String {
    docs.iter()
        .map(|d| {
            format!(
                "---\n# Source: aws-calico/templates/{}\n{}\n",
                d.source, d.text
            )
        })
        .collect()
}

/// Chart 0.3.10 as the release record stores it.
pub fn stored_chart() -> Chart {
    stored_chart_of(CHART_FILES)
}

/// A chart as the release record stores it: Chart.yaml's metadata, the templates'
/// sources, values.yaml, and the remaining files, in the tarball's order (Helm's
/// loader keeps it).
pub fn stored_chart_of(all: &'static [(&'static str, &'static str)]) -> Chart {
    let file = |path: &str| {
        all.iter()
            .find(|(p, _)| *p == path)
            .map(|(_, t)| *t)
            .unwrap_or_default()
    };
    let meta = yaml(file("Chart.yaml"));
    let files = |templates: bool| -> Vec<ChartFile> {
        all.iter()
            .filter(|(p, _)| !matches!(*p, "Chart.yaml" | "values.yaml"))
            .filter(|(p, _)| p.starts_with("templates/") == templates)
            .map(|(p, t)| ChartFile::new(*p, *t))
            .collect()
    };
    Chart {
        metadata: ChartMetadata {
            name: str_at(&meta, "/name").into(),
            home: str_at(&meta, "/home").into(),
            version: str_at(&meta, "/version").into(),
            description: str_at(&meta, "/description").into(),
            icon: str_at(&meta, "/icon").into(),
            api_version: str_at(&meta, "/apiVersion").into(),
            app_version: str_at(&meta, "/appVersion").into(),
            ..ChartMetadata::default()
        },
        lock: None,
        templates: files(true),
        values: yaml(file("values.yaml"))
            .as_object()
            .cloned()
            .unwrap_or_default(),
        schema: None,
        files: files(false),
    }
}

fn rendered(v: &ChartValues, kind: &str, name: &str) -> Value {
    rendered_objects(v)
        .into_iter()
        .map(|(_, o)| o)
        .find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
        .unwrap_or(Value::Null)
}

/// `aws-calico.labels` plus the per-object `app.kubernetes.io/name`
/// (aws/eks-charts stable/aws-calico/templates/_helpers.tpl:37-44 at chart 0.3.10).
pub fn chart_labels(v: &ChartValues, app_name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": app_name,
        "helm.sh/chart": v.chart_label(),
        "app.kubernetes.io/instance": v.release_name,
        "app.kubernetes.io/version": v.app_version,
        "app.kubernetes.io/managed-by": "Helm",
    })
}

/// DaemonSet calico-node as rendered (no namespace, no status; aws/eks-charts
/// stable/aws-calico/templates/daemon-set.yaml:1-164 at chart 0.3.10).
pub fn calico_node_daemonset(v: &ChartValues) -> Value {
    rendered(v, "DaemonSet", "calico-node")
}

/// calico-node's env in the chart's order, then `extraEnv` (aws/eks-charts
/// stable/aws-calico/templates/daemon-set.yaml:53-107 at chart 0.3.10).
pub fn calico_node_env(v: &ChartValues) -> Vec<Value> {
    calico_node_daemonset(v)
        .pointer("/spec/template/spec/containers/0/env")
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default()
}

/// Deployment calico-typha (replicas left to the autoscaler; set when seeding;
/// aws/eks-charts stable/aws-calico/templates/deployment.yaml:1-94 at chart 0.3.10).
pub fn typha_deployment(v: &ChartValues) -> Value {
    rendered(v, "Deployment", "calico-typha")
}

/// Deployment calico-typha-horizontal-autoscaler (cluster-proportional-autoscaler;
/// aws/eks-charts stable/aws-calico/templates/deployment.yaml:98-146 at chart 0.3.10).
pub fn autoscaler_deployment(v: &ChartValues) -> Value {
    rendered(v, "Deployment", "calico-typha-horizontal-autoscaler")
}

/// The autoscaler's ladder: typha replicas by node count.
pub const TYPHA_LADDER: &[(usize, usize)] = &[
    (1, 1),
    (10, 2),
    (100, 3),
    (250, 4),
    (500, 5),
    (1000, 6),
    (1500, 7),
    (2000, 8),
];

/// Replicas cluster-proportional-autoscaler sets for `nodes` nodes (linear
/// ladder: the last step whose threshold is reached), never more than nodes.
pub fn typha_replicas(nodes: usize) -> usize {
    let r = TYPHA_LADDER
        .iter()
        .filter(|(n, _)| *n <= nodes)
        .map(|(_, r)| *r)
        .next_back()
        .unwrap_or(0);
    r.min(nodes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_embedded_file_parses_and_every_template_renders() {
        for path in ["Chart.yaml", "values.yaml"] {
            assert!(yaml(chart_file(path)).is_object(), "{path}");
        }
        assert_eq!(super::super::calico::calico_crds().len(), 12);
        let docs = render(&ChartValues::default()).unwrap_or_else(|e| panic!("{e}"));
        let kinds: Vec<_> = docs
            .iter()
            .map(|d| format!("{}/{}", d.object["kind"], d.object["metadata"]["name"]))
            .collect();
        assert_eq!(docs.len(), 14, "{kinds:?}");
        assert!(docs.iter().all(|d| !d.text.contains("{{")));
        assert_eq!(docs[0].object["kind"], "PodDisruptionBudget");
        assert_eq!(
            docs[13].object["metadata"]["name"],
            "calico-typha-horizontal-autoscaler"
        );
    }

    #[test]
    fn defaults_are_the_charts_values() {
        let v = ChartValues::default();
        assert_eq!(v.node_image, "quay.io/calico/node");
        assert_eq!(v.chart_version, "0.3.10");
        assert_eq!(v.app_version, "3.19.1");
        assert_eq!(
            v.values(),
            Value::Object(v.chart_defaults()),
            "the fields hold values.yaml"
        );
    }

    #[test]
    fn release_values_reach_the_objects() {
        let mut v = ChartValues::seed_organisation("calico");
        v.namespace = "calico-ns".into();
        v.node_extra_env = vec![json!({"name": "FELIX_XDPENABLED", "value": "false"})];
        let docs = render(&v).unwrap_or_else(|e| panic!("{e}"));
        let ds = calico_node_daemonset(&v);
        let env = calico_node_env(&v);
        assert_eq!(env.last(), Some(&v.node_extra_env[0]));
        assert_eq!(
            ds["spec"]["template"]["spec"]["containers"][0]["resources"],
            v.node_resources
        );
        assert_eq!(
            ds["metadata"]["labels"]["app.kubernetes.io/instance"],
            "calico"
        );
        let text = manifest(&docs);
        assert!(
            text.contains("            - name: FELIX_XDPENABLED\n              value: \"false\"\n")
        );
        assert!(text.contains("- --namespace=calico-ns\n"));
    }
}
