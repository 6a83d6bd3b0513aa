//! Earned autonomy on the wire: the classes of fixes and the modes KubeSent may act in, what humans did
//! after a decision KubeSent did not carry out itself (a follow-up), how each recorded outcome counts
//! for or against a class's record (the agreement rules, [`judge`]), the promotion rule, and the policy
//! changes (promotions, demotions) the audit log keeps. Pure: the remediator, `kubesent report` and
//! `kubesent policy` share these rules so that every reader counts the same way.
//!
//! What the `kubesent-intents` bucket holds for it, beside intents and decisions:
//! - `followup.<incident>`: a decision being followed ([`Following`]), written and removed by the
//!   remediator;
//! - `record.<class>`: the class's recent judgements ([`ClassRecord`]), written by the remediator;
//! - `autonomy.<class>` and `autonomy.<class>.<namespace>`: a promotion or demotion in force over the
//!   policy file ([`Override`]), written by the remediator;
//! - `policy.<NATS user>.<class>[.<namespace>]`: an operator's request to promote, demote or reset a
//!   class ([`PolicyRequest`]); the key names the user, as a decision's does, and the remediator takes
//!   it, records it and removes it.

use jiff::Timestamp;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::{
    Action, Diagnosis, IncidentId, Outcome, OutcomeResult, PodRef, Strategy, VerdictSource, WorkloadRef,
};

/// A kind of fix, as autonomy is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum ActionClass {
    /// A memory limit raised on the owner's pod template (a rollout replaces the pods).
    MemoryRaise,
    /// A bare pod's memory resized in place.
    InPlaceResize,
    /// A bare pod deleted and created again with more memory.
    ForceReplace,
    /// A container's image set back to the previous revision's.
    ImageRollback,
    /// The owner's template set back to the revision before.
    RevisionRollback,
    /// A Deployment's rollout paused.
    PauseRollout,
}

impl ActionClass {
    /// Every class.
    pub const ALL: [Self; 6] = [
        Self::MemoryRaise,
        Self::InPlaceResize,
        Self::ForceReplace,
        Self::ImageRollback,
        Self::RevisionRollback,
        Self::PauseRollout,
    ];

    /// The class's name in the policy file, the metrics and the bucket's keys.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::MemoryRaise => "memory-raise",
            Self::InPlaceResize => "in-place-resize",
            Self::ForceReplace => "force-replace",
            Self::ImageRollback => "image-rollback",
            Self::RevisionRollback => "revision-rollback",
            Self::PauseRollout => "pause-rollout",
        }
    }

    /// The class named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|c| c.as_str() == name.trim())
    }

    /// The class of `action` carried out by `strategy`; `None` for no action.
    pub fn of(action: &Action, strategy: Strategy) -> Option<Self> {
        Some(match action {
            Action::IncreaseMemory { .. } => match strategy {
                Strategy::InPlaceResize => Self::InPlaceResize,
                Strategy::ForceReplace => Self::ForceReplace,
                _ => Self::MemoryRaise,
            },
            Action::RollbackImage { .. } => Self::ImageRollback,
            Action::RollbackRevision { .. } => Self::RevisionRollback,
            Action::PauseRollout { .. } => Self::PauseRollout,
            Action::None => return None,
        })
    }
}

impl std::fmt::Display for ActionClass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How far KubeSent goes with a class, from the most to the least it does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Acts on its own.
    Auto,
    /// Waits for a human's approval.
    Approve,
    /// Decides, records and announces what it would do; changes nothing.
    Shadow,
}

impl Mode {
    /// The mode's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Approve => "approve",
            Self::Shadow => "shadow",
        }
    }

    /// The mode named `name`.
    pub fn parse(name: &str) -> Option<Self> {
        [Self::Auto, Self::Approve, Self::Shadow].into_iter().find(|m| m.as_str() == name.trim())
    }

    /// The stricter of the two.
    pub fn stricter(self, other: Self) -> Self {
        self.max(other)
    }

    /// One step more autonomy (shadow → approve → auto); `None` from auto.
    pub const fn promoted(self) -> Option<Self> {
        match self {
            Self::Shadow => Some(Self::Approve),
            Self::Approve => Some(Self::Auto),
            Self::Auto => None,
        }
    }

    /// One step less autonomy (auto → approve → shadow); `None` from shadow.
    pub const fn demoted(self) -> Option<Self> {
        match self {
            Self::Auto => Some(Self::Approve),
            Self::Approve => Some(Self::Shadow),
            Self::Shadow => None,
        }
    }
}

