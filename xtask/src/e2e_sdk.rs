//! e2e cases against the SDK's IPC server as it ships in release builds: a
//! real websocketpp server (`xtask/assets/sdk_ipc_server.cpp`, built here
//! with g++, cached by source hash) with TLS 1.2+, CA-verified mandatory
//! client certificates and one connection at a time (409 for a second),
//! and certificates made by `openssl` the way the SDK's sample script makes
//! them (RSA-2048 CA with CA:TRUE, server and client leaves signed by it,
//! 7 days, chains = leaf + CA).
//!
//! Every refusal is checked on the wire (503, no upgrade) and in the audit
//! log (its typed reason), and "token kept" is shown by using the same
//! token again: a consumed token would be refused 403 `replayed` before the
//! backend is tried.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use screengate_identity::Pin;
use screengate_tests::{Request, Ws, echo, handshake};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;

use super::{Case, EX_NOPERM, EX_USAGE, Fx, R, TempUser, case, is_root, port_and_pin, text};
use crate::proc::ServerProc;

const GROUP: &str = "sdk";

pub(super) const CASES: &[Case] = &[
    case!(Any "sdk_echo_over_wss_with_client_cert" => async echo_over_wss),
    case!(Any "sdk_echo_with_pkcs1_and_sec1_client_keys" => async other_key_formats),
    case!(Any "sdk_no_client_cert_503_client_cert_refused_token_kept" => async no_client_cert),
    case!(Any "sdk_impostor_from_another_ca_503_untrusted_then_same_token_works" => async impostor),
    case!(Any "sdk_wrong_spki_pin_503_untrusted" => async wrong_pin),
    case!(Any "sdk_wrong_server_name_503_untrusted" => async wrong_name),
    case!(Any "sdk_expired_cert_with_ca_503_expired" => async expired_ca),
    case!(Any "sdk_expired_cert_with_spki_pin_echoes" => async expired_pin),
    case!(Any "sdk_busy_refuse_503_backend_busy_token_kept" => async busy_refuse),
    case!(Any "sdk_busy_replace_oldest_first_gets_1000_second_echoes" => async busy_replace),
    case!(Any "sdk_one_token_raced_replaces_at_most_one_session" => async raced_replace),
    case!(Any "sdk_a_token_that_replaced_is_spent_even_if_its_client_hangs_up" => async hangup_replace),
    case!(Root "sdk_backend_of_another_uid_503_uid_mismatch" => async other_uid),
    case!(Any "sdk_client_key_0644_refused_by_check_and_serve" => async loose_key),
    case!(Any "sdk_client_key_symlink_refused_by_check_and_serve" => async linked_key),
    case!(Any "sdk_relay_capture_has_no_plaintext" => async relay_capture),
    case!(Any "sdk_ws_with_backend_tls_refused_at_config" => async ws_with_tls),
];

/// Cases that need root (a throwaway user runs the SDK).
const SOURCE: &str = include_str!("../assets/sdk_ipc_server.cpp");

// ---- the stand-in and its certificates --------------------------------------

static BUILT: Mutex<Option<PathBuf>> = Mutex::new(None);

/// The stand-in binary, built once per source text (cached in the target
/// dir) and copied where a throwaway user may run it.
fn sdk_bin(fx: &Fx) -> Result<PathBuf, String> {
    let mut built = BUILT.lock().map_err(|e| e.to_string())?;
    if let Some(p) = built.as_ref() {
        return Ok(p.clone());
    }
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    SOURCE.hash(&mut h);
    let cache = crate::proc::target_dir().join(format!("sdk-standin-{:016x}", h.finish()));
    let exe = cache.join("sdk_ipc_server");
    if !exe.exists() {
        std::fs::create_dir_all(&cache).map_err(|e| e.to_string())?;
        let src = cache.join("sdk_ipc_server.cpp");
        std::fs::write(&src, SOURCE).map_err(|e| e.to_string())?;
        let tmp = cache.join("sdk_ipc_server.tmp");
        let out = Command::new("g++")
            .args(["-std=c++17", "-O1", "-o"])
            .arg(&tmp)
            .arg(&src)
            .args(["-lssl", "-lcrypto", "-lpthread"])
            .output()
            .map_err(|e| format!("g++: {e} (cargo xtask ci installs it)"))?;
        if !out.status.success() {
            return Err(format!("g++ failed: {}", text(&out)));
        }
        std::fs::rename(&tmp, &exe).map_err(|e| e.to_string())?;
    }
    let to = fx.base.join("bin/sdk_ipc_server");
    std::fs::copy(&exe, &to).map_err(|e| format!("copy stand-in: {e}"))?;
    std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755))
        .map_err(|e| e.to_string())?;
    *built = Some(to.clone());
    Ok(to)
}

fn openssl(dir: &Path, args: &[&str]) -> R {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .map_err(|e| format!("openssl: {e}"))?;
    if !out.status.success() {
        return Err(format!("openssl {}: {}", args.join(" "), text(&out)));
    }
    Ok(())
}

