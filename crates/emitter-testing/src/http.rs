//! One plain HTTP/1.1 request, written by hand on a TCP stream.

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::TIMEOUT;

/// What [`http`] read back.
#[derive(Debug, Clone, PartialEq)]
pub struct HttpResponse {
    /// The status code.
    pub status: u16,
    /// The status line and the headers, as sent.
    pub head: String,
    /// Everything after the headers.
    pub body: String,
}

impl HttpResponse {
    /// The status and the body, to compare at once.
    pub fn status_body(&self) -> (u16, &str) {
        (self.status, &self.body)
    }
}

/// Sends `method path` to `127.0.0.1:{port}` with `Connection: close`, and a JSON `body` if there is one, and reads
/// the response to its end. Panics after [`TIMEOUT`].
pub async fn http(port: u16, method: &str, path: &str, body: Option<&str>) -> HttpResponse {
    let exchange = async {
        let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let body = body.unwrap_or_default();
        let content_type = if body.is_empty() {
            ""
        } else {
            "Content-Type: application/json\r\n"
        };
        let request = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n{content_type}\
             Content-Length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        tcp.read_to_end(&mut response).await.unwrap();
        String::from_utf8(response).unwrap()
    };
    let response = tokio::time::timeout(TIMEOUT, exchange)
        .await
        .expect("timed out on a plain HTTP request");
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not an HTTP response: {response}"));
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    HttpResponse {
        status,
        head: head.to_owned(),
        body: body.to_owned(),
    }
}

/// [`http`] with `GET` and no body.
pub async fn http_get(port: u16, path: &str) -> HttpResponse {
    http(port, "GET", path, None).await
}

/// Asks `GET path` on `127.0.0.1:{port}` until it answers `status`, and returns that response's body: for a state
/// that changes without telling any client (a health check turning 503 while Redis is away, and back). Panics after
/// [`TIMEOUT`], with the last answer.
pub async fn get_until_status(port: u16, path: &str, status: u16) -> String {
    let deadline = std::time::Instant::now() + TIMEOUT;
    loop {
        let response = http_get(port, path).await;
        if response.status == status {
            return response.body;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{path} never answered {status}: {} {}",
            response.status,
            response.body
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
