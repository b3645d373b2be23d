//! HTTP to 127.0.0.1, for health checks: one request with `ureq`, any status an answer, short timeouts.

use std::time::Duration;

use ureq::Agent;
use ureq::http::Request;

use crate::Result;

/// The largest HTTP response the health checks read.
const MAX_RESPONSE_BYTES: u64 = 1 << 20;

/// An HTTP response: status code and body.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct HttpResponse {
    /// The status code.
    pub(crate) status: u16,
    /// The body (decoded from chunked transfer encoding if it was), as text.
    pub(crate) body: String,
}

/// Sends one HTTP/1.1 request (with a JSON body if `body` is given) to 127.0.0.1:`port` and reads
/// the response, with short timeouts. Every status is a response, not an error; redirects are not
/// followed and no proxy is used.
///
/// # Errors
///
/// If nothing listens on the port, the answer is not HTTP, or it is incomplete, late or over 1 MiB.
pub(crate) fn http_request(port: u16, method: &str, path: &str, body: Option<&str>) -> Result<HttpResponse> {
    let agent: Agent = Agent::config_builder()
        .http_status_as_error(false)
        .proxy(None)
        .max_redirects(0)
        .max_redirects_will_error(false)
        .timeout_connect(Some(Duration::from_secs(1)))
        .timeout_per_read(Some(Duration::from_secs(5)))
        .timeout_per_write(Some(Duration::from_secs(5)))
        .build()
        .into();
    let request = Request::builder()
        .method(method)
        .uri(format!("http://127.0.0.1:{port}{path}"))
        .header("Accept", "application/json");
    let mut response = match body {
        Some(body) => agent.run(request.header("Content-Type", "application/json").body(body.to_owned())?)?,
        None => agent.run(request.body(())?)?,
    };
    let bytes = response.body_mut().with_config().limit(MAX_RESPONSE_BYTES).read_to_vec()?;
    Ok(HttpResponse { status: response.status().as_u16(), body: String::from_utf8_lossy(&bytes).into_owned() })
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead as _, BufReader, Read as _, Write as _};
    use std::net::TcpListener;
    use std::thread;

    use super::*;

    /// Serves `answer` verbatim to one connection on a fresh port and returns what the request was,
    /// with what [`http_request`] made of the answer.
    fn exchange(method: &str, body: Option<&str>, answer: &'static [u8]) -> (String, Result<HttpResponse>) {
        let listener = TcpListener::bind("127.0.0.1:0").expect("a free port");
        let port = listener.local_addr().expect("its address").port();
        let server = thread::spawn(move || {
            let (stream, _) = listener.accept().expect("a connection");
            let mut reader = BufReader::new(stream);
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).expect("a request line");
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = value.trim().parse().expect("a length");
                }
                head.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).expect("the request body");
            head.push_str(&String::from_utf8_lossy(&body));
            let mut stream = reader.into_inner();
            stream.write_all(answer).expect("the answer is sent");
            head
        });
        let response = http_request(port, method, "/path", body);
        (server.join().expect("the server thread"), response)
    }

    #[test]
    fn content_length_responses_are_read() {
        let (request, response) =
            exchange("GET", None, b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\ncontent-length: 2\r\n\r\n{}");
        assert_eq!(response.expect("a response"), HttpResponse { status: 200, body: "{}".to_owned() });
        assert!(request.starts_with("GET /path HTTP/1.1\r\n"), "{request}");
        assert!(request.to_ascii_lowercase().contains("accept: application/json"), "{request}");
    }

    #[test]
    fn json_bodies_are_sent() {
        let (request, response) =
            exchange("POST", Some(r#"{"id":1}"#), b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(response.expect("a response").status, 200);
        assert!(request.starts_with("POST /path HTTP/1.1\r\n"), "{request}");
        assert!(request.to_ascii_lowercase().contains("content-type: application/json"), "{request}");
        assert!(request.ends_with(r#"{"id":1}"#), "{request}");
    }

    #[test]
    fn chunked_responses_are_decoded() {
        let (_, response) = exchange(
            "GET",
            None,
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\n{\"a\"\r\n3;x=y\r\n:1}\r\n0\r\n\r\n",
        );
        assert_eq!(response.expect("a response"), HttpResponse { status: 200, body: "{\"a\":1}".to_owned() });
        let (_, broken) = exchange("GET", None, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n");
        assert!(broken.is_err(), "{broken:?}");
    }

    #[test]
    fn close_delimited_responses_and_error_statuses_are_answers() {
        let (_, response) = exchange("GET", None, b"HTTP/1.0 503 Service Unavailable\r\n\r\nbusy");
        assert_eq!(response.expect("a response"), HttpResponse { status: 503, body: "busy".to_owned() });
    }

    #[test]
    fn truncated_responses_fail() {
        let (_, response) = exchange("GET", None, b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}");
        assert!(response.is_err(), "{response:?}");
        let (_, response) = exchange("GET", None, b"HTTP/1.1 200 OK\r\nContent-");
        assert!(response.is_err(), "{response:?}");
    }

    #[test]
    fn garbage_is_not_http() {
        let (_, response) = exchange("GET", None, b"SSH-2.0-OpenSSH\r\n\r\n");
        assert!(response.is_err(), "{response:?}");
        let (_, response) = exchange("GET", None, b"HTTP/1.1 abc OK\r\n\r\n");
        assert!(response.is_err(), "{response:?}");
        let (_, response) = exchange("GET", None, b"");
        assert!(response.is_err(), "{response:?}");
    }

    #[test]
    fn nothing_listening_is_an_error() {
        let port = TcpListener::bind("127.0.0.1:0").expect("a free port").local_addr().expect("its address").port();
        assert!(http_request(port, "GET", "/", None).is_err());
    }
}
