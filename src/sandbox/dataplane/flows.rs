//! Long-lived TCP flows held through `pods/exec`, and what happens to them while nodes'
//! enforcement changes.
//!
//! The command is a bash loop over one established connection (the agnhost image ships
//! bash: kubernetes `test/images/agnhost/Dockerfile` installs it with curl and netcat)
//! to the probe servers' `agnhost netexec` HTTP port, whose Go `http.Server` sets no
//! idle timeout and so keeps an HTTP/1.1 connection open between requests (kubernetes
//! `test/images/agnhost/netexec/netexec.go`, `/echo?msg=` answers the message):
//!
//! ```text
//! bash -c HOLD_SCRIPT hold HOST PORT INTERVAL_S ROUNDS READ_TIMEOUT_S
//! ```
//!
//! stdout, one line per event: `ESTABLISHED`, then `OK <n>` per answered request,
//! ending with `DONE <n>` (exit 0) or `BROKEN <n> timeout|closed|answer|write` (exit 1);
//! `FAILED connect` (exit 2, bash's own error on stderr) when the connection never opened.
//!
//! Conntrack, as Calico's iptables data plane uses it (projectcalico/calico
//! `calico/reference/host-endpoints/conntrack.md`: Calico checks its policies for the
//! first packet of a flow only; conntrack then accepts the rest "even after the Calico
//! policy has been changed"; issues #2759 and #6399 report exactly that): an
//! established flow carries on through a policy change, a lapse, frozen rules and an
//! agent swap, since Felix replaces its chains with iptables-restore and never flushes
//! conntrack on start or exit (inferred from Felix removing entries only for deleted
//! endpoints). A flow breaks here when
//! - its server pod goes away or stops running: `BROKEN n closed` (the kernel closes
//!   the socket of the killed process);
//! - a node on its path loses its conntrack entries ([`super::DataPlane::flush_conntrack`],
//!   like `conntrack -F`) and the rules in force there now deny it: the next packet is
//!   judged as new (`nf_conntrack_tcp_loose` picks mid-stream packets up) and dropped, so
//!   the read times out: `BROKEN n timeout`;
//! - its client pod stops running: the exec ends with an error status, not with a line;
//! - fault `conn-reset:NODE`: an agent that took over on a node on its path after the
//!   flow opened resets it: `BROKEN n closed`.

use std::time::Duration;

use tokio::sync::mpsc;

use super::probe::{self, Connect, Resolved, Target};
use super::world::PodInfo;
use super::{DataPlane, ExecError, lock};
use crate::policy::Protocol;

/// The held connection's script, byte for byte what the checks send
/// (`checks::conn::HOLD_SCRIPT`); the sandbox runs no other bash script.
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

/// A parsed hold command.
#[derive(Debug, Clone, PartialEq)]
pub struct Hold {
    pub host: String,
    pub port: String,
    pub interval: Duration,
    pub rounds: u64,
    pub read_timeout: Duration,
}

/// Output of a running hold, as the exec streams it.
#[derive(Debug, Clone, PartialEq)]
pub enum Chunk {
    Stdout(String),
    Stderr(String),
}

fn seconds(s: &str) -> Option<Duration> {
    let v: f64 = s.parse().ok()?;
    (v.is_finite() && v >= 0.0)
        .then(|| Duration::try_from_secs_f64(v).ok())
        .flatten()
}

/// `Some` when `argv` is the hold script (bash or /bin/bash); `Err` holds the answer
/// for arguments the sandbox cannot use (exit 2, the script never connected).
pub fn parse(argv: &[String]) -> Option<Result<Hold, probe::ExecOutcome>> {
    let shell = argv.first()?;
    if !(shell == "bash" || shell == "/bin/bash")
        || argv.get(1).map(String::as_str) != Some("-c")
        || argv.get(2).map(String::as_str) != Some(HOLD_SCRIPT)
    {
        return None;
    }
    let args = argv.get(4..).unwrap_or_default();
    let bad = |why: &str| {
        Some(Err(probe::ExecOutcome {
            exit_code: 2,
            stdout: String::new(),
            stderr: format!(
                "hold: {why}; arguments are HOST PORT INTERVAL_S ROUNDS READ_TIMEOUT_S (got {args:?})\n"
            ),
        }))
    };
    if args.len() != 5 {
        return bad("five arguments expected");
    }
    let (Some(interval), Some(read_timeout)) = (seconds(&args[2]), seconds(&args[4])) else {
        return bad("INTERVAL_S and READ_TIMEOUT_S must be seconds");
    };
    let Ok(rounds) = args[3].parse::<u64>() else {
        return bad("ROUNDS must be a whole number");
    };
    Some(Ok(Hold {
        host: args[0].clone(),
        port: args[1].clone(),
        interval,
        rounds,
        read_timeout,
    }))
}

