//! The bitset class verdicts (`PolicyIndex::class_verdicts`, behind `matrix` and `diff`)
//! against the pair-by-pair evaluator on random policy sets: tiers with Pass and a
//! Pass default action, Log, Deny, Kubernetes and Calico policies, selectors, namespace
//! selectors, nets and notNets, notSelector, service accounts, named ports, ipVersion,
//! hostNetwork pods, IPv6 pods, pods without an address, network sets.
//! Deterministic: each case is a seed; a failure prints it with the input.

use std::collections::BTreeMap;

use calico_migrate::policy::diff::port_representatives;
use calico_migrate::policy::{ClusterModel, PolicyIndex, Protocol, diff, pod_classes};

/// Picks fragments from a seed.
struct Rng(fastrand::Rng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(fastrand::Rng::with_seed(seed))
    }
    fn below(&mut self, n: usize) -> usize {
        self.0.usize(..n)
    }
    fn pick<'a>(&mut self, xs: &[&'a str]) -> &'a str {
        xs[self.below(xs.len())]
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
}

const NAMESPACES: [(&str, &str); 3] = [("ns0", "a"), ("ns1", "b"), ("ns2", "a")];

/// Namespaces, a network set and 3-12 pods on two nodes.
fn cluster(rng: &mut Rng) -> String {
    let mut out = String::new();
    for (ns, team) in NAMESPACES {
        out += &format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: {ns}, labels: {{team: {team}}}}}\n"
        );
    }
    out += "---\napiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkSet\n\
            metadata: {name: set, labels: {app: set}}\nspec: {nets: [10.0.2.0/25]}\n";
    let mut n = 0;
    for (ns, _) in NAMESPACES {
        for _ in 0..1 + rng.below(4) {
            n += 1;
            let app = rng.pick(&["web", "db", "set"]);
            let sa = rng.pick(&["sa-a", "sa-b"]);
            let host = rng.chance(10);
            let node = rng.below(2);
            let port = rng.pick(&["80", "8080"]);
            let ip = match rng.below(10) {
                0 => String::new(),
                1 => format!("status: {{podIP: 'fd00::{n}'}}\n"),
                _ => format!("status: {{podIP: 10.0.{}.{n}}}\n", rng.below(3)),
            };
            out += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{n}, namespace: {ns}, labels: {{app: {app}}}}}\n\
                 spec: {{nodeName: node-{node}, hostNetwork: {host}, serviceAccountName: {sa}, \
                 containers: [{{name: c, image: i, ports: [{{name: http, containerPort: {port}}}]}}]}}\n{ip}"
            );
        }
    }
    out
}

fn calico_entity(rng: &mut Rng, destination: bool) -> String {
    let mut parts: Vec<String> = Vec::new();
    for _ in 0..rng.below(3) {
        parts.push(
            rng.pick(&[
                "selector: app == 'web'",
                "selector: app == 'set'",
                "selector: all()",
                "namespaceSelector: team == 'a'",
                "namespaceSelector: global()",
                "nets: [10.0.1.0/24]",
                "nets: ['fd00::/64', 10.0.0.0/16]",
                "notNets: [10.0.0.0/24]",
                "notSelector: app == 'db'",
                "serviceAccounts: {names: [sa-a]}",
            ])
            .to_string(),
        );
    }
    if rng.chance(if destination { 40 } else { 5 }) {
        parts.push(
            rng.pick(&[
                "ports: [80]",
                "ports: ['80:90']",
                "ports: [http]",
                "notPorts: [8080]",
                "notPorts: [http]",
            ])
            .to_string(),
        );
    }
    parts.sort();
    parts.dedup_by(|a, b| a.split(':').next() == b.split(':').next());
    format!("{{{}}}", parts.join(", "))
}

fn calico_rule(rng: &mut Rng) -> String {
    let action = rng.pick(&["Allow", "Allow", "Deny", "Pass", "Log"]);
    let mut parts = vec![format!("action: {action}")];
    if rng.chance(30) {
        parts.push(
            rng.pick(&["protocol: TCP", "protocol: UDP", "notProtocol: TCP"])
                .into(),
        );
    }
    if rng.chance(15) {
        parts.push(rng.pick(&["ipVersion: 4", "ipVersion: 6"]).into());
    }
    parts.push(format!("source: {}", calico_entity(rng, false)));
    parts.push(format!("destination: {}", calico_entity(rng, true)));
    format!("{{{}}}", parts.join(", "))
}