impl std::fmt::Display for Mode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The class of a decision and the mode it was made in, as the audit log records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Autonomy {
    /// The class of the fix.
    pub class: ActionClass,
    /// The mode it was decided in (`auto` also for a fix a guardrail only suggested).
    pub mode: Mode,
}

/// What humans did about a decision KubeSent did not carry out itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum HumanResponse {
    /// A human made the same change: the memory limit raised to at least what KubeSent proposed, the
    /// same image or revision, the rollout paused.
    Same,
    /// A human changed the same field to something else.
    Different,
    /// Nobody changed the field within the window.
    Nothing,
    /// A controller (a GitOps tool, an autoscaler, KubeSent itself) changed it, not a human: no verdict on
    /// KubeSent's proposal.
    Controller,
}

impl HumanResponse {
    /// The response's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Same => "same",
            Self::Different => "different",
            Self::Nothing => "nothing",
            Self::Controller => "controller",
        }
    }
}

/// A follow-up's finding, on an outcome of result [`OutcomeResult::Followed`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FollowUp {
    /// What humans did.
    pub response: HumanResponse,
    /// The field manager whose change it was (`kubectl-edit`, `argocd-controller`, …).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// When the change was made (the managed field's time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub changed_at: Option<Timestamp>,
    /// Whether the failure had stopped when the follow-up ended.
    pub failure_stopped: bool,
}

/// How one outcome counts in its class's record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Judgement {
    /// KubeSent's proposal was right: a human made the same change, approved it and it healed, or an
    /// automatic fix healed.
    Agreed,
    /// A human did otherwise: rejected it, changed the field differently, or the failure stopped
    /// without the change (it was not needed); another actor undid an automatic fix.
    Disagreed,
    /// KubeSent's change hurt or did nothing: ineffective, not landed, reverted.
    Harmful,
}

impl Judgement {
    /// The judgement's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Agreed => "agreed",
            Self::Disagreed => "disagreed",
            Self::Harmful => "harmful",
        }
    }
}

/// How `outcome` counts in its class's record (the agreement rules; see docs/design-notes.md): `None` for
/// an outcome that says nothing of whether the proposal was right (a decision not yet answered, a
/// follow-up that saw nobody act, a change a controller made).
pub fn judge(outcome: &Outcome) -> Option<Judgement> {
    outcome.autonomy?;
    let human = outcome.decided_by.is_some();
    Some(match outcome.result {
        OutcomeResult::Followed => {
            let followed = outcome.followup.as_ref()?;
            match followed.response {
                HumanResponse::Same => Judgement::Agreed,
                HumanResponse::Different => Judgement::Disagreed,
                HumanResponse::Nothing if followed.failure_stopped => Judgement::Disagreed,
                HumanResponse::Nothing | HumanResponse::Controller => return None,
            }
        }
        OutcomeResult::Healed => Judgement::Agreed,
        OutcomeResult::Ineffective | OutcomeResult::NotLanded | OutcomeResult::Reverted => Judgement::Harmful,
        OutcomeResult::Overridden => Judgement::Disagreed,
        OutcomeResult::Denied if human => Judgement::Disagreed,
        _ => return None,
    })
}

/// Who proposed a fix, as records count it: `rules`, or the model's name.
pub fn proposer(source: &VerdictSource) -> String {
    match source {
        VerdictSource::Model { model } => model.clone(),
        VerdictSource::Rules { .. } | VerdictSource::None => RULES.to_owned(),
    }
}

/// The proposer name of the deterministic rules.
pub const RULES: &str = "rules";

/// Judgements counted together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Tally {
    /// Agreed.
    pub agreed: u32,
    /// Disagreed.
    pub disagreed: u32,
    /// Harmful.
    pub harmful: u32,
}

impl Tally {
    /// Counts one more judgement.
    pub fn add(&mut self, judgement: Judgement) {
        match judgement {
            Judgement::Agreed => self.agreed += 1,
            Judgement::Disagreed => self.disagreed += 1,
            Judgement::Harmful => self.harmful += 1,
        }
    }

