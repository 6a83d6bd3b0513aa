//! The notifier: tells humans what KubeSent did, on Slack (an incoming webhook, Block Kit) and on a generic
//! JSON webhook (a stable, versioned payload, optionally signed with HMAC-SHA256).
//!
//! It reads the audit log through its own durable consumer (`notifier` on `KUBESENT_OUTCOMES`), so it is
//! never in the remediation path: a sink that is down delays notifications, never a fix. Each outcome is
//! sent once per sink (deduplicated by incident and result; redeliveries and a second outcome with the same
//! result are dropped), with retries and back-off on 5xx, 429 and network errors, and at most
//! `--slack-per-second` / `--webhook-per-second` messages per sink. A message a sink refuses for good is
//! counted and dropped: the audit log keeps it.

use std::{
    collections::{HashSet, VecDeque},
    num::NonZeroU32,
    sync::Arc,
    time::Duration,
};

use async_nats::jetstream::{self, consumer::pull};
use clap::Args;
use futures::StreamExt as _;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use hmac::{Hmac, Mac as _};
use kubesent_common::{ProcessArgs, label_values, nats};
use kubesent_proto::{
    self as proto, Action, Outcome, OutcomeResult,
    autonomy::{PolicyChange, PolicyEvent},
};
use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family},
    registry::Registry,
};
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// The version of the generic webhook's payload (its `version` field); a change that breaks receivers
/// gets a new one.
pub const WEBHOOK_VERSION: &str = "kubesent.io/v1";

/// The header carrying the webhook's signature: `sha256=<hex HMAC-SHA256 of the body>`.
pub const SIGNATURE_HEADER: &str = "X-KubeSent-Signature";

/// The header naming the delivery (`<incident>.<result>`), the same on every retry.
pub const DELIVERY_HEADER: &str = "X-KubeSent-Delivery";

/// `kubesent notifier`
#[derive(Debug, Args)]
pub struct NotifierArgs {
    /// NATS, the admin endpoint, logs, identity (it has no Kubernetes access and no streams of its own).
    #[command(flatten)]
    pub process: ProcessArgs,
    /// Slack incoming-webhook URL (from a Secret: it is a credential).
    #[arg(long, env = "KUBESENT_SLACK_WEBHOOK_URL", hide_env_values = true)]
    pub slack_webhook_url: Option<SecretString>,
    /// Generic webhook URL (from a Secret).
    #[arg(long, env = "KUBESENT_WEBHOOK_URL", hide_env_values = true)]
    pub webhook_url: Option<SecretString>,
    /// Key for the webhook's HMAC-SHA256 signature header; unsigned when unset.
    #[arg(long, env = "KUBESENT_WEBHOOK_SECRET", hide_env_values = true)]
    pub webhook_secret: Option<SecretString>,
    /// A directory holding any of `slack-webhook-url`, `webhook-url` and `webhook-secret` as files (the
    /// Secret kubesent-notifications mounted as a volume); a flag or variable given wins over its file.
    #[arg(long, env = "KUBESENT_NOTIFICATIONS_DIR")]
    pub notifications_dir: Option<std::path::PathBuf>,
    /// Results to notify (comma-separated); `stale` (the target was gone) is left out by default.
    #[arg(
        long,
        env = "KUBESENT_NOTIFY_RESULTS",
        value_delimiter = ',',
        default_value = "healed,applied,ineffective,failed,denied,suggested,diagnosis_only,awaiting_approval,reverted"
    )]
    pub notify_results: Vec<String>,
    /// Messages per second at most to Slack (Slack allows about one).
    #[arg(long, env = "KUBESENT_SLACK_PER_SECOND", default_value_t = 1)]
    pub slack_per_second: u32,
    /// Messages per second at most to the webhook.
    #[arg(long, env = "KUBESENT_WEBHOOK_PER_SECOND", default_value_t = 10)]
    pub webhook_per_second: u32,
    /// The cluster's name, shown in every message.
    #[arg(long, env = "KUBESENT_CLUSTER_NAME", default_value = "kubernetes")]
    pub cluster: String,
}

/// Where notifications go.
#[derive(Debug, Clone)]
pub struct Sink {
    /// Its kind.
    pub kind: SinkKind,
    /// The URL to POST to.
    pub url: SecretString,
    /// Messages per second at most.
    pub per_second: u32,
}

