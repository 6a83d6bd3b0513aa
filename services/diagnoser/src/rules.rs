//! The deterministic rule engine: no network, calibrated confidence. Rules decide what they are sure
//! of; anything else is left to a model (or stays a diagnosis without an action).
//!
//! Confidence is calibrated against the evaluation set (`services/kubesent/eval/`): a rule's confidence is how
//! often its verdict is right there, rounded down. Only four rules propose actions:
//! - OOM kill with a memory limit → `IncreaseMemory` to `min(ceil_mib(limit × factor), cap)` (95);
//! - image `not found` / `manifest unknown` while the owner's previous revision, with another image,
//!   still has ready pods → `RollbackImage` to that image (92);
//! - a crash loop, a liveness kill loop, a start error, a config error or readiness that never passes of
//!   a pod on its owner's newest revision while the previous revision still has ready pods, or was
//!   scaled down by a finished rollout after KubeSent's record saw it serve healthy for the settling
//!   time (known-good) → `RollbackRevision` to it (90);
//! - the same on a Deployment whose previous revision has pods but none ready (nothing known to work to
//!   go back to) → `PauseRollout` at the failing revision (90).

use kubesent_proto::{Action, FailureJob, FailureKind, MemoryQuantity};

use crate::{evidence::Evidence, logread::Ending};

/// The reason of a job about a process OOM-killed inside a container that kept running (the detector's
/// `oom::PROCESS_OOM_REASON`).
const PROCESS_OOM_REASON: &str = "ProcessOOMKilled";

/// Bounds of the OOM memory formula.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct MemoryPolicy {
    /// The new limit is the old one times this factor (rounded up to a whole MiB).
    pub factor: f64,
    /// The new limit never exceeds this.
    pub max: MemoryQuantity,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        Self { factor: 2.0, max: MemoryQuantity::from_mib(8 * 1024) }
    }
}

/// What a rule concluded.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleVerdict {
    /// The rule's name.
    pub rule: &'static str,
    /// A sentence a human can act on.
    pub root_cause: String,
    /// The typed fix, or [`Action::None`].
    pub action: Action,
    /// Confidence 0–100.
    pub confidence: u8,
    /// The incident whose change of KubeSent's caused the failure.
    pub caused_by: Option<kubesent_proto::IncidentId>,
}

/// Rules at or above this confidence are final; below it a model, when configured, is asked.
pub const SURE: u8 = 85;

/// The OOM formula: `min(ceil_mib(limit × factor), max)`. `None` when the limit is already at the cap.
pub fn increased_limit(limit: MemoryQuantity, policy: &MemoryPolicy) -> Option<MemoryQuantity> {
    let to = limit.scaled_to_mib(policy.factor).min(policy.max);
    (to > limit).then_some(to)
}

fn verdict(rule: &'static str, confidence: u8, root_cause: String, action: Action) -> RuleVerdict {
    RuleVerdict { rule, root_cause, action, confidence, caused_by: None }
}

fn contains_any(haystack: &str, needles: &[&str]) -> bool {
    let lower = haystack.to_ascii_lowercase();
    needles.iter().any(|n| lower.contains(n))
}

/// The first log line or event message containing one of `needles`, quoted for a root cause.
fn quote_first<'a>(evidence: &'a Evidence, needles: &[&str]) -> Option<&'a str> {
    evidence.texts().find(|t| contains_any(t, needles))
}

fn short(text: &str) -> String {
    let text = text.trim();
    if text.chars().count() > 160 {
        format!("{}…", text.chars().take(160).collect::<String>())
    } else {
        text.to_owned()
    }
}

/// What an exit code usually means.
fn exit_meaning(code: i32) -> Option<&'static str> {
    Some(match code {
        1 => "a general application error",
        2 => "a misuse of a shell builtin or invalid arguments",
        126 => "a command that cannot be executed (permissions or not an executable)",
        127 => "a command not found in the image",
        128 => "an invalid exit argument",
        134 => "an abort (SIGABRT), often a failed assertion",
        137 => "a SIGKILL",
        139 => "a segmentation fault (SIGSEGV)",
        143 => "a SIGTERM it did not handle",
        _ => return None,
    })
}

/// Log phrases that name the cause of a crash, most specific first.
const CRASH_PATTERNS: &[(&[&str], &str, u8)] = &[
    (
        &[
            "password authentication failed",
            "access denied for user",
            "authentication failed",
            "login failed for user",
            "invalid username or password",
            "wrongpass",
            "invalid password",
            "invalid credentials",
        ],
        "a dependency rejects its credentials (a wrong or rotated password or key)",
        75,
    ),
    (
        &[
            "connection refused",
            "econnrefused",
            "could not connect",
            "connect: connection timed out",
            "no route to host",
        ],
        "a dependency it connects to at start-up is unreachable",
        75,
    ),
    (
        &[
            "no such host",
            "name or service not known",
            "temporary failure in name resolution",
            "getaddrinfo enotfound",
            "unknownhostexception",
            "nodename nor servname provided",
        ],
        "a hostname it needs does not resolve",
        75,
    ),
    (&["address already in use", "eaddrinuse"], "its port is already in use", 75),
    (
        &["permission denied", "eacces", "operation not permitted"],
        "it lacks a permission (file mode, securityContext or capability)",
        70,
    ),
    (
        &["no such file or directory", "enoent", "filenotfound", "cannot find module", "modulenotfounderror"],
        "a file or module it expects is missing from the image or its volumes",
        70,
    ),
    (
        &["outofmemoryerror", "java heap space", "heap out of memory", "allocation failed"],
        "its runtime heap is exhausted below the container limit (heap settings too small)",
        70,
    ),
    (
        &[
            "missing required",
            "required key",
            "environment variable",
            "not set",
            "invalid configuration",
            "config error",
            "unknown flag",
            "invalid argument",
        ],
        "its configuration or arguments are invalid or incomplete",
        65,
    ),
    (
        &[
            "panic:",
            "traceback (most recent call last)",
            "unhandled exception",
            "uncaught exception",
            "segmentation fault",
            "fatal error:",
        ],
        "the application crashes at start-up",
        60,
    ),
];

