//! Connecting to NATS: a list of servers, credentials from the standard places (a `.creds` file, an nkey
//! seed, a user and password), TLS, and a private inbox prefix per role so request replies can be
//! permitted to that role alone.

use std::{path::PathBuf, time::Duration};

use async_nats::{Event, ServerAddr};
use secrecy::{ExposeSecret as _, SecretString};
use tracing::{error, info, warn};

use super::roles::Role;
use crate::Error;

/// How to reach and authenticate to NATS. Every service and every operator command takes these flags.
#[derive(Debug, Clone, clap::Args)]
pub struct NatsArgs {
    /// NATS server URL, or several comma-separated (`nats://a:4222,nats://b:4222,nats://c:4222`).
    #[arg(long = "nats-url", env = "KUBESENT_NATS_URL", default_value = "nats://127.0.0.1:4222")]
    pub url: String,
    /// A credentials file (user JWT and nkey seed, as `nsc` writes it).
    #[arg(long = "nats-creds", env = "KUBESENT_NATS_CREDS")]
    pub creds: Option<PathBuf>,
    /// A file holding the user's nkey seed (`SU…`).
    #[arg(long = "nats-nkey", env = "KUBESENT_NATS_NKEY")]
    pub nkey: Option<PathBuf>,
    /// NATS user name (with `--nats-password`).
    #[arg(long = "nats-user", env = "KUBESENT_NATS_USER")]
    pub user: Option<String>,
    /// NATS password (prefer `--nats-password-file`, or the environment variable, set from a Secret).
    #[arg(long = "nats-password", env = "KUBESENT_NATS_PASSWORD", hide_env_values = true)]
    pub password: Option<SecretString>,
    /// A file holding the NATS password (a Secret mounted as a file; a trailing newline is ignored).
    #[arg(long = "nats-password-file", env = "KUBESENT_NATS_PASSWORD_FILE", conflicts_with = "password")]
    pub password_file: Option<PathBuf>,
    /// CA certificate (PEM) to verify the servers with; turns TLS on.
    #[arg(long = "nats-tls-ca", env = "KUBESENT_NATS_TLS_CA")]
    pub tls_ca: Option<PathBuf>,
    /// Client certificate (PEM) for mutual TLS, with `--nats-tls-key`.
    #[arg(long = "nats-tls-cert", env = "KUBESENT_NATS_TLS_CERT", requires = "tls_key")]
    pub tls_cert: Option<PathBuf>,
    /// Client key (PEM) for mutual TLS, with `--nats-tls-cert`.
    #[arg(long = "nats-tls-key", env = "KUBESENT_NATS_TLS_KEY", requires = "tls_cert")]
    pub tls_key: Option<PathBuf>,
}

impl NatsArgs {
    /// Plain settings for `url` (tests and local tools).
    pub fn url(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            creds: None,
            nkey: None,
            user: None,
            password: None,
            password_file: None,
            tls_ca: None,
            tls_cert: None,
            tls_key: None,
        }
    }

    /// The same settings with a user and password.
    pub fn with_user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some(user.into());
        self.password = Some(SecretString::from(password.into()));
        self
    }

    /// Who these settings authenticate as, for logs and audit records: the user name, the credentials
    /// or seed file, or `anonymous`.
    pub fn principal(&self) -> String {
        match (&self.user, &self.creds, &self.nkey) {
            (Some(user), _, _) => user.clone(),
            (_, Some(creds), _) => format!("creds:{}", creds.display()),
            (_, _, Some(nkey)) => format!("nkey:{}", nkey.display()),
            _ => "anonymous".into(),
        }
    }
}

/// Parses `nats://a:4222,nats://b:4222` (or a single URL, with or without scheme) into server addresses.
pub fn server_addrs(list: &str) -> Result<Vec<ServerAddr>, Error> {
    let addrs = list
        .split(',')
        .map(str::trim)
        .filter(|url| !url.is_empty())
        .map(|url| url.parse::<ServerAddr>().map_err(|e| Error::Config(format!("NATS URL {url:?}: {e}"))))
        .collect::<Result<Vec<_>, _>>()?;
    if addrs.is_empty() {
        return Err(Error::Config("no NATS server URL given".into()));
    }
    Ok(addrs)
}

