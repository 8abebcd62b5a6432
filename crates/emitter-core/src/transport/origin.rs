//! Which web pages may open a connection: the `Origin` policy a transport applies to a browser's upgrade request.
//!
//! A browser sends a page's cookies with every WebSocket upgrade, whichever site the page is on, and tells the server
//! which site that is in `Origin`. Without a check, any page on any site could open a connection in its visitor's name
//! (cross-site WebSocket hijacking). Clients that are not browsers send no `Origin`, and are not at risk.

use std::fmt;

/// Which origins may open a connection; see
/// [`ServerBuilder::allowed_origins`](crate::ServerBuilder::allowed_origins).
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Origins {
    /// The request's own host (`Origin` names the `Host` it was sent to), and these patterns.
    SameHostAnd(Vec<Pattern>),
    /// Any origin: no check.
    Any,
}

impl Default for Origins {
    fn default() -> Self {
        Origins::SameHostAnd(Vec::new())
    }
}

impl Origins {
    /// Whether an upgrade request whose `Origin` header is `origin` and whose `Host` header is `host` may open a
    /// connection: one without an `Origin` always may.
    pub(crate) fn allow(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let (Some(origin), Origins::SameHostAnd(list)) = (origin, self) else {
            return true;
        };
        let Some(parsed) = Origin::parse(origin) else {
            // `null` (a sandboxed page, a file) and anything malformed match only an exact `null` in the list.
            return origin == "null" && list.iter().any(Pattern::is_null);
        };
        host.is_some_and(|host| parsed.is_host(host)) || list.iter().any(|pattern| pattern.matches(&parsed))
    }
}

impl fmt::Debug for Origins {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origins::SameHostAnd(list) => f
                .debug_tuple("SameHostAnd")
                .field(&list.iter().map(|pattern| &pattern.text).collect::<Vec<_>>())
                .finish(),
            Origins::Any => f.write_str("Any"),
        }
    }
}

/// The port a scheme implies when none is written.
fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "http" | "ws" => Some(80),
        "https" | "wss" => Some(443),
        _ => None,
    }
}

/// Splits `host[:port]` (an IPv6 host in brackets); `None` when the port is not a number.
fn split_authority(authority: &str) -> Option<(String, Option<u16>)> {
    let (host, port) = if let Some(rest) = authority.strip_prefix('[') {
        let (inside, after) = rest.split_once(']')?;
        let port = match after {
            "" => None,
            _ => Some(after.strip_prefix(':')?),
        };
        (format!("[{inside}]"), port)
    } else {
        match authority.rsplit_once(':') {
            Some((host, port)) => (host.to_owned(), Some(port)),
            None => (authority.to_owned(), None),
        }
    };
    if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
        return None;
    }
    let port = match port {
        Some(port) => Some(port.parse().ok()?),
        None => None,
    };
    Some((host.to_ascii_lowercase(), port))
}

/// An `Origin` header's value: `scheme://host[:port]`.
struct Origin {
    scheme: String,
    host: String,
    /// The port written or, when none is, the scheme's.
    port: Option<u16>,
    /// Whether the port is the scheme's own (written or not).
    default_port: bool,
}

impl Origin {
    fn parse(text: &str) -> Option<Origin> {
        let (scheme, authority) = text.split_once("://")?;
        let scheme = scheme.to_ascii_lowercase();
        let (host, port) = split_authority(authority)?;
        let implied = default_port(&scheme);
        let port = port.or(implied);
        Some(Origin {
            default_port: port == implied,
            scheme,
            host,
            port,
        })
    }

    /// Whether this origin names the host and port of a `Host` header (which leaves out the port the page's scheme
    /// implies, as browsers send it).
    fn is_host(&self, host: &str) -> bool {
        split_authority(host)
            .is_some_and(|(name, port)| name == self.host && port.or(default_port(&self.scheme)) == self.port)
    }
}

/// One entry of `allowed_origins`: `https://app.example.com`, `https://*.example.com`, `*.example.com:8443`, `null`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct Pattern {
    /// As given, for `Debug` and the log.
    text: String,
    /// `None`: any scheme.
    scheme: Option<String>,
    /// `*.example.com` is kept as `.example.com`: any name that ends with it.
    host: String,
    /// `None`: the origin's scheme's own port.
    port: Option<u16>,
    /// Whether it could be read at all; one that could not matches nothing.
    valid: bool,
}

