//! Test support shared by the integration tests (`tests/it`) and
//! `cargo xtask e2e`: a pinned-TLS client that can send any handshake
//! (duplicate headers included) and then speak WebSocket, and a control
//! socket client (a thin wrapper over `screengate-control`'s, keeping the
//! raw-string form the tests send hostile lines with). It is a client only;
//! it never starts servers.
#![forbid(unsafe_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use screengate_control::client::{Client, Peer};
pub use screengate_control::{Channel, Reply, Request as ControlRequest};
use screengate_identity::Pin;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::client::TlsStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::Role;

/// A client-side WebSocket over pinned TLS.
pub type Ws = WebSocketStream<TlsStream<TcpStream>>;

/// Errors are strings: this is test support, and every message is shown.
pub type Result<T> = std::result::Result<T, String>;

/// How long any single step may take before the helper gives up.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(10);

/// A handshake request, header by header, exactly as it goes on the wire.
#[derive(Debug, Clone)]
pub struct Request {
    /// Request target, e.g. `/ws`.
    pub path: String,
    /// Headers in order; duplicates allowed.
    pub headers: Vec<(String, String)>,
}

impl Request {
    /// The handshake a genuine display page sends: Host and Origin of the
    /// gateway, the WebSocket headers, and the token header when given.
    pub fn display(port: u16, token: Option<&str>) -> Self {
        let mut headers = vec![
            ("Host".to_owned(), format!("localhost:{port}")),
            ("Origin".to_owned(), format!("https://localhost:{port}")),
            ("Upgrade".to_owned(), "websocket".to_owned()),
            ("Connection".to_owned(), "Upgrade".to_owned()),
            ("Sec-WebSocket-Version".to_owned(), "13".to_owned()),
            (
                "Sec-WebSocket-Key".to_owned(),
                "dGhlIHNhbXBsZSBub25jZQ==".to_owned(),
            ),
        ];
        if let Some(t) = token {
            headers.push(("X-Screengate-Token".to_owned(), t.to_owned()));
        }
        Self {
            path: "/ws".to_owned(),
            headers,
        }
    }

    /// Replaces every header named `name` (case-insensitive) with `value`,
    /// or removes them when `value` is `None`.
    pub fn set(mut self, name: &str, value: Option<&str>) -> Self {
        self.headers.retain(|(k, _)| !k.eq_ignore_ascii_case(name));
        if let Some(v) = value {
            self.headers.push((name.to_owned(), v.to_owned()));
        }
        self
    }

    /// Adds one more header, keeping existing ones of the same name.
    pub fn add(mut self, name: &str, value: &str) -> Self {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// The request as sent on the wire.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut s = format!("GET {} HTTP/1.1\r\n", self.path);
        for (k, v) in &self.headers {
            s.push_str(k);
            s.push_str(": ");
            s.push_str(v);
            s.push_str("\r\n");
        }
        s.push_str("\r\n");
        s.into_bytes()
    }
}

/// The response to a handshake: status, headers, and the WebSocket if 101.
#[derive(Debug)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// Response head, lower-cased names.
    pub headers: Vec<(String, String)>,
    /// Body text for non-101 responses (up to 4 KiB).
    pub body: String,
}

/// Connects with TLS to `addr`, trusting only `pin`.
pub async fn tls_connect(addr: SocketAddr, pin: Pin) -> Result<TlsStream<TcpStream>> {
    let cfg = screengate_identity::verify::pinned_client_config(pin).map_err(|e| e.to_string())?;
    tls_connect_with(addr, cfg).await
}

