//! `kubesent slack`: approvals from Slack. The notifier's message for a fix that waits for approval
//! carries Approve and Reject buttons; Slack posts each click here (the app's interactivity request URL).
//! A click counts only when Slack's signature over the body verifies (`v0=` HMAC-SHA256 with the app's
//! signing secret, compared in constant time) within five minutes of its timestamp, and when the Slack
//! user is an allowed approver; the decision is then written as `kubesent approve` would, attributed to
//! `slack:<user id> (<name>)` and to this endpoint's own NATS user, `kubesent-slack`, which may write
//! approvals and rejections and nothing else. The message is updated in place (Slack's `response_url`)
//! with who decided and, once the remediator has acted, the outcome; anyone else gets an ephemeral "not
//! allowed".
//!
//! Why its own endpoint and not the notifier: the endpoint is reachable from the internet, the notifier
//! reads the whole audit log; keeping them apart keeps each credential to what it needs.

use std::{collections::BTreeSet, net::SocketAddr, path::PathBuf, sync::Arc, time::Duration};

use anyhow::Context as _;
use axum::{
    Router,
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode},
    routing::post,
};
use clap::Args;
use futures::StreamExt as _;
use hmac::{Hmac, Mac as _};
use kubesent_common::ProcessArgs;
use kubesent_proto::{self as proto, IncidentId, Outcome, OutcomeResult, approval::Choice};
use kubesent_remediator::operator::{Operator, OperatorError, Taken};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use tracing::{info, warn};

/// How old a request may be (Slack's own recommendation): older ones are refused as replays.
pub const MAX_AGE_SECONDS: i64 = 5 * 60;
/// The largest request body read.
const MAX_BODY: usize = 64 * 1024;
/// The button's action ids.
pub const APPROVE_ACTION: &str = "kubesent_approve";
/// The button's action ids.
pub const REJECT_ACTION: &str = "kubesent_reject";

/// `kubesent slack`
#[derive(Debug, Args)]
pub struct SlackArgs {
    /// NATS (as `kubesent-slack`), the admin endpoint, logs, identity.
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Where Slack's interaction requests arrive (the app's interactivity request URL points here).
    #[arg(long, env = "KUBESENT_SLACK_LISTEN", default_value = "0.0.0.0:8080")]
    pub listen: SocketAddr,
    /// The Slack app's signing secret (from a Secret).
    #[arg(long = "slack-signing-secret", env = "KUBESENT_SLACK_SIGNING_SECRET", hide_env_values = true)]
    pub signing_secret: Option<SecretString>,
    /// Slack user ids allowed to approve and reject (comma-separated).
    #[arg(long = "slack-approvers", env = "KUBESENT_SLACK_APPROVERS", value_delimiter = ',')]
    pub approvers: Vec<String>,
    /// A directory holding `slack-signing-secret` and `slack-approvers` (one user id per line) as files:
    /// the Secret kubesent-notifications mounted; a flag or variable given wins over its file.
    #[arg(long, env = "KUBESENT_NOTIFICATIONS_DIR")]
    pub notifications_dir: Option<PathBuf>,
    /// How long to wait for the remediator's outcome before the message says only who decided.
    #[arg(long, env = "KUBESENT_SLACK_WAIT", default_value = "5m", value_parser = kubesent_common::positive_duration)]
    pub wait: Duration,
}

/// The endpoint's settings.
#[derive(Debug, Clone)]
pub struct SlackConfig {
    /// The signing secret.
    pub signing_secret: SecretString,
    /// Allowed approvers' Slack user ids.
    pub approvers: BTreeSet<String>,
    /// How long to wait for the outcome.
    pub wait: Duration,
}

impl SlackArgs {
    /// The settings, or why they are unusable.
    pub fn config(&self) -> anyhow::Result<SlackConfig> {
        let file = |name: &str| -> Option<String> {
            let text = std::fs::read_to_string(self.notifications_dir.as_ref()?.join(name)).ok()?;
            Some(text.trim().to_owned())
        };
        let signing_secret = self
            .signing_secret
            .clone()
            .or_else(|| file("slack-signing-secret").map(SecretString::from))
            .filter(|s| !s.expose_secret().trim().is_empty())
            .context("no signing secret: set --slack-signing-secret (from a Secret) or mount the Secret kubesent-notifications with the key slack-signing-secret")?;
        let mut approvers: BTreeSet<String> =
            self.approvers.iter().map(|a| a.trim().to_owned()).filter(|a| !a.is_empty()).collect();
        if approvers.is_empty() {
            approvers = file("slack-approvers")
                .unwrap_or_default()
                .split(|c: char| c == ',' || c.is_whitespace())
                .filter(|a| !a.is_empty())
                .map(str::to_owned)
                .collect();
        }
        if approvers.is_empty() {
            anyhow::bail!(
                "no approver: set --slack-approvers (Slack user ids) or the key slack-approvers of the Secret kubesent-notifications"
            );
        }
        Ok(SlackConfig { signing_secret, approvers, wait: self.wait })
    }
}

