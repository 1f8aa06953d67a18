//! A record of the requests the API server serves, for benches and tests that count
//! what a client asked for in a time window (e.g. `calico-migrate`'s takeover step).
//!
//! Off until someone calls [`RequestLog::start`]: while off, a request costs one atomic
//! load. While on, each request adds one small record (its arrival time, verb, resource
//! and user agent) to a ring of at most the capacity given to `start`, dropping the
//! oldest beyond it and counting what it dropped, so a long run costs bounded memory
//! and a count over a window the ring no longer covers is refused rather than short.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::authz_http::request_attributes;
use crate::sandbox::Sandbox;

/// One request as it arrived.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    pub at: jiff::Timestamp,
    /// The RBAC verb (`get`, `list`, `watch`, `create`, `patch`, ...); for a path outside
    /// the resource API, the HTTP method in lower case.
    pub verb: String,
    /// `resource[/subresource][.group]` (`pods/exec`, `daemonsets.apps`), or the path of
    /// a request outside the resource API (`/version`, `/apis`).
    pub resource: String,
    /// The `User-Agent` header, empty when absent.
    pub user_agent: String,
}

/// Why a count cannot be given.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestLogError {
    #[error(
        "the request log is not recording: call RequestLog::start before the requests to count"
    )]
    NotRecording,
    #[error(
        "the request log started recording at {since}, after the window's start {from}: \
         start it before the requests to count"
    )]
    StartedLate {
        since: jiff::Timestamp,
        from: jiff::Timestamp,
    },
    #[error(
        "the request log dropped {dropped} of its oldest records to stay within {capacity} and \
         no longer covers the window from {from}: start it with a larger capacity"
    )]
    Truncated {
        dropped: u64,
        capacity: usize,
        from: jiff::Timestamp,
    },
}

#[derive(Debug, Default)]
struct Ring {
    records: VecDeque<RequestRecord>,
    capacity: usize,
    dropped: u64,
    /// When recording started: a window that begins earlier was not watched whole.
    since: Option<jiff::Timestamp>,
}

/// The requests served since [`RequestLog::start`], up to its capacity.
#[derive(Debug, Default)]
pub struct RequestLog {
    recording: AtomicBool,
    ring: Mutex<Ring>,
}

impl RequestLog {
    /// Forget what was recorded and record from now on, keeping the newest `capacity`.
    pub fn start(&self, capacity: usize) {
        let mut r = self.lock();
        *r = Ring {
            records: VecDeque::with_capacity(capacity.min(65_536)),
            capacity: capacity.max(1),
            dropped: 0,
            since: Some(jiff::Timestamp::now()),
        };
        self.recording.store(true, Ordering::Release);
    }

    /// Stop recording; what was recorded stays readable.
    pub fn stop(&self) {
        self.recording.store(false, Ordering::Release);
    }

    pub fn is_recording(&self) -> bool {
        self.recording.load(Ordering::Acquire)
    }

    /// The records kept, oldest first.
    pub fn records(&self) -> Vec<RequestRecord> {
        self.lock().records.iter().cloned().collect()
    }

    /// The requests that arrived in `[from, to]` and satisfy `pick`. Refused when the
    /// log was never started, started after `from`, or dropped records from the window.
    pub fn count(
        &self,
        from: jiff::Timestamp,
        to: jiff::Timestamp,
        pick: impl Fn(&RequestRecord) -> bool,
    ) -> Result<usize, RequestLogError> {
        let r = self.lock();
        let since = r.since.ok_or(RequestLogError::NotRecording)?;
        if since > from {
            return Err(RequestLogError::StartedLate { since, from });
        }
        let oldest_kept = r.records.front().map(|x| x.at);
        if r.dropped > 0 && oldest_kept.is_none_or(|o| o > from) {
            return Err(RequestLogError::Truncated {
                dropped: r.dropped,
                capacity: r.capacity,
                from,
            });
        }
        Ok(r.records
            .iter()
            .filter(|x| x.at >= from && x.at <= to && pick(x))
            .count())
    }

    fn push(&self, record: RequestRecord) {
        let mut r = self.lock();
        if r.records.len() >= r.capacity {
            r.records.pop_front();
            r.dropped += 1;
        }
        r.records.push_back(record);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Ring> {
        // A panic while holding the lock leaves a consistent ring: keep using it.
        self.ring.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Middleware: record the request when the log is on, then serve it.
pub async fn record(State(sb): State<Sandbox>, req: Request, next: Next) -> Response {
    let log = sb.requests();
    if log.is_recording() {
        let a = request_attributes(req.method(), req.uri().path(), req.uri().query());
        let resource = match &a.path {
            Some(path) => path.clone(),
            None => {
                let mut r = a.resource.clone();
                if !a.subresource.is_empty() {
                    r = format!("{r}/{}", a.subresource);
                }
                if !a.group.is_empty() {
                    r = format!("{r}.{}", a.group);
                }
                r
            }
        };
        let user_agent = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        log.push(RequestRecord {
            at: jiff::Timestamp::now(),
            verb: a.verb,
            resource,
            user_agent,
        });
    }
    next.run(req).await
}