label_values! {
    /// A kind of sink.
    pub enum SinkKind {
        /// A Slack incoming webhook.
        Slack => "slack",
        /// The generic JSON webhook.
        Webhook => "webhook",
    }
}

label_values! {
    /// What happened to a notification.
    pub enum Delivery {
        /// The sink took it.
        Sent => "sent",
        /// The sink refused it or never answered, after the retries.
        Failed => "failed",
        /// Already sent for this incident and result.
        Duplicate => "duplicate",
    }
}

/// The notifier's settings.
#[derive(Debug, Clone)]
pub struct NotifierConfig {
    /// Where to send.
    pub sinks: Vec<Sink>,
    /// Key of the webhook signature.
    pub webhook_secret: Option<SecretString>,
    /// Which results are notified.
    pub results: Vec<OutcomeResult>,
    /// The cluster's name.
    pub cluster: String,
    /// Attempts per message and sink before it counts as failed.
    pub attempts: u32,
    /// The first retry's delay (doubling).
    pub first_retry: Duration,
    /// Per-request timeout.
    pub timeout: Duration,
}

impl NotifierArgs {
    /// The notifier's settings, or why they are unusable.
    pub fn config(&self) -> anyhow::Result<NotifierConfig> {
        // A setting's file in the mounted Secret, when the flag or variable is not given (a key the
        // Secret does not hold is no file: that sink is off).
        let from_dir = |given: &Option<SecretString>, file: &str| -> Option<SecretString> {
            given.clone().or_else(|| {
                let text = std::fs::read_to_string(self.notifications_dir.as_ref()?.join(file)).ok()?;
                Some(SecretString::from(text.trim().to_owned()))
            })
        };
        let slack = from_dir(&self.slack_webhook_url, "slack-webhook-url");
        let webhook = from_dir(&self.webhook_url, "webhook-url");
        let webhook_secret = from_dir(&self.webhook_secret, "webhook-secret");
        let mut sinks = Vec::new();
        for (kind, url, per_second) in [
            (SinkKind::Slack, &slack, self.slack_per_second),
            (SinkKind::Webhook, &webhook, self.webhook_per_second),
        ] {
            if let Some(url) = url.clone().filter(|u| !u.expose_secret().trim().is_empty()) {
                reqwest::Url::parse(url.expose_secret())
                    .map_err(|e| anyhow::anyhow!("the {} URL is not a URL: {e}", kind.as_str()))?;
                sinks.push(Sink { kind, url, per_second: per_second.max(1) });
            }
        }
        if sinks.is_empty() {
            anyhow::bail!(
                "no sink: set --slack-webhook-url and/or --webhook-url (from a Secret), or mount the Secret kubesent-notifications at --notifications-dir"
            );
        }
        let results = self
            .notify_results
            .iter()
            .map(|name| {
                OutcomeResult::ALL
                    .into_iter()
                    .find(|r| r.as_str() == name.trim())
                    .ok_or_else(|| anyhow::anyhow!("{name:?} is not a result"))
            })
            .collect::<anyhow::Result<_>>()?;
        Ok(NotifierConfig {
            sinks,
            webhook_secret: webhook_secret.filter(|secret| !secret.expose_secret().is_empty()),
            results,
            cluster: self.cluster.clone(),
            attempts: 5,
            first_retry: Duration::from_millis(500),
            timeout: Duration::from_secs(10),
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, EncodeLabelSet)]
struct DeliveryLabel {
    sink: SinkKind,
    delivery: Delivery,
}

/// Notifier metrics.
#[derive(Debug, Default)]
pub struct NotifierMetrics {
    notifications: Family<DeliveryLabel, Counter>,
}

impl NotifierMetrics {
    /// Creates the metrics and registers them under `kubesent_notifier_`.
    pub fn register(registry: &mut Registry) -> Arc<Self> {
        let metrics = Self::default();
        let r = registry.sub_registry_with_prefix("kubesent_notifier");
        r.register(
            "notifications",
            "Notifications, by sink and what happened",
            metrics.notifications.clone(),
        );
        for sink in SinkKind::ALL {
            for delivery in Delivery::ALL {
                let _ =
                    metrics.notifications.get_or_create(&DeliveryLabel { sink: *sink, delivery: *delivery });
            }
        }
        Arc::new(metrics)
    }

    fn count_delivery(&self, sink: SinkKind, delivery: Delivery) {
        self.notifications.get_or_create(&DeliveryLabel { sink, delivery }).inc();
    }

    /// Notifications to `sink` that ended as `delivery`.
    pub fn count(&self, sink: SinkKind, delivery: Delivery) -> u64 {
        self.notifications.get_or_create(&DeliveryLabel { sink, delivery }).get()
    }
}

fn emoji(result: OutcomeResult) -> &'static str {
    match result {
        OutcomeResult::Healed => ":white_check_mark:",
        OutcomeResult::Applied => ":wrench:",
        OutcomeResult::AwaitingApproval => ":raised_hand:",
        OutcomeResult::Reverted => ":leftwards_arrow_with_hook:",
        OutcomeResult::Overridden => ":twisted_rightwards_arrows:",
        OutcomeResult::DiagnosisOnly | OutcomeResult::Suggested | OutcomeResult::Followed => ":mag:",
        OutcomeResult::Stale => ":zzz:",
        OutcomeResult::Ineffective
        | OutcomeResult::Failed
        | OutcomeResult::Denied
        | OutcomeResult::NotLanded => ":warning:",
    }
}

fn action_words(action: &Action) -> String {
    match action {
        Action::IncreaseMemory { container, from, to } => {
            format!("raise the memory limit of {container} from {from} to {to}")
        }
        Action::RollbackImage { container, from, to } => {
            format!("roll {container} back from image {from} to {to}")
        }
        Action::RollbackRevision { from, to, .. } => {
            format!("roll back from revision {} to revision {}", from.number, to.number)
        }
        Action::PauseRollout { revision, .. } => format!("pause the rollout at revision {}", revision.number),
        Action::None => "none (a diagnosis)".into(),
    }
}

/// The commands a human may run next.
fn commands(outcome: &Outcome) -> Vec<(&'static str, String)> {
    let incident = &outcome.incident;
    match outcome.result {
        OutcomeResult::AwaitingApproval => vec![
            ("approve", format!("kubesent approve {incident}")),
            ("reject", format!("kubesent reject {incident}")),
        ],
        OutcomeResult::Healed | OutcomeResult::Applied | OutcomeResult::Ineffective => {
            vec![("undo", format!("kubesent undo {incident}"))]
        }
        _ => Vec::new(),
    }
}

/// The workload in words (`Deployment web`), from the verdict the outcome keeps, else the pod.
fn workload(outcome: &Outcome) -> String {
    match &outcome.diagnosis {
        Some(d) => format!("{} {}", d.workload.kind, d.workload.name),
        None => format!("Pod {}", outcome.pod.name),
    }
}

/// Slack text is mrkdwn: `&`, `<` and `>` must be escaped, or a pod's log line could make a link.
fn mrkdwn(text: &str) -> String {
    let escaped = text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;");
    if escaped.chars().count() > 2900 {
        format!("{}…", escaped.chars().take(2900).collect::<String>())
    } else {
        escaped
    }
}

/// The Slack message (Block Kit) for `outcome`.
pub fn slack_message(outcome: &Outcome, cluster: &str) -> Value {
    let title = format!(
        "{} {} · {}/{} on {}",
        emoji(outcome.result),
        outcome.result.as_str().replace('_', " "),
        outcome.pod.namespace,
        workload(outcome),
        cluster
    );
    let mut fields = vec![
        json!({"type": "mrkdwn", "text": format!("*Workload*\n{}/{}", mrkdwn(&outcome.pod.namespace), mrkdwn(&workload(outcome)))}),
        json!({"type": "mrkdwn", "text": format!("*Pod*\n{}", mrkdwn(&outcome.pod.name))}),
        json!({"type": "mrkdwn", "text": format!("*Action*\n{}", mrkdwn(&action_words(&outcome.action)))}),
        json!({"type": "mrkdwn", "text": format!("*Result*\n{}", outcome.result.as_str())}),
    ];
    if let Some(d) = &outcome.diagnosis {
        fields.insert(2, json!({"type": "mrkdwn", "text": format!("*Failure*\n{} in {}", d.failure.kind.as_str(), mrkdwn(&d.failure.container))}));
    }
    let mut blocks = vec![
        json!({"type": "header", "text": {"type": "plain_text", "text": title.chars().take(150).collect::<String>(), "emoji": true}}),
        json!({"type": "section", "fields": fields}),
    ];
    if let Some(d) = &outcome.diagnosis {
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn",
            "text": format!("*Root cause* ({}% confident)\n{}", d.confidence, mrkdwn(&d.root_cause))}}));
    }
    blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": format!("*What happened*\n{}", mrkdwn(&outcome.detail))}}));
    if outcome.result == OutcomeResult::AwaitingApproval {
        // Buttons for the Slack app's interactivity (`kubesent slack`); the commands below work without it.
        let incident = outcome.incident.as_str();
        blocks.push(json!({"type": "actions", "block_id": "kubesent_decision", "elements": [
            {"type": "button", "action_id": crate::slack::APPROVE_ACTION, "value": incident, "style": "primary",
             "text": {"type": "plain_text", "text": "Approve"}},
            {"type": "button", "action_id": crate::slack::REJECT_ACTION, "value": incident, "style": "danger",
             "text": {"type": "plain_text", "text": "Reject"},
             "confirm": {"title": {"type": "plain_text", "text": "Reject this fix?"},
                "text": {"type": "plain_text", "text": "KubeSent records it as denied and changes nothing."},
                "confirm": {"type": "plain_text", "text": "Reject"}, "deny": {"type": "plain_text", "text": "Cancel"}}}
        ]}));
    }
    let next = commands(outcome);
    if !next.is_empty() {
        let text =
            next.iter().map(|(what, command)| format!("{what}: `{command}`")).collect::<Vec<_>>().join("   ");
        blocks.push(json!({"type": "section", "text": {"type": "mrkdwn", "text": text}}));
    }
    let mut context = format!("incident {} · by {}", outcome.incident, mrkdwn(&outcome.actor));
    if let Some(by) = &outcome.decided_by {
        context.push_str(&format!(" · decided by {}", mrkdwn(by)));
    }
    if let Some(trace) = &outcome.trace_id {
        context.push_str(&format!(" · trace {trace}"));
    }
    blocks.push(json!({"type": "context", "elements": [{"type": "mrkdwn", "text": context}]}));
    // `text` is the fallback for notifications and clients without blocks.
    json!({"text": format!("{title}: {}", outcome.detail), "blocks": blocks})
}

