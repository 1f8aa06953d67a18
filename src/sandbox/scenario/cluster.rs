//! The EKS side of the scenario: nodes, kube-system add-ons (aws-node,
//! kube-proxy, coredns), the organisation's infrastructure namespaces and the
//! user namespaces with their NetworkPolicies and workloads.

use serde_json::{Value, json};

use super::net::{NodeInfo, node_address};
use super::{BASE_TIME, ids};

/// Kubelet version of the seeded nodes (EKS 1.29 AMI naming).
pub const KUBELET_VERSION: &str = "v1.29.15-eks-473151a";

/// Node `i` of the cluster, an EC2 worker of a managed node group.
pub fn node(i: usize, seed: u64, region: &str) -> (Value, NodeInfo) {
    let (zone, ip) = node_address(i);
    let o = ip.octets();
    let domain = if region == "us-east-1" {
        "ec2.internal".to_string()
    } else {
        format!("{}.compute.internal", region)
    };
    let name = format!("ip-{}-{}-{}-{}.{domain}", o[0], o[1], o[2], o[3]);
    let az = format!("{}{}", region, ['a', 'b', 'c'][zone % 3]);
    let instance_type = if i % 4 == 3 {
        "m5.2xlarge"
    } else {
        "m5.xlarge"
    };
    let nodegroup = if i % 4 == 3 { "large" } else { "general" };
    let instance_id = format!("i-0{:016x}", ids::hash(seed, &name) >> 4);
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/instance-type": instance_type,
                "beta.kubernetes.io/os": "linux",
                "eks.amazonaws.com/capacityType": "ON_DEMAND",
                "eks.amazonaws.com/nodegroup": nodegroup,
                "eks.amazonaws.com/nodegroup-image": "ami-0c5b0a1d1fbb3e2a7",
                "eks.amazonaws.com/sourceLaunchTemplateVersion": "1",
                "failure-domain.beta.kubernetes.io/region": region,
                "failure-domain.beta.kubernetes.io/zone": az,
                "k8s.io/cloud-provider-aws": format!("{:032x}", u128::from(ids::hash(seed, "cluster"))),
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "node.kubernetes.io/instance-type": instance_type,
                "topology.k8s.aws/zone-id": format!("{}-az{}", region_short(region), zone + 1),
                "topology.kubernetes.io/region": region,
                "topology.kubernetes.io/zone": az,
            },
            "annotations": {
                "alpha.kubernetes.io/provided-node-ip": ip.to_string(),
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "creationTimestamp": BASE_TIME,
        },
        "spec": {"providerID": format!("aws:///{az}/{instance_id}")},
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip.to_string()},
                {"type": "InternalDNS", "address": name},
                {"type": "Hostname", "address": name},
            ],
            "allocatable": {"cpu": if i % 4 == 3 { "7910m" } else { "3920m" },
                            "ephemeral-storage": "95551679124", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                            "memory": if i % 4 == 3 { "31369500Ki" } else { "15136204Ki" },
                            "pods": "58"},
            "capacity": {"cpu": if i % 4 == 3 { "8" } else { "4" },
                         "ephemeral-storage": "104845292Ki", "hugepages-1Gi": "0", "hugepages-2Mi": "0",
                         "memory": if i % 4 == 3 { "32408860Ki" } else { "16175564Ki" },
                         "pods": "58"},
            "conditions": kubelet_ready_conditions(),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": ids::uid(seed, &format!("boot/{name}")),
                "containerRuntimeVersion": "containerd://1.7.27",
                "kernelVersion": "5.10.235-227.919.amzn2.x86_64",
                "kubeProxyVersion": KUBELET_VERSION,
                "kubeletVersion": KUBELET_VERSION,
                "machineID": format!("ec2{:029x}", u128::from(ids::hash(seed, &format!("machine/{name}")))),
                "operatingSystem": "linux",
                "osImage": "Amazon Linux 2",
                "systemUUID": format!("ec2{:029x}", u128::from(ids::hash(seed, &format!("sys/{name}")))),
            },
        },
    });
    super::workloads::set_uid(&mut v, seed);
    (
        v,
        NodeInfo {
            index: i,
            name,
            ip: ip.to_string(),
            zone,
        },
    )
}

