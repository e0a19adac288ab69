//! The REST verbs over the store: create, update, patch (merge, JSON, strategic, apply),
//! delete with finalizers and propagation, list with selectors and consistent pages.
//! Every function runs under the one store lock, so a write is all-or-nothing: the
//! object is prepared and validated first and committed by a single `Store::put` or
//! `Store::remove`. Kind-specific side effects (Service IP allocation, CRD serving)
//! happen here too, in the same critical section.

pub mod delete;
pub mod list;
pub mod prepare;
pub mod subresources;

use std::sync::Arc;

use rand::Rng;
use serde_json::{Value, json};

use crate::error::{ApiError, ApiResult, Cause};
use crate::machinery::{apply, defaults, patch, validation};
use crate::meta;
use crate::resources::{ResourceDef, View, crd, events};
use crate::store::{Obj, Store, Stored};
pub use prepare::Sub;

/// Everything behind the store lock.
pub struct State {
    pub store: Store,
    pub allocator: defaults::ServiceAllocator,
}

/// What a request addresses.
#[derive(Clone, Debug)]
pub struct Target {
    pub def: Arc<ResourceDef>,
    /// The requested version (objects are answered in it).
    pub version: String,
    pub ns: Option<String>,
    pub name: Option<String>,
    pub sub: Sub,
    /// How objects look to this client (the def is always the storage one).
    pub view: View,
}

impl Target {
    /// The apiVersion objects are answered in.
    pub fn api_version(&self) -> String {
        match self.view {
            View::EventsV1 => "events.k8s.io/v1".to_string(),
            View::Native => self.def.api_version(&self.version),
        }
    }

    /// An object as this client sees it.
    pub fn external(&self, obj: &Obj) -> Value {
        match self.view {
            View::EventsV1 => events::to_events_v1(&obj.value),
            View::Native => obj.value_as(&self.api_version()),
        }
    }

    /// A client's object as stored.
    pub fn internal(&self, v: Value) -> Value {
        match self.view {
            View::EventsV1 => events::from_events_v1(&v),
            View::Native => v,
        }
    }

    /// The serialized object as this client sees it.
    pub fn render(&self, obj: &Obj) -> bytes::Bytes {
        match self.view {
            View::EventsV1 => crate::store::serialize(&events::to_events_v1(&obj.value)),
            View::Native => obj.json_as(&self.api_version()),
        }
    }

    fn ns_key(&self) -> &str {
        if self.def.namespaced {
            self.ns.as_deref().unwrap_or("")
        } else {
            ""
        }
    }
}

/// Options shared by writes.
#[derive(Clone, Debug, Default)]
pub struct WriteOpts {
    pub dry_run: bool,
    pub manager: String,
    pub force: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Json,
    Strategic,
    Apply,
}

/// Characters kube-apiserver uses for generated name suffixes.
const NAME_CHARS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

fn rand5() -> String {
    let mut rng = rand::rng();
    (0..5)
        .map(|_| NAME_CHARS[rng.random_range(0..NAME_CHARS.len())] as char)
        .collect()
}

fn field_errors(errors: Vec<validation::FieldError>) -> Vec<Cause> {
    errors
        .into_iter()
        .map(|e| Cause {
            reason: e.reason().to_string(),
            message: e.body(),
            field: e.field.clone(),
        })
        .collect()
}

/// Checks the namespace a namespaced create goes into.
fn check_target_namespace(st: &State, t: &Target, name: &str) -> ApiResult<()> {
    if !t.def.namespaced {
        return Ok(());
    }
    let ns = t.ns.as_deref().unwrap_or("");
    if ns.is_empty() {
        return Err(ApiError::bad_request(
            "the server could not find the requested resource: a namespace is required",
        ));
    }
    match st.store.namespace(ns) {
        None => Err(ApiError::namespace_not_found(ns)),
        Some(n) if meta::is_deleting(&n.value) => Err(ApiError::namespace_terminating(
            &t.def.group,
            &t.def.plural,
            name,
            ns,
        )),
        Some(_) => Ok(()),
    }
}

/// Refuses new custom objects while their CRD is being deleted.
fn check_crd_alive(st: &State, def: &ResourceDef) -> ApiResult<()> {
    if !def.custom {
        return Ok(());
    }
    let crd_name = format!("{}.{}", def.plural, def.group);
    match st.store.get(
        "customresourcedefinitions.apiextensions.k8s.io",
        "",
        &crd_name,
    ) {
        Some(c) if meta::is_deleting(&c.value) => Err(ApiError::method_not_allowed(
            "create not allowed while custom resource definition is terminating",
        )),
        _ => Ok(()),
    }
}

/// Kind-specific validation beyond metadata.
fn validate_kind(def: &ResourceDef, obj: &Value) -> Vec<Cause> {
    if def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions" {
        return crd::validate(obj);
    }
    Vec::new()
}

