//! Earned autonomy: how far KubeSent may go with each class of action, per namespace. A policy file (a
//! mounted ConfigMap) gives a mode per action class and overrides per namespace, by name or by labels; a
//! namespace's own annotation may only make it stricter, and `--dry-run`/`--require-approval` make every
//! class at least `shadow`/`approve`. Pure: parsing, validation and resolution; reading the file and the
//! Namespace is the caller's.
//!
//! ```yaml
//! default: auto                 # every class not named
//! classes:
//!   image-rollback: approve
//!   revision-rollback: approve
//! namespaces:
//!   - name: payments
//!     mode: shadow              # every class
//!   - labels: {team: checkout}
//!     classes:
//!       memory-raise: approve
//! ```

use std::collections::BTreeMap;

pub use kubesent_proto::autonomy::{ActionClass, Mode};
use serde::Deserialize;

/// The annotation by which a namespace makes its own modes stricter: a mode (`shadow`) for every class,
/// or `class=mode` pairs (`memory-raise=approve,force-replace=shadow`).
pub const NAMESPACE_ANNOTATION: &str = "kubesent.io/autonomy";

/// Which namespaces a rule of the policy applies to.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NamespaceRule {
    /// The namespace's name.
    #[serde(default)]
    pub name: Option<String>,
    /// Labels the namespace carries, all of them.
    #[serde(default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// One mode for every class.
    #[serde(default)]
    pub mode: Option<Mode>,
    /// Modes by class (over `mode`).
    #[serde(default)]
    pub classes: BTreeMap<ActionClass, Mode>,
}

/// The policy file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AutonomyPolicy {
    /// The mode of every class not named in `classes`.
    #[serde(default = "auto")]
    pub default: Mode,
    /// Modes by class.
    #[serde(default)]
    pub classes: BTreeMap<ActionClass, Mode>,
    /// Overrides per namespace; the first rule that matches a namespace applies.
    #[serde(default)]
    pub namespaces: Vec<NamespaceRule>,
}

fn auto() -> Mode {
    Mode::Auto
}

impl Default for AutonomyPolicy {
    /// Every class `auto` (the global flags still apply).
    fn default() -> Self {
        Self { default: Mode::Auto, classes: BTreeMap::new(), namespaces: Vec::new() }
    }
}

/// Why a policy file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Not the format (the message names the line).
    #[error("{0}")]
    Format(String),
    /// A namespace rule that names no namespace, or says nothing.
    #[error("namespace rule {index}: {why}")]
    Rule {
        /// Its position (1-based).
        index: usize,
        /// What is wrong.
        why: &'static str,
    },
}

impl AutonomyPolicy {
    /// Parses and validates a policy file's text.
    pub fn parse(text: &str) -> Result<Self, PolicyError> {
        if text.trim().is_empty() {
            return Ok(Self::default());
        }
        // The parser's first line names the line and column and what is wrong (its snippet follows).
        let policy: Self = serde_saphyr::from_str(text).map_err(|e| {
            let said = e.to_string();
            let first = said.lines().next().unwrap_or_default().trim();
            PolicyError::Format(first.strip_prefix("error: ").unwrap_or(first).to_owned())
        })?;
        for (i, rule) in policy.namespaces.iter().enumerate() {
            let index = i + 1;
            if rule.name.is_none() && rule.labels.as_ref().is_none_or(BTreeMap::is_empty) {
                return Err(PolicyError::Rule { index, why: "it names no namespace (name or labels)" });
            }
            if rule.name.is_some() && rule.labels.is_some() {
                return Err(PolicyError::Rule { index, why: "it gives both a name and labels" });
            }
            if rule.mode.is_none() && rule.classes.is_empty() {
                return Err(PolicyError::Rule { index, why: "it sets no mode (mode or classes)" });
            }
        }
        Ok(policy)
    }
}

/// What the remediator knows of the target's namespace, read from the cluster.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NamespaceFacts {
    /// Its name.
    pub name: String,
    /// Its labels.
    pub labels: BTreeMap<String, String>,
    /// Its [`NAMESPACE_ANNOTATION`], if any.
    pub annotation: Option<String>,
}

/// The settings that apply to every class at once.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Global {
    /// `--dry-run`: every class in shadow.
    pub dry_run: bool,
    /// `--require-approval`: every class at least approve.
    pub require_approval: bool,
}

/// Who proposed the action: the rules, or a model (on probation: held to `approve` until its own record
/// for the class earns a promotion).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Proposer<'a> {
    /// The deterministic rules.
    Rules,
    /// A model, by name, and whether its own record for the class earns it out of probation.
    Model(&'a str, bool),
}

