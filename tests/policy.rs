//! Policy engine: the Kubernetes e2e netpol scenarios, Calico semantics, bad input,
//! properties, and the `calico-migrate policy` CLI.

use std::net::IpAddr;

use assert_cmd::Command;
use calico_migrate::policy::{
    Action, Caveat, ClusterModel, Direction, InputError, PolicyIndex, Protocol, Reason, Selector,
    diff,
};
use proptest::prelude::*;

const XYZ: &str = include_str!("fixtures/policy/xyz.yaml");
const IMDS: &str = include_str!("fixtures/policy/deny-aws-imds.yaml");
const IMDS_V3: &str = include_str!("fixtures/policy/deny-aws-imds-v3.yaml");
const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/policy");

const NSS: [&str; 3] = ["x", "y", "z"];
const PODS: [&str; 3] = ["a", "b", "c"];

fn index(policies: &[&str]) -> PolicyIndex {
    try_index(policies).unwrap_or_else(|e| panic!("fixture should load: {e}"))
}

fn try_index(policies: &[&str]) -> Result<PolicyIndex, InputError> {
    let mut m = ClusterModel::new();
    m.add_yaml(XYZ, "xyz.yaml")?;
    for (i, p) in policies.iter().enumerate() {
        m.add_yaml(p, &format!("policy-{i}.yaml"))?;
    }
    PolicyIndex::build(m)
}

fn pod(ix: &PolicyIndex, key: &str) -> usize {
    ix.pod_index(key).unwrap_or_else(|| panic!("no pod {key}"))
}

/// Compare the 9x9 x/y/z matrix against `expect(src_ns, src_pod, dst_ns, dst_pod)`,
/// reporting every wrong cell, both as single verdicts and as the class matrix gives it.
fn assert_matrix(
    ix: &PolicyIndex,
    port: u16,
    proto: Protocol,
    expect: impl Fn(&str, &str, &str, &str) -> bool,
) {
    let mut wrong = Vec::new();
    let matrix = ix.matrix(None, &[], port, proto);
    for sn in NSS {
        for sp in PODS {
            for dn in NSS {
                for dp in PODS {
                    let (s, d) = (
                        pod(ix, &format!("{sn}/{sp}")),
                        pod(ix, &format!("{dn}/{dp}")),
                    );
                    let got = ix.allowed(s, d, port, proto);
                    let want = expect(sn, sp, dn, dp);
                    if got != want {
                        wrong.push(format!(
                            "{sn}/{sp} -> {dn}/{dp} {port}/{proto}: got {got}, want {want}"
                        ));
                    }
                    if matrix.allowed(s, d) != want {
                        wrong.push(format!(
                            "{sn}/{sp} -> {dn}/{dp} {port}/{proto}: matrix says {}, want {want}",
                            matrix.allowed(s, d)
                        ));
                    }
                }
            }
        }
    }
    assert!(wrong.is_empty(), "wrong cells:\n{}", wrong.join("\n"));
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

// ---------- Kubernetes e2e scenarios ----------

#[test]
fn no_policies_allow_everything() {
    let ix = index(&[]);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, _, _, _| true);
}

#[test]
fn default_deny_ingress() {
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-ingress, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress]}"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, _, dn, _| dn != "x");
    let v = ix.verdict(pod(&ix, "y/a"), pod(&ix, "x/a"), 80, Protocol::Tcp);
    match &v.ingress.as_ref().unwrap().reason {
        Reason::EndOfTier { tier, policies } => {
            assert_eq!(tier, "default");
            assert_eq!(policies[0].name, "deny-ingress");
        }
        other => panic!("unexpected reason {other:?}"),
    }
}

#[test]
fn default_deny_ingress_and_egress() {
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny-all, namespace: x}
spec: {podSelector: {}, policyTypes: [Ingress, Egress]}"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, _, dn, _| {
        sn != "x" && dn != "x"
    });
    assert!(!ix.allowed_external(pod(&ix, "x/a"), ip("8.8.8.8"), 53, Protocol::Udp));
}

#[test]
fn pod_selector_alone_means_same_namespace() {
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, sp, dn, dp| {
        !(dn == "x" && dp == "a") || (sn == "x" && sp == "b")
    });
}

#[test]
fn namespace_selector_alone_means_every_pod_there() {
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-ns-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, _, dn, dp| {
        !(dn == "x" && dp == "a") || sn == "y"
    });
}