/// AWS's short region code used in zone IDs: eu-west-1 -> euw1, ap-southeast-2 -> apse2.
fn region_short(region: &str) -> String {
    let mut parts = region.split('-');
    let area = parts.next().unwrap_or_default();
    let dir = parts.next().unwrap_or_default();
    let num = parts.next().unwrap_or_default();
    let d = match dir {
        "northeast" => "ne",
        "southeast" => "se",
        "northwest" => "nw",
        "southwest" => "sw",
        other => other.get(..1).unwrap_or_default(),
    };
    format!("{area}{d}{num}")
}

/// A Namespace with the label the API server adds and any extra labels.
pub fn namespace(name: &str, labels: &[(&str, &str)], seed: u64) -> Value {
    let mut l = json!({"kubernetes.io/metadata.name": name});
    for (k, v) in labels {
        l[*k] = json!(v);
    }
    let mut ns = json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": name, "labels": l, "creationTimestamp": BASE_TIME},
        "spec": {"finalizers": ["kubernetes"]},
        "status": {"phase": "Active"},
    });
    super::workloads::set_uid(&mut ns, seed);
    ns
}

/// Name of user namespace `i` (0-based).
pub fn user_namespace_name(i: usize) -> String {
    format!("team-{:04}", i + 1)
}

/// User namespace `i`: its Namespace and NetworkPolicies `default` and
/// `allow-ingress-controllers`, plus `allow-prometheus-scraping` in every third.
pub fn user_namespace(i: usize, seed: u64) -> Vec<Value> {
    let name = user_namespace_name(i);
    let mut out = vec![namespace(
        &name,
        &[("team", &format!("team{}", i % 40))],
        seed,
    )];
    let np = |np_name: &str, ingress: Value| {
        let mut v = json!({
            "apiVersion": "networking.k8s.io/v1",
            "kind": "NetworkPolicy",
            "metadata": {"name": np_name, "namespace": name, "creationTimestamp": BASE_TIME},
            "spec": {"podSelector": {}, "ingress": ingress, "policyTypes": ["Ingress"]},
        });
        super::workloads::set_uid(&mut v, seed);
        v
    };
    out.push(np("default", json!([{"from": [{"podSelector": {}}]}])));
    out.push(np(
        "allow-ingress-controllers",
        json!([{"from": [{"namespaceSelector": {"matchLabels": {"component": "ingress-controllers"}}}]}]),
    ));
    if i.is_multiple_of(3) {
        out.push(np(
            "allow-prometheus-scraping",
            json!([{"from": [{"namespaceSelector": {"matchLabels": {"component": "monitoring"}}}],
                    "ports": [{"protocol": "TCP", "port": "metrics"}]}]),
        ));
    }
    out
}

/// A plain Deployment (replicas, labels app=`app`, container ports).
pub fn deployment(
    ns: &str,
    name: &str,
    replicas: usize,
    image: &str,
    ports: &[(&str, u16)],
    seed: u64,
) -> Value {
    let ports: Vec<Value> = ports
        .iter()
        .map(|(n, p)| json!({"name": n, "containerPort": p, "protocol": "TCP"}))
        .collect();
    let mut d = json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": {"app": name}, "generation": 1,
                     "annotations": {"deployment.kubernetes.io/revision": "1"},
                     "creationTimestamp": BASE_TIME},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": {"app": name}},
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": "25%"}},
            "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{
                    "name": name, "image": image, "ports": ports,
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}},
                }]},
            },
        },
        "status": super::workloads::deployment_status(replicas),
    });
    super::workloads::set_uid(&mut d, seed);
    d
}

