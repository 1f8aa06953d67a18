//! Policy engine: traffic between pods and nodes (the own-node exemption as Calico
//! applies it), addresses resolved to the pods and nodes holding them, and verdicts over
//! a whole CIDR.

use std::net::IpAddr;

use assert_cmd::Command;
use calico_migrate::policy::{
    Caveat, ClusterModel, Coverage, Peer, PeerError, PolicyIndex, Protocol, Reason,
};

const XYZ: &str = include_str!("fixtures/policy/xyz.yaml");
const IMDS: &str = include_str!("fixtures/policy/deny-aws-imds.yaml");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/policy");

/// node-1 and node-2 with addresses; node-3 (where x/c runs) has no Node object. A
/// hostNetwork agent runs on node-1.
const NODES: &str = "apiVersion: v1
kind: Node
metadata: {name: node-1}
status: {addresses: [{type: InternalIP, address: 10.1.0.1}, {type: Hostname, address: ip-10-1-0-1}]}
---
apiVersion: v1
kind: Node
metadata: {name: node-2}
status: {addresses: [{type: InternalIP, address: 10.1.0.2}]}
---
apiVersion: v1
kind: Pod
metadata: {name: agent, namespace: kube-system}
spec: {nodeName: node-1, hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 10.1.0.1}";

/// Namespace x isolated both ways, nothing allowed.
const X_DENY_ALL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}";

fn index(extra: &[&str]) -> PolicyIndex {
    let mut m = ClusterModel::new();
    m.add_yaml(XYZ, "xyz.yaml").unwrap();
    m.add_yaml(NODES, "nodes.yaml").unwrap();
    for (i, text) in extra.iter().enumerate() {
        m.add_yaml(text, &format!("extra-{i}.yaml")).unwrap();
    }
    PolicyIndex::build(m).unwrap_or_else(|e| panic!("fixture should load: {e}"))
}

fn pod(ix: &PolicyIndex, key: &str) -> Peer {
    Peer::Pod(ix.pod_index(key).unwrap_or_else(|| panic!("no pod {key}")))
}

