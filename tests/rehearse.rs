//! `calico-migrate rehearse` through the real binary: the whole job on an embedded
//! sandbox, with faults injected, and the report that says how each was handled.

use std::process::{Command, Output};

use serde_json::Value;

fn rehearse(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_calico-migrate"))
        .arg("rehearse")
        .args(args)
        .env_remove("KUBECONFIG")
        .output()
        .unwrap_or_else(|e| panic!("running calico-migrate: {e}"))
}

fn text(o: &Output) -> String {
    format!(
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn report(o: &Output) -> Value {
    assert_eq!(o.status.code(), Some(0), "{}", text(o));
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// The value of the first injected fault, e.g. the node `lapse:@2` resolved to.
fn injected_value(r: &Value) -> String {
    r["faults_injected"][0]
        .as_str()
        .and_then(|s| s.split_once(':'))
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("no injected fault in {r}"))
}

/// What every passing rehearsal shows: both applies and the rollback completed, the
/// cluster back at its baseline object by object, a window per node, and no
/// divergence the monitor cannot explain by an injected lapse.
/// The report's one fault stop, which was in the takeover: its message.
fn the_one_takeover_stop(r: &Value) -> String {
    let faults = r["faults"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(faults.len(), 1, "{r:#}");
    assert_eq!(faults[0]["stopped_at"], "takeover", "{r:#}");
    faults[0]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn assert_whole_job(r: &Value, nodes: usize) {
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(r["verification_passed"], true, "{r:#}");
    let phases = r["phases"].as_array().unwrap_or_else(|| panic!("{r}"));
    for name in ["rollback", "second apply"] {
        let p = phases
            .iter()
            .find(|p| p["phase"] == name)
            .unwrap_or_else(|| panic!("no phase {name}: {r:#}"));
        assert_eq!(p["outcome"]["outcome"], "completed", "{name}: {r:#}");
    }
    assert_eq!(
        r["rollback_differences"].as_array().map(Vec::len),
        Some(0),
        "{r:#}"
    );
    let windows = r["node_windows"]
        .as_object()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(windows.len(), nodes, "{r:#}");
    assert!(
        windows.values().all(|w| w["swaps"].as_u64() >= Some(2)),
        "{r:#}"
    );
    assert!(r["probes"].as_u64() > Some(0), "{r:#}");
    for iv in r["monitor"].as_array().into_iter().flatten() {
        assert_eq!(iv["injected"], true, "an unexplained divergence: {iv}");
    }
    assert_eq!(r["problems"].as_array().map(Vec::len), Some(0), "{r:#}");
}

#[test]
fn a_clean_rehearsal_passes_with_no_fault_and_no_divergence() {
    let r = report(&rehearse(&["--nodes", "3", "-o", "json"]));
    assert_whole_job(&r, 3);
    assert_eq!(r["faults"].as_array().map(Vec::len), Some(0), "{r:#}");
    assert_eq!(r["monitor"].as_array().map(Vec::len), Some(0), "{r:#}");
    // One connection per node held across both takeovers and the rollback's moves back,
    // checked after every node's swap and after each final rollout, none broken.
    let held = &r["held_connections"];
    assert_eq!(held["largest"], 3, "{r:#}");
    assert_eq!(held["reports"], 3 * (3 + 1), "{r:#}");
    assert_eq!(held["broken"].as_array().map(Vec::len), Some(0), "{r:#}");
    assert_eq!(held["check_failed"], 0, "{r:#}");
}

#[test]
fn a_swap_that_resets_established_connections_stops_the_takeover_at_that_node() {
    let r = report(&rehearse(&[
        "--nodes",
        "4",
        "--fault",
        "conn-reset:@3",
        "-o",
        "json",
    ]));
    assert_whole_job(&r, 4);
    let node = injected_value(&r);
    let msg = the_one_takeover_stop(&r);
    assert!(msg.contains("BROKE") && msg.contains("(closed)"), "{msg}");
    assert!(msg.contains("frozen"), "the operator is frozen: {msg}");
    // The stop comes after the swap of the node or of a neighbour the operator moved in
    // the same run; either way every broken path passes through the node, which is
    // named among the moved nodes on those paths.
    let (_, moved) = msg
        .split_once("node(s) on their path running the calico-system calico-node: ")
        .unwrap_or_else(|| panic!("no moved nodes named: {msg}"));
    assert!(moved.contains(&node), "{msg}");
    // The probes saw nothing wrong: new connections were enforced all along.
    assert_eq!(r["monitor"].as_array().map(Vec::len), Some(0), "{r:#}");
    let broken = r["held_connections"]["broken"]
        .as_array()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(broken.len(), 1, "{r:#}");
    let paths = broken[0].as_str().unwrap_or_default();
    let on_node = format!("(on {node})");
    assert!(
        paths.split(", ").all(|p| p.contains(&on_node)),
        "every broken connection passes through {node}: {paths}"
    );
}

#[test]
fn a_lapse_is_caught_naming_its_node_and_the_run_resumes_once_cleared() {
    let r = report(&rehearse(&[
        "--nodes", "4", "--fault", "lapse:@2", "-o", "json",
    ]));
    assert_whole_job(&r, 4);
    let node = injected_value(&r);
    let faults = r["faults"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(faults.len(), 1, "{r:#}");
    let msg = faults[0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&format!("failing on node(s) {node}")), "{msg}");
    assert!(msg.contains("expected Blocked"), "{msg}");
    assert!(
        r["phases"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|p| p["phase"] == "apply --resume" && p["outcome"]["outcome"] == "completed")
    );
    // The lapse shows in the monitor, on that node, marked as injected; the text
    // report says which node failed a check.
    let ivs = r["monitor"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert!(
        ivs.iter()
            .any(|iv| iv["node"] == node.as_str() && iv["reason"] == "Lapse"),
        "{r:#}"
    );
    assert_eq!(r["node_windows"][&node]["failed"], true, "{r:#}");
}

#[test]
fn an_operator_stall_stops_the_takeover_with_the_node_named() {
    let r = report(&rehearse(&[
        "--nodes",
        "3",
        "--fault",
        "operator-stall:@2",
        "-o",
        "json",
    ]));
    assert_whole_job(&r, 3);
    let msg = the_one_takeover_stop(&r);
    assert!(msg.contains(&injected_value(&r)), "{msg}");
    assert!(msg.contains("frozen"), "the operator is frozen: {msg}");
}

#[test]
fn bad_fault_specs_are_refused_before_anything_runs() {
    for (spec, says) in [
        ("lapse:@9", "use @1 to @3"),
        ("lapse:@x", "must be a node number"),
        ("no-such-knob:1", "no-such-knob"),
    ] {
        let o = rehearse(&["--nodes", "3", "--fault", spec]);
        assert_eq!(o.status.code(), Some(2), "{spec}: {}", text(&o));
        assert!(text(&o).contains(says), "{spec}: {}", text(&o));
        assert!(!text(&o).contains("panicked"), "{}", text(&o));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_cluster_rehearses_with_the_clusters_nodes_and_policies_and_reads_only() {
    use calico_migrate::sandbox::scenario::{self, ScenarioConfig};
    use calico_migrate::sandbox::{Sandbox, SandboxOptions, snapshot};
    // "The live cluster": a sandbox of its own, with a tenant namespace and policy.
    let live = Sandbox::new(SandboxOptions::default());
    let mut objects = scenario::build(&ScenarioConfig {
        nodes: 3,
        namespaces: 2,
        seed: 7,
        ..ScenarioConfig::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    objects.push(serde_json::json!({"apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": "tenant-x", "labels": {"tenant": "x"}}}));
    objects.push(
        serde_json::json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
        "metadata": {"name": "deny-all", "namespace": "tenant-x"},
        "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}}),
    );
    live.load(objects).unwrap_or_else(|e| panic!("{e:?}"));
    let before = snapshot::snapshot(&live).unwrap_or_else(|e| panic!("{e:?}"));
    let server = live
        .serve("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kc = dir.path().join("kubeconfig");
    server
        .write_kubeconfig(&kc)
        .unwrap_or_else(|e| panic!("{e}"));
    let kc_arg = kc.to_string_lossy().to_string();
    let o = tokio::task::spawn_blocking(move || {
        rehearse(&["--from-cluster", "--kubeconfig", &kc_arg, "-o", "json"])
    })
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let r = report(&o);
    assert_whole_job(&r, 3);
    assert_eq!(r["nodes"], 3, "{r:#}");
    // The live scenario's two namespaces' policies (2 or 3 each), its GNP, and
    // tenant-x/deny-all.
    let copied = r["copied_from_cluster"].as_str().unwrap_or_default();
    assert!(copied.starts_with("3 node(s)"), "{copied}");
    let policies: usize = copied
        .split(", ")
        .find_map(|p| p.strip_suffix(" policy object(s)"))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(policies >= 6, "{copied}");
    let windows = r["node_windows"]
        .as_object()
        .unwrap_or_else(|| panic!("{r}"));
    let live_nodes: Vec<String> = before
        .keys()
        .filter_map(|k| k.strip_prefix("nodes. /"))
        .map(str::to_string)
        .collect();
    assert_eq!(
        windows.keys().cloned().collect::<Vec<_>>(),
        live_nodes,
        "{r:#}"
    );
    let after = snapshot::snapshot(&live).unwrap_or_else(|e| panic!("{e:?}"));
    assert_eq!(snapshot::differences(&before, &after), Vec::<String>::new());
    server.shutdown().await;
}

#[test]
fn from_cluster_without_a_reachable_cluster_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let kc = dir.path().join("missing");
    let o = rehearse(&["--from-cluster", "--kubeconfig", &kc.to_string_lossy()]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    assert!(text(&o).contains("missing"), "{}", text(&o));
}

#[test]
fn api_errors_of_five_percent_are_retried_through() {
    let r = report(&rehearse(&[
        "--nodes",
        "3",
        "--fault",
        "api-errors:0.05",
        "-o",
        "json",
    ]));
    assert_whole_job(&r, 3);
    assert_eq!(
        r["faults"].as_array().map(Vec::len),
        Some(0),
        "5% of answers being 429/500/503 never stops the run: {r:#}"
    );
}

#[test]
fn typha_unable_to_scale_stops_the_takeover_with_the_operators_words() {
    let r = report(&rehearse(&[
        "--nodes",
        "3",
        "--fault",
        "typha-stuck",
        "-o",
        "json",
    ]));
    assert_whole_job(&r, 3);
    let faults = r["faults"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(faults.len(), 1, "{r:#}");
    let msg = faults[0]["message"].as_str().unwrap_or_default();
    assert!(
        msg.contains("typha"),
        "the operator's Progressing message is quoted: {msg}"
    );
    assert!(msg.contains("frozen"), "{msg}");
}

#[test]
fn a_new_agent_that_never_becomes_ready_stops_the_run_naming_its_node() {
    let r = report(&rehearse(&[
        "--nodes",
        "3",
        "--fault",
        "agent-not-ready:@2",
        "-o",
        "json",
    ]));
    assert_whole_job(&r, 3);
    let node = injected_value(&r);
    let faults = r["faults"].as_array().unwrap_or_else(|| panic!("{r}"));
    assert_eq!(faults.len(), 1, "{r:#}");
    let msg = faults[0]["message"].as_str().unwrap_or_default();
    assert!(msg.contains(&node), "{msg}");
    assert!(msg.contains("not Ready"), "{msg}");
}

#[test]
fn a_node_that_joins_during_the_takeover_is_migrated_and_checked_too() {
    let r = report(&rehearse(&[
        "--nodes",
        "3",
        "--fault",
        "node-join:1",
        "-o",
        "json",
    ]));
    // The joined node is migrated with the others and probed through its swap.
    let windows = r["node_windows"]
        .as_object()
        .unwrap_or_else(|| panic!("{r}"));
    assert_eq!(windows.len(), 4, "{r:#}");
    assert_eq!(r["passed"], true, "{r:#}");
    assert_eq!(r["faults"].as_array().map(Vec::len), Some(0), "{r:#}");
    for iv in r["monitor"].as_array().into_iter().flatten() {
        assert_eq!(iv["injected"], true, "an unexplained divergence: {iv}");
    }
}

// ---------------------------------------------------------------------------
// What a person sees in a terminal

/// Run the binary on a pseudo-terminal of `rows` x `cols` and return what the terminal
/// shows, scrollback included, as a terminal emulator renders it (bars redrawn in
/// place count once, as they do on screen).
fn on_a_terminal(args: &[&str], rows: u16, cols: u16) -> (Option<i32>, Vec<String>) {
    use std::io::Read as _;
    use std::os::fd::{FromRawFd as _, OwnedFd};

    let mut master: libc::c_int = -1;
    let mut slave: libc::c_int = -1;
    let size = libc::winsize {
        ws_row: rows,
        ws_col: cols,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    // SAFETY: openpty writes two fds into the pointers; no name, default termios.
    let rc = unsafe {
        libc::openpty(
            &mut master,
            &mut slave,
            std::ptr::null_mut(),
            std::ptr::null(),
            &size,
        )
    };
    assert_eq!(rc, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both fds were just opened by openpty and are owned here alone.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
    let io = |fd: &OwnedFd| {
        std::process::Stdio::from(fd.try_clone().unwrap_or_else(|e| panic!("dup: {e}")))
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_calico-migrate"))
        .args(args)
        .env_remove("KUBECONFIG")
        .env_remove("RUST_LOG")
        .env("TERM", "xterm-256color")
        .stdin(io(&slave))
        .stdout(io(&slave))
        .stderr(io(&slave))
        .spawn()
        .unwrap_or_else(|e| panic!("running calico-migrate: {e}"));
    drop(slave);
    let reader = std::thread::spawn(move || {
        let mut file = std::fs::File::from(master);
        let mut bytes = Vec::new();
        let mut buf = [0u8; 8192];
        // Linux answers EIO once the last slave fd is closed: the end of the output.
        while let Ok(n) = file.read(&mut buf) {
            if n == 0 {
                break;
            }
            bytes.extend_from_slice(&buf[..n]);
        }
        bytes
    });
    let status = child.wait().unwrap_or_else(|e| panic!("{e}"));
    let bytes = reader.join().unwrap_or_else(|_| panic!("reader thread"));
    let mut parser = vt100::Parser::new(rows, cols, 100_000);
    // The pty turns \n into \r\n, as a terminal expects.
    parser.process(&bytes);
    let screen = parser.screen_mut();
    screen.set_scrollback(usize::MAX);
    let scrolled = screen.scrollback();
    let rows = usize::from(rows);
    let mut lines = Vec::new();
    let mut start = 0;
    while start < scrolled + rows {
        let back = scrolled.saturating_sub(start);
        screen.set_scrollback(back);
        let top = scrolled - back;
        for (i, row) in screen.rows(0, cols).enumerate() {
            if top + i >= start && top + i < start + rows {
                lines.push(row);
            }
        }
        start += rows;
    }
    while lines.last().is_some_and(|l| l.trim().is_empty()) {
        lines.pop();
    }
    (status.code(), lines)
}

/// Whether a word of `line` is an RFC 3339 timestamp, as the log formatter writes them.
fn timestamped(line: &str) -> bool {
    line.split_whitespace()
        .any(|w| w.len() >= 19 && w.as_bytes()[4] == b'-' && w.as_bytes()[10] == b'T')
}

#[test]
fn on_a_terminal_a_rehearsal_is_a_few_dozen_short_lines_and_the_full_log_is_kept() {
    let state = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let dir = state.path().join("state");
    let dir_arg = dir.to_string_lossy().into_owned();
    let (code, lines) = on_a_terminal(
        &["rehearse", "--nodes", "6", "--state-dir", &dir_arg],
        50,
        120,
    );
    let shown = lines.join("\n");
    assert_eq!(code, Some(0), "{shown}");
    assert!(lines.len() <= 60, "{} lines:\n{shown}", lines.len());
    for l in &lines {
        assert!(
            !timestamped(l),
            "a timestamp on a terminal line: {l}\n{shown}"
        );
        assert!(
            !l.contains(" INFO ") && !l.contains("progress{"),
            "a log prefix on a terminal line: {l}\n{shown}"
        );
    }
    // One line per node verified, in each of the three passes over the nodes.
    let verified = lines.iter().filter(|l| l.contains(" verified on ")).count();
    assert_eq!(verified, 18, "{shown}");
    assert!(shown.contains("PASSED"), "{shown}");
    // The full debug log: in the state dir, private, timestamped, and named at the end.
    let named = lines
        .last()
        .and_then(|l| l.strip_prefix("Full log: "))
        .unwrap_or_else(|| panic!("no log path at the end:\n{shown}"));
    let log = std::path::Path::new(named.trim());
    assert!(log.starts_with(dir.join("logs")), "{}", log.display());
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(log)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or_else(|e| panic!("{}: {e}", log.display()));
    assert_eq!(mode, 0o600, "{}", log.display());
    let text = std::fs::read_to_string(log).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        text.lines().count() > lines.len(),
        "the log has more than the screen"
    );
    assert!(
        text.contains("DEBUG") && text.lines().next().is_some_and(timestamped),
        "{}",
        &text[..text.len().min(2000)]
    );

    // With -v the terminal shows the log lines, timestamped, as before.
    let (code, lines) = on_a_terminal(
        &["-v", "rehearse", "--nodes", "1", "--state-dir", &dir_arg],
        50,
        120,
    );
    assert_eq!(code, Some(0), "{}", lines.join("\n"));
    assert!(lines.iter().any(|l| timestamped(l)), "{}", lines.join("\n"));
}

/// On Kubernetes 1.24 the rehearsal plans as `plan` would there: the same-version path
/// (operator v1.17.4 over the running Calico v3.19.1, no alignment); the default (1.34)
/// runs the current path, align-versions first.
#[test]
fn on_kubernetes_1_24_the_same_version_path_is_rehearsed_and_on_1_34_the_current_one() {
    let steps = |r: &Value| -> Vec<String> {
        r["planned_steps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let old = report(&rehearse(&[
        "--nodes",
        "2",
        "--kubernetes-version",
        "1.24",
        "-o",
        "json",
    ]));
    assert_whole_job(&old, 2);
    let planned = steps(&old);
    assert!(
        !planned.iter().any(|s| s == "align-versions"),
        "{planned:?}"
    );
    assert!(
        planned.iter().any(|s| s == "fargate-affinity"),
        "{planned:?}"
    );
    let current = report(&rehearse(&["--nodes", "2", "-o", "json"]));
    assert_whole_job(&current, 2);
    let planned = steps(&current);
    assert_eq!(
        planned.get(1).map(String::as_str),
        Some("align-versions"),
        "{planned:?}"
    );
    // No release's converter accepts the chart's Fargate exclusion (Convert checks an
    // empty Installation): the current path removes it too.
    assert!(
        planned.iter().any(|s| s == "fargate-affinity"),
        "{planned:?}"
    );
}

/// Fargate nodes on the same-version path: operator v1.17.4 renders calico-node with no
/// Fargate exclusion and labels every node (namespace_migration.go
/// `labelUnmigratedNodes`), so plan refuses it and the rehearsal stops before changing
/// anything, naming the blocker.
#[test]
fn fargate_nodes_block_the_same_version_path() {
    let o = rehearse(&[
        "--kubernetes-version",
        "1.24",
        "--nodes",
        "6",
        "--fargate-nodes",
        "2",
        "--namespaces",
        "1",
        "--no-progress",
    ]);
    assert_eq!(o.status.code(), Some(2), "{}", text(&o));
    let t = text(&o);
    assert!(t.contains("FARGATE_NODES_UNSUPPORTED"), "{t}");
    assert!(t.contains("fargate-ip-10-0-"), "{t}");
}

/// Fargate nodes on the current path: fargate-affinity keeps kube-system calico-node off
/// them by their taint, the operator's calico-system calico-node has its own exclusion;
/// the whole job passes and the report counts only the nodes that run Calico.
#[test]
fn fargate_nodes_rehearse_on_the_current_path() {
    let o = rehearse(&[
        "--nodes",
        "6",
        "--fargate-nodes",
        "2",
        "--namespaces",
        "1",
        "--time-scale",
        "100",
        "-o",
        "json",
        "--no-progress",
    ]);
    let r = report(&o);
    assert_whole_job(&r, 6);
}

/// The same faults with the operator running on while the last node is checked
/// (`--pause-seconds 0`): the broken swap still stops the takeover with the node
/// named and the operator frozen, and the run resumes to the end once cleared.
#[test]
fn without_a_pause_a_broken_swap_and_a_stall_still_stop_the_takeover_at_their_node() {
    for fault in ["conn-reset:@3", "operator-stall:@3"] {
        let r = report(&rehearse(&[
            "--nodes",
            "5",
            "--fault",
            fault,
            "--pause-seconds",
            "0",
            "-o",
            "json",
        ]));
        assert_whole_job(&r, 5);
        let node = injected_value(&r);
        let msg = the_one_takeover_stop(&r);
        assert!(msg.contains(&node), "{fault}: {msg}");
        assert!(
            msg.contains("frozen"),
            "{fault}: the operator is frozen: {msg}"
        );
        assert!(
            r["phases"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|p| p["phase"] == "apply --resume" && p["outcome"]["outcome"] == "completed"),
            "{fault}: {r:#}"
        );
    }
}