/// The EKS add-on DaemonSets and Deployment every EKS cluster has in kube-system.
pub fn eks_addons(region: &str, seed: u64) -> Vec<Value> {
    let ecr = format!("602401143452.dkr.ecr.{region}.amazonaws.com");
    let ds = |name: &str, image: String, ports: Value| {
        let mut v = json!({
            "apiVersion": "apps/v1",
            "kind": "DaemonSet",
            "metadata": {"name": name, "namespace": "kube-system", "generation": 1,
                         "labels": {"k8s-app": name},
                         "annotations": {"deprecated.daemonset.template.generation": "1"},
                         "creationTimestamp": BASE_TIME},
            "spec": {
                "selector": {"matchLabels": {"k8s-app": name}},
                "updateStrategy": {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": "10%"}},
                "template": {
                    "metadata": {"labels": {"k8s-app": name}},
                    "spec": {
                        "hostNetwork": true,
                        "priorityClassName": "system-node-critical",
                        "serviceAccountName": name,
                        "affinity": {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                            "nodeSelectorTerms": [{"matchExpressions": [
                                {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                                {"key": "eks.amazonaws.com/compute-type", "operator": "NotIn",
                                 "values": ["fargate", "hybrid", "auto"]},
                            ]}]}}},
                        "tolerations": [{"operator": "Exists"}],
                        "containers": [{"name": name, "image": image, "ports": ports,
                                        "securityContext": {"privileged": true}}],
                    },
                },
            },
        });
        super::workloads::set_uid(&mut v, seed);
        v
    };
    let mut coredns = deployment(
        "kube-system",
        "coredns",
        2,
        &format!("{ecr}/eks/coredns:v1.11.1-eksbuild.9"),
        &[("dns", 53), ("metrics", 9153)],
        seed,
    );
    coredns["metadata"]["labels"] =
        json!({"k8s-app": "kube-dns", "eks.amazonaws.com/component": "coredns"});
    coredns["spec"]["selector"] =
        json!({"matchLabels": {"k8s-app": "kube-dns", "eks.amazonaws.com/component": "coredns"}});
    coredns["spec"]["template"]["metadata"]["labels"] =
        json!({"k8s-app": "kube-dns", "eks.amazonaws.com/component": "coredns"});
    coredns["spec"]["template"]["spec"]["serviceAccountName"] = json!("coredns");
    coredns["spec"]["template"]["spec"]["priorityClassName"] = json!("system-cluster-critical");
    let mut kube_dns = json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "kube-dns", "namespace": "kube-system",
                     "labels": {"k8s-app": "kube-dns", "kubernetes.io/name": "CoreDNS",
                                "eks.amazonaws.com/component": "kube-dns"},
                     "creationTimestamp": BASE_TIME},
        "spec": {"clusterIP": "172.20.0.10", "clusterIPs": ["172.20.0.10"], "type": "ClusterIP",
                 "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": 53},
                           {"name": "dns-tcp", "port": 53, "protocol": "TCP", "targetPort": 53}],
                 "selector": {"k8s-app": "kube-dns"}},
    });
    super::workloads::set_uid(&mut kube_dns, seed);
    let sa = |name: &str| {
        let mut v = json!({"apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": "kube-system", "creationTimestamp": BASE_TIME}});
        super::workloads::set_uid(&mut v, seed);
        v
    };
    vec![
        sa("aws-node"),
        sa("kube-proxy"),
        sa("coredns"),
        ds(
            "aws-node",
            format!("{ecr}/amazon-k8s-cni:v1.18.1-eksbuild.1"),
            json!([{"containerPort": 61678, "name": "metrics", "protocol": "TCP"}]),
        ),
        ds(
            "kube-proxy",
            format!("{ecr}/eks/kube-proxy:v1.29.3-minimal-eksbuild.2"),
            json!([]),
        ),
        coredns,
        kube_dns,
    ]
}

/// An infrastructure namespace of the seed organisation and its one workload.
pub struct InfraNamespace {
    pub name: &'static str,
    /// Value of the `component` label (what the user policies select on).
    pub component: Option<&'static str>,
    pub workload: &'static str,
    pub replicas: usize,
    pub image: &'static str,
    pub port: u16,
}

