//! Finding and starting Chromium: the flags that make it trust exactly the
//! device certificate, talk CDP only over fds 3/4, stay off the network,
//! and the extra arguments we refuse because they would undo that.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use command_fds::{CommandFdExt, FdMapping};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

/// Chromium arguments a caller may not add: each would reopen what the
/// launcher closes (a debug port any local process could drive, a log of
/// network traffic, disabled origin or certificate checks, a second profile,
/// code injected through extensions).
pub const REFUSED_ARGS: &[&str] = &[
    "--remote-debugging-port",
    "--remote-debugging-address",
    "--remote-allow-origins",
    "--log-net-log",
    "--net-log-capture-mode",
    "--disable-web-security",
    "--ignore-certificate-errors",
    "--ignore-certificate-errors-spki-list",
    "--user-data-dir",
    "--load-extension",
    "--disable-extensions-except",
    "--auto-open-devtools-for-tabs",
    "--remote-debugging-pipe",
];

/// Where Chromium usually lives.
const CANDIDATES: &[&str] = &[
    "/usr/bin/chromium",
    "/usr/bin/chromium-browser",
    "/usr/lib/chromium/chromium",
    "/usr/bin/google-chrome",
    "/snap/bin/chromium",
];

/// The command that installs Chromium on Debian.
pub const INSTALL_HINT: &str = "apt-get install chromium";

/// Why an extra argument was refused.
pub fn refused(arg: &str) -> Option<&'static str> {
    let name = arg.split('=').next().unwrap_or(arg);
    REFUSED_ARGS.iter().find(|r| name == **r).copied()
}

/// The Chromium binary: `explicit`, else the first usual path that exists.
pub fn find(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return p.is_file().then(|| p.to_owned());
    }
    CANDIDATES.iter().map(PathBuf::from).find(|p| p.is_file())
}

/// How to start the browser.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The binary.
    pub binary: PathBuf,
    /// A fresh private profile directory (0700).
    pub profile: PathBuf,
    /// SPKI pin of the gateway certificate.
    pub spki_pin: String,
    /// Headless mode.
    pub headless: bool,
    /// Kiosk window.
    pub kiosk: bool,
    /// `W,H`.
    pub window_size: String,
    /// Vetted extra arguments.
    pub extra: Vec<String>,
}

/// The neutral first page: nothing loads from the network until the token
/// header and the origin lock are in place.
pub const NEUTRAL_PAGE: &str = "data:text/html,<title>screengate</title>";

impl Launch {
    /// The full argument list. The token is never among them.
    pub fn args(&self) -> Vec<String> {
        let mut a = vec![
            "--remote-debugging-pipe".to_owned(),
            format!("--user-data-dir={}", self.profile.display()),
            format!("--ignore-certificate-errors-spki-list={}", self.spki_pin),
            "--no-first-run".to_owned(),
            "--no-default-browser-check".to_owned(),
            "--disable-background-networking".to_owned(),
            "--disable-component-update".to_owned(),
            "--disable-sync".to_owned(),
            "--disable-default-apps".to_owned(),
            "--disable-extensions".to_owned(),
            "--disable-quic".to_owned(),
            "--password-store=basic".to_owned(),
            "--use-mock-keychain".to_owned(),
            "--host-resolver-rules=MAP * ~NOTFOUND , EXCLUDE localhost , EXCLUDE 127.0.0.1"
                .to_owned(),
            format!("--window-size={}", self.window_size),
        ];
        if self.headless {
            a.push("--headless".to_owned());
            a.push("--disable-gpu".to_owned());
        }
        a.extend(self.extra.iter().cloned());
        if self.kiosk {
            a.push("--kiosk".to_owned());
        }
        if self.headless {
            a.push(NEUTRAL_PAGE.to_owned());
        } else {
            a.push(format!("--app={NEUTRAL_PAGE}"));
        }
        a
    }
}

/// A running browser and our ends of its CDP pipe.
#[derive(Debug)]
pub struct Browser {
    /// The process (its own process group).
    pub child: Child,
    /// We write commands here (Chromium's fd 3).
    pub to_browser: pipe::Sender,
    /// We read replies and events here (Chromium's fd 4).
    pub from_browser: pipe::Receiver,
}

/// Spawns Chromium with fds 3 (commands in) and 4 (messages out) mapped to
/// fresh pipes, in its own process group so the whole tree can be stopped.
pub fn spawn(launch: &Launch) -> std::io::Result<Browser> {
    let (cmd_read, cmd_write) = std::io::pipe()?;
    let (msg_read, msg_write) = std::io::pipe()?;
    let mut cmd = Command::new(&launch.binary);
    cmd.args(launch.args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .process_group(0)
        .kill_on_drop(true);
    cmd.fd_mappings(vec![
        FdMapping {
            parent_fd: OwnedFd::from(cmd_read),
            child_fd: 3,
        },
        FdMapping {
            parent_fd: OwnedFd::from(msg_write),
            child_fd: 4,
        },
    ])
    .map_err(|e| std::io::Error::other(e.to_string()))?;
    let child = cmd.spawn()?;
    // The child's ends were moved into the command and are closed here when
    // `cmd` drops, so EOF on our read end means the browser is gone.
    drop(cmd);
    let to_browser = pipe::Sender::from_owned_fd(OwnedFd::from(cmd_write))?;
    let from_browser = pipe::Receiver::from_owned_fd(OwnedFd::from(msg_read))?;
    Ok(Browser {
        child,
        to_browser,
        from_browser,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn launch() -> Launch {
        Launch {
            binary: "/usr/bin/chromium".into(),
            profile: "/tmp/p".into(),
            spki_pin: "PIN=".into(),
            headless: true,
            kiosk: false,
            window_size: "800,600".into(),
            extra: vec![],
        }
    }

    #[test]
    fn refuses_protection_undoing_args() {
        for a in [
            "--remote-debugging-port=9222",
            "--remote-debugging-port",
            "--remote-allow-origins=*",
            "--log-net-log=/tmp/x",
            "--disable-web-security",
            "--ignore-certificate-errors",
            "--user-data-dir=/tmp/other",
            "--load-extension=/tmp/ext",
            "--ignore-certificate-errors-spki-list=AAAA",
        ] {
            assert!(refused(a).is_some(), "{a}");
        }
        for a in [
            "--no-sandbox",
            "--lang=en",
            "--force-device-scale-factor=2",
            "--remote-debugging",
        ] {
            assert!(refused(a).is_none(), "{a}");
        }
    }

    #[test]
    fn args_use_a_pipe_a_pin_and_a_neutral_page() {
        let a = launch().args();
        assert!(a.contains(&"--remote-debugging-pipe".to_owned()));
        assert!(!a.iter().any(|x| x.starts_with("--remote-debugging-port")));
        assert!(a.contains(&"--ignore-certificate-errors-spki-list=PIN=".to_owned()));
        assert!(a.contains(&"--user-data-dir=/tmp/p".to_owned()));
        assert_eq!(a.last().map(String::as_str), Some(NEUTRAL_PAGE));
        assert!(!a.iter().any(|x| x.contains("https://")));
        let mut l = launch();
        l.headless = false;
        l.kiosk = true;
        let a = l.args();
        assert!(a.contains(&"--kiosk".to_owned()));
        assert_eq!(a.last().cloned(), Some(format!("--app={NEUTRAL_PAGE}")));
    }
}