/// bash's own words when `/dev/tcp` cannot connect (glibc/musl strerror texts).
fn connect_error(h: &Hold, result: &Connect) -> String {
    let why = match result {
        Connect::Dropped => "Connection timed out".to_string(),
        Connect::Refused => "Connection refused".to_string(),
        // getaddrinfo's EAI_NONAME as musl words it (inferred).
        Connect::Dns(_) | Connect::Unknown(_) => {
            return format!(
                "bash: {}: Name does not resolve\nbash: /dev/tcp/{}/{}: Invalid argument\n",
                h.host, h.host, h.port
            );
        }
        Connect::Connected => String::new(),
    };
    format!(
        "bash: connect: {why}\nbash: /dev/tcp/{}/{}: {why}\n",
        h.host, h.port
    )
}

/// Where a held flow goes, and per conntrack entry (node, flush count when it last
/// accepted the flow, egress side or not).
struct Flow {
    src: PodInfo,
    dst: Resolved,
    seen: Vec<(String, u64, bool)>,
    opened: jiff::Timestamp,
}

impl DataPlane {
    fn flushes(&self, node: &str) -> u64 {
        lock(&self.inner.conntrack).get(node).copied().unwrap_or(0)
    }

    fn sleep_scaled(&self, d: Duration) -> tokio::time::Sleep {
        let wait = d
            .min(Duration::from_secs(600))
            .mul_f64(self.inner.opts.timeout_scale.clamp(0.0, 1.0));
        tokio::time::sleep(wait)
    }

    /// Is the flow still carried? `Ok(None)` yes; `Ok(Some(reason))` it broke.
    fn judge_flow(&self, flow: &mut Flow) -> Result<Option<&'static str>, ExecError> {
        let ns = pod_ns(&flow.src);
        let name = pod_name(&flow.src);
        let src = self.running_pod(&ns, &name)?;
        if src.uid != flow.src.uid {
            return Err(ExecError::NotRunning(format!(
                "container not found: pod {ns}/{name} was replaced while the command ran"
            )));
        }
        let mut w = lock(&self.inner.world);
        if let Some(d) = &flow.dst.dst_pod {
            let key = (pod_ns(d), pod_name(d));
            let alive = w
                .pods
                .get(&key)
                .is_some_and(|p| p.uid == d.uid && p.phase == "Running");
            if !alive {
                return Ok(Some("closed"));
            }
        }
        let target = match &flow.dst.dst_pod {
            Some(p) => Target::Pod(p),
            None => Target::Addr(flow.dst.ip),
        };
        for (i, (node, seen, egress)) in flow.seen.clone().into_iter().enumerate() {
            let reset = w.faults.conn_reset.contains(&node)
                && w.nodes.get(&node).is_some_and(|s| {
                    matches!(s.enforcer, super::world::Enforcer::Agent { .. })
                        && s.since > flow.opened
                });
            if reset {
                return Ok(Some("closed"));
            }
            let now = self.flushes(&node);
            if now == seen {
                continue;
            }
            // The entry is gone on this node: its rules judge the next packet as new.
            let side = match (&target, egress) {
                (_, true) => w.side(&src),
                (Target::Pod(d), false) => w.side(d),
                (Target::Addr(_), false) => continue,
            };
            let allowed = probe::side_allows(
                &mut w,
                side,
                &src,
                &target,
                flow.dst.port,
                Protocol::Tcp,
                egress,
            )?;
            if !allowed {
                return Ok(Some("timeout"));
            }
            flow.seen[i].1 = now;
        }
        Ok(None)
    }

    /// Run the hold script in `ns/name`, streaming its lines to `out`; the exit code, or
    /// the error that ended the exec. Stops early when `out` is closed (client gone).
    pub async fn hold(
        &self,
        ns: &str,
        name: &str,
        h: Hold,
        out: mpsc::Sender<Chunk>,
    ) -> Result<i32, ExecError> {
        self.sync().await;
        let src = self.running_pod(ns, name)?;
        let dest = format!("{}:{}", h.host, h.port);
        let opened: Result<Resolved, Connect> = {
            let mut w = lock(&self.inner.world);
            match probe::resolve(&w, &src, &dest, Protocol::Tcp) {
                Ok(r) => match probe::connect_resolved(&mut w, &src, &r, Protocol::Tcp)? {
                    Connect::Connected => Ok(r),
                    other => Err(other),
                },
                Err(answer) => Err(answer),
            }
        };
        let dst = match opened {
            Ok(r) => r,
            Err(answer) => {
                if answer == Connect::Dropped {
                    // bash's connect has no timeout: the kernel's SYN retries (~127 s).
                    self.sleep_scaled(Duration::from_secs(127)).await;
                }
                let _ = out.send(Chunk::Stderr(connect_error(&h, &answer))).await;
                let _ = out.send(Chunk::Stdout("FAILED connect\n".into())).await;
                return Ok(2);
            }
        };
        // Loopback never crosses a node's rules; otherwise the source node's egress and
        // the destination node's ingress each keep a conntrack entry.
        let mut seen = vec![];
        if dst.dst_pod.as_ref().is_none_or(|d| d.uid != src.uid) {
            if let Some(n) = &src.node {
                seen.push((n.clone(), self.flushes(n), true));
            }
            if let Some(n) = dst.dst_pod.as_ref().and_then(|p| p.node.clone()) {
                let f = self.flushes(&n);
                seen.push((n, f, false));
            }
        }
        let mut flow = Flow {
            src,
            dst,
            seen,
            opened: jiff::Timestamp::now(),
        };
        if out
            .send(Chunk::Stdout("ESTABLISHED\n".into()))
            .await
            .is_err()
        {
            return Ok(0);
        }
        for n in 1..=h.rounds {
            self.sync().await;
            if let Some(reason) = self.judge_flow(&mut flow)? {
                if reason == "timeout" {
                    self.sleep_scaled(h.read_timeout).await;
                }
                let _ = out
                    .send(Chunk::Stdout(format!("BROKEN {n} {reason}\n")))
                    .await;
                return Ok(1);
            }
            if out.send(Chunk::Stdout(format!("OK {n}\n"))).await.is_err() {
                return Ok(0);
            }
            tokio::time::sleep(h.interval).await;
        }
        let _ = out
            .send(Chunk::Stdout(format!("DONE {}\n", h.rounds)))
            .await;
        Ok(0)
    }
}