/// The namespaces `deny-aws-imds` exempts (besides kube-system).
pub const INFRA_NAMESPACES: &[InfraNamespace] = &[
    InfraNamespace {
        name: "ingress-controllers",
        component: Some("ingress-controllers"),
        workload: "ingress-nginx-controller",
        replicas: 2,
        image: "registry.k8s.io/ingress-nginx/controller:v1.10.1",
        port: 80,
    },
    InfraNamespace {
        name: "monitoring",
        component: Some("monitoring"),
        workload: "prometheus",
        replicas: 1,
        image: "quay.io/prometheus/prometheus:v2.52.0",
        port: 9090,
    },
    InfraNamespace {
        name: "cert-manager",
        component: None,
        workload: "cert-manager",
        replicas: 1,
        image: "quay.io/jetstack/cert-manager-controller:v1.14.5",
        port: 9402,
    },
    InfraNamespace {
        name: "logging",
        component: None,
        workload: "fluent-bit-aggregator",
        replicas: 1,
        image: "cr.fluentbit.io/fluent/fluent-bit:3.0.4",
        port: 2020,
    },
    InfraNamespace {
        name: "velero",
        component: None,
        workload: "velero",
        replicas: 1,
        image: "velero/velero:v1.13.2",
        port: 8085,
    },
];

/// The namespace a Fargate profile selects: its pods run on Fargate nodes only.
pub const FARGATE_NAMESPACE: &str = "fargate-apps";
/// The Deployment of [`FARGATE_NAMESPACE`], one replica per Fargate node.
pub const FARGATE_WORKLOAD: &str = "app";
/// The taint EKS puts on every Fargate node (`eks.amazonaws.com/compute-type=fargate:NoSchedule`).
pub fn fargate_taint() -> Value {
    json!({"key": crate::kinds::FARGATE_LABEL, "value": "fargate", "effect": "NoSchedule"})
}

/// Fargate node `j` (0-based) of a cluster with `ec2_nodes` EC2 nodes, as EKS registers
/// it. Sources: the EKS user guide, "AWS Fargate considerations"
/// (https://docs.aws.amazon.com/eks/latest/userguide/fargate.html: each Fargate pod runs
/// in its own compute boundary, DaemonSets are not supported there), and
/// `kubectl describe nodes` / `kubectl get pods -o wide` of real EKS Fargate clusters
/// (e.g. https://linuxer.name/tag/nodeless, and a public EKS 1.18 walkthrough whose node
/// reads `fargate-ip-192-168-105-82.eu-central-1.compute.internal`):
/// - name `fargate-ip-A-B-C-D.<region>.compute.internal`, while the `kubernetes.io/hostname`
///   label and the InternalDNS/Hostname addresses keep the plain `ip-A-B-C-D...` name;
/// - label `eks.amazonaws.com/compute-type=fargate` and taint
///   `eks.amazonaws.com/compute-type=fargate:NoSchedule`;
/// - providerID `aws:///<zone>/<10 hex>-<32 hex>/<node name>`, capacity `pods: 1`;
/// - the pod's IP is the node's InternalIP (the pod has its own ENI).
///
/// Addresses come after the EC2 nodes' in the same node range (`net::node_address`).
pub fn fargate_node(j: usize, ec2_nodes: usize, seed: u64, region: &str) -> (Value, NodeInfo) {
    let (zone, ip) = node_address(ec2_nodes + j);
    let o = ip.octets();
    let domain = if region == "us-east-1" {
        "ec2.internal".to_string()
    } else {
        format!("{}.compute.internal", region)
    };
    let host = format!("ip-{}-{}-{}-{}.{domain}", o[0], o[1], o[2], o[3]);
    let name = format!("fargate-{host}");
    let az = format!("{}{}", region, ['a', 'b', 'c'][zone % 3]);
    let task = format!(
        "{:010x}-{:032x}",
        ids::hash(seed, "fargate-profile") >> 24,
        u128::from(ids::hash(seed, &format!("task/{name}")))
    );
    let mut v = json!({
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "labels": {
                "beta.kubernetes.io/arch": "amd64",
                "beta.kubernetes.io/os": "linux",
                (crate::kinds::FARGATE_LABEL): "fargate",
                "failure-domain.beta.kubernetes.io/region": region,
                "failure-domain.beta.kubernetes.io/zone": az,
                "kubernetes.io/arch": "amd64",
                "kubernetes.io/hostname": host,
                "kubernetes.io/os": "linux",
                "topology.kubernetes.io/region": region,
                "topology.kubernetes.io/zone": az,
            },
            "annotations": {
                "node.alpha.kubernetes.io/ttl": "0",
                "volumes.kubernetes.io/controller-managed-attach-detach": "true",
            },
            "creationTimestamp": BASE_TIME,
        },
        "spec": {
            "providerID": format!("aws:///{az}/{task}/{name}"),
            "taints": [fargate_taint()],
        },
        "status": {
            "addresses": [
                {"type": "InternalIP", "address": ip.to_string()},
                {"type": "InternalDNS", "address": host},
                {"type": "Hostname", "address": host},
            ],
            "allocatable": {"cpu": "2", "ephemeral-storage": "28415276190", "hugepages-1Gi": "0",
                            "hugepages-2Mi": "0", "memory": "15547308Ki", "pods": "1"},
            "capacity": {"cpu": "2", "ephemeral-storage": "30832548Ki", "hugepages-1Gi": "0",
                         "hugepages-2Mi": "0", "memory": "15649708Ki", "pods": "1"},
            "conditions": kubelet_ready_conditions(),
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            "nodeInfo": {
                "architecture": "amd64",
                "bootID": ids::uid(seed, &format!("boot/{name}")),
                "containerRuntimeVersion": "containerd://1.7.27",
                "kernelVersion": "5.10.235-227.919.amzn2.x86_64",
                "kubeProxyVersion": KUBELET_VERSION,
                "kubeletVersion": KUBELET_VERSION,
                "machineID": "",
                "operatingSystem": "linux",
                "osImage": "Amazon Linux 2",
                "systemUUID": format!("ec2{:029x}", u128::from(ids::hash(seed, &format!("sys/{name}")))),
            },
        },
    });
    super::workloads::set_uid(&mut v, seed);
    (
        v,
        NodeInfo {
            index: ec2_nodes + j,
            name,
            ip: ip.to_string(),
            zone,
        },
    )
}

