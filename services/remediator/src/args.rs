//! `kubesent remediator`'s flags and environment, and the configuration they make.

use std::time::Duration;

use clap::Args;
use kubesent_common::{CommonArgs, growth_factor, leader::LeaderArgs, nats::Topology};
use kubesent_proto::MemoryQuantity;

use crate::{RemediatorConfig, gate::Policy, guardrails::Limits};

/// `kubesent remediator`
#[derive(Debug, Args)]
pub struct RemediatorArgs {
    /// Settings every service takes.
    #[command(flatten)]
    pub common: CommonArgs,
    /// Leader election.
    #[command(flatten)]
    pub leader: LeaderArgs,
    /// Verdicts below this confidence (0–100) are denied.
    #[arg(long, env = "KUBESENT_CONFIDENCE_THRESHOLD", default_value_t = 90)]
    pub confidence_threshold: u8,
    /// Decide and record, but change nothing.
    #[arg(long, env = "KUBESENT_DRY_RUN")]
    pub dry_run: bool,
    /// Largest memory limit KubeSent may set.
    #[arg(long, env = "KUBESENT_MAX_MEMORY", default_value = "8Gi")]
    pub max_memory: MemoryQuantity,
    /// Largest factor one action may raise a memory limit by.
    #[arg(long, env = "KUBESENT_MAX_MEMORY_FACTOR", default_value_t = 4.0, value_parser = growth_factor)]
    pub max_memory_factor: f64,
    /// Namespaces never remediated.
    #[arg(
        long,
        env = "KUBESENT_EXCLUDED_NAMESPACES",
        value_delimiter = ',',
        default_value = "kube-system,kube-public,kube-node-lease,kubesent"
    )]
    pub excluded_namespaces: Vec<String>,
    /// Seconds a fixed pod must stay healthy to count as healed.
    #[arg(long, env = "KUBESENT_VERIFY_SECONDS", default_value_t = 120)]
    pub verify_seconds: u64,
    /// Minutes after an action during which the same workload is not changed again.
    #[arg(long, env = "KUBESENT_COOLDOWN_MINUTES", default_value_t = 10)]
    pub cooldown_minutes: u64,
    /// Actions per rolling hour, cluster-wide; beyond it actions are only suggested.
    #[arg(long, env = "KUBESENT_MAX_ACTIONS_PER_HOUR", default_value_t = 30)]
    pub max_actions_per_hour: u32,
    /// Fixable failures within the breaker window that open the circuit breaker.
    #[arg(long, env = "KUBESENT_BREAKER_FAILURES", default_value_t = 20)]
    pub breaker_failures: u32,
    /// The circuit breaker's counting window, in minutes.
    #[arg(long, env = "KUBESENT_BREAKER_WINDOW_MINUTES", default_value_t = 5)]
    pub breaker_window_minutes: u64,
    /// How long an open circuit breaker holds every action, in minutes.
    #[arg(long, env = "KUBESENT_BREAKER_HOLD_MINUTES", default_value_t = 15)]
    pub breaker_hold_minutes: u64,
    /// Verdicts handled at once: planned, and their change made (verifying goes on apart).
    #[arg(long, env = "KUBESENT_CONCURRENCY", default_value_t = 8)]
    pub concurrency: usize,
    /// Verifications watched at once (each watches the target's pods and workload until its verify
    /// window passes); a verdict whose change is made waits for room here.
    #[arg(long, env = "KUBESENT_MAX_VERIFICATIONS", default_value_t = 512)]
    pub max_verifications: usize,
    /// Writes to the Kubernetes API per second (patches, creates, deletes, evictions; a burst of twice
    /// that), shared by every remediation of this replica.
    #[arg(long, env = "KUBESENT_WRITES_PER_SECOND", default_value_t = 20)]
    pub writes_per_second: u32,
    /// Days a finished remediation's intent is kept (the escalation rule and `kubesent undo` read it).
    #[arg(long, env = "KUBESENT_INTENT_RETENTION_DAYS", default_value_t = 30)]
    pub intent_retention_days: u64,
    /// The autonomy policy file: modes (`auto`, `approve`, `shadow`) per action class and overrides per
    /// namespace (a mounted ConfigMap; read again when it changes). Unset: every class `auto`.
    #[arg(long, env = "KUBESENT_AUTONOMY_POLICY")]
    pub autonomy_policy: Option<std::path::PathBuf>,
    /// Manual-approval mode: every fix waits for `kubesent approve` (or `reject`).
    #[arg(long, env = "KUBESENT_REQUIRE_APPROVAL", default_value_t = false, action = clap::ArgAction::Set)]
    pub require_approval: bool,
    /// Take back a change of KubeSent's that did not land or made the workload worse (`false`: leave it
    /// in place and only report it).
    #[arg(long, env = "KUBESENT_TAKE_BACK", default_value_t = true, action = clap::ArgAction::Set)]
    pub take_back: bool,
    /// How long a revision must have served healthy, by KubeSent's record (the detector's), before a
    /// rollback to it after its rollout finished is made; a younger or missing record leaves a suggestion.
    #[arg(long, env = "KUBESENT_KNOWN_GOOD_AFTER", default_value = "10m", value_parser = kubesent_common::positive_duration)]
    pub known_good_after: Duration,
    /// How long a shadow or suggested decision is followed for what people did (the same change, a
    /// different one, nothing) and whether the failure stopped.
    #[arg(long, env = "KUBESENT_FOLLOWUP_WINDOW", default_value = "24h", value_parser = kubesent_common::positive_duration)]
    pub followup_window: Duration,
    /// How often the leader looks at the decisions it follows.
    #[arg(long, env = "KUBESENT_FOLLOWUP_EVERY", default_value = "30s", value_parser = kubesent_common::positive_duration)]
    pub followup_every: Duration,
    /// Field managers (prefixes, case-insensitive) whose changes are people's; every other manager is a
    /// controller's, which says nothing of KubeSent's proposal.
    #[arg(long, env = "KUBESENT_HUMAN_FIELD_MANAGERS", value_delimiter = ',', default_value = crate::followup::HUMAN_FIELD_MANAGERS)]
    pub human_field_managers: Vec<String>,
    /// Judged decisions a class (or a model, for a class) needs before its record earns a promotion.
    #[arg(long, env = "KUBESENT_PROMOTE_AFTER", default_value_t = 20)]
    pub promote_after: u32,
    /// Share of judged decisions that must agree with people for a promotion, in percent.
    #[arg(long, env = "KUBESENT_PROMOTE_AGREEMENT", default_value_t = 95, value_parser = clap::value_parser!(u8).range(1..=100))]
    pub promote_agreement: u8,
    /// Promote a class one step as soon as its record earns it (off: KubeSent announces it and an
    /// operator runs `kubesent policy promote`).
    #[arg(long, env = "KUBESENT_AUTO_PROMOTE", default_value_t = false, action = clap::ArgAction::Set)]
    pub auto_promote: bool,
    /// Harmful automatic fixes of one class (ineffective, not landed, reverted) within
    /// `--demote-window` that demote it to approve at once (0: never).
    #[arg(long, env = "KUBESENT_DEMOTE_AFTER", default_value_t = 2)]
    pub demote_after: u32,
    /// The per-class breaker's window.
    #[arg(long, env = "KUBESENT_DEMOTE_WINDOW", default_value = "24h", value_parser = kubesent_common::positive_duration)]
    pub demote_window: Duration,
}

