//! The aws-calico chart 0.3.10 (Calico v3.19.1) as Helm renders it.
//!
//! Templates reproduced from aws/eks-charts `stable/aws-calico/templates/`
//! (daemon-set.yaml, deployment.yaml, config-map.yaml, service.yaml,
//! service-accounts.yaml, rbac.yaml, pod-disruption-budget.yaml, _helpers.tpl)
//! with `fullnameOverride: calico`; the 0.3.x env additions
//! (FELIX_ROUTESOURCE, extraEnv) and the Fargate node affinity (chart 0.3.3)
//! follow docs/upstream.md, "The aws-calico 0.3.10 chart". Objects are built as JSON directly;
//! the stored manifest is their YAML.

use serde_json::{Map, Value, json};

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

impl Default for ChartValues {
    fn default() -> Self {
        let node_resources = json!({"requests": {"memory": "32Mi", "cpu": "20m"},
                                    "limits": {"memory": "64Mi", "cpu": "100m"}});
        let typha_resources = json!({"requests": {"memory": "64Mi", "cpu": "50m"},
                                     "limits": {"memory": "96Mi", "cpu": "100m"}});
        Self {
            release_name: "aws-calico".into(),
            namespace: "kube-system".into(),
            chart_version: "0.3.10".into(),
            app_version: "3.19.1".into(),
            calico_tag: "v3.19.1".into(),
            node_image: "calico/node".into(),
            typha_image: "calico/typha".into(),
            autoscaler_image: "k8s.gcr.io/cpa/cluster-proportional-autoscaler".into(),
            autoscaler_tag: "1.8.3".into(),
            node_resources,
            typha_resources,
            autoscaler_resources: json!({"requests": {"memory": "16Mi", "cpu": "10m"},
                                         "limits": {"memory": "32Mi", "cpu": "10m"}}),
            node_extra_env: Vec::new(),
            user_values: Map::new(),
        }
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
        json!({
            "fullnameOverride": "calico",
            "serviceAccount": {"create": true},
            "podSecurityPolicy": {"create": false},
            "calico": {
                "tag": self.calico_tag,
                "typha": {"logseverity": "Info", "image": self.typha_image,
                          "resources": {"requests": {"memory": "64Mi", "cpu": "50m"},
                                        "limits": {"memory": "96Mi", "cpu": "100m"}},
                          "tolerations": [], "nodeSelector": {"beta.kubernetes.io/os": "linux"},
                          "podAnnotations": {}, "podLabels": {}},
                "node": {"logseverity": "Info", "image": self.node_image, "extraEnv": [],
                         "resources": {"requests": {"memory": "32Mi", "cpu": "20m"},
                                       "limits": {"memory": "64Mi", "cpu": "100m"}},
                         "nodeSelector": {"beta.kubernetes.io/os": "linux"},
                         "podAnnotations": {}, "podLabels": {}},
                "typha_autoscaler": {"resources": self.autoscaler_resources, "tolerations": [],
                                     "nodeSelector": {"beta.kubernetes.io/os": "linux"},
                                     "podAnnotations": {}, "podLabels": {}},
            },
            "autoscaler": {"tag": self.autoscaler_tag, "image": self.autoscaler_image},
        })
        .as_object()
        .cloned()
        .unwrap_or_default()
    }
}

/// `aws-calico.labels` plus the per-object `app.kubernetes.io/name`.
pub fn chart_labels(v: &ChartValues, app_name: &str) -> Value {
    json!({
        "app.kubernetes.io/name": app_name,
        "helm.sh/chart": v.chart_label(),
        "app.kubernetes.io/instance": v.release_name,
        "app.kubernetes.io/version": v.app_version,
        "app.kubernetes.io/managed-by": "Helm",
    })
}

fn meta(v: &ChartValues, name: &str, app_name: &str) -> Value {
    json!({"name": name, "labels": chart_labels(v, app_name)})
}

/// The `# Source:` file of each rendered object.
const SRC: &str = "aws-calico/templates/";

