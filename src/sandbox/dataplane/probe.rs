//! The commands a probe pod understands, and their answers from the simulated
//! data plane. `agnhost connect` reproduces kubernetes
//! `test/images/agnhost/connect/connect.go`: exit 0 when connected, otherwise exit 1
//! with a fixed prefix on stderr (`TIMEOUT`, `REFUSED`, `DNS: ...`, `UNKNOWN: ...`,
//! `OTHER: ...`), which the upstream network-policy e2e tests check.

use std::net::IpAddr;
use std::time::Duration;

use crate::policy::Protocol;

use super::world::{EvalError, PodInfo, Side, World};

/// The address Calico's `deny-aws-imds` policy protects; only port 80 listens there.
pub const IMDS: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(169, 254, 169, 254));

/// A parsed exec command.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    Connect {
        dest: String,
        /// `--timeout`; zero means the kernel's own (about two minutes for TCP).
        timeout: Duration,
        protocol: String,
    },
    /// agnhost exits 1 with this on stderr (bad flags or arguments).
    Usage(String),
    /// Not a command of the simulated image (exit 127).
    NotFound(String),
}

/// What an exec returns: an exit code with its output, or an error Status.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecOutcome {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl ExecOutcome {
    fn exit(code: i32, stderr: impl Into<String>) -> Self {
        Self {
            exit_code: code,
            stdout: String::new(),
            stderr: stderr.into(),
        }
    }
}

/// Parse a Go duration such as `1s`, `500ms`, `1.5s`, `2m`, `0`.
pub fn parse_go_duration(s: &str) -> Option<Duration> {
    if s == "0" {
        return Some(Duration::ZERO);
    }
    let mut total = 0f64;
    let mut rest = s;
    if rest.is_empty() {
        return None;
    }
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let secs = match &rest[..unit_end] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * secs;
        rest = &rest[unit_end..];
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Understand `argv` as the probe image would.
pub fn parse_command(argv: &[String]) -> Command {
    let Some(first) = argv.first() else {
        return Command::NotFound(String::new());
    };
    let is_agnhost = first == "/agnhost" || first == "agnhost";
    if !is_agnhost || argv.get(1).map(String::as_str) != Some("connect") {
        return Command::NotFound(first.clone());
    }
    let mut dest = Vec::new();
    let mut timeout = Duration::ZERO;
    let mut protocol = "tcp".to_string();
    let mut args = argv[2..].iter();
    while let Some(a) = args.next() {
        let (flag, inline) = match a.split_once('=') {
            Some((f, v)) if a.starts_with('-') => (f, Some(v.to_string())),
            _ => (a.as_str(), None),
        };
        let flag = flag.trim_start_matches('-');
        if !a.starts_with('-') {
            dest.push(a.clone());
            continue;
        }
        let value = match inline {
            Some(v) => v,
            None => match args.next() {
                Some(v) => v.clone(),
                None => {
                    return Command::Usage(format!("Error: flag needs an argument: --{flag}\n"));
                }
            },
        };
        match flag {
            "timeout" => match parse_go_duration(&value) {
                Some(d) => timeout = d,
                None => {
                    return Command::Usage(format!(
                        "Error: invalid argument \"{value}\" for \"--timeout\" flag: time: invalid duration \"{value}\"\n"
                    ));
                }
            },
            "protocol" => protocol = value,
            "udp-data" | "sctp-data" => {}
            other => return Command::Usage(format!("Error: unknown flag: --{other}\n")),
        }
    }
    if dest.len() != 1 {
        return Command::Usage(format!(
            "Error: accepts 1 arg(s), received {}\n",
            dest.len()
        ));
    }
    Command::Connect {
        dest: dest.remove(0),
        timeout,
        protocol,
    }
}

/// The result of a connection attempt.
#[derive(Debug, Clone, PartialEq)]
pub enum Connect {
    Connected,
    /// Dropped by policy (or fail-closed): the client times out.
    Dropped,
    /// Reached the destination, nothing listens there.
    Refused,
    Dns(String),
    Unknown(String),
}

/// Go's `net.AddrError` from `net.SplitHostPort`, as agnhost prints it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum AddrError {
    #[error("address {0}: missing port in address")]
    MissingPort(String),
    #[error("address {0}: too many colons in address")]
    TooManyColons(String),
}