/// Applies the rules to a job and its evidence.
pub fn diagnose(job: &FailureJob, evidence: &Evidence, policy: &MemoryPolicy) -> RuleVerdict {
    if let Some(own) = &evidence.own_change {
        return own_change(job, own);
    }
    let diagnosis = diagnose_failure(job, evidence, policy);
    match job.failure.kind {
        // A failure the newest revision brought: going back to the revision that still serves is the fix,
        // whatever the cause in the application. Memory (OOM) and images (pull failures) have their own
        // typed fixes; pending and evicted pods are not the revision's fault.
        FailureKind::CrashLoop
        | FailureKind::Killed
        | FailureKind::StartError
        | FailureKind::CreateContainerConfigError
        | FailureKind::NotReady => {
            bad_revision(&job.failure.container, &diagnosis, evidence).unwrap_or(diagnosis)
        }
        _ => diagnosis,
    }
}

/// A failure KubeSent's own change caused (see [`kubesent_common::marks::own_change`]): not the owner's
/// fault, and no new change; it belongs to the incident of that change, which a human can undo.
fn own_change(job: &FailureJob, own: &kubesent_common::marks::OwnChange) -> RuleVerdict {
    let said = job.failure.message.as_deref().map(|m| format!(" ({})", short(m))).unwrap_or_default();
    RuleVerdict {
        caused_by: Some(own.incident.clone()),
        ..verdict(
            "kubesent-change",
            100,
            format!(
                "KubeSent's own change for incident {} ({}) caused this: the pod {}{said}; it is KubeSent's doing, not the owner's — `kubesent undo {}` takes the change back",
                own.incident,
                own.what,
                match job.failure.kind {
                    FailureKind::Unschedulable => "cannot be scheduled with it",
                    _ => "fails with it",
                },
                own.incident
            ),
            Action::None,
        )
    }
}

/// `RollbackRevision` when the failing pod runs its owner's newest revision and the revision before it
/// still has ready pods, or is known-good by KubeSent's record (it is known to work); `PauseRollout` of
/// a Deployment when that revision has pods but none ready (nothing known to work to go back to).
fn bad_revision(container: &str, diagnosis: &RuleVerdict, evidence: &Evidence) -> Option<RuleVerdict> {
    let current = evidence.revision.as_ref().filter(|c| c.newest)?;
    let previous = evidence.previous_revision.as_ref()?;
    let from =
        kubesent_proto::RevisionRef { number: current.revision.parse().ok()?, name: current.name.clone() };
    let to =
        kubesent_proto::RevisionRef { number: previous.revision.parse().ok()?, name: previous.name.clone() };
    if to.name.is_empty() || from.name.is_empty() || to.number >= from.number {
        return None;
    }
    let owner = evidence.owners.last().map(String::as_str).unwrap_or("the workload");
    let cause = diagnosis.root_cause.trim_end_matches('.');
    if previous.ready_replicas <= 0
        && previous.replicas <= 0
        && let Some(served) = &previous.served
    {
        // Scaled down by a rollout that finished, but KubeSent saw it serve healthy for the settling
        // time before: it is known to work, so going back to it is the fix.
        return Some(verdict(
            "known-good-rollback",
            90,
            format!(
                "revision {} of {owner} fails ({cause}); revision {} before it, scaled down when the rollout finished, {served} by KubeSent's record: roll back to revision {}",
                from.number, to.number, to.number
            ),
            Action::RollbackRevision { container: container.to_owned(), from, to },
        ));
    }
    if previous.ready_replicas <= 0 && previous.replicas <= 0 {
        // Scaled down by a rollout that finished (its pods passed as available, then failed), and never
        // seen serving healthy for long enough: nothing shows the revision before it works, so no
        // change; a human who knows it did can go back.
        let (kind, name) = owner.split_once('/')?;
        let mut suggestion = diagnosis.clone();
        suggestion.root_cause = format!(
            "{cause}; revision {} of {owner} brought this, and revision {} before it was scaled down by the rollout without KubeSent seeing it serve healthy for long enough, so KubeSent cannot tell it works — if it did: kubectl rollout undo {}/{name}",
            from.number,
            to.number,
            kind.to_ascii_lowercase()
        );
        return Some(suggestion);
    }
    if previous.ready_replicas <= 0 {
        let deployment = owner.strip_prefix("Deployment/")?;
        return Some(verdict(
            "bad-revision-pause",
            90,
            format!(
                "revision {} of {owner} fails ({cause}) and revision {} before it has no ready pods to go back to: pause the rollout until the template is fixed (kubectl rollout resume deployment/{deployment})",
                from.number, to.number
            ),
            Action::PauseRollout { container: container.to_owned(), revision: from },
        ));
    }
    Some(verdict(
        "bad-revision-rollback",
        90,
        format!(
            "revision {} of {owner} fails ({cause}) while revision {} still has {} ready pods: roll back to revision {}",
            from.number, to.number, previous.ready_replicas, to.number
        ),
        Action::RollbackRevision { container: container.to_owned(), from, to },
    ))
}