fn node(ix: &PolicyIndex, name: &str) -> Peer {
    Peer::Node(ix.hosts().node_index(name).unwrap())
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

#[test]
fn a_node_reaches_its_own_pods_whatever_their_ingress_policy() {
    let ix = index(&[X_DENY_ALL]);
    // x/a runs on node-1, x/b on node-2.
    let v = ix
        .verdict_between(node(&ix, "node-1"), pod(&ix, "x/a"), 80, Protocol::Tcp)
        .unwrap();
    assert!(v.allowed);
    assert_eq!(v.ingress.unwrap().reason, Reason::LocalHost);
    assert_eq!(v.egress.reason, Reason::NotApplicable);
    assert_eq!(v.caveats, vec![Caveat::OwnNode]);

    let v = ix
        .verdict_between(node(&ix, "node-1"), pod(&ix, "x/b"), 80, Protocol::Tcp)
        .unwrap();
    assert!(
        !v.allowed,
        "another node's traffic meets x/b's ingress policy"
    );
    assert!(matches!(
        v.ingress.unwrap().reason,
        Reason::EndOfTier { .. }
    ));
    assert!(v.caveats.is_empty());

    // The node by its address, and a hostNetwork pod on it, are the same party.
    for from in [Peer::Address(ip("10.1.0.1")), pod(&ix, "kube-system/agent")] {
        let own = ix.verdict_between(from, pod(&ix, "x/a"), 80, Protocol::Tcp);
        assert!(own.unwrap().allowed, "{from:?} -> x/a");
        let other = ix.verdict_between(from, pod(&ix, "x/b"), 80, Protocol::Tcp);
        assert!(!other.unwrap().allowed, "{from:?} -> x/b");
    }
    let (agent, xa, xb) = (
        ix.pod_index("kube-system/agent").unwrap(),
        ix.pod_index("x/a").unwrap(),
        ix.pod_index("x/b").unwrap(),
    );
    assert!(ix.allowed(agent, xa, 80, Protocol::Tcp));
    assert!(!ix.allowed(agent, xb, 80, Protocol::Tcp));
    let caveats = ix.verdict(agent, xa, 80, Protocol::Tcp).caveats;
    assert_eq!(caveats, vec![Caveat::HostNetworkSource, Caveat::OwnNode]);
}

#[test]
fn the_matrix_applies_the_own_node_exemption_per_pod_pair() {
    // w1 and w2 differ only in their node, so they share a class: the agent's row must
    // follow the nodes, not the class.
    let twins = "apiVersion: v1
kind: Pod
metadata: {name: w1, namespace: x, labels: {app: w}}
spec: {nodeName: node-1, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.21}
---
apiVersion: v1
kind: Pod
metadata: {name: w2, namespace: x, labels: {app: w}}
spec: {nodeName: node-2, containers: [{name: c, image: i}]}
status: {podIP: 10.0.1.22}";
    let ix = index(&[X_DENY_ALL, twins]);
    let m = ix.matrix(None, &[], 80, Protocol::Tcp);
    let pos = |key: &str| {
        m.pods
            .iter()
            .position(|&p| ix.pods()[p].key() == key)
            .unwrap()
    };
    let agent = pos("kube-system/agent");
    assert!(m.allowed(agent, pos("x/a")), "same node (node-1)");
    assert!(!m.allowed(agent, pos("x/b")), "node-2");
    assert!(!m.allowed(agent, pos("x/c")), "node-3");
    assert!(m.allowed(agent, pos("x/w1")), "same node (node-1)");
    assert!(!m.allowed(agent, pos("x/w2")), "node-2");
    assert_eq!(
        m.classes.class_of[pos("x/w1")],
        m.classes.class_of[pos("x/w2")]
    );
    // Every pod pair agrees with the pod-by-pod answer.
    for (i, &s) in m.pods.iter().enumerate() {
        for (j, &d) in m.pods.iter().enumerate() {
            assert_eq!(
                m.allowed(i, j),
                ix.allowed(s, d, 80, Protocol::Tcp),
                "{} -> {}",
                ix.pods()[s].key(),
                ix.pods()[d].key()
            );
        }
    }
}

#[test]
fn a_pod_reaches_its_own_node_only_through_its_egress_policy() {
    let ix = index(&[X_DENY_ALL]);
    let v = ix
        .verdict_between(pod(&ix, "x/a"), node(&ix, "node-1"), 10250, Protocol::Tcp)
        .unwrap();
    assert!(
        !v.allowed,
        "Calico applies x/a's egress policy towards its node"
    );
    assert_eq!(v.caveats, vec![Caveat::OwnNode]);
    assert!(v.ingress.is_none());
    // Without egress policy the node is reached; another node carries no caveat.
    let ix = index(&[]);
    let v = ix
        .verdict_between(pod(&ix, "x/a"), node(&ix, "node-2"), 10250, Protocol::Tcp)
        .unwrap();
    assert!(v.allowed);
    assert!(v.caveats.is_empty());
}

#[test]
fn another_nodes_address_is_judged_by_ip_blocks() {
    let allow_nodes = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-nodes, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{ipBlock: {cidr: 10.1.0.0/24, except: [10.1.0.1/32]}}]}]";
    let ix = index(&[allow_nodes]);
    let from2 = ix.verdict_between(node(&ix, "node-2"), pod(&ix, "x/a"), 80, Protocol::Tcp);
    let v = from2.unwrap();
    assert!(v.allowed);
    assert!(matches!(v.ingress.unwrap().reason, Reason::Rule { .. }));
    // node-1 is in the except, but it is x/a's own node: let through regardless.
    let from1 = ix.verdict_between(node(&ix, "node-1"), pod(&ix, "x/a"), 80, Protocol::Tcp);
    assert!(from1.unwrap().allowed);
    // ... and blocked towards x/b, which runs on node-2.
    let v = ix.verdict_between(node(&ix, "node-1"), pod(&ix, "x/b"), 80, Protocol::Tcp);
    assert!(!v.unwrap().allowed);
}