/// Split `host:port` as Go's `net.SplitHostPort` does (brackets for IPv6).
fn split_host_port(dest: &str) -> Result<(&str, &str), AddrError> {
    if let Some(rest) = dest.strip_prefix('[') {
        let (h, p) = rest
            .split_once("]:")
            .ok_or_else(|| AddrError::MissingPort(dest.to_string()))?;
        return Ok((h, p));
    }
    match dest.rsplit_once(':') {
        Some((h, _)) if h.contains(':') => Err(AddrError::TooManyColons(dest.to_string())),
        Some((h, p)) => Ok((h, p)),
        None => Err(AddrError::MissingPort(dest.to_string())),
    }
}

/// Where a connection goes after kube-proxy's rewrite: a pod, or an address outside the pod network.
pub enum Target<'a> {
    Pod(&'a PodInfo),
    Addr(IpAddr),
}

fn pod_key(p: &PodInfo) -> String {
    format!(
        "{}/{}",
        p.object
            .pointer("/metadata/namespace")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default(),
        p.object
            .pointer("/metadata/name")
            .and_then(serde_json::Value::as_str)
            .unwrap_or_default()
    )
}

/// One side's verdict: `Ok(true)` allowed, `Err` when the engine cannot evaluate.
pub fn side_allows(
    world: &mut World,
    side: Side,
    src: &PodInfo,
    dst: &Target<'_>,
    port: u16,
    proto: Protocol,
    egress: bool,
) -> Result<bool, EvalError> {
    let set = match side {
        Side::AllowAll => return Ok(true),
        Side::Drop => return Ok(false),
        Side::Policies(set) => set,
    };
    let idx = world.index(&set)?;
    let missing = EvalError::UnknownPod;
    let s = idx
        .pod_index(&pod_key(src))
        .ok_or_else(|| missing(pod_key(src)))?;
    Ok(match dst {
        Target::Pod(d) => {
            let di = idx
                .pod_index(&pod_key(d))
                .ok_or_else(|| missing(pod_key(d)))?;
            let (eg, ing) = idx.decide_pods(s, di, port, proto);
            if egress { eg.allowed } else { ing.allowed }
        }
        Target::Addr(ip) => idx.decide_external(s, *ip, port, proto).allowed,
    })
}

/// A destination as the client's kernel ends up sending to it (after kube-proxy's DNAT).
#[derive(Debug, Clone)]
pub struct Resolved {
    pub ip: IpAddr,
    pub port: u16,
    pub dst_pod: Option<PodInfo>,
}

/// Resolve `dest` (`IP:PORT` or `name:PORT`) from `src`: a Service becomes its first Ready
/// endpoint, a pod IP its pod. `Err` carries the answer when nothing can be reached.
pub fn resolve(
    world: &World,
    src: &PodInfo,
    dest: &str,
    proto: Protocol,
) -> Result<Resolved, Connect> {
    let (host, port) = match split_host_port(dest) {
        Ok(hp) => hp,
        Err(e) => return Err(Connect::Unknown(e.to_string())),
    };
    let port: u16 = match port.parse::<u32>() {
        Ok(p) if p <= 65535 => p as u16,
        Ok(_) => return Err(Connect::Dns(format!("address {dest}: invalid port"))),
        Err(_) => {
            return Err(Connect::Dns(format!(
                "lookup {}/{port}: unknown port",
                proto.to_string().to_lowercase()
            )));
        }
    };
    let src_ns = src
        .object
        .pointer("/metadata/namespace")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    let service = match host.parse::<IpAddr>() {
        Ok(ip) => world.service_by_cluster_ip(ip).cloned(),
        Err(_) => match world.service_by_name(host, src_ns) {
            Some(svc) => Some(svc.clone()),
            None => return Err(Connect::Dns(format!("lookup {host}: no such host"))),
        },
    };
    match &service {
        // kube-proxy rewrites a Service address to one of its endpoints; none: rejected.
        Some(svc) => match world.service_backend(svc, port, proto) {
            Some((pod, target)) => match pod.ip {
                Some(ip) => Ok(Resolved {
                    ip,
                    port: target,
                    dst_pod: Some(pod),
                }),
                None => Err(Connect::Refused),
            },
            None => Err(Connect::Refused),
        },
        None => match host.parse::<IpAddr>() {
            Ok(ip) => Ok(Resolved {
                ip,
                port,
                dst_pod: world.pod_by_ip(ip).cloned(),
            }),
            Err(_) => Err(Connect::Dns(format!("lookup {host}: no such host"))),
        },
    }
}