fn pod_ns(p: &PodInfo) -> String {
    p.object
        .pointer("/metadata/namespace")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn pod_name(p: &PodInfo) -> String {
    p.object
        .pointer("/metadata/name")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(extra: &[&str]) -> Vec<String> {
        let mut v = vec![
            "bash".to_string(),
            "-c".into(),
            HOLD_SCRIPT.into(),
            "hold".into(),
        ];
        v.extend(extra.iter().map(|s| s.to_string()));
        v
    }

    #[test]
    fn parses_the_hold_script_and_nothing_else() {
        let h = parse(&argv(&["10.0.0.7", "8080", "0.5", "20", "2"]));
        assert_eq!(
            h,
            Some(Ok(Hold {
                host: "10.0.0.7".into(),
                port: "8080".into(),
                interval: Duration::from_millis(500),
                rounds: 20,
                read_timeout: Duration::from_secs(2),
            }))
        );
        assert!(matches!(
            parse(&argv(&["10.0.0.7", "8080", "soon", "20", "2"])),
            Some(Err(o)) if o.exit_code == 2 && o.stderr.contains("seconds")
        ));
        assert!(matches!(parse(&argv(&["10.0.0.7"])), Some(Err(_))));
        let mut other = argv(&["10.0.0.7", "8080", "1", "2", "1"]);
        other[2] = "echo hi".into();
        assert_eq!(parse(&other), None);
        assert_eq!(parse(&["/agnhost".to_string(), "connect".into()]), None);
    }

    #[test]
    fn connect_errors_read_like_bash() {
        let h = Hold {
            host: "10.0.0.7".into(),
            port: "8080".into(),
            interval: Duration::ZERO,
            rounds: 1,
            read_timeout: Duration::ZERO,
        };
        assert_eq!(
            connect_error(&h, &Connect::Refused),
            "bash: connect: Connection refused\nbash: /dev/tcp/10.0.0.7/8080: Connection refused\n"
        );
        assert!(connect_error(&h, &Connect::Dropped).contains("Connection timed out"));
    }
}