/// The Fargate profile's Deployment: `replicas` pods of namespace [`FARGATE_NAMESPACE`].
/// Its template names the scheduler EKS runs for Fargate beside the default one
/// (`fargate-scheduler`: EKS user guide fargate.html, "The Fargate controllers include a
/// new scheduler"; the name as real pods show it, https://linuxer.name/tag/nodeless) and,
/// so that the sandbox's one scheduler keeps it on Fargate if it is ever re-created, a
/// nodeSelector on the compute-type label and a toleration of the Fargate taint.
pub fn fargate_deployment(replicas: usize, seed: u64) -> Value {
    let mut d = deployment(
        FARGATE_NAMESPACE,
        FARGATE_WORKLOAD,
        replicas,
        "public.ecr.aws/nginx/nginx:1.25",
        &[("http", 8080)],
        seed,
    );
    let spec = &mut d["spec"]["template"]["spec"];
    spec["schedulerName"] = json!("fargate-scheduler");
    spec["nodeSelector"] = json!({(crate::kinds::FARGATE_LABEL): "fargate"});
    spec["tolerations"] = json!([{"key": crate::kinds::FARGATE_LABEL, "operator": "Equal",
                                  "value": "fargate", "effect": "NoSchedule"}]);
    d
}

/// The conditions a healthy kubelet posts, on EC2 and Fargate nodes alike.
fn kubelet_ready_conditions() -> Value {
    let cond = |t: &str, s: &str, reason: &str, msg: &str| {
        json!({"type": t, "status": s, "reason": reason, "message": msg,
               "lastHeartbeatTime": BASE_TIME, "lastTransitionTime": BASE_TIME})
    };
    json!([
        cond(
            "MemoryPressure",
            "False",
            "KubeletHasSufficientMemory",
            "kubelet has sufficient memory available"
        ),
        cond(
            "DiskPressure",
            "False",
            "KubeletHasNoDiskPressure",
            "kubelet has no disk pressure"
        ),
        cond(
            "PIDPressure",
            "False",
            "KubeletHasSufficientPID",
            "kubelet has sufficient PID available"
        ),
        cond(
            "Ready",
            "True",
            "KubeletReady",
            "kubelet is posting ready status"
        ),
    ])
}
