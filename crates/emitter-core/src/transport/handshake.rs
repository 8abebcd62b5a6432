//! What the request that opened a connection said: its headers, its peer's address, its path and query. The transport
//! fills it in when it opens the connection; `authenticate` listeners read it through
//! [`AuthInfo::handshake`](crate::AuthInfo::handshake), to authenticate by a cookie session or decide by address.

use std::fmt;
use std::net::SocketAddr;

/// The most header bytes (names and values) a [`Handshake`] keeps: 16 KiB, enough for a browser's cookies. A
/// transport refuses a request with more (HTTP 431) rather than keep it: a connection keeps its handshake for as long
/// as it is open, so this bounds what every open connection costs.
pub const MAX_HANDSHAKE_HEADER_BYTES: usize = 16 * 1024;

/// Headers whose values are credentials: [`Handshake`]'s `Debug` prints `<redacted>` for them. Browsers cannot set
/// headers on a WebSocket, so apps pass tokens as a subprotocol too.
const SECRET_HEADERS: [&str; 4] = [
    "authorization",
    "cookie",
    "proxy-authorization",
    "sec-websocket-protocol",
];

/// The request that opened a connection, as its transport saw it: read-only. Its `Debug` prints `<redacted>` for the
/// query and for the values of `Cookie`, `Authorization`, `Proxy-Authorization` and `Sec-WebSocket-Protocol`.
///
/// The peer address is the TCP peer's. Behind a reverse proxy that is the proxy's address: the client's own address is
/// in a header the proxy sets (`X-Forwarded-For`, `Forwarded`), which this server does not trust by default, since any
/// client can send one. An app behind a proxy it trusts reads that header itself, taking the address the proxy appended
/// (the last one in `X-Forwarded-For`), and only when [`peer`](Handshake::peer) is that proxy.
///
/// ```
/// use emitter_core::Handshake;
///
/// let handshake = Handshake::new("/", Some("room=7"))
///     .with_header("Cookie", "theme=dark; session=abc123")
///     .with_peer("203.0.113.9:51234".parse().unwrap());
/// assert_eq!(handshake.cookie("session"), Some("abc123"));
/// assert_eq!(handshake.header("cookie"), Some("theme=dark; session=abc123"));
/// assert_eq!(handshake.peer().unwrap().ip().to_string(), "203.0.113.9");
/// assert_eq!(handshake.query(), Some("room=7"));
/// // Credentials never reach a log through Debug.
/// assert!(!format!("{handshake:?}").contains("abc123"));
/// ```
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Handshake {
    /// Every header's name (in lowercase) and value, one after the other, in the order received: one allocation for
    /// all of them rather than two per header, since every open connection keeps its handshake.
    text: String,
    /// Where each header ends in `text`: (end of its name, end of its value); each starts where the one before ends.
    spans: Vec<(usize, usize)>,
    peer: Option<SocketAddr>,
    path: Box<str>,
    query: Option<Box<str>>,
}

impl Handshake {
    /// A request for `path` (with `query`, the part after `?`, if any), with no headers and no peer address yet.
    pub fn new(path: &str, query: Option<&str>) -> Handshake {
        Handshake {
            text: String::new(),
            spans: Vec::new(),
            peer: None,
            path: path.into(),
            query: query.map(Into::into),
        }
    }

    /// Adds a header (its name is kept in lowercase). A transport adds them in the order it received them.
    pub fn with_header(mut self, name: &str, value: &str) -> Handshake {
        self.text.extend(name.chars().map(|c| c.to_ascii_lowercase()));
        let name_end = self.text.len();
        self.text.push_str(value);
        self.spans.push((name_end, self.text.len()));
        self
    }

    /// Gives back the room its buffers grew by while headers were added: the handshake is kept as long as its
    /// connection is open.
    pub(crate) fn shrink_to_fit(mut self) -> Handshake {
        self.text.shrink_to_fit();
        self.spans.shrink_to_fit();
        self
    }

    /// Every header as (lowercase name, value), in the order received.
    fn pairs(&self) -> impl Iterator<Item = (&str, &str)> {
        let mut start = 0;
        self.spans.iter().map(move |&(name_end, value_end)| {
            let name = self.text.get(start..name_end).unwrap_or_default();
            let value = self.text.get(name_end..value_end).unwrap_or_default();
            start = value_end;
            (name, value)
        })
    }

    /// Sets the address of the connection's peer.
    pub fn with_peer(mut self, peer: SocketAddr) -> Handshake {
        self.peer = Some(peer);
        self
    }

    /// The first value of the header `name` (any case), if the request had it.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.pairs()
            .find(|(have, _)| have.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// Every value of the header `name` (any case), in the order received.
    pub fn header_values<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.pairs()
            .filter(move |(have, _)| have.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// Every header as (lowercase name, value), in the order received.
    pub fn headers(&self) -> impl Iterator<Item = (&str, &str)> {
        self.pairs()
    }

    /// The value of the cookie `name` from the request's `Cookie` headers, if it was sent.
    pub fn cookie(&self, name: &str) -> Option<&str> {
        self.pairs()
            .filter(|(have, _)| *have == "cookie")
            .map(|(_, value)| value)
            .flat_map(|header| header.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(have, _)| *have == name)
            .map(|(_, value)| value)
    }

    /// The TCP peer's address, when the transport knows it (see the type's documentation for proxies).
    pub fn peer(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The request's path, such as `/`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The request's query string (after the `?`, not decoded), if it had one.
    pub fn query(&self) -> Option<&str> {
        self.query.as_deref()
    }
}

impl fmt::Debug for Handshake {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        struct Headers<'a>(&'a Handshake);
        impl fmt::Debug for Headers<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let mut list = f.debug_list();
                for (name, value) in self.0.pairs() {
                    let value: &str = if SECRET_HEADERS.contains(&name) {
                        "<redacted>"
                    } else {
                        value
                    };
                    list.entry(&(name, value));
                }
                list.finish()
            }
        }
        // A query string can carry a token (`?token=…`): it is never printed.
        f.debug_struct("Handshake")
            .field("path", &self.path)
            .field("query", &self.query.as_ref().map(|_| "<redacted>"))
            .field("peer", &self.peer)
            .field("headers", &Headers(self))
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cookies_are_read_from_every_cookie_header() {
        let handshake = Handshake::new("/", None)
            .with_header("cookie", "a=1; b=2")
            .with_header("Cookie", "c=3");
        assert_eq!(handshake.cookie("a"), Some("1"));
        assert_eq!(handshake.cookie("b"), Some("2"));
        assert_eq!(handshake.cookie("c"), Some("3"));
        assert_eq!(handshake.cookie("d"), None);
        assert_eq!(handshake.header_values("COOKIE").count(), 2);
    }

    #[test]
    fn debug_shows_no_credential() {
        let handshake = Handshake::new("/ws", Some("token=s3cret"))
            .with_header("Authorization", "Bearer s3cret")
            .with_header("Proxy-Authorization", "Basic s3cret")
            .with_header("cookie", "session=s3cret")
            .with_header("Sec-WebSocket-Protocol", "bearer.s3cret")
            .with_header("user-agent", "test");
        let printed = format!("{handshake:?}");
        assert!(!printed.contains("s3cret"), "{printed}");
        assert!(printed.contains("user-agent") && printed.contains("/ws"), "{printed}");
    }
}
