//! e2e cases for the native Unix-socket listener and `screengate-client`:
//! socket modes and owner, the uid allow-list, TLS off / server / mutual
//! with the right and the wrong client, and no plaintext on the socket
//! under TLS (read through a recording relay).

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use super::{Case, Fx, R, TempUser, case, run_cmd as run, text};
use crate::proc::ServerProc;

const GROUP: &str = "native";

pub(super) const CASES: &[Case] = &[
    case!(Root "native_socket_modes_and_owner" => modes),
    case!(Root "native_disallowed_uid_refused" => disallowed),
    case!(Root "native_tls_off_requires_a_native_token" => tls_off),
    case!(Root "native_tls_server_pinned_and_plaintext_client_refused" => tls_server),
    case!(Root "native_mutual_tls_right_cert_without_token" => mutual_ok),
    case!(Root "native_mutual_tls_no_cert_refused" => mutual_no_cert),
    case!(Root "native_mutual_tls_other_device_cert_refused" => mutual_other_device),
    case!(Root "native_mutual_tls_ca_signed_cert_refused" => mutual_ca),
    case!(Root "native_mutual_tls_expired_copy_of_the_right_key_accepted" => mutual_expired),
    case!(Root "native_tls_server_traffic_has_no_plaintext" => async ciphertext),
];

struct Native {
    server: ServerProc,
    socket: PathBuf,
    state: PathBuf,
    pin: String,
}

fn native_server(fx: &Fx, name: &str, tls: &str, config: Option<&str>) -> Result<Native, String> {
    let socket = fx.base.join("run").join(name).join("n.sock");
    let sock = socket.display().to_string();
    let mut extra = vec![
        "--native-socket",
        sock.as_str(),
        "--native-tls",
        tls,
        "--native-allow-uid",
        "0",
    ];
    let cfg_path = fx.base.join(format!("{name}.toml"));
    let cfg = cfg_path.display().to_string();
    if let Some(text) = config {
        std::fs::write(&cfg_path, text).map_err(|e| e.to_string())?;
        extra.push("--config");
        extra.push(&cfg);
    }
    let server = fx.spawn_server(name, &extra)?;
    let state = fx.base.join(format!("state-{name}"));
    let pin = run(Command::new(&fx.bin)
        .args(["pin", "--state-dir"])
        .arg(&state))?;
    let pin = String::from_utf8_lossy(&pin.stdout).trim().to_owned();
    Ok(Native {
        server,
        socket,
        state,
        pin,
    })
}