    /// Every judgement counted.
    pub const fn judged(&self) -> u32 {
        self.agreed + self.disagreed + self.harmful
    }

    /// The share agreed, 0–1; `None` before any judgement.
    pub fn agreement(&self) -> Option<f64> {
        (self.judged() > 0).then(|| f64::from(self.agreed) / f64::from(self.judged()))
    }

    /// Whether the tally earns a promotion under `rule`, or why not.
    pub fn earns(&self, rule: PromotionRule) -> Result<(), String> {
        if self.harmful > 0 {
            return Err(format!("{} harmful", self.harmful));
        }
        if self.judged() < rule.min_judged {
            return Err(format!("{} of the {} judged decisions it needs", self.judged(), rule.min_judged));
        }
        let agreement = self.agreement().unwrap_or(0.0);
        if agreement < rule.min_agreement {
            return Err(format!(
                "agreement {:.0} % under {:.0} %",
                agreement * 100.0,
                rule.min_agreement * 100.0
            ));
        }
        Ok(())
    }
}

/// When a record earns a class (or a model, for a class) one step more autonomy.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PromotionRule {
    /// Judged decisions needed.
    pub min_judged: u32,
    /// Share of them agreed, 0–1.
    pub min_agreement: f64,
}

impl Default for PromotionRule {
    /// 20 judged decisions, 95 % agreed (and nothing harmful, always).
    fn default() -> Self {
        Self { min_judged: 20, min_agreement: 0.95 }
    }
}

/// A decision KubeSent did not carry out itself, followed until a human acts or its window ends
/// (`followup.<incident>` in the intents bucket).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Following {
    /// Payload schema version.
    pub schema: u32,
    /// The incident.
    pub incident: IncidentId,
    /// The failing pod.
    pub pod: PodRef,
    /// The workload the fix would change (a bare pod: kind `Pod`).
    pub workload: WorkloadRef,
    /// The fix KubeSent proposed (its `from` is what the cluster ran when it decided).
    pub action: Action,
    /// The class and mode of the decision.
    pub autonomy: Autonomy,
    /// The diagnosis, for the follow-up's outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub diagnosis: Option<Diagnosis>,
    /// When KubeSent decided.
    pub decided_at: Timestamp,
    /// When the follow-up ends.
    pub until: Timestamp,
    /// A human's change seen so far; the follow-up then waits (within the window) for the failure to stop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seen: Option<SeenChange>,
    /// Since when every pod of the target has run the container ready (the failure counts as stopped
    /// once that held for the verify window).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<Timestamp>,
}

/// A change to the followed field.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SeenChange {
    /// Same, different or a controller's.
    pub response: HumanResponse,
    /// Its field manager.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by: Option<String>,
    /// Its time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub at: Option<Timestamp>,
}

/// The key prefix of follow-ups.
pub const FOLLOWUP_PREFIX: &str = "followup";
/// The key prefix of class records.
pub const RECORD_PREFIX: &str = "record";
/// The key prefix of overrides.
pub const OVERRIDE_PREFIX: &str = "autonomy";
/// The key prefix of operators' policy requests.
pub const REQUEST_PREFIX: &str = "policy";
/// Largest policy request the remediator reads.
pub const MAX_REQUEST_BYTES: usize = 4096;
/// Judgements a class record keeps (the newest).
pub const MAX_RECORD_ENTRIES: usize = 500;

/// The key of `incident`'s follow-up.
pub fn followup_key(incident: &IncidentId) -> String {
    format!("{FOLLOWUP_PREFIX}.{incident}")
}

/// The key of `class`'s record.
pub fn record_key(class: ActionClass) -> String {
    format!("{RECORD_PREFIX}.{class}")
}

/// The key of the override of `class` (in `namespace`, or for every namespace).
pub fn override_key(class: ActionClass, namespace: Option<&str>) -> Result<String, crate::InvalidNamespace> {
    Ok(match namespace {
        Some(ns) if crate::is_dns_label(ns) => format!("{OVERRIDE_PREFIX}.{class}.{ns}"),
        Some(ns) => return Err(crate::InvalidNamespace(ns.to_owned())),
        None => format!("{OVERRIDE_PREFIX}.{class}"),
    })
}

