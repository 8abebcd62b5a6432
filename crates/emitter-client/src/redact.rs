//! What of a URL may be logged: a URL's user info (`user:password@`) and query (`?token=…`) can hold secrets, so the
//! client logs, and puts in its errors, the URL without them.

/// `url` without its user info, query and fragment.
pub(crate) fn url_for_logs(url: &str) -> String {
    let url = url.find(['?', '#']).map_or(url, |cut| &url[..cut]);
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
            let host = authority.rsplit_once('@').map_or(authority, |(_, host)| host);
            format!("{scheme}://{host}{path}")
        }
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::url_for_logs;

    #[test]
    fn user_info_query_and_fragment_are_left_out() {
        assert_eq!(url_for_logs("ws://127.0.0.1:8082/"), "ws://127.0.0.1:8082/");
        assert_eq!(url_for_logs("wss://host/ws?token=s3cret&room=1"), "wss://host/ws");
        assert_eq!(url_for_logs("wss://me:s3cret@host:443/ws#x"), "wss://host:443/ws");
        assert_eq!(url_for_logs("ws://me:s3cret@host?token=s3cret"), "ws://host");
        assert_eq!(url_for_logs("not a url?token=s3cret"), "not a url");
    }
}