#[test]
fn addresses_resolve_to_the_pod_that_holds_them() {
    let ix = index(&[X_DENY_ALL]);
    let by_ip = ix.verdict_between(
        pod(&ix, "y/a"),
        Peer::Address(ip("10.0.1.11")),
        80,
        Protocol::Tcp,
    );
    let by_pod = ix.verdict_between(pod(&ix, "y/a"), pod(&ix, "x/b"), 80, Protocol::Tcp);
    assert_eq!(by_ip.unwrap(), by_pod.unwrap());
    assert!(
        ix.verdict_between(pod(&ix, "y/a"), pod(&ix, "x/b"), 80, Protocol::Tcp)
            .unwrap()
            .ingress
            .is_some()
    );
}

#[test]
fn what_cannot_be_judged_is_an_error_not_a_guess() {
    let ix = index(&[]);
    // node-3 appears only as x/c's spec.nodeName: no address.
    let n3 = node(&ix, "node-3");
    assert_eq!(
        ix.verdict_between(pod(&ix, "x/a"), n3, 80, Protocol::Tcp),
        Err(PeerError::NodeWithoutAddress("node-3".into()))
    );
    assert_eq!(
        ix.verdict_between(n3, pod(&ix, "x/a"), 80, Protocol::Tcp),
        Err(PeerError::NodeWithoutAddress("node-3".into()))
    );
    // Its own pod needs no address.
    assert!(
        ix.verdict_between(n3, pod(&ix, "x/c"), 80, Protocol::Tcp)
            .unwrap()
            .allowed
    );
    assert_eq!(
        ix.verdict_between(
            node(&ix, "node-1"),
            Peer::Address(ip("8.8.8.8")),
            80,
            Protocol::Tcp
        ),
        Err(PeerError::NoWorkload)
    );
}

#[test]
fn a_node_with_a_bad_address_is_refused_with_its_field() {
    let mut m = ClusterModel::new();
    let err = m
        .add_yaml(
            "apiVersion: v1\nkind: Node\nmetadata: {name: n}\nstatus: {addresses: [{type: InternalIP, address: 10.0.0.300}]}",
            "nodes.yaml",
        )
        .unwrap_err();
    assert_eq!(err.field, "status.addresses[0].address");
    assert!(err.to_string().contains("nodes.yaml, document 0"), "{err}");
    let dup = "apiVersion: v1\nkind: Node\nmetadata: {name: n}\n---\napiVersion: v1\nkind: Node\nmetadata: {name: n}";
    let err = ClusterModel::new().add_yaml(dup, "dup.yaml").unwrap_err();
    assert!(err.message.contains("duplicate Node n"), "{err}");
}

#[test]
fn a_cidr_is_cut_where_the_policies_cut_it() {
    let ix = index(&[IMDS]);
    let v = ix.verdict_cidr(
        ix.pod_index("x/a").unwrap(),
        "169.254.0.0/16".parse().unwrap(),
        80,
        Protocol::Tcp,
    );
    assert_eq!(v.allowed, Coverage::Partly);
    let spans: Vec<(String, String, bool)> = v
        .ranges
        .iter()
        .map(|r| (r.first.to_string(), r.last.to_string(), r.verdict.allowed))
        .collect();
    assert_eq!(
        spans,
        vec![
            ("169.254.0.0".into(), "169.254.169.253".into(), true),
            ("169.254.169.254".into(), "169.254.169.254".into(), false),
            ("169.254.169.255".into(), "169.254.255.255".into(), true),
        ]
    );
    // 8080 is not denied: one range, allowed.
    let v = ix.verdict_cidr(
        ix.pod_index("x/a").unwrap(),
        "169.254.0.0/16".parse().unwrap(),
        8080,
        Protocol::Tcp,
    );
    assert_eq!(v.allowed, Coverage::All);
    assert_eq!(v.ranges.len(), 1);
}