/// The key of `user`'s request about `class` (in `namespace`).
pub fn request_key(user: &str, class: ActionClass, namespace: Option<&str>) -> Result<String, String> {
    if !crate::approval::is_key_token(user) {
        return Err(format!("{user:?} cannot name a key"));
    }
    match namespace {
        Some(ns) if crate::is_dns_label(ns) => Ok(format!("{REQUEST_PREFIX}.{user}.{class}.{ns}")),
        Some(ns) => Err(format!("{ns:?} is not a namespace name")),
        None => Ok(format!("{REQUEST_PREFIX}.{user}.{class}")),
    }
}

/// The user, class and namespace a request key names.
pub fn parse_request_key(key: &str) -> Option<(String, ActionClass, Option<String>)> {
    let mut parts = key.split('.');
    if parts.next()? != REQUEST_PREFIX {
        return None;
    }
    let user = parts.next().filter(|u| crate::approval::is_key_token(u))?;
    let class = ActionClass::parse(parts.next()?)?;
    let namespace = match parts.next() {
        Some(ns) if crate::is_dns_label(ns) => Some(ns.to_owned()),
        Some(_) => return None,
        None => None,
    };
    parts.next().is_none().then(|| (user.to_owned(), class, namespace))
}

/// One judgement in a class record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RecordEntry {
    /// The incident judged (a later judgement of the same incident replaces this one).
    pub incident: IncidentId,
    /// Its namespace.
    pub namespace: String,
    /// Who proposed the fix: `rules` or a model.
    pub proposer: String,
    /// The mode it was decided in.
    pub mode: Mode,
    /// How it counts.
    pub judgement: Judgement,
    /// When it was judged.
    pub at: Timestamp,
}

/// A class's recent judgements (`record.<class>` in the intents bucket), newest last.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ClassRecord {
    /// The judgements, at most [`MAX_RECORD_ENTRIES`].
    pub entries: Vec<RecordEntry>,
    /// When KubeSent announced that the class's record earns a promotion (cleared when it no longer
    /// does), so it is announced once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eligible_since: Option<Timestamp>,
}

impl ClassRecord {
    /// Adds `entry`, replacing an earlier judgement of its incident and dropping the oldest beyond the
    /// bound.
    pub fn add(&mut self, entry: RecordEntry) {
        self.entries.retain(|e| e.incident != entry.incident);
        self.entries.push(entry);
        let excess = self.entries.len().saturating_sub(MAX_RECORD_ENTRIES);
        self.entries.drain(..excess);
    }

    /// The tally of judgements since `since` that `keep` selects.
    pub fn tally(&self, since: Timestamp, keep: impl Fn(&RecordEntry) -> bool) -> Tally {
        let mut tally = Tally::default();
        for entry in self.entries.iter().filter(|e| e.at >= since && keep(e)) {
            tally.add(entry.judgement);
        }
        tally
    }
}

/// A promotion or demotion in force over the policy file (`autonomy.<class>[.<namespace>]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Override {
    /// Payload schema version.
    pub schema: u32,
    /// The mode in force.
    pub mode: Mode,
    /// How it came: [`PolicyEvent::Promoted`] (replaces the policy file's mode) or
    /// [`PolicyEvent::Demoted`] (for every namespace: a ceiling over whatever the file says).
    pub event: PolicyEvent,
    /// Who set it: an operator's attribution, or `kubesent` for an automatic demotion.
    pub by: String,
    /// Why.
    pub why: String,
    /// When.
    pub at: Timestamp,
}

/// What an operator asks of a class.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyStep {
    /// One step more autonomy.
    Promote,
    /// One step less.
    Demote,
    /// Remove the override: the policy file decides again.
    Reset,
}

impl PolicyStep {
    /// The step's name.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Promote => "promote",
            Self::Demote => "demote",
            Self::Reset => "reset",
        }
    }
}

/// An operator's request about a class (`policy.<NATS user>.<class>[.<namespace>]`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyRequest {
    /// Payload schema version.
    pub schema: u32,
    /// Promote, demote or reset.
    pub step: PolicyStep,
    /// Promote even though the record does not earn it.
    #[serde(default)]
    pub force: bool,
    /// The name the operator gave.
    pub by: String,
    /// Why, in the operator's words.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When it was asked.
    pub at: Timestamp,
}