fn calico_policy(rng: &mut Rng, i: usize) -> String {
    let tier = rng.pick(&["default", "default", "security", "platform"]);
    let name = if tier == "default" {
        format!("c{i}")
    } else {
        format!("{tier}.c{i}")
    };
    let (kind, ns) = if rng.chance(50) {
        ("GlobalNetworkPolicy", String::new())
    } else {
        let (ns, _) = NAMESPACES[rng.below(3)];
        ("NetworkPolicy", format!(", namespace: {ns}"))
    };
    let selector = rng.pick(&["all()", "app == 'web'", "app != 'db'", "has(app)"]);
    let mut spec = vec![
        format!("tier: {tier}"),
        format!("selector: \"{selector}\""),
        format!("order: {}", rng.below(3) * 10),
    ];
    for dir in ["ingress", "egress"] {
        if rng.chance(70) {
            let rules: Vec<String> = (0..rng.below(4)).map(|_| calico_rule(rng)).collect();
            spec.push(format!("{dir}: [{}]", rules.join(", ")));
        }
    }
    format!(
        "---\napiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata: {{name: {name}{ns}}}\nspec: {{{}}}\n",
        spec.join(", ")
    )
}

fn k8s_policy(rng: &mut Rng, i: usize) -> String {
    let (ns, _) = NAMESPACES[rng.below(3)];
    let selector = rng.pick(&[
        "{}",
        "{matchLabels: {app: web}}",
        "{matchLabels: {app: db}}",
    ]);
    let egress = rng.chance(40);
    let peer = rng.pick(&[
        "{podSelector: {matchLabels: {app: web}}}",
        "{namespaceSelector: {matchLabels: {team: b}}}",
        "{namespaceSelector: {}, podSelector: {matchLabels: {app: db}}}",
        "{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.1.0/24]}}",
    ]);
    let ports = rng.pick(&[
        "",
        ", ports: [{port: 80}]",
        ", ports: [{port: http}]",
        ", ports: [{protocol: UDP}]",
    ]);
    let (dir, key, types) = if egress {
        ("egress", "to", "[Egress]")
    } else {
        ("ingress", "from", "[Ingress]")
    };
    format!(
        "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: k{i}, namespace: {ns}}}\n\
         spec: {{podSelector: {selector}, policyTypes: {types}, {dir}: [{{{key}: [{peer}]{ports}}}]}}\n"
    )
}

fn policies(rng: &mut Rng) -> String {
    let mut out = String::new();
    out += &format!(
        "---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: security}}\nspec: {{order: 100}}\n\
         ---\napiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: platform}}\nspec: {{order: 200, defaultAction: {}}}\n",
        rng.pick(&["Pass", "Deny"])
    );
    for i in 0..rng.below(6) {
        out += &if rng.chance(60) {
            calico_policy(rng, i)
        } else {
            k8s_policy(rng, i)
        };
    }
    out
}