/// Connects as `role`, naming the connection `name` (the replica). For a service the first connection is
/// retried in the background, so it can start before NATS is reachable (JetStream calls made before it
/// connects time out and are retried by [`super::setup`]); an operator's or reader's command fails at
/// once with the reason (unreachable, wrong credentials).
pub async fn connect_as(args: &NatsArgs, role: Role, name: &str) -> Result<async_nats::Client, Error> {
    connect_observed(args, role, name, |_| {}).await
}

/// Like [`connect_as`], also handing every connection event (server errors such as permission
/// violations among them) to `observe`.
pub async fn connect_observed(
    args: &NatsArgs,
    role: Role,
    name: &str,
    observe: impl Fn(&Event) + Send + Sync + 'static,
) -> Result<async_nats::Client, Error> {
    let servers = server_addrs(&args.url)?;
    let observe: std::sync::Arc<dyn Fn(&Event) + Send + Sync> = std::sync::Arc::new(observe);
    let refused = |error: &async_nats::ConnectError| {
        matches!(
            error.kind(),
            async_nats::ConnectErrorKind::AuthorizationViolation
                | async_nats::ConnectErrorKind::Authentication
        )
        .then(|| Error::Refused {
            servers: args.url.clone(),
            principal: args.principal(),
            reason: error.to_string(),
        })
    };
    if role.is_service() {
        // One attempt first: credentials the server refuses are fatal, so the pod crash-loops with the
        // reason in its log; a server not reachable yet is waited for below.
        match options(args, role, name, observe.clone(), false).await?.connect(servers.clone()).await {
            Ok(client) => return Ok(client),
            Err(error) => {
                if let Some(refused) = refused(&error) {
                    return Err(refused);
                }
                warn!(%error, servers = %args.url, "NATS is not reachable yet; waiting for it");
            }
        }
    }
    info!(servers = %args.url, principal = %args.principal(), role = role.as_str(), "connecting to NATS");
    // A command's permission violations are watched for during its first round trip (below).
    let (violations_tx, mut violations) = tokio::sync::mpsc::unbounded_channel::<String>();
    let observe = std::sync::Arc::new(move |event: &Event| {
        if let Event::ServerError(async_nats::ServerError::Other(text)) = event
            && text.to_ascii_lowercase().contains("permissions violation")
        {
            let _ = violations_tx.send(text.clone());
        }
        observe(event);
    });
    let client =
        options(args, role, name, observe, role.is_service()).await?.connect(servers).await.map_err(|e| {
            refused(&e).unwrap_or_else(|| {
                if role.is_service() {
                    Error::Nats(Box::new(e))
                } else {
                    let mut cause: &(dyn std::error::Error + 'static) = &e;
                    while let Some(source) = cause.source() {
                        cause = source;
                    }
                    Error::Unreachable { servers: args.url.clone(), reason: cause.to_string() }
                }
            })
        })?;
    if !role.is_service() {
        // Another role's credentials cannot even receive this role's replies: say so at once rather
        // than after every request has timed out.
        let probe = client.request("$JS.API.INFO", bytes::Bytes::new());
        tokio::select! {
            Some(violation) = violations.recv() => {
                return Err(Error::NotPermitted {
                    principal: args.principal(),
                    role: role.as_str(),
                    user: role.service_name(),
                    violation,
                });
            }
            _ = tokio::time::timeout(Duration::from_secs(5), probe) => {}
        }
    }
    Ok(client)
}

/// The connection options for `args` as `role`; `retry` keeps trying the first connection in the
/// background.
async fn options(
    args: &NatsArgs,
    role: Role,
    name: &str,
    observe: std::sync::Arc<dyn Fn(&Event) + Send + Sync>,
    retry: bool,
) -> Result<async_nats::ConnectOptions, Error> {
    let mut options = async_nats::ConnectOptions::new()
        .name(name)
        .custom_inbox_prefix(role.inbox_prefix())
        .connection_timeout(Duration::from_secs(5))
        .event_callback(move |event| {
            observe(&event);
            async move { log_event(event) }
        }); // A service waits for NATS (it may start first); a human's command says at once what is wrong.
    if retry {
        options = options.retry_on_initial_connect();
    }
    let password = match (&args.password, &args.password_file) {
        (Some(password), _) => Some(password.clone()),
        (None, Some(path)) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| Error::Config(format!("NATS password file {}: {e}", path.display())))?;
            Some(SecretString::from(text.trim_end_matches(['\n', '\r']).to_owned()))
        }
        (None, None) => None,
    };
    let methods = [args.creds.is_some(), args.nkey.is_some(), args.user.is_some() || password.is_some()];
    if methods.iter().filter(|set| **set).count() > 1 {
        return Err(Error::Config(
            "give one of --nats-creds, --nats-nkey or --nats-user/--nats-password".into(),
        ));
    }
    if let Some(path) = &args.creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| Error::Config(format!("NATS credentials {}: {e}", path.display())))?;
    }
    if let Some(path) = &args.nkey {
        let seed = std::fs::read_to_string(path)
            .map_err(|e| Error::Config(format!("NATS nkey seed {}: {e}", path.display())))?;
        options = options.nkey(seed.trim().to_owned());
    }
    match (&args.user, &password) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(user.clone(), password.expose_secret().to_owned());
        }
        (None, None) => {}
        _ => {
            return Err(Error::Config(
                "--nats-user and --nats-password (or --nats-password-file) go together".into(),
            ));
        }
    }
    if let Some(ca) = &args.tls_ca {
        options = options.require_tls(true).add_root_certificates(ca.clone());
    }
    if let (Some(cert), Some(key)) = (&args.tls_cert, &args.tls_key) {
        options = options.require_tls(true).add_client_certificate(cert.clone(), key.clone());
    }
    Ok(options)
}