/// Whether `src` can resolve a name: its lookup goes to Service kube-system/kube-dns
/// (UDP 53, the pod's `ClusterFirst` resolv.conf), which kube-proxy sends to one CoreDNS
/// pod; both nodes' enforcement judge that flow. `Some(answer)` when the lookup fails.
/// A sandbox without that Service resolves names without a DNS flow.
fn dns_lookup(world: &mut World, src: &PodInfo, host: &str) -> Result<Option<Connect>, EvalError> {
    let Some(svc) = world.service_by_name("kube-dns.kube-system", "").cloned() else {
        return Ok(None);
    };
    let server = svc
        .pointer("/spec/clusterIP")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default()
        .to_string();
    let from = src.ip.map(|ip| ip.to_string()).unwrap_or_default();
    // Go's resolver, after its retries (read by agnhost connect as a DNS error).
    let timeout = || {
        Connect::Dns(format!(
            "lookup {host} on {server}:53: read udp {from}:40000->{server}:53: i/o timeout"
        ))
    };
    let Some((pod, port)) = world.service_backend(&svc, 53, Protocol::Udp) else {
        // No CoreDNS endpoint: kube-proxy rejects, the resolver sees a refusal.
        return Ok(Some(Connect::Dns(format!(
            "lookup {host} on {server}:53: read udp {from}:40000->{server}:53: read: connection refused"
        ))));
    };
    let target = Target::Pod(&pod);
    let eg = side_allows(
        world,
        world.side(src),
        src,
        &target,
        port,
        Protocol::Udp,
        true,
    )?;
    let ing = side_allows(
        world,
        world.side(&pod),
        src,
        &target,
        port,
        Protocol::Udp,
        false,
    )?;
    Ok((!(eg && ing)).then(timeout))
}

/// Evaluate a connection from `src` to `dest` (`IP:PORT`, or `name:PORT` after a DNS
/// lookup).
pub fn connect(
    world: &mut World,
    src: &PodInfo,
    dest: &str,
    proto: Protocol,
) -> Result<Connect, EvalError> {
    if let Ok((host, _)) = split_host_port(dest)
        && host.parse::<IpAddr>().is_err()
        && let Some(failed) = dns_lookup(world, src, host)?
    {
        return Ok(failed);
    }
    match resolve(world, src, dest, proto) {
        Ok(r) => connect_resolved(world, src, &r, proto),
        Err(answer) => Ok(answer),
    }
}

/// Evaluate a new connection to a resolved destination: both nodes' enforcement, then
/// whether something listens.
pub fn connect_resolved(
    world: &mut World,
    src: &PodInfo,
    r: &Resolved,
    proto: Protocol,
) -> Result<Connect, EvalError> {
    let (ip, port) = (r.ip, r.port);
    let target = match &r.dst_pod {
        Some(p) => Target::Pod(p),
        None => Target::Addr(ip),
    };
    if let Target::Pod(d) = &target
        && d.uid == src.uid
    {
        // Loopback never leaves the pod: no policy applies.
        return Ok(listening(world, &target, ip, port, proto));
    }
    let eg = side_allows(world, world.side(src), src, &target, port, proto, true)?;
    let ing = match &target {
        Target::Pod(d) => side_allows(world, world.side(d), src, &target, port, proto, false)?,
        // Node addresses and the outside world: no host endpoints are modelled.
        Target::Addr(_) => true,
    };
    if !(eg && ing) {
        return Ok(Connect::Dropped);
    }
    Ok(listening(world, &target, ip, port, proto))
}

