//! Long-lived connections across one node's agent swap (what Cilium's conn-disrupt
//! test does across an upgrade): open TCP connections that touch the node, keep them
//! carrying requests while the swap runs, and report which survived.
//!
//! Each connection is one `pods/exec` in a probe client running a bash loop over one
//! established connection to a probe server's `agnhost netexec` HTTP port (HTTP/1.1
//! keep-alive; `netexec`'s Go server sets no idle timeout, kubernetes
//! `test/images/agnhost/netexec/netexec.go`; the image ships bash, kubernetes
//! `test/images/agnhost/Dockerfile`). The loop prints `ESTABLISHED`, `OK <n>` per
//! answered request, and ends with `BROKEN <n> timeout|closed|answer|write` or
//! `DONE <n>`; a connection that never opened prints `FAILED connect`.
//!
//! Which connections: from the round plan (expectations from the policy engine), the
//! allowed TCP pairs that touch the node: its own client to its own server, its clients
//! to the next node's servers, and the previous node's clients to its servers.
//!
//! What it proves: flows established before the swap still carry data after it.
//! What it cannot prove: that policies apply to them. Calico judges only a flow's first
//! packet and conntrack carries the rest (projectcalico/calico
//! `calico/reference/host-endpoints/conntrack.md`), so a policy change does not break
//! an established flow; new-connection probes ([`super::watch_node`]) cover enforcement.

use std::future::Future;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, AttachParams};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader};
use tokio::sync::{mpsc, watch};

use super::plan::{Expected, Probe, ProbeKind};
use super::round::{CheckError, Prober};

/// The script each held connection runs (`bash -c HOLD_SCRIPT hold HOST PORT
/// INTERVAL_S ROUNDS READ_TIMEOUT_S`); the sandbox's data plane understands exactly
/// this text (`sandbox::dataplane::flows::HOLD_SCRIPT`).
pub const HOLD_SCRIPT: &str = r#"exec 3<>"/dev/tcp/$1/$2" || { echo "FAILED connect"; exit 2; }
echo ESTABLISHED
n=0
while [ "$n" -lt "$4" ]; do
  n=$((n+1))
  printf 'GET /echo?msg=%s HTTP/1.1\r\nHost: %s\r\n\r\n' "$n" "$1" >&3 || { echo "BROKEN $n write"; exit 1; }
  IFS= read -r -t "$5" line <&3; rc=$?
  [ "$rc" -gt 128 ] && { echo "BROKEN $n timeout"; exit 1; }
  [ "$rc" -ne 0 ] && { echo "BROKEN $n closed"; exit 1; }
  case "$line" in "HTTP/1.1 200"*) ;; *) echo "BROKEN $n answer"; exit 1;; esac
  len=0
  while IFS= read -r -t "$5" line <&3; do
    line=${line%$'\r'}
    [ -z "$line" ] && break
    case "${line,,}" in content-length:*) len=${line#*:}; len=${len// /};; esac
  done
  [ "$len" -gt 0 ] && { read -r -t "$5" -N "$len" line <&3 || { echo "BROKEN $n closed"; exit 1; }; }
  echo "OK $n"
  sleep "$3"
done
echo "DONE $n"
"#;

/// How connections are held.
#[derive(Debug, Clone)]
pub struct HoldOptions {
    /// Pause between two requests on a connection.
    pub interval: Duration,
    /// How long a request may wait for its answer before the connection counts as broken.
    pub read_timeout: Duration,
    /// How long every connection may take to open before the swap starts without it.
    pub establish_timeout: Duration,
    /// The longest hold (from the start); the swap is reported unfinished past it.
    pub max: Duration,
}

impl Default for HoldOptions {
    fn default() -> Self {
        Self {
            interval: Duration::from_secs(1),
            read_timeout: Duration::from_secs(3),
            establish_timeout: Duration::from_secs(60),
            max: Duration::from_secs(900),
        }
    }
}

/// What became of one connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConnState {
    /// Opened before the swap and answered a request after it.
    Established,
    /// Stopped carrying data: timed out (dropped) or closed by the other end.
    Broken,
    /// The exec itself failed (pod broken, API error, stream cut) or the connection never
    /// opened: says nothing about the swap, never read as broken.
    CheckFailed,
}

