//! Starts a server in-process on port 0 in a fresh state dir and stops it
//! when dropped.

use std::net::SocketAddr;
use std::path::PathBuf;

use screengate_identity::Pin;
use screengate_server::config::{FileConfig, Overrides};
use screengate_server::{Config, Server};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub struct Running {
    pub addr: SocketAddr,
    pub pin: Pin,
    pub control: PathBuf,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    pub task: Option<JoinHandle<Result<(), screengate_server::ServerError>>>,
}

impl Running {
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Stops the server and waits for `serve` to return.
    pub async fn stop(self) -> Result<(), screengate_server::ServerError> {
        self.stop_keep_dir().await.1
    }

    /// Stops the server, handing back its directory for a restart.
    pub async fn stop_keep_dir(
        mut self,
    ) -> (
        tempfile::TempDir,
        Result<(), screengate_server::ServerError>,
    ) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        let r = match self.task.take() {
            Some(t) => t.await.expect("server task panicked"),
            None => Ok(()),
        };
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().unwrap());
        (dir, r)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

pub fn config(
    dir: &std::path::Path,
    tweak: impl FnOnce(&mut Overrides, &mut FileConfig),
) -> Config {
    let mut o = Overrides {
        state_dir: Some(dir.join("state")),
        listen: Some("127.0.0.1:0".into()),
        control: Some(dir.join("run/control.sock")),
        ..Default::default()
    };
    let mut f = FileConfig::default();
    tweak(&mut o, &mut f);
    Config::resolve(None, f, o).expect("test config resolves")
}

pub async fn start_with(tweak: impl FnOnce(&mut Overrides, &mut FileConfig)) -> Running {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("run")).unwrap();
    std::fs::set_permissions(
        dir.path().join("run"),
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    start_configured(dir, tweak).await
}

/// Starts again in an existing directory (same identity).
pub async fn start_in(dir: tempfile::TempDir) -> Running {
    start_configured(dir, |_, _| {}).await
}

async fn start_configured(
    dir: tempfile::TempDir,
    tweak: impl FnOnce(&mut Overrides, &mut FileConfig),
) -> Running {
    let cfg = config(dir.path(), tweak);
    let control = cfg.control_socket.clone();
    let server = Server::bind(cfg).await.expect("server binds");
    let addr = server.local_addr();
    let pin = Pin::parse(&server.server_pin()).unwrap();
    let (tx, rx) = oneshot::channel::<()>();
    let task = tokio::spawn(server.serve(async move {
        let _ = rx.await;
    }));
    Running {
        addr,
        pin,
        control,
        dir,
        stop: Some(tx),
        task: Some(task),
    }
}

pub async fn start() -> Running {
    start_with(|_, _| {}).await
}
