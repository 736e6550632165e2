//! `screengate-client`: the reference native display client. It connects to
//! screengate's native Unix socket, optionally with TLS (the gateway pinned
//! by SPKI) and the device client certificate (mutual TLS), opens the
//! WebSocket (with a native-channel token when asked to mint one), sends
//! stdin lines as text messages and prints what comes back, one per line.
//!
//! It is also the code a renderer team reads: `docs/native-clients.md`
//! walks through the same steps for C++ with OpenSSL.
#![forbid(unsafe_code)]

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use futures_util::{SinkExt, StreamExt};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use screengate_control::client::{Client, ClientError, Peer};
use screengate_control::{Channel, Minted};
use screengate_identity::Pin;
use screengate_identity::verify::{PinnedServerCert, provider};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite, BufReader};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use zeroize::Zeroizing;

/// How long connect + TLS + upgrade may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Tls {
    Off,
    Server,
    Mutual,
}

#[derive(Parser)]
#[command(
    name = "screengate-client",
    version,
    about = "Native display client for screengate's Unix socket."
)]
struct Cli {
    /// screengate's native socket.
    #[arg(long)]
    socket: PathBuf,
    /// TLS mode, matching the server's `[native] tls`.
    #[arg(long, value_enum, default_value = "server")]
    tls: Tls,
    /// SPKI pin of the gateway certificate (`screengate pin`); needed with TLS.
    #[arg(long)]
    server_pin: Option<String>,
    /// Client certificate (PEM) for mutual TLS (`client.crt` from `screengate init`).
    #[arg(long)]
    cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS.
    #[arg(long)]
    key: Option<PathBuf>,
    /// Mint a native-channel token on this control socket and present it.
    #[arg(long)]
    control: Option<PathBuf>,
    /// WebSocket path.
    #[arg(long, default_value = "/ws")]
    path: String,
    /// Send this one message, print the first reply that is not a status
    /// message, and exit (instead of reading stdin).
    #[arg(long)]
    once: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

fn fail(msg: impl std::fmt::Display) -> String {
    msg.to_string()
}

fn read_pem(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))
}

fn tls_config(cli: &Cli) -> Result<rustls::ClientConfig, String> {
    let pin = cli
        .server_pin
        .as_deref()
        .ok_or("--server-pin is required with TLS (print it with `screengate pin`)")?;
    let pin = Pin::parse(pin).ok_or("--server-pin is not a base64 SHA-256 pin")?;
    let p = provider();
    let b = rustls::ClientConfig::builder_with_provider(p.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(fail)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinnedServerCert::new(pin, p)));
    if cli.tls == Tls::Mutual {
        let (Some(c), Some(k)) = (&cli.cert, &cli.key) else {
            return Err("--tls mutual needs --cert and --key".into());
        };
        let cert = CertificateDer::from_pem_slice(&read_pem(c)?)
            .map_err(|e| format!("{}: {e}", c.display()))?;
        let key_pem = Zeroizing::new(read_pem(k)?);
        let key =
            PrivateKeyDer::from_pem_slice(&key_pem).map_err(|e| format!("{}: {e}", k.display()))?;
        b.with_client_auth_cert(vec![cert], key).map_err(fail)
    } else {
        Ok(b.with_no_client_auth())
    }
}

/// Mints a native-channel token over the control socket (the shared
/// client: one request, one reply, 5 s deadline, 16 KiB reply bound).
async fn mint(control: &Path) -> Result<Minted, String> {
    Client::new(control, Peer::Any)
        .mint(Channel::Native)
        .await
        .map_err(|e| match e {
            ClientError::Refused(r) => format!("mint refused: {r}"),
            other => other.to_string(),
        })
}

async fn connect(cli: &Cli) -> Result<tokio_tungstenite::WebSocketStream<Box<dyn Io>>, String> {
    let unix = tokio::net::UnixStream::connect(&cli.socket)
        .await
        .map_err(|e| format!("{}: {e}", cli.socket.display()))?;
    let io: Box<dyn Io> = match cli.tls {
        Tls::Off => Box::new(unix),
        Tls::Server | Tls::Mutual => {
            let cfg = tls_config(cli)?;
            let name = ServerName::try_from("localhost").map_err(fail)?;
            let tls = tokio_rustls::TlsConnector::from(Arc::new(cfg))
                .connect(name, unix)
                .await
                .map_err(|e| format!("TLS handshake: {e}"))?;
            Box::new(tls)
        }
    };
    let mut req = format!("ws://localhost{}", cli.path)
        .into_client_request()
        .map_err(fail)?;
    if let Some(control) = &cli.control {
        let minted = mint(control).await?;
        let name =
            tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(minted.header.as_bytes())
                .map_err(fail)?;
        let value = tokio_tungstenite::tungstenite::http::HeaderValue::from_str(
            minted.token.expose_secret(),
        )
        .map_err(fail)?;
        req.headers_mut().insert(name, value);
    }
    let (ws, _) = tokio_tungstenite::client_async(req, io)
        .await
        .map_err(|e| match e {
            tokio_tungstenite::tungstenite::Error::Http(r) => {
                format!("upgrade refused: HTTP {}", r.status())
            }
            other => format!("WebSocket handshake: {other}"),
        })?;
    Ok(ws)
}

fn is_status(text: &str) -> bool {
    text.starts_with("{\"type\":\"status\"")
}

async fn run(cli: Cli) -> Result<(), String> {
    let mut ws = tokio::time::timeout(CONNECT_TIMEOUT, connect(&cli))
        .await
        .map_err(|_| "connect timed out".to_owned())??;
    if let Some(msg) = &cli.once {
        ws.send(Message::text(msg.as_str())).await.map_err(fail)?;
        loop {
            let m = tokio::time::timeout(CONNECT_TIMEOUT, ws.next())
                .await
                .map_err(|_| "no reply in time".to_owned())?
                .ok_or("closed before a reply")?
                .map_err(fail)?;
            match m {
                Message::Text(t) if !is_status(t.as_str()) => {
                    println!("{}", t.as_str());
                    let _ = ws.close(None).await;
                    return Ok(());
                }
                Message::Binary(b) => {
                    println!("[{} bytes binary]", b.len());
                    return Ok(());
                }
                Message::Close(c) => return Err(format!("closed by the server: {c:?}")),
                _ => {}
            }
        }
    }
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => match line.map_err(fail)? {
                Some(l) => ws.send(Message::text(l)).await.map_err(fail)?,
                None => { let _ = ws.close(None).await; return Ok(()) }
            },
            m = ws.next() => match m {
                Some(Ok(Message::Text(t))) => println!("{}", t.as_str()),
                Some(Ok(Message::Binary(b))) => println!("[{} bytes binary]", b.len()),
                Some(Ok(Message::Close(c))) => return Err(format!("closed by the server: {c:?}")),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.to_string()),
                None => return Err("connection closed".into()),
            },
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let _ = nix::sys::prctl::set_dumpable(false);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("screengate-client: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("screengate-client: {e}");
            ExitCode::FAILURE
        }
    }
}