/// The diagnosis of the failure itself, whatever revision it runs.
fn diagnose_failure(job: &FailureJob, evidence: &Evidence, policy: &MemoryPolicy) -> RuleVerdict {
    let name = job.failure.container.clone();
    let spec = evidence.container(&name);
    let message = job.failure.message.clone().unwrap_or_default();
    match job.failure.kind {
        FailureKind::OomKilled if job.failure.reason == PROCESS_OOM_REASON => {
            // A process inside a container that kept running: the container's limit is what the kernel
            // enforced, but nothing in the pod shows the kill, so nothing KubeSent can check before or
            // after a change; a human decides.
            let limit = spec.and_then(|c| c.resources.memory_limit());
            let said = message.split(" (node-problem-detector").next().unwrap_or(&message).trim();
            let raise = match limit {
                Some(limit) => match increased_limit(limit, policy) {
                    Some(to) => format!(
                        "its memory limit is {limit}: raise it (KubeSent's formula gives {to}), or find what the process holds"
                    ),
                    None => format!(
                        "its memory limit is {limit}, already at the cap: find what the process holds"
                    ),
                },
                None => {
                    "it has no memory limit: the node ran out of memory; set requests and limits".to_owned()
                }
            };
            verdict(
                "oom-process-in-container",
                90,
                format!(
                    "{said}; nothing in the pod's status shows it, so KubeSent changes nothing — {raise}"
                ),
                Action::None,
            )
        }
        FailureKind::OomKilled => {
            let limit = spec.and_then(|c| c.resources.memory_limit());
            match limit {
                Some(limit) => match increased_limit(limit, policy) {
                    Some(to) => verdict(
                        "oom-increase-memory",
                        95,
                        format!(
                            "container {name} was OOM-killed (exit 137) at its memory limit of {limit}; its working set needs more memory"
                        ),
                        Action::IncreaseMemory { container: name, from: limit, to },
                    ),
                    None => verdict(
                        "oom-at-cap",
                        80,
                        format!(
                            "container {name} was OOM-killed at {limit}, already at the memory cap of {}; look for a leak",
                            policy.max
                        ),
                        Action::None,
                    ),
                },
                None => verdict(
                    "oom-without-limit",
                    80,
                    format!(
                        "container {name} was OOM-killed without a memory limit: the node ran out of memory; set requests and limits"
                    ),
                    Action::None,
                ),
            }
        }
        FailureKind::Killed => match liveness_kill(&name, evidence) {
            Some(killed) => killed,
            None => verdict(
                "sigkill",
                50,
                format!(
                    "container {name} was killed with SIGKILL (exit 137) without an OOM kill: a failing liveness probe, a preStop timeout or a child process OOM"
                ),
                Action::None,
            ),
        },
        FailureKind::NotReady => not_ready(&name, &message, evidence),
        FailureKind::NeverStarted => never_started(&name, &job.failure.reason, evidence),
        FailureKind::JobFailed => job_failed(&job.key.workload.name, &job.failure.reason, &message, evidence),
        FailureKind::ImagePullBackOff | FailureKind::ErrImagePull => {
            let image = spec.map(|c| c.image.clone()).unwrap_or_else(|| job.failure.image.clone());
            let all =
                std::iter::once(message.as_str()).chain(evidence.texts()).collect::<Vec<_>>().join("\n");
            if let Some(refused) = pull_refused(&image, &all, evidence) {
                return refused;
            }
            if contains_any(&all, &["not found", "manifest unknown", "notfound", "does not exist"]) {
                let previous = evidence
                    .previous_revision
                    .as_ref()
                    .and_then(|p| p.images.get(&name).map(|img| (p, img.clone())));
                return match previous {
                    Some((p, previous_image)) if previous_image != image && p.ready_replicas > 0 => verdict(
                        "image-not-found-rollback",
                        92,
                        format!(
                            "image {image} does not exist in the registry; revision {} ran {previous_image} and still has {} ready pods",
                            p.revision, p.ready_replicas
                        ),
                        Action::RollbackImage { container: name, from: image, to: previous_image },
                    ),
                    _ => verdict(
                        "image-not-found",
                        90,
                        format!(
                            "image {image} does not exist in the registry (wrong tag, or not pushed); there is no healthy previous revision to roll back to"
                        ),
                        Action::None,
                    ),
                };
            }
            verdict(
                "image-pull-failed",
                40,
                format!("pulling {image} fails: {}", short(&message)),
                Action::None,
            )
        }
        FailureKind::InvalidImageName => verdict(
            "invalid-image-name",
            95,
            format!(
                "the image reference {:?} of container {name} cannot be parsed: fix the image name",
                spec.map(|c| c.image.clone()).unwrap_or_default()
            ),
            Action::None,
        ),
        FailureKind::CreateContainerConfigError => {
            if message.contains("failed to prepare subPath") {
                start_error(&name, &job.failure.reason, &message)
            } else if contains_any(&message, &["couldn't find key", "not found"]) {
                verdict(
                    "missing-config",
                    95,
                    format!(
                        "container {name} cannot start: {} — create it or fix the reference",
                        short(&message)
                    ),
                    Action::None,
                )
            } else {
                verdict(
                    "container-config",
                    50,
                    format!("container {name} cannot be created: {}", short(&message)),
                    Action::None,
                )
            }
        }
        FailureKind::StartError => start_error(&name, &job.failure.reason, &message),
        FailureKind::Unschedulable => unschedulable(&name, &message, evidence),
        FailureKind::Evicted => evicted(&message, evidence),
        FailureKind::CrashLoop => {
            // A container that handles SIGTERM exits 143 (or 0) when the kubelet restarts it for its
            // liveness probe: the events say so.
            if let Some(killed) = liveness_kill(&name, evidence) {
                return killed;
            }
            let code = job.failure.exit_code;
            // A Go program exits 2 when it panics: not the shell's meaning of 2.
            let go =
                evidence.decisive().is_some_and(|d| matches!(d.ending, Ending::GoPanic | Ending::GoFatal));
            let dotnet = evidence.decisive().is_some_and(|d| d.ending == Ending::DotnetException);
            let meaning = match code {
                Some(2) if go => Some(" (a Go panic)".to_owned()),
                Some(134) if dotnet => {
                    Some(" (SIGABRT: the .NET runtime aborts on an unhandled exception)".to_owned())
                }
                _ => code.and_then(exit_meaning).map(|m| format!(" ({m})")),
            }
            .unwrap_or_default();
            let exit = code.map(|c| format!("exit code {c}{meaning}")).unwrap_or_else(|| "an error".into());
            if let Some(exec) = evidence.decisive().filter(|d| d.ending == Ending::Exec) {
                return exec_failure(&name, &exec.line, &format!("exits with {exit}"));
            }
            if let Some(found) = log_cause(evidence) {
                return verdict(
                    found.rule,
                    found.confidence,
                    format!(
                        "container {name} exits with {exit}: {} — log: \"{}\"{}",
                        found.cause,
                        short(&found.line),
                        found.context
                    ),
                    Action::None,
                );
            }
            match code {
                Some(126 | 127) => verdict(
                    "crash-exit-code",
                    80,
                    format!("container {name} exits with {exit}: check the command and the image"),
                    Action::None,
                ),
                _ => verdict(
                    "crash-exit-code",
                    40,
                    format!("container {name} crash-loops with {exit}"),
                    Action::None,
                ),
            }
        }
    }
}

/// What a container's log says killed it.
struct LogCause {
    rule: &'static str,
    cause: &'static str,
    /// The line quoted.
    line: String,
    /// `, raised as …` when the line is an inner cause.
    context: String,
    confidence: u8,
}

