//! Runtime shared by the KubeSent services: configuration, telemetry, NATS JetStream set-up and
//! publishing, trace-context headers, the admin endpoint, leader election and shutdown.

pub mod admin;
pub mod headers;
pub mod leader;
pub mod marks;
pub mod metrics;
pub mod nats;
pub mod owner;
pub mod pod;
pub mod revisions;
pub mod selector;
pub mod served;
pub mod telemetry;
pub mod trace;

use std::{net::SocketAddr, time::Duration};

use tokio_util::sync::CancellationToken;

/// Errors of the shared runtime.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A NATS operation failed.
    #[error("nats: {0}")]
    Nats(#[source] async_nats::Error),
    /// A publish was not acknowledged by the stream.
    #[error("publish to {subject} not acknowledged")]
    Publish {
        /// The subject.
        subject: String,
        /// Why.
        #[source]
        source: async_nats::jetstream::context::PublishError,
    },
    /// A message names a namespace that cannot be a subject token.
    #[error("no subject for the message")]
    Subject(#[from] kubesent_proto::InvalidNamespace),
    /// JetStream refused a stream, consumer or bucket in a way waiting cannot fix.
    #[error("{what}: {fix}")]
    Unfixable {
        /// What was being set up.
        what: String,
        /// What to do about it.
        fix: String,
        /// JetStream's answer.
        #[source]
        source: nats::setup::BoxError,
    },
    /// Setting up was given up because the process is shutting down.
    #[error("{what}: shut down while waiting for JetStream")]
    ShutDown {
        /// What was being set up.
        what: String,
    },
    /// A bucket an operator command needs does not exist.
    #[error("no {bucket} bucket: has a KubeSent remediator run against it?")]
    MissingBucket {
        /// The bucket.
        bucket: String,
        /// JetStream's answer.
        #[source]
        source: async_nats::jetstream::context::KeyValueError,
    },
    /// The Kubernetes API URL is invalid.
    #[error("kubernetes API URL {url:?} is invalid")]
    KubeUrl {
        /// The URL given.
        url: String,
        /// Why.
        #[source]
        source: http::uri::InvalidUri,
    },
    /// Neither in-cluster configuration nor a kubeconfig could be loaded.
    #[error("kubernetes client configuration")]
    KubeConfig(#[source] kube::config::InferConfigError),
    /// The Kubernetes client could not be built.
    #[error("kubernetes client")]
    KubeClient(#[source] kube::Error),
    /// A setting is invalid (a NATS URL, conflicting credentials, an unreadable credentials file).
    #[error("configuration: {0}")]
    Config(String),
    /// NATS refused the credentials: waiting will not fix it.
    #[error(
        "NATS at {servers} refused the credentials of {principal} ({reason}): check the role's Secret (deploy/base: the kubesent-nats-<role> credentials) and the server's users"
    )]
    Refused {
        /// The servers tried.
        servers: String,
        /// Whose credentials (the user, or the creds/nkey file).
        principal: String,
        /// NATS's words.
        reason: String,
    },
    /// No NATS server could be reached (a human's command says so at once).
    #[error(
        "NATS at {servers} cannot be reached ({reason}): check --nats-url (KUBESENT_NATS_URL) and that the servers run"
    )]
    Unreachable {
        /// The servers tried.
        servers: String,
        /// Why, innermost.
        reason: String,
    },
    /// The credentials are another role's: the server refuses what this command does with them.
    #[error(
        "{principal} may not do this: it needs the {role} role's NATS credentials (user {user}); the server said: {violation}"
    )]
    NotPermitted {
        /// Whose credentials were given.
        principal: String,
        /// The role the command acts as.
        role: &'static str,
        /// That role's NATS user.
        user: &'static str,
        /// The server's words.
        violation: String,
    },
}

impl Error {
    /// A short label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Nats(_) | Self::Refused { .. } | Self::NotPermitted { .. } | Self::Unreachable { .. } => {
                "nats"
            }
            Self::Publish { .. } | Self::Subject(_) => "publish",
            Self::Unfixable { .. } | Self::ShutDown { .. } | Self::MissingBucket { .. } => "setup",
            Self::KubeUrl { .. } | Self::KubeConfig(_) | Self::KubeClient(_) => "kube",
            Self::Config(_) => "config",
        }
    }
}

/// Settings every service takes.
#[derive(Debug, Clone, clap::Args)]
pub struct CommonArgs {
    /// What every KubeSent process takes (NATS, admin endpoint, logs, identity).
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Kubernetes API URL; when unset, in-cluster configuration or the kubeconfig is used.
    #[arg(long, env = "KUBESENT_KUBE_API_URL")]
    pub kube_api_url: Option<String>,
    /// Namespace holding KubeSent's Leases.
    #[arg(long, env = "KUBESENT_NAMESPACE", default_value = "kubesent")]
    pub lease_namespace: String,
    /// Replicas of each JetStream stream (3 in production).
    #[arg(long, env = "KUBESENT_STREAM_REPLICAS", default_value_t = 1)]
    pub stream_replicas: usize,
    /// Bound of the jobs stream; beyond it the detector's publishes are refused (and retried), so a
    /// flood pushes back instead of filling the disk.
    #[arg(long, env = "KUBESENT_MAX_JOBS", default_value_t = nats::Topology::default().max_jobs)]
    pub max_jobs: i64,
}

