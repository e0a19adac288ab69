//! The one in-memory store: every object of every resource, kept as an immutable
//! [`Stored`] (the JSON value plus its serialized bytes, shared by `Arc` so reads and
//! watch fan-out never copy), the single cluster-wide resourceVersion counter, a
//! bounded per-resource event history for resuming watches, a live broadcast per
//! resource, and the indexes the controllers need (uid -> object, owner uid ->
//! dependents). It knows nothing of HTTP or of the REST rules; `ops` applies those.

pub mod continues;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{broadcast, mpsc};

use crate::meta;
use crate::resources::{Registry, ResKey, ResourceDef};

/// One stored object version. Immutable; replaced on every write.
#[derive(Debug)]
pub struct Stored {
    pub value: Value,
    /// `value` serialized; starts with `{"apiVersion":"<storage apiVersion>"`.
    pub json: Bytes,
    pub rv: u64,
}

pub type Obj = Arc<Stored>;

impl Stored {
    /// Stamps `rv` into `metadata.resourceVersion` and serializes.
    pub fn new(mut value: Value, rv: u64) -> Obj {
        meta::set(&mut value, "resourceVersion", Value::from(rv.to_string()));
        let json = serialize(&value);
        Arc::new(Self { value, json, rv })
    }

    pub fn name(&self) -> &str {
        meta::name(&self.value)
    }

    pub fn namespace(&self) -> &str {
        meta::namespace(&self.value)
    }

    pub fn uid(&self) -> &str {
        meta::uid(&self.value)
    }

    /// The serialized object as `api_version` (only the apiVersion differs between
    /// served versions of one resource).
    pub fn json_as(&self, api_version: &str) -> Bytes {
        let stored = self
            .value
            .get("apiVersion")
            .and_then(Value::as_str)
            .unwrap_or("");
        if stored == api_version {
            return self.json.clone();
        }
        let prefix = format!("{{\"apiVersion\":{}", Value::from(stored));
        if self.json.starts_with(prefix.as_bytes()) {
            let mut out = Vec::with_capacity(self.json.len() + api_version.len());
            out.extend_from_slice(b"{\"apiVersion\":");
            out.extend_from_slice(Value::from(api_version).to_string().as_bytes());
            out.extend_from_slice(&self.json[prefix.len()..]);
            return Bytes::from(out);
        }
        let mut v = self.value.clone();
        if let Some(map) = v.as_object_mut() {
            map.insert("apiVersion".into(), Value::from(api_version));
        }
        serialize(&v)
    }

    /// The object as `api_version`, as a value.
    pub fn value_as(&self, api_version: &str) -> Value {
        let mut v = self.value.clone();
        if let Some(map) = v.as_object_mut() {
            map.insert("apiVersion".into(), Value::from(api_version));
        }
        v
    }
}

pub fn serialize(v: &Value) -> Bytes {
    // Serializing a `Value` to memory cannot fail (its keys are strings).
    Bytes::from(serde_json::to_vec(v).unwrap_or_default())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    Added,
    Modified,
    Deleted,
}

impl EventType {
    pub fn as_str(self) -> &'static str {
        match self {
            EventType::Added => "ADDED",
            EventType::Modified => "MODIFIED",
            EventType::Deleted => "DELETED",
        }
    }
}

/// One committed change.
#[derive(Debug)]
pub struct Event {
    pub res: ResKey,
    pub rv: u64,
    pub ty: EventType,
    /// The object after the change (for deletions: the last state, stamped with the deletion's RV).
    pub obj: Obj,
    /// The object before the change.
    pub prev: Option<Obj>,
}

/// Identifies one object.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjRef {
    pub res: ResKey,
    pub ns: String,
    pub name: String,
}

/// All objects of one resource plus its watch history and live feed.
pub struct Collection {
    pub def: Arc<ResourceDef>,
    /// Keyed by (namespace, name); namespace is empty for cluster-scoped resources.
    pub objects: BTreeMap<(String, String), Obj>,
    history: VecDeque<Arc<Event>>,
    /// Events with an RV above this are all in `history`.
    oldest_rv: u64,
    tx: broadcast::Sender<Arc<Event>>,
}