/// Kind-specific creation defaults kube-apiserver applies in its strategies.
fn strategy_defaults(def: &ResourceDef, obj: &mut Value) {
    if def.group.is_empty()
        && def.plural == "namespaces"
        && let Some(map) = obj.as_object_mut()
    {
        let spec = map.entry("spec").or_insert_with(|| json!({}));
        if let Some(spec) = spec.as_object_mut()
            && !spec.contains_key("finalizers")
        {
            spec.insert("finalizers".into(), json!(["kubernetes"]));
        }
        let name = meta::name(obj).to_string();
        let m = meta::meta_mut(obj);
        let labels = m.entry("labels").or_insert_with(|| json!({}));
        if let Some(labels) = labels.as_object_mut() {
            labels.insert("kubernetes.io/metadata.name".into(), json!(name));
        }
    }
}

fn is_service(def: &ResourceDef) -> bool {
    def.group.is_empty() && def.plural == "services"
}

fn is_crd(def: &ResourceDef) -> bool {
    def.group == "apiextensions.k8s.io" && def.plural == "customresourcedefinitions"
}

fn allocation_error(def: &ResourceDef, name: &str, e: defaults::AllocError) -> ApiError {
    match e.status_code() {
        422 => ApiError::invalid(def, name, field_errors(e.field_errors())),
        _ => ApiError::internal(e.to_string()),
    }
}

/// Records `manager`'s managed fields for a write through `sub` and stamps new entries.
fn record(old: Option<&Value>, new: &mut Value, manager: &str, sub: Sub) {
    let sub = match sub {
        Sub::Main => "",
        Sub::Status => "status",
        Sub::Scale => "scale",
    };
    apply::record_update_subresource(old, new, manager, sub);
    apply::stamp_managed_fields_time(new, &meta::now());
}

/// Creates the object in `body` (name from the body, the URL for apply, or generateName).
pub fn create(st: &mut State, t: &Target, body: Value, o: &WriteOpts) -> ApiResult<Obj> {
    let def = t.def.clone();
    prepare::check_type(&def, &t.version, &body)?;
    prepare::check_namespace(&def, t.ns.as_deref(), &body)?;
    if !meta::resource_version(&body).is_empty() {
        return Err(ApiError::internal(
            "resourceVersion should not be set on objects to be created",
        ));
    }
    let given = meta::name(&body).to_string();
    let given = if given.is_empty() {
        t.name.clone().unwrap_or_default()
    } else {
        given
    };
    let generate = meta::get_str(&body, "generateName")
        .unwrap_or("")
        .to_string();
    check_target_namespace(st, t, &given)?;
    check_crd_alive(st, &def)?;
    let key = def.key();
    let ns = t.ns_key().to_string();
    let name = if !given.is_empty() {
        given
    } else if !generate.is_empty() {
        let mut name = validation::generate_name(&generate, &rand5());
        for _ in 0..8 {
            if st.store.get(&key, &ns, &name).is_none() {
                break;
            }
            name = validation::generate_name(&generate, &rand5());
        }
        name
    } else {
        return Err(ApiError::invalid(
            &def,
            "",
            vec![Cause {
                reason: "FieldValueRequired".into(),
                message: "Required value: name or generateName is required".into(),
                field: "metadata.name".into(),
            }],
        ));
    };
    let name_errors = validation::name_field_errors(&def.plural, &name);
    if !name_errors.is_empty() {
        return Err(ApiError::invalid(&def, &name, field_errors(name_errors)));
    }
    let uid = uuid::Uuid::new_v4().to_string();
    let mut obj = prepare::new_object(&def, t.ns.as_deref(), body, &name, &uid, &meta::now());
    strategy_defaults(&def, &mut obj);
    defaults::apply_defaults(&def.group, &def.kind, &mut obj);
    let mut causes = field_errors(validation::validate_metadata(&obj));
    causes.extend(validate_kind(&def, &obj));
    if !causes.is_empty() {
        return Err(ApiError::invalid(&def, &name, causes));
    }
    if st.store.get(&key, &ns, &name).is_some() {
        return Err(ApiError::already_exists(&def.group, &def.plural, &name));
    }
    if is_service(&def) {
        st.allocator
            .allocate(&mut obj, None)
            .map_err(|e| allocation_error(&def, &name, e))?;
        if o.dry_run {
            st.allocator.revert(&obj, None);
        }
    }
    record(None, &mut obj, &o.manager, Sub::Main);
    if o.dry_run {
        return Ok(Stored::new(obj, st.store.rv));
    }
    commit(st, &def, obj)
}