/// Connects without credentials, as a service of `role` would (tests and the in-process stack).
pub async fn connect(url: &str, name: &str) -> Result<async_nats::Client, Error> {
    connect_as(&NatsArgs::url(url), Role::Admin, name).await
}

fn log_event(event: Event) {
    match event {
        Event::Connected => info!("connected to NATS"),
        Event::Disconnected => warn!("disconnected from NATS; reconnecting"),
        Event::ServerError(async_nats::ServerError::AuthorizationViolation) => {
            error!("NATS refused the credentials (authorization violation)")
        }
        Event::ServerError(error) => error!(%error, "NATS server error"),
        Event::ClientError(error) => warn!(%error, "NATS client error"),
        other => info!(event = %other, "NATS connection event"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_comma_separated_list_gives_every_server() {
        let addrs = server_addrs("nats://a:4222, nats://b:4223,nats://c:4224").expect("parses");
        let hosts: Vec<_> = addrs.iter().map(|a| format!("{}:{}", a.host(), a.port())).collect();
        assert_eq!(hosts, ["a:4222", "b:4223", "c:4224"]);
    }

    #[test]
    fn a_single_url_and_a_bare_host_port_parse() {
        assert_eq!(server_addrs("nats://127.0.0.1:4222").expect("parses").len(), 1);
        assert_eq!(server_addrs("localhost:4222").expect("parses")[0].port(), 4222);
    }

    #[test]
    fn an_empty_list_or_a_bad_port_is_a_clear_error() {
        assert!(server_addrs(" , ").is_err());
        let error = server_addrs("nats://a:4222,nats://b:notaport").expect_err("refused").to_string();
        assert!(error.contains("nats://b:notaport"), "{error}");
    }
}