/// What changed in the policy, as the audit log records it (`kubesent.policy.<event>`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PolicyEvent {
    /// A class (or a class in a namespace) got one step more autonomy.
    Promoted,
    /// It got one step less: by an operator, or automatically after harmful fixes.
    Demoted,
    /// An override was removed.
    Reset,
    /// A class's record now earns a promotion (nothing changed; an operator decides).
    Eligible,
    /// An operator's request was refused (nothing changed).
    Refused,
}

impl PolicyEvent {
    /// The event's name, also a subject token.
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Promoted => "promoted",
            Self::Demoted => "demoted",
            Self::Reset => "reset",
            Self::Eligible => "eligible",
            Self::Refused => "refused",
        }
    }
}

/// A change of the policy in force, or a class that earned one: an entry of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyChange {
    /// Payload schema version.
    pub schema: u32,
    /// What happened.
    pub event: PolicyEvent,
    /// The class.
    pub class: ActionClass,
    /// The namespace, when it was for one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The mode before.
    pub from: Mode,
    /// The mode after (the same for `eligible` and `refused`).
    pub to: Mode,
    /// Who: an operator's attribution, or `kubesent`.
    pub by: String,
    /// Why, in a sentence (with the record that justified it).
    pub why: String,
    /// The class's record when it happened.
    pub record: Tally,
    /// When.
    pub at: Timestamp,
}