/// The generic webhook's payload (version [`WEBHOOK_VERSION`]) for `outcome`.
pub fn webhook_payload(outcome: &Outcome, cluster: &str) -> Value {
    let diagnosis = outcome.diagnosis.as_ref();
    json!({
        "version": WEBHOOK_VERSION,
        "type": if outcome.result == OutcomeResult::AwaitingApproval { "approval_request" } else { "outcome" },
        "cluster": cluster,
        "incident": outcome.incident,
        "result": outcome.result,
        "namespace": outcome.pod.namespace,
        "pod": outcome.pod.name,
        "workload": diagnosis.map(|d| &d.workload),
        "failure": diagnosis.map(|d| json!({"kind": d.failure.kind, "container": d.failure.container,
            "reason": d.failure.reason, "exit_code": d.failure.exit_code, "failed_at": d.failure.failed_at})),
        "root_cause": diagnosis.map(|d| &d.root_cause),
        "confidence": diagnosis.map(|d| d.confidence),
        "action": outcome.action,
        "strategy": outcome.strategy,
        "detail": outcome.detail,
        "actor": outcome.actor,
        "decided_by": outcome.decided_by,
        "trace_id": outcome.trace_id,
        "at": outcome.at,
        "commands": commands(outcome).into_iter().collect::<std::collections::BTreeMap<_, _>>(),
    })
}