/// Connects with TLS to `addr` using `cfg` (e.g. with a client certificate).
pub async fn tls_connect_with(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
) -> Result<TlsStream<TcpStream>> {
    let connector = TlsConnector::from(Arc::new(cfg));
    let tcp = tokio::time::timeout(STEP_TIMEOUT, TcpStream::connect(addr))
        .await
        .map_err(|_| "TCP connect timed out".to_owned())?
        .map_err(|e| format!("TCP connect {addr}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let name = rustls::pki_types::ServerName::try_from("localhost").map_err(|e| e.to_string())?;
    tokio::time::timeout(STEP_TIMEOUT, connector.connect(name, tcp))
        .await
        .map_err(|_| "TLS handshake timed out".to_owned())?
        .map_err(|e| format!("TLS handshake: {e}"))
}

/// Sends `req` over pinned TLS; returns the response and, on 101, the
/// WebSocket ready to use.
pub async fn handshake(
    addr: SocketAddr,
    pin: Pin,
    req: &Request,
) -> Result<(Response, Option<Ws>)> {
    let cfg = screengate_identity::verify::pinned_client_config(pin).map_err(|e| e.to_string())?;
    handshake_with(addr, cfg, req).await
}

/// As [`handshake`], with a given TLS client config.
pub async fn handshake_with(
    addr: SocketAddr,
    cfg: rustls::ClientConfig,
    req: &Request,
) -> Result<(Response, Option<Ws>)> {
    let mut tls = tls_connect_with(addr, cfg).await?;
    tls.write_all(&req.to_bytes())
        .await
        .map_err(|e| format!("write request: {e}"))?;
    let mut reader = BufReader::new(tls);
    let mut head = Vec::new();
    loop {
        let mut line = String::new();
        let n = tokio::time::timeout(STEP_TIMEOUT, reader.read_line(&mut line))
            .await
            .map_err(|_| "response head timed out".to_owned())?
            .map_err(|e| format!("read response: {e}"))?;
        if n == 0 {
            return Err("connection closed before the response head ended".into());
        }
        if line == "\r\n" {
            break;
        }
        head.push(line.trim_end().to_owned());
        if head.len() > 200 {
            return Err("response head too long".into());
        }
    }
    let status_line = head.first().ok_or("empty response")?;
    let status: u16 = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("bad status line {status_line:?}"))?;
    let headers: Vec<(String, String)> = head
        .iter()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    if status == 101 {
        // Frames may already sit in the read buffer behind the head.
        let rest = reader.buffer().to_vec();
        let ws =
            WebSocketStream::from_partially_read(reader.into_inner(), rest, Role::Client, None)
                .await;
        return Ok((
            Response {
                status,
                headers,
                body: String::new(),
            },
            Some(ws),
        ));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0)
        .min(4096);
    let mut body = vec![0u8; len];
    let _ = tokio::time::timeout(STEP_TIMEOUT, reader.read_exact(&mut body)).await;
    Ok((
        Response {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
        },
        None,
    ))
}

/// One request/reply on the control socket; the reply parsed as JSON.
/// `line` goes out as given plus a newline (hostile lines included), via
/// `screengate-control`'s client: 5 s deadline, 16 KiB reply bound.
pub async fn control(path: &Path, line: &str) -> Result<serde_json::Value> {
    let mut bytes = Vec::with_capacity(line.len() + 1);
    bytes.extend_from_slice(line.as_bytes());
    bytes.push(b'\n');
    let reply = Client::new(path, Peer::Any)
        .exchange(&bytes)
        .await
        .map_err(|e| e.to_string())?;
    serde_json::from_slice(&reply).map_err(|e| {
        format!(
            "control reply is not JSON ({e}): {:?}",
            String::from_utf8_lossy(&reply)
        )
    })
}

/// One typed request on the control socket; the typed reply.
pub async fn request(path: &Path, request: &ControlRequest) -> Result<Reply> {
    Client::new(path, Peer::Any)
        .request(request)
        .await
        .map_err(|e| e.to_string())
}

/// The gateway a mint reply points at: its loopback address (port from
/// `origin`) and the SPKI pin to trust.
pub fn gateway_of(reply: &serde_json::Value) -> Result<(SocketAddr, Pin)> {
    let port: u16 = reply["origin"]
        .as_str()
        .and_then(|o| o.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .ok_or_else(|| format!("no gateway origin in {reply}"))?;
    let pin = reply["spki_pin"]
        .as_str()
        .and_then(Pin::parse)
        .ok_or("no SPKI pin in the reply")?;
    Ok((SocketAddr::from(([127, 0, 0, 1], port)), pin))
}

/// Mints a display token; returns (token, full reply).
pub async fn mint(path: &Path) -> Result<(String, serde_json::Value)> {
    let line = ControlRequest::Mint(Channel::Display)
        .to_line()
        .map_err(|e| e.to_string())?;
    let line = std::str::from_utf8(&line).map_err(|e| e.to_string())?;
    let v = control(path, line.trim_end()).await?;
    let t = v
        .get("token")
        .and_then(|t| t.as_str())
        .ok_or_else(|| format!("mint refused: {v}"))?
        .to_owned();
    Ok((t, v))
}

/// Sends a text message and waits for the first text reply that is not a
/// status message.
pub async fn echo(ws: &mut Ws, text: &str) -> Result<String> {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    ws.send(Message::text(text))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let deadline = tokio::time::Instant::now() + STEP_TIMEOUT;
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "no echo within the step timeout".to_owned())?
            .ok_or("connection closed before the echo")?
            .map_err(|e| format!("receive: {e}"))?;
        if let Message::Text(t) = m
            && !t.as_str().starts_with(r#"{"type":"status""#)
        {
            return Ok(t.as_str().to_owned());
        }
    }
}