/// calico-node env exactly in the chart's order, then `extraEnv`.
pub fn calico_node_env(v: &ChartValues) -> Vec<Value> {
    let kv = |n: &str, val: &str| json!({"name": n, "value": val});
    let mut env = vec![
        kv("DATASTORE_TYPE", "kubernetes"),
        kv("FELIX_INTERFACEPREFIX", "eni"),
        kv("FELIX_LOGSEVERITYSCREEN", "info"),
        kv("CALICO_NETWORKING_BACKEND", "none"),
        kv("CLUSTER_TYPE", "k8s,ecs"),
        kv("CALICO_DISABLE_FILE_LOGGING", "true"),
        kv("FELIX_TYPHAK8SSERVICENAME", "calico-typha"),
        kv("FELIX_DEFAULTENDPOINTTOHOSTACTION", "ACCEPT"),
        kv("FELIX_IPTABLESMANGLEALLOWACTION", "Return"),
        kv("FELIX_IPV6SUPPORT", "false"),
        kv("WAIT_FOR_DATASTORE", "true"),
        kv("FELIX_LOGSEVERITYSYS", "none"),
        kv("FELIX_PROMETHEUSMETRICSENABLED", "true"),
        kv("FELIX_ROUTESOURCE", "WorkloadIPs"),
        kv("NO_DEFAULT_POOLS", "true"),
        json!({"name": "NODENAME", "valueFrom": {"fieldRef": {"apiVersion": "v1", "fieldPath": "spec.nodeName"}}}),
        kv("IP", ""),
        kv("FELIX_HEALTHENABLED", "true"),
    ];
    env.extend(v.node_extra_env.iter().cloned());
    env
}

/// DaemonSet calico-node as rendered (no namespace, no status).
pub fn calico_node_daemonset(v: &ChartValues) -> Value {
    json!({
        "kind": "DaemonSet",
        "apiVersion": "apps/v1",
        "metadata": meta(v, "calico-node", "calico-node"),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "calico-node"}},
            "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 1}},
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "calico-node"}},
                "spec": {
                    "priorityClassName": "system-node-critical",
                    "nodeSelector": {"beta.kubernetes.io/os": "linux"},
                    "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                        "nodeSelectorTerms": [{"matchExpressions": [{
                            "key": "eks.amazonaws.com/compute-type", "operator": "NotIn", "values": ["fargate"],
                        }]}],
                    }}},
                    "hostNetwork": true,
                    "serviceAccountName": "calico-node",
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{
                        "name": "calico-node",
                        "image": format!("{}:{}", v.node_image, v.calico_tag),
                        "env": calico_node_env(v),
                        "securityContext": {"privileged": true},
                        "livenessProbe": {"httpGet": {"path": "/liveness", "port": 9099, "host": "localhost"},
                                          "periodSeconds": 10, "initialDelaySeconds": 10, "failureThreshold": 6},
                        "readinessProbe": {"exec": {"command": ["/bin/calico-node", "-felix-ready"]},
                                           "periodSeconds": 10},
                        "resources": v.node_resources,
                        "volumeMounts": [
                            {"mountPath": "/lib/modules", "name": "lib-modules", "readOnly": true},
                            {"mountPath": "/run/xtables.lock", "name": "xtables-lock", "readOnly": false},
                            {"mountPath": "/var/run/calico", "name": "var-run-calico", "readOnly": false},
                            {"mountPath": "/var/lib/calico", "name": "var-lib-calico", "readOnly": false},
                        ],
                    }],
                    "volumes": [
                        {"name": "lib-modules", "hostPath": {"path": "/lib/modules"}},
                        {"name": "var-run-calico", "hostPath": {"path": "/var/run/calico"}},
                        {"name": "var-lib-calico", "hostPath": {"path": "/var/lib/calico"}},
                        {"name": "xtables-lock", "hostPath": {"path": "/run/xtables.lock", "type": "FileOrCreate"}},
                    ],
                    "tolerations": [
                        {"effect": "NoSchedule", "operator": "Exists"},
                        {"key": "CriticalAddonsOnly", "operator": "Exists"},
                        {"effect": "NoExecute", "operator": "Exists"},
                    ],
                },
            },
        },
    })
}