/// One held connection's outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnResult {
    /// `namespace/pod` of the client.
    pub from: String,
    /// `namespace/pod` of the server.
    pub to: String,
    /// `IP:PORT` connected to.
    pub target: String,
    pub src_node: String,
    pub dst_node: Option<String>,
    pub state: ConnState,
    /// Requests answered on the connection.
    pub round_trips: u64,
    /// Last answered request, in ms after the hold started.
    pub last_ok_after_ms: Option<u64>,
    /// When the break was reported (it happened after `last_ok_after_ms`).
    pub broken_at: Option<Timestamp>,
    pub broken_after_ms: Option<u64>,
    /// `timeout`, `closed`, ... for a break; what failed for a check failure.
    pub detail: String,
}

/// The connections held across one node's swap.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ConnReport {
    pub node: String,
    pub connections: Vec<ConnResult>,
    pub survived: usize,
    pub broken: usize,
    pub check_failed: usize,
    /// Whether `done` resolved within `max`.
    pub swap_finished: bool,
    /// How long `done` took, from the moment every connection was open.
    pub swap_ms: Option<u64>,
    pub held_ms: u64,
}

impl ConnReport {
    /// Every connection survived a finished swap.
    pub fn passed(&self) -> bool {
        self.swap_finished
            && !self.connections.is_empty()
            && self.survived == self.connections.len()
    }
}

/// The allowed TCP pairs of the plan that touch `node` (its clients out, its servers in).
pub fn held_pairs(probes: &[Probe], node: &str) -> Vec<Probe> {
    let mut out: Vec<Probe> = probes
        .iter()
        .filter(|p| {
            p.expected == Expected::Allowed
                && !p.external
                && p.protocol.eq_ignore_ascii_case("tcp")
                && match p.kind {
                    ProbeKind::SameNamespace => p.src_node == node,
                    ProbeKind::CrossNodeSameNamespace => {
                        p.src_node == node || p.dst_node.as_deref() == Some(node)
                    }
                    _ => false,
                }
        })
        .cloned()
        .collect();
    out.sort_by(|a, b| (&a.from, &a.target).cmp(&(&b.from, &b.target)));
    out.dedup_by(|a, b| a.from == b.from && a.target == b.target);
    out
}

/// Host and port of `IP:PORT` or `[IPv6]:PORT`.
fn host_port(target: &str) -> Option<(String, String)> {
    let (h, p) = target.rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    (!h.is_empty() && p.parse::<u16>().is_ok()).then(|| (h.to_string(), p.to_string()))
}

/// A line of the script, or how its exec ended.
#[derive(Debug, Clone, PartialEq)]
enum Event {
    Established,
    Ok(u64),
    Broken(u64, String),
    /// `DONE`: the script ran out of requests.
    Finished,
    /// The connection never opened, or the exec failed: why.
    Failed(String),
}