/// Runs `screengate-client --once MSG` with `args`; Ok(stdout) when it got
/// the echo back.
fn client(fx: &Fx, socket: &Path, args: &[&str], msg: &str) -> Result<String, String> {
    let o = run(Command::new(fx.base.join("bin/screengate-client"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .args(["--once", msg]))?;
    if o.status.success() && String::from_utf8_lossy(&o.stdout).trim() == msg {
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    } else {
        Err(text(&o))
    }
}

fn expect_refused(r: Result<String, String>, what: &str, needle: &str) -> R {
    match r {
        Ok(_) => Err(format!("{what}: was accepted")),
        Err(e) if e.contains(needle) => Ok(()),
        Err(e) => Err(format!(
            "{what}: refused, but not as expected ({needle}): {e}"
        )),
    }
}

fn svc(fx: &Fx) -> Result<&TempUser, String> {
    fx.svc
        .as_ref()
        .ok_or_else(|| "needs the root-only service user".to_owned())
}

fn modes(fx: &Fx) -> R {
    let u = svc(fx)?;
    let plain = native_server(fx, "n-mode", "off", None)?;
    let m = std::fs::metadata(&plain.socket).map_err(|e| e.to_string())?;
    if m.permissions().mode() & 0o777 != 0o600 || m.uid() != u.uid {
        return Err(format!(
            "no group: mode {:o} uid {}",
            m.permissions().mode() & 0o777,
            m.uid()
        ));
    }
    let grouped = native_server(
        fx,
        "n-mode-g",
        "off",
        Some(&format!("[native]\ngroup = \"{}\"\n", u.group)),
    )?;
    let m = std::fs::metadata(&grouped.socket).map_err(|e| e.to_string())?;
    if m.permissions().mode() & 0o777 != 0o660 || m.uid() != u.uid || m.gid() != u.gid {
        return Err(format!(
            "group: mode {:o} uid {} gid {}",
            m.permissions().mode() & 0o777,
            m.uid(),
            m.gid()
        ));
    }
    Ok(())
}

fn disallowed(fx: &Fx) -> R {
    let u = svc(fx)?;
    // A user in the socket's group may connect, but its uid is not allowed.
    let x = TempUser::create("n")?;
    run(Command::new("usermod").args(["-aG", &u.group, &x.user]))?;
    let n = native_server(
        fx,
        "n-uid",
        "off",
        Some(&format!("[native]\ngroup = \"{}\"\n", u.group)),
    )?;
    let sock = n.socket.display().to_string();
    let control = n.server.control.display().to_string();
    let o = run(x
        .command(fx.base.join("bin/screengate-client"), true)
        .args(["--socket", &sock, "--tls", "off", "--once", "hi"]))?;
    if o.status.success() {
        return Err(format!("a disallowed uid got through: {}", text(&o)));
    }
    if !n.server.log_text().contains("uid_not_allowed") {
        return Err("no audit event for the disallowed uid".into());
    }
    // positive control through the same socket: root is allowed
    client(
        fx,
        &n.socket,
        &["--tls", "off", "--control", &control],
        "allowed",
    )
    .map(|_| ())
}

fn tls_off(fx: &Fx) -> R {
    let n = native_server(fx, "n-off", "off", None)?;
    let control = n.server.control.display().to_string();
    client(
        fx,
        &n.socket,
        &["--tls", "off", "--control", &control],
        "native hello",
    )
    .map_err(|e| format!("with token: {e}"))?;
    expect_refused(
        client(fx, &n.socket, &["--tls", "off"], "no token"),
        "without token",
        "HTTP 403",
    )
}

fn tls_server(fx: &Fx) -> R {
    let n = native_server(fx, "n-srv", "server", None)?;
    let control = n.server.control.display().to_string();
    client(
        fx,
        &n.socket,
        &[
            "--tls",
            "server",
            "--server-pin",
            &n.pin,
            "--control",
            &control,
        ],
        "over tls",
    )
    .map_err(|e| format!("right pin: {e}"))?;
    let wrong = "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA=";
    expect_refused(
        client(
            fx,
            &n.socket,
            &[
                "--tls",
                "server",
                "--server-pin",
                wrong,
                "--control",
                &control,
            ],
            "x",
        ),
        "wrong pin",
        "TLS handshake",
    )?;
    expect_refused(
        client(fx, &n.socket, &["--tls", "off", "--control", &control], "x"),
        "plaintext client",
        "WebSocket",
    )?;
    expect_refused(
        client(
            fx,
            &n.socket,
            &["--tls", "server", "--server-pin", &n.pin],
            "x",
        ),
        "no token",
        "HTTP 403",
    )
}

fn mutual_args<'a>(n: &'a Native, cert: &'a str, key: &'a str) -> Vec<&'a str> {
    vec![
        "--tls",
        "mutual",
        "--server-pin",
        &n.pin,
        "--cert",
        cert,
        "--key",
        key,
    ]
}

fn mutual_ok(fx: &Fx) -> R {
    let n = native_server(fx, "n-mtls", "mutual", None)?;
    let (c, k) = (
        n.state.join("current/client.crt").display().to_string(),
        n.state.join("current/client.key").display().to_string(),
    );
    client(fx, &n.socket, &mutual_args(&n, &c, &k), "mutual hello").map(|_| ())?;
    if !n.server.log_text().contains("client-cert") {
        return Err(
            "the accepted session was not recorded as client-certificate authenticated".into(),
        );
    }
    Ok(())
}