/// The cause of a crash from the log, read as an SRE does: the decisive line (the end of a traceback,
/// the deepest `Caused by:`, the panic message) first, matched against the known causes; an
/// exception that matches none is still the cause, quoted. Without a decisive line, the first line
/// or event naming a known cause.
fn log_cause(evidence: &Evidence) -> Option<LogCause> {
    let decisive = evidence.decisive();
    if let Some(d) = decisive.filter(|d| d.ending != Ending::ErrorLine) {
        let context =
            d.context.as_deref().map(|c| format!(", raised as \"{}\"", short(c))).unwrap_or_default();
        let known = CRASH_PATTERNS.iter().find(|(needles, _, _)| {
            contains_any(&d.line, needles) || d.context.as_deref().is_some_and(|c| contains_any(c, needles))
        });
        return Some(match known {
            Some((_, cause, confidence)) => LogCause {
                rule: "crash-log-decisive",
                cause,
                line: d.line.clone(),
                context,
                confidence: *confidence,
            },
            None => LogCause {
                rule: "crash-log-decisive",
                cause: ending_cause(d.ending),
                line: d.line.clone(),
                context,
                confidence: 60,
            },
        });
    }
    for (needles, cause, confidence) in CRASH_PATTERNS {
        if let Some(line) = quote_first(evidence, needles) {
            return Some(LogCause {
                rule: "crash-log-pattern",
                cause,
                line: line.to_owned(),
                context: String::new(),
                confidence: *confidence,
            });
        }
    }
    decisive.map(|d| LogCause {
        rule: "crash-log-last-error",
        cause: "the application reports an error before it exits",
        line: d.line.clone(),
        context: String::new(),
        confidence: 50,
    })
}

/// What a log that ends so says, when no known cause is in its decisive line.
fn ending_cause(ending: Ending) -> &'static str {
    match ending {
        Ending::PythonException => "the application dies of an unhandled Python exception",
        Ending::JavaException => "the application dies of an unhandled JVM exception",
        Ending::DotnetException => "the application dies of an unhandled .NET exception",
        Ending::NodeError => "the application dies of an unhandled Node.js error",
        Ending::GoPanic => "the application crashes: it panics",
        Ending::GoFatal => "the Go runtime stops the application with a fatal error",
        Ending::RustPanic => "the application panics",
        Ending::Exec => "a program it runs cannot be executed",
        Ending::ErrorLine => "the application reports an error before it exits",
    }
}

/// The shell or runtime could not run a program (seen in the log or the runtime's message): built for
/// another CPU architecture, missing from the image, or not executable.
fn exec_failure(name: &str, line: &str, how: &str) -> RuleVerdict {
    let quoted = short(line);
    let lower = line.to_ascii_lowercase();
    if lower.contains("exec format error") {
        verdict(
            "exec-format-error",
            95,
            format!(
                "container {name} {how}: a program in its image is built for another CPU architecture (exec format error) — use an image built for the node's platform (multi-arch), or schedule it onto nodes of the image's platform — log: \"{quoted}\""
            ),
            Action::None,
        )
    } else if lower.contains("permission denied") {
        verdict(
            "exec-permission-denied",
            90,
            format!(
                "container {name} {how}: a program it runs is not executable for its user (permission denied) — set the file's execute bit in the image, or fix runAsUser/securityContext — log: \"{quoted}\""
            ),
            Action::None,
        )
    } else {
        verdict(
            "exec-not-found",
            90,
            format!(
                "container {name} {how}: a program it runs, or the interpreter its script names (#!), is missing from the image (not found) — fix the command or the script's first line, or install the program in the image — log: \"{quoted}\""
            ),
            Action::None,
        )
    }
}

/// Why a registry pull fails, other than a missing tag, most specific first: the phrases the
/// container runtimes (containerd, CRI-O, Docker) and registries put in the kubelet's message, what
/// they mean, and the fix for a human. None of them is KubeSent's to fix.
const PULL_FAILURES: &[(&str, &[&str], &str, &str)] = &[
    (
        "image-pull-platform",
        &[
            "no matching manifest for",
            "does not match the specified platform",
            "no match for platform in manifest",
        ],
        "the image has no variant for the node's platform (OS/CPU architecture)",
        "build or pick a multi-arch image, or schedule the pod onto nodes of the image's platform",
    ),
    (
        "image-pull-rate-limited",
        &["toomanyrequests", "429 too many requests", "pull rate limit", "rate limit exceeded"],
        "the registry rate-limits the node's pulls",
        "authenticate pulls with imagePullSecrets (higher limits), mirror the image to your own registry, or wait for the limit to reset",
    ),
    (
        "image-pull-tls",
        &[
            "x509:",
            "certificate signed by unknown authority",
            "certificate has expired",
            "tls: failed to verify certificate",
            "certificate is not valid",
            "server gave http response to https client",
        ],
        "the node does not trust the registry's TLS certificate (or the registry does not speak TLS)",
        "install the registry's CA in the nodes' container runtime, renew the expired certificate, or configure the registry as the runtime expects",
    ),
    (
        "image-pull-dns",
        &[
            "no such host",
            "server misbehaving",
            "temporary failure in name resolution",
            "name or service not known",
            ": lookup ",
        ],
        "the registry's hostname does not resolve from the node",
        "fix the registry host in the image reference, or the nodes' DNS",
    ),
    (
        "image-pull-disk",
        &["no space left on device"],
        "the node's disk filled up while the image was being extracted",
        "free the node's image filesystem (image garbage collection thresholds) or move the pod to a node with room",
    ),
    (
        "image-pull-unreachable",
        &[
            "connection refused",
            "i/o timeout",
            "context deadline exceeded",
            "connection reset by peer",
            "tls handshake timeout",
            "network is unreachable",
            "no route to host",
            "request canceled while waiting for connection",
        ],
        "the registry cannot be reached from the node",
        "check that the registry is up, and the node's network, firewall or proxy to it",
    ),
    (
        "image-pull-repository-denied",
        &[
            "pull access denied",
            "repository does not exist or may require authorization",
            "insufficient_scope",
            "requested access to the resource is denied",
            "repository not found",
            "name unknown",
        ],
        "the repository does not exist, or the pod's credentials may not read it",
        "check the repository name; for a private repository add imagePullSecrets that may read it",
    ),
    (
        "image-pull-unauthorized",
        // Status codes only with their reason phrase: a bare "401" is as likely a pod's name
        // ("r401-…"), a digest or a timestamp.
        &[
            "unauthorized",
            "authorization failed",
            "authentication required",
            "403 forbidden",
            "401 unauthorized",
            "denied: ",
            "no basic auth credentials",
        ],
        "the registry refused the pull without valid credentials",
        "add or fix the pod's imagePullSecrets",
    ),
];