impl RemediatorArgs {
    /// The remediator's configuration, on streams sized by `topology`.
    pub fn config(&self, topology: Topology) -> RemediatorConfig {
        let minutes = |m: u64| Duration::from_secs(m.saturating_mul(60));
        RemediatorConfig {
            topology,
            policy: Policy {
                confidence_threshold: self.confidence_threshold,
                excluded_namespaces: self.excluded_namespaces.clone(),
                max_memory: self.max_memory,
                max_memory_factor: self.max_memory_factor,
                dry_run: self.dry_run,
            },
            leader: self.leader.config(&self.common, "kubesent-remediator"),
            identity: self.common.process.identity.clone(),
            verify_window: Duration::from_secs(self.verify_seconds),
            limits: Limits {
                cooldown: minutes(self.cooldown_minutes),
                actions_per_hour: self.max_actions_per_hour,
                breaker_failures: self.breaker_failures,
                breaker_window: minutes(self.breaker_window_minutes),
                breaker_hold: minutes(self.breaker_hold_minutes),
            },
            approval_required: self.require_approval,
            autonomy_policy: self.autonomy_policy.clone(),
            concurrency: self.concurrency,
            max_verifications: self.max_verifications,
            writes_per_second: self.writes_per_second,
            intent_retention: Duration::from_secs(self.intent_retention_days.saturating_mul(24 * 3600)),
            take_back: self.take_back,
            known_good_after: self.known_good_after,
            earned: crate::EarnedConfig {
                followup_window: self.followup_window,
                followup_every: self.followup_every,
                human_managers: self.human_field_managers.clone(),
                promotion: kubesent_proto::autonomy::PromotionRule {
                    min_judged: self.promote_after,
                    min_agreement: f64::from(self.promote_agreement) / 100.0,
                },
                auto_promote: self.auto_promote,
                demote_after: self.demote_after,
                demote_window: self.demote_window,
            },
            ..RemediatorConfig::default()
        }
    }
}
