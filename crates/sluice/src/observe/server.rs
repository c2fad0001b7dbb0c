//! A small HTTP/1.1 server for `/metrics` and the live page: `GET` of a
//! path its routes know gets their answer, made when asked; another method
//! a 405, another path a 404. Every connection gets one answer and is
//! closed (what a Prometheus scrape and a page's poll need).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// One answer: its content type and body.
pub(crate) struct Reply {
    content_type: &'static str,
    body: std::borrow::Cow<'static, str>,
}

impl Reply {
    pub(crate) fn new(
        content_type: &'static str,
        body: impl Into<std::borrow::Cow<'static, str>>,
    ) -> Self {
        Self {
            content_type,
            body: body.into(),
        }
    }
}

/// The answer to a `GET` of a path, if the path is served.
pub(crate) type Routes = Arc<dyn Fn(&str) -> Option<Reply> + Send + Sync>;

/// A running server; stopped on drop.
pub(crate) struct HttpServer {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl HttpServer {
    /// Serves `routes` at `http://<addr>`.
    pub(crate) async fn bind(addr: &str, routes: Routes) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    // out of descriptors, say: wait instead of spinning
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                };
                let routes = Arc::clone(&routes);
                tokio::spawn(async move {
                    // a slow or silent client does not hold a task forever
                    let _ =
                        tokio::time::timeout(Duration::from_secs(10), answer(stream, routes)).await;
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

impl Drop for HttpServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The most a request's head may be: a scrape's is a few hundred bytes.
const MAX_HEAD: usize = 16 << 10;

const TEXT: &str = "text/plain; charset=utf-8";

async fn answer(mut stream: TcpStream, routes: Routes) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut buf = [0u8; 2048];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        let n = stream.read(&mut buf).await?;
        if n == 0 {
            return Ok(());
        }
        head.extend_from_slice(&buf[..n]);
        if head.len() > MAX_HEAD {
            let reply = Reply::new(TEXT, "");
            return respond(&mut stream, "431 Request Header Fields Too Large", reply).await;
        }
    }
    let line = head.split(|b| *b == b'\r').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.split(' ');
    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let path = target.split('?').next().unwrap_or("");
    match (method, routes(path)) {
        ("GET", Some(reply)) => respond(&mut stream, "200 OK", reply).await,
        (_, Some(_)) => {
            let reply = Reply::new(TEXT, "");
            respond(&mut stream, "405 Method Not Allowed", reply).await
        }
        (_, None) => {
            respond(
                &mut stream,
                "404 Not Found",
                Reply::new(TEXT, "not found\n"),
            )
            .await
        }
    }
}

async fn respond(stream: &mut TcpStream, status: &str, reply: Reply) -> std::io::Result<()> {
    let head = format!(
        "HTTP/1.1 {status}\r\ncontent-type: {}\r\ncontent-length: {}\r\ncache-control: no-store\r\nconnection: close\r\n\r\n",
        reply.content_type,
        reply.body.len()
    );
    stream.write_all(head.as_bytes()).await?;
    stream.write_all(reply.body.as_bytes()).await?;
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
        let routes: Routes = Arc::new(|path| {
            (path == "/metrics").then(|| Reply::new("text/plain; version=0.0.4", "sluice_up 1\n"))
        });
        let server = HttpServer::bind("127.0.0.1:0", routes).await.unwrap();
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
