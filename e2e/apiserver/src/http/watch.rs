//! WATCH streams: newline-delimited `{"type","object"}` events over a chunked
//! response. A watch starts from the current state (synthetic ADDED events, ended by
//! an `initial-events-end` BOOKMARK for streaming lists) or replays the history after
//! a resourceVersion (`410 Gone` as an ERROR event when it is too old), then follows
//! the live feed. Selectors turn an object that stops matching into DELETED and one
//! that starts matching into ADDED. Idle streams get a BOOKMARK every second; the
//! stream ends at `timeoutSeconds`, on a watch-drop fault, on shutdown, or when the
//! client falls too far behind.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderValue, header};
use serde_json::json;
use tokio::sync::broadcast;

use super::respond::Format;
use crate::error::{ApiError, ApiResult};
use crate::machinery::selector::{FieldSelector, LabelSelector};
use crate::ops::Target;
use crate::server::Shared;
use crate::store::{Event, EventType, Obj, Stored, WatchStart};

/// What the watch request asked for.
pub struct WatchParams {
    pub labels: Option<LabelSelector>,
    pub fields: Option<FieldSelector>,
    pub resource_version: Option<String>,
    pub send_initial_events: bool,
    pub bookmarks: bool,
    pub timeout: Duration,
    /// Objects in full, as Tables (kubectl `get -w`) or as their metadata.
    pub format: Format,
}

const BOOKMARK_EVERY: Duration = Duration::from_secs(1);

/// Which objects a watch sees.
struct Filter {
    ns: Option<String>,
    labels: Option<LabelSelector>,
    fields: Option<FieldSelector>,
}

impl Filter {
    fn matches(&self, obj: &Obj) -> bool {
        self.ns.as_deref().is_none_or(|ns| obj.namespace() == ns)
            && self
                .labels
                .as_ref()
                .is_none_or(|l| l.matches_value(&obj.value))
            && self.fields.as_ref().is_none_or(|f| f.matches(&obj.value))
    }

    fn selects(&self) -> bool {
        self.labels.as_ref().is_some_and(|l| !l.is_everything()) || self.fields.is_some()
    }

    /// The event this watcher sees for a committed change, if any.
    fn translate(&self, ev: &Event) -> Option<(EventType, Obj)> {
        if !self.selects() {
            return self.matches(&ev.obj).then(|| (ev.ty, ev.obj.clone()));
        }
        let now = self.matches(&ev.obj);
        let before = ev.prev.as_ref().is_some_and(|p| self.matches(p));
        match ev.ty {
            EventType::Added => now.then(|| (EventType::Added, ev.obj.clone())),
            EventType::Deleted => (now || before).then(|| (EventType::Deleted, ev.obj.clone())),
            EventType::Modified => match (before, now) {
                (true, true) => Some((EventType::Modified, ev.obj.clone())),
                (false, true) => Some((EventType::Added, ev.obj.clone())),
                (true, false) => {
                    let prev = ev.prev.as_ref()?;
                    Some((EventType::Deleted, Stored::new(prev.value.clone(), ev.rv)))
                }
                (false, false) => None,
            },
        }
    }
}

fn frame(ty: &str, object: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(object.len() + 32);
    b.put_slice(b"{\"type\":\"");
    b.put_slice(ty.as_bytes());
    b.put_slice(b"\",\"object\":");
    b.put_slice(object);
    b.put_slice(b"}\n");
    b.freeze()
}

fn bookmark(kind: &str, api_version: &str, rv: u64, initial_end: bool) -> Bytes {
    let mut meta = json!({"resourceVersion": rv.to_string(), "creationTimestamp": null});
    if initial_end && let Some(m) = meta.as_object_mut() {
        m.insert(
            "annotations".into(),
            json!({"k8s.io/initial-events-end": "true"}),
        );
    }
    let obj = json!({"kind": kind, "apiVersion": api_version, "metadata": meta});
    frame("BOOKMARK", obj.to_string().as_bytes())
}

fn error_frame(e: &ApiError) -> Bytes {
    frame("ERROR", e.to_status().to_string().as_bytes())
}