fn listening(
    world: &World,
    target: &Target<'_>,
    ip: IpAddr,
    port: u16,
    proto: Protocol,
) -> Connect {
    let open = match target {
        Target::Pod(d) => d.listens.contains(&(port, proto)),
        Target::Addr(ip) if *ip == IMDS => (port, proto) == (80, Protocol::Tcp),
        Target::Addr(_) => match world.node_ips.get(&ip) {
            Some(node) => world
                .host_pods_on(node)
                .iter()
                .any(|p| p.listens.contains(&(port, proto))),
            // The world outside the cluster answers on every port.
            None => true,
        },
    };
    if open {
        Connect::Connected
    } else {
        Connect::Refused
    }
}

/// agnhost's output for a result (connect.go's strings).
pub fn agnhost_output(
    result: &Connect,
    src_ip: Option<IpAddr>,
    dest: &str,
    proto: &str,
) -> ExecOutcome {
    let from = src_ip.map(|ip| ip.to_string()).unwrap_or_default();
    match (result, proto) {
        (Connect::Connected, _) => ExecOutcome::exit(0, ""),
        (Connect::Dropped, "udp") => ExecOutcome::exit(
            1,
            format!("TIMEOUT: read udp {from}:40000->{dest}: i/o timeout\n"),
        ),
        (Connect::Dropped, _) => ExecOutcome::exit(1, "TIMEOUT\n"),
        (Connect::Refused, "udp") => ExecOutcome::exit(
            1,
            format!("REFUSED: read udp {from}:40000->{dest}: read: connection refused\n"),
        ),
        (Connect::Refused, "sctp") => ExecOutcome::exit(1, "OTHER: connection refused\n"),
        (Connect::Refused, _) => ExecOutcome::exit(1, "REFUSED\n"),
        (Connect::Dns(e), _) => ExecOutcome::exit(1, format!("DNS: {e}\n")),
        (Connect::Unknown(e), _) => ExecOutcome::exit(1, format!("UNKNOWN: {e}\n")),
    }
}

/// stderr and exit code for a command the image does not have.
pub fn not_found(cmd: &str) -> ExecOutcome {
    ExecOutcome::exit(
        127,
        format!(
            "exec: \"{cmd}\": executable file not found in $PATH (the sandbox's probe image understands \
             `/agnhost connect IP:PORT --timeout=1s --protocol=tcp|udp|sctp`)\n"
        ),
    )
}

/// agnhost's answer to an unsupported `--protocol` (connect.go prints it this way).
pub fn unsupported_protocol(p: &str) -> ExecOutcome {
    ExecOutcome::exit(1, format!("Unsupported protocol\n{p}"))
}

pub fn usage(msg: &str) -> ExecOutcome {
    ExecOutcome::exit(1, msg.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_string).collect()
    }

    #[test]
    fn parses_agnhost_connect_in_both_flag_spellings() {
        let want = Command::Connect {
            dest: "10.0.0.5:8080".into(),
            timeout: Duration::from_secs(1),
            protocol: "udp".into(),
        };
        assert_eq!(
            parse_command(&argv(
                "/agnhost connect 10.0.0.5:8080 --timeout=1s --protocol=udp"
            )),
            want
        );
        assert_eq!(
            parse_command(&argv(
                "agnhost connect --timeout 1s --protocol udp 10.0.0.5:8080"
            )),
            want
        );
        assert!(matches!(
            parse_command(&argv("/agnhost connect")),
            Command::Usage(_)
        ));
        assert!(matches!(
            parse_command(&argv("/agnhost connect a:1 --bogus=1")),
            Command::Usage(_)
        ));
        assert!(matches!(
            parse_command(&argv("/agnhost connect a:1 --timeout=soon")),
            Command::Usage(_)
        ));
        assert_eq!(
            parse_command(&argv("curl x")),
            Command::NotFound("curl".into())
        );
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("1s"), Some(Duration::from_secs(1)));
        assert_eq!(parse_go_duration("1m30s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_go_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_go_duration("0"), Some(Duration::ZERO));
        assert_eq!(parse_go_duration("1x"), None);
        assert_eq!(parse_go_duration(""), None);
    }

    #[test]
    fn host_port_splitting_follows_go() {
        assert_eq!(split_host_port("1.2.3.4:80"), Ok(("1.2.3.4", "80")));
        assert_eq!(split_host_port("[::1]:80"), Ok(("::1", "80")));
        assert!(split_host_port("1.2.3.4").is_err());
        assert!(split_host_port("::1:80").is_err());
    }
}
