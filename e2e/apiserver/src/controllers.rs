//! The control loops a real control plane runs beside kube-apiserver, driven by every
//! committed change: the garbage collector (background, foreground and orphan
//! propagation through ownerReferences, dangling owners), the namespace lifecycle
//! (a Terminating namespace is emptied, then removed), and the CRD controllers
//! (NamesAccepted/Established status; instance cleanup before a CRD goes away).

use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::mpsc;

use crate::meta;
use crate::ops::delete::{self, CRD_CLEANUP, DeleteOpts, FOREGROUND, ORPHAN, Propagation};
use crate::ops::{self, State};
use crate::resources::crd;
use crate::server::Shared;
use crate::store::{Event, EventType, ObjRef};

const CRDS: &str = "customresourcedefinitions.apiextensions.k8s.io";
const NAMESPACES: &str = "namespaces";

/// Runs until shutdown, handling changes in batches under the store lock.
pub async fn run(shared: Arc<Shared>, mut changes: mpsc::UnboundedReceiver<Arc<Event>>) {
    loop {
        let first = tokio::select! {
            _ = shared.shutdown.cancelled() => return,
            ev = changes.recv() => match ev {
                Some(ev) => ev,
                None => return,
            },
        };
        let mut batch = vec![first];
        while batch.len() < 512
            && let Ok(ev) = changes.try_recv()
        {
            batch.push(ev);
        }
        let mut st = shared.lock();
        for ev in batch {
            on_change(&mut st, &ev);
        }
    }
}

fn obj_ref(ev: &Event) -> ObjRef {
    ObjRef {
        res: ev.res.clone(),
        ns: ev.obj.namespace().to_string(),
        name: ev.obj.name().to_string(),
    }
}

/// Reacts to one committed change.
pub fn on_change(st: &mut State, ev: &Event) {
    let obj = &ev.obj.value;
    let r = obj_ref(ev);
    let deleting = meta::is_deleting(obj);
    if &*ev.res == CRDS && ev.ty != EventType::Deleted {
        if deleting {
            crd_cleanup(st, &r);
        } else {
            crd_status(st, &r);
        }
    }
    if &*ev.res == NAMESPACES && ev.ty != EventType::Deleted && deleting {
        namespace_cleanup(st, ev.obj.name());
    }
    match ev.ty {
        EventType::Deleted => {
            for dep in st.store.dependents_of(ev.obj.uid()) {
                check_dependent(st, &dep);
            }
            for owner in meta::owner_uids(obj) {
                if let Some(o) = st.store.by_uid(&owner) {
                    process_owner(st, &o);
                }
            }
            if !r.ns.is_empty()
                && st
                    .store
                    .namespace(&r.ns)
                    .is_some_and(|n| meta::is_deleting(&n.value))
            {
                namespace_cleanup(st, &r.ns);
            }
            let custom = st.store.collection(&r.res).map(|c| c.def.clone());
            if let Some(def) = custom.filter(|d| d.custom) {
                let crd_ref = ObjRef {
                    res: CRDS.into(),
                    ns: String::new(),
                    name: format!("{}.{}", def.plural, def.group),
                };
                if st
                    .store
                    .get_ref(&crd_ref)
                    .is_some_and(|c| meta::is_deleting(&c.value))
                {
                    crd_cleanup(st, &crd_ref);
                }
            }
        }
        EventType::Added | EventType::Modified => {
            if deleting {
                let fins = meta::finalizers(obj);
                if fins.iter().any(|f| f == ORPHAN || f == FOREGROUND) {
                    process_owner(st, &r);
                }
            }
            let refs_changed = ev
                .prev
                .as_ref()
                .is_none_or(|p| meta::owner_refs(&p.value) != meta::owner_refs(obj));
            if refs_changed && !meta::owner_refs(obj).is_empty() {
                check_dependent(st, &r);
            }
        }
    }
}