/// Promotions and demotions in force over the policy file for one class (from the intents bucket).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    /// For every namespace: a promotion replaces the file's mode for the class; a demotion is a ceiling
    /// in every namespace.
    pub cluster: Option<Override>,
    /// For the target's namespace: replaces whatever the file says there.
    pub namespace: Option<Override>,
}

/// One override, as [`Overrides`] applies it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Override {
    /// The mode in force.
    pub mode: Mode,
    /// Whether it came from a demotion (a ceiling) rather than a promotion.
    pub demotion: bool,
    /// Who set it.
    pub by: String,
}

impl Override {
    /// The override a stored one is.
    pub fn of(stored: &kubesent_proto::autonomy::Override) -> Self {
        Self {
            mode: stored.mode,
            demotion: stored.event == kubesent_proto::autonomy::PolicyEvent::Demoted,
            by: stored.by.clone(),
        }
    }
}

/// A class's mode in a namespace, and what set it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The mode.
    pub mode: Mode,
    /// What decided it, in words (`namespace rule 1 (payments)`).
    pub why: String,
}

/// The namespace annotation's mode for `class`, when it names one (unknown words are ignored: the
/// annotation can only make things stricter, never looser).
fn annotated(annotation: &str, class: ActionClass) -> Option<Mode> {
    if let Some(mode) = Mode::parse(annotation) {
        return Some(mode);
    }
    annotation.split(',').filter_map(|pair| pair.split_once('=')).find_map(|(name, mode)| {
        (ActionClass::parse(name) == Some(class)).then(|| Mode::parse(mode)).flatten()
    })
}

/// The mode the policy gives `class` in `namespace` (every namespace when `None`), with the overrides in
/// force, before the namespace's annotation, a model's probation and the global flags: what `kubesent
/// policy promote` steps from.
pub fn policy_mode(
    policy: &AutonomyPolicy,
    class: ActionClass,
    namespace: Option<&NamespaceFacts>,
    overrides: &Overrides,
) -> Resolved {
    let (mut mode, mut why) = match policy.classes.get(&class) {
        Some(mode) => (*mode, format!("the policy's mode for {}", class.as_str())),
        None => (policy.default, "the policy's default".to_owned()),
    };
    if let Some(promoted) = overrides.cluster.as_ref().filter(|o| !o.demotion) {
        mode = promoted.mode;
        why = format!("{}'s promotion of {}", promoted.by, class.as_str());
    }
    let Some(namespace) = namespace else {
        if let Some(demoted) = overrides.cluster.as_ref().filter(|o| o.demotion) {
            return Resolved {
                mode: demoted.mode,
                why: format!("{}'s demotion of {}", demoted.by, class.as_str()),
            };
        }
        return Resolved { mode, why };
    };
    let matching = policy.namespaces.iter().enumerate().find(|(_, rule)| match (&rule.name, &rule.labels) {
        (Some(name), _) => *name == namespace.name,
        (None, Some(labels)) => labels.iter().all(|(k, v)| namespace.labels.get(k) == Some(v)),
        (None, None) => false,
    });
    if let Some((i, rule)) = matching
        && let Some(ruled) = rule.classes.get(&class).copied().or(rule.mode)
    {
        mode = ruled;
        why = format!(
            "namespace rule {} of the policy ({})",
            i + 1,
            rule.name.as_deref().unwrap_or("by labels")
        );
    }
    if let Some(set) = &overrides.namespace {
        mode = set.mode;
        why = format!(
            "{}'s {} of {} in {}",
            set.by,
            if set.demotion { "demotion" } else { "promotion" },
            class.as_str(),
            namespace.name
        );
    }
    if let Some(demoted) = overrides.cluster.as_ref().filter(|o| o.demotion)
        && demoted.mode > mode
    {
        mode = demoted.mode;
        why = format!("{}'s demotion of {}", demoted.by, class.as_str());
    }
    Resolved { mode, why }
}

