//! Kubernetes API errors in words, for conditions, events and logs.

/// A Kubernetes error as a person reads it: the server's message and its
/// HTTP code, not a dump of the client's structures. A body that is not a
/// Status (a plain `404 page not found`: the server does not serve that
/// API at all) says so.
pub fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if s.reason == "Failed to parse error data" => {
            let text = s.message.trim();
            if s.code == 404 {
                format!("the API server does not serve this API ({text})")
            } else {
                format!("HTTP {}: {text}", s.code)
            }
        }
        kube::Error::Api(s) => {
            let message = s.message.trim();
            match (message.is_empty(), s.reason.is_empty()) {
                (false, _) => format!("{message} (HTTP {})", s.code),
                (true, false) => format!("{} (HTTP {})", s.reason, s.code),
                (true, true) => format!("HTTP {}", s.code),
            }
        }
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(message: &str, reason: &str, code: u16) -> kube::Error {
        kube::Error::Api(Box::new(
            kube::core::Status::failure(message, reason).with_code(code),
        ))
    }

    #[test]
    fn statuses_read_as_their_message_and_code() {
        assert_eq!(
            describe(&api(
                "404 page not found",
                "Failed to parse error data",
                404
            )),
            "the API server does not serve this API (404 page not found)"
        );
        assert_eq!(
            describe(&api("bad gateway", "Failed to parse error data", 502)),
            "HTTP 502: bad gateway"
        );
        assert_eq!(
            describe(&api(
                "services is forbidden: User \"x\" cannot list",
                "Forbidden",
                403
            )),
            "services is forbidden: User \"x\" cannot list (HTTP 403)"
        );
        assert_eq!(describe(&api("", "Conflict", 409)), "Conflict (HTTP 409)");
        assert_eq!(describe(&api("", "", 500)), "HTTP 500");
    }
}
