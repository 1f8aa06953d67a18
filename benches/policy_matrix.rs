//! Policy matrix at cluster scale: 1,500 namespaces, 15,000 pods, 3,000 Kubernetes
//! NetworkPolicies and the deny-aws-imds GlobalNetworkPolicy, shaped like the cluster in
//! the design notes (every user namespace has `default` and `allow-ingress-controllers`,
//! a few add `allow-prometheus-scraping`).
//!
//! Run: `cargo bench --bench policy_matrix`. `POLICY_BENCH_NAMESPACES` scales the input
//! (pods = 10 x namespaces); `POLICY_BENCH_DUMP=DIR` writes it as YAML. With
//! `POLICY_BENCH_PEER=/path/to/nca` it also runs network-config-analyzer on the same input
//! at `POLICY_BENCH_PEER_SCALES` (namespaces, default 30,100,300) and prints the ratio.
//! `POLICY_BENCH_MATRIX_ONLY=1` stops after the 80/TCP matrix and the single verdicts
//! (the named-port matrix and the whole connection space: 27 more matrices).

use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Instant;

use calico_migrate::policy::diff::{address_representatives, port_representatives};
use calico_migrate::policy::{ClusterModel, PolicyIndex, Protocol};

const EXEMPT: [&str; 6] = [
    "cert-manager",
    "ingress-controllers",
    "kube-system",
    "logging",
    "monitoring",
    "velero",
];
const PODS_PER_NAMESPACE: usize = 10;
const DEPLOYMENTS_PER_NAMESPACE: usize = 2;

fn namespace_names(total: usize) -> Vec<String> {
    let mut names: Vec<String> = EXEMPT.iter().map(|s| s.to_string()).collect();
    let mut i = 0;
    while names.len() < total {
        names.push(format!("team-{i:04}"));
        i += 1;
    }
    names
}

fn component(ns: &str) -> &'static str {
    match ns {
        "ingress-controllers" => "ingress-controllers",
        "monitoring" => "monitoring",
        _ => "workload",
    }
}

/// Cluster objects (namespaces, pods) as YAML documents.
fn cluster_yaml(names: &[String]) -> String {
    let mut out = String::new();
    for (n, ns) in names.iter().enumerate() {
        let _ = write!(
            out,
            "---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {ns}\n  labels:\n    component: {}\n",
            component(ns)
        );
        for p in 0..PODS_PER_NAMESPACE {
            let d = p % DEPLOYMENTS_PER_NAMESPACE;
            let idx = n * PODS_PER_NAMESPACE + p;
            let ip = format!(
                "10.{}.{}.{}",
                100 + idx / 65536,
                (idx / 256) % 256,
                idx % 256
            );
            let _ = write!(
                out,
                "---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: app{d}-{p}\n  namespace: {ns}\n  labels:\n    \
                 app: app{d}\n    pod-template-hash: h{n}x{d}\nspec:\n  nodeName: node-{}\n  containers:\n  - name: main\n    \
                 image: app\n    ports:\n    - name: http\n      containerPort: 8080\n    - name: metrics\n      \
                 containerPort: 9090\nstatus:\n  podIP: {ip}\n",
                idx % 100
            );
        }
    }
    out
}

