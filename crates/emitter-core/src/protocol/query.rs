//! Expectations on a connection URL's query parameters.

use std::fmt;
use std::sync::Arc;

/// What a query parameter must be for a connection to be kept.
///
/// ```
/// use emitter_core::QueryParam;
///
/// let expected = [("room", QueryParam::Equals("lobby".into())), ("debug", QueryParam::Absent)];
/// assert!(QueryParam::all_hold(&expected, Some("room=lobby&x=1")));
/// assert!(!QueryParam::all_hold(&expected, Some("room=lobby&debug")));
/// assert!(!QueryParam::all_hold(&expected, None));
/// ```
#[derive(Clone)]
pub enum QueryParam {
    /// The parameter must be present, with any value.
    Present,
    /// The parameter must be absent.
    Absent,
    /// The parameter's first value must equal this string (after percent-decoding).
    Equals(String),
    /// The parameter must be present and its first value must satisfy the predicate.
    Matches(Arc<dyn Fn(&str) -> bool + Send + Sync>),
}

impl fmt::Debug for QueryParam {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            QueryParam::Present => f.write_str("Present"),
            QueryParam::Absent => f.write_str("Absent"),
            QueryParam::Equals(value) => f.debug_tuple("Equals").field(value).finish(),
            QueryParam::Matches(_) => f.write_str("Matches(..)"),
        }
    }
}

impl QueryParam {
    /// A parameter whose value must satisfy `predicate`.
    pub fn matches(predicate: impl Fn(&str) -> bool + Send + Sync + 'static) -> Self {
        QueryParam::Matches(Arc::new(predicate))
    }

    /// Whether every expectation holds for the raw query string (the part after `?`, if any).
    pub fn all_hold<N: AsRef<str>>(expected: &[(N, QueryParam)], query: Option<&str>) -> bool {
        let pairs: Vec<(String, String)> = form_urlencoded::parse(query.unwrap_or("").as_bytes())
            .map(|(name, value)| (name.into_owned(), value.into_owned()))
            .collect();
        let first = |name: &str| pairs.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
        expected.iter().all(|(name, expectation)| {
            let value = first(name.as_ref());
            match expectation {
                QueryParam::Present => value.is_some(),
                QueryParam::Absent => value.is_none(),
                QueryParam::Equals(expected) => value == Some(expected.as_str()),
                QueryParam::Matches(predicate) => value.is_some_and(|v| predicate(v)),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::QueryParam;

    #[test]
    fn decoding_and_first_value() {
        let expected = [("name", QueryParam::Equals("a b&c".into()))];
        assert!(QueryParam::all_hold(&expected, Some("name=a+b%26c")));
        assert!(QueryParam::all_hold(&expected, Some("name=a%20b%26c&name=x")));
        assert!(!QueryParam::all_hold(&expected, Some("name=x&name=a+b%26c")));
    }

    #[test]
    fn presence() {
        let expected = [("key", QueryParam::Present)];
        assert!(QueryParam::all_hold(&expected, Some("key")));
        assert!(QueryParam::all_hold(&expected, Some("key=")));
        assert!(!QueryParam::all_hold(&expected, Some("other=key")));
        assert!(QueryParam::all_hold::<&str>(&[], None));
    }

    #[test]
    fn predicate() {
        let expected = [("v", QueryParam::matches(|v| v.len() > 2))];
        assert!(QueryParam::all_hold(&expected, Some("v=abc")));
        assert!(!QueryParam::all_hold(&expected, Some("v=ab")));
        assert!(!QueryParam::all_hold(&expected, Some("")));
    }
}