#[test]
fn every_address_of_a_cidr_gets_its_ranges_verdict() {
    // Egress from x/a: 10.0.0.0/16 except y's /24, which holds pods; pods of x deny
    // ingress from x/a by label. The /22 spans x's, y's and z's pod addresses.
    let policies = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-except, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.0/24]}}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-from-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: c}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]";
    let ix = index(&[policies]);
    let xa = ix.pod_index("x/a").unwrap();
    let v = ix.verdict_cidr(xa, "10.0.0.0/22".parse().unwrap(), 80, Protocol::Tcp);
    assert_eq!(v.allowed, Coverage::Partly);
    // Contiguous, in order, covering the CIDR.
    assert_eq!(v.ranges.first().unwrap().first, ip("10.0.0.0"));
    assert_eq!(v.ranges.last().unwrap().last, ip("10.0.3.255"));
    let n = |a: IpAddr| match a {
        IpAddr::V4(a) => u32::from(a),
        IpAddr::V6(_) => unreachable!(),
    };
    for w in v.ranges.windows(2) {
        assert_eq!(n(w[0].last) + 1, n(w[1].first));
    }
    // Brute force: every address's own verdict equals its range's.
    for r in &v.ranges {
        for a in n(r.first)..=n(r.last) {
            let want = ix.verdict_to_address(xa, IpAddr::from(a.to_be_bytes()), 80, Protocol::Tcp);
            assert_eq!(want, r.verdict, "{}", IpAddr::from(a.to_be_bytes()));
        }
    }
    // The pods are named, and x/c (its ingress only admits x/b) is blocked.
    let xc = v
        .ranges
        .iter()
        .find(|r| r.pod.as_deref() == Some("x/c"))
        .unwrap();
    assert!(!xc.verdict.allowed);
    let xb = v
        .ranges
        .iter()
        .find(|r| r.pod.as_deref() == Some("x/b"))
        .unwrap();
    assert!(xb.verdict.allowed);
    assert!(
        v.ranges
            .iter()
            .any(|r| r.first == ip("10.0.2.0") && !r.verdict.allowed)
    );
}

fn cli() -> Command {
    let mut c = Command::cargo_bin("calico-migrate").unwrap();
    c.env_remove("KUBECONFIG").env("NO_COLOR", "1");
    c
}

#[test]
fn cli_explains_node_and_cidr_verdicts() {
    let dir = tempfile::tempdir().unwrap();
    let nodes = dir.path().join("nodes.yaml");
    let deny = dir.path().join("deny.yaml");
    std::fs::write(&nodes, NODES).unwrap();
    std::fs::write(&deny, X_DENY_ALL).unwrap();
    let imds = std::path::PathBuf::from(format!("{FIXTURES}/deny-aws-imds.yaml"));
    // `policy explain --from FROM --to TO --port PORT [-o json]` over xyz, the nodes and
    // one more file: (success, stdout, stderr).
    let explain = |from: &str, to: &str, port: &str, json: bool, extra: &std::path::Path| {
        let mut c = cli();
        c.args([
            "policy", "explain", "--from", from, "--to", to, "--port", port,
        ]);
        if json {
            c.args(["-o", "json"]);
        }
        c.arg("-f").arg(format!("{FIXTURES}/xyz.yaml"));
        c.arg("-f").arg(&nodes).arg("-f").arg(extra);
        let o = c.output().unwrap();
        let text = |b: &[u8]| String::from_utf8_lossy(b).to_string();
        (o.status.success(), text(&o.stdout), text(&o.stderr))
    };

    let (ok, text, _) = explain("node:node-1", "x/a", "80", false, &deny);
    assert!(
        ok && text.contains("ALLOWED") && text.contains("own node"),
        "{text}"
    );

    let (ok, out, err) = explain("x/a", "169.254.0.0/16", "443", true, &imds);
    assert!(ok, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["cidr"]["allowed"], "partly");
    assert_eq!(v["cidr"]["ranges"][1]["first"], "169.254.169.254");
    assert_eq!(v["cidr"]["ranges"][1]["verdict"]["allowed"], false);

    let (ok, _, err) = explain("node:nope", "x/a", "80", false, &deny);
    assert!(!ok && err.contains("no node \"nope\""), "{err}");

    let (ok, _, err) = explain("node:node-1", "10.0.0.0/8", "80", false, &deny);
    assert!(!ok && err.contains("name a pod as --from"), "{err}");
}