/// The policies: two per user namespace, prometheus scraping where needed to reach `target`.
fn policies_yaml(names: &[String], target: usize) -> (String, usize) {
    let mut out = String::from(
        "---\napiVersion: crd.projectcalico.org/v1\nkind: GlobalNetworkPolicy\nmetadata:\n  name: deny-aws-imds\nspec:\n  \
         selector: projectcalico.org/namespace not in {\"cert-manager\", \"ingress-controllers\", \"kube-system\", \
         \"logging\", \"monitoring\", \"velero\"}\n  types: [Egress]\n  egress:\n  - action: Log\n    protocol: TCP\n    \
         destination:\n      nets: [169.254.169.254/32]\n      ports: [80, 443]\n  - action: Deny\n    protocol: TCP\n    \
         destination:\n      nets: [169.254.169.254/32]\n      ports: [80, 443]\n  - action: Allow\n    destination:\n      \
         nets: [0.0.0.0/0]\n",
    );
    let users: Vec<&String> = names
        .iter()
        .filter(|n| !EXEMPT.contains(&n.as_str()))
        .collect();
    let mut count = 0;
    for ns in &users {
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: default\n  namespace: {ns}\nspec:\n  \
             podSelector: {{}}\n  ingress:\n  - from:\n    - podSelector: {{}}\n---\napiVersion: networking.k8s.io/v1\n\
             kind: NetworkPolicy\nmetadata:\n  name: allow-ingress-controllers\n  namespace: {ns}\nspec:\n  podSelector: {{}}\n  \
             ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          component: ingress-controllers\n"
        );
        count += 2;
    }
    for ns in users.iter().take(target.saturating_sub(count)) {
        let _ = write!(
            out,
            "---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: allow-prometheus-scraping\n  \
             namespace: {ns}\nspec:\n  podSelector: {{}}\n  ingress:\n  - from:\n    - namespaceSelector:\n        matchLabels:\n          \
             component: monitoring\n    ports:\n    - port: metrics\n"
        );
        count += 1;
    }
    (out, count)
}

struct Figures {
    pods: usize,
    np_count: usize,
    parse: f64,
    build: f64,
    matrix: f64,
    matrix_one_thread: f64,
    pair_by_pair: PairByPair,
    matrix_named: f64,
    all_ports: f64,
    all_ports_cells: usize,
    classes: usize,
    allowed_cells: usize,
    verdict_ns: f64,
}

/// The pair-by-pair class matrix: `rows` of the `of` class rows took `seconds`.
struct PairByPair {
    rows: usize,
    of: usize,
    seconds: f64,
}