#[test]
fn empty_namespace_selector_means_every_namespace() {
    // Default deny in x, then `namespaceSelector: {}`: every pod of every namespace.
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: deny, namespace: x}
spec:
  podSelector: {}
  policyTypes: [Ingress]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-everywhere, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {}}]}]"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, _, dn, dp| {
        dn != "x" || dp == "a"
    });
    // With a podSelector beside it: those pods, in every namespace.
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-b-anywhere, namespace: x}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {}, podSelector: {matchLabels: {pod: b}}}]}]"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, sp, dn, _| {
        dn != "x" || sp == "b"
    });
}

#[test]
fn namespace_and_pod_selector_in_one_peer_is_and() {
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: and, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchExpressions: [{key: ns, operator: In, values: [y]}]}
      podSelector: {matchLabels: {pod: b}}"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, sp, dn, dp| {
        !(dn == "x" && dp == "a") || (sn == "y" && sp == "b")
    });
}

#[test]
fn namespace_and_pod_selector_as_two_peers_is_or() {
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: or, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {ns: y}}
    - podSelector: {matchLabels: {pod: b}}"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, sp, dn, dp| {
        !(dn == "x" && dp == "a") || sn == "y" || (sn == "x" && sp == "b")
    });
}

#[test]
fn named_port_resolves_on_the_destination() {
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: named, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{ports: [{port: serve-81-udp, protocol: UDP}]}]"]);
    let to_xa = |_: &str, _: &str, dn: &str, dp: &str| dn == "x" && dp == "a";
    assert_matrix(&ix, 81, Protocol::Udp, |_, _, _, _| true);
    assert_matrix(&ix, 80, Protocol::Udp, |s, p, dn, dp| !to_xa(s, p, dn, dp));
    assert_matrix(&ix, 81, Protocol::Tcp, |s, p, dn, dp| !to_xa(s, p, dn, dp));
}

#[test]
fn end_port_covers_a_range() {
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: range, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, endPort: 81}]}]"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, _, _, _| true);
    assert_matrix(&ix, 81, Protocol::Tcp, |_, _, _, _| true);
    assert_matrix(&ix, 82, Protocol::Tcp, |_, _, dn, _| dn != "x");
}

#[test]
fn ip_block_except_matches_pod_addresses() {
    // Upstream "should enforce except clause while egress access to server in CIDR block".
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: except, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: [Egress]
  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.2.10/32]}}]}]"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, sp, dn, dp| {
        !(sn == "x" && sp == "a" && dn == "y" && dp == "a")
    });
    assert!(!ix.allowed_external(pod(&ix, "x/a"), ip("8.8.8.8"), 80, Protocol::Tcp));
}

#[test]
fn policies_are_additive_an_except_never_cancels_another_allow() {
    let ix = index(&[
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: cidr, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.11/32]}}]}]",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: pod-b, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{podSelector: {matchLabels: {pod: b}}}]}]",
    ]);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, _, _, _| true);
}

#[test]
fn protocol_without_port_allows_every_port_of_it() {
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: udp-only, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{protocol: UDP}]}]"]);
    assert_matrix(&ix, 80, Protocol::Udp, |_, _, _, _| true);
    assert_matrix(&ix, 12345, Protocol::Udp, |_, _, _, _| true);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, _, dn, _| dn != "x");
}

#[test]
fn missing_protocol_means_tcp_and_sctp_is_not_tcp() {
    let ix = index(&[
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: sctp, namespace: x}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 80, protocol: SCTP}]}]",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: tcp81, namespace: y}
spec:
  podSelector: {}
  ingress: [{ports: [{port: 81}]}]",
    ]);
    assert_matrix(&ix, 80, Protocol::Sctp, |_, _, dn, _| dn != "y");
    assert_matrix(&ix, 80, Protocol::Tcp, |_, _, dn, _| dn == "z");
    assert_matrix(&ix, 81, Protocol::Tcp, |_, _, dn, _| dn != "x");
    assert_matrix(&ix, 81, Protocol::Udp, |_, _, dn, _| dn == "z");
}

#[test]
fn egress_rules_add_the_egress_type_in_kubernetes() {
    // No policyTypes, egress rules only: Kubernetes makes it [Ingress, Egress].
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: egress-to-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  egress: [{to: [{namespaceSelector: {matchLabels: {ns: y}}}]}]"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, sp, dn, dp| {
        let from_xa = sn == "x" && sp == "a";
        let to_xa = dn == "x" && dp == "a";
        !to_xa && (!from_xa || dn == "y")
    });
}

