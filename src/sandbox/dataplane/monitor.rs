//! The enforcement monitor: per node, every interval in which what the node
//! enforces differs from what the current policies require. It is the ground
//! truth for "enforcement never lapsed": a migration is clean when no interval
//! overlaps it.

use std::collections::{BTreeMap, BTreeSet};

use jiff::Timestamp;
use serde::Serialize;

/// Why a node's enforcement differs from what the policies require.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DivergenceReason {
    /// `lapse:NODE` fault: everything is allowed.
    Lapse,
    /// No agent has ever programmed the node and workload pods run there (they fail closed).
    NoAgent,
    /// The node runs rules frozen by an agent that went away, and the policies changed since.
    StaleRules,
    /// Pods created while no agent ran: their traffic is dropped.
    FailClosed,
}

impl DivergenceReason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lapse => "lapse",
            Self::NoAgent => "no-agent",
            Self::StaleRules => "stale-rules",
            Self::FailClosed => "fail-closed",
        }
    }
}

/// One interval of divergence on one node; `end` is None while it lasts.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Interval {
    pub node: String,
    pub reason: DivergenceReason,
    /// Human-readable detail at the start (e.g. how many pods fail closed).
    pub detail: String,
    pub start: Timestamp,
    pub end: Option<Timestamp>,
}

impl Interval {
    /// Whether it overlaps `[from, to]` (an open interval extends to now).
    pub fn overlaps(&self, from: Timestamp, to: Timestamp) -> bool {
        self.start <= to && self.end.is_none_or(|e| e >= from)
    }
}

/// Records intervals as the data plane reports each node's divergences.
#[derive(Debug, Default)]
pub struct Monitor {
    open: BTreeMap<(String, DivergenceReason), Interval>,
    closed: Vec<Interval>,
}

impl Monitor {
    /// The node now diverges for exactly `reasons` (with details); opens and closes intervals.
    pub fn report(
        &mut self,
        node: &str,
        reasons: &BTreeMap<DivergenceReason, String>,
        now: Timestamp,
    ) {
        let was: BTreeSet<DivergenceReason> = self
            .open
            .range((node.to_string(), DivergenceReason::Lapse)..)
            .take_while(|((n, _), _)| n == node)
            .map(|((_, r), _)| *r)
            .collect();
        for r in was.iter().filter(|r| !reasons.contains_key(r)) {
            if let Some(mut i) = self.open.remove(&(node.to_string(), *r)) {
                i.end = Some(now);
                self.closed.push(i);
            }
        }
        for (r, detail) in reasons {
            self.open
                .entry((node.to_string(), *r))
                .or_insert_with(|| Interval {
                    node: node.to_string(),
                    reason: *r,
                    detail: detail.clone(),
                    start: now,
                    end: None,
                });
        }
    }

    /// Closed intervals in the order they ended, then open ones by node.
    pub fn intervals(&self) -> Vec<Interval> {
        let mut v = self.closed.clone();
        v.extend(self.open.values().cloned());
        v
    }

    /// Forget everything recorded so far (open intervals restart now).
    pub fn clear(&mut self, now: Timestamp) {
        self.closed.clear();
        for i in self.open.values_mut() {
            i.start = now;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn opens_and_closes_per_reason() {
        let mut m = Monitor::default();
        let t = |s: i64| Timestamp::from_second(s).unwrap();
        let lapse = BTreeMap::from([(DivergenceReason::Lapse, String::new())]);
        m.report("a", &lapse, t(1));
        m.report("a", &lapse, t(2));
        m.report("b", &BTreeMap::new(), t(2));
        assert_eq!(m.intervals().len(), 1);
        assert_eq!(m.intervals()[0].end, None);
        m.report("a", &BTreeMap::new(), t(3));
        let v = m.intervals();
        assert_eq!((v[0].start, v[0].end), (t(1), Some(t(3))));
        assert!(v[0].overlaps(t(2), t(5)) && !v[0].overlaps(t(4), t(5)));
    }
}
