//! The roles that talk to NATS and what each one owns: the streams and buckets a role creates (and may
//! reconfigure) are the ones it writes first; a role that only consumes a stream waits for its owner.

use kubesent_proto as proto;

/// Who is connecting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Role {
    /// Publishes failure jobs; records the revisions that served healthy.
    Detector,
    /// Consumes jobs; publishes verdicts and dead letters; shares the model rate limits.
    Diagnoser,
    /// Consumes verdicts; publishes outcomes and dead letters; keeps the intents bucket.
    Remediator,
    /// A human with `kubesent approve|reject|pause|resume|undo`.
    Operator,
    /// Reads the audit log (`kubesent incidents`, `kubesent tail`, dashboards).
    Reader,
    /// Sends notifications from the audit log through its own durable consumer.
    Notifier,
    /// Takes Slack's button clicks (`kubesent slack`): writes approvals and rejections only.
    Slack,
    /// Everything (tests and the in-process stack, which play every role on one connection).
    Admin,
}

/// The model rate-limit bucket the diagnoser pool shares.
pub const RATE_LIMIT_BUCKET: &str = "kubesent-ratelimit";

impl Role {
    /// Every role a deployment gives credentials to (all but [`Role::Admin`]).
    pub const DEPLOYED: [Self; 7] = [
        Self::Detector,
        Self::Diagnoser,
        Self::Remediator,
        Self::Operator,
        Self::Reader,
        Self::Notifier,
        Self::Slack,
    ];
    /// Whether the role is a long-running service (detector, diagnoser, remediator, and the in-process
    /// observer) rather than a human's command.
    pub const fn is_service(self) -> bool {
        matches!(self, Self::Detector | Self::Diagnoser | Self::Remediator | Self::Admin)
    }

    /// The role's name (`detector`, …), also the suffix of its NATS user `kubesent-<role>`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Detector => "detector",
            Self::Diagnoser => "diagnoser",
            Self::Remediator => "remediator",
            Self::Operator => "operator",
            Self::Reader => "reader",
            Self::Notifier => "notifier",
            Self::Slack => "slack",
            Self::Admin => "admin",
        }
    }

    /// The service name (`kubesent-detector`, …): the NATS user, the telemetry service name.
    pub const fn service_name(self) -> &'static str {
        match self {
            Self::Detector => "kubesent-detector",
            Self::Diagnoser => "kubesent-diagnoser",
            Self::Remediator => "kubesent-remediator",
            Self::Operator => "kubesent-operator",
            Self::Reader => "kubesent-reader",
            Self::Notifier => "kubesent-notifier",
            Self::Slack => "kubesent-slack",
            Self::Admin => "kubesent-admin",
        }
    }

    /// The environment variable holding the role's NATS password for the server configuration of
    /// `deploy/base` (`KUBESENT_DETECTOR_PASSWORD`, …).
    pub fn password_variable(self) -> String {
        format!("KUBESENT_{}_PASSWORD", self.as_str().to_ascii_uppercase())
    }

    /// The prefix of the role's reply subjects: replies to one role cannot be read by another.
    pub fn inbox_prefix(self) -> String {
        match self {
            Self::Admin => "_INBOX".into(),
            role => format!("_INBOX_kubesent_{}", role.as_str()),
        }
    }

    /// Whether the role creates (and keeps configured) the stream `name` (`KV_<bucket>` for a bucket).
    pub fn owns_stream(self, name: &str) -> bool {
        self.owned_streams().iter().any(|owned| *owned == name)
    }

    /// The streams (and `KV_` bucket streams) the role creates.
    pub fn owned_streams(self) -> Vec<String> {
        let kv = |bucket: &str| format!("KV_{bucket}");
        match self {
            Self::Detector => vec![proto::JOBS_STREAM.into(), kv(proto::served::REVISIONS_BUCKET)],
            Self::Diagnoser => {
                vec![proto::VERDICTS_STREAM.into(), proto::DLQ_STREAM.into(), kv(RATE_LIMIT_BUCKET)]
            }
            Self::Remediator => {
                vec![proto::OUTCOMES_STREAM.into(), proto::DLQ_STREAM.into(), kv(proto::INTENTS_BUCKET)]
            }
            Self::Operator | Self::Reader | Self::Notifier | Self::Slack => Vec::new(),
            Self::Admin => [Self::Detector, Self::Diagnoser, Self::Remediator]
                .iter()
                .flat_map(|role| role.owned_streams())
                .collect(),
        }
    }
}