/// Why a request is not Slack's.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unverified {
    /// A header is missing or not what Slack sends.
    #[error("the request carries no valid {0} header")]
    Header(&'static str),
    /// Older (or newer) than five minutes: a replay, or a clock far off.
    #[error("the request is {0} s away from now (more than 300)")]
    Stale(i64),
    /// The signature does not match the body.
    #[error("the signature does not match the body")]
    Signature,
}

/// Checks Slack's signature of `body`: `v0=` and the hex HMAC-SHA256 of `v0:<timestamp>:<body>` under
/// `secret`, the timestamp within [`MAX_AGE_SECONDS`] of `now` (Unix seconds); constant-time compare.
pub fn verify(
    secret: &[u8],
    timestamp: &str,
    signature: &str,
    body: &[u8],
    now: i64,
) -> Result<(), Unverified> {
    let at: i64 = timestamp.trim().parse().map_err(|_| Unverified::Header("X-Slack-Request-Timestamp"))?;
    let age = now.saturating_sub(at);
    if age.abs() > MAX_AGE_SECONDS {
        return Err(Unverified::Stale(age));
    }
    let hex = signature.strip_prefix("v0=").ok_or(Unverified::Header("X-Slack-Signature"))?;
    let given = decode_hex(hex).ok_or(Unverified::Header("X-Slack-Signature"))?;
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(secret).map_err(|_| Unverified::Signature)?;
    mac.update(b"v0:");
    mac.update(timestamp.trim().as_bytes());
    mac.update(b":");
    mac.update(body);
    mac.verify_slice(&given).map_err(|_| Unverified::Signature)
}

/// The `X-Slack-Signature` Slack would send for `body` at `timestamp` (for tests and tools).
pub fn sign(secret: &[u8], timestamp: &str, body: &[u8]) -> String {
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(secret) else { return String::new() };
    mac.update(format!("v0:{timestamp}:").as_bytes());
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("v0={}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn decode_hex(text: &str) -> Option<Vec<u8>> {
    if text.len() != 64 || !text.is_ascii() {
        return None;
    }
    (0..text.len()).step_by(2).map(|i| u8::from_str_radix(&text[i..i + 2], 16).ok()).collect()
}

/// A click on an Approve or Reject button.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Click {
    /// The Slack user's id (`U…`).
    pub user_id: String,
    /// Their name as Slack gives it.
    pub user_name: String,
    /// Approve or reject.
    pub choice: Choice,
    /// The incident the button is for.
    pub incident: IncidentId,
    /// Where to update the message.
    pub response_url: String,
}

impl Click {
    /// Who decided, as the decision records it.
    pub fn attribution(&self) -> String {
        format!("slack:{} ({})", self.user_id, self.user_name)
    }
}