// ---------- Calico ----------

#[test]
fn calico_egress_only_rules_default_to_egress_type_only() {
    let ix = index(&["apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: egress-to-y, namespace: x}
spec:
  selector: pod == 'a'
  egress: [{action: Allow, destination: {namespaceSelector: ns == 'y'}}]"]);
    // Unlike the Kubernetes policy above, ingress to x/a stays open.
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, sp, dn, _| {
        !(sn == "x" && sp == "a") || dn == "y"
    });
}

#[test]
fn calico_order_decides_before_kubernetes_policies() {
    let ix = index(&[
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: allow-all, namespace: x}
spec: {podSelector: {}, ingress: [{}]}",
        "apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-from-y}
spec:
  order: 100
  selector: projectcalico.org/namespace == 'x'
  ingress: [{action: Deny, source: {namespaceSelector: ns == 'y'}}]",
        "apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: allow-z-late}
spec:
  order: 2000
  selector: projectcalico.org/namespace == 'x'
  ingress: [{action: Deny, source: {namespaceSelector: ns == 'z'}}]",
    ]);
    // y is denied by order 100; z's Deny at order 2000 comes after the k8s allow (1000).
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, _, dn, _| {
        !(dn == "x" && sn == "y")
    });
    let v = ix.verdict(pod(&ix, "z/a"), pod(&ix, "x/a"), 80, Protocol::Tcp);
    let Reason::Rule { rule } = &v.ingress.unwrap().reason else {
        panic!("expected a rule")
    };
    assert_eq!(rule.policy.name, "allow-all");
    assert_eq!(rule.action, Action::Allow);
}

#[test]
fn missing_order_sorts_last_and_ties_break_by_name() {
    let ix = index(&[
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: b-allow}
spec:
  order: 5
  ingress: [{action: Allow}]",
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: a-deny}
spec:
  order: 5
  ingress: [{action: Deny, source: {selector: pod == 'c'}}]",
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: no-order-deny}
spec:
  ingress: [{action: Deny}]",
    ]);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, sp, _, _| sp != "c");
}

#[test]
fn pass_skips_to_the_next_tier() {
    let ix = index(&[
        "apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}",
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.guard-z}
spec:
  tier: security
  selector: projectcalico.org/namespace == 'z'
  ingress:
  - {action: Pass, source: {namespaceSelector: ns == 'x'}}
  - {action: Pass, source: {namespaceSelector: ns == 'z'}}
  - {action: Deny}",
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: only-a, namespace: z}
spec:
  podSelector: {}
  ingress: [{from: [{namespaceSelector: {matchLabels: {ns: x}}, podSelector: {matchLabels: {pod: a}}}]}]",
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.guard-y}
spec:
  tier: security
  selector: projectcalico.org/namespace == 'y'
  ingress: [{action: Pass}]",
    ]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, sp, dn, _| match dn {
        // Passed from x to the default tier, where only x/a is allowed; y denied in security.
        "z" => sn == "x" && sp == "a",
        // Passed and no default-tier policy selects y: the profile allows.
        _ => true,
    });
    let v = ix.verdict(pod(&ix, "y/a"), pod(&ix, "y/b"), 80, Protocol::Tcp);
    assert_eq!(v.ingress.unwrap().reason, Reason::PassedToProfile);
}

#[test]
fn tier_default_action_pass_lets_unmatched_traffic_through() {
    let tier = |action: &str| {
        format!(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: platform}}\nspec: {{order: 50, defaultAction: {action}}}\n"
        )
    };
    let gnp = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: platform.only-from-x}
spec:
  tier: platform
  selector: projectcalico.org/namespace == 'y'
  ingress: [{action: Deny, source: {namespaceSelector: ns == 'z'}}]";
    let passing = tier("Pass");
    let ix = index(&[passing.as_str(), gnp]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, _, dn, _| {
        !(dn == "y" && sn == "z")
    });
    let denying = tier("Deny");
    let ix = index(&[denying.as_str(), gnp]);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, _, dn, _| dn != "y");
}

#[test]
fn log_continues_and_the_deny_after_it_decides() {
    let ix = index(&[IMDS]);
    let v = ix.verdict_external(pod(&ix, "x/a"), ip("169.254.169.254"), 443, Protocol::Tcp);
    assert!(!v.allowed);
    assert_eq!(v.egress.logged.len(), 1);
    assert_eq!(v.egress.logged[0].action, Action::Log);
    let Reason::Rule { rule } = &v.egress.reason else {
        panic!("expected a rule")
    };
    assert_eq!(
        (rule.index, rule.action, rule.direction),
        (1, Action::Deny, Direction::Egress)
    );
}