/// Starts a watch and returns the streaming response.
pub fn serve(shared: Arc<Shared>, t: Target, p: WatchParams) -> ApiResult<Response> {
    let from = match p.resource_version.as_deref() {
        None | Some("") | Some("0") => None,
        Some(_) if p.send_initial_events => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?,
        ),
    };
    let filter = Filter {
        ns: t.ns.clone().filter(|_| t.def.namespaced),
        labels: p.labels,
        fields: p.fields,
    };
    let key = t.def.key();
    let (start, rx, start_rv) = {
        let st = shared.lock();
        match st.store.watch(&key, filter.ns.as_deref(), from) {
            None => return Err(ApiError::resource_not_found()),
            Some(Err(oldest)) => {
                let e = ApiError::gone(from.unwrap_or(0), oldest);
                return Ok(stream_response(futures::stream::once(async move {
                    Ok::<_, Infallible>(error_frame(&e))
                })));
            }
            Some(Ok((start, rx))) => (start, rx, from.unwrap_or(st.store.rv)),
        }
    };
    let mut drops = shared.faults.drops();
    drops.mark_unchanged();
    let mut ticker =
        tokio::time::interval_at(tokio::time::Instant::now() + BOOKMARK_EVERY, BOOKMARK_EVERY);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (snapshot, replay) = match start {
        WatchStart::Snapshot(objs) => (objs, Vec::new()),
        WatchStart::Replay(events) => (Vec::new(), events),
    };
    let stream = WatchStream {
        shutdown: shared.shutdown.clone(),
        shared,
        api_version: t.api_version(),
        kind: t.def.kind.clone(),
        table: (p.format == Format::Table).then(|| t.def.clone()),
        target: t,
        filter,
        bookmarks: p.bookmarks,
        last_rv: start_rv,
        headers_sent: false,
        format: p.format,
        snapshot: snapshot.into_iter(),
        replay: replay.into_iter(),
        initial_end: p.send_initial_events,
        rx,
        drops,
        deadline: Box::pin(tokio::time::sleep(p.timeout)),
        ticker,
        active: false,
        queue: VecDeque::new(),
        done: false,
    };
    Ok(stream_response(futures::stream::unfold(
        stream,
        |mut s| async move { s.next_frame().await.map(|b| (Ok::<_, Infallible>(b), s)) },
    )))
}

fn stream_response<S>(stream: S) -> Response
where
    S: futures::Stream<Item = Result<Bytes, Infallible>> + Send + 'static,
{
    let mut r = Response::new(Body::from_stream(stream));
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut().insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static("no-cache, private"),
    );
    r
}

/// One open watch, polled by the response body: frames are made when the client can
/// take them, straight from the resource's broadcast (no task or channel between).
struct WatchStream {
    target: Target,
    shared: Arc<Shared>,
    shutdown: tokio_util::sync::CancellationToken,
    api_version: String,
    kind: String,
    filter: Filter,
    bookmarks: bool,
    last_rv: u64,
    /// Set when events are sent as Tables; columns go with the first one only.
    table: Option<Arc<crate::resources::ResourceDef>>,
    headers_sent: bool,
    format: Format,
    /// Current state still to send as synthetic ADDED events.
    snapshot: std::vec::IntoIter<Obj>,
    /// History still to replay.
    replay: std::vec::IntoIter<Arc<Event>>,
    /// Send the `initial-events-end` bookmark once the snapshot is out.
    initial_end: bool,
    rx: broadcast::Receiver<Arc<Event>>,
    drops: tokio::sync::watch::Receiver<u64>,
    deadline: Pin<Box<tokio::time::Sleep>>,
    ticker: tokio::time::Interval,
    /// An event went out since the last bookmark tick.
    active: bool,
    queue: VecDeque<Bytes>,
    done: bool,
}

impl WatchStream {
    fn event_frame(&mut self, ty: EventType, obj: &Obj) -> Bytes {
        match &self.table {
            Some(def) => {
                let t = super::table::object_table(def, obj, !self.headers_sent);
                self.headers_sent = true;
                frame(ty.as_str(), t.to_string().as_bytes())
            }
            None => frame(
                ty.as_str(),
                &super::respond::render(&self.target, obj, self.format),
            ),
        }
    }