fn run_ours(namespaces: usize, dump: Option<&str>) -> Figures {
    let names = namespace_names(namespaces);
    let cluster = cluster_yaml(&names);
    let (policies, np_count) = policies_yaml(&names, namespaces * 2);
    if let Some(dir) = dump {
        std::fs::create_dir_all(dir).expect("create dump dir");
        std::fs::write(format!("{dir}/cluster.yaml"), &cluster).expect("write cluster.yaml");
        std::fs::write(format!("{dir}/policies.yaml"), &policies).expect("write policies.yaml");
        // The peer reads only projectcalico.org/v3 and single-quoted selectors.
        let v3 = policies
            .replace("crd.projectcalico.org/v1", "projectcalico.org/v3")
            .replace('"', "'");
        std::fs::write(format!("{dir}/policies-v3.yaml"), v3).expect("write policies-v3.yaml");
    }

    let t = Instant::now();
    let mut model = ClusterModel::new();
    model
        .add_yaml(&cluster, "cluster.yaml")
        .expect("generated cluster parses");
    model
        .add_yaml(&policies, "policies.yaml")
        .expect("generated policies parse");
    let parse = t.elapsed().as_secs_f64();
    let pods = model.pods.len();

    let t = Instant::now();
    let index = PolicyIndex::build(model).expect("index builds");
    let build = t.elapsed().as_secs_f64();

    let imds: IpAddr = "169.254.169.254".parse().expect("literal");
    let externals = vec![("169.254.169.254".to_string(), imds)];
    let t = Instant::now();
    let m80 = index.matrix(None, &externals, 80, Protocol::Tcp);
    let matrix = t.elapsed().as_secs_f64();
    // The same matrix on one thread, side by side, for the speed-up of the row split.
    let t = Instant::now();
    let one = index.matrix_on_threads(None, &externals, 80, Protocol::Tcp, 1);
    let matrix_one_thread = t.elapsed().as_secs_f64();
    assert!((0..one.classes.representatives.len()).all(|a| {
        let r = one.classes.representatives[a];
        (0..pods)
            .step_by(97)
            .all(|j| one.allowed(r, j) == m80.allowed(r, j))
    }));
    // The pair-by-pair way, side by side: one `allowed` per class pair (the evaluator
    // the class bitsets replace), on one thread. Every row up to 5,000 classes; above, an
    // evenly spaced sample of 1,000 rows, scaled to all rows. It also checks the cells.
    let reps = &one.classes.representatives;
    let stride = if reps.len() <= 5_000 {
        1
    } else {
        reps.len() / 1_000
    };
    let t = Instant::now();
    let mut rows = 0;
    for &s in reps.iter().step_by(stride) {
        for &d in reps {
            assert_eq!(
                index.allowed(s, d, 80, Protocol::Tcp),
                one.allowed(s, d),
                "class bitsets and pair-by-pair differ"
            );
        }
        rows += 1;
    }
    let pair_by_pair = PairByPair {
        rows,
        of: reps.len(),
        seconds: t.elapsed().as_secs_f64(),
    };
    drop(one);
    let matrix_only = std::env::var("POLICY_BENCH_MATRIX_ONLY").is_ok_and(|v| v == "1");
    let t = Instant::now();
    if !matrix_only {
        let _m9090 = index.matrix(None, &externals, 9090, Protocol::Tcp);
    }
    let matrix_named = t.elapsed().as_secs_f64();

    // The whole connection space, as a connectivity map covers it: one matrix per port
    // interval on which no rule changes its answer, for each protocol, plus the
    // address intervals of every CIDR as external destinations.
    let ports = port_representatives(&[&index]);
    let addrs: Vec<(String, IpAddr)> = address_representatives(&[&index])
        .into_iter()
        .map(|a| (a.to_string(), a))
        .collect();
    let t = Instant::now();
    let mut all_ports_cells = 0;
    let protocols = if matrix_only {
        Vec::new()
    } else {
        vec![Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
    };
    for proto in protocols {
        for &port in &ports {
            let m = index.matrix(None, &addrs, port, proto);
            all_ports_cells +=
                m.classes.representatives.len() * (m.classes.representatives.len() + addrs.len());
        }
    }
    let all_ports = t.elapsed().as_secs_f64();

    // Single verdicts, the sandbox's hot path.
    let n = 200_000;
    let t = Instant::now();
    let mut allowed = 0usize;
    for i in 0..n {
        allowed +=
            usize::from(index.allowed((i * 7919) % pods, (i * 104_729) % pods, 80, Protocol::Tcp));
    }
    let verdict_ns = t.elapsed().as_nanos() as f64 / n as f64;
    std::hint::black_box(allowed);

    // Counted per class pair, weighted by class sizes: exact here, as the generated
    // input has no hostNetwork pod (the only per-pod-pair exception to the classes).
    assert!(index.pods().iter().all(|p| !p.host_network));
    let reps = &m80.classes.representatives;
    let sizes = &m80.classes.sizes;
    let allowed_cells = (0..reps.len())
        .map(|a| {
            (0..reps.len())
                .filter(|&b| m80.allowed(reps[a], reps[b]))
                .map(|b| sizes[a] * sizes[b])
                .sum::<usize>()
        })
        .sum();
    Figures {
        pods,
        np_count,
        parse,
        build,
        matrix,
        matrix_one_thread,
        pair_by_pair,
        matrix_named,
        all_ports,
        all_ports_cells,
        classes: m80.classes.representatives.len(),
        allowed_cells,
        verdict_ns,
    }
}

/// This process's peak resident set size so far.
fn peak_rss_mib() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    usage.ru_maxrss as f64 / 1024.0
}