/// Rewrites one object with `f`; removes it when that empties the finalizers of an
/// object being deleted.
fn rewrite(st: &mut State, r: &ObjRef, f: impl FnOnce(&mut Value)) {
    let Some(obj) = st.store.get_ref(r) else {
        return;
    };
    let Some(def) = st.store.collection(&r.res).map(|c| c.def.clone()) else {
        return;
    };
    let mut v = obj.value.clone();
    f(&mut v);
    if v == obj.value {
        return;
    }
    let spec_fins_empty =
        meta::strings(v.pointer("/spec/finalizers")).is_empty() || &*r.res != NAMESPACES;
    if meta::is_deleting(&v) && meta::finalizers(&v).is_empty() && spec_fins_empty {
        if let Some(removed) = st.store.remove(&r.res, &r.ns, &r.name, Some(v)) {
            ops::after_remove(st, &def, &removed);
        }
    } else {
        st.store.put(&r.res, v);
    }
}

fn delete_with(st: &mut State, r: &ObjRef, propagation: Propagation) {
    let Some(def) = st.store.collection(&r.res).map(|c| c.def.clone()) else {
        return;
    };
    let o = DeleteOpts {
        propagation: Some(propagation),
        ..DeleteOpts::default()
    };
    // A racing removal is fine: the object is gone either way.
    let _ = delete::delete(st, &def, &r.ns, &r.name, &o);
}

/// The garbage collector's verdict on one dependent.
fn check_dependent(st: &mut State, r: &ObjRef) {
    let Some(obj) = st.store.get_ref(r) else {
        return;
    };
    if meta::is_deleting(&obj.value) {
        return;
    }
    let mut solid = 0;
    let mut dangling: Vec<String> = Vec::new();
    let mut waiting: Vec<String> = Vec::new();
    for owner in meta::owner_refs(&obj.value) {
        let uid = owner.get("uid").and_then(Value::as_str).unwrap_or("");
        match st.store.by_uid(uid).and_then(|o| st.store.get_ref(&o)) {
            Some(o) => {
                let fins = meta::finalizers(&o.value);
                if meta::is_deleting(&o.value) && fins.iter().any(|f| f == FOREGROUND) {
                    waiting.push(uid.to_string());
                } else {
                    solid += 1;
                }
            }
            None => {
                let av = owner
                    .get("apiVersion")
                    .and_then(Value::as_str)
                    .unwrap_or("");
                let kind = owner.get("kind").and_then(Value::as_str).unwrap_or("");
                if st.store.registry.by_kind(av, kind).is_some() {
                    dangling.push(uid.to_string());
                } else {
                    solid += 1;
                }
            }
        }
    }
    if solid > 0 {
        if !dangling.is_empty() || !waiting.is_empty() {
            rewrite(st, r, |v| {
                remove_owner_refs(v, |uid| dangling.iter().chain(&waiting).any(|d| d == uid))
            });
        }
    } else if !waiting.is_empty() {
        let has_dependents = !st.store.dependents_of(obj.uid()).is_empty();
        delete_with(
            st,
            r,
            if has_dependents {
                Propagation::Foreground
            } else {
                Propagation::Background
            },
        );
    } else if !dangling.is_empty() {
        let fins = meta::finalizers(&obj.value);
        let policy = if fins.iter().any(|f| f == ORPHAN) {
            Propagation::Orphan
        } else if fins.iter().any(|f| f == FOREGROUND) {
            Propagation::Foreground
        } else {
            Propagation::Background
        };
        delete_with(st, r, policy);
    }
}

fn remove_owner_refs(v: &mut Value, drop: impl Fn(&str) -> bool) {
    let refs: Vec<Value> = meta::owner_refs(v)
        .iter()
        .filter(|o| !drop(o.get("uid").and_then(Value::as_str).unwrap_or("")))
        .cloned()
        .collect();
    if refs.is_empty() {
        meta::remove(v, "ownerReferences");
    } else {
        meta::set(v, "ownerReferences", Value::Array(refs));
    }
}

