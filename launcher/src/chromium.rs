//! Finding and starting Chromium: the flags that make it trust exactly the
//! device certificate, talk CDP only over fds 3/4, stay off the network,
//! and the extra arguments we refuse because they would undo that.

use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use command_fds::{CommandFdExt, FdMapping};
use tokio::net::unix::pipe;
use tokio::process::{Child, Command};

/// The only extra Chromium switches a caller may add, each with why it is
/// safe. Everything else is refused: a deny-list cannot keep up with
/// Chromium's switches (debug ports, net logs, key logs, proxies, host
/// rules, renderer wrappers, subprocess paths …), and Chromium on Linux
/// accepts `-name` as well as `--name`, so every entry is matched by
/// [`vet`] after normalising the prefix and dropping the `=value`.
pub const ALLOWED_ARGS: &[(&str, &str)] = &[
    // sandbox
    (
        "no-sandbox",
        "the explicit opt-out that running as root needs; logged as a warning",
    ),
    // display
    ("start-fullscreen", "window state only"),
    ("start-maximized", "window state only"),
    ("window-position", "window placement only"),
    (
        "ozone-platform",
        "picks X11 or Wayland; no network, no files",
    ),
    ("hide-scrollbars", "presentation only"),
    ("force-dark-mode", "presentation only"),
    ("force-color-profile", "colour management only"),
    ("noerrdialogs", "suppresses crash dialogs on a kiosk"),
    (
        "disable-session-crashed-bubble",
        "suppresses the restore bubble on a kiosk",
    ),
    ("disable-infobars", "suppresses info bars on a kiosk"),
    ("disable-pinch", "touch screens: no pinch zoom"),
    ("touch-events", "touch screens: enables touch event APIs"),
    (
        "disable-popup-blocking",
        "the launcher closes every new window itself",
    ),
    (
        "disable-dev-shm-usage",
        "small /dev/shm in containers; memory only",
    ),
    // GPU
    ("disable-gpu", "software rendering"),
    ("disable-gpu-compositing", "software compositing"),
    ("enable-gpu-rasterization", "GPU rasterisation"),
    (
        "ignore-gpu-blocklist",
        "uses a GPU Chromium would not; rendering only",
    ),
    ("use-gl", "picks the GL implementation; rendering only"),
    ("use-angle", "picks the ANGLE backend; rendering only"),
    // locale
    ("lang", "UI locale"),
    // scale
    ("force-device-scale-factor", "HiDPI panels"),
    // media
    (
        "autoplay-policy",
        "lets the display play media without a gesture",
    ),
];

/// Why an extra argument was refused. The message names the switch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// Not a switch: Chromium would open it as a URL, or `--` would make
    /// every later argument one.
    #[error("it is not a Chromium switch (extra arguments must be -name or --name)")]
    NotASwitch,
    /// A switch not on [`ALLOWED_ARGS`].
    #[error("--{0} is not on the launcher's allow-list of Chromium switches")]
    NotAllowed(String),
}

/// An extra Chromium argument that passed [`vet`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extra {
    /// The normalised name (no dashes, no value).
    pub name: &'static str,
    /// The argument as given (passed to Chromium unchanged).
    pub raw: String,
}

/// Parses one `--chromium-arg`: `-name`, `--name`, `-name=v` and `--name=v`
/// all name `name`; only [`ALLOWED_ARGS`] pass.
pub fn vet(arg: &str) -> Result<Extra, Refusal> {
    let body = arg
        .strip_prefix("--")
        .or_else(|| arg.strip_prefix('-'))
        .ok_or(Refusal::NotASwitch)?;
    let name = body.split_once('=').map_or(body, |(n, _)| n);
    if name.is_empty() {
        return Err(Refusal::NotASwitch);
    }
    ALLOWED_ARGS
        .iter()
        .find(|(allowed, _)| *allowed == name)
        .map(|(allowed, _)| Extra {
            name: allowed,
            raw: arg.to_owned(),
        })
        .ok_or_else(|| Refusal::NotAllowed(name.to_owned()))
}

/// The only environment variables Chromium inherits: what a browser on a
/// display needs to find the display, the session bus, its home and the
/// locale. Everything else is dropped: `SSLKEYLOGFILE` (TLS secrets that
/// decrypt the token header), `*_proxy`, `LD_PRELOAD`, `CHROME_*`, …
pub const ALLOWED_ENV: &[&str] = &[
    "DISPLAY",
    "WAYLAND_DISPLAY",
    "XDG_RUNTIME_DIR",
    "HOME",
    "LANG",
    "TZ",
    "DBUS_SESSION_BUS_ADDRESS",
];

/// `PATH` for Chromium (Debian's `/usr/bin/chromium` is a shell script
/// that runs `grep`, `uname`, …): fixed, not inherited.
pub const CHROMIUM_PATH: &str = "/usr/bin:/bin";