/// One CA and its leaves, as the SDK's sample script makes them.
struct Pki {
    dir: PathBuf,
}

impl Pki {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// `expired`: the server leaf was valid for 7 days in January 2020.
    fn make(fx: &Fx, name: &str, expired: bool) -> Result<Self, String> {
        let dir = fx.base.join(format!("pki-{name}"));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| e.to_string())?;
        let w = |f: &str, t: &str| std::fs::write(dir.join(f), t).map_err(|e| e.to_string());
        openssl(
            &dir,
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-keyout",
                "ca.key",
                "-out",
                "ca.cert",
                "-days",
                "7",
                "-subj",
                &format!("/CN=SDK sample CA {name}"),
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
        )?;
        w(
            "server.ext",
            "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n",
        )?;
        w("client.ext", "extendedKeyUsage=clientAuth\n")?;
        for leaf in ["server", "client"] {
            let cn = if leaf == "server" {
                "/CN=localhost"
            } else {
                "/CN=screengate"
            };
            openssl(
                &dir,
                &[
                    "req",
                    "-new",
                    "-newkey",
                    "rsa:2048",
                    "-nodes",
                    "-keyout",
                    &format!("{leaf}.key"),
                    "-out",
                    &format!("{leaf}.csr"),
                    "-subj",
                    cn,
                ],
            )?;
            if leaf == "server" && expired {
                w("index.txt", "")?;
                w("serial", "1000\n")?;
                w(
                    "ca.cnf",
                    "[ca]\ndefault_ca = d\n[d]\ndatabase = index.txt\nserial = serial\n\
                     new_certs_dir = .\ndefault_md = sha256\npolicy = p\n\
                     x509_extensions = e\nunique_subject = no\n[p]\ncommonName = supplied\n\
                     [e]\nbasicConstraints = CA:FALSE\n\
                     subjectAltName = DNS:localhost,IP:127.0.0.1\n\
                     extendedKeyUsage = serverAuth\n",
                )?;
                openssl(
                    &dir,
                    &[
                        "ca",
                        "-batch",
                        "-notext",
                        "-config",
                        "ca.cnf",
                        "-cert",
                        "ca.cert",
                        "-keyfile",
                        "ca.key",
                        "-in",
                        "server.csr",
                        "-out",
                        "server.cert",
                        "-startdate",
                        "20200101000000Z",
                        "-enddate",
                        "20200108000000Z",
                    ],
                )?;
            } else {
                openssl(
                    &dir,
                    &[
                        "x509",
                        "-req",
                        "-in",
                        &format!("{leaf}.csr"),
                        "-CA",
                        "ca.cert",
                        "-CAkey",
                        "ca.key",
                        "-CAcreateserial",
                        "-days",
                        "7",
                        "-out",
                        &format!("{leaf}.cert"),
                        "-extfile",
                        &format!("{leaf}.ext"),
                    ],
                )?;
            }
            let chain = format!(
                "{}{}",
                std::fs::read_to_string(dir.join(format!("{leaf}.cert")))
                    .map_err(|e| e.to_string())?,
                std::fs::read_to_string(dir.join("ca.cert")).map_err(|e| e.to_string())?
            );
            w(&format!("{leaf}.chain"), &chain)?;
        }
        for f in ["ca.cert", "server.chain", "client.chain", "server.cert"] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o644))
                .map_err(|e| e.to_string())?;
        }
        for f in ["ca.key", "server.key", "client.key"] {
            std::fs::set_permissions(dir.join(f), std::fs::Permissions::from_mode(0o600))
                .map_err(|e| e.to_string())?;
        }
        // screengate's copy of the client key belongs to its service user
        let svc = fx.svc_uid();
        std::os::unix::fs::chown(dir.join("client.key"), Some(svc), None)
            .map_err(|e| format!("chown client.key: {e}"))?;
        Ok(Self { dir })
    }

    /// The SPKI pin of the server leaf.
    fn server_pin(&self) -> Result<Pin, String> {
        use rustls::pki_types::CertificateDer;
        use rustls::pki_types::pem::PemObject;
        let der = CertificateDer::from_pem_file(self.path("server.cert"))
            .map_err(|e| format!("server.cert: {e}"))?;
        screengate_identity::spki_pin_of_cert(&der).ok_or("server.cert: no SPKI".into())
    }
}

/// A running stand-in, killed by pid on drop.
struct Sdk {
    child: Child,
    port: u16,
    log: PathBuf,
}