impl Collection {
    fn new(def: Arc<ResourceDef>, start_rv: u64) -> Self {
        let (tx, _) = broadcast::channel(4096);
        Self {
            def,
            objects: BTreeMap::new(),
            history: VecDeque::new(),
            oldest_rv: start_rv,
            tx,
        }
    }

    /// Objects in `ns` (all when `None`), in key order.
    pub fn iter_ns<'a>(
        &'a self,
        ns: Option<&'a str>,
    ) -> Box<dyn Iterator<Item = (&'a (String, String), &'a Obj)> + 'a> {
        match ns {
            Some(ns) => Box::new(
                self.objects
                    .range((ns.to_string(), String::new())..)
                    .take_while(move |((n, _), _)| n == ns),
            ),
            None => Box::new(self.objects.iter()),
        }
    }
}

/// Whether a change can matter to the control loops (garbage collector, namespace
/// and CRD lifecycle); plain writes of unowned objects do not wake them.
fn concerns_controllers(ev: &Event) -> bool {
    let owned = |o: &Obj| !meta::owner_refs(&o.value).is_empty();
    ev.ty == EventType::Deleted
        || &*ev.res == "namespaces"
        || &*ev.res == "customresourcedefinitions.apiextensions.k8s.io"
        || meta::is_deleting(&ev.obj.value)
        || owned(&ev.obj)
        || ev.prev.as_ref().is_some_and(owned)
}

/// Where a watch starts.
pub enum WatchStart {
    /// Synthetic ADDED events for these objects, then live events.
    Snapshot(Vec<Obj>),
    /// Replay these history events, then live events.
    Replay(Vec<Arc<Event>>),
}

pub struct Store {
    /// The last committed resourceVersion, cluster-wide.
    pub rv: u64,
    pub registry: Registry,
    collections: HashMap<ResKey, Collection>,
    uids: HashMap<String, ObjRef>,
    dependents: HashMap<String, BTreeSet<ObjRef>>,
    history_cap: usize,
    changes: mpsc::UnboundedSender<Arc<Event>>,
    pub continues: continues::Cache,
}

impl Store {
    /// An empty store serving the built-in resources; every commit is also sent to `changes`.
    pub fn new(history_cap: usize, changes: mpsc::UnboundedSender<Arc<Event>>) -> Self {
        let registry = Registry::with_builtins();
        let collections = registry
            .all()
            .iter()
            .filter(|d| d.view == crate::resources::View::Native)
            .map(|d| (d.key(), Collection::new(d.clone(), 0)))
            .collect();
        Self {
            rv: 0,
            registry,
            collections,
            uids: HashMap::new(),
            dependents: HashMap::new(),
            history_cap: history_cap.max(1),
            changes,
            continues: continues::Cache::default(),
        }
    }

    pub fn collection(&self, key: &str) -> Option<&Collection> {
        self.collections.get(key)
    }

    /// Makes sure a collection exists for `def` (and uses this definition for it).
    pub fn ensure_collection(&mut self, def: Arc<ResourceDef>) {
        let key = def.key();
        let rv = self.rv;
        self.collections
            .entry(key)
            .and_modify(|c| c.def = def.clone())
            .or_insert_with(|| Collection::new(def, rv));
    }

    /// Drops a collection and its objects without events (a CRD went away); its
    /// watchers see their stream end.
    pub fn drop_collection(&mut self, key: &str) {
        if let Some(c) = self.collections.remove(key) {
            for obj in c.objects.values() {
                self.unindex(&c.def.key(), obj);
            }
        }
    }