#[test]
fn deny_aws_imds_blocks_80_and_443_only_outside_exempt_namespaces() {
    for text in [IMDS, IMDS_V3] {
        let ix = index(&[text]);
        let imds = ip("169.254.169.254");
        for ns in NSS {
            let p = pod(&ix, &format!("{ns}/a"));
            assert!(!ix.allowed_external(p, imds, 80, Protocol::Tcp));
            assert!(!ix.allowed_external(p, imds, 443, Protocol::Tcp));
            assert!(ix.allowed_external(p, imds, 8080, Protocol::Tcp));
            assert!(ix.allowed_external(p, imds, 80, Protocol::Udp));
            assert!(ix.allowed_external(p, ip("52.95.110.1"), 443, Protocol::Tcp));
        }
        // `not in` exempts monitoring; the Allow-to-0.0.0.0/0 rule keeps pod traffic open.
        let prom = pod(&ix, "monitoring/prometheus");
        assert!(ix.allowed_external(prom, imds, 80, Protocol::Tcp));
        assert_matrix(&ix, 80, Protocol::Tcp, |_, _, _, _| true);
    }
}

#[test]
fn not_equal_and_not_in_match_absent_labels_has_needs_the_label() {
    let ix = index(&["apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-unless-blue}
spec:
  order: 1
  selector: team != \"blue\" && pod not in {'c'}
  ingress:
  - {action: Deny, source: {selector: has(pod) && projectcalico.org/namespace == 'y'}}
  - {action: Allow}"]);
    // No pod has a team label: != selects a and b everywhere; c is excluded by `not in`.
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, _, _, dp| {
        !(sn == "y" && dp != "c")
    });
}

#[test]
fn rule_namespace_selector_and_automatic_labels() {
    let ix = index(&["apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: from-y-a, namespace: x}
spec:
  selector: all()
  ingress:
  - action: Allow
    source:
      namespaceSelector: kubernetes.io/metadata.name == 'y'
      selector: pod == 'a' && projectcalico.org/orchestrator == 'k8s' && projectcalico.org/serviceaccount == 'default'"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, sp, dn, _| {
        dn != "x" || (sn == "y" && sp == "a")
    });
}

#[test]
fn calico_namespaced_selector_stays_in_its_namespace() {
    let ix = index(&["apiVersion: crd.projectcalico.org/v1
kind: NetworkPolicy
metadata: {name: from-b, namespace: x}
spec:
  ingress: [{action: Allow, source: {selector: pod == 'b'}}]"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, sp, dn, _| {
        dn != "x" || (sn == "x" && sp == "b")
    });
}

#[test]
fn global_network_set_labels_match_external_addresses() {
    let ix = index(&[
        "apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkSet
metadata: {name: imds, labels: {role: metadata-service}}
spec: {nets: [169.254.169.254/32]}",
        "apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: deny-set}
spec:
  types: [Egress]
  egress:
  - {action: Deny, destination: {selector: role == 'metadata-service'}}
  - {action: Allow}",
    ]);
    let xa = pod(&ix, "x/a");
    assert!(!ix.allowed_external(xa, ip("169.254.169.254"), 80, Protocol::Tcp));
    assert!(ix.allowed_external(xa, ip("169.254.169.253"), 80, Protocol::Tcp));
}

#[test]
fn not_nets_and_not_ports_exclude() {
    let ix = index(&["apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: egress}
spec:
  types: [Egress]
  egress:
  - {action: Allow, protocol: TCP, destination: {notNets: [10.0.3.0/24], notPorts: ['81:90']}}"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, _, dn, _| dn != "z");
    assert_matrix(&ix, 81, Protocol::Tcp, |_, _, _, _| false);
    assert_matrix(&ix, 80, Protocol::Udp, |_, _, _, _| false);
}

#[test]
fn loopback_and_host_network_are_reported_as_implementation_defined() {
    let mut m = ClusterModel::new();
    m.add_yaml(XYZ, "xyz.yaml").unwrap();
    m.add_yaml(
        "apiVersion: v1
kind: Pod
metadata: {name: node-agent, namespace: x}
spec: {hostNetwork: true, containers: [{name: c, image: i}]}
status: {podIP: 192.168.0.5}",
        "host.yaml",
    )
    .unwrap();
    let ix = PolicyIndex::build(m).unwrap();
    let xa = pod(&ix, "x/a");
    assert_eq!(
        ix.verdict(xa, xa, 80, Protocol::Tcp).caveats,
        vec![Caveat::Loopback]
    );
    let host = pod(&ix, "x/node-agent");
    assert_eq!(
        ix.verdict(host, xa, 80, Protocol::Tcp).caveats,
        vec![Caveat::HostNetworkSource]
    );
    let v = ix.verdict(xa, host, 80, Protocol::Tcp);
    assert_eq!(v.caveats, vec![Caveat::HostNetworkDestination]);
    assert_eq!(v.ingress.unwrap().reason, Reason::NotApplicable);
}

#[test]
fn host_only_calico_policies_do_not_touch_pods() {
    let ix = index(&["apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: pre-dnat}
spec: {preDNAT: true, applyOnForward: true, ingress: [{action: Deny}]}"]);
    assert_matrix(&ix, 80, Protocol::Tcp, |_, _, _, _| true);
}

#[test]
fn service_account_names_protocol_numbers_and_ip_version() {
    let mut m = ClusterModel::new();
    m.add_yaml(XYZ, "xyz.yaml").unwrap();
    m.add_yaml(
        "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: scrape-only}
spec:
  selector: projectcalico.org/namespace == 'x'
  ingress:
  - {action: Allow, protocol: 6, source: {serviceAccounts: {names: [prometheus]}}, destination: {ports: [metrics-not-here, 80]}}
  - {action: Allow, notProtocol: TCP, ipVersion: 4}
  - {action: Allow, protocol: ICMP}",
        "p.yaml",
    )
    .unwrap();
    let ix = PolicyIndex::build(m).unwrap();
    let (prom, ya, xa) = (
        pod(&ix, "monitoring/prometheus"),
        pod(&ix, "y/a"),
        pod(&ix, "x/a"),
    );
    assert!(ix.allowed(prom, xa, 80, Protocol::Tcp));
    assert!(!ix.allowed(prom, xa, 81, Protocol::Tcp));
    assert!(!ix.allowed(ya, xa, 80, Protocol::Tcp));
    assert!(ix.allowed(ya, xa, 80, Protocol::Udp));
    assert!(ix.allowed(ya, xa, 80, Protocol::Sctp));
}

#[test]
fn empty_policy_types_default_like_missing_ones() {
    let ix = index(&["apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: empty-types, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  policyTypes: []
  egress: [{to: [{podSelector: {}}]}]"]);
    // Ingress (always) plus Egress (egress rules exist): x/a reaches only x, nobody reaches x/a.
    assert_matrix(&ix, 80, Protocol::Tcp, |sn, sp, dn, dp| {
        !(dn == "x" && dp == "a") && (!(sn == "x" && sp == "a") || dn == "x")
    });
}

#[test]
fn matrix_json_lists_implementation_defined_cells() {
    let ix = index(&[]);
    let m = ix.matrix(
        Some(&[pod(&ix, "x/a"), pod(&ix, "y/a")]),
        &[],
        80,
        Protocol::Tcp,
    );
    let v = m.to_json(&ix);
    let cells = v["implementation_defined"].as_array().unwrap();
    assert_eq!(cells.len(), 2);
    assert_eq!(cells[0]["why"], "loopback");
    assert_eq!(v["allowed"].as_object().unwrap().len(), 2);
}

// ---------- matrix and diff ----------

#[test]
fn matrix_classes_agree_with_single_verdicts() {
    let replicas: Vec<String> = (0..4)
        .map(|i| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: web-{i}, namespace: x, labels: {{app: web}}}}\n\
                 spec: {{containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.0.1.{}}}\n",
                100 + i
            )
        })
        .collect();
    let mut docs = vec![
        IMDS,
        include_str!("fixtures/policy/namespace-policies.yaml"),
    ];
    docs.extend(replicas.iter().map(String::as_str));
    let ix = index(&docs);
    let ext = vec![("169.254.169.254".to_string(), ip("169.254.169.254"))];
    let m = ix.matrix(None, &ext, 80, Protocol::Tcp);
    for (i, &s) in m.pods.iter().enumerate() {
        for (j, &d) in m.pods.iter().enumerate() {
            assert_eq!(m.allowed(i, j), ix.verdict(s, d, 80, Protocol::Tcp).allowed);
        }
        assert_eq!(
            m.allowed_external(i, 0),
            ix.allowed_external(s, ext[0].1, 80, Protocol::Tcp)
        );
    }
    assert!(m.classes.representatives.len() < m.pods.len());
}

#[test]
fn diff_finds_v1_and_v3_spellings_equivalent() {
    let d = diff(&index(&[IMDS]), &index(&[IMDS_V3])).unwrap();
    assert!(d.equivalent(), "{:?}", d.cells);
    assert!(d.added.is_empty() && d.removed.is_empty());
    assert_eq!(
        d.changed.len(),
        1,
        "the spec text differs even though the meaning does not"
    );
}

#[test]
fn diff_reports_a_lost_policy_with_every_cell() {
    let d = diff(&index(&[IMDS]), &index(&[])).unwrap();
    assert!(!d.equivalent());
    assert_eq!(
        d.removed,
        vec!["projectcalico.org/GlobalNetworkPolicy deny-aws-imds".to_string()]
    );
    let mut cells: Vec<(String, u16)> = d
        .cells
        .iter()
        .filter(|c| c.dst == "169.254.169.254")
        .map(|c| (c.src.clone(), c.port))
        .collect();
    cells.sort();
    cells.dedup();
    // 80 and 443 become reachable from the 9 x/y/z pods; monitoring was exempt.
    assert_eq!(cells.len(), 18, "{cells:?}");
    assert!(
        cells
            .iter()
            .all(|(src, port)| !src.starts_with("monitoring/") && (*port == 80 || *port == 443))
    );
    // Everything else that changes is IPv6: the GNP's final Allow names 0.0.0.0/0 only,
    // so the selected pods had no IPv6 egress at all.
    assert!(d.cells.iter().all(|c| !c.before && c.after));
    assert!(
        d.cells
            .iter()
            .all(|c| c.dst == "169.254.169.254" && c.protocol == Protocol::Tcp || c.dst == "::")
    );
}

#[test]
fn builds_from_json_objects_as_the_sandbox_stores_them() {
    let objects = vec![
        serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "x", "labels": {"ns": "x"}}}),
        serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"},
            "spec": {"containers": [{"name": "c", "image": "i"}]}, "status": {"podIP": "10.0.0.1"}}),
        serde_json::json!({"apiVersion": "crd.projectcalico.org/v1", "kind": "GlobalNetworkPolicy",
            "metadata": {"name": "deny-egress"}, "spec": {"types": ["Egress"]}}),
    ];
    let ix = PolicyIndex::from_objects(&objects).unwrap();
    let a = pod(&ix, "x/a");
    assert!(!ix.allowed_external(a, ip("1.1.1.1"), 443, Protocol::Tcp));
    assert!(!ix.allowed(a, a, 80, Protocol::Tcp));
    let mut bad = objects.clone();
    bad.push(serde_json::json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "a", "namespace": "x"}}));
    let e = PolicyIndex::from_objects(&bad).unwrap_err();
    assert_eq!(
        (e.origin.source.as_str(), e.origin.document),
        ("objects", 3)
    );
}