fn index(yaml: &str) -> PolicyIndex {
    let mut m = ClusterModel::new();
    m.add_yaml(yaml, "random.yaml")
        .unwrap_or_else(|e| panic!("{e}\n{yaml}"));
    PolicyIndex::build(m).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

const PROBES: [(u16, Protocol); 5] = [
    (80, Protocol::Tcp),
    (80, Protocol::Udp),
    (85, Protocol::Tcp),
    (8080, Protocol::Tcp),
    (8080, Protocol::Sctp),
];

#[test]
fn matrices_agree_with_pair_by_pair_verdicts() {
    let mut reached_classes = 0;
    for seed in 1..=300u64 {
        let mut rng = Rng::new(seed);
        let yaml = cluster(&mut rng) + &policies(&mut rng);
        let ix = index(&yaml);
        let n = ix.pods().len();
        for (port, proto) in PROBES {
            let m = ix.matrix(None, &[], port, proto);
            reached_classes += m.classes.representatives.len();
            for s in 0..n {
                for d in 0..n {
                    assert_eq!(
                        m.allowed(s, d),
                        ix.allowed(s, d, port, proto),
                        "seed {seed}: {} -> {} {port}/{proto}\n{yaml}",
                        ix.pods()[s].key(),
                        ix.pods()[d].key(),
                    );
                }
            }
        }
        // One thread and many give the same matrix.
        let one = ix.matrix_on_threads(None, &[], 80, Protocol::Tcp, 1);
        let many = ix.matrix_on_threads(None, &[], 80, Protocol::Tcp, 3);
        for s in 0..n {
            for d in 0..n {
                assert_eq!(one.allowed(s, d), many.allowed(s, d), "seed {seed}");
            }
        }
    }
    // The inputs are varied enough to make classes (not one pod per case).
    assert!(reached_classes > 300 * PROBES.len() * 3);
}

#[test]
fn diff_reports_exactly_the_pod_pairs_that_changed() {
    let mut changed_cases = 0;
    for seed in 1..=150u64 {
        let mut rng = Rng::new(1_000 + seed);
        let pods = cluster(&mut rng);
        let before = index(&(pods.clone() + &policies(&mut rng)));
        let after = index(&(pods + &policies(&mut rng)));
        let out = diff(&before, &after).expect("same pods");
        let all: Vec<usize> = (0..before.pods().len()).collect();
        let map: Vec<usize> = before
            .pods()
            .iter()
            .map(|p| after.pod_index(&p.key()).expect("same pods"))
            .collect();
        let classes = pod_classes(&[&before, &after], &[Vec::new(), map.clone()], &all);
        let rep_key =
            |p: usize| before.pods()[classes.representatives[classes.class_of[p] as usize]].key();
        // Every differing pod pair, counted under its classes' representatives (a
        // hostNetwork pod to a pod on its node is allowed on both sides: never counted).
        let mut expected: BTreeMap<(String, String, u16, Protocol), usize> = BTreeMap::new();
        for proto in [Protocol::Tcp, Protocol::Udp, Protocol::Sctp] {
            for port in port_representatives(&[&before, &after]) {
                for s in 0..all.len() {
                    for d in 0..all.len() {
                        if before.allowed(s, d, port, proto)
                            != after.allowed(map[s], map[d], port, proto)
                        {
                            *expected
                                .entry((rep_key(s), rep_key(d), port, proto))
                                .or_default() += 1;
                        }
                    }
                }
            }
        }
        let reported: BTreeMap<(String, String, u16, Protocol), usize> = out
            .cells
            .iter()
            .filter(|c| before.pod_index(&c.dst).is_some())
            .map(|c| {
                (
                    (c.src.clone(), c.dst.clone(), c.port, c.protocol),
                    c.pod_pairs,
                )
            })
            .collect();
        changed_cases += usize::from(!expected.is_empty());
        assert_eq!(reported, expected, "seed {seed}");
    }
    assert!(
        changed_cases > 50,
        "only {changed_cases} cases changed anything"
    );
}

#[test]
fn large_inputs_split_over_threads_and_agree_with_single_verdicts() {
    // 120 namespaces, 240 pods: enough classes for the work to be split.
    let mut yaml = String::from(
        "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: no-db-egress}\n\
         spec: {selector: app == 'db', egress: [{action: Deny, destination: {nets: [10.1.0.0/24]}}, {action: Pass}]}\n",
    );
    for i in 0..120 {
        let team = if i % 3 == 0 { "a" } else { "b" };
        yaml += &format!(
            "---\napiVersion: v1\nkind: Namespace\nmetadata: {{name: n{i}, labels: {{team: {team}}}}}\n\
             ---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: n{i}}}\n\
             spec: {{podSelector: {{matchLabels: {{app: web}}}}, ingress: [{{from: [{{namespaceSelector: \
             {{matchLabels: {{team: a}}}}, podSelector: {{matchLabels: {{app: db}}}}}}, {{podSelector: {{}}}}]}}]}}\n"
        );
        for (j, app) in ["web", "db"].iter().enumerate() {
            yaml += &format!(
                "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: {app}, namespace: n{i}, labels: {{app: {app}}}}}\n\
                 spec: {{nodeName: node-{}, containers: [{{name: c, image: i}}]}}\nstatus: {{podIP: 10.1.{j}.{i}}}\n",
                i % 4
            );
        }
    }
    let ix = index(&yaml);
    let n = ix.pods().len();
    let one = ix.matrix_on_threads(None, &[], 80, Protocol::Tcp, 1);
    let many = ix.matrix_on_threads(None, &[], 80, Protocol::Tcp, 3);
    assert!(one.classes.representatives.len() >= 120);
    let mut allowed = 0;
    for s in 0..n {
        for d in 0..n {
            let want = ix.allowed(s, d, 80, Protocol::Tcp);
            assert_eq!(one.allowed(s, d), want);
            assert_eq!(many.allowed(s, d), want);
            allowed += usize::from(want);
        }
    }
    // Neither everything nor nothing: the policies draw real lines.
    assert!(allowed > n && allowed < n * n - n, "{allowed} of {}", n * n);
}