/// Interpret one line of the script's stdout.
fn parse_line(line: &str) -> Option<Event> {
    let mut w = line.split_whitespace();
    match (w.next()?, w.next(), w.next()) {
        ("ESTABLISHED", None, _) => Some(Event::Established),
        ("OK", Some(n), None) => n.parse().ok().map(Event::Ok),
        ("BROKEN", Some(n), Some(why)) => n.parse().ok().map(|n| Event::Broken(n, why.into())),
        ("DONE", Some(_), None) => Some(Event::Finished),
        ("FAILED", Some("connect"), None) => {
            Some(Event::Failed("the connection never opened".into()))
        }
        _ => None,
    }
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

/// Run the script in `probe.from` and send its events until it ends or `stop` is set.
async fn hold_one(
    client: kube::Client,
    probe: Probe,
    args: [String; 3],
    events: mpsc::UnboundedSender<(usize, Event, Instant)>,
    id: usize,
    mut stop: watch::Receiver<bool>,
) {
    let send = |e: Event| {
        let _ = events.send((id, e, Instant::now()));
    };
    let (Some((ns, name)), Some((host, port))) =
        (probe.from.split_once('/'), host_port(&probe.target))
    else {
        return send(Event::Failed(format!(
            "cannot hold {} -> {}: not a pod key and IP:PORT",
            probe.from, probe.target
        )));
    };
    let [interval, rounds, read_timeout] = args;
    let cmd = vec![
        "bash".to_string(),
        "-c".into(),
        HOLD_SCRIPT.into(),
        "hold".into(),
        host,
        port,
        interval,
        rounds,
        read_timeout,
    ];
    let ap = AttachParams::default()
        .container("agnhost")
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let pods: Api<Pod> = Api::namespaced(client, ns);
    let mut proc = match pods.exec(name, cmd, &ap).await {
        Ok(p) => p,
        Err(e) => return send(Event::Failed(format!("exec in {}: {e}", probe.from))),
    };
    let (Some(stdout), Some(mut stderr), Some(status)) =
        (proc.stdout(), proc.stderr(), proc.take_status())
    else {
        proc.abort();
        return send(Event::Failed(format!(
            "exec in {}: no output streams",
            probe.from
        )));
    };
    let read = async {
        let mut lines = BufReader::new(stdout).lines();
        let mut err_text = String::new();
        // Whether the script reported its own end (a break, a failed connect, DONE).
        let mut ended = false;
        let (_, ()) = tokio::join!(stderr.read_to_string(&mut err_text), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(e) = parse_line(&line) {
                    ended |= matches!(e, Event::Broken(..) | Event::Failed(_) | Event::Finished);
                    send(e);
                }
            }
        });
        (err_text, status.await, ended)
    };
    tokio::select! {
        (err_text, status, ended) = read => {
            if ended {
                return;
            }
            let why = match status {
                Some(s) if s.status.as_deref() == Some("Success") => "the script ended without a result".to_string(),
                Some(s) => s.message.unwrap_or_default(),
                None => "the stream ended without an exit status".into(),
            };
            send(Event::Failed(format!("exec in {}: {} {}", probe.from, why, err_text.trim()).trim().to_string()));
        }
        _ = stop.wait_for(|s| *s) => proc.abort(),
    }
}

struct Tracked {
    probe: Probe,
    established: bool,
    round_trips: u64,
    last_ok: Option<Instant>,
    /// Final state once known.
    end: Option<(ConnState, String, Option<Instant>)>,
}

impl Tracked {
    fn live(&self) -> bool {
        self.established && self.end.is_none()
    }
}

/// Hold connections touching `node` while `done` (the swap, or a future that resolves
/// when it is over) runs, with [`HoldOptions::default`] and `max`.
pub async fn hold_connections(
    client: &kube::Client,
    prober: &Prober,
    node: &str,
    done: impl Future<Output = ()>,
    max: Duration,
) -> Result<ConnReport, CheckError> {
    let opts = HoldOptions {
        max,
        ..HoldOptions::default()
    };
    hold_connections_with(client, prober, node, done, &opts).await
}