/// Whether Chromium may inherit the variable `name` ([`ALLOWED_ENV`] and
/// `LC_*`).
pub fn env_allowed(name: &std::ffi::OsStr) -> bool {
    let Some(n) = name.to_str() else {
        return false;
    };
    ALLOWED_ENV.contains(&n)
        || n.strip_prefix("LC_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
        })
}

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
        .env_clear()
        .envs(std::env::vars_os().filter(|(k, _)| env_allowed(k)))
        .env("PATH", CHROMIUM_PATH)
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

    /// Every switch the old deny-list refused, and those it missed.
    const HOSTILE: &[&str] = &[
        "remote-debugging-port",
        "remote-debugging-address",
        "remote-allow-origins",
        "log-net-log",
        "net-log-capture-mode",
        "disable-web-security",
        "ignore-certificate-errors",
        "ignore-certificate-errors-spki-list",
        "user-data-dir",
        "load-extension",
        "disable-extensions-except",
        "auto-open-devtools-for-tabs",
        "remote-debugging-pipe",
        "ssl-key-log-file",
        "renderer-cmd-prefix",
        "browser-subprocess-path",
        "proxy-server",
        "proxy-pac-url",
        "host-rules",
        "host-resolver-rules",
        "enable-logging",
        "v",
        "vmodule",
        "enable-features",
        "disable-features",
        "headless",
        "app",
        "kiosk",
        "window-size",
    ];

    #[test]
    fn refuses_every_hostile_switch_in_every_spelling() {
        for name in HOSTILE {
            for arg in [
                format!("--{name}"),
                format!("-{name}"),
                format!("--{name}=9222"),
                format!("-{name}=/tmp/x"),
                format!("--{name}="),
            ] {
                assert_eq!(
                    vet(&arg),
                    Err(Refusal::NotAllowed((*name).to_owned())),
                    "{arg}"
                );
            }
        }
    }

    #[test]
    fn refuses_non_switches_and_lookalikes() {
        for a in [
            "https://evil.example/",
            "--",
            "-",
            "--=x",
            "-=x",
            "",
            "no-sandbox",
            " --disable-gpu",
        ] {
            assert_eq!(vet(a), Err(Refusal::NotASwitch), "{a:?}");
        }
        for a in [
            "---no-sandbox",
            "--no-sandbox-x",
            "--NO-SANDBOX",
            "--lang2=en",
            "--disable-gpu ",
            "--use-gl\t=egl",
        ] {
            assert!(matches!(vet(a), Err(Refusal::NotAllowed(_))), "{a:?}");
        }
        let e = vet("-remote-debugging-port=9222")
            .err()
            .map(|e| e.to_string());
        assert!(
            e.as_deref()
                .is_some_and(|m| m.contains("--remote-debugging-port") && m.contains("allow-list")),
            "{e:?}"
        );
    }

    #[test]
    fn allows_listed_switches_in_both_spellings() {
        for (a, name) in [
            ("--no-sandbox", "no-sandbox"),
            ("-no-sandbox", "no-sandbox"),
            ("--lang=en", "lang"),
            ("-force-device-scale-factor=2", "force-device-scale-factor"),
            (
                "--autoplay-policy=no-user-gesture-required",
                "autoplay-policy",
            ),
        ] {
            assert_eq!(vet(a).map(|e| e.name), Ok(name), "{a}");
        }
        for (name, why) in ALLOWED_ARGS {
            assert!(!why.is_empty() && !HOSTILE.contains(name), "{name}");
        }
    }

    #[test]
    fn environment_allow_list() {
        use std::ffi::OsStr;
        for k in [
            "DISPLAY",
            "WAYLAND_DISPLAY",
            "XDG_RUNTIME_DIR",
            "HOME",
            "LANG",
            "LC_ALL",
            "LC_CTYPE",
            "LC_MESSAGES",
            "TZ",
            "DBUS_SESSION_BUS_ADDRESS",
        ] {
            assert!(env_allowed(OsStr::new(k)), "{k}");
        }
        for k in [
            "SSLKEYLOGFILE",
            "PATH",
            "LD_PRELOAD",
            "LD_LIBRARY_PATH",
            "http_proxy",
            "https_proxy",
            "HTTPS_PROXY",
            "all_proxy",
            "no_proxy",
            "CHROME_LOG_FILE",
            "CHROMIUM_FLAGS",
            "GOOGLE_API_KEY",
            "XDG_CONFIG_HOME",
            "LC_",
            "LC_all",
            "LC_ALL=",
            "display",
            "DISPLAYX",
            "XDISPLAY",
            "",
        ] {
            assert!(!env_allowed(OsStr::new(k)), "{k}");
        }
    }

    #[test]
    fn old_deny_list_gaps_are_closed() {
        // passed the old list: not exactly a listed name
        for a in ["--remote-debugging", "--enable-logging=stderr", "--v=1"] {
            assert!(vet(a).is_err(), "{a}");
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