impl Pattern {
    pub(crate) fn parse(text: &str) -> Pattern {
        let trimmed = text.trim().trim_end_matches('/');
        let (scheme, authority) = match trimmed.split_once("://") {
            Some((scheme, authority)) => (Some(scheme.to_ascii_lowercase()), authority),
            None => (None, trimmed),
        };
        let (host, port) = split_authority(authority).unwrap_or_default();
        let host = match host.strip_prefix('*') {
            Some(suffix) if suffix.starts_with('.') => suffix.to_owned(),
            _ => host,
        };
        let valid = !host.is_empty() && !host.contains('*');
        if !valid && trimmed != "null" {
            tracing::warn!(
                pattern = text,
                "allowed_origins: not an origin (scheme://host[:port]); it matches nothing"
            );
        }
        Pattern {
            text: text.to_owned(),
            valid,
            scheme,
            host,
            port,
        }
    }

    fn is_null(&self) -> bool {
        self.text.trim() == "null"
    }

    fn matches(&self, origin: &Origin) -> bool {
        let host = match self.host.strip_prefix('.') {
            // A subdomain: at least one label before the suffix.
            Some(_) => origin.host.len() > self.host.len() && origin.host.ends_with(&self.host),
            None => origin.host == self.host,
        };
        let scheme = self.scheme.as_ref().is_none_or(|scheme| *scheme == origin.scheme);
        let port = match self.port {
            Some(port) => origin.port == Some(port),
            None => origin.default_port,
        };
        self.valid && host && scheme && port
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(patterns: &[&str]) -> Origins {
        Origins::SameHostAnd(patterns.iter().map(|text| Pattern::parse(text)).collect())
    }

    #[test]
    fn the_same_host_and_port_is_allowed_by_default() {
        let same = Origins::default();
        assert!(same.allow(None, Some("example.com")));
        assert!(same.allow(None, None));
        assert!(same.allow(Some("https://example.com"), Some("example.com")));
        assert!(same.allow(Some("https://Example.com"), Some("example.com:443")));
        assert!(same.allow(Some("http://127.0.0.1:8082"), Some("127.0.0.1:8082")));
        assert!(same.allow(Some("http://[::1]:8082"), Some("[::1]:8082")));
        assert!(!same.allow(Some("http://127.0.0.1:8083"), Some("127.0.0.1:8082")));
        assert!(!same.allow(Some("https://example.com"), Some("example.com:8443")));
        assert!(!same.allow(Some("https://evil.example"), Some("example.com")));
        assert!(!same.allow(Some("https://example.com.evil.example"), Some("example.com")));
        assert!(!same.allow(Some("https://example.com"), None));
        assert!(!same.allow(Some("null"), Some("example.com")));
        assert!(!same.allow(Some("garbage"), Some("example.com")));
    }

    #[test]
    fn the_list_adds_exact_origins_and_subdomains() {
        let origins = list(&[
            "https://app.example.com",
            "*.game.example",
            "http://localhost:3000/",
            "null",
        ]);
        let host = Some("api.example.com");
        assert!(origins.allow(Some("https://app.example.com"), host));
        assert!(origins.allow(Some("https://app.example.com:443"), host));
        assert!(!origins.allow(Some("http://app.example.com"), host));
        assert!(!origins.allow(Some("https://app.example.com:8443"), host));
        assert!(origins.allow(Some("https://eu.game.example"), host));
        assert!(origins.allow(Some("http://a.b.game.example"), host));
        assert!(!origins.allow(Some("https://game.example"), host));
        assert!(!origins.allow(Some("https://evilgame.example"), host));
        assert!(!origins.allow(Some("https://eu.game.example:8443"), host));
        assert!(origins.allow(Some("http://localhost:3000"), host));
        assert!(origins.allow(Some("null"), host));
        assert!(origins.allow(Some("https://api.example.com"), host));
        assert!(Origins::Any.allow(Some("https://evil.example"), host));
    }

    #[test]
    fn a_pattern_that_is_no_origin_matches_nothing() {
        let origins = list(&["https://", "*", "https://*evil.example"]);
        assert!(!origins.allow(Some("https://x.evil.example"), Some("example.com")));
        assert!(!origins.allow(Some("https://aevil.example"), Some("example.com")));
    }
}