/// `sha256=<hex>`: the HMAC-SHA256 of `body` under `key`, as [`SIGNATURE_HEADER`] carries it.
pub fn signature(key: &[u8], body: &[u8]) -> String {
    // HMAC takes a key of any length.
    let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(key) else { return String::new() };
    mac.update(body);
    let digest = mac.finalize().into_bytes();
    format!("sha256={}", digest.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

/// Incidents and results already sent, the newest `capacity` of them.
#[derive(Debug)]
struct Sent {
    order: VecDeque<String>,
    seen: HashSet<String>,
    capacity: usize,
}

impl Sent {
    fn new(capacity: usize) -> Self {
        Self { order: VecDeque::new(), seen: HashSet::new(), capacity }
    }

    /// Records `key`; false when it was already there.
    fn first_time(&mut self, key: String) -> bool {
        if !self.seen.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > self.capacity
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

struct Target {
    sink: Sink,
    limiter: DefaultDirectRateLimiter,
    sent: Sent,
}

/// Whether an answer means "try again later".
fn retryable(status: reqwest::StatusCode) -> bool {
    status.is_server_error()
        || status == reqwest::StatusCode::TOO_MANY_REQUESTS
        || status == reqwest::StatusCode::REQUEST_TIMEOUT
}

/// What is notified: an outcome, or a change of the autonomy policy.
enum Notice {
    Outcome(Box<Outcome>),
    Policy(Box<PolicyChange>),
}

impl Notice {
    /// The delivery's id (the same on every retry and for a repeat).
    fn delivery(&self) -> String {
        match self {
            Self::Outcome(outcome) => format!("{}.{}", outcome.incident, outcome.result.as_str()),
            Self::Policy(change) => format!(
                "policy.{}.{}.{}.{}",
                change.event.as_str(),
                change.class,
                change.namespace.as_deref().unwrap_or("all"),
                change.at.as_second()
            ),
        }
    }

    fn body(&self, kind: SinkKind, cluster: &str) -> Value {
        match (self, kind) {
            (Self::Outcome(outcome), SinkKind::Slack) => slack_message(outcome, cluster),
            (Self::Outcome(outcome), SinkKind::Webhook) => webhook_payload(outcome, cluster),
            (Self::Policy(change), SinkKind::Slack) => slack_policy_message(change, cluster),
            (Self::Policy(change), SinkKind::Webhook) => webhook_policy_payload(change, cluster),
        }
    }
}

/// The policy's scope in words.
fn scope(change: &PolicyChange) -> String {
    match &change.namespace {
        Some(ns) => format!("{} in {ns}", change.class),
        None => change.class.to_string(),
    }
}

/// The Slack message for a change of the autonomy policy (a promotion, a demotion, a class that earned
/// one).
pub fn slack_policy_message(change: &PolicyChange, cluster: &str) -> Value {
    let (emoji, headline) = match change.event {
        PolicyEvent::Promoted => {
            (":arrow_up:", format!("{} promoted: {} → {}", scope(change), change.from, change.to))
        }
        PolicyEvent::Demoted => {
            (":arrow_down:", format!("{} demoted: {} → {}", scope(change), change.from, change.to))
        }
        PolicyEvent::Reset => (
            ":leftwards_arrow_with_hook:",
            format!("{}: override removed ({} → {})", scope(change), change.from, change.to),
        ),
        PolicyEvent::Eligible => {
            (":trophy:", format!("{} earned a promotion from {}", scope(change), change.from))
        }
        PolicyEvent::Refused => (":no_entry:", format!("{}: policy request refused", scope(change))),
    };
    let title = format!("{emoji} {headline} on {cluster}");
    let record = &change.record;
    let agreement = record
        .agreement()
        .map_or_else(|| "no judged decisions".to_owned(), |a| format!("{:.0} % agreed", a * 100.0));
    let text = format!(
        "{}\n*Record*: {} judged: {} agreed, {} disagreed, {} harmful ({agreement})",
        mrkdwn(&change.why),
        record.judged(),
        record.agreed,
        record.disagreed,
        record.harmful
    );
    json!({"text": format!("{title}: {}", change.why), "blocks": [
        {"type": "header", "text": {"type": "plain_text", "text": title.chars().take(150).collect::<String>(), "emoji": true}},
        {"type": "section", "text": {"type": "mrkdwn", "text": text}},
        {"type": "context", "elements": [{"type": "mrkdwn", "text": format!("by {}", mrkdwn(&change.by))}]},
    ]})
}

/// The generic webhook's payload for a change of the autonomy policy.
pub fn webhook_policy_payload(change: &PolicyChange, cluster: &str) -> Value {
    json!({
        "version": WEBHOOK_VERSION,
        "type": "policy",
        "cluster": cluster,
        "event": change.event,
        "class": change.class,
        "namespace": change.namespace,
        "from": change.from,
        "to": change.to,
        "by": change.by,
        "why": change.why,
        "record": change.record,
        "at": change.at,
    })
}

async fn deliver(
    http: &reqwest::Client,
    config: &NotifierConfig,
    target: &Target,
    notice: &Notice,
    shutdown: &CancellationToken,
) -> Delivery {
    let body = serde_json::to_vec(&notice.body(target.sink.kind, &config.cluster)).unwrap_or_default();
    let delivery = notice.delivery();
    let mut delay = config.first_retry;
    for attempt in 1..=config.attempts {
        target.limiter.until_ready().await;
        let mut request = http
            .post(target.sink.url.expose_secret())
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(DELIVERY_HEADER, &delivery)
            .body(body.clone());
        if let (SinkKind::Webhook, Some(key)) = (target.sink.kind, &config.webhook_secret) {
            request = request.header(SIGNATURE_HEADER, signature(key.expose_secret().as_bytes(), &body));
        }
        let retry = match request.send().await {
            Ok(response) if response.status().is_success() => return Delivery::Sent,
            Ok(response) if retryable(response.status()) => {
                warn!(sink = target.sink.kind.as_str(), status = %response.status(), attempt, "notification refused for now; retrying");
                true
            }
            Ok(response) => {
                warn!(sink = target.sink.kind.as_str(), status = %response.status(), %delivery, "notification refused; dropping it (the audit log keeps the outcome)");
                false
            }
            Err(error) => {
                // The URL is a credential: reqwest's error would print it.
                warn!(sink = target.sink.kind.as_str(), error = %error.without_url(), attempt, "notification not delivered; retrying");
                true
            }
        };
        if !retry || attempt == config.attempts {
            break;
        }
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            () = shutdown.cancelled() => break,
        }
        delay = delay.saturating_mul(2);
    }
    Delivery::Failed
}

/// The notifier's connections.
pub struct NotifierDeps {
    /// JetStream, as the notifier's NATS user.
    pub js: jetstream::Context,
    /// Metrics.
    pub metrics: Arc<NotifierMetrics>,
    /// Readiness.
    pub health: Arc<kubesent_common::admin::Health>,
}

/// The notifier's durable consumer: outcomes recorded from its first start on, acknowledged once every
/// sink had its attempts.
pub fn consumer_config() -> pull::Config {
    pull::Config {
        durable_name: Some(proto::NOTIFIER_CONSUMER.to_owned()),
        deliver_policy: jetstream::consumer::DeliverPolicy::New,
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: Duration::from_secs(300),
        max_ack_pending: 16,
        filter_subjects: vec![proto::OUTCOMES_SUBJECTS.to_owned(), proto::POLICY_SUBJECTS.to_owned()],
        ..Default::default()
    }
}

/// Runs the notifier until `shutdown`.
pub async fn run(
    config: NotifierConfig,
    deps: NotifierDeps,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let consumer =
        match nats::open_consumer(&deps.js, proto::OUTCOMES_STREAM, consumer_config(), &shutdown).await {
            Err(_) if shutdown.is_cancelled() => return Ok(()),
            result => result?,
        };
    let http = reqwest::Client::builder().timeout(config.timeout).build()?;
    let mut targets: Vec<Target> = config
        .sinks
        .iter()
        .map(|sink| Target {
            sink: sink.clone(),
            limiter: RateLimiter::direct(Quota::per_second(
                NonZeroU32::new(sink.per_second).unwrap_or(NonZeroU32::MIN),
            )),
            sent: Sent::new(10_000),
        })
        .collect();
    let mut messages = consumer.messages().await?;
    deps.health.set_ready(true);
    info!(sinks = ?config.sinks.iter().map(|s| s.kind.as_str()).collect::<Vec<_>>(), "notifier ready");
    loop {
        let message = tokio::select! {
            message = messages.next() => message,
            () = shutdown.cancelled() => return Ok(()),
        };
        let Some(message) = message else { anyhow::bail!("the outcomes consumer ended") };
        let message = match message {
            Ok(message) => message,
            Err(error) => {
                warn!(%error, "reading outcomes failed; continuing");
                continue;
            }
        };
        let notice = if message.subject.starts_with("kubesent.policy.") {
            proto::decode::<PolicyChange>(&message.payload).map(|change| {
                (change.event != PolicyEvent::Refused).then(|| Notice::Policy(Box::new(change)))
            })
        } else {
            proto::decode::<Outcome>(&message.payload).map(|outcome| {
                config.results.contains(&outcome.result).then(|| Notice::Outcome(Box::new(outcome)))
            })
        };
        match notice {
            Ok(Some(notice)) => {
                let key = notice.delivery();
                for target in &mut targets {
                    let delivery = if target.sent.first_time(key.clone()) {
                        deliver(&http, &config, target, &notice, &shutdown).await
                    } else {
                        Delivery::Duplicate
                    };
                    deps.metrics.count_delivery(target.sink.kind, delivery);
                    if delivery == Delivery::Sent {
                        info!(%key, sink = target.sink.kind.as_str(), "notified");
                    }
                }
            }
            Ok(None) => {}
            Err(error) => {
                warn!(%error, subject = %message.subject, "a record that does not decode; not notified")
            }
        }
        if let Err(error) = message.ack().await {
            warn!(%error, "acknowledging an outcome failed; it may be notified again (deduplicated)");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(clap::Parser)]
    struct Parsed {
        #[command(flatten)]
        args: NotifierArgs,
    }

    #[test]
    fn the_urls_and_the_key_are_read_from_a_mounted_secret_and_a_flag_wins_over_its_file() {
        use clap::Parser as _;
        let dir = tempfile::tempdir().expect("dir");
        std::fs::write(dir.path().join("webhook-url"), "https://hooks.example/kubesent\n").expect("url");
        std::fs::write(dir.path().join("webhook-secret"), "s3cret\n").expect("key");
        let path = dir.path().to_str().expect("path");
        let parsed = Parsed::try_parse_from(["notifier", "--notifications-dir", path]).expect("flags");
        let config = parsed.args.config().expect("a sink");
        assert_eq!(config.sinks.len(), 1, "no Slack URL in the Secret: no Slack sink");
        assert_eq!(config.sinks[0].kind, SinkKind::Webhook);
        assert_eq!(config.sinks[0].url.expose_secret(), "https://hooks.example/kubesent");
        assert_eq!(
            config.webhook_secret.as_ref().map(|k| k.expose_secret().to_owned()).as_deref(),
            Some("s3cret")
        );
        let flag = "https://other.example/";
        let parsed = Parsed::try_parse_from(["notifier", "--notifications-dir", path, "--webhook-url", flag])
            .expect("flags");
        assert_eq!(parsed.args.config().expect("a sink").sinks[0].url.expose_secret(), flag);
        let empty = tempfile::tempdir().expect("dir");
        let parsed =
            Parsed::try_parse_from(["notifier", "--notifications-dir", empty.path().to_str().expect("path")])
                .expect("flags");
        assert!(parsed.args.config().is_err(), "no URL anywhere: no sink");
    }

    #[test]
    fn the_signature_is_the_hmac_sha256_of_the_body() {
        // RFC 4231, test case 2.
        assert_eq!(
            signature(b"Jefe", b"what do ya want for nothing?"),
            "sha256=5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
    }

    #[test]
    fn an_incident_and_result_is_sent_once_and_the_memory_is_bounded() {
        let mut sent = Sent::new(2);
        assert!(sent.first_time("a.healed".into()));
        assert!(!sent.first_time("a.healed".into()));
        assert!(sent.first_time("a.reverted".into()));
        assert!(sent.first_time("b.healed".into()));
        assert!(sent.first_time("a.healed".into()), "forgotten once older than the capacity");
    }

    #[test]
    fn slack_text_cannot_make_links_or_mentions() {
        assert_eq!(
            mrkdwn("<!channel> <https://evil|click> & more"),
            "&lt;!channel&gt; &lt;https://evil|click&gt; &amp; more"
        );
    }
}