// ---------- bad input ----------

fn load_err(text: &str) -> InputError {
    let mut m = ClusterModel::new();
    match m
        .add_yaml(text, "input.yaml")
        .and_then(|()| PolicyIndex::build(m).map(|_| ()))
    {
        Err(e) => e,
        Ok(()) => panic!("expected an error for:\n{text}"),
    }
}

#[test]
fn bad_input_names_file_document_and_field() {
    let e = load_err(include_str!("fixtures/policy/bad-selector.yaml"));
    assert_eq!(
        (
            e.origin.source.as_str(),
            e.origin.document,
            e.field.as_str()
        ),
        ("input.yaml", 1, "spec.selector")
    );

    let e = load_err("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d}\n");
    assert_eq!(e.field, "kind");
    assert!(e.message.contains("unsupported object apps/v1/Deployment"));

    let e = load_err(
        "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: p, namespace: x}
spec: {podSelector: {}, ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/33}}]}]}",
    );
    assert_eq!(e.field, "spec.ingress[0].from[0].ipBlock.cidr");

    let e = load_err(
        "apiVersion: crd.projectcalico.org/v1
kind: GlobalNetworkPolicy
metadata: {name: p}
spec: {egress: [{action: Deny, destination: {nets: [not-a-net]}}]}",
    );
    assert_eq!(e.field, "spec.egress[0].destination.nets[0]");

    let dup = "apiVersion: v1\nkind: Namespace\nmetadata: {name: q}\n";
    let e = load_err(&format!("{dup}---\n{dup}"));
    assert_eq!((e.origin.document, e.field.as_str()), (1, "metadata.name"));
    assert!(e.message.contains("duplicate"));

    let e = load_err(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec: {tier: nope}\n",
    );
    assert_eq!(e.field, "spec.tier");

    let e = load_err(
        "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: p}\nspec: {ingress: [{action: Allow, sorce: {}}]}\n",
    );
    assert_eq!(e.field, "spec");
    assert!(e.message.contains("sorce"), "{}", e.message);

    let e =
        load_err("apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nstatus: {podIP: 300.1.1.1}\n");
    assert_eq!(e.field, "status.podIP");

    let e = load_err("key: [unclosed\n");
    assert!(e.message.contains("YAML"));
}

