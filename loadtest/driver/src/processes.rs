//! KubeSent services as separate OS processes, started from the `kubesent` executable with flags and
//! environment as a deployment gives them, each with its own admin port, identity and NATS credentials.
//! Used by the topology tests and the fault campaign.

use std::{
    net::SocketAddr,
    path::{Path, PathBuf},
    process::{ExitStatus, Stdio},
    time::Duration,
};

use anyhow::{Context as _, bail};
use kubesent_common::nats::Role;

/// How to start one service process.
#[derive(Debug, Clone)]
pub struct ServiceSpec {
    /// The `kubesent` executable.
    pub exe: PathBuf,
    /// `Detector`, `Diagnoser` or `Remediator`.
    pub role: Role,
    /// Replica identity (`--identity`; the pod name in a cluster).
    pub identity: String,
    /// `--nats-url` (a comma-separated list for a cluster).
    pub nats_url: String,
    /// `--kube-api-url`.
    pub kube_api_url: String,
    /// More flags, as `(flag, value)`.
    pub args: Vec<(String, String)>,
    /// Environment variables (credentials, `RUST_LOG`).
    pub env: Vec<(String, String)>,
    /// Where the process's output goes (inherited when `None`, so a test shows it on failure).
    pub log: Option<PathBuf>,
}

impl ServiceSpec {
    /// A spec with the common flags.
    pub fn new(exe: &Path, role: Role, identity: &str, nats_url: &str, kube_api_url: &str) -> Self {
        Self {
            exe: exe.to_owned(),
            role,
            identity: identity.to_owned(),
            nats_url: nats_url.to_owned(),
            kube_api_url: kube_api_url.to_owned(),
            args: Vec::new(),
            env: Vec::new(),
            log: None,
        }
    }

    /// Adds `--flag value`.
    pub fn arg(mut self, flag: &str, value: impl ToString) -> Self {
        self.args.push((flag.to_owned(), value.to_string()));
        self
    }
    /// Adds environment variables (credentials: [`kubesent_testkit::nats_server::NatsUsers::env`]).
    pub fn envs(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env.extend(vars);
        self
    }

    /// Adds an environment variable.
    pub fn env(mut self, name: &str, value: impl ToString) -> Self {
        self.env.push((name.to_owned(), value.to_string()));
        self
    }
}

/// A running service process; killed on drop.
pub struct ServiceProcess {
    /// How it was started (to start it again).
    pub spec: ServiceSpec,
    /// Its admin endpoint.
    pub admin: SocketAddr,
    child: tokio::process::Child,
    http: reqwest::Client,
}

impl ServiceProcess {
    /// Starts the process (it returns at once; see [`ServiceProcess::wait_ready`]).
    pub fn spawn(spec: ServiceSpec) -> anyhow::Result<Self> {
        let admin = free_address()?;
        let (stdout, stderr) = match &spec.log {
            Some(path) => {
                let file = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?;
                (Stdio::from(file.try_clone()?), Stdio::from(file))
            }
            None => (Stdio::inherit(), Stdio::inherit()),
        };
        let mut command = tokio::process::Command::new(&spec.exe);
        command
            .arg(spec.role.as_str())
            .args(["--identity", &spec.identity, "--admin-listen", &admin.to_string()])
            .args(["--nats-url", &spec.nats_url]);
        // Without a URL the service finds the API server as in a cluster (here: KUBECONFIG).
        if !spec.kube_api_url.is_empty() {
            command.args(["--kube-api-url", &spec.kube_api_url]);
        }
        for (flag, value) in &spec.args {
            command.arg(flag).arg(value);
        }
        command.envs(spec.env.iter().map(|(k, v)| (k, v))).stdout(stdout).stderr(stderr).kill_on_drop(true);
        let child = command.spawn().with_context(|| format!("starting {}", spec.exe.display()))?;
        Ok(Self { spec, admin, child, http: reqwest::Client::new() })
    }

    /// Waits until `/readyz` answers 200, failing if the process exits first or `timeout` passes.
    pub async fn wait_ready(&mut self, timeout: Duration) -> anyhow::Result<()> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.exited()? {
                bail!(
                    "{} {} exited with {status} before it was ready{}",
                    self.spec.role.as_str(),
                    self.spec.identity,
                    self.log_tail(20)
                );
            }
            if self.is_ready().await {
                return Ok(());
            }
            if tokio::time::Instant::now() > deadline {
                bail!(
                    "{} {} was not ready within {timeout:?}{}",
                    self.spec.role.as_str(),
                    self.spec.identity,
                    self.log_tail(20)
                );
            }
            // The admin endpoint has no push notification of readiness: ask again shortly.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The last `lines` lines of the process's log file (when it has one), to explain a failure.
    fn log_tail(&self, lines: usize) -> String {
        let Some(text) = self.spec.log.as_ref().and_then(|path| std::fs::read_to_string(path).ok()) else {
            return String::new();
        };
        let all: Vec<&str> = text.lines().collect();
        let tail = all[all.len().saturating_sub(lines)..].join("\n");
        format!("; the end of its log:\n{tail}")
    }

    /// Whether `/readyz` answers 200 now.
    pub async fn is_ready(&self) -> bool {
        let url = format!("http://{}/readyz", self.admin);
        self.http.get(url).send().await.is_ok_and(|r| r.status().is_success())
    }

    /// The process's `/metrics` text.
    pub async fn metrics(&self) -> anyhow::Result<String> {
        Ok(self.http.get(format!("http://{}/metrics", self.admin)).send().await?.text().await?)
    }

    /// The exit status, if the process has exited.
    pub fn exited(&mut self) -> anyhow::Result<Option<ExitStatus>> {
        Ok(self.child.try_wait()?)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// Waits for the process to exit.
    pub async fn wait(&mut self) -> anyhow::Result<ExitStatus> {
        Ok(self.child.wait().await?)
    }

    /// Kills the process at once (`kill -9`).
    pub async fn kill(&mut self) {
        let _ = self.child.kill().await;
    }

    /// Asks the process to stop (SIGTERM) and waits for it.
    pub async fn terminate(&mut self) -> anyhow::Result<ExitStatus> {
        if let Some(pid) = self.child.id() {
            let status = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status()?;
            if !status.success() {
                bail!("kill -TERM {pid} failed");
            }
        }
        Ok(self.child.wait().await?)
    }
}

/// A loopback address nobody listens on right now.
pub fn free_address() -> anyhow::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?)
}