fn is_token(text: &str, max: usize) -> bool {
    !text.is_empty()
        && text.len() <= max
        && text.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// Reads a Slack interaction request body (`payload=<json>`, form-encoded): the first action of a
/// `block_actions` payload, which must be one of KubeSent's buttons.
pub fn parse(body: &[u8]) -> Result<Click, String> {
    let payload = form_urlencoded::parse(body)
        .find(|(k, _)| k == "payload")
        .map(|(_, v)| v.into_owned())
        .ok_or("no payload field")?;
    let payload: Value =
        serde_json::from_str(&payload).map_err(|e| format!("the payload is not JSON: {e}"))?;
    if payload["type"] != "block_actions" {
        return Err(format!("not a button click ({})", payload["type"]));
    }
    let user_id = payload["user"]["id"].as_str().filter(|u| is_token(u, 32)).ok_or("no valid user id")?;
    let name = payload["user"]["username"].as_str().or(payload["user"]["name"].as_str()).unwrap_or(user_id);
    let user_name: String = name.chars().filter(|c| !c.is_control()).take(80).collect();
    let action = &payload["actions"][0];
    let choice = match action["action_id"].as_str() {
        Some(APPROVE_ACTION) => Choice::Approve,
        Some(REJECT_ACTION) => Choice::Reject,
        other => return Err(format!("not a KubeSent button ({other:?})")),
    };
    let incident =
        action["value"].as_str().and_then(IncidentId::parse).ok_or("the button names no incident")?;
    let response_url = payload["response_url"]
        .as_str()
        .filter(|u| u.len() < 2048 && (u.starts_with("https://") || u.starts_with("http://")))
        .ok_or("no response_url")?;
    Ok(Click {
        user_id: user_id.to_owned(),
        user_name,
        choice,
        incident,
        response_url: response_url.to_owned(),
    })
}

/// What the endpoint holds.
pub struct SlackState {
    /// Its settings.
    pub config: SlackConfig,
    /// The decisions-only NATS session.
    pub operator: Operator,
    /// Outcomes as they are recorded (to update the message).
    pub client: async_nats::Client,
    /// For Slack's response URLs.
    pub http: reqwest::Client,
}

/// The endpoint's routes: `POST /slack/interactions`.
pub fn router(state: Arc<SlackState>) -> Router {
    Router::new().route("/slack/interactions", post(interaction)).with_state(state)
}

async fn interaction(State(state): State<Arc<SlackState>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    if body.len() > MAX_BODY {
        return StatusCode::PAYLOAD_TOO_LARGE;
    }
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_owned();
    let now = jiff::Timestamp::now().as_second();
    let secret = state.config.signing_secret.expose_secret().as_bytes();
    if let Err(why) =
        verify(secret, &header("x-slack-request-timestamp"), &header("x-slack-signature"), &body, now)
    {
        warn!(%why, "refused a request that is not Slack's");
        return StatusCode::UNAUTHORIZED;
    }
    let click = match parse(&body) {
        Ok(click) => click,
        Err(why) => {
            warn!(%why, "refused a Slack request KubeSent cannot read");
            return StatusCode::BAD_REQUEST;
        }
    };
    // Slack wants an answer within 3 s; the decision and the outcome follow on the response URL.
    tokio::spawn(decide(state, click));
    StatusCode::OK
}

/// Carries out a click: refuses anyone not allowed, else writes the decision and updates the message.
async fn decide(state: Arc<SlackState>, click: Click) {
    let by = click.attribution();
    if !state.config.approvers.contains(&click.user_id) {
        info!(%by, incident = %click.incident, "a click by someone who may not decide");
        let text = format!(
            "<@{}> is not allowed to approve or reject KubeSent's fixes; ask an approver (the Secret kubesent-notifications, key slack-approvers, lists them).",
            click.user_id
        );
        tell_privately(&state, &click, text).await;
        return;
    }
    // Subscribed before the decision is written, so the outcome cannot be missed.
    let outcomes = state.client.subscribe(proto::OUTCOMES_SUBJECTS).await;
    let operator = state.operator.acting_as(&by);
    let verb = if click.choice == Choice::Approve { "approved" } else { "rejected" };
    let decided = match click.choice {
        Choice::Approve => operator.approve(&click.incident, state.config.wait).await,
        Choice::Reject => operator.reject(&click.incident, "rejected from Slack", state.config.wait).await,
    };
    let attribution = operator.attribution();
    let taken = match decided {
        Ok(taken) => taken,
        Err(error) => {
            let text = match &error {
                OperatorError::NotWaiting { .. } | OperatorError::Unknown(_) => error.to_string(),
                _ => format!("the decision could not be written: {error}"),
            };
            warn!(%error, incident = %click.incident, "a decision from Slack was not taken");
            tell_privately(&state, &click, text).await;
            return;
        }
    };
    info!(incident = %click.incident, %attribution, verb, "decided from Slack");
    let outcome = match taken {
        Taken::Taken(Some(outcome)) => Some(*outcome),
        Taken::Pending => None,
        Taken::Taken(None) => {
            let text = format!("{} {verb} by {attribution}; KubeSent is carrying it out", click.incident);
            respond(&state, &click, json!({"replace_original": true, "text": text})).await;
            match outcomes {
                Ok(subscriber) => final_outcome(subscriber, &click.incident, state.config.wait).await,
                Err(_) => None,
            }
        }
    };
    let text = match outcome {
        Some(outcome) => format!(
            "{} {verb} by {attribution} — {}: {}",
            click.incident,
            outcome.result.as_str().replace('_', " "),
            outcome.detail
        ),
        None => format!(
            "{} {verb} by {attribution}; its outcome follows in `kubesent incidents show {}`",
            click.incident, click.incident
        ),
    };
    respond(&state, &click, json!({"replace_original": true, "text": text})).await;
}

/// The incident's final outcome, if it is recorded within `wait`.
async fn final_outcome(
    mut outcomes: async_nats::Subscriber,
    incident: &IncidentId,
    wait: Duration,
) -> Option<Outcome> {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        let message = tokio::time::timeout_at(deadline, outcomes.next()).await.ok()??;
        if let Ok(outcome) = proto::decode::<Outcome>(&message.payload)
            && outcome.incident == *incident
            && !matches!(
                outcome.result,
                OutcomeResult::AwaitingApproval | OutcomeResult::Followed | OutcomeResult::Applied
            )
        {
            return Some(outcome);
        }
    }
}