/// A pull the registry or the network refuses (anything but a missing tag), named by its cause.
fn pull_refused(image: &str, all: &str, evidence: &Evidence) -> Option<RuleVerdict> {
    let (rule, needles, cause, fix) =
        PULL_FAILURES.iter().find(|(_, needles, _, _)| contains_any(all, needles))?;
    let said = clause_with(all, needles).map(|c| format!(" — \"{c}\"")).unwrap_or_default();
    let mut fix = (*fix).to_owned();
    if *rule == "image-pull-tls" && contains_any(all, &["certificate has expired"]) {
        fix = "renew the registry's certificate, or correct the node's clock if it is wrong".to_owned();
    }
    if matches!(*rule, "image-pull-unauthorized" | "image-pull-repository-denied" | "image-pull-rate-limited")
    {
        // What the pod holds: a secret it names that the kubelet could not read is the likeliest cause.
        let missing = evidence.events.iter().find(|e| {
            e.reason == "FailedToRetrieveImagePullSecret"
                || e.message.contains("Unable to retrieve some image pull secrets")
        });
        if let Some(missing) = missing {
            fix = format!(
                "the pod's imagePullSecret cannot be read ({}) — create it in the pod's namespace; then {fix}",
                short(&missing.message)
            );
        } else if evidence.image_pull_secrets.is_empty() {
            fix = format!("the pod names no imagePullSecrets (nor does its service account) — {fix}");
        } else {
            fix = format!(
                "the pod pulls with {} — check it holds credentials for this registry; {fix}",
                evidence.image_pull_secrets.join(", ")
            );
        }
    }
    Some(verdict(rule, 90, format!("pulling {image} fails: {cause}{said}: {fix}"), Action::None))
}

/// The part of `text` around the first of `needles`: the clause that names the cause, not the
/// message's prefix (`Failed to pull image "…": rpc error: code = Unknown desc = failed to pull and
/// unpack image "…": failed to resolve reference "…": …`).
fn clause_with(text: &str, needles: &[&str]) -> Option<String> {
    let lower = text.to_ascii_lowercase();
    let at = needles.iter().filter_map(|n| lower.find(n)).min()?;
    let line_start = lower[..at].rfind('\n').map_or(0, |i| i + 1);
    let line_end = lower[at..].find('\n').map_or(text.len(), |i| at + i);
    // The `: `-separated parts just before the phrase (within 80 characters), and the rest of its line.
    let mut start = if at - line_start <= 80 { line_start } else { at };
    if start == at {
        for (i, _) in text[line_start..at].rmatch_indices(": ") {
            let part = line_start + i + 2;
            if at - part > 80 {
                break;
            }
            start = part;
        }
    }
    let clause = text.get(start..line_end)?.trim();
    Some(if clause.chars().count() > 240 {
        format!("{}…", clause.chars().take(240).collect::<String>())
    } else {
        clause.to_owned()
    })
}

/// The event (or, without one, the log line) containing one of `needles` that happened most often,
/// quoted with its count: a probe that failed ×498 outweighs one that failed ×12.
fn most_often(evidence: &Evidence, needles: &[&str]) -> Option<(String, i32)> {
    let event = evidence.events.iter().filter(|e| contains_any(&e.message, needles)).fold(
        None::<&crate::evidence::EventSummary>,
        |best, e| match best {
            Some(b) if b.count >= e.count => Some(b),
            _ => Some(e),
        },
    );
    match event {
        Some(e) if e.count > 1 => Some((format!("{} ×{}", short(&e.message), e.count), e.count)),
        Some(e) => Some((short(&e.message), e.count)),
        None => quote_first(evidence, needles).map(|l| (short(l), 1)),
    }
}

/// The kubelet restarted the container because its liveness probe failed, when the events say so.
fn liveness_kill(name: &str, evidence: &Evidence) -> Option<RuleVerdict> {
    let (line, _) = most_often(evidence, &["liveness probe failed", "failed liveness probe"])?;
    let probe = probe_of(name, "liveness", evidence);
    Some(verdict(
        "liveness-probe-kill",
        90,
        format!(
            "container {name} was killed by the kubelet because its liveness probe failed ({line}){probe}"
        ),
        Action::None,
    ))
}

/// `; <probe line>` for the container's probe of `kind`, if it has one.
fn probe_of(name: &str, kind: &str, evidence: &Evidence) -> String {
    evidence
        .container(name)
        .and_then(|c| c.probes.iter().find(|p| p.starts_with(kind)))
        .map(|p| format!("; {p}"))
        .unwrap_or_default()
}

/// The number after `key: ` in a detector's summary of a Job's limits (`(backoffLimit: 6, …)`).
fn limit_in(message: &str, key: &str) -> Option<i64> {
    let rest = message.split_once(&format!("{key}: "))?.1;
    rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
}

/// A Job that gave up: past its deadline, out of retries (and why its pods failed), or by its policy.
fn job_failed(name: &str, reason: &str, message: &str, evidence: &Evidence) -> RuleVerdict {
    match reason {
        "DeadlineExceeded" => {
            let deadline =
                limit_in(message, "activeDeadlineSeconds").map(|s| format!(" ({s} s)")).unwrap_or_default();
            verdict(
                "job-deadline-exceeded",
                90,
                format!(
                    "Job {name} ran longer than its activeDeadlineSeconds{deadline} and was stopped: its work takes longer than allowed, or it hangs — raise activeDeadlineSeconds or find what it waits on"
                ),
                Action::None,
            )
        }
        "BackoffLimitExceeded" => {
            let failed = limit_in(message, "failed pods");
            let limit = limit_in(message, "backoffLimit");
            let times = match (failed, limit) {
                (Some(failed), Some(limit)) => format!(" {failed} times (backoffLimit {limit})"),
                (None, Some(limit)) => format!(" more than its backoffLimit of {limit}"),
                _ => String::new(),
            };
            let exit = evidence
                .states
                .iter()
                .find_map(|s| {
                    s.state.split_once("(exit ").map(|(_, code)| code.trim_end_matches(')').to_owned())
                })
                .filter(|code| code != "0");
            let why = match (log_cause(evidence), exit) {
                (Some(found), _) => {
                    format!(": {} — log: \"{}\"{}", found.cause, short(&found.line), found.context)
                }
                (None, Some(code)) => {
                    let meaning = code
                        .parse()
                        .ok()
                        .and_then(exit_meaning)
                        .map(|m| format!(" ({m})"))
                        .unwrap_or_default();
                    format!(": its pods exit with code {code}{meaning}")
                }
                (None, None) => String::new(),
            };
            verdict(
                "job-backoff-limit",
                90,
                format!("Job {name} gave up after its pods failed{times}{why}"),
                Action::None,
            )
        }
        other => {
            verdict("job-failed", 70, format!("Job {name} failed: {other}: {}", short(message)), Action::None)
        }
    }
}