// ---------- properties ----------

fn selector_strategy() -> impl Strategy<Value = Selector> {
    let key = "[a-z][a-z0-9./-]{0,8}";
    let val = "[a-zA-Z0-9 _.-]{0,6}";
    let leaf = prop_oneof![
        Just(Selector::All),
        Just(Selector::Global),
        key.prop_map(Selector::Has),
        (key, val).prop_map(|(k, v)| Selector::Eq(k, v)),
        (key, val).prop_map(|(k, v)| Selector::Ne(k, v)),
        (key, prop::collection::vec(val, 0..3)).prop_map(|(k, v)| Selector::In(k, v)),
        (key, prop::collection::vec(val, 0..3)).prop_map(|(k, v)| Selector::NotIn(k, v)),
        (key, val).prop_map(|(k, v)| Selector::Contains(k, v)),
        (key, val).prop_map(|(k, v)| Selector::StartsWith(k, v)),
        (key, val).prop_map(|(k, v)| Selector::EndsWith(k, v)),
    ];
    leaf.prop_recursive(4, 24, 4, |inner| {
        prop_oneof![
            inner.clone().prop_map(|s| Selector::Not(Box::new(s))),
            prop::collection::vec(inner.clone(), 2..4)
                .prop_map(|v| Selector::parse(&Selector::And(v).to_string()).unwrap()),
            prop::collection::vec(inner, 2..4)
                .prop_map(|v| Selector::parse(&Selector::Or(v).to_string()).unwrap()),
        ]
    })
}