/// Answers only the clicker, leaving the message as it is.
async fn tell_privately(state: &SlackState, click: &Click, text: String) {
    respond(state, click, json!({"response_type": "ephemeral", "replace_original": false, "text": text}))
        .await;
}

async fn respond(state: &SlackState, click: &Click, body: Value) {
    match state.http.post(&click.response_url).json(&body).send().await {
        Ok(response) if response.status().is_success() => {}
        Ok(response) => warn!(status = %response.status(), "Slack refused the message update"),
        // The URL is Slack's and carries a token: not logged.
        Err(error) => warn!(error = %error.without_url(), "the message update did not reach Slack"),
    }
}

/// Runs `kubesent slack` until `shutdown`.
pub async fn run(
    config: SlackConfig,
    operator: Operator,
    client: async_nats::Client,
    listen: SocketAddr,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().timeout(Duration::from_secs(10)).build()?;
    let state = Arc::new(SlackState { config, operator, client, http });
    let listener =
        tokio::net::TcpListener::bind(listen).await.with_context(|| format!("binding {listen}"))?;
    info!(%listen, "taking Slack's interactions at /slack/interactions");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
        .context("serving Slack's interactions")
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &[u8] = b"8f742231b10e8888abcd99yyyzzz85a5";

    fn body(action: &str, incident: &str) -> Vec<u8> {
        let payload = json!({"type": "block_actions", "user": {"id": "U123ABC", "username": "alice"},
            "actions": [{"action_id": action, "value": incident}],
            "response_url": "https://hooks.slack.com/actions/T1/1/abc"});
        form_urlencoded::Serializer::new(String::new())
            .append_pair("payload", &payload.to_string())
            .finish()
            .into_bytes()
    }

    #[test]
    fn a_request_counts_only_signed_with_the_secret_within_five_minutes() {
        let body = body(APPROVE_ACTION, "inc-0123456789abcdef01234567");
        let now = 1_800_000_000;
        let signed = sign(SECRET, &now.to_string(), &body);
        assert_eq!(verify(SECRET, &now.to_string(), &signed, &body, now + 299), Ok(()));
        assert_eq!(verify(SECRET, &now.to_string(), &signed, &body, now + 301), Err(Unverified::Stale(301)));
        assert_eq!(verify(SECRET, &now.to_string(), &signed, &body, now - 400), Err(Unverified::Stale(-400)));
        assert_eq!(
            verify(b"another secret", &now.to_string(), &signed, &body, now),
            Err(Unverified::Signature)
        );
        let mut tampered = body.clone();
        tampered.push(b'x');
        assert_eq!(verify(SECRET, &now.to_string(), &signed, &tampered, now), Err(Unverified::Signature));
        assert_eq!(
            verify(SECRET, "soon", &signed, &body, now),
            Err(Unverified::Header("X-Slack-Request-Timestamp"))
        );
        assert_eq!(
            verify(SECRET, &now.to_string(), "v1=00", &body, now),
            Err(Unverified::Header("X-Slack-Signature"))
        );
        assert_eq!(
            verify(SECRET, &now.to_string(), "v0=zz", &body, now),
            Err(Unverified::Header("X-Slack-Signature"))
        );
        // Slack's own documented example.
        let example = b"token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c";
        let expected = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503";
        assert_eq!(verify(SECRET, "1531420618", expected, example, 1_531_420_618), Ok(()));
    }

    #[test]
    fn a_click_is_read_from_kubesents_buttons_only() {
        let click = parse(&body(REJECT_ACTION, "inc-0123456789abcdef01234567")).expect("a click");
        assert_eq!(click.choice, Choice::Reject);
        assert_eq!(click.attribution(), "slack:U123ABC (alice)");
        assert_eq!(click.incident.as_str(), "inc-0123456789abcdef01234567");
        assert!(parse(&body("other_button", "inc-0123456789abcdef01234567")).is_err());
        assert!(parse(&body(APPROVE_ACTION, "inc-../../etc")).is_err());
        assert!(parse(b"payload=%7Bnot json").is_err());
        assert!(parse(b"nothing=here").is_err());
    }
}
