//! HTTP side of the data plane: the `pods/exec` websocket subresource as
//! kube-rs (`Api::<Pod>::exec`, kube-client `src/api/remote_command.rs`) and
//! kubectl 1.30+ speak it, and `GET /sandbox/v1/enforcement`.
//!
//! Protocol (kubernetes `staging/src/k8s.io/apimachinery/pkg/util/remotecommand`
//! and `.../httpstream/wsstream`): binary frames whose first byte is the channel
//! (1 stdout, 2 stderr, 3 error); the error channel carries one `v1.Status`:
//! `Success`, or `Failure` with reason `NonZeroExitCode` and a cause
//! `{"reason": "ExitCode", "message": "<code>"}`, which kubectl turns into its exit code.

use axum::Router;
use axum::extract::ws::{
    CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code,
    rejection::WebSocketUpgradeRejection,
};
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::{Value, json};

use super::{DataPlane, ExecError, ExecOutcome};
use crate::sandbox::Gvr;

/// The subprotocols served, in order of preference.
pub const PROTOCOLS: [&str; 2] = ["v5.channel.k8s.io", "v4.channel.k8s.io"];

const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const ERROR: u8 = 3;

pub fn routes(dp: DataPlane) -> Router {
    Router::new()
        .route(
            "/api/v1/namespaces/{ns}/pods/{name}/exec",
            get(exec_ws).post(exec_not_ws),
        )
        .route("/sandbox/v1/enforcement", get(enforcement))
        .route(
            "/sandbox/v1/conntrack/flush",
            axum::routing::post(flush_conntrack),
        )
        .with_state(dp)
}

/// The query of an exec request.
#[derive(Debug, Default, PartialEq)]
pub struct ExecQuery {
    pub command: Vec<String>,
    pub container: Option<String>,
    pub stdout: bool,
    pub stderr: bool,
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < b.len() => {
                let hex = |c: u8| (c as char).to_digit(16);
                match (hex(b[i + 1]), hex(b[i + 2])) {
                    (Some(h), Some(l)) => {
                        out.push((h * 16 + l) as u8);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn parse_query(q: &str) -> ExecQuery {
    let mut out = ExecQuery::default();
    for pair in q.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = percent_decode(v);
        let yes = v == "true" || v == "1";
        match percent_decode(k).as_str() {
            "command" => out.command.push(v),
            "container" => out.container = Some(v),
            "stdout" => out.stdout = yes,
            "stderr" => out.stderr = yes,
            _ => {}
        }
    }
    out
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    let sc = StatusCode::from_u16(code).unwrap_or(StatusCode::BAD_REQUEST);
    (sc, axum::Json(body)).into_response()
}

/// The error-channel Status for an outcome (what kubelet writes: remotecommand's
/// `NonZeroExitCodeReason` / `ExitCodeCauseType`).
pub fn outcome_status(o: &ExecOutcome, command: &[String]) -> Value {
    if o.exit_code == 0 {
        return json!({"metadata": {}, "status": "Success"});
    }
    json!({
        "metadata": {}, "status": "Failure",
        "message": format!(
            "command terminated with non-zero exit code: error executing command {:?}, exit code {}",
            command, o.exit_code
        ),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": o.exit_code.to_string()}]},
    })
}

async fn exec_not_ws() -> Response {
    status(
        400,
        "BadRequest",
        "Upgrade request required: the sandbox serves exec over websockets only (GET with \
         Sec-WebSocket-Protocol v5.channel.k8s.io or v4.channel.k8s.io); kubectl 1.30+ and kube-rs use it",
    )
}

async fn exec_ws(
    State(dp): State<DataPlane>,
    Path((ns, name)): Path<(String, String)>,
    RawQuery(q): RawQuery,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    let query = parse_query(q.as_deref().unwrap_or_default());
    let Ok(pod) = dp
        .inner
        .sandbox
        .store()
        .get(&Gvr::new("", "v1", "pods"), &ns, &name)
    else {
        return status(404, "NotFound", &format!("pods \"{name}\" not found"));
    };
    if let Some(c) = &query.container {
        let known = pod
            .pointer("/spec/containers")
            .and_then(Value::as_array)
            .is_some_and(|cs| {
                cs.iter()
                    .any(|x| x.get("name").and_then(Value::as_str) == Some(c))
            });
        if !known {
            return status(
                400,
                "BadRequest",
                &format!("container {c} is not valid for pod {name}"),
            );
        }
    }
    if query.command.is_empty() {
        return status(400, "BadRequest", "you must specify at least 1 command");
    }
    let ws = match ws {
        Ok(ws) => ws.protocols(PROTOCOLS),
        Err(_) => return exec_not_ws().await,
    };
    if ws.selected_protocol().is_none() {
        let offered: Vec<String> = ws
            .requested_protocols()
            .filter_map(|h| h.to_str().ok().map(str::to_string))
            .collect();
        return status(
            400,
            "BadRequest",
            &format!(
                "none of the offered exec subprotocols {offered:?} is served; the sandbox speaks {}",
                PROTOCOLS.join(", ")
            ),
        );
    }
    ws.on_upgrade(move |socket| run(socket, dp, ns, name, query))
}

async fn run(mut socket: WebSocket, dp: DataPlane, ns: String, name: String, q: ExecQuery) {
    if let Some(Ok(hold)) = super::flows::parse(&q.command) {
        return run_hold(socket, dp, ns, name, q, hold).await;
    }
    let result = dp.exec(&ns, &name, &q.command).await;
    let mut frames = Vec::new();
    let status = match result {
        Ok(o) => {
            if q.stdout && !o.stdout.is_empty() {
                frames.push(frame(STDOUT, o.stdout.as_bytes()));
            }
            if q.stderr && !o.stderr.is_empty() {
                frames.push(frame(STDERR, o.stderr.as_bytes()));
            }
            outcome_status(&o, &q.command)
        }
        Err(e) => error_status(&e),
    };
    frames.push(frame(ERROR, status.to_string().as_bytes()));
    for f in frames {
        if socket.send(Message::Binary(f.into())).await.is_err() {
            return;
        }
    }
    close(socket).await;
}

/// The error-channel Status for an exec that could not run or was cut off.
fn error_status(e: &ExecError) -> Value {
    let (code, reason) = match e {
        ExecError::NotFound(_) => (404, "NotFound"),
        ExecError::BadRequest(_) => (400, "BadRequest"),
        ExecError::NotRunning(_) | ExecError::Internal(_) | ExecError::Eval(_) => {
            (500, "InternalError")
        }
    };
    json!({"metadata": {}, "status": "Failure", "message": e.to_string(), "reason": reason, "code": code})
}

/// A normal-closure code: kubectl (gorilla websocket) treats a close without one
/// (1005) as an error reading the streams.
async fn close(mut socket: WebSocket) {
    let _ = socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: "".into(),
        })))
        .await;
}