/// Kubernetes ingress policies built from small random choices over the x/y/z layout.
fn k8s_policy_strategy(name: String) -> impl Strategy<Value = String> {
    let ns = prop::sample::select(vec!["x", "y", "z"]);
    let pod_sel = prop::sample::select(vec![
        "{}",
        "{matchLabels: {pod: a}}",
        "{matchLabels: {pod: b}}",
    ]);
    let peer = prop::sample::select(vec![
        "{podSelector: {matchLabels: {pod: c}}}",
        "{namespaceSelector: {matchLabels: {ns: y}}}",
        "{namespaceSelector: {}, podSelector: {matchLabels: {pod: a}}}",
        "{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}",
    ]);
    let port = prop::sample::select(vec![
        "",
        ", ports: [{port: 80}]",
        ", ports: [{protocol: UDP}]",
        ", ports: [{port: serve-81-tcp}]",
    ]);
    let egress = any::<bool>();
    (ns, pod_sel, peer, port, egress).prop_map(move |(ns, sel, peer, port, egress)| {
        let (dir, key, types) = if egress { ("egress", "to", "[Egress]") } else { ("ingress", "from", "[Ingress]") };
        format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\n\
             spec: {{podSelector: {sel}, policyTypes: {types}, {dir}: [{{{key}: [{peer}]{port}}}]}}\n"
        )
    })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn selector_parser_never_panics(s in "\\PC{0,40}") {
        let _ = Selector::parse(&s);
    }

    #[test]
    fn selector_parser_never_panics_on_selector_like_text(s in "[a-z()!&|=' {},]{0,30}") {
        let _ = Selector::parse(&s);
    }

    #[test]
    fn selector_printing_round_trips(sel in selector_strategy()) {
        let printed = sel.to_string();
        let reparsed = Selector::parse(&printed).map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(&reparsed, &sel, "printed as {}", printed);
    }

    #[test]
    fn adding_an_allow_policy_only_removes_cells_of_newly_isolated_pods(
        base in prop::collection::vec(k8s_policy_strategy("base".into()), 0..3),
        extra in k8s_policy_strategy("extra".into()),
    ) {
        let named: Vec<String> = base.iter().enumerate().map(|(i, p)| p.replace("name: base", &format!("name: base-{i}"))).collect();
        let before = index(&named.iter().map(String::as_str).collect::<Vec<_>>());
        let mut with_extra = named.clone();
        with_extra.push(extra);
        let after = index(&with_extra.iter().map(String::as_str).collect::<Vec<_>>());
        for proto in [Protocol::Tcp, Protocol::Udp] {
            for port in [80, 81] {
                for s in 0..before.pods().len() {
                    for d in 0..before.pods().len() {
                        if before.allowed(s, d, port, proto) && !after.allowed(s, d, port, proto) {
                            // Only allowed: the extra policy isolated a pod nothing selected before.
                            let newly_isolated = |pod: usize, dir: Direction| {
                                before.policies_for(pod, dir).is_empty() && !after.policies_for(pod, dir).is_empty()
                            };
                            prop_assert!(
                                newly_isolated(d, Direction::Ingress) || newly_isolated(s, Direction::Egress),
                                "{} -> {} {}/{} lost", s, d, port, proto
                            );
                        }
                    }
                }
            }
        }
    }
}