/// Deployment calico-typha (replicas left to the autoscaler; set when seeding).
pub fn typha_deployment(v: &ChartValues) -> Value {
    let kv = |n: &str, val: &str| json!({"name": n, "value": val});
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(v, "calico-typha", "calico-typha"),
        "spec": {
            "revisionHistoryLimit": 2,
            "selector": {"matchLabels": {"app.kubernetes.io/name": "calico-typha"}},
            "template": {
                "metadata": {
                    "labels": {"app.kubernetes.io/name": "calico-typha"},
                    "annotations": {"cluster-autoscaler.kubernetes.io/safe-to-evict": "true"},
                },
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "nodeSelector": {"beta.kubernetes.io/os": "linux"},
                    "tolerations": [{"key": "CriticalAddonsOnly", "operator": "Exists"}],
                    "hostNetwork": true,
                    "serviceAccountName": "calico-node",
                    "containers": [{
                        "image": format!("{}:{}", v.typha_image, v.calico_tag),
                        "name": "calico-typha",
                        "ports": [{"containerPort": 5473, "name": "calico-typha", "protocol": "TCP"}],
                        "env": [
                            kv("FELIX_INTERFACEPREFIX", "eni"),
                            kv("TYPHA_LOGFILEPATH", "none"),
                            kv("TYPHA_LOGSEVERITYSYS", "none"),
                            kv("TYPHA_LOGSEVERITYSCREEN", "Info"),
                            kv("TYPHA_PROMETHEUSMETRICSENABLED", "true"),
                            kv("TYPHA_CONNECTIONREBALANCINGMODE", "kubernetes"),
                            kv("TYPHA_PROMETHEUSMETRICSPORT", "9093"),
                            kv("TYPHA_DATASTORETYPE", "kubernetes"),
                            kv("TYPHA_MAXCONNECTIONSLOWERLIMIT", "1"),
                            kv("TYPHA_HEALTHENABLED", "true"),
                            kv("FELIX_IPTABLESMANGLEALLOWACTION", "Return"),
                        ],
                        "livenessProbe": {"httpGet": {"path": "/liveness", "port": 9098, "host": "localhost"},
                                          "periodSeconds": 30, "initialDelaySeconds": 30},
                        "readinessProbe": {"httpGet": {"path": "/readiness", "port": 9098, "host": "localhost"},
                                           "periodSeconds": 10},
                        "resources": v.typha_resources,
                    }],
                },
            },
        },
    })
}

/// Deployment calico-typha-horizontal-autoscaler (cluster-proportional-autoscaler).
pub fn autoscaler_deployment(v: &ChartValues) -> Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": meta(v, "calico-typha-horizontal-autoscaler", "calico-typha-autoscaler"),
        "spec": {
            "selector": {"matchLabels": {"app.kubernetes.io/name": "calico-typha-autoscaler"}},
            "replicas": 1,
            "template": {
                "metadata": {"labels": {"app.kubernetes.io/name": "calico-typha-autoscaler"}},
                "spec": {
                    "priorityClassName": "system-cluster-critical",
                    "nodeSelector": {"beta.kubernetes.io/os": "linux"},
                    "containers": [{
                        "image": format!("{}:{}", v.autoscaler_image, v.autoscaler_tag),
                        "name": "autoscaler",
                        "command": [
                            "/cluster-proportional-autoscaler",
                            format!("--namespace={}", v.namespace),
                            "--configmap=calico-typha-horizontal-autoscaler",
                            "--target=deployment/calico-typha",
                            "--logtostderr=true",
                            "--v=2",
                        ],
                        "resources": v.autoscaler_resources,
                    }],
                    "serviceAccountName": "calico-typha-cpha",
                },
            },
        },
    })
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

fn autoscaler_configmap(v: &ChartValues) -> Value {
    let ladder = TYPHA_LADDER
        .iter()
        .map(|(n, r)| format!("        [{n}, {r}]"))
        .collect::<Vec<_>>()
        .join(",\n");
    json!({
        "kind": "ConfigMap",
        "apiVersion": "v1",
        "metadata": meta(v, "calico-typha-horizontal-autoscaler", "calico-typha-autoscaler"),
        "data": {"ladder": format!(
            "{{\n  \"coresToReplicas\": [],\n  \"nodesToReplicas\":\n  [\n{ladder}\n  ]\n}}"
        )},
    })
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> Value {
    json!({"apiGroups": groups, "resources": resources, "verbs": verbs})
}

/// ClusterRole calico-node as the chart renders it: the 15 rules of aws-calico 0.3.10
/// `templates/rbac.yaml:1-143`, kept once in the embedded Calico version data
/// (`data/calico-versions.yaml`, line v3.19), which a test holds equal to the chart.
fn node_cluster_role(v: &ChartValues) -> Value {
    let rules: Vec<Value> = crate::sandbox::controllers::felix::catalogue()
        .ok()
        .and_then(|c| c.line("v3.19"))
        .and_then(|d| d.cluster_role.as_ref())
        .map(|r| r.rules.iter().map(|r| r.to_json()).collect())
        .unwrap_or_default();
    json!({
        "kind": "ClusterRole",
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "metadata": meta(v, "calico-node", "calico-node"),
        "rules": rules,
    })
}

fn binding(v: &ChartValues, kind: &str, name: &str, role_kind: &str, sa: &str) -> Value {
    let app = if name == "calico-node" {
        "calico-node"
    } else {
        "calico-typha-autoscaler"
    };
    json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": meta(v, name, app),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": sa, "namespace": v.namespace}],
    })
}