/// A held connection (`flows::HOLD_SCRIPT`): its lines go out as they happen. A client
/// that goes away stops the simulated process.
async fn run_hold(
    mut socket: WebSocket,
    dp: DataPlane,
    ns: String,
    name: String,
    q: ExecQuery,
    hold: super::flows::Hold,
) {
    use super::flows::Chunk;
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let task = tokio::spawn({
        let dp = dp.clone();
        async move { dp.hold(&ns, &name, hold, tx).await }
    });
    while let Some(chunk) = rx.recv().await {
        let f = match chunk {
            Chunk::Stdout(s) if q.stdout => frame(STDOUT, s.as_bytes()),
            Chunk::Stderr(s) if q.stderr => frame(STDERR, s.as_bytes()),
            _ => continue,
        };
        if socket.send(Message::Binary(f.into())).await.is_err() {
            task.abort();
            return;
        }
    }
    let status = match task.await {
        Ok(Ok(code)) => outcome_status(
            &ExecOutcome {
                exit_code: code,
                stdout: String::new(),
                stderr: String::new(),
            },
            &q.command,
        ),
        Ok(Err(e)) => error_status(&e),
        Err(e) => error_status(&ExecError::Internal(format!(
            "the command was cut off: {e}"
        ))),
    };
    if socket
        .send(Message::Binary(
            frame(ERROR, status.to_string().as_bytes()).into(),
        ))
        .await
        .is_ok()
    {
        close(socket).await;
    }
}

fn frame(channel: u8, data: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    v
}

async fn enforcement(State(dp): State<DataPlane>) -> Response {
    let nodes = dp.nodes().await;
    let intervals = dp.intervals().await;
    axum::Json(json!({
        "kind": "Enforcement",
        "apiVersion": "sandbox/v1",
        "nodes": nodes,
        "intervals": intervals,
    }))
    .into_response()
}

/// `POST /sandbox/v1/conntrack/flush?node=NODE`: what `conntrack -F` does on the node
/// (`kubectl create --raw '/sandbox/v1/conntrack/flush?node=NODE' -f /dev/null`).
async fn flush_conntrack(State(dp): State<DataPlane>, RawQuery(q): RawQuery) -> Response {
    let node = parse_pairs(q.as_deref().unwrap_or_default(), "node");
    let Some(node) = node.filter(|n| !n.is_empty()) else {
        return status(
            400,
            "BadRequest",
            "name the node whose conntrack table to flush: /sandbox/v1/conntrack/flush?node=NODE",
        );
    };
    if !dp.nodes().await.iter().any(|n| n.node == node) {
        return status(404, "NotFound", &format!("nodes \"{node}\" not found"));
    }
    dp.flush_conntrack(&node);
    axum::Json(json!({"kind": "ConntrackFlush", "apiVersion": "sandbox/v1", "node": node}))
        .into_response()
}

/// The first value of `key` in a query string.
fn parse_pairs(q: &str, key: &str) -> Option<String> {
    q.split('&')
        .filter_map(|p| p.split_once('='))
        .find(|(k, _)| percent_decode(k) == key)
        .map(|(_, v)| percent_decode(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_with_repeated_commands() {
        let q = parse_query(
            "command=%2Fagnhost&command=connect&command=10.0.0.1%3A80&command=--timeout%3D1s&container=c&stdout=true&stderr=true",
        );
        assert_eq!(
            q.command,
            ["/agnhost", "connect", "10.0.0.1:80", "--timeout=1s"]
        );
        assert_eq!(q.container.as_deref(), Some("c"));
        assert!(q.stdout && q.stderr);
        assert_eq!(percent_decode("a%2"), "a%2");
    }

    #[test]
    fn exit_code_status_is_what_kubectl_parses() {
        let o = ExecOutcome {
            exit_code: 1,
            stdout: String::new(),
            stderr: "TIMEOUT\n".into(),
        };
        let s = outcome_status(&o, &["/agnhost".into()]);
        assert_eq!(s["reason"], "NonZeroExitCode");
        assert_eq!(
            s["details"]["causes"][0],
            json!({"reason": "ExitCode", "message": "1"})
        );
    }
}