fn remove_finalizer(v: &mut Value, fin: &str) {
    let fins: Vec<String> = meta::finalizers(v)
        .into_iter()
        .filter(|f| f != fin)
        .collect();
    meta::set_finalizers(v, &fins);
}

/// An owner being deleted with the `orphan` or `foregroundDeletion` finalizer.
fn process_owner(st: &mut State, r: &ObjRef) {
    let Some(owner) = st.store.get_ref(r) else {
        return;
    };
    if !meta::is_deleting(&owner.value) {
        return;
    }
    let uid = owner.uid().to_string();
    let fins = meta::finalizers(&owner.value);
    if fins.iter().any(|f| f == ORPHAN) {
        for dep in st.store.dependents_of(&uid) {
            rewrite(st, &dep, |v| remove_owner_refs(v, |u| u == uid));
        }
        rewrite(st, r, |v| remove_finalizer(v, ORPHAN));
    } else if fins.iter().any(|f| f == FOREGROUND) {
        for dep in st.store.dependents_of(&uid) {
            check_dependent(st, &dep);
        }
        let blocking = st.store.dependents_of(&uid).iter().any(|dep| {
            st.store.get_ref(dep).is_some_and(|d| {
                meta::owner_refs(&d.value).iter().any(|o| {
                    o.get("uid").and_then(Value::as_str) == Some(uid.as_str())
                        && o.get("blockOwnerDeletion").and_then(Value::as_bool) == Some(true)
                })
            })
        });
        if !blocking {
            rewrite(st, r, |v| remove_finalizer(v, FOREGROUND));
        }
    }
}

/// Empties a Terminating namespace, then removes it.
fn namespace_cleanup(st: &mut State, ns: &str) {
    let Some(nsobj) = st.store.namespace(ns) else {
        return;
    };
    if !meta::is_deleting(&nsobj.value) {
        return;
    }
    for r in st.store.refs_in_namespace(ns) {
        if st
            .store
            .get_ref(&r)
            .is_some_and(|o| !meta::is_deleting(&o.value))
        {
            delete_with(st, &r, Propagation::Background);
        }
    }
    if st.store.count_in_namespace(ns) == 0 {
        let r = ObjRef {
            res: NAMESPACES.into(),
            ns: String::new(),
            name: ns.to_string(),
        };
        rewrite(st, &r, |v| {
            if let Some(spec) = v.get_mut("spec").and_then(Value::as_object_mut) {
                spec.insert("finalizers".into(), json!([]));
            }
        });
    }
}

/// Removes a deleted CRD's objects, then lets the CRD go.
fn crd_cleanup(st: &mut State, r: &ObjRef) {
    let Some(obj) = st.store.get_ref(r) else {
        return;
    };
    let Some(def) = crd::def_from_crd(&obj.value) else {
        rewrite(st, r, |v| remove_finalizer(v, CRD_CLEANUP));
        return;
    };
    let key = def.key();
    for cr in st.store.refs_in_collection(&key) {
        if st
            .store
            .get_ref(&cr)
            .is_some_and(|o| !meta::is_deleting(&o.value))
        {
            delete_with(st, &cr, Propagation::Background);
        }
    }
    if st.store.refs_in_collection(&key).is_empty() {
        rewrite(st, r, |v| remove_finalizer(v, CRD_CLEANUP));
    }
}

/// Accepts a CRD's names and marks it Established (it is already served).
fn crd_status(st: &mut State, r: &ObjRef) {
    let Some(obj) = st.store.get_ref(r) else {
        return;
    };
    ops::serve_crd(st, &obj.value);
    let status = crd::established_status(&obj.value, &meta::now());
    if obj.value.get("status") != Some(&status) {
        rewrite(st, r, |v| {
            if let Some(map) = v.as_object_mut() {
                map.insert("status".into(), status);
            }
        });
    }
}
