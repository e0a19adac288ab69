//! LIST: selector filtering over one collection and pagination whose pages all come
//! from the same snapshot (the `continue` token names it), so a paginated list is as
//! consistent as kube-apiserver's etcd-backed one.

use crate::error::{ApiError, ApiResult};
use crate::machinery::selector::{FieldSelector, LabelSelector};
use crate::store::continues::{self, Snapshot};
use crate::store::{Obj, Store};

#[derive(Clone, Debug, Default)]
pub struct ListOpts {
    pub labels: Option<LabelSelector>,
    pub fields: Option<FieldSelector>,
    pub limit: Option<usize>,
    pub continue_token: Option<String>,
    pub resource_version: Option<String>,
    pub resource_version_match: Option<String>,
}

/// One page.
pub struct Page {
    pub items: Vec<Obj>,
    pub rv: u64,
    pub continue_token: Option<String>,
    pub remaining: Option<usize>,
}

pub fn list(store: &mut Store, key: &str, ns: Option<&str>, o: &ListOpts) -> ApiResult<Page> {
    let limit = o.limit.filter(|l| *l > 0);
    if let Some(token) = o.continue_token.as_deref().filter(|t| !t.is_empty()) {
        let (id, rv, start) = continues::decode(token)
            .ok_or_else(|| ApiError::bad_request("continue key is not valid: invalid token"))?;
        let snap = store
            .continues
            .get(id)
            .ok_or_else(ApiError::expired_continue)?;
        let rest = snap.items.get(start..).unwrap_or(&[]);
        let n = limit.unwrap_or(rest.len()).min(rest.len());
        let more = rest.len() > n;
        return Ok(Page {
            items: rest[..n].to_vec(),
            rv,
            continue_token: more.then(|| continues::encode(id, rv, start + n)),
            remaining: (more && o.labels.is_none() && o.fields.is_none()).then(|| rest.len() - n),
        });
    }
    if o.resource_version_match.as_deref() == Some("Exact")
        && let Some(rv) = o.resource_version.as_deref()
    {
        let want: u64 = rv
            .parse()
            .map_err(|_| ApiError::bad_request(format!("invalid resource version: {rv}")))?;
        if want != store.rv {
            return Err(ApiError::gone(want, store.rv));
        }
    }
    let coll = store
        .collection(key)
        .ok_or_else(ApiError::resource_not_found)?;
    let labels = o.labels.as_ref().filter(|l| !l.is_everything());
    let fields = o.fields.as_ref();
    let mut items: Vec<Obj> = coll
        .iter_ns(ns)
        .filter(|(_, obj)| {
            labels.is_none_or(|l| l.matches_value(&obj.value))
                && fields.is_none_or(|f| f.matches(&obj.value))
        })
        .map(|(_, obj)| obj.clone())
        .collect();
    let rv = store.rv;
    match limit {
        Some(limit) if items.len() > limit => {
            let rest = items.split_off(limit);
            let remaining = rest.len();
            let id = store.continues.insert(Snapshot { items: rest });
            Ok(Page {
                items,
                rv,
                continue_token: Some(continues::encode(id, rv, 0)),
                remaining: (labels.is_none() && fields.is_none()).then_some(remaining),
            })
        }
        _ => Ok(Page {
            items,
            rv,
            continue_token: None,
            remaining: None,
        }),
    }
}