/// Stores a prepared object and runs the kind's side effects.
pub fn commit(st: &mut State, def: &ResourceDef, obj: Value) -> ApiResult<Obj> {
    let stored = st
        .store
        .put(&def.key(), obj)
        .ok_or_else(ApiError::resource_not_found)?;
    if is_crd(def) && !meta::is_deleting(&stored.value) {
        serve_crd(st, &stored.value);
    }
    Ok(stored)
}

/// Starts (or updates) serving the resource of a CRD.
pub fn serve_crd(st: &mut State, crd_obj: &Value) {
    if let Some(def) = crd::def_from_crd(crd_obj) {
        let def = st.store.registry.upsert(def);
        st.store.ensure_collection(def);
    }
}

/// Runs the side effects of an object leaving the store.
pub fn after_remove(st: &mut State, def: &ResourceDef, obj: &Obj) {
    if is_service(def) {
        st.allocator.release(&obj.value);
    }
    if is_crd(def)
        && let Some(served) = crd::def_from_crd(&obj.value)
    {
        st.store.registry.remove(&served.group, &served.plural);
        st.store.drop_collection(&served.key());
    }
}

/// PUT: replaces the object (or its status), or creates it where the kind allows.
/// Returns the stored object and whether it was created.
pub fn update(st: &mut State, t: &Target, body: Value, o: &WriteOpts) -> ApiResult<(Obj, bool)> {
    let def = t.def.clone();
    prepare::check_type(&def, &t.version, &body)?;
    prepare::check_namespace(&def, t.ns.as_deref(), &body)?;
    let name = t.name.clone().unwrap_or_default();
    let body_name = meta::name(&body);
    if !body_name.is_empty() && body_name != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({body_name}) does not match the name on the URL ({name})"
        )));
    }
    let Some(old) = st.store.get(&def.key(), t.ns_key(), &name) else {
        if def.create_on_update && t.sub == Sub::Main {
            let mut body = body;
            meta::remove(&mut body, "resourceVersion");
            return create(st, t, body, o).map(|obj| (obj, true));
        }
        return Err(ApiError::not_found(&def.group, &def.plural, &name));
    };
    let rv = meta::resource_version(&body);
    if !rv.is_empty() && rv != meta::resource_version(&old.value) {
        if rv.parse::<u64>().is_err() {
            return Err(ApiError::bad_request(format!(
                "invalid resourceVersion \"{rv}\" in the object"
            )));
        }
        return Err(ApiError::conflict(&def.group, &def.plural, &name));
    }
    update_from(st, t, &old, body, o).map(|obj| (obj, false))
}

/// Applies an update of `old` (already checked for preconditions) and commits it.
fn update_from(
    st: &mut State,
    t: &Target,
    old: &Obj,
    body: Value,
    o: &WriteOpts,
) -> ApiResult<Obj> {
    let def = t.def.clone();
    let name = old.name().to_string();
    let mut new = prepare::updated_object(&def, t.sub, &old.value, body)?;
    if t.sub == Sub::Main {
        defaults::apply_defaults(&def.group, &def.kind, &mut new);
        let mut causes = field_errors(validation::validate_metadata(&new));
        causes.extend(validate_kind(&def, &new));
        causes.extend(subresources::validate_update(&def, &old.value, &new));
        if !causes.is_empty() {
            return Err(ApiError::invalid(&def, &name, causes));
        }
        if is_service(&def) {
            st.allocator
                .allocate(&mut new, Some(&old.value))
                .map_err(|e| allocation_error(&def, &name, e))?;
        }
    }
    if prepare::same_object(&old.value, &new) {
        return Ok(old.clone());
    }
    record(Some(&old.value), &mut new, &o.manager, t.sub);
    if o.dry_run {
        if is_service(&def) && t.sub == Sub::Main {
            st.allocator.revert(&new, Some(&old.value));
        }
        return Ok(Stored::new(new, old.rv));
    }
    let spec_fins_done = !(def.group.is_empty() && def.plural == "namespaces")
        || meta::strings(new.pointer("/spec/finalizers")).is_empty();
    if meta::is_deleting(&new) && meta::finalizers(&new).is_empty() && spec_fins_done {
        let key = def.key();
        let removed = st
            .store
            .remove(&key, old.namespace(), &name, Some(new))
            .ok_or_else(|| ApiError::not_found(&def.group, &def.plural, &name))?;
        after_remove(st, &def, &removed);
        return Ok(removed);
    }
    commit(st, &def, new)
}

