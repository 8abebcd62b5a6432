//! Reading what the servers send, as far as the load generator needs: the send time and sender of a benchmark
//! message, the type and username of a `krmx/` message.

/// One server message, as far as the load generator needs to understand it.
#[derive(Debug, PartialEq)]
pub(crate) enum Parsed<'a> {
    /// `bench/msg` or `bench/echo`: the send time and the sender.
    Bench {
        sent_at: u64,
        sender: u32,
    },
    /// A `krmx/` message: its type after the prefix, and the username in its payload.
    Krmx {
        kind: &'a [u8],
        username: &'a [u8],
    },
    Other,
}

fn digits(bytes: &[u8]) -> Option<(u64, usize)> {
    let len = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    if len == 0 || len > 19 {
        return None;
    }
    let value = bytes[..len].iter().fold(0u64, |v, b| v * 10 + u64::from(b - b'0'));
    Some((value, len))
}

fn until_quote(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|b| *b == b'"').unwrap_or(bytes.len());
    &bytes[..end]
}

/// Reads a server message. Every server under test writes `type` first, so a prefix test and a short scan do; other
/// shapes go through serde_json.
pub(crate) fn parse(data: &[u8]) -> Parsed<'_> {
    const BENCH: &[u8] = b"{\"type\":\"bench/";
    const KRMX: &[u8] = b"{\"type\":\"krmx/";
    const PAYLOAD: &[u8] = b"\"payload\":[";
    const USERNAME: &[u8] = b"\"username\":\"";
    if data.starts_with(BENCH) {
        if let Some(at) = crate::ws::find(&data[BENCH.len()..], PAYLOAD) {
            let rest = &data[BENCH.len() + at + PAYLOAD.len()..];
            if let Some((sent_at, len)) = digits(rest) {
                if let Some((sender, _)) = rest.get(len + 1..).and_then(digits) {
                    return Parsed::Bench {
                        sent_at,
                        sender: sender as u32,
                    };
                }
            }
        }
    } else if data.starts_with(KRMX) {
        let kind = until_quote(&data[KRMX.len()..]);
        let username = crate::ws::find(data, USERNAME)
            .map(|at| until_quote(&data[at + USERNAME.len()..]))
            .unwrap_or_default();
        return Parsed::Krmx { kind, username };
    }
    slow_parse(data)
}

fn slow_parse(data: &[u8]) -> Parsed<'_> {
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(data) else {
        return Parsed::Other;
    };
    let kind = value.get("type").and_then(|kind| kind.as_str()).unwrap_or_default();
    if kind.starts_with("bench/") {
        let payload = value.get("payload").and_then(|payload| payload.as_array());
        let number = |i: usize| payload.and_then(|p| p.get(i)).and_then(|n| n.as_u64());
        if let (Some(sent_at), Some(sender)) = (number(0), number(1)) {
            return Parsed::Bench {
                sent_at,
                sender: sender as u32,
            };
        }
    } else if let Some(kind) = kind.strip_prefix("krmx/") {
        // Leak-free borrowing is not possible from a parsed Value; find the same text in the frame instead.
        let username = value
            .get("payload")
            .and_then(|p| p.get("username"))
            .and_then(|u| u.as_str())
            .unwrap_or_default();
        let locate = |text: &str| {
            crate::ws::find(data, text.as_bytes())
                .map(|at| &data[at..at + text.len()])
                .unwrap_or_default()
        };
        return Parsed::Krmx {
            kind: locate(kind),
            username: if username.is_empty() { &[] } else { locate(username) },
        };
    }
    Parsed::Other
}

/// The index of user `u<index>`.
pub(crate) fn user_index(username: &[u8]) -> Option<u32> {
    let (index, len) = digits(username.strip_prefix(b"u")?)?;
    (len + 1 == username.len()).then_some(index as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_what_the_servers_send() {
        assert_eq!(
            parse(br#"{"type":"bench/msg","payload":[123,4,5]}"#),
            Parsed::Bench {
                sent_at: 123,
                sender: 4
            }
        );
        assert_eq!(
            parse(br#"{"payload":[9,8,7],"type":"bench/echo"}"#),
            Parsed::Bench { sent_at: 9, sender: 8 }
        );
        assert_eq!(
            parse(br#"{"type":"krmx/joined","payload":{"username":"u12"}}"#),
            Parsed::Krmx {
                kind: b"joined",
                username: b"u12"
            }
        );
        assert_eq!(
            parse(br#"{"payload":{"username":"u7"},"type":"krmx/linked"}"#),
            Parsed::Krmx {
                kind: b"linked",
                username: b"u7"
            }
        );
        assert_eq!(
            parse(br#"{"type":"krmx/accepted"}"#),
            Parsed::Krmx {
                kind: b"accepted",
                username: b""
            }
        );
        assert_eq!(user_index(b"u12"), Some(12));
        assert_eq!(user_index(b"u12x"), None);
        assert_eq!(user_index(b"simon"), None);
    }
}
