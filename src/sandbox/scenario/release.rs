//! Putting the cluster together: the chart's live objects, its Helm release
//! Secret, the pods behind every workload, in an order the store accepts.

use serde_json::{Value, json};

use super::chart::{self, ChartValues};
use super::net::{MAX_PODS_PER_ZONE, NodeInfo, PodIps, ZONES};
use super::workloads::{self, set_uid};
use super::{
    BASE_TIME, BASE_TIME_UNIX, ChartGeneration, ScenarioConfig, ScenarioError, calico, cluster,
    ids, operator, operator_chart,
};
use crate::helm::{self, Chart, Info, Release};

/// The chart's rendered objects as the API serves them after `helm install`:
/// namespaced into the release namespace, Helm's ownership annotations and
/// `app.kubernetes.io/managed-by` label (helm v3.17.3 pkg/action/validate.go
/// `setMetadataVisitor`, run over every resource at install), the PDB at policy/v1,
/// and believable status for `nodes` ready nodes.
pub fn live_chart_objects(
    rendered: &[(&str, Value)],
    v: &ChartValues,
    nodes: usize,
    seed: u64,
) -> Vec<Value> {
    rendered
        .iter()
        .map(|(_, r)| {
            let mut o = r.clone();
            let kind = o["kind"].as_str().unwrap_or_default().to_string();
            if !helm::is_cluster_scoped(&kind) && o["metadata"].get("namespace").is_none() {
                o["metadata"]["namespace"] = json!(v.namespace);
            }
            o["metadata"]["annotations"]["meta.helm.sh/release-name"] = json!(v.release_name);
            o["metadata"]["annotations"]["meta.helm.sh/release-namespace"] = json!(v.namespace);
            o["metadata"]["labels"]["app.kubernetes.io/managed-by"] = json!("Helm");
            o["metadata"]["creationTimestamp"] = json!(BASE_TIME);
            match kind.as_str() {
                "Namespace" => {
                    // What the API server adds to every Namespace (as `cluster::namespace`).
                    let name = o["metadata"]["name"].clone();
                    o["metadata"]["labels"]["kubernetes.io/metadata.name"] = name;
                    o["spec"] = json!({"finalizers": ["kubernetes"]});
                    o["status"] = json!({"phase": "Active"});
                }
                "PodDisruptionBudget" => {
                    // Stored at policy/v1 (the storage version), so it loads at every
                    // minor; up to 1.24 it also reads at policy/v1beta1 (apiserver/convert.rs).
                    o["apiVersion"] = json!("policy/v1");
                    let n = chart::typha_replicas(nodes);
                    o["metadata"]["generation"] = json!(1);
                    o["status"] = json!({"currentHealthy": n, "desiredHealthy": n.saturating_sub(1),
                        "disruptionsAllowed": usize::from(n > 0), "expectedPods": n, "observedGeneration": 1,
                        "conditions": [{"type": "DisruptionAllowed", "status": if n > 0 {"True"} else {"False"},
                            "reason": "SufficientPods", "message": "", "observedGeneration": 1,
                            "lastTransitionTime": BASE_TIME}]});
                }
                "DaemonSet" => {
                    o["metadata"]["generation"] = json!(1);
                    o["metadata"]["annotations"]["deprecated.daemonset.template.generation"] = json!("1");
                    o["status"] = workloads::daemonset_status(nodes);
                }
                "Deployment" => {
                    if o["spec"].get("replicas").is_none() {
                        o["spec"]["replicas"] = json!(chart::typha_replicas(nodes));
                    }
                    let n = o["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
                    o["metadata"]["generation"] = json!(1);
                    o["metadata"]["annotations"]["deployment.kubernetes.io/revision"] = json!("1");
                    o["status"] = workloads::deployment_status(n);
                }
                "Service" => {
                    let ip = format!("172.20.{}.{}", ids::pick(seed, "typha-svc-a", 250) + 1, ids::pick(seed, "typha-svc-b", 250) + 2);
                    o["spec"]["clusterIP"] = json!(ip);
                    o["spec"]["clusterIPs"] = json!([ip]);
                    o["status"] = json!({"loadBalancer": {}});
                }
                "CustomResourceDefinition" => {
                    let plural = o["spec"]["names"]["plural"].as_str().unwrap_or_default().to_string();
                    let k = o["spec"]["names"]["kind"].as_str().unwrap_or_default().to_string();
                    let group = o["spec"]["group"].as_str().unwrap_or_default().to_string();
                    let full = calico::crd_v1(&group, &plural, &k, false, false);
                    o["status"] = full["status"].clone();
                }
                _ => {}
            }
            set_uid(&mut o, seed);
            o
        })
        .collect()
}

/// The Helm release (revision 1, deployed) of `chart` with `manifest`.
pub fn chart_release(
    v: &ChartValues,
    chart: Chart,
    manifest: String,
    hooks: Vec<Value>,
) -> Release {
    Release {
        name: v.release_name.clone(),
        info: Info {
            first_deployed: BASE_TIME.into(),
            last_deployed: BASE_TIME.into(),
            // Helm's time.Time writes "" for the zero time (helm v3.17.3 pkg/time/time.go,
            // MarshalJSON), so a release never deleted stores an empty `deleted`.
            deleted: String::new(),
            description: "Install complete".into(),
            status: helm::status::DEPLOYED.into(),
            ..Info::default()
        },
        chart,
        config: v.user_values.clone(),
        manifest,
        hooks,
        version: 1,
        namespace: v.namespace.clone(),
    }
}

/// The aws-calico install of `sc.chart`: the chart's live objects and pods, its release
/// Secret, and Calico's cluster-wide objects (plus, for 0.3.11, what the operator renders).
fn calico_install(
    sc: &ScenarioConfig,
    nodes: &[NodeInfo],
    ips: &mut PodIps,
    namespaces: &mut Vec<Value>,
    crds: &mut Vec<Value>,
    objects: &mut Vec<Value>,
) -> Result<(), ScenarioError> {
    let seed = sc.seed;
    // The chart.
    let mut v = ChartValues::seed_organisation(&sc.release_name);
    v.namespace = sc.release_namespace.clone();
    // The objects the release's hooks created (0.3.11's Installation), from the render.
    let mut hook_objects: Vec<Value> = Vec::new();
    let (rendered, chart_record, manifest, hooks) = match sc.chart {
        ChartGeneration::V0_3_10 => {
            crds.extend(calico::calico_crds().into_iter().map(|mut c| {
                set_uid(&mut c, seed);
                c
            }));
            let docs = chart::render(&v).map_err(ScenarioError::Invalid)?;
            let rendered: Vec<(&str, Value)> =
                docs.iter().map(|d| (d.source, d.object.clone())).collect();
            (
                rendered,
                chart::stored_chart(),
                chart::manifest(&docs),
                Vec::new(),
            )
        }
        ChartGeneration::V0_3_11 => {
            v = operator_chart::seed_values(&sc.release_name, &sc.release_namespace);
            // The operator's namespace for its calico-system install.
            namespaces.push(cluster::namespace(
                "calico-system",
                &[("name", "calico-system")],
                seed,
            ));
            let r = operator_chart::render(&v).map_err(ScenarioError::Invalid)?;
            hook_objects = r.hooks.iter().map(|h| h.object.clone()).collect();
            let rendered: Vec<(&str, Value)> = r
                .docs
                .iter()
                .map(|d| (d.source, d.object.clone()))
                .collect();
            (
                rendered,
                operator_chart::stored_chart(),
                chart::manifest(&r.docs),
                operator_chart::hook_records(&r.hooks),
            )
        }
    };
    let live = live_chart_objects(&rendered, &v, nodes.len(), seed);
    for o in live {
        let kind = o["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "Namespace" => namespaces.push(o),
            "CustomResourceDefinition" => crds.push(o),
            "DaemonSet" => {
                let pods = workloads::daemonset_pods(&o, nodes, &mut |n| ips.next(n), seed);
                objects.push(workloads::daemonset_revision(&o, seed));
                objects.push(o);
                objects.extend(pods);
            }
            "Deployment" => {
                let name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let kids = workloads::deployment_children(
                    &o,
                    nodes,
                    &mut |i| ids::pick(seed, &format!("chart/{name}/{i}"), nodes.len()),
                    &mut |n| ips.next(n),
                    seed,
                );
                objects.push(o);
                objects.extend(kids);
            }
            _ => objects.push(o),
        }
    }
    let release = chart_release(&v, chart_record, manifest, hooks);
    let mut secret = helm::encode_release_secret(&release);
    secret["metadata"]["creationTimestamp"] = json!(BASE_TIME);
    // Helm's Secrets.Create adds createdAt (Unix seconds) to the four labels.
    secret["metadata"]["labels"]["createdAt"] = json!(BASE_TIME_UNIX.to_string());
    set_uid(&mut secret, seed);
    objects.push(secret);

    // Calico's cluster-wide objects.
    let mut calico_objs = vec![
        calico::felix_configuration_default(),
        calico::cluster_information_default(seed, "v3.19.1"),
        calico::deny_aws_imds(),
    ];
    if sc.chart == ChartGeneration::V0_3_11 {
        let mut inst = hook_objects
            .into_iter()
            .find(|o| o["kind"] == "Installation")
            .unwrap_or(Value::Null);
        inst["metadata"]["creationTimestamp"] = json!(BASE_TIME);
        // v1.20.1's InstallationStatus has no calicoVersion (tigera/operator v1.29.0 added it).
        inst["status"] = json!({"variant": "Calico",
                                "computed": {"cni": {"type": "AmazonVPC"}, "kubernetesProvider": "EKS"}});
        calico_objs.push(inst);
        calico_objs.push(operator::tigera_status_calico());
        calico_objs[1]["spec"]["calicoVersion"] = json!(operator::OPERATOR_CALICO_VERSION);
        calico_objs[1]["spec"]["clusterType"] = json!("k8s,operator,ecs,kdd");
        // The RBAC the operator renders for calico-system's agents.
        for mut o in operator::calico_node_rbac()
            .into_iter()
            .chain(operator::calico_typha_rbac(
                operator::OPERATOR_CALICO_VERSION,
            ))
        {
            set_uid(&mut o, seed);
            o["metadata"]["creationTimestamp"] = json!(BASE_TIME);
            objects.push(o);
        }
        for mut o in operator::calico_system_workloads(
            chart::typha_replicas(nodes.len()),
            operator::OPERATOR_CALICO_VERSION,
        ) {
            set_uid(&mut o, seed);
            o["metadata"]["creationTimestamp"] = json!(BASE_TIME);
            o["metadata"]["generation"] = json!(1);
            if o["kind"] == "DaemonSet" {
                o["status"] = workloads::daemonset_status(nodes.len());
                let pods = workloads::daemonset_pods(&o, nodes, &mut |n| ips.next(n), seed);
                objects.push(workloads::daemonset_revision(&o, seed));
                objects.push(o);
                objects.extend(pods);
            } else {
                let n = o["spec"]["replicas"].as_u64().unwrap_or(1) as usize;
                o["status"] = workloads::deployment_status(n);
                let name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let kids = workloads::deployment_children(
                    &o,
                    nodes,
                    &mut |i| ids::pick(seed, &format!("calico-system/{name}/{i}"), nodes.len()),
                    &mut |n| ips.next(n),
                    seed,
                );
                objects.push(o);
                objects.extend(kids);
            }
        }
    }
    for mut o in calico_objs {
        set_uid(&mut o, seed);
        objects.push(o);
    }
    Ok(())
}

/// Every object of the scenario in creation order; an error when a zone's subnet cannot
/// hold the pods placed there.
pub(super) fn assemble(sc: &ScenarioConfig) -> Result<Vec<Value>, ScenarioError> {
    let seed = sc.seed;
    let mut namespaces = vec![
        cluster::namespace("default", &[], seed),
        cluster::namespace("kube-system", &[], seed),
        cluster::namespace("kube-public", &[], seed),
        cluster::namespace("kube-node-lease", &[], seed),
    ];
    if !["default", "kube-system", "kube-public", "kube-node-lease"]
        .contains(&sc.release_namespace.as_str())
    {
        namespaces.push(cluster::namespace(&sc.release_namespace, &[], seed));
    }
    for infra in cluster::INFRA_NAMESPACES {
        let labels: Vec<(&str, &str)> = infra.component.iter().map(|c| ("component", *c)).collect();
        namespaces.push(cluster::namespace(infra.name, &labels, seed));
    }
    let mut crds = Vec::new();
    let mut objects = Vec::new();
    let mut ips = PodIps::default();

    let mut nodes: Vec<NodeInfo> = Vec::with_capacity(sc.nodes);
    for i in 0..sc.nodes {
        let (n, info) = cluster::node(i, seed, &sc.region);
        objects.push(n);
        nodes.push(info);
    }

    // kube-system add-ons and their pods.
    for mut o in cluster::eks_addons(&sc.region, seed) {
        match o["kind"].as_str() {
            Some("DaemonSet") => {
                o["status"] = workloads::daemonset_status(nodes.len());
                let pods = workloads::daemonset_pods(&o, &nodes, &mut |n| ips.next(n), seed);
                objects.push(workloads::daemonset_revision(&o, seed));
                objects.push(o);
                objects.extend(pods);
            }
            Some("Deployment") => {
                let name = o["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                let kids = workloads::deployment_children(
                    &o,
                    &nodes,
                    &mut |i| ids::pick(seed, &format!("kube-system/{name}/{i}"), nodes.len()),
                    &mut |n| ips.next(n),
                    seed,
                );
                objects.push(o);
                objects.extend(kids);
            }
            _ => objects.push(o),
        }
    }

    if sc.calico {
        calico_install(
            sc,
            &nodes,
            &mut ips,
            &mut namespaces,
            &mut crds,
            &mut objects,
        )?;
    }

    // Infrastructure namespaces.
    for infra in cluster::INFRA_NAMESPACES {
        let (ns, name) = (infra.name, infra.workload);
        let d = cluster::deployment(
            ns,
            name,
            infra.replicas,
            infra.image,
            &[("http", infra.port)],
            seed,
        );
        let kids = workloads::deployment_children(
            &d,
            &nodes,
            &mut |i| ids::pick(seed, &format!("{ns}/{name}/{i}"), nodes.len()),
            &mut |n| ips.next(n),
            seed,
        );
        objects.push(d);
        objects.extend(kids);
    }

    // User namespaces.
    for i in 0..sc.namespaces {
        let mut objs = cluster::user_namespace(i, seed);
        namespaces.push(objs.remove(0));
        objects.extend(objs);
        let ns = cluster::user_namespace_name(i);
        let d = cluster::deployment(
            &ns,
            "web",
            sc.pods_per_namespace,
            "public.ecr.aws/nginx/nginx:1.25",
            &[("http", 8080), ("metrics", 9102)],
            seed,
        );
        let kids = workloads::deployment_children(
            &d,
            &nodes,
            &mut |k| ids::pick(seed, &format!("{ns}/web/{k}"), nodes.len()),
            &mut |n| ips.next(n),
            seed,
        );
        objects.push(d);
        objects.extend(kids);
    }

    // Fargate nodes and the profile's pods, one per node; they stay out of `nodes`, so
    // DaemonSet pods and the other workloads are seeded on EC2 nodes only.
    if sc.fargate_nodes > 0 {
        namespaces.push(cluster::namespace(cluster::FARGATE_NAMESPACE, &[], seed));
        let mut fargate: Vec<NodeInfo> = Vec::with_capacity(sc.fargate_nodes);
        for j in 0..sc.fargate_nodes {
            let (n, info) = cluster::fargate_node(j, sc.nodes, seed, &sc.region);
            objects.push(n);
            fargate.push(info);
        }
        let d = cluster::fargate_deployment(sc.fargate_nodes, seed);
        let kids = workloads::deployment_children(
            &d,
            &fargate,
            &mut |k| k,
            // A Fargate pod's IP is its node's InternalIP.
            &mut |n| n.ip.clone(),
            seed,
        );
        objects.push(d);
        objects.extend(kids);
    }

    if let Some((zone, pods)) = ips.overflow() {
        let nodes_there = nodes.iter().filter(|n| n.zone == zone).count();
        return Err(ScenarioError::Invalid(format!(
            "the scenario places {pods} pods on the {nodes_there} node(s) of zone {}{}, more than \
             the {MAX_PODS_PER_ZONE} pod addresses of its subnet; lower --namespaces or \
             --pods-per-namespace, or add nodes (they spread over {ZONES} zones)",
            sc.region,
            (b'a' + zone as u8) as char,
        )));
    }
    let mut out = namespaces;
    out.extend(crds);
    out.extend(objects);
    Ok(out)
}