impl Sdk {
    /// Starts the stand-in with `pki`'s server chain and key, trusting
    /// `trust`'s CA for client certificates, on `port` (0: any).
    fn start(
        fx: &Fx,
        name: &str,
        pki: &Pki,
        trust: &Pki,
        port: u16,
        user: Option<&TempUser>,
    ) -> Result<Self, String> {
        let bin = sdk_bin(fx)?;
        // not `sdk-*.log`: that is where the gates named `sdk-*` log
        let log = fx.base.join(format!("standin-{name}.log"));
        let logf = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let mut cmd = match user {
            Some(u) => u.command(&bin, false),
            None => Command::new(&bin),
        };
        cmd.arg(port.to_string())
            .arg(pki.path("server.chain"))
            .arg(pki.path("server.key"))
            .arg(trust.path("ca.cert"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(logf);
        let mut child = cmd.spawn().map_err(|e| format!("spawn stand-in: {e}"))?;
        let stdout = child.stdout.take().ok_or("no stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let mut me = Self {
            child,
            port: 0,
            log,
        };
        let line = rx
            .recv_timeout(Duration::from_secs(10))
            .map_err(|_| format!("stand-in did not listen within 10 s: {}", me.log_text()))?;
        me.port = line
            .trim()
            .strip_prefix("listening ")
            .and_then(|p| p.parse().ok())
            .ok_or_else(|| format!("stand-in said {line:?}: {}", me.log_text()))?;
        Ok(me)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Sdk {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- screengate in front of it ----------------------------------------------

/// A screengate whose config file is `toml` (written root's, 0644).
struct Gate {
    proc: ServerProc,
    addr: SocketAddr,
    pin: Pin,
}

fn write_config(fx: &Fx, name: &str, toml: &str) -> Result<PathBuf, String> {
    let path = fx.base.join(format!("{name}.toml"));
    std::fs::write(&path, toml).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    Ok(path)
}

async fn gate(fx: &Fx, name: &str, toml: &str) -> Result<Gate, String> {
    let cfg = write_config(fx, name, toml)?;
    let cfg = cfg.to_string_lossy().into_owned();
    let proc = fx.spawn_server(name, &["--config", &cfg])?;
    let (port, pin) = port_and_pin(&proc.control).await?;
    Ok(Gate {
        proc,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
        pin,
    })
}

/// The `[gateway]` and `[backend_tls]` text for `pki` on `port`.
fn tls_config(pki: &Pki, port: u16, gateway_extra: &str, tls_extra: &str, client: bool) -> String {
    let mut t = format!(
        "[gateway]\nbackend = \"wss://localhost:{port}/\"\n{gateway_extra}\n[backend_tls]\n"
    );
    if !tls_extra.contains("spki_pin") {
        t.push_str(&format!("ca = \"{}\"\n", pki.path("ca.cert").display()));
    }
    if client {
        t.push_str(&format!(
            "client_cert = \"{}\"\nclient_key = \"{}\"\n",
            pki.path("client.chain").display(),
            pki.path("client.key").display()
        ));
    }
    t.push_str(tls_extra);
    t.push('\n');
    t
}

impl Gate {
    async fn mint(&self, fx: &Fx) -> Result<String, String> {
        Ok(fx.mint_on(&self.proc.control).await?.0)
    }

    async fn try_open(&self, token: &str) -> Result<(u16, Option<Ws>), String> {
        let (resp, ws) = handshake(
            self.addr,
            self.pin,
            &Request::display(self.addr.port(), Some(token)),
        )
        .await?;
        Ok((resp.status, ws))
    }

    async fn open(&self, token: &str) -> Result<Ws, String> {
        match self.try_open(token).await? {
            (101, Some(ws)) => Ok(ws),
            (st, _) => Err(format!(
                "expected 101, got {st}; log: {}",
                tail(&self.proc.log_text())
            )),
        }
    }

    /// Expects a 503 and `reason` in the audit log (`count` times in all).
    async fn refused_503(&self, token: &str, reason: &str, count: usize) -> R {
        let (st, ws) = self.try_open(token).await?;
        if st != 503 || ws.is_some() {
            return Err(format!(
                "expected 503 {reason}, got {st}; log: {}",
                tail(&self.proc.log_text())
            ));
        }
        let deadline = Instant::now() + Duration::from_secs(3);
        loop {
            let n = rejected_count(&self.proc.log_text(), reason);
            if n >= count {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "503, but {n} (not {count}) rejections `{reason}` in the audit log: {}",
                    tail(&self.proc.log_text())
                ));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

fn rejected_count(log: &str, reason: &str) -> usize {
    log.lines()
        .filter(|l| l.contains("rejected") && l.contains(reason))
        .count()
}

fn tail(log: &str) -> String {
    let lines: Vec<&str> = log.lines().collect();
    lines[lines.len().saturating_sub(12)..].join("\n")
}

async fn echo_ok(ws: &mut Ws, msg: &str) -> R {
    let got = echo(ws, msg).await?;
    if got != msg {
        return Err(format!("echo {got:?}, sent {msg:?}"));
    }
    Ok(())
}

/// The token was not consumed: presenting it again is not `replayed`.
fn not_replayed(log: &str) -> R {
    if log.contains("replayed") {
        return Err("a token was consumed by a refused session (replayed in the log)".into());
    }
    Ok(())
}

// ---- the cases ---------------------------------------------------------------

async fn echo_over_wss(fx: &Fx) -> R {
    let pki = Pki::make(fx, "echo", false)?;
    let sdk = Sdk::start(fx, "echo", &pki, &pki, 0, None)?;
    let g = gate(fx, "sdk-echo", &tls_config(&pki, sdk.port, "", "", true)).await?;
    let t = g.mint(fx).await?;
    let mut ws = g.open(&t).await?;
    echo_ok(&mut ws, "hello SDK over wss").await?;
    let _ = ws.close(None).await;
    if !sdk.log_text().contains("sdk: open") {
        return Err(format!("the stand-in saw no session: {}", sdk.log_text()));
    }
    Ok(())
}

/// The same client certificate's key as PKCS#1 (`BEGIN RSA PRIVATE KEY`),
/// and an EC client certificate whose key is SEC1 (`BEGIN EC PRIVATE KEY`).
async fn other_key_formats(fx: &Fx) -> R {
    let pki = Pki::make(fx, "keyfmt", false)?;
    let d = &pki.dir;
    openssl(
        d,
        &[
            "rsa",
            "-in",
            "client.key",
            "-traditional",
            "-out",
            "pkcs1.key",
        ],
    )?;
    openssl(
        d,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "sec1.key",
        ],
    )?;
    openssl(
        d,
        &[
            "req",
            "-new",
            "-key",
            "sec1.key",
            "-out",
            "ec.csr",
            "-subj",
            "/CN=screengate-ec",
        ],
    )?;
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "ec.csr",
            "-CA",
            "ca.cert",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "7",
            "-out",
            "ec.cert",
            "-extfile",
            "client.ext",
        ],
    )?;
    let ec_chain = format!(
        "{}{}",
        std::fs::read_to_string(d.join("ec.cert")).map_err(|e| e.to_string())?,
        std::fs::read_to_string(d.join("ca.cert")).map_err(|e| e.to_string())?
    );
    std::fs::write(d.join("ec.chain"), ec_chain).map_err(|e| e.to_string())?;
    std::fs::set_permissions(d.join("ec.chain"), std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    for (key, head) in [
        ("pkcs1.key", "BEGIN RSA PRIVATE KEY"),
        ("sec1.key", "BEGIN EC PRIVATE KEY"),
    ] {
        let k = d.join(key);
        let text = std::fs::read_to_string(&k).map_err(|e| e.to_string())?;
        if !text.contains(head) {
            return Err(format!("{key} is not {head}"));
        }
        std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))
            .map_err(|e| e.to_string())?;
        std::os::unix::fs::chown(&k, Some(fx.svc_uid()), None).map_err(|e| e.to_string())?;
    }
    let sdk = Sdk::start(fx, "keyfmt", &pki, &pki, 0, None)?;
    let base = tls_config(&pki, sdk.port, "", "", true);
    let key = pki.path("client.key").display().to_string();
    let chain = pki.path("client.chain").display().to_string();
    for (name, key_file, chain_file) in [
        ("sdk-pkcs1", "pkcs1.key", "client.chain"),
        ("sdk-sec1", "sec1.key", "ec.chain"),
    ] {
        let toml = base
            .replace(&key, &pki.path(key_file).display().to_string())
            .replace(&chain, &pki.path(chain_file).display().to_string());
        let g = gate(fx, name, &toml).await?;
        let t = g.mint(fx).await?;
        let mut ws = g.open(&t).await.map_err(|e| format!("{key_file}: {e}"))?;
        echo_ok(&mut ws, &format!("client key {key_file}")).await?;
        let _ = ws.close(None).await;
        drop(ws);
        // the SDK takes one connection: let it see this one end
        let deadline = Instant::now() + Duration::from_secs(8);
        while sdk.log_text().matches("sdk: close").count() < if name == "sdk-pkcs1" { 1 } else { 2 }
        {
            if Instant::now() > deadline {
                return Err(format!("the SDK never saw {key_file}'s session end"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}

async fn no_client_cert(fx: &Fx) -> R {
    let pki = Pki::make(fx, "nocc", false)?;
    let sdk = Sdk::start(fx, "nocc", &pki, &pki, 0, None)?;
    let g = gate(fx, "sdk-nocc", &tls_config(&pki, sdk.port, "", "", false)).await?;
    let t = g.mint(fx).await?;
    g.refused_503(&t, "backend_client_cert_refused", 1).await?;
    // the same token again: still the backend's refusal, not `replayed`
    g.refused_503(&t, "backend_client_cert_refused", 2).await?;
    not_replayed(&g.proc.log_text())?;
    // and the stand-in never opened a session for it
    if sdk.log_text().contains("sdk: open") {
        return Err("the stand-in opened a session without a client certificate".into());
    }
    Ok(())
}

async fn impostor(fx: &Fx) -> R {
    let real = Pki::make(fx, "real", false)?;
    let other = Pki::make(fx, "other", false)?;
    // the impostor: a certificate from another CA, on the SDK's port
    let imp = Sdk::start(fx, "impostor", &other, &real, 0, None)?;
    let port = imp.port;
    let g = gate(fx, "sdk-impostor", &tls_config(&real, port, "", "", true)).await?;
    let t = g.mint(fx).await?;
    g.refused_503(&t, "backend_cert_untrusted", 1).await?;
    if imp.log_text().contains("sdk: open") {
        return Err("the impostor got a session".into());
    }
    drop(imp);
    let sdk = Sdk::start(fx, "real", &real, &real, port, None)?;
    let mut ws = g.open(&t).await?;
    echo_ok(&mut ws, "the same token, the real SDK").await?;
    let _ = ws.close(None).await;
    drop(sdk);
    not_replayed(&g.proc.log_text())
}

async fn wrong_pin(fx: &Fx) -> R {
    let pki = Pki::make(fx, "wpin", false)?;
    let other = Pki::make(fx, "wpin2", false)?;
    let sdk = Sdk::start(fx, "wpin", &pki, &pki, 0, None)?;
    let pin = other.server_pin()?;
    let g = gate(
        fx,
        "sdk-wpin",
        &tls_config(&pki, sdk.port, "", &format!("spki_pin = \"{pin}\""), true),
    )
    .await?;
    let t = g.mint(fx).await?;
    g.refused_503(&t, "backend_cert_untrusted", 1).await
}

async fn wrong_name(fx: &Fx) -> R {
    let pki = Pki::make(fx, "wname", false)?;
    let sdk = Sdk::start(fx, "wname", &pki, &pki, 0, None)?;
    let g = gate(
        fx,
        "sdk-wname",
        &tls_config(&pki, sdk.port, "", "server_name = \"sdk.example\"", true),
    )
    .await?;
    let t = g.mint(fx).await?;
    g.refused_503(&t, "backend_cert_untrusted", 1).await
}

async fn expired_ca(fx: &Fx) -> R {
    let pki = Pki::make(fx, "exp", true)?;
    let sdk = Sdk::start(fx, "exp", &pki, &pki, 0, None)?;
    let g = gate(fx, "sdk-exp", &tls_config(&pki, sdk.port, "", "", true)).await?;
    let t = g.mint(fx).await?;
    g.refused_503(&t, "backend_cert_expired", 1).await?;
    // one attempt per handshake, never a retry loop
    tokio::time::sleep(Duration::from_millis(500)).await;
    let n = rejected_count(&g.proc.log_text(), "backend_cert_expired");
    if n != 1 {
        return Err(format!("{n} expired rejections for one handshake"));
    }
    Ok(())
}

async fn expired_pin(fx: &Fx) -> R {
    let pki = Pki::make(fx, "exppin", true)?;
    let sdk = Sdk::start(fx, "exppin", &pki, &pki, 0, None)?;
    let pin = pki.server_pin()?;
    let g = gate(
        fx,
        "sdk-exppin",
        &tls_config(&pki, sdk.port, "", &format!("spki_pin = \"{pin}\""), true),
    )
    .await?;
    let t = g.mint(fx).await?;
    let mut ws = g.open(&t).await?;
    echo_ok(&mut ws, "pinned, dates ignored").await?;
    let _ = ws.close(None).await;
    Ok(())
}

/// Waits for a close frame (skipping pings and status messages).
async fn close_of(ws: &mut Ws) -> Result<(u16, String), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    loop {
        let m = tokio::time::timeout_at(deadline, ws.next())
            .await
            .map_err(|_| "no close within 6 s".to_owned())?
            .ok_or("ended without a close frame")?
            .map_err(|e| format!("receive: {e}"))?;
        if let Message::Close(c) = m {
            return Ok(c
                .map(|c| (u16::from(c.code), c.reason.as_str().to_owned()))
                .unwrap_or((1005, String::new())));
        }
    }
}

async fn busy_refuse(fx: &Fx) -> R {
    let pki = Pki::make(fx, "busy", false)?;
    let sdk = Sdk::start(fx, "busy", &pki, &pki, 0, None)?;
    let g = gate(
        fx,
        "sdk-busy",
        &tls_config(&pki, sdk.port, "when_full = \"refuse\"", "", true),
    )
    .await?;
    let t1 = g.mint(fx).await?;
    let mut first = g.open(&t1).await?;
    echo_ok(&mut first, "first display").await?;
    let t2 = g.mint(fx).await?;
    g.refused_503(&t2, "backend_busy", 1).await?;
    // the first is untouched
    echo_ok(&mut first, "first display, still here").await?;
    first.close(None).await.map_err(|e| format!("close: {e}"))?;
    drop(first);
    // once the SDK is free, the same second token works. 8 s: websocketpp
    // at times waits out its 5 s socket-shutdown timer after a session
    // ends (docs/sdk-integration.md, known issues).
    let closed_at = Instant::now();
    let deadline = closed_at + Duration::from_secs(8);
    let mut second = loop {
        match g.try_open(&t2).await? {
            (101, Some(ws)) => break ws,
            (503, _) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            (st, _) => {
                let log = g.proc.log_text();
                let closed: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("session_closed"))
                    .collect();
                return Err(format!(
                    "second token after the first closed: {st}; sdk: {}; sessions: {closed:?}",
                    sdk.log_text(),
                ));
            }
        }
    };
    println!(
        "      (the SDK took the second display {:?} after the first closed)",
        closed_at.elapsed()
    );
    echo_ok(&mut second, "second display").await?;
    let _ = second.close(None).await;
    not_replayed(&g.proc.log_text())
}

async fn busy_replace(fx: &Fx) -> R {
    let pki = Pki::make(fx, "repl", false)?;
    let sdk = Sdk::start(fx, "repl", &pki, &pki, 0, None)?;
    let g = gate(
        fx,
        "sdk-repl",
        &tls_config(&pki, sdk.port, "when_full = \"replace_oldest\"", "", true),
    )
    .await?;
    let t1 = g.mint(fx).await?;
    let mut first = g.open(&t1).await?;
    echo_ok(&mut first, "first display").await?;
    let t2 = g.mint(fx).await?;
    let (r2, r1) = tokio::join!(g.try_open(&t2), close_of(&mut first));
    let (code, reason) = r1?;
    if code != 1000 || reason != "replaced by a newer session" {
        return Err(format!("first display got close {code} {reason:?}"));
    }
    let mut second = match r2? {
        (101, Some(ws)) => ws,
        (st, _) => {
            return Err(format!(
                "second display got {st}; sdk: {}; log: {}",
                sdk.log_text(),
                tail(&g.proc.log_text())
            ));
        }
    };
    echo_ok(&mut second, "second display").await?;
    let _ = second.close(None).await;
    // the replaced session's audit line follows its teardown (up to 2 s)
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = g.proc.log_text();
        if log.contains("end=\"replaced\"") && log.contains("replacing_oldest") {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("no end=replaced in the audit log: {}", tail(&log)));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Copies of one valid token raced at a full server with `replace_oldest`:
/// only one handshake may be between verify and consume, so at most one
/// live session is replaced and exactly one copy gets in.
async fn raced_replace(fx: &Fx) -> R {
    const LIVE: usize = 3;
    let g = gate(
        fx,
        "race-repl",
        &format!(
            "[gateway]\nbackend = \"demo\"\nmax_sessions = {LIVE}\nwhen_full = \"replace_oldest\"\n"
        ),
    )
    .await?;
    let mut live = Vec::new();
    for i in 0..LIVE {
        let t = g.mint(fx).await?;
        let mut ws = g.open(&t).await?;
        echo_ok(&mut ws, &format!("live {i}")).await?;
        live.push(ws);
    }
    let t = g.mint(fx).await?;
    // TLS first, then every copy's request at once: the copies meet the
    // guard together, as an attacker's would
    let mut conns = Vec::new();
    for _ in 0..2 * LIVE {
        conns.push(screengate_tests::tls_connect(g.addr, g.pin).await?);
    }
    let req = Request::display(g.addr.port(), Some(&t)).to_bytes();
    let racers = conns.into_iter().map(|mut c| {
        let req = req.as_slice();
        async move {
            c.write_all(req).await.map_err(|e| e.to_string())?;
            let mut head = [0u8; 12];
            tokio::time::timeout(Duration::from_secs(10), c.read_exact(&mut head))
                .await
                .map_err(|_| "no response head within 10 s".to_owned())?
                .map_err(|e| e.to_string())?;
            Ok::<_, String>((head.starts_with(b"HTTP/1.1 101"), c))
        }
    });
    let results = futures_util::future::join_all(racers).await;
    let mut admitted = Vec::new();
    for r in results {
        let (ok, c) = r?;
        if ok {
            admitted.push(c);
        }
    }
    if admitted.len() != 1 {
        return Err(format!("{} copies of one token got in", admitted.len()));
    }
    // how many of the live sessions were told to go
    let mut closed = 0;
    for ws in &mut live {
        if tokio::time::timeout(Duration::from_millis(1500), close_of(ws))
            .await
            .is_ok()
        {
            closed += 1;
        }
    }
    let log = g.proc.log_text();
    let replacing = log
        .lines()
        .filter(|l| l.contains("replacing_oldest"))
        .count();
    if closed != 1 || replacing != 1 {
        return Err(format!(
            "one token replaced {closed} live sessions ({replacing} replacing_oldest events); log: {}",
            tail(&log)
        ));
    }
    if !log.contains("token_in_flight") && !log.contains("replayed") {
        return Err(format!("the losing copies left no reason: {}", tail(&log)));
    }
    Ok(())
}

/// The review's cancellation attack: a handshake that replaced a session
/// and then hung up (its handler dropped while waiting for the slot) must
/// not leave its token usable to replace the next session too.
async fn hangup_replace(fx: &Fx) -> R {
    // the SDK (one connection at a time): after the replacement the
    // newcomer retries its 409s until the SDK lets the old one go, and
    // hangs up inside that window
    let pki = Pki::make(fx, "hangup", false)?;
    let sdk = Sdk::start(fx, "hangup", &pki, &pki, 0, None)?;
    let g = gate(
        fx,
        "sdk-hangup",
        &tls_config(&pki, sdk.port, "when_full = \"replace_oldest\"", "", true),
    )
    .await?;
    let t0 = g.mint(fx).await?;
    let mut victim = g.open(&t0).await?;
    echo_ok(&mut victim, "victim").await?;
    let t = g.mint(fx).await?;
    let req = Request::display(g.addr.port(), Some(&t)).to_bytes();
    let mut c = screengate_tests::tls_connect(g.addr, g.pin).await?;
    c.write_all(&req).await.map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(3);
    while !g.proc.log_text().contains("replacing_oldest") {
        if Instant::now() > deadline {
            return Err(format!("no replacement: {}", tail(&g.proc.log_text())));
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    drop(c); // hang up inside the retry window
    drop(victim);
    // the real display's next session (the SDK may hold its slot for its
    // 5 s shutdown timer: retried like the page does)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t2 = g.mint(fx).await?;
    let deadline = Instant::now() + Duration::from_secs(12);
    let mut display = loop {
        match g.try_open(&t2).await? {
            (101, Some(ws)) => break ws,
            (st, _) if Instant::now() > deadline => {
                return Err(format!(
                    "the display got {st}: {}",
                    tail(&g.proc.log_text())
                ));
            }
            _ => tokio::time::sleep(Duration::from_millis(300)).await,
        }
    };
    echo_ok(&mut display, "display").await?;
    // the same token again: spent, so it replaces nobody
    let (st, ws) = g.try_open(&t).await?;
    if st == 101 || ws.is_some() {
        return Err("the token that already replaced a session got in again".into());
    }
    if tokio::time::timeout(Duration::from_millis(1500), close_of(&mut display))
        .await
        .is_ok()
    {
        return Err(format!(
            "a token that already replaced a session replaced the display's too (status {st}); log: {}",
            tail(&g.proc.log_text())
        ));
    }
    echo_ok(&mut display, "display still here").await?;
    let log = g.proc.log_text();
    drop(sdk);
    let replacing = log
        .lines()
        .filter(|l| l.contains("replacing_oldest"))
        .count();
    if replacing != 1 || !log.contains("replayed") {
        return Err(format!(
            "{replacing} replacements, status {st} (want 1 and replayed); log: {}",
            tail(&log)
        ));
    }
    Ok(())
}

async fn other_uid(fx: &Fx) -> R {
    if !is_root() {
        return Err("needs root".into());
    }
    let u = TempUser::create("sdk")?;
    let pki = Pki::make(fx, "uid", false)?;
    std::os::unix::fs::chown(pki.path("server.key"), Some(u.uid), None)
        .map_err(|e| e.to_string())?;
    let sdk = Sdk::start(fx, "uid", &pki, &pki, 0, Some(&u))?;
    // backend_uid names the service user's uid: the stand-in is another's
    let expected = fx.svc_uid();
    if expected == u.uid {
        return Err("the throwaway uid equals the expected one".into());
    }
    let g = gate(
        fx,
        "sdk-uid",
        &tls_config(
            &pki,
            sdk.port,
            &format!("backend_uid = {expected}"),
            "",
            true,
        ),
    )
    .await?;
    let t = g.mint(fx).await?;
    g.refused_503(&t, "backend_uid_mismatch", 1).await?;
    let log = g.proc.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("backend_uid_mismatch") && l.contains("rejected"))
        .unwrap_or_default();
    if !line.contains(&format!("backend_uid_expected={expected}"))
        || !line.contains(&format!("backend_uid_actual={}", u.uid))
    {
        return Err(format!("the audit line lacks both uids: {line}"));
    }
    if sdk.log_text().contains("sdk: open") {
        return Err("the stand-in of another uid got a session".into());
    }
    // the right uid passes
    let ok = gate(
        fx,
        "sdk-uid-ok",
        &tls_config(
            &pki,
            sdk.port,
            &format!("backend_uid = {}", u.uid),
            "",
            true,
        ),
    )
    .await?;
    let t = ok.mint(fx).await?;
    let mut ws = ok.open(&t).await?;
    echo_ok(&mut ws, "the SDK's own uid").await?;
    let _ = ws.close(None).await;
    drop((g, ok, sdk));
    Ok(())
}

/// `check` and `serve` both refuse `toml`, naming `needle` (the file) and
/// `what`; `check` exits `code`.
async fn refused_by_check_and_serve(
    fx: &Fx,
    name: &str,
    toml: &str,
    needle: &str,
    what: &str,
    code: i32,
) -> R {
    let cfg = write_config(fx, name, toml)?;
    let state = fx.base.join(format!("state-{name}"));
    let mut cmd = Command::new(&fx.bin);
    cmd.arg("check")
        .arg("--config")
        .arg(&cfg)
        .arg("--state-dir")
        .arg(&state);
    if let Some(u) = fx.svc.as_ref() {
        cmd.args(["--user", &u.user]);
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    let t = text(&out);
    if out.status.code() != Some(code) || !t.contains(needle) || !t.contains(what) {
        return Err(format!("check: {:?} (want {code}): {t}", out.status.code()));
    }
    let cfg_s = cfg.to_string_lossy().into_owned();
    match fx.spawn_server(name, &["--config", &cfg_s]) {
        Ok(_) => Err("serve started".into()),
        Err(e) if e.contains(needle) && e.contains(what) => Ok(()),
        Err(e) => Err(format!("serve refused, but not naming {needle}: {e}")),
    }
}

async fn loose_key(fx: &Fx) -> R {
    let pki = Pki::make(fx, "loose", false)?;
    let key = pki.path("client.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))
        .map_err(|e| e.to_string())?;
    let toml = tls_config(&pki, 9, "", "", true);
    refused_by_check_and_serve(
        fx,
        "sdk-loose",
        &toml,
        &key.display().to_string(),
        "0644",
        EX_NOPERM,
    )
    .await
}

async fn linked_key(fx: &Fx) -> R {
    let pki = Pki::make(fx, "link", false)?;
    let real = pki.path("client.key");
    let link = pki.path("client-link.key");
    std::os::unix::fs::symlink(&real, &link).map_err(|e| e.to_string())?;
    let toml = tls_config(&pki, 9, "", "", true)
        .replace(&real.display().to_string(), &link.display().to_string());
    refused_by_check_and_serve(
        fx,
        "sdk-link",
        &toml,
        &link.display().to_string(),
        "symbolic link",
        EX_NOPERM,
    )
    .await
}

async fn ws_with_tls(fx: &Fx) -> R {
    let pki = Pki::make(fx, "wsplain", false)?;
    let toml = tls_config(&pki, 9, "", "", true).replace("wss://", "ws://");
    refused_by_check_and_serve(
        fx,
        "sdk-wsplain",
        &toml,
        "backend_tls",
        "use wss://",
        EX_USAGE,
    )
    .await
}

/// Copies `from` to `to` (each read within 30 s), appending every byte to
/// `keep`, then shuts `to` down.
async fn copy_keeping(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    keep: Arc<Mutex<Vec<u8>>>,
) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(Ok(n)) = tokio::time::timeout(Duration::from_secs(30), from.read(&mut buf)).await {
        if n == 0 {
            break;
        }
        if let Ok(mut s) = keep.lock() {
            s.extend_from_slice(&buf[..n]);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
    }
    let _ = to.shutdown().await;
}

/// A TCP relay between screengate and the stand-in that keeps every byte.
async fn relay(to: u16) -> Result<(u16, Arc<Mutex<Vec<u8>>>, tokio::task::JoinHandle<()>), String> {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .map_err(|e| e.to_string())?;
    let port = l.local_addr().map_err(|e| e.to_string())?.port();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let keep = seen.clone();
    let task = tokio::spawn(async move {
        while let Ok((a, _)) = l.accept().await {
            let Ok(b) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await else {
                continue;
            };
            let keep = keep.clone();
            tokio::spawn(async move {
                let (ar, aw) = a.into_split();
                let (br, bw) = b.into_split();
                tokio::join!(
                    copy_keeping(ar, bw, keep.clone()),
                    copy_keeping(br, aw, keep)
                );
            });
        }
    });
    Ok((port, seen, task))
}

async fn relay_capture(fx: &Fx) -> R {
    let pki = Pki::make(fx, "relay", false)?;
    let sdk = Sdk::start(fx, "relay", &pki, &pki, 0, None)?;
    let (port, seen, task) = relay(sdk.port).await?;
    let g = gate(fx, "sdk-relay", &tls_config(&pki, port, "", "", true)).await?;
    let t = g.mint(fx).await?;
    let mut ws = g.open(&t).await?;
    let canary = format!("bank balance canary {}", rand::random::<u64>());
    echo_ok(&mut ws, &canary).await?;
    ws.send(Message::binary(canary.clone().into_bytes()))
        .await
        .map_err(|e| e.to_string())?;
    let _ = ws.close(None).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    task.abort();
    let bytes = seen.lock().map_err(|e| e.to_string())?.clone();
    if bytes.len() < 1000 {
        return Err(format!("the relay saw only {} bytes", bytes.len()));
    }
    if bytes.first() != Some(&0x16) {
        return Err("the first byte through the relay is not a TLS handshake record".into());
    }
    let hay = String::from_utf8_lossy(&bytes);
    for needle in [
        canary.as_str(),
        "canary",
        "Upgrade: websocket",
        "Sec-WebSocket",
    ] {
        if hay.contains(needle) {
            return Err(format!(
                "plaintext {needle:?} between screengate and the SDK"
            ));
        }
    }
    Ok(())
}
