//! Watches: a replay of history from a resourceVersion (or the current state as
//! ADDED events), then the live change feed, filtered by namespace and
//! selectors. An object leaving a selector is reported as DELETED, one entering
//! it as ADDED (k8s.io/apiserver pkg/storage/cacher/cache_watcher.go).

use std::sync::Arc;

use serde_json::Value;
use tokio::sync::broadcast;

use super::{EventType, Store, WatchEvent, present};
use crate::sandbox::apiserver::error::ApiError;
use crate::sandbox::apiserver::select::{FieldSelector, LabelSelector};
use crate::sandbox::apiserver::types::{GroupResource, Gvr, ResourceType};

/// Which events a watch wants.
#[derive(Debug, Clone)]
pub struct WatchFilter {
    pub gr: GroupResource,
    pub namespace: Option<String>,
    pub labels: LabelSelector,
    pub fields: FieldSelector,
}

impl WatchFilter {
    fn matches(&self, obj: &Value) -> bool {
        self.labels.matches(obj) && self.fields.matches(obj)
    }

    /// The event this watcher sees, if any.
    pub fn translate(&self, ev: &WatchEvent) -> Option<(EventType, Value)> {
        if ev.gr != self.gr || self.namespace.as_ref().is_some_and(|n| *n != ev.namespace) {
            return None;
        }
        let now = self.matches(&ev.object);
        match ev.kind {
            EventType::Modified => {
                let before = ev.old.as_ref().is_some_and(|o| self.matches(o));
                match (before, now) {
                    (true, true) => Some((EventType::Modified, ev.object.clone())),
                    (false, true) => Some((EventType::Added, ev.object.clone())),
                    (true, false) => Some((EventType::Deleted, ev.object.clone())),
                    (false, false) => None,
                }
            }
            k => now.then(|| (k, ev.object.clone())),
        }
    }
}

/// An open watch. `next` yields events until the store stops (or this watcher
/// falls too far behind, which ends it as a real server's would).
pub struct Watch {
    initial: std::collections::VecDeque<(EventType, Value)>,
    rx: broadcast::Receiver<Arc<WatchEvent>>,
    filter: WatchFilter,
    rt: ResourceType,
    version: String,
    /// Every change up to this resourceVersion has been considered by this watch.
    covered: u64,
}

impl Watch {
    /// The resourceVersion a BOOKMARK may announce: none while the initial
    /// events are still being sent.
    pub fn bookmark(&self) -> Option<u64> {
        self.initial.is_empty().then_some(self.covered)
    }

    pub async fn next(&mut self) -> Option<(EventType, Value)> {
        if let Some((k, o)) = self.initial.pop_front() {
            return Some((k, present(o, &self.rt, &self.version)));
        }
        loop {
            match self.rx.recv().await {
                Ok(ev) => {
                    self.covered = self.covered.max(ev.rv);
                    if let Some((k, o)) = self.filter.translate(&ev) {
                        return Some((k, present(o, &self.rt, &self.version)));
                    }
                }
                Err(_) => return None,
            }
        }
    }

    pub fn resource_type(&self) -> &ResourceType {
        &self.rt
    }
}

/// Parse a `resourceVersion` parameter: None / "" / "0" mean "from the current state".
pub fn parse_rv(rv: Option<&str>) -> Result<Option<u64>, ApiError> {
    match rv {
        None | Some("") | Some("0") => Ok(None),
        Some(s) => s.parse::<u64>().map(Some).map_err(|_| {
            ApiError::bad_request(format!(
                "invalid resource version \"{s}\": must be a non-negative integer"
            ))
        }),
    }
}

impl Store {
    /// Watch `gvr` (in `ns`, or everywhere) from resourceVersion `rv`.
    pub fn watch(
        &self,
        gvr: &Gvr,
        ns: Option<&str>,
        rv: Option<u64>,
        labels: LabelSelector,
        fields: FieldSelector,
    ) -> Result<Watch, ApiError> {
        let st = self.lock();
        let rt = st.rt(gvr)?;
        let ns = if rt.namespaced {
            ns.filter(|n| !n.is_empty()).map(String::from)
        } else {
            None
        };
        let filter = WatchFilter {
            gr: rt.gr(),
            namespace: ns.clone(),
            labels,
            fields,
        };
        let mut initial = std::collections::VecDeque::new();
        match rv {
            None => {
                if let Some(map) = st.objects.get(&rt.gr()) {
                    for ((ons, _), o) in map {
                        if ns.as_ref().is_some_and(|n| n != ons) || !filter.matches(o) {
                            continue;
                        }
                        initial.push_back((EventType::Added, (**o).clone()));
                    }
                }
            }
            Some(from) => {
                if from < st.floor {
                    return Err(ApiError::gone(format!(
                        "too old resource version: {from} ({})",
                        st.floor + 1
                    )));
                }
                for ev in st.history.iter().filter(|e| e.rv > from) {
                    if let Some(t) = filter.translate(ev) {
                        initial.push_back(t);
                    }
                }
            }
        }
        // Subscribing under the lock: no event falls between the replay and the feed.
        let rx = st.tx.subscribe();
        Ok(Watch {
            covered: st.rv,
            initial,
            rx,
            filter,
            rt,
            version: gvr.version.clone(),
        })
    }
}