/// What every KubeSent process takes, the notifier (no Kubernetes, no streams of its own) included.
#[derive(Debug, Clone, clap::Args)]
pub struct ProcessArgs {
    /// How to reach and authenticate to NATS.
    #[command(flatten)]
    pub nats: nats::NatsArgs,
    /// Address of the admin endpoint (/healthz, /readyz, /metrics).
    #[arg(long, env = "KUBESENT_ADMIN_LISTEN", default_value = "0.0.0.0:9090")]
    pub admin_listen: SocketAddr,
    /// Log JSON lines instead of text.
    #[arg(long, env = "KUBESENT_LOG_JSON")]
    pub log_json: bool,
    /// This replica's identity (leases, audit records); defaults to the pod name.
    #[arg(long, env = "POD_NAME", default_value_t = default_identity())]
    pub identity: String,
}

/// This process's identity: the pod name (`HOSTNAME` in a pod), else `kubesent-<pid>`.
pub fn default_identity() -> String {
    std::env::var("HOSTNAME").unwrap_or_else(|_| format!("kubesent-{}", std::process::id()))
}

/// Installs the rustls crypto provider; call before building any TLS client.
pub fn install_crypto_provider() {
    // Err means one is already installed, which is fine.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
}

/// A Kubernetes client for `api_url`, or from in-cluster configuration / kubeconfig when `None`.
pub async fn kube_client(api_url: Option<&str>) -> Result<kube::Client, Error> {
    kube_client_with_token(api_url, None).await
}

/// Like [`kube_client`], authenticating with a bearer `token` (a ServiceAccount token) when given.
pub async fn kube_client_with_token(
    api_url: Option<&str>,
    token: Option<&str>,
) -> Result<kube::Client, Error> {
    install_crypto_provider();
    let mut config = match api_url {
        Some(url) => {
            kube::Config::new(url.parse().map_err(|source| Error::KubeUrl { url: url.to_owned(), source })?)
        }
        None => kube::Config::infer().await.map_err(Error::KubeConfig)?,
    };
    if let Some(token) = token {
        config.auth_info.token = Some(secrecy::SecretString::from(token.to_owned()));
    }
    kube::Client::try_from(config).map_err(Error::KubeClient)
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signal() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut signal) => {
                    signal.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
        cancel.cancel();
    });
    token
}

/// Aborts a spawned task when dropped, so a service's helper tasks die with it (as in a crash).
#[derive(Debug)]
pub struct AbortOnDrop<T>(Option<tokio::task::JoinHandle<T>>);

impl<T> AbortOnDrop<T> {
    /// Takes ownership of a spawned task.
    pub fn new(handle: tokio::task::JoinHandle<T>) -> Self {
        Self(Some(handle))
    }

    /// Waits for the task to finish on its own.
    pub async fn join(mut self) -> Option<T> {
        match self.0.take() {
            Some(handle) => handle.await.ok(),
            None => None,
        }
    }
}

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

/// Exponential back-off with a cap, for reconnect and republish loops.
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    initial: Duration,
    max: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles, never exceeds `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        Self { next: initial, initial, max }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.max);
        delay
    }

    /// Back to the initial delay after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// A positive duration setting in jiff's friendly (`10m`, `1h 30m`, `90s`) or ISO 8601 (`PT10M`) form.
pub fn positive_duration(text: &str) -> Result<std::time::Duration, String> {
    let parsed: jiff::SignedDuration =
        text.trim().parse().map_err(|_| format!("{text:?} is not a duration (e.g. 10m, 90s, 1h 30m)"))?;
    std::time::Duration::try_from(parsed)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| format!("{text} is not a positive duration"))
}

/// A memory growth factor: a finite number from 1 to 64.
pub fn growth_factor(text: &str) -> Result<f64, String> {
    let factor: f64 = text.trim().parse().map_err(|_| format!("{text:?} is not a number"))?;
    if factor.is_finite() && (1.0..=64.0).contains(&factor) {
        Ok(factor)
    } else {
        Err(format!("{text} is not a factor from 1 to 64"))
    }
}

/// Makes a lean decode of a namespaced object (a struct with `metadata: ObjectMeta` and only the fields a
/// reader needs) a `kube::Resource` of the given kind, group, version and plural, so `Api<T>` lists and
/// watches it decoding nothing else.
#[macro_export]
macro_rules! lean_resource {
    ($type:ty, $kind:literal, $group:literal, $version:literal, $plural:literal) => {
        $crate::lean_resource!($type, $kind, $group, $version, $plural, metadata);
    };
    // `$($meta).+`: where the metadata is (`0.metadata` for a newtype over a lean struct).
    ($type:ty, $kind:literal, $group:literal, $version:literal, $plural:literal, $($meta:tt).+) => {
        impl kube::Resource for $type {
            type DynamicType = ();
            type Scope = k8s_openapi::NamespaceResourceScope;

            fn kind(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($kind)
            }

            fn group(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($group)
            }

            fn version(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($version)
            }

            fn plural(_: &()) -> std::borrow::Cow<'_, str> {
                std::borrow::Cow::Borrowed($plural)
            }

            fn meta(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &self.$($meta).+
            }

            fn meta_mut(&mut self) -> &mut k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
                &mut self.$($meta).+
            }
        }
    };
}

/// [`lean_resource!`] for a lean Pod (`v1/pods`).
#[macro_export]
macro_rules! lean_pod_resource {
    ($type:ty) => {
        $crate::lean_resource!($type, "Pod", "", "v1", "pods");
    };
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    #[test]
    fn duration_settings_read_as_people_write_them_and_refuse_zero_negative_or_nonsense() {
        assert_eq!(super::positive_duration("10m"), Ok(Duration::from_secs(600)));
        assert_eq!(super::positive_duration("1h 30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(super::positive_duration("PT90S"), Ok(Duration::from_secs(90)));
        assert_eq!(super::positive_duration(" 2s "), Ok(Duration::from_secs(2)));
        for bad in ["0s", "-5m", "ten minutes", ""] {
            assert!(super::positive_duration(bad).is_err(), "{bad:?}");
        }
    }
}