/// `kubesent.policy.<event>`
pub fn policy_subject(event: PolicyEvent) -> String {
    format!("kubesent.policy.{}", event.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Diagnosis, MemoryQuantity};

    fn outcome(result: OutcomeResult, autonomy: Option<Autonomy>) -> Outcome {
        Outcome {
            schema: crate::SCHEMA_VERSION,
            incident: IncidentId("inc-1".into()),
            pod: PodRef {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: "u".into(),
                resource_version: "1".into(),
            },
            action: Action::IncreaseMemory {
                container: "app".into(),
                from: MemoryQuantity::from_mib(128),
                to: MemoryQuantity::from_mib(256),
            },
            result,
            strategy: None,
            detail: String::new(),
            replacement_uid: None,
            actor: "r".into(),
            decided_by: None,
            trace_id: None,
            diagnosis: None::<Diagnosis>,
            autonomy,
            followup: None,
            at: Timestamp::UNIX_EPOCH,
        }
    }

    #[test]
    fn outcomes_count_for_or_against_a_class_by_the_agreement_rules() {
        let auto = Some(Autonomy { class: ActionClass::MemoryRaise, mode: Mode::Auto });
        let shadow = Some(Autonomy { class: ActionClass::MemoryRaise, mode: Mode::Shadow });
        let followed = |response, failure_stopped| {
            let mut o = outcome(OutcomeResult::Followed, shadow);
            o.followup = Some(FollowUp { response, by: None, changed_at: None, failure_stopped });
            o
        };
        let rejected = {
            let approve = Autonomy { class: ActionClass::MemoryRaise, mode: Mode::Approve };
            let mut o = outcome(OutcomeResult::Denied, Some(approve));
            o.decided_by = Some("alice (NATS user kubesent-operator)".into());
            o
        };
        use Judgement::*;
        let cases = [
            (outcome(OutcomeResult::Healed, auto), Some(Agreed), "an automatic fix that healed"),
            (outcome(OutcomeResult::Ineffective, auto), Some(Harmful), "one that did not heal"),
            (outcome(OutcomeResult::NotLanded, auto), Some(Harmful), "one admission undid"),
            (outcome(OutcomeResult::Reverted, auto), Some(Harmful), "one taken back"),
            (outcome(OutcomeResult::Overridden, auto), Some(Disagreed), "one another actor changed"),
            (outcome(OutcomeResult::Denied, auto), None, "a gate's denial says nothing"),
            (rejected, Some(Disagreed), "a human's rejection"),
            (outcome(OutcomeResult::Suggested, shadow), None, "a decision not yet answered"),
            (followed(HumanResponse::Same, false), Some(Agreed), "a human made the same change"),
            (followed(HumanResponse::Different, true), Some(Disagreed), "a different change"),
            (followed(HumanResponse::Nothing, true), Some(Disagreed), "it stopped without the fix"),
            (followed(HumanResponse::Nothing, false), None, "nobody acted"),
            (followed(HumanResponse::Controller, true), None, "a controller acted"),
            (outcome(OutcomeResult::Healed, None), None, "no class: not counted"),
        ];
        for (outcome, expected, case) in cases {
            assert_eq!(judge(&outcome), expected, "{case}");
        }
    }

    #[test]
    fn a_record_earns_a_promotion_with_enough_agreement_and_nothing_harmful() {
        let rule = PromotionRule::default();
        let tally = |agreed, disagreed, harmful| Tally { agreed, disagreed, harmful };
        assert!(tally(20, 0, 0).earns(rule).is_ok());
        assert!(tally(19, 1, 0).earns(rule).is_ok(), "exactly 95 %");
        assert!(tally(18, 2, 0).earns(rule).expect_err("90 %").contains("agreement 90 %"));
        assert!(tally(19, 0, 0).earns(rule).expect_err("too few").contains("19 of the 20"));
        assert!(tally(40, 0, 1).earns(rule).expect_err("harm").contains("1 harmful"));
    }

    #[test]
    fn a_record_keeps_one_judgement_per_incident_and_its_newest_entries() {
        let entry = |incident: usize, judgement, at: i64| RecordEntry {
            incident: IncidentId(format!("inc-{incident}")),
            namespace: "shop".into(),
            proposer: RULES.into(),
            mode: Mode::Auto,
            judgement,
            at: Timestamp::from_second(at).expect("time"),
        };
        let mut record = ClassRecord::default();
        record.add(entry(1, Judgement::Agreed, 10));
        record.add(entry(1, Judgement::Harmful, 20));
        assert_eq!(
            record.tally(Timestamp::UNIX_EPOCH, |_| true),
            Tally { agreed: 0, disagreed: 0, harmful: 1 }
        );
        for i in 2..MAX_RECORD_ENTRIES + 10 {
            record.add(entry(i, Judgement::Agreed, 100 + i as i64));
        }
        assert_eq!(record.entries.len(), MAX_RECORD_ENTRIES);
        assert!(record.entries.iter().all(|e| e.incident.as_str() != "inc-1"), "the oldest dropped");
        let since = Timestamp::from_second(100 + MAX_RECORD_ENTRIES as i64).expect("time");
        assert_eq!(record.tally(since, |_| true).agreed, 10);
    }

    #[test]
    fn request_keys_name_the_user_class_and_namespace_and_nothing_else() {
        let key = request_key("kubesent-operator", ActionClass::MemoryRaise, Some("payments")).expect("key");
        assert_eq!(key, "policy.kubesent-operator.memory-raise.payments");
        assert_eq!(
            parse_request_key(&key),
            Some(("kubesent-operator".into(), ActionClass::MemoryRaise, Some("payments".into())))
        );
        assert_eq!(
            parse_request_key("policy.alice.image-rollback"),
            Some(("alice".into(), ActionClass::ImageRollback, None))
        );
        for bad in [
            "policy.alice.memory-lower",
            "policy.alice.memory-raise.Payments",
            "policy.alice.memory-raise.a.b",
            "decision.alice.memory-raise",
            "policy..memory-raise",
        ] {
            assert_eq!(parse_request_key(bad), None, "{bad}");
        }
        assert!(request_key("a.b", ActionClass::MemoryRaise, None).is_err());
        assert!(override_key(ActionClass::MemoryRaise, Some("a.b")).is_err());
        assert_eq!(override_key(ActionClass::PauseRollout, None).as_deref(), Ok("autonomy.pause-rollout"));
    }

    #[test]
    fn modes_step_one_at_a_time() {
        assert_eq!(Mode::Shadow.promoted(), Some(Mode::Approve));
        assert_eq!(Mode::Approve.promoted(), Some(Mode::Auto));
        assert_eq!(Mode::Auto.promoted(), None);
        assert_eq!(Mode::Auto.demoted(), Some(Mode::Approve));
        assert_eq!(Mode::Shadow.demoted(), None);
    }
}