/// A running container that never became ready: what its probes answer, from the events — the probe
/// that failed most often when more than one did.
fn not_ready(name: &str, message: &str, evidence: &Evidence) -> RuleVerdict {
    let probes: [(&str, &str, &[&str]); 2] = [
        ("readiness-probe-failing", "readiness", &["readiness probe failed", "readiness probe errored"]),
        ("startup-probe-failing", "startup", &["startup probe failed", "startup probe errored"]),
    ];
    let failing = probes
        .iter()
        .filter_map(|(rule, kind, needles)| {
            most_often(evidence, needles).map(|(line, count)| (*rule, *kind, line, count))
        })
        .fold(None::<(&str, &str, String, i32)>, |best, found| match best {
            Some(b) if b.3 >= found.3 => Some(b),
            _ => Some(found),
        });
    if let Some((rule, kind, line, _)) = failing {
        return verdict(
            rule,
            90,
            format!(
                "container {name} runs but never becomes ready: its {kind} probe fails ({line}){}",
                probe_of(name, kind, evidence)
            ),
            Action::None,
        );
    }
    let detail = if message.is_empty() { String::new() } else { format!(" ({})", short(message)) };
    verdict(
        "not-ready",
        50,
        format!("container {name} runs but has not become ready{detail}; no probe failure is in its events"),
        Action::None,
    )
}

/// Why the runtime cannot start the container, from its message.
fn start_error(name: &str, reason: &str, message: &str) -> RuleVerdict {
    // `exec: "/app/server": …` names what it tried to run.
    let command = message.split_once("exec: \"").and_then(|(_, rest)| rest.split_once('"')).map(|(c, _)| c);
    let said = short(message);
    let (rule, confidence, cause) = if message.contains("executable file not found in $PATH") {
        (
            "start-command-not-found",
            95,
            format!(
                "the command {} of container {name} is not in the image (not on $PATH, or not executable): fix the command/args or the image",
                command.map_or_else(|| "it runs".to_owned(), |c| format!("{c:?}"))
            ),
        )
    } else if message.contains("exec format error") {
        (
            "start-exec-format",
            95,
            format!(
                "container {name}'s image is built for another CPU architecture (exec format error): use an image for the node's platform"
            ),
        )
    } else if message.contains("no such file or directory") && command.is_some() {
        (
            "start-entrypoint-missing",
            95,
            format!(
                "the entrypoint {:?} of container {name} does not exist in the image: fix the command or the image",
                command.unwrap_or_default()
            ),
        )
    } else if message.contains("Are you trying to mount a directory onto a file")
        || ((message.contains("not a directory") || message.contains("is a directory"))
            && message.contains("mount"))
    {
        let target = message
            .split_once("to rootfs at \"")
            .and_then(|(_, rest)| rest.split_once('"'))
            .map(|(path, _)| format!(" onto {path:?}"))
            .unwrap_or_default();
        (
            "start-mount-type-mismatch",
            95,
            format!(
                "the runtime cannot mount {}{target} in container {name}: a directory mounted onto a file, or a file onto a directory, in the image — mount one key with subPath (or the volume onto a directory), or fix mountPath",
                volume_of(message)
            ),
        )
    } else if message.contains("failed to reserve container name")
        || message.contains("is already in use by container")
    {
        (
            "start-name-reserved",
            90,
            format!(
                "the container runtime still holds an earlier container named like {name}'s (after a node or runtime restart, or a slow runtime): it usually clears by itself; if it persists, restart the runtime on the node or delete the pod"
            ),
        )
    } else if message.contains("failed to prepare subPath") {
        (
            "start-subpath",
            90,
            format!(
                "the kubelet cannot prepare a subPath mount of container {name}: the subPath does not exist in the volume or is not allowed — fix subPath or the volume's contents"
            ),
        )
    } else if message.contains("/volumes/") || message.contains("failed to resolve symlink") {
        (
            "start-volume-unavailable",
            85,
            format!(
                "the runtime cannot set up {} of container {name} ({}): its storage is unavailable or refuses access — {}",
                volume_of(message),
                message.rsplit(": ").next().unwrap_or_default().trim(),
                if message.contains("kubernetes.io~csi") {
                    "check the PersistentVolume and its CSI driver or storage backend"
                } else {
                    "check the volume's source and the node"
                }
            ),
        )
    } else if message.contains("permission denied") {
        (
            "start-permission-denied",
            90,
            format!(
                "the runtime may not run container {name}'s entrypoint (permission denied): make it executable or fix securityContext"
            ),
        )
    } else {
        ("start-error", 60, format!("the container runtime cannot start container {name} ({reason}): {said}"))
    };
    verdict(rule, confidence, format!("{cause} — runtime: {said}"), Action::None)
}

/// Which volume a runtime message names, by its kind (`the ConfigMap volume "config"`), from the
/// kubelet's path `…/volumes/kubernetes.io~configmap/config`.
fn volume_of(message: &str) -> String {
    let Some((_, rest)) = message.split_once("/volumes/kubernetes.io~") else { return "a volume".into() };
    let (plugin, rest) = rest.split_once('/').unwrap_or((rest, ""));
    let volume: String =
        rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.').collect();
    let kind = match plugin {
        "configmap" => "the ConfigMap volume",
        "secret" => "the Secret volume",
        "projected" => "the projected volume",
        "empty-dir" => "the emptyDir volume",
        "csi" => "the CSI (PersistentVolume) volume",
        "downward-api" => "the downwardAPI volume",
        "nfs" => "the NFS volume",
        _ => "the volume",
    };
    if volume.is_empty() { kind.to_owned() } else { format!("{kind} {volume:?}") }
}

/// The scheduler's reasons from its message (`3 Insufficient memory, 1 node(s) had untolerated taint …`).
fn scheduler_reasons(message: &str) -> &str {
    let after = message.split_once("are available: ").map_or(message, |(_, rest)| rest);
    after.split_once(". preemption:").map_or(after.trim_end_matches('.'), |(reasons, _)| reasons).trim()
}