fn mutual_no_cert(fx: &Fx) -> R {
    let n = native_server(fx, "n-mtls-none", "mutual", None)?;
    expect_refused(
        client(
            fx,
            &n.socket,
            &["--tls", "server", "--server-pin", &n.pin],
            "x",
        ),
        "no client cert",
        "",
    )?;
    if !n.server.log_text().contains("peer sent no certificates") {
        return Err("no audit of the missing client certificate".into());
    }
    Ok(())
}

fn mutual_other_device(fx: &Fx) -> R {
    let n = native_server(fx, "n-mtls-other", "mutual", None)?;
    let other = fx.base.join("state-other-device");
    let u = svc(fx)?;
    let o = run(Command::new(&fx.bin)
        .args(["init", "--user", &u.user, "--state-dir"])
        .arg(&other))?;
    if !o.status.success() {
        return Err(text(&o));
    }
    let (c, k) = (
        other.join("current/client.crt").display().to_string(),
        other.join("current/client.key").display().to_string(),
    );
    expect_refused(
        client(fx, &n.socket, &mutual_args(&n, &c, &k), "x"),
        "another device's client cert",
        "",
    )?;
    // the server's own certificate (right device, wrong key) is refused too
    let (c, k) = (
        n.state.join("current/server.crt").display().to_string(),
        n.state.join("current/server.key").display().to_string(),
    );
    expect_refused(
        client(fx, &n.socket, &mutual_args(&n, &c, &k), "x"),
        "the server's certificate as a client cert",
        "",
    )
}

fn write_pair(
    dir: &Path,
    name: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<(String, String), String> {
    let c = dir.join(format!("{name}.crt"));
    let k = dir.join(format!("{name}.key"));
    std::fs::write(&c, cert_pem).map_err(|e| e.to_string())?;
    std::fs::write(&k, key_pem).map_err(|e| e.to_string())?;
    std::fs::set_permissions(&k, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| e.to_string())?;
    Ok((c.display().to_string(), k.display().to_string()))
}

fn mutual_ca(fx: &Fx) -> R {
    use rcgen::{
        BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
        KeyUsagePurpose,
    };
    let n = native_server(fx, "n-mtls-ca", "mutual", None)?;
    let e = |e: rcgen::Error| e.to_string();
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let issuer = Issuer::new(ca, ca_key);
    let leaf_key = KeyPair::generate().map_err(e)?;
    let mut leaf = CertificateParams::new(vec!["localhost".to_owned()]).map_err(e)?;
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let cert = leaf.signed_by(&leaf_key, &issuer).map_err(e)?;
    let dir = fx.base.join("certs-ca");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (c, k) = write_pair(&dir, "leaf", &cert.pem(), &leaf_key.serialize_pem())?;
    expect_refused(
        client(fx, &n.socket, &mutual_args(&n, &c, &k), "x"),
        "CA-signed client cert",
        "",
    )
}

fn mutual_expired(fx: &Fx) -> R {
    use rcgen::{CertificateParams, KeyPair};
    // Decision (docs/native-clients.md): the pinned key is the identity, so
    // a certificate for the right key outside its dates is accepted, as a
    // device with no clock must be able to connect. Whoever can make such a
    // certificate holds the key already.
    let n = native_server(fx, "n-mtls-exp", "mutual", None)?;
    let key_pem =
        std::fs::read_to_string(n.state.join("current/client.key")).map_err(|e| e.to_string())?;
    let key = KeyPair::from_pem(&key_pem).map_err(|e| e.to_string())?;
    let mut p = CertificateParams::new(vec!["localhost".to_owned()]).map_err(|e| e.to_string())?;
    p.not_before = rcgen::date_time_ymd(2000, 1, 1);
    p.not_after = rcgen::date_time_ymd(2001, 1, 1);
    let cert = p.self_signed(&key).map_err(|e| e.to_string())?;
    let dir = fx.base.join("certs-expired");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let (c, k) = write_pair(&dir, "expired", &cert.pem(), &key_pem)?;
    client(
        fx,
        &n.socket,
        &mutual_args(&n, &c, &k),
        "expired but pinned",
    )
    .map(|_| ())
}

/// A relay socket that forwards to `target` and records every byte both ways.
async fn relay(
    listen: PathBuf,
    target: PathBuf,
    record: Arc<Mutex<Vec<u8>>>,
) -> Result<tokio::task::JoinHandle<()>, String> {
    let l = tokio::net::UnixListener::bind(&listen).map_err(|e| e.to_string())?;
    Ok(tokio::spawn(async move {
        // bounded: a few connections, then it stops by itself
        for _ in 0..4 {
            let Ok(Ok((mut a, _))) =
                tokio::time::timeout(std::time::Duration::from_secs(20), l.accept()).await
            else {
                return;
            };
            let Ok(mut b) = tokio::net::UnixStream::connect(&target).await else {
                return;
            };
            let rec = record.clone();
            tokio::spawn(async move {
                let (ar, aw) = a.split();
                let (br, bw) = b.split();
                tokio::join!(copy_recording(ar, bw, &rec), copy_recording(br, aw, &rec));
            });
        }
    }))
}

/// Copies `r` to `w` until EOF, appending every byte to `rec`.
async fn copy_recording<Rd, Wr>(mut r: Rd, mut w: Wr, rec: &Mutex<Vec<u8>>)
where
    Rd: tokio::io::AsyncRead + Unpin,
    Wr: tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = [0u8; 8192];
    while let Ok(n) = r.read(&mut buf).await {
        let Some(chunk) = buf.get(..n).filter(|c| !c.is_empty()) else {
            break;
        };
        if let Ok(mut v) = rec.lock() {
            v.extend_from_slice(chunk);
        }
        if w.write_all(chunk).await.is_err() {
            break;
        }
    }
}