/// Every object of the chart as rendered, in Helm's install order, each with
/// the template file it came from.
pub fn rendered_objects(v: &ChartValues) -> Vec<(&'static str, Value)> {
    vec![
        (
            "pod-disruption-budget.yaml",
            json!({
                "apiVersion": "policy/v1beta1",
                "kind": "PodDisruptionBudget",
                "metadata": meta(v, "calico-typha", "calico-typha"),
                "spec": {"maxUnavailable": 1,
                         "selector": {"matchLabels": {"app.kubernetes.io/name": "calico-typha"}}},
            }),
        ),
        (
            "service-accounts.yaml",
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(v, "calico-node", "calico-node")}),
        ),
        (
            "service-accounts.yaml",
            json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": meta(v, "calico-typha-cpha", "calico-typha-autoscaler")}),
        ),
        ("config-map.yaml", autoscaler_configmap(v)),
        ("rbac.yaml", node_cluster_role(v)),
        (
            "rbac.yaml",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "ClusterRole",
                "metadata": meta(v, "calico-typha-cpha", "calico-typha-autoscaler"),
                "rules": [rule(&[""], &["nodes"], &["list", "watch"])],
            }),
        ),
        (
            "rbac.yaml",
            binding(
                v,
                "ClusterRoleBinding",
                "calico-node",
                "ClusterRole",
                "calico-node",
            ),
        ),
        (
            "rbac.yaml",
            binding(
                v,
                "ClusterRoleBinding",
                "calico-typha-cpha",
                "ClusterRole",
                "calico-typha-cpha",
            ),
        ),
        (
            "rbac.yaml",
            json!({
                "apiVersion": "rbac.authorization.k8s.io/v1",
                "kind": "Role",
                "metadata": meta(v, "calico-typha-cpha", "calico-typha-autoscaler"),
                "rules": [rule(&[""], &["configmaps"], &["get"]),
                          rule(&["extensions", "apps"], &["deployments/scale"], &["get", "update"])],
            }),
        ),
        (
            "rbac.yaml",
            binding(
                v,
                "RoleBinding",
                "calico-typha-cpha",
                "Role",
                "calico-typha-cpha",
            ),
        ),
        (
            "service.yaml",
            json!({
                "apiVersion": "v1",
                "kind": "Service",
                "metadata": meta(v, "calico-typha", "calico-typha"),
                "spec": {"ports": [{"port": 5473, "protocol": "TCP", "targetPort": "calico-typha", "name": "calico-typha"}],
                         "selector": {"app.kubernetes.io/name": "calico-typha"}},
            }),
        ),
        ("daemon-set.yaml", calico_node_daemonset(v)),
        ("deployment.yaml", typha_deployment(v)),
        ("deployment.yaml", autoscaler_deployment(v)),
    ]
}

/// The stored manifest: `---`, `# Source:`, then each object's YAML.
pub fn render_manifest(objs: &[(&str, Value)]) -> String {
    let mut out = String::new();
    for (file, obj) in objs {
        out.push_str("---\n# Source: ");
        out.push_str(SRC);
        out.push_str(file);
        out.push('\n');
        match serde_saphyr::to_string(obj) {
            Ok(y) => out.push_str(&y),
            // JSON values always serialise; keep the document rather than drop it.
            Err(_) => out.push_str(&obj.to_string()),
        }
        if !out.ends_with('\n') {
            out.push('\n');
        }
    }
    out
}