    /// Queues the frame (if any) this watcher sees for a committed change.
    fn deliver(&mut self, ev: &Event) {
        if ev.rv <= self.last_rv {
            return;
        }
        self.last_rv = ev.rv;
        if let Some((ty, obj)) = self.filter.translate(ev) {
            let b = self.event_frame(ty, &obj);
            self.queue.push_back(b);
        }
    }

    /// The next frame to send; `None` ends the stream.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Some(b);
            }
            if self.done {
                return None;
            }
            if let Some(obj) = self.snapshot.next() {
                if self.filter.matches(&obj) {
                    let b = self.event_frame(EventType::Added, &obj);
                    self.queue.push_back(b);
                }
                continue;
            }
            if let Some(ev) = self.replay.next() {
                self.deliver(&ev);
                continue;
            }
            if std::mem::take(&mut self.initial_end) {
                self.queue
                    .push_back(bookmark(&self.kind, &self.api_version, self.last_rv, true));
                continue;
            }
            tokio::select! {
                _ = &mut self.deadline => self.done = true,
                _ = self.drops.changed() => self.done = true,
                _ = self.shutdown.cancelled() => self.done = true,
                ev = self.rx.recv() => match ev {
                    Ok(ev) => {
                        self.deliver(&ev);
                        self.active = true;
                    }
                    // Lagged too far behind, or the resource went away.
                    Err(_) => self.done = true,
                },
                _ = self.ticker.tick() => {
                    if !std::mem::take(&mut self.active) && self.bookmarks {
                        self.bookmark();
                    }
                }
            }
        }
    }

    /// Queues a BOOKMARK at the current resourceVersion, after every event up to it.
    fn bookmark(&mut self) {
        // Everything committed up to `rv` is already in the broadcast.
        let rv = self.shared.lock().store.rv;
        loop {
            match self.rx.try_recv() {
                Ok(ev) => self.deliver(&ev),
                Err(broadcast::error::TryRecvError::Empty) => break,
                Err(_) => {
                    self.done = true;
                    return;
                }
            }
        }
        self.last_rv = self.last_rv.max(rv);
        let b = bookmark(&self.kind, &self.api_version, self.last_rv, false);
        self.queue.push_back(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::ResKey;
    use serde_json::Value;

    fn obj(labels: Value, rv: u64) -> Obj {
        Stored::new(
            json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "c", "namespace": "a", "labels": labels}}),
            rv,
        )
    }

    fn ev(ty: EventType, prev: Option<Obj>, cur: Obj) -> Event {
        Event {
            res: ResKey::from("configmaps"),
            rv: cur.rv,
            ty,
            obj: cur,
            prev,
        }
    }

    #[test]
    fn selector_transitions_become_added_and_deleted() {
        let f = Filter {
            ns: None,
            labels: Some(LabelSelector::parse("app=x").expect("selector")),
            fields: None,
        };
        let matching = obj(json!({"app": "x"}), 1);
        let other = obj(json!({"app": "y"}), 2);
        let (ty, _) = f
            .translate(&ev(
                EventType::Modified,
                Some(other.clone()),
                matching.clone(),
            ))
            .expect("added");
        assert_eq!(ty, EventType::Added);
        let (ty, o) = f
            .translate(&ev(EventType::Modified, Some(matching), other.clone()))
            .expect("deleted");
        assert_eq!(ty, EventType::Deleted);
        assert_eq!(o.rv, 2);
        assert_eq!(o.value["metadata"]["labels"]["app"], "x");
        assert!(f.translate(&ev(EventType::Added, None, other)).is_none());
    }

    #[test]
    fn frames_are_ndjson() {
        let b = frame("ADDED", b"{}");
        assert_eq!(&b[..], b"{\"type\":\"ADDED\",\"object\":{}}\n");
        let bm = bookmark("Pod", "v1", 5, true);
        let v: Value = serde_json::from_slice(&bm).expect("json");
        assert_eq!(
            v["object"]["metadata"]["annotations"]["k8s.io/initial-events-end"],
            "true"
        );
        assert_eq!(v["object"]["metadata"]["resourceVersion"], "5");
    }
}
