//! `kubesent policy`: promote, demote or reset an action class (the leading remediator checks the
//! class's record, sets the override and records the change, attributed, in the audit log), and show the
//! overrides in force with each class's record.

use std::time::Duration;

use anyhow::{Context as _, bail};
use async_nats::jetstream::{self, kv};
use clap::{Args, Subcommand};
use futures::StreamExt as _;
use kubesent_common::nats::{self, NatsArgs, Role};
use kubesent_proto::{
    self as proto,
    autonomy::{self as earned, ActionClass, ClassRecord, Override, PolicyEvent, PolicyStep},
};

use crate::cli::OperatorArgs;

/// `kubesent policy`
#[derive(Debug, Args)]
pub struct PolicyArgs {
    /// What to do.
    #[command(subcommand)]
    command: PolicyCommand,
}

/// `kubesent policy …`
#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// One step more autonomy for a class (shadow → approve → auto), if its record earns it.
    Promote(StepArgs),
    /// One step less (auto → approve → shadow).
    Demote(StepArgs),
    /// Remove a promotion or demotion: the policy file decides the class again.
    Reset(StepArgs),
    /// The overrides in force and each class's record (the last 30 days the remediator keeps).
    Show(ShowArgs),
}

/// A step for one class.
#[derive(Debug, Args)]
pub struct StepArgs {
    /// The action class (memory-raise, in-place-resize, force-replace, image-rollback,
    /// revision-rollback, pause-rollout).
    #[arg(value_parser = parse_class)]
    class: ActionClass,
    /// Only in this namespace (else for every namespace).
    #[arg(short = 'n', long)]
    namespace: Option<String>,
    /// Promote even though the record does not earn it (recorded as forced).
    #[arg(long)]
    force: bool,
    /// Why (recorded in the audit log).
    #[arg(long)]
    reason: Option<String>,
    /// How long to wait for the leading remediator to take the request.
    #[arg(long, default_value_t = 30)]
    wait_seconds: u64,
    #[command(flatten)]
    operator: OperatorArgs,
}

/// `kubesent policy show`
#[derive(Debug, Args)]
pub struct ShowArgs {
    #[command(flatten)]
    promotion: crate::report::PromotionArgs,
    #[command(flatten)]
    nats: NatsArgs,
}

fn parse_class(text: &str) -> Result<ActionClass, String> {
    ActionClass::parse(text).ok_or_else(|| {
        let names: Vec<&str> = ActionClass::ALL.iter().map(|c| c.as_str()).collect();
        format!("{text:?} is not an action class (one of {})", names.join(", "))
    })
}

/// Runs `kubesent policy`.
pub async fn run(args: PolicyArgs) -> anyhow::Result<()> {
    let (step, args) = match args.command {
        PolicyCommand::Promote(a) => (PolicyStep::Promote, a),
        PolicyCommand::Demote(a) => (PolicyStep::Demote, a),
        PolicyCommand::Reset(a) => (PolicyStep::Reset, a),
        PolicyCommand::Show(a) => return show(a).await,
    };
    if let Some(ns) = &args.namespace
        && !proto::is_dns_label(ns)
    {
        bail!("{ns:?} is not a namespace name");
    }
    let operator = args.operator.connect().await?;
    let wait = Duration::from_secs(args.wait_seconds);
    let taken = operator
        .policy(args.class, args.namespace.as_deref(), step, args.force, args.reason.clone(), wait)
        .await?;
    let scope = args.namespace.as_deref().map(|ns| format!(" in {ns}")).unwrap_or_default();
    match taken {
        Some(change) if change.event == PolicyEvent::Refused => bail!("refused: {}", change.why),
        Some(change) => crate::out!(
            "{} {}{scope}: {} → {} ({}); recorded in {}",
            change.event.as_str(),
            change.class,
            change.from,
            change.to,
            change.why,
            proto::OUTCOMES_STREAM
        )?,
        None => crate::out!(
            "the request to {} {}{scope} is recorded as {}; no leading remediator has taken it yet (it will when one leads)",
            step.as_str(),
            args.class,
            operator.attribution()
        )?,
    }
    Ok(())
}

async fn show(args: ShowArgs) -> anyhow::Result<()> {
    let client = nats::connect_as(&args.nats, Role::Reader, "kubesent-policy").await?;
    let js = jetstream::new(client);
    let bucket = nats::existing_bucket(&js, proto::INTENTS_BUCKET).await?;
    let rule = args.promotion.rule();
    let since = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(30 * 24);
    let mut overrides = Vec::new();
    let mut keys = bucket.keys().await.context("listing the intents bucket")?;
    while let Some(key) = keys.next().await {
        let key = key.context("listing the intents bucket")?;
        if key.starts_with(&format!("{}.", earned::OVERRIDE_PREFIX))
            && let Some(value) = bucket.get(&key).await.context("reading an override")?
            && let Ok(set) = serde_json::from_slice::<Override>(&value)
        {
            overrides.push((key, set));
        }
    }
    crate::out!(
        "{:<18} {:<9} {:<8} {:<9} {:<8}  promotion",
        "CLASS",
        "JUDGED",
        "AGREED",
        "HARMFUL",
        "AGREEMENT"
    )?;
    for class in ActionClass::ALL {
        let record = record(&bucket, class).await?;
        let tally = record.tally(since, |_| true);
        let agreement = tally.agreement().map_or_else(|| "-".to_owned(), |a| format!("{:.0} %", a * 100.0));
        let promotion = match tally.earns(rule) {
            Ok(()) => "earns one".to_owned(),
            Err(short) => format!("not yet: {short}"),
        };
        crate::out!(
            "{:<18} {:<9} {:<8} {:<9} {:<8}  {promotion}",
            class.as_str(),
            tally.judged(),
            tally.agreed,
            tally.harmful,
            agreement
        )?;
    }
    if overrides.is_empty() {
        crate::out!("no override is in force: the policy file decides every class")?;
    }
    for (key, set) in overrides {
        let scope = key.strip_prefix(&format!("{}.", earned::OVERRIDE_PREFIX)).unwrap_or(&key);
        crate::out!(
            "override {scope}: {} ({}) by {} at {}: {}",
            set.mode,
            set.event.as_str(),
            set.by,
            set.at.strftime("%Y-%m-%d %H:%M:%S"),
            set.why
        )?;
    }
    Ok(())
}

async fn record(bucket: &kv::Store, class: ActionClass) -> anyhow::Result<ClassRecord> {
    let value = bucket.get(earned::record_key(class)).await.context("reading a class record")?;
    Ok(value.and_then(|v| serde_json::from_slice(&v).ok()).unwrap_or_default())
}