/// PATCH of every kind; apply creates a missing object. Returns the stored object and
/// whether it was created.
pub fn patch(
    st: &mut State,
    t: &Target,
    kind: PatchKind,
    body: &[u8],
    o: &WriteOpts,
) -> ApiResult<(Obj, bool)> {
    let def = t.def.clone();
    let name = t.name.clone().unwrap_or_default();
    let old = st.store.get(&def.key(), t.ns_key(), &name);
    let keys = patch::MergeKeys::for_kind(&t.api_version(), &def.kind);
    if kind == PatchKind::Apply {
        let applied: Value = serde_yaml::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("error decoding YAML: {e}")))?;
        prepare::check_type(&def, &t.version, &t.internal(applied.clone()))?;
        if applied.get("apiVersion").is_none() || applied.get("kind").is_none() {
            return Err(ApiError::bad_request(
                "apiVersion and kind must be set in an apply patch",
            ));
        }
        let body_name = meta::name(&applied);
        if body_name != name {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({body_name}) does not match the name on the URL ({name})"
            )));
        }
        prepare::check_namespace(&def, t.ns.as_deref(), &applied)?;
        if o.manager.is_empty() {
            return Err(ApiError::bad_request(
                "PATCH, application/apply-patch+yaml requests require a non-empty fieldManager",
            ));
        }
        let live = old.as_ref().map(|o| t.external(o));
        let applied = applied_part(&def, t.sub, applied);
        let result = apply::server_side_apply(live.as_ref(), &applied, &o.manager, o.force, &keys)
            .map_err(|e| match &e {
                apply::ApplyError::Conflict { conflicts } => ApiError::apply_conflicts(
                    &def,
                    &name,
                    e.to_string(),
                    &conflicts
                        .iter()
                        .map(|c| (c.message.clone(), c.field.clone()))
                        .collect::<Vec<_>>(),
                ),
                apply::ApplyError::Invalid(m) => ApiError::new(422, "Invalid", m.clone()),
                apply::ApplyError::BadRequest(m) => ApiError::bad_request(m.clone()),
            })?;
        let result = t.internal(result);
        return match old {
            None if t.sub == Sub::Main => {
                let mut result = result;
                meta::remove(&mut result, "resourceVersion");
                create(st, t, result, o).map(|obj| (obj, true))
            }
            None => Err(ApiError::not_found(&def.group, &def.plural, &name)),
            Some(old) => update_from(st, t, &old, result, o).map(|obj| (obj, false)),
        };
    }
    let old = old.ok_or_else(|| ApiError::not_found(&def.group, &def.plural, &name))?;
    let p: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("error decoding patch: {e}")))?;
    let mut cur = t.external(&old);
    let rejected = |e: patch::PatchError| ApiError::new(e.status_code(), e.reason(), e.to_string());
    match kind {
        PatchKind::Merge => {
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a merge patch must be a JSON object",
                ));
            }
            patch::merge_patch(&mut cur, &p);
        }
        PatchKind::Json => patch::json_patch(&mut cur, &p).map_err(rejected)?,
        PatchKind::Strategic => {
            if def.custom || !patch::supports_strategic_merge(&def.group) {
                return Err(ApiError::unsupported_media_type(
                    "application/strategic-merge-patch+json",
                    &[
                        "application/json-patch+json",
                        "application/merge-patch+json",
                        "application/apply-patch+yaml",
                    ],
                ));
            }
            if !p.is_object() {
                return Err(ApiError::bad_request(
                    "error decoding patch: a strategic merge patch must be a JSON object",
                ));
            }
            patch::strategic_merge_patch(&mut cur, &p, &keys).map_err(rejected)?;
        }
        PatchKind::Apply => {}
    }
    let cur = t.internal(cur);
    prepare::check_type(&def, &t.version, &cur)?;
    let rv = meta::resource_version(&cur);
    if !rv.is_empty() && rv != meta::resource_version(&old.value) {
        return Err(ApiError::conflict(&def.group, &def.plural, &name));
    }
    if meta::name(&cur) != name {
        return Err(ApiError::bad_request(format!(
            "the name of the object ({}) does not match the name on the URL ({name})",
            meta::name(&cur)
        )));
    }
    update_from(st, t, &old, cur, o).map(|obj| (obj, false))
}

/// The part of an apply configuration an endpoint takes: the main resource of a kind
/// with a status subresource ignores `status`; `/status` takes only `status`.
fn applied_part(def: &ResourceDef, sub: Sub, mut applied: Value) -> Value {
    if let Some(map) = applied.as_object_mut() {
        match sub {
            Sub::Main if def.status => {
                map.remove("status");
            }
            Sub::Status => {
                map.retain(|k, _| {
                    matches!(k.as_str(), "apiVersion" | "kind" | "metadata" | "status")
                });
            }
            _ => {}
        }
    }
    applied
}

/// GET of one object.
pub fn get(st: &State, t: &Target) -> ApiResult<Obj> {
    let name = t.name.as_deref().unwrap_or("");
    st.store
        .get(&t.def.key(), t.ns_key(), name)
        .ok_or_else(|| ApiError::not_found(&t.def.group, &t.def.plural, name))
}