/// Why a pod fits no node, from the scheduler's message, and what would make it fit.
fn unschedulable(name: &str, message: &str, evidence: &Evidence) -> RuleVerdict {
    let reasons = scheduler_reasons(message);
    let requested = |resource: &str| {
        evidence
            .containers
            .iter()
            .filter_map(|c| c.resources.requests.get(resource).cloned())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let (cause, fix) = if reasons.contains("Insufficient memory") {
        let asked = requested("memory");
        (
            if asked.is_empty() {
                "no node has the memory it requests free".to_owned()
            } else {
                format!("no node has {asked} of memory free")
            },
            "add nodes (or let the autoscaler) or lower its memory request",
        )
    } else if reasons.contains("Insufficient cpu") {
        let asked = requested("cpu");
        (
            if asked.is_empty() {
                "no node has the CPU it requests free".to_owned()
            } else {
                format!("no node has {asked} CPU free")
            },
            "add nodes or lower its CPU request",
        )
    } else if reasons.contains("Insufficient ephemeral-storage") {
        (
            "no node has the ephemeral storage it requests free".to_owned(),
            "add nodes or lower its ephemeral-storage request",
        )
    } else if let Some(resource) = reasons
        .split(", ")
        .find_map(|r| r.split_once(" Insufficient ").map(|(_, resource)| resource.trim().to_owned()))
    {
        let asked = requested(&resource);
        (
            if asked.is_empty() {
                format!("no node has the {resource} it requests free")
            } else {
                format!("no node has {asked} {resource} free")
            },
            "add nodes that have it or lower its request",
        )
    } else if reasons.contains("Too many pods") {
        ("every node runs as many pods as it may".to_owned(), "add nodes or raise the kubelets' max pods")
    } else if reasons.contains("didn't match Pod's node affinity/selector")
        || reasons.contains("didn't match node selector")
    {
        ("no node matches its nodeSelector or node affinity".to_owned(), "fix the selector or label a node")
    } else if reasons.contains("untolerated taint") {
        (
            "the nodes are tainted and it tolerates none of the taints".to_owned(),
            "add a toleration or untaint a node",
        )
    } else if reasons.contains("were unschedulable") {
        ("the nodes are cordoned".to_owned(), "uncordon a node")
    } else {
        return verdict(
            "unschedulable",
            60,
            format!("pod of container {name} fits no node: {}", short(message)),
            Action::None,
        );
    };
    verdict("unschedulable", 95, format!("{cause}: {reasons} — {fix}"), Action::None)
}

/// Why the kubelet evicted the pod, from its eviction message. Never a memory-limit change: an
/// eviction is the node's shortage or the pod's own disk use, not its limit.
fn evicted(message: &str, evidence: &Evidence) -> RuleVerdict {
    let said = short(message);
    // What the node itself reports now, when it still reports the pressure it evicted for.
    let node_reports = |condition: &str| {
        evidence
            .node
            .as_ref()
            .filter(|n| n.reports(condition))
            .map(|n| format!("; node {} still reports {condition}", n.name))
            .unwrap_or_default()
    };
    if message.contains("The node was low on resource: memory") {
        // The kubelet names only the containers that used more than they request; a message naming
        // none says the pod stayed within its requests.
        let usage = memory_usage(message);
        let over = usage.as_ref().is_some_and(MemoryUsage::over_request);
        let whose = match &usage {
            Some(u) if over => format!(
                "container {} used {} against a request of {}: its own usage over its request made it the one evicted",
                u.container, u.using, u.request
            ),
            Some(u) => format!(
                "container {} used {} within its request of {}: the node is overcommitted by other pods or system daemons, not by this pod",
                u.container, u.using, u.request
            ),
            None => "the pod stayed within its memory requests: the node is overcommitted by other pods or system daemons, not by this pod".to_owned(),
        };
        let fix = if over {
            "raise its memory request to what it uses, so the scheduler reserves it"
        } else {
            "reserve memory for the system (kubeReserved/systemReserved), add capacity, or have the pods that use more than they request raise their requests"
        };
        return verdict(
            "evicted-node-memory",
            95,
            format!(
                "evicted: its node ran low on memory and {whose} ({said}){} — {fix}",
                node_reports("MemoryPressure")
            ),
            Action::None,
        );
    }
    if message.contains("The node was low on resource: ephemeral-storage") || message.contains("DiskPressure")
    {
        return verdict(
            "evicted-node-disk",
            95,
            format!(
                "evicted: its node ran low on disk ({said}){} — set ephemeral-storage requests and limits, and clean up what the node's pods write locally",
                node_reports("DiskPressure")
            ),
            Action::None,
        );
    }
    if let Some(limit) = message
        .split_once("exceeds the total limit of containers ")
        .map(|(_, rest)| rest.trim().trim_end_matches('.'))
        .or_else(|| {
            message
                .split_once("local ephemeral storage limit ")
                .map(|(_, rest)| rest.trim().trim_end_matches('.').trim_matches('"'))
        })
    {
        return verdict(
            "evicted-ephemeral-storage",
            95,
            format!(
                "evicted: ephemeral storage over {limit}, its limits.ephemeral-storage — it writes more to its local disk than allowed; write to a volume, clean up, or raise the limit"
            ),
            Action::None,
        );
    }
    if contains_any(message, &["node shutdown", "node is shutting"]) {
        return verdict(
            "evicted-node-shutdown",
            95,
            format!(
                "evicted: its node shut down ({said}) — the pod did not move by itself; a controller replaces it, a bare pod has to be recreated (run it under a Deployment)"
            ),
            Action::None,
        );
    }
    if message.contains("Usage of EmptyDir volume") {
        return verdict(
            "evicted-empty-dir",
            95,
            format!("evicted: an emptyDir volume outgrew its sizeLimit ({said})"),
            Action::None,
        );
    }
    verdict("evicted", 60, format!("evicted by the kubelet: {said}"), Action::None)
}

/// What the kubelet's eviction message says a container used: `Container app was using 1210Mi,
/// request is 256Mi`.
struct MemoryUsage {
    container: String,
    using: String,
    request: String,
}

impl MemoryUsage {
    /// Whether it used more than it requests (a container without a request always does).
    fn over_request(&self) -> bool {
        match (MemoryQuantity::parse(&self.using), MemoryQuantity::parse(&self.request)) {
            (Ok(using), Ok(request)) => using > request,
            _ => true,
        }
    }
}

fn memory_usage(message: &str) -> Option<MemoryUsage> {
    let (_, rest) = message.split_once("Container ")?;
    let (container, rest) = rest.split_once(" was using ")?;
    let (using, rest) = rest.split_once(", request is ")?;
    let request: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '.').collect();
    Some(MemoryUsage { container: container.to_owned(), using: using.to_owned(), request })
}

/// A cause of a pod that never starts, as its events name it: the event reasons and the phrases in
/// their messages, the rule, what it means and the fix for a human.
struct StuckCause {
    reasons: &'static [&'static str],
    needles: &'static [&'static str],
    rule: &'static str,
    cause: &'static str,
    fix: &'static str,
}