async fn through_relay(fx: &Fx, n: &Native, tls: &str, tag: &str) -> Result<Vec<u8>, String> {
    let record = Arc::new(Mutex::new(Vec::new()));
    let listen = fx.base.join(format!("relay-{tag}.sock"));
    let _ = std::fs::remove_file(&listen);
    let task = relay(listen.clone(), n.socket.clone(), record.clone()).await?;
    let control = n.server.control.display().to_string();
    let mut args = vec!["--tls", tls, "--control", control.as_str()];
    if tls != "off" {
        args.extend(["--server-pin", n.pin.as_str()]);
    }
    let msg = "SECRET-BANK-BALANCE-4242";
    let fx_bin = fx.base.join("bin/screengate-client");
    let out = tokio::task::spawn_blocking({
        let listen = listen.clone();
        let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        move || {
            Command::new(fx_bin)
                .arg("--socket")
                .arg(listen)
                .args(args)
                .args(["--once", msg])
                .output()
        }
    })
    .await
    .map_err(|e| e.to_string())?
    .map_err(|e| e.to_string())?;
    task.abort();
    if !out.status.success() || String::from_utf8_lossy(&out.stdout).trim() != msg {
        return Err(format!("client through the relay failed: {}", text(&out)));
    }
    let bytes = record.lock().map_err(|e| e.to_string())?.clone();
    Ok(bytes)
}

async fn ciphertext(fx: &Fx) -> R {
    let msg = b"SECRET-BANK-BALANCE-4242";
    let contains = |hay: &[u8]| hay.windows(msg.len()).any(|w| w == msg);
    // Self-check: with TLS off the relay does see the message in the clear.
    let off = native_server(fx, "n-relay-off", "off", None)?;
    let plain = through_relay(fx, &off, "off", "off").await?;
    if !contains(&plain) {
        return Err(
            "self-check failed: the relay did not see the plaintext message with TLS off".into(),
        );
    }
    let on = native_server(fx, "n-relay-tls", "server", None)?;
    let cipher = through_relay(fx, &on, "server", "tls").await?;
    if cipher.len() < 200 {
        return Err(format!("the relay recorded only {} bytes", cipher.len()));
    }
    if contains(&cipher) {
        return Err("the message crossed the socket in plaintext under TLS".into());
    }
    println!(
        "      (relay saw {} bytes with TLS, the message absent; {} bytes without TLS, the message present)",
        cipher.len(),
        plain.len()
    );
    Ok(())
}