/// The mode of `class` in `namespace`: the policy's (with the overrides in force), then stricter only:
/// the namespace's annotation, a model's probation and the global flags.
pub fn resolve(
    policy: &AutonomyPolicy,
    class: ActionClass,
    namespace: &NamespaceFacts,
    overrides: &Overrides,
    global: Global,
    proposer: Proposer<'_>,
) -> Resolved {
    let Resolved { mut mode, mut why } = policy_mode(policy, class, Some(namespace), overrides);
    if let Some(annotated) = namespace.annotation.as_deref().and_then(|a| annotated(a, class))
        && annotated > mode
    {
        mode = annotated;
        why = format!("namespace {}'s annotation {NAMESPACE_ANNOTATION}", namespace.name);
    }
    if let Proposer::Model(model, false) = proposer
        && Mode::Approve > mode
    {
        mode = Mode::Approve;
        why = format!(
            "the answer of model {model}, on probation until its record for {} earns a promotion",
            class.as_str()
        );
    }
    if global.require_approval && Mode::Approve > mode {
        mode = Mode::Approve;
        why = "--require-approval".to_owned();
    }
    if global.dry_run && Mode::Shadow > mode {
        mode = Mode::Shadow;
        why = "--dry-run".to_owned();
    }
    Resolved { mode, why }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICY: &str = "default: auto
classes:
  image-rollback: approve
  revision-rollback: approve
namespaces:
  - name: payments
    mode: shadow
  - labels: {team: checkout}
    classes:
      memory-raise: approve
";

    fn ns(name: &str, labels: &[(&str, &str)], annotation: Option<&str>) -> NamespaceFacts {
        NamespaceFacts {
            name: name.into(),
            labels: labels.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect(),
            annotation: annotation.map(str::to_owned),
        }
    }

    #[test]
    fn modes_resolve_by_class_namespace_annotation_and_global_flags() {
        let policy = AutonomyPolicy::parse(POLICY).expect("valid");
        let none = Global::default();
        let shop = ns("shop", &[], None);
        let checkout = ns("checkout", &[("team", "checkout")], None);
        let strict = ns("shop", &[], Some("memory-raise=shadow,force-replace=approve"));
        let loose = ns("payments", &[], Some("auto"));
        use ActionClass::*;
        use Mode::*;
        let cases = [
            (MemoryRaise, &shop, none, Auto, "default"),
            (ImageRollback, &shop, none, Approve, "mode for image-rollback"),
            (RevisionRollback, &shop, none, Approve, "mode for revision-rollback"),
            (MemoryRaise, &ns("payments", &[], None), none, Shadow, "rule 1 of the policy (payments)"),
            (ImageRollback, &ns("payments", &[], None), none, Shadow, "rule 1"),
            (MemoryRaise, &checkout, none, Approve, "rule 2 of the policy (by labels)"),
            (ImageRollback, &checkout, none, Approve, "mode for image-rollback"),
            (InPlaceResize, &checkout, none, Auto, "default"),
            (MemoryRaise, &strict, none, Shadow, "annotation"),
            (ForceReplace, &strict, none, Approve, "annotation"),
            (PauseRollout, &strict, none, Auto, "default"),
            (MemoryRaise, &loose, none, Shadow, "rule 1"),
            (
                MemoryRaise,
                &shop,
                Global { dry_run: false, require_approval: true },
                Approve,
                "--require-approval",
            ),
            (
                MemoryRaise,
                &ns("payments", &[], None),
                Global { dry_run: false, require_approval: true },
                Shadow,
                "rule 1",
            ),
            (ImageRollback, &shop, Global { dry_run: true, require_approval: false }, Shadow, "--dry-run"),
        ];
        for (class, namespace, global, mode, why) in cases {
            let resolved = resolve(&policy, class, namespace, &Overrides::default(), global, Proposer::Rules);
            assert_eq!(resolved.mode, mode, "{class:?} in {namespace:?} with {global:?}");
            assert!(
                resolved.why.contains(why),
                "{class:?} in {}: {} (expected {why:?})",
                namespace.name,
                resolved.why
            );
        }
    }

    #[test]
    fn a_models_action_is_held_to_approve_and_never_loosens_a_stricter_mode() {
        let policy = AutonomyPolicy::parse(POLICY).expect("valid");
        let shop = ns("shop", &[], None);
        let model = Proposer::Model("gemini-3.5-flash", false);
        let none = Overrides::default();
        let held = resolve(&policy, ActionClass::MemoryRaise, &shop, &none, Global::default(), model);
        assert_eq!(held.mode, Mode::Approve);
        assert!(held.why.contains("gemini-3.5-flash, on probation"), "{}", held.why);
        let payments = ns("payments", &[], None);
        assert_eq!(
            resolve(&policy, ActionClass::MemoryRaise, &payments, &none, Global::default(), model).mode,
            Mode::Shadow
        );
        assert_eq!(
            resolve(&policy, ActionClass::MemoryRaise, &shop, &none, Global::default(), Proposer::Rules).mode,
            Mode::Auto
        );
        let earned = Proposer::Model("gemini-3.5-flash", true);
        assert_eq!(
            resolve(&policy, ActionClass::MemoryRaise, &shop, &none, Global::default(), earned).mode,
            Mode::Auto,
            "a model whose record earned it is held no more"
        );
    }

    #[test]
    fn an_empty_file_is_every_class_auto_and_a_wrong_one_is_refused_naming_the_line() {
        assert_eq!(AutonomyPolicy::parse("").expect("empty"), AutonomyPolicy::default());
        let unknown_class = "classes:\n  memory-raise: auto\n  memory-lower: auto\n";
        let error = AutonomyPolicy::parse(unknown_class).expect_err("unknown class").to_string();
        assert!(error.contains("memory-lower") && error.contains('3'), "{error}");
        let unknown_mode = "default: sometimes\n";
        let error = AutonomyPolicy::parse(unknown_mode).expect_err("unknown mode").to_string();
        assert!(error.contains("sometimes") && error.contains('1'), "{error}");
        let typo = "namespace:\n  - name: payments\n";
        assert!(AutonomyPolicy::parse(typo).is_err(), "an unknown key is refused");
        let nameless = "namespaces:\n  - mode: shadow\n";
        let error = AutonomyPolicy::parse(nameless).expect_err("no namespace").to_string();
        assert!(error.contains("rule 1") && error.contains("names no namespace"), "{error}");
        let silent = "namespaces:\n  - name: payments\n";
        assert!(AutonomyPolicy::parse(silent).expect_err("no mode").to_string().contains("sets no mode"));
    }

    #[test]
    fn a_promotion_replaces_the_files_mode_and_a_demotion_is_a_ceiling_everywhere() {
        let policy = AutonomyPolicy::parse(POLICY).expect("valid");
        let set = |mode, demotion| Some(Override { mode, demotion, by: "alice".into() });
        let shop = ns("shop", &[], None);
        let payments = ns("payments", &[], None);
        let checkout = ns("checkout", &[("team", "checkout")], None);
        let global = Global::default();
        let rules = Proposer::Rules;
        use ActionClass::*;
        use Mode::*;
        let cases = [
            // Promoted for every namespace: the file's class mode is replaced, its namespace rules stay.
            (
                ImageRollback,
                &shop,
                Overrides { cluster: set(Auto, false), namespace: None },
                Auto,
                "promotion",
            ),
            (
                ImageRollback,
                &payments,
                Overrides { cluster: set(Auto, false), namespace: None },
                Shadow,
                "rule 1",
            ),
            // Promoted in one namespace: over its rule.
            (
                MemoryRaise,
                &payments,
                Overrides { cluster: None, namespace: set(Approve, false) },
                Approve,
                "in payments",
            ),
            // Demoted: a ceiling in every namespace, whatever the rules say.
            (
                InPlaceResize,
                &checkout,
                Overrides { cluster: set(Approve, true), namespace: None },
                Approve,
                "demotion",
            ),
            (
                MemoryRaise,
                &payments,
                Overrides { cluster: set(Approve, true), namespace: None },
                Shadow,
                "rule 1",
            ),
            (
                MemoryRaise,
                &shop,
                Overrides { cluster: set(Approve, true), namespace: set(Auto, false) },
                Approve,
                "demotion",
            ),
        ];
        for (class, namespace, overrides, mode, why) in cases {
            let resolved = resolve(&policy, class, namespace, &overrides, global, rules);
            assert_eq!(resolved.mode, mode, "{class:?} in {} with {overrides:?}", namespace.name);
            assert!(resolved.why.contains(why), "{}: {}", namespace.name, resolved.why);
        }
        let demoted = Overrides { cluster: set(Approve, true), namespace: None };
        assert_eq!(policy_mode(&policy, MemoryRaise, None, &demoted).mode, Approve, "the class's own mode");
        assert_eq!(policy_mode(&policy, ImageRollback, None, &Overrides::default()).mode, Approve);
    }

    #[test]
    fn each_action_and_strategy_is_one_class() {
        use kubesent_proto::{Action, Strategy};
        let raise = Action::IncreaseMemory {
            container: "app".into(),
            from: kubesent_proto::MemoryQuantity::from_mib(128),
            to: kubesent_proto::MemoryQuantity::from_mib(256),
        };
        assert_eq!(ActionClass::of(&raise, Strategy::OwnerPatch), Some(ActionClass::MemoryRaise));
        assert_eq!(ActionClass::of(&raise, Strategy::InPlaceResize), Some(ActionClass::InPlaceResize));
        assert_eq!(ActionClass::of(&raise, Strategy::ForceReplace), Some(ActionClass::ForceReplace));
        assert_eq!(ActionClass::of(&Action::None, Strategy::OwnerPatch), None);
    }
}