// ---------- CLI ----------

fn cli() -> Command {
    let mut c = Command::cargo_bin("calico-migrate").unwrap();
    c.current_dir(FIXTURES);
    c
}

#[test]
fn cli_matrix_json_has_pods_and_externals() {
    let out = cli()
        .args([
            "policy",
            "matrix",
            "-f",
            "xyz.yaml",
            "-f",
            "deny-aws-imds.yaml",
            "--port",
            "80",
        ])
        .args(["--external", "169.254.169.254", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["port"], 80);
    assert_eq!(v["protocol"], "TCP");
    assert_eq!(v["allowed"]["x/a"]["x/b"], true);
    assert_eq!(v["allowed"]["x/a"]["169.254.169.254"], false);
    assert_eq!(
        v["allowed"]["monitoring/prometheus"]["169.254.169.254"],
        true
    );
}

#[test]
fn cli_matrix_text_is_a_truth_table() {
    let out = cli()
        .args([
            "policy",
            "matrix",
            "-f",
            "xyz.yaml",
            "-f",
            "namespace-policies.yaml",
            "--pod",
            "x/a",
            "--pod",
            "y/a",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("-\tx/a\ty/a"), "{text}");
    assert!(text.contains("x/a\t.\t."), "{text}");
    assert!(text.contains("y/a\tX\t."), "{text}");
}

#[test]
fn cli_diff_exit_codes() {
    cli()
        .args([
            "policy",
            "diff",
            "-f",
            "xyz.yaml",
            "--before",
            "deny-aws-imds.yaml",
            "--after",
            "deny-aws-imds-v3.yaml",
        ])
        .assert()
        .code(0);
    let out = cli()
        .args([
            "policy",
            "diff",
            "-f",
            "xyz.yaml",
            "--before",
            "deny-aws-imds.yaml",
            "--after",
            "namespace-policies.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("removed: projectcalico.org/GlobalNetworkPolicy deny-aws-imds"),
        "{text}"
    );
    assert!(
        text.contains("-> 169.254.169.254 80/TCP: before blocked, after allowed"),
        "{text}"
    );
}

#[test]
fn cli_explain_names_the_deciding_rules() {
    let out = cli()
        .args([
            "policy",
            "explain",
            "-f",
            "xyz.yaml",
            "-f",
            "deny-aws-imds.yaml",
        ])
        .args(["--from", "x/a", "--to", "169.254.169.254", "--port", "443"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("BLOCKED"), "{text}");
    assert!(
        text.contains("GlobalNetworkPolicy deny-aws-imds (tier default) egress[1] Deny"),
        "{text}"
    );
    assert!(text.contains("matched on the way"), "{text}");
}

#[test]
fn cli_bad_input_exits_2_with_location() {
    let out = cli()
        .args([
            "policy",
            "matrix",
            "-f",
            "xyz.yaml",
            "-f",
            "bad-selector.yaml",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.contains("bad-selector.yaml, document 1: field `spec.selector`"),
        "{err}"
    );
    let out = cli()
        .args([
            "policy", "explain", "-f", "xyz.yaml", "--from", "x/zz", "--to", "x/a", "--port", "80",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}
