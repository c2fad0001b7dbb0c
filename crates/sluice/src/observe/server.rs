//! The `/metrics` endpoint: a small HTTP/1.1 server on the address
//! `[observability] metrics` names, answering `GET /metrics` with the run's
//! metrics. Every connection gets one answer and is closed (what a
//! Prometheus scrape needs); anything else gets a 404 or a 405.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// What a scrape answers: the exposition text, made when asked.
pub(crate) type Render = Arc<dyn Fn() -> String + Send + Sync>;

/// A running metrics endpoint; stopped on drop.
pub(crate) struct MetricsServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Serves `render` at `http://<addr>/metrics`.
    pub(crate) async fn bind(addr: &str, render: Render) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let render = Arc::clone(&render);
                tokio::spawn(async move {
                    // a slow or silent client does not hold a task forever
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), answer(stream, render)).await;
                });
            }
        });
        Ok(Self { addr, task })
    }

    /// The address it listens on (with the port the system chose for `:0`).
    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The most a request's head may be: a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 16 << 10;

async fn answer(mut stream: TcpStream, render: Render) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            return respond(&mut stream, "431 Request Header Fields Too Large", "").await;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, path) {
        ("GET", "/metrics") => respond(&mut stream, "200 OK", &render()).await,
        (_, "/metrics") => respond(&mut stream, "405 Method Not Allowed", "").await,
        _ => respond(&mut stream, "404 Not Found", "sluice serves /metrics\n").await,
    }
}

async fn respond(stream: &mut TcpStream, status: &str, body: &str) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(body.as_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn get(addr: SocketAddr, request: &str) -> String {
        let mut s = TcpStream::connect(addr).await.unwrap();
        // the server may answer (and close) before a huge request is sent whole
        let _ = s.write_all(request.as_bytes()).await;
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    #[tokio::test]
    async fn scrapes_get_the_text_and_anything_else_an_error() {
        let server = MetricsServer::bind("127.0.0.1:0", Arc::new(|| "sluice_up 1\n".to_string()))
            .await
            .unwrap();
        let ok = get(server.addr(), "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(ok.ends_with("\r\n\r\nsluice_up 1\n"), "{ok}");
        let other = get(server.addr(), "GET / HTTP/1.1\r\n\r\n").await;
        assert!(other.starts_with("HTTP/1.1 404"), "{other}");
        let post = get(server.addr(), "POST /metrics HTTP/1.1\r\n\r\n").await;
        assert!(post.starts_with("HTTP/1.1 405"), "{post}");
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_HEAD)
        );
        assert!(get(server.addr(), &huge).await.starts_with("HTTP/1.1 431"));
    }
}
