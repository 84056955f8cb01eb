//! A client of the HTTP API for the `api_*` and `cluster_api` tests: one request per
//! TCP connection (HTTP/1.1, `Connection: close`), every exchange bounded.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// One answer: status, headers (names lowercase) and the body as JSON (`Null` when it
/// is not JSON; the text is kept too).
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Value,
    pub text: String,
}

impl Answer {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// The error code of an error answer.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
}

/// `METHOD path` with `headers` and an optional body, against `addr`.
pub async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&str>,
) -> Answer {
    let exchange = async {
        let mut stream = TcpStream::connect(addr).await?;
        let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
        for (name, value) in headers {
            head.push_str(&format!("{name}: {value}\r\n"));
        }
        if let Some(body) = body {
            head.push_str(&format!(
                "Content-Type: application/json\r\nContent-Length: {}\r\n",
                body.len()
            ));
        } else if method == "POST" {
            head.push_str("Content-Length: 0\r\n");
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).await?;
        if let Some(body) = body {
            stream.write_all(body.as_bytes()).await?;
        }
        let mut raw = Vec::new();
        stream.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let text = String::from_utf8_lossy(&raw).to_string();
    let (head, body) = text
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("{method} {path}: not HTTP: {text:?}"));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("{method} {path}: no status line: {head}"));
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Answer {
        status,
        headers,
        body: serde_json::from_str(body).unwrap_or(Value::Null),
        text: body.to_string(),
    }
}

/// Requests made with one API key.
pub struct Api {
    pub addr: SocketAddr,
    pub secret: String,
}

impl Api {
    pub fn new(addr: SocketAddr, secret: &str) -> Self {
        Self {
            addr,
            secret: secret.to_string(),
        }
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.secret)
    }

    pub async fn get(&self, path: &str) -> Answer {
        let auth = self.auth();
        request(self.addr, "GET", path, &[("Authorization", &auth)], None).await
    }

    pub async fn post(&self, path: &str, body: &str) -> Answer {
        let auth = self.auth();
        request(
            self.addr,
            "POST",
            path,
            &[("Authorization", &auth)],
            Some(body),
        )
        .await
    }

    pub async fn post_with(&self, path: &str, headers: &[(&str, &str)], body: &str) -> Answer {
        let auth = self.auth();
        let mut all = vec![("Authorization", auth.as_str())];
        all.extend_from_slice(headers);
        request(self.addr, "POST", path, &all, Some(body)).await
    }

    /// `POST /api/events/{event}`, asserting 200; the reply.
    pub async fn send(&self, event: &str, data: Value) -> Value {
        let answer = self
            .post(&format!("/api/events/{event}"), &data.to_string())
            .await;
        assert_eq!(answer.status, 200, "{event} {data}: {}", answer.text);
        answer.body["data"].clone()
    }
}