/// As [`hold_connections`], with every knob. `done` is first polled once every
/// connection is open (or `establish_timeout` passed): pass the swap itself, not a
/// swap already started.
pub async fn hold_connections_with(
    client: &kube::Client,
    prober: &Prober,
    node: &str,
    done: impl Future<Output = ()>,
    opts: &HoldOptions,
) -> Result<ConnReport, CheckError> {
    if !prober.nodes().iter().any(|n| n == node) {
        return Err(CheckError::Invalid(format!(
            "node {node} is not probed (probed: {}); hold connections only on a node of the probe workload",
            prober.nodes().join(", ")
        )));
    }
    if opts.interval.is_zero() || opts.read_timeout.is_zero() {
        return Err(CheckError::Invalid(
            "the hold interval and read timeout must be above zero".into(),
        ));
    }
    let plan = prober.plan().await?;
    let pairs = held_pairs(&plan.probes, node);
    let start = Instant::now();
    let started_at = Timestamp::now();
    // Enough requests to outlast `max`; the script then ends on its own.
    let rounds = (opts.max.as_secs_f64() / opts.interval.as_secs_f64()).ceil() as u64 + 3;
    let args = [
        secs(opts.interval),
        rounds.to_string(),
        secs(opts.read_timeout),
    ];
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tracked: Vec<Tracked> = Vec::with_capacity(pairs.len());
    let mut tasks = Vec::with_capacity(pairs.len());
    for (id, p) in pairs.into_iter().enumerate() {
        tasks.push(tokio::spawn(hold_one(
            client.clone(),
            p.clone(),
            args.clone(),
            tx.clone(),
            id,
            stop_rx.clone(),
        )));
        tracked.push(Tracked {
            probe: p,
            established: false,
            round_trips: 0,
            last_ok: None,
            end: None,
        });
    }
    drop(tx);
    let apply = |t: &mut Vec<Tracked>, (id, e, at): (usize, Event, Instant)| {
        let Some(c) = t.get_mut(id) else { return };
        if c.end.is_some() {
            return;
        }
        match e {
            Event::Established => c.established = true,
            Event::Ok(_) => {
                c.round_trips += 1;
                c.last_ok = Some(at);
            }
            Event::Broken(_, why) => c.end = Some((ConnState::Broken, why, Some(at))),
            Event::Finished => {
                c.end = Some((
                    ConnState::CheckFailed,
                    "the hold ran out of requests before the check ended".into(),
                    None,
                ))
            }
            Event::Failed(why) => c.end = Some((ConnState::CheckFailed, why, None)),
        }
    };
    let deadline = start + opts.max;

    // 1. Open every connection.
    let open_by = (start + opts.establish_timeout).min(deadline);
    while tracked.iter().any(|c| !c.established && c.end.is_none()) {
        match tokio::time::timeout_at(open_by.into(), rx.recv()).await {
            Ok(Some(ev)) => apply(&mut tracked, ev),
            Ok(None) | Err(_) => break,
        }
    }
    for c in tracked
        .iter_mut()
        .filter(|c| !c.established && c.end.is_none())
    {
        c.end = Some((
            ConnState::CheckFailed,
            format!("not open within {}s", opts.establish_timeout.as_secs_f64()),
            None,
        ));
    }

    // 2. Run the swap while the connections carry requests.
    let swap_start = Instant::now();
    let mut done = std::pin::pin!(done);
    let mut swap_done: Option<Instant> = None;
    let mut channel_open = true;
    while swap_done.is_none() && Instant::now() < deadline {
        tokio::select! {
            _ = &mut done => swap_done = Some(Instant::now()),
            ev = rx.recv(), if channel_open => match ev {
                Some(ev) => apply(&mut tracked, ev),
                None => channel_open = false,
            },
            _ = tokio::time::sleep_until(deadline.into()) => {}
        }
    }

    // 3. After the swap, each live connection must answer once more.
    if let Some(t_done) = swap_done {
        let settle = (t_done + opts.interval * 2 + opts.read_timeout + Duration::from_secs(5))
            .min(deadline.max(t_done + opts.interval));
        let pending = |t: &[Tracked]| {
            t.iter()
                .any(|c| c.live() && c.last_ok.is_none_or(|ok| ok < t_done))
        };
        while pending(&tracked) && channel_open {
            match tokio::time::timeout_at(settle.into(), rx.recv()).await {
                Ok(Some(ev)) => apply(&mut tracked, ev),
                Ok(None) => channel_open = false,
                Err(_) => break,
            }
        }
        for c in tracked.iter_mut().filter(|c| c.live()) {
            if c.last_ok.is_none_or(|ok| ok < t_done) {
                c.end = Some((
                    ConnState::CheckFailed,
                    "no answer and no break reported after the swap".into(),
                    None,
                ));
            }
        }
    }
    let _ = stop_tx.send(true);
    for mut t in tasks {
        // A task still opening its exec does not see `stop`: do not wait on it for long.
        if tokio::time::timeout(Duration::from_secs(5), &mut t)
            .await
            .is_err()
        {
            t.abort();
        }
    }
    let ms = |i: Instant| i.saturating_duration_since(start).as_millis() as u64;
    let connections: Vec<ConnResult> = tracked
        .into_iter()
        .map(|c| {
            let (state, detail, at) =
                c.end
                    .unwrap_or((ConnState::Established, String::new(), None));
            let broken_at = at.map(|i| {
                started_at
                    .checked_add(i.saturating_duration_since(start))
                    .unwrap_or(started_at)
            });
            ConnResult {
                from: c.probe.from,
                to: c.probe.to,
                target: c.probe.target,
                src_node: c.probe.src_node,
                dst_node: c.probe.dst_node,
                state,
                round_trips: c.round_trips,
                last_ok_after_ms: c.last_ok.map(ms),
                broken_at,
                broken_after_ms: at.map(ms),
                detail,
            }
        })
        .collect();
    let count = |s: ConnState| connections.iter().filter(|c| c.state == s).count();
    Ok(ConnReport {
        node: node.to_string(),
        survived: count(ConnState::Established),
        broken: count(ConnState::Broken),
        check_failed: count(ConnState::CheckFailed),
        swap_finished: swap_done.is_some(),
        swap_ms: swap_done.map(|t| t.saturating_duration_since(swap_start).as_millis() as u64),
        held_ms: ms(Instant::now()),
        connections,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(from: &str, kind: ProbeKind, src: &str, dst: &str, expected: Expected) -> Probe {
        Probe {
            from: from.into(),
            to: format!("ns/server-{dst}"),
            target: "10.0.0.9:8080".into(),
            port: 8080,
            protocol: "TCP".into(),
            kind,
            expected,
            node: dst.into(),
            src_node: src.into(),
            dst_node: Some(dst.into()),
            external: false,
        }
    }

    #[test]
    fn held_pairs_are_the_allowed_tcp_pairs_touching_the_node() {
        let mut ps = vec![
            probe(
                "a/c1",
                ProbeKind::SameNamespace,
                "n1",
                "n1",
                Expected::Allowed,
            ),
            probe(
                "a/c0",
                ProbeKind::CrossNodeSameNamespace,
                "n0",
                "n1",
                Expected::Allowed,
            ),
            probe(
                "b/c1",
                ProbeKind::CrossNodeSameNamespace,
                "n1",
                "n2",
                Expected::Allowed,
            ),
            probe(
                "b/c1x",
                ProbeKind::CrossNamespace,
                "n1",
                "n2",
                Expected::Blocked,
            ),
            probe(
                "a/c2",
                ProbeKind::CrossNodeSameNamespace,
                "n2",
                "n0",
                Expected::Allowed,
            ),
            probe(
                "a/c0b",
                ProbeKind::SameNamespace,
                "n0",
                "n0",
                Expected::Allowed,
            ),
        ];
        let blocked = probe(
            "a/cb",
            ProbeKind::CrossNodeSameNamespace,
            "n0",
            "n1",
            Expected::Blocked,
        );
        ps.push(blocked);
        let got: Vec<String> = held_pairs(&ps, "n1").into_iter().map(|p| p.from).collect();
        assert_eq!(got, ["a/c0", "a/c1", "b/c1"]);
        assert!(held_pairs(&ps, "n9").is_empty());
    }

    #[test]
    fn script_lines_are_events() {
        assert_eq!(parse_line("ESTABLISHED"), Some(Event::Established));
        assert_eq!(parse_line("OK 12"), Some(Event::Ok(12)));
        assert_eq!(
            parse_line("BROKEN 3 timeout"),
            Some(Event::Broken(3, "timeout".into()))
        );
        assert_eq!(parse_line("DONE 9"), Some(Event::Finished));
        assert!(matches!(
            parse_line("FAILED connect"),
            Some(Event::Failed(_))
        ));
        assert_eq!(parse_line("OK"), None);
        assert_eq!(parse_line("garbage here"), None);
    }

    #[test]
    fn targets_split_into_host_and_port() {
        assert_eq!(
            host_port("10.0.0.1:8080"),
            Some(("10.0.0.1".into(), "8080".into()))
        );
        assert_eq!(
            host_port("[fd00::1]:80"),
            Some(("fd00::1".into(), "80".into()))
        );
        assert_eq!(host_port("10.0.0.1"), None);
        assert_eq!(host_port(":80"), None);
    }

    #[test]
    fn a_report_passes_only_when_every_connection_survived_a_finished_swap() {
        let mut r = ConnReport {
            node: "n1".into(),
            connections: vec![],
            survived: 0,
            broken: 0,
            check_failed: 0,
            swap_finished: true,
            swap_ms: Some(10),
            held_ms: 20,
        };
        assert!(!r.passed(), "nothing held proves nothing");
        r.connections.push(ConnResult {
            from: "a/c".into(),
            to: "a/s".into(),
            target: "10.0.0.1:8080".into(),
            src_node: "n1".into(),
            dst_node: Some("n1".into()),
            state: ConnState::Established,
            round_trips: 3,
            last_ok_after_ms: Some(15),
            broken_at: None,
            broken_after_ms: None,
            detail: String::new(),
        });
        r.survived = 1;
        assert!(r.passed());
        r.swap_finished = false;
        assert!(!r.passed());
        let v = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(v["connections"][0]["state"], "established");
    }
}
