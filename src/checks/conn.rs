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

    /// `S of N survived` and what did not, for people.
    pub fn summary(&self) -> String {
        let mut s = format!(
            "{} of {} established connection(s) survived",
            self.survived,
            self.connections.len()
        );
        if self.broken > 0 {
            s.push_str(&format!("; {} BROKE: {}", self.broken, self.broken_list(5)));
        }
        if self.check_failed > 0 {
            s.push_str(&format!(
                "; {} could not be followed (check failed, not a break)",
                self.check_failed
            ));
        }
        s
    }

    /// The nodes at either end of a broken connection.
    pub fn broken_nodes(&self) -> std::collections::BTreeSet<String> {
        self.connections
            .iter()
            .filter(|c| c.state == ConnState::Broken)
            .flat_map(|c| std::iter::once(c.src_node.clone()).chain(c.dst_node.clone()))
            .collect()
    }

    /// The first `max` broken connections, `from (on NODE) -> to (on NODE) (why)`.
    pub fn broken_list(&self, max: usize) -> String {
        let broken: Vec<String> = self
            .connections
            .iter()
            .filter(|c| c.state == ConnState::Broken)
            .map(|c| {
                format!(
                    "{} (on {}) -> {} (on {}) ({})",
                    c.from,
                    c.src_node,
                    c.to,
                    c.dst_node.as_deref().unwrap_or("-"),
                    c.detail
                )
            })
            .collect();
        let mut s = broken
            .iter()
            .take(max)
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        if broken.len() > max {
            s.push_str(&format!(" and {} more", broken.len() - max));
        }
        s
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

/// For a hold across many nodes' swaps: per node in `nodes`, one allowed TCP pair from
/// it to another node (the round's ring: each node is then a source once and a
/// destination once), or to itself when no cross-node pair is allowed. O(nodes).
pub fn ring_pairs(probes: &[Probe], nodes: &[String]) -> Vec<Probe> {
    let allowed_tcp = |p: &&Probe| {
        p.expected == Expected::Allowed && !p.external && p.protocol.eq_ignore_ascii_case("tcp")
    };
    let mut by_from: Vec<&Probe> = probes.iter().filter(allowed_tcp).collect();
    by_from.sort_by(|a, b| (&a.from, &a.target).cmp(&(&b.from, &b.target)));
    nodes
        .iter()
        .filter_map(|node| {
            let from_node = |kind| {
                by_from
                    .iter()
                    .find(|p| p.kind == kind && p.src_node == *node)
                    .map(|p| (*p).clone())
            };
            from_node(ProbeKind::CrossNodeSameNamespace)
                .or_else(|| from_node(ProbeKind::SameNamespace))
        })
        .collect()
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

    fn apply(&mut self, e: Event, at: Instant) {
        if self.end.is_some() {
            return;
        }
        match e {
            Event::Established => self.established = true,
            Event::Ok(_) => {
                self.round_trips += 1;
                self.last_ok = Some(at);
            }
            Event::Broken(_, why) => self.end = Some((ConnState::Broken, why, Some(at))),
            Event::Finished => {
                self.end = Some((
                    ConnState::CheckFailed,
                    "the hold ran out of requests before the check ended".into(),
                    None,
                ))
            }
            Event::Failed(why) => self.end = Some((ConnState::CheckFailed, why, None)),
        }
    }

    /// A live connection that has not answered since `since` has not shown it survived.
    fn unanswered_since(&self, since: Instant) -> bool {
        self.live() && self.last_ok.is_none_or(|ok| ok < since)
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// Connections held open by background execs, read by the swaps that run meanwhile: one
/// pool can span many swaps (the takeover holds one across every node). Dropping it ends
/// every exec.
pub struct ConnPool {
    tracked: std::sync::Arc<std::sync::Mutex<Vec<Tracked>>>,
    /// Bumped on every event; closed once every exec has ended.
    events: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    pump: tokio::task::JoinHandle<()>,
    start: Instant,
    started_at: Timestamp,
    opts: HoldOptions,
}

impl Drop for ConnPool {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for t in &self.tasks {
            t.abort();
        }
        self.pump.abort();
    }
}

impl ConnPool {
    /// Open one connection per pair and wait until each is open (or `establish_timeout`
    /// passed: those count as check failures). The execs run until the pool is closed
    /// or `opts.max` has passed.
    pub async fn open(
        client: &kube::Client,
        pairs: Vec<Probe>,
        opts: &HoldOptions,
    ) -> Result<Self, CheckError> {
        if opts.interval.is_zero() || opts.read_timeout.is_zero() {
            return Err(CheckError::Invalid(
                "the hold interval and read timeout must be above zero".into(),
            ));
        }
        let start = Instant::now();
        // Enough requests to outlast `max`; the script then ends on its own.
        let rounds = (opts.max.as_secs_f64() / opts.interval.as_secs_f64()).ceil() as u64 + 3;
        let args = [
            secs(opts.interval),
            rounds.to_string(),
            secs(opts.read_timeout),
        ];
        let (tx, mut rx) = mpsc::unbounded_channel();
        let (stop, stop_rx) = watch::channel(false);
        let mut tracked = Vec::with_capacity(pairs.len());
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
        let tracked = std::sync::Arc::new(std::sync::Mutex::new(tracked));
        let (bump, events) = watch::channel(0u64);
        let shared = tracked.clone();
        let pump = tokio::spawn(async move {
            while let Some((id, e, at)) = rx.recv().await {
                if let Some(c) = lock(&shared).get_mut(id) {
                    c.apply(e, at);
                }
                bump.send_modify(|n| *n += 1);
            }
            // Dropping `bump` closes `events`: no exec is left to report.
        });
        let pool = ConnPool {
            tracked,
            events,
            stop,
            tasks,
            pump,
            start,
            started_at: Timestamp::now(),
            opts: opts.clone(),
        };
        let open_by = start + opts.establish_timeout.min(opts.max);
        pool.wait_until(open_by, |t| {
            t.iter().all(|c| c.established || c.end.is_some())
        })
        .await;
        for c in lock(&pool.tracked)
            .iter_mut()
            .filter(|c| !c.established && c.end.is_none())
        {
            c.end = Some((
                ConnState::CheckFailed,
                format!("not open within {}s", opts.establish_timeout.as_secs_f64()),
                None,
            ));
        }
        Ok(pool)
    }

    /// Connections held.
    pub fn len(&self) -> usize {
        lock(&self.tracked).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// When the hold's `max` runs out.
    pub fn deadline(&self) -> Instant {
        self.start + self.opts.max
    }

    /// Wait until `done` holds for the connections, `by` passes, or no exec is left.
    async fn wait_until(&self, by: Instant, done: impl Fn(&[Tracked]) -> bool) {
        let mut events = self.events.clone();
        loop {
            if done(&lock(&self.tracked)) {
                return;
            }
            match tokio::time::timeout_at(by.into(), events.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return,
            }
        }
    }

    /// The connections that touch `node` (`None`: all) after a swap that ended at
    /// `swap_done`: each live one must answer once more, within two intervals and a read
    /// timeout (and never past the hold's `max`); one that does not is a check failure.
    pub async fn after_swap(
        &self,
        node: Option<&str>,
        swap_done: Instant,
        swap_ms: Option<u64>,
    ) -> ConnReport {
        let touches =
            |p: &Probe| node.is_none_or(|n| p.src_node == n || p.dst_node.as_deref() == Some(n));
        let o = &self.opts;
        let settle = (swap_done + o.interval * 2 + o.read_timeout + Duration::from_secs(5))
            .min(self.deadline().max(swap_done + o.interval));
        self.wait_until(settle, |t| {
            !t.iter()
                .any(|c| touches(&c.probe) && c.unanswered_since(swap_done))
        })
        .await;
        self.report(node, touches, Some(swap_done), swap_ms)
    }

    /// What became of the connections `include` selects; `swap_done`: a live one that
    /// has not answered since is a check failure.
    fn report(
        &self,
        node: Option<&str>,
        include: impl Fn(&Probe) -> bool,
        swap_done: Option<Instant>,
        swap_ms: Option<u64>,
    ) -> ConnReport {
        let (start, started_at) = (self.start, self.started_at);
        let ms = |i: Instant| i.saturating_duration_since(start).as_millis() as u64;
        let connections: Vec<ConnResult> = lock(&self.tracked)
            .iter()
            .filter(|c| include(&c.probe))
            .map(|c| {
                let (state, detail, at) = match (&c.end, swap_done) {
                    (Some(end), _) => end.clone(),
                    (None, Some(t)) if c.unanswered_since(t) => (
                        ConnState::CheckFailed,
                        "no answer and no break reported after the swap".into(),
                        None,
                    ),
                    (None, _) => (ConnState::Established, String::new(), None),
                };
                let broken_at = at.map(|i| {
                    started_at
                        .checked_add(i.saturating_duration_since(start))
                        .unwrap_or(started_at)
                });
                ConnResult {
                    from: c.probe.from.clone(),
                    to: c.probe.to.clone(),
                    target: c.probe.target.clone(),
                    src_node: c.probe.src_node.clone(),
                    dst_node: c.probe.dst_node.clone(),
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
        ConnReport {
            node: node.unwrap_or("every node").to_string(),
            survived: count(ConnState::Established),
            broken: count(ConnState::Broken),
            check_failed: count(ConnState::CheckFailed),
            swap_finished: swap_done.is_some(),
            swap_ms,
            held_ms: ms(Instant::now()),
            connections,
        }
    }

    /// End every exec (waiting briefly for each to stop).
    pub async fn close(mut self) {
        let _ = self.stop.send(true);
        for t in std::mem::take(&mut self.tasks) {
            // A task still opening its exec does not see `stop`: do not wait on it for long.
            let mut t = t;
            if tokio::time::timeout(Duration::from_secs(5), &mut t)
                .await
                .is_err()
            {
                t.abort();
            }
        }
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
    let plan = prober.plan().await?;
    let pool = ConnPool::open(client, held_pairs(&plan.probes, node), opts).await?;
    let swap_start = Instant::now();
    let swap = tokio::time::timeout_at(pool.deadline().into(), done).await;
    let report = match swap {
        Ok(()) => {
            let t = Instant::now();
            let ms = t.saturating_duration_since(swap_start).as_millis() as u64;
            pool.after_swap(Some(node), t, Some(ms)).await
        }
        Err(_) => pool.report(Some(node), |_| true, None, None),
    };
    pool.close().await;
    Ok(report)
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
    fn ring_pairs_touch_every_node_twice_with_one_connection_per_node() {
        let nodes: Vec<String> = (0..4).map(|i| format!("n{i}")).collect();
        let mut ps = Vec::new();
        for (i, n) in nodes.iter().enumerate() {
            let next = &nodes[(i + 1) % nodes.len()];
            for ns in ["b", "a"] {
                ps.push(probe(
                    &format!("{ns}/c-{n}"),
                    ProbeKind::CrossNodeSameNamespace,
                    n,
                    next,
                    Expected::Allowed,
                ));
            }
            ps.push(probe(
                &format!("a/c-{n}"),
                ProbeKind::SameNamespace,
                n,
                n,
                Expected::Allowed,
            ));
        }
        // A node whose cross-node pair the policies block falls back to its own server.
        ps.retain(|p| !(p.src_node == "n3" && p.kind == ProbeKind::CrossNodeSameNamespace));
        let ring = ring_pairs(&ps, &nodes);
        assert_eq!(ring.len(), 4);
        for n in &nodes {
            let touching = ring
                .iter()
                .filter(|p| &p.src_node == n || p.dst_node.as_ref() == Some(n))
                .count();
            assert!(touching >= 1, "{n} untouched: {ring:?}");
        }
        assert!(ring.iter().all(|p| p.from.starts_with("a/")), "{ring:?}");
        let n3 = ring.iter().find(|p| p.src_node == "n3").map(|p| p.kind);
        assert_eq!(n3, Some(ProbeKind::SameNamespace));
        assert!(ring_pairs(&ps, &["n9".to_string()]).is_empty());
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
