//! Bearer-token authentication and the authorization hook. Tokens map to a user and
//! groups; every known user may do everything for now ([`Authorizer::allows`] is the
//! seam for per-user rules).

use std::collections::HashMap;
use std::sync::RwLock;

/// Who made a request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }
}

/// Known tokens.
#[derive(Default)]
pub struct Authenticator {
    tokens: RwLock<HashMap<String, User>>,
}

impl Authenticator {
    pub fn add(&self, token: &str, user: &str, groups: &[&str]) {
        let user = User {
            name: user.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        };
        if let Ok(mut t) = self.tokens.write() {
            t.insert(token.to_string(), user);
        }
    }

    /// The user behind an `Authorization` header value, if any.
    pub fn authenticate(&self, authorization: Option<&str>) -> Option<User> {
        let token = authorization?.strip_prefix("Bearer ")?.trim();
        self.tokens.read().ok()?.get(token).cloned()
    }
}

/// Decides whether a user may perform a verb on a resource.
pub struct Authorizer;

impl Authorizer {
    /// Allow-all for authenticated users.
    pub fn allows(
        &self,
        _user: &User,
        _verb: &str,
        _resource: &str,
        _namespace: Option<&str>,
    ) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_bearer_tokens_authenticate() {
        let a = Authenticator::default();
        a.add("t1", "alice", &["system:masters"]);
        let u = a.authenticate(Some("Bearer t1")).expect("known");
        assert!(u.is_admin());
        assert!(a.authenticate(Some("Bearer t2")).is_none());
        assert!(a.authenticate(Some("Basic t1")).is_none());
        assert!(a.authenticate(None).is_none());
    }
}