/// Run the peer on the dumped input; `None` when it fails or times out.
fn run_peer(nca: &str, dir: &str, timeout_s: u64) -> Option<f64> {
    let t = Instant::now();
    let status = std::process::Command::new("timeout")
        .arg(timeout_s.to_string())
        .arg(nca)
        .args(["--connectivity", &format!("{dir}/policies-v3.yaml")])
        .args([
            "--pod_list",
            &format!("{dir}/cluster.yaml"),
            "--ns_list",
            &format!("{dir}/cluster.yaml"),
        ])
        .args(["-o", "csv", "-f", &format!("{dir}/nca-out.csv")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| t.elapsed().as_secs_f64())
}

fn main() {
    let namespaces: usize = std::env::var("POLICY_BENCH_NAMESPACES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1500);
    let dump = std::env::var("POLICY_BENCH_DUMP").ok();
    let f = run_ours(namespaces, dump.as_deref());
    println!(
        "policy_matrix: {namespaces} namespaces, {} pods, {} NetworkPolicies + 1 GlobalNetworkPolicy",
        f.pods, f.np_count
    );
    println!("  parse YAML into the model      {:>9.3} s", f.parse);
    println!("  build index                    {:>9.3} s", f.build);
    println!(
        "  matrix 80/TCP (+1 external)    {:>9.3} s  ({} classes, {} pod pairs, {} allowed)",
        f.matrix,
        f.classes,
        f.pods * f.pods,
        f.allowed_cells
    );
    println!(
        "  the same on 1 thread           {:>9.3} s  ({:.2}x the time on {} threads)",
        f.matrix_one_thread,
        f.matrix_one_thread / f.matrix,
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    let p = &f.pair_by_pair;
    let all_rows = p.seconds * p.of as f64 / p.rows as f64;
    println!(
        "  pair by pair, 1 thread         {:>9.3} s  ({} of {} rows{}; {:.0}x the class bitsets on 1 thread)",
        all_rows,
        p.rows,
        p.of,
        if p.rows == p.of { "" } else { ", scaled" },
        all_rows / f.matrix_one_thread
    );
    if std::env::var("POLICY_BENCH_MATRIX_ONLY").is_ok_and(|v| v == "1") {
        println!("  matrix 9090/TCP, all ports     skipped (POLICY_BENCH_MATRIX_ONLY=1)");
    } else {
        println!("  matrix 9090/TCP (named port)   {:>9.3} s", f.matrix_named);
        println!(
            "  all ports x TCP/UDP/SCTP       {:>9.3} s  ({} class cells)",
            f.all_ports, f.all_ports_cells
        );
    }
    println!("  single verdict                 {:>9.0} ns", f.verdict_ns);
    println!(
        "  peak RSS                       {:>9.0} MiB",
        peak_rss_mib()
    );

    // Peer: network-config-analyzer's connectivity map on the same input, at scales
    // where it finishes (it caps at 10,000 pods).
    if let Ok(nca) = std::env::var("POLICY_BENCH_PEER") {
        let scales =
            std::env::var("POLICY_BENCH_PEER_SCALES").unwrap_or_else(|_| "30,100,300".into());
        let timeout_s: u64 = std::env::var("POLICY_BENCH_PEER_TIMEOUT")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(900);
        println!("peer (network-config-analyzer --connectivity), timeout {timeout_s} s per run:");
        println!("  namespaces   pods   ours: parse+index+all-ports (s)   peer (s)   peer/ours");
        for scale in scales
            .split(',')
            .filter_map(|s| s.trim().parse::<usize>().ok())
        {
            let dir = format!("{}/policy-bench-{scale}", std::env::temp_dir().display());
            let ours = run_ours(scale, Some(&dir));
            let ours_total = ours.parse + ours.build + ours.all_ports;
            match run_peer(&nca, &dir, timeout_s) {
                Some(peer) => println!(
                    "  {scale:>10} {:>6}   {ours_total:>30.3}   {peer:>8.1}   {:>9.0}x",
                    ours.pods,
                    peer / ours_total
                ),
                None => println!(
                    "  {scale:>10} {:>6}   {ours_total:>30.3}   did not finish (timeout or error)",
                    ours.pods
                ),
            }
        }
    }
}