    pub fn get(&self, key: &str, ns: &str, name: &str) -> Option<Obj> {
        self.collections
            .get(key)?
            .objects
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    pub fn get_ref(&self, r: &ObjRef) -> Option<Obj> {
        self.get(&r.res, &r.ns, &r.name)
    }

    pub fn by_uid(&self, uid: &str) -> Option<ObjRef> {
        self.uids.get(uid).cloned()
    }

    pub fn dependents_of(&self, uid: &str) -> Vec<ObjRef> {
        self.dependents
            .get(uid)
            .map(|s| s.iter().cloned().collect())
            .unwrap_or_default()
    }

    /// Whether the namespace exists, and whether it is being deleted.
    pub fn namespace(&self, name: &str) -> Option<Obj> {
        self.get("namespaces", "", name)
    }

    /// Number of objects left in a namespace, across all namespaced resources.
    pub fn count_in_namespace(&self, ns: &str) -> usize {
        self.collections
            .values()
            .filter(|c| c.def.namespaced)
            .map(|c| c.iter_ns(Some(ns)).count())
            .sum()
    }

    /// References to every object in a namespace.
    pub fn refs_in_namespace(&self, ns: &str) -> Vec<ObjRef> {
        let mut out = Vec::new();
        for (key, c) in &self.collections {
            if !c.def.namespaced {
                continue;
            }
            for ((n, name), _) in c.iter_ns(Some(ns)) {
                out.push(ObjRef {
                    res: key.clone(),
                    ns: n.clone(),
                    name: name.clone(),
                });
            }
        }
        out
    }

    pub fn refs_in_collection(&self, key: &str) -> Vec<ObjRef> {
        match self.collections.get_key_value(key) {
            Some((k, c)) => c
                .objects
                .keys()
                .map(|(ns, name)| ObjRef {
                    res: k.clone(),
                    ns: ns.clone(),
                    name: name.clone(),
                })
                .collect(),
            None => Vec::new(),
        }
    }

    /// Commits `value` as the new state of its object (ADDED or MODIFIED) at the next
    /// resourceVersion and returns what was stored.
    pub fn put(&mut self, key: &ResKey, value: Value) -> Option<Obj> {
        let rv = self.rv + 1;
        let obj = Stored::new(value, rv);
        let k = (obj.namespace().to_string(), obj.name().to_string());
        let coll = self.collections.get_mut(key)?;
        self.rv = rv;
        let prev = coll.objects.insert(k, obj.clone());
        if let Some(p) = &prev {
            self.unindex(key, p);
        }
        self.index(key, &obj);
        let ty = if prev.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.record(key, ty, obj.clone(), prev);
        Some(obj)
    }

    /// Removes an object for good (DELETED) and returns its last state (`last`, or the
    /// stored one), stamped with the deletion's resourceVersion.
    pub fn remove(
        &mut self,
        key: &ResKey,
        ns: &str,
        name: &str,
        last: Option<Value>,
    ) -> Option<Obj> {
        let coll = self.collections.get_mut(key)?;
        let prev = coll.objects.remove(&(ns.to_string(), name.to_string()))?;
        self.rv += 1;
        let obj = Stored::new(last.unwrap_or_else(|| prev.value.clone()), self.rv);
        self.unindex(key, &prev);
        self.record(key, EventType::Deleted, obj.clone(), Some(prev));
        Some(obj)
    }

    fn index(&mut self, key: &ResKey, obj: &Obj) {
        let r = ObjRef {
            res: key.clone(),
            ns: obj.namespace().to_string(),
            name: obj.name().to_string(),
        };
        if !obj.uid().is_empty() {
            self.uids.insert(obj.uid().to_string(), r.clone());
        }
        for owner in meta::owner_uids(&obj.value) {
            self.dependents.entry(owner).or_default().insert(r.clone());
        }
    }

    fn unindex(&mut self, key: &ResKey, obj: &Obj) {
        let r = ObjRef {
            res: key.clone(),
            ns: obj.namespace().to_string(),
            name: obj.name().to_string(),
        };
        if self.uids.get(obj.uid()) == Some(&r) {
            self.uids.remove(obj.uid());
        }
        for owner in meta::owner_uids(&obj.value) {
            if let Some(set) = self.dependents.get_mut(&owner) {
                set.remove(&r);
                if set.is_empty() {
                    self.dependents.remove(&owner);
                }
            }
        }
    }

    fn record(&mut self, key: &ResKey, ty: EventType, obj: Obj, prev: Option<Obj>) {
        let event = Arc::new(Event {
            res: key.clone(),
            rv: obj.rv,
            ty,
            obj,
            prev,
        });
        if let Some(coll) = self.collections.get_mut(key) {
            coll.history.push_back(event.clone());
            while coll.history.len() > self.history_cap {
                if let Some(old) = coll.history.pop_front() {
                    coll.oldest_rv = old.rv;
                }
            }
            // No receivers is fine.
            let _ = coll.tx.send(event.clone());
        }
        if concerns_controllers(&event) {
            let _ = self.changes.send(event);
        }
    }

    /// Where a watch of `key` from `from_rv` starts (`None`: current state), plus its
    /// live feed, taken atomically so nothing is missed or repeated. `Err(oldest)` when
    /// the history no longer reaches back to `from_rv`.
    #[allow(clippy::type_complexity)]
    pub fn watch(
        &self,
        key: &str,
        ns: Option<&str>,
        from_rv: Option<u64>,
    ) -> Option<Result<(WatchStart, broadcast::Receiver<Arc<Event>>), u64>> {
        let coll = self.collections.get(key)?;
        let rx = coll.tx.subscribe();
        Some(match from_rv {
            None => Ok((
                WatchStart::Snapshot(coll.iter_ns(ns).map(|(_, o)| o.clone()).collect()),
                rx,
            )),
            Some(rv) if rv < coll.oldest_rv => Err(coll.oldest_rv + 1),
            Some(rv) => Ok((
                WatchStart::Replay(coll.history.iter().filter(|e| e.rv > rv).cloned().collect()),
                rx,
            )),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn store(cap: usize) -> (Store, mpsc::UnboundedReceiver<Arc<Event>>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (Store::new(cap, tx), rx)
    }

    fn cm(name: &str) -> Value {
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name, "namespace": "default", "uid": format!("uid-{name}")}})
    }

    #[test]
    fn writes_bump_one_global_resource_version() {
        let (mut s, mut changes) = store(10);
        let key: ResKey = Arc::from("configmaps");
        let a = s.put(&key, cm("a")).expect("stored");
        let b = s.put(&key, cm("b")).expect("stored");
        assert_eq!((a.rv, b.rv), (1, 2));
        assert_eq!(meta::resource_version(&b.value), "2");
        let gone = s.remove(&key, "default", "a", None).expect("removed");
        assert_eq!(gone.rv, 3);
        assert!(s.get("configmaps", "default", "a").is_none());
        assert_eq!(s.by_uid("uid-b").map(|r| r.name), Some("b".to_string()));
        // Plain creates of unowned objects do not concern the controllers; deletions do.
        let types: Vec<_> = std::iter::from_fn(|| changes.try_recv().ok())
            .map(|e| e.ty)
            .collect();
        assert_eq!(types, [EventType::Deleted]);
    }

    #[test]
    fn watch_history_expires() {
        let (mut s, _changes) = store(2);
        let key: ResKey = Arc::from("configmaps");
        for n in ["a", "b", "c", "d"] {
            s.put(&key, cm(n));
        }
        assert!(matches!(s.watch("configmaps", None, Some(1)), Some(Err(3))));
        match s.watch("configmaps", None, Some(2)) {
            Some(Ok((WatchStart::Replay(events), _))) => {
                assert_eq!(events.iter().map(|e| e.rv).collect::<Vec<_>>(), [3, 4])
            }
            _ => panic!("expected a replay"),
        }
    }

    #[test]
    fn json_as_rewrites_only_api_version() {
        let obj = Stored::new(
            meta::with_type(
                json!({"metadata": {"name": "w"}}),
                "example.com/v1",
                "Widget",
            ),
            7,
        );
        let other = obj.json_as("example.com/v2");
        let v: Value = serde_json::from_slice(&other).expect("json");
        assert_eq!(v["apiVersion"], "example.com/v2");
        assert_eq!(v["metadata"]["resourceVersion"], "7");
    }
}