/// Causes of a pod that never starts, most specific first.
const STUCK_CAUSES: &[StuckCause] = &[
    StuckCause {
        reasons: &["FailedCreatePodSandBox"],
        needles: &["failed to get sandbox image", "pause"],
        rule: "never-started-sandbox-image",
        cause: "the node cannot pull the pod sandbox (pause) image",
        fix: "check the runtime's sandbox image setting and the node's access to its registry",
    },
    StuckCause {
        reasons: &["FailedCreatePodSandBox"],
        needles: &["network", "cni", "plugin type="],
        rule: "never-started-network",
        cause: "the network plugin (CNI) cannot set up the pod's network",
        fix: "check the CNI plugin's pods on the node and its configuration",
    },
    StuckCause {
        reasons: &["FailedCreatePodSandBox"],
        needles: &[],
        rule: "never-started-sandbox",
        cause: "the container runtime cannot create the pod's sandbox",
        fix: "check the container runtime on the node",
    },
    StuckCause {
        reasons: &["FailedAttachVolume", "FailedMount"],
        needles: &["multi-attach error"],
        rule: "never-started-volume-multi-attach",
        cause: "its volume is attached to another node for another pod (a ReadWriteOnce volume can be used on one node at a time)",
        fix: "let the other pod go first (a Recreate strategy, or one replica), or use a ReadWriteMany volume",
    },
    StuckCause {
        reasons: &["FailedMount"],
        needles: &["not found in the list of registered csi drivers"],
        rule: "never-started-csi-driver",
        cause: "the CSI driver its volume needs is not running on the node",
        fix: "install or repair the CSI driver's node plugin on the node (and check the kubelet's root directory it registers under)",
    },
    StuckCause {
        reasons: &["FailedMount"],
        needles: &["configmap \"", "secret \"", "configmaps \"", "secrets \""],
        rule: "never-started-volume-source",
        cause: "a ConfigMap or Secret a volume mounts does not exist",
        fix: "create it in the pod's namespace, or mark the volume optional",
    },
    StuckCause {
        reasons: &["FailedMount"],
        needles: &["non-existent config key", "references non-existent"],
        rule: "never-started-volume-key",
        cause: "a volume asks for a key its ConfigMap or Secret does not have",
        fix: "add the key, or fix the volume's items",
    },
    StuckCause {
        reasons: &["FailedAttachVolume"],
        needles: &[],
        rule: "never-started-volume-attach",
        cause: "its volume does not attach to the node",
        fix: "check the PersistentVolume, its storage backend and the attacher (CSI controller)",
    },
    StuckCause {
        reasons: &["FailedMount"],
        needles: &[],
        rule: "never-started-volume-mount",
        cause: "its volumes do not mount",
        fix: "check the PersistentVolumeClaim is bound and its storage reachable from the node",
    },
];

/// Why a scheduled pod's containers never started, from its events, most telling first; never a
/// change (none of these is the workload's template's to fix by KubeSent).
fn never_started(name: &str, reason: &str, evidence: &Evidence) -> RuleVerdict {
    let event = |reasons: &[&str], needles: &[&str]| {
        evidence
            .events
            .iter()
            .filter(|e| {
                reasons.contains(&e.reason.as_str())
                    && (needles.is_empty() || contains_any(&e.message, needles))
            })
            .max_by_key(|e| e.count)
    };
    // The clause that names the cause, not the message's prefix; and how often it happened.
    let quoted = |e: &crate::evidence::EventSummary, needles: &[&str]| {
        let times = if e.count > 1 { format!(" ×{}", e.count) } else { String::new() };
        let clause = clause_with(&e.message, needles).unwrap_or_else(|| short(&e.message));
        format!("{clause}{times}")
    };
    let node = evidence.node.as_ref().map(|n| format!(" on node {}", n.name)).unwrap_or_default();
    if reason == "InitContainerRunning" {
        let last = evidence
            .decisive()
            .map(|d| d.line.clone())
            .or_else(|| {
                evidence
                    .logs
                    .as_ref()
                    .and_then(|l| l.lines.iter().rev().find(|l| !l.trim().is_empty()).cloned())
            })
            .map(|l| format!(" — its log ends: \"{}\"", short(&l)))
            .unwrap_or_default();
        return verdict(
            "init-container-never-finishes",
            85,
            format!(
                "init container {name} keeps running and never finishes, so the pod's containers never start: it waits on something that is not there (a Service, a database, a file) or loops{last} — make what it waits for available, or fix its command"
            ),
            Action::None,
        );
    }
    for StuckCause { reasons, needles, rule, cause, fix } in STUCK_CAUSES {
        if let Some(e) = event(reasons, needles) {
            return verdict(
                rule,
                90,
                format!("the pod never starts{node}: {cause} — \"{}\" — {fix}", quoted(e, needles)),
                Action::None,
            );
        }
    }
    // Pulling for the whole threshold without a result: a large image or a slow registry.
    let pulling = event(&["Pulling"], &[]);
    let pulled = event(&["Pulled", "Failed"], &["pulled", "failed to pull"]);
    if let (Some(pulling), None) = (pulling, pulled) {
        return verdict(
            "never-started-slow-pull",
            80,
            format!(
                "the pod never starts{node}: its image is still being pulled (\"{}\") — a very large image or a slow registry; pre-pull it, slim it, or mirror it closer to the nodes",
                short(&pulling.message)
            ),
            Action::None,
        );
    }
    verdict(
        "never-started",
        50,
        format!(
            "the pod's container {name} has not started ({reason}){node} and no event says why — look at the node's kubelet and container runtime"
        ),
        Action::None,
    )
}

/// The verdict for a pod none of whose containers is failing now.
pub fn healthy() -> RuleVerdict {
    verdict("no-failure", 100, "no container of the pod is failing now: nothing to fix".into(), Action::None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_oom_formula_doubles_and_stops_at_the_cap() {
        let policy = MemoryPolicy::default();
        assert_eq!(
            increased_limit(MemoryQuantity::from_mib(128), &policy),
            Some(MemoryQuantity::from_mib(256))
        );
        assert_eq!(
            increased_limit(MemoryQuantity::from_mib(6 * 1024), &policy),
            Some(MemoryQuantity::from_mib(8 * 1024))
        );
        assert_eq!(increased_limit(MemoryQuantity::from_mib(8 * 1024), &policy), None);
    }

    #[test]
    fn exit_codes_have_meanings() {
        assert!(exit_meaning(127).is_some_and(|m| m.contains("not found")));
        assert_eq!(exit_meaning(42), None);
    }
}
