//! The invariant checker. It trusts only the outside world: kube-sim's request log and objects, and the
//! streams and the intents bucket as read by a fresh client. Every message on `kubesent.>` is also
//! recorded as it passes, so a violation comes with the incident's whole history.

use std::{
    collections::{BTreeMap, BTreeSet},
    sync::{Arc, Mutex, PoisonError},
    time::Instant,
};

use async_nats::jetstream;
use futures::StreamExt as _;
use k8s_openapi::api::{apps::v1::Deployment, core::v1::Pod};
use kube::{Api, api::ListParams};
use kubesent_kube_sim::RequestRecord;
use kubesent_proto::intent::{Intent, Phase};
use kubesent_proto::{self as proto, IncidentId, MemoryQuantity, Outcome, OutcomeResult, Strategy};

/// Everything that passed on `kubesent.>`, by incident, as it passed.
#[derive(Clone, Default)]
pub struct Tap {
    entries: Arc<Mutex<BTreeMap<String, Vec<String>>>>,
    started: Option<Instant>,
}

impl Tap {
    /// Subscribes to `kubesent.>` on `client` and records every message until the client closes.
    pub async fn start(client: &async_nats::Client) -> anyhow::Result<Self> {
        let mut subscription = client.subscribe("kubesent.>").await?;
        let tap = Self { entries: Arc::default(), started: Some(Instant::now()) };
        let recorder = tap.clone();
        tokio::spawn(async move {
            while let Some(message) = subscription.next().await {
                let incident = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(proto::headers::INCIDENT))
                    .map(|v| v.to_string())
                    .or_else(|| {
                        serde_json::from_slice::<serde_json::Value>(&message.payload)
                            .ok()
                            .and_then(|v| v["incident"].as_str().map(str::to_owned))
                    })
                    .unwrap_or_else(|| "(no incident)".into());
                let summary: String = String::from_utf8_lossy(&message.payload).chars().take(400).collect();
                let at = recorder.started.map_or(0.0, |s| s.elapsed().as_secs_f64());
                recorder
                    .entries
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entry(incident)
                    .or_default()
                    .push(format!("[{at:>8.2}s] {} {summary}", message.subject));
            }
        });
        Ok(tap)
    }

    /// What passed for `incident`.
    pub fn history(&self, incident: &str) -> Vec<String> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner).get(incident).cloned().unwrap_or_default()
    }
}

/// One broken invariant, with the incident's history when it concerns one.
#[derive(Debug, Clone)]
pub struct Violation {
    /// Which invariant.
    pub invariant: &'static str,
    /// What was found.
    pub detail: String,
    /// Everything that passed on the bus for the incident, and its intent.
    pub history: Vec<String>,
}

/// Writes the violations section of a campaign's markdown report.
pub fn write_violations(f: &mut std::fmt::Formatter<'_>, violations: &[Violation]) -> std::fmt::Result {
    if violations.is_empty() {
        return writeln!(f, "\nInvariants: all held (0 violations).");
    }
    writeln!(f, "\n## {} violation(s)\n", violations.len())?;
    for violation in violations {
        writeln!(f, "- **{}**: {}", violation.invariant, violation.detail)?;
        for line in &violation.history {
            writeln!(f, "    {line}")?;
        }
    }
    Ok(())
}

/// The violations of a campaign's JSON report.
pub fn violations_json(violations: &[Violation]) -> serde_json::Value {
    serde_json::Value::Array(
        violations
            .iter()
            .map(|v| serde_json::json!({"invariant": v.invariant, "detail": v.detail, "history": v.history}))
            .collect(),
    )
}

/// The world as a fresh client reads it at the end of a run.
pub struct World {
    /// Every outcome in the audit stream.
    pub outcomes: Vec<Outcome>,
    /// Every intent in the bucket.
    pub intents: Vec<Intent>,
    /// kube-sim's request log.
    pub requests: Vec<RequestRecord>,
    /// Every pod.
    pub pods: Vec<Pod>,
    /// Every Deployment.
    pub deployments: Vec<Deployment>,
}

impl World {
    /// Reads it.
    pub async fn read(
        js: &jetstream::Context,
        kube: &kube::Client,
        requests: Vec<RequestRecord>,
    ) -> anyhow::Result<Self> {
        let stream = js.get_stream(proto::OUTCOMES_STREAM).await?;
        let info = stream.clone().info().await?.state.clone();
        let mut outcomes = Vec::new();
        for sequence in info.first_sequence..=info.last_sequence {
            if let Ok(message) = stream.get_raw_message(sequence).await
                && let Ok(outcome) = proto::decode::<Outcome>(&message.payload)
            {
                outcomes.push(outcome);
            }
        }
        let bucket = js.get_key_value(proto::INTENTS_BUCKET).await?;
        let mut keys = bucket.keys().await?;
        let mut intents = Vec::new();
        while let Some(key) = keys.next().await {
            let key = key?;
            if key.starts_with("inc-")
                && let Some(value) = bucket.get(&key).await?
                && let Ok(intent) = serde_json::from_slice::<Intent>(&value)
            {
                intents.push(intent);
            }
        }
        let pods = Api::<Pod>::all(kube.clone()).list(&ListParams::default()).await?.items;
        let deployments = Api::<Deployment>::all(kube.clone()).list(&ListParams::default()).await?.items;
        Ok(Self { outcomes, intents, requests, pods, deployments })
    }

    /// Final outcomes (not `awaiting_approval`) by incident.
    pub fn finals(&self) -> BTreeMap<&IncidentId, Vec<&Outcome>> {
        let mut finals: BTreeMap<&IncidentId, Vec<&Outcome>> = BTreeMap::new();
        // An approval wait comes before the final outcome, a follow-up's finding after it: neither is one.
        let not_final = [OutcomeResult::AwaitingApproval, OutcomeResult::Followed];
        for outcome in self.outcomes.iter().filter(|o| !not_final.contains(&o.result)) {
            finals.entry(&outcome.incident).or_default().push(outcome);
        }
        finals
    }
}

/// What the scenario created and expects: the failures it caused (by workload name), the images it set
/// and the memory limits it gave.
#[derive(Debug, Clone)]
pub struct Expectations {
    /// Workloads (Deployment or bare pod names, by namespace) whose failure must end in a final outcome.
    pub failures: BTreeSet<(String, String)>,
    /// Images the scenario set; any other is an action outside policy.
    pub images: BTreeSet<String>,
    /// The largest memory limit policy allows any container to end with.
    pub max_memory: MemoryQuantity,
}

/// Every invariant over `world`.
pub fn check(
    world: &World,
    expected: &Expectations,
    remediator_tokens: &[String],
    tap: &Tap,
) -> Vec<Violation> {
    let mut violations = Vec::new();
    let history = |incident: &IncidentId| {
        let mut lines = tap.history(incident.as_str());
        if let Some(intent) = world.intents.iter().find(|i| &i.incident == incident) {
            lines.push(format!("intent: {}", serde_json::to_string(intent).unwrap_or_default()));
        }
        lines
    };
    let finals = world.finals();

    // Every incident has exactly one final outcome.
    for (incident, outcomes) in &finals {
        if outcomes.len() > 1 {
            let results: Vec<&str> = outcomes.iter().map(|o| o.result.as_str()).collect();
            violations.push(Violation {
                invariant: "one final outcome per incident",
                detail: format!("{incident} has {} final outcomes: {results:?}", outcomes.len()),
                history: history(incident),
            });
        }
    }

    // A follow-up only follows a decision KubeSent did not carry out, and ends once.
    let mut followed: BTreeMap<&IncidentId, usize> = BTreeMap::new();
    for outcome in world.outcomes.iter().filter(|o| o.result == OutcomeResult::Followed) {
        *followed.entry(&outcome.incident).or_default() += 1;
    }
    for (incident, times) in followed {
        let suggested = finals.get(incident).and_then(|o| o.first()).map(|o| o.result);
        if times > 1 || suggested != Some(OutcomeResult::Suggested) {
            violations.push(Violation {
                invariant: "a follow-up follows a suggestion, once",
                detail: format!("{incident}: followed {times} times after {suggested:?}"),
                history: history(incident),
            });
        }
    }

    // Every failure the scenario caused ends in a final outcome (no job lost, whatever was killed).
    let workload_of = |outcome: &Outcome| -> String {
        let name = &outcome.pod.name;
        // A Deployment's pod is <deployment>-<hash>-<suffix>; a bare pod is itself.
        let parts: Vec<&str> = name.rsplitn(3, '-').collect();
        if parts.len() == 3 && parts[0].len() == 5 { parts[2].to_owned() } else { name.clone() }
    };
    let decided: BTreeSet<(String, String)> = finals
        .values()
        .flatten()
        .flat_map(|o| {
            [(o.pod.namespace.clone(), workload_of(o)), (o.pod.namespace.clone(), o.pod.name.clone())]
        })
        .collect();
    for failure in &expected.failures {
        if !decided.contains(failure) {
            violations.push(Violation {
                invariant: "no job lost",
                detail: format!("{}/{} failed and has no final outcome", failure.0, failure.1),
                history: Vec::new(),
            });
        }
    }

    // No mutating request repeated for one step of one intent.
    let mine = |r: &&RequestRecord| {
        remediator_tokens.contains(&r.client)
            && r.is_mutating()
            && (200..300).contains(&r.status)
            && !r.path.contains("/events")
            && !r.path.contains("/leases")
    };
    let mut counts: BTreeMap<(String, String), usize> = BTreeMap::new();
    for request in world.requests.iter().filter(mine) {
        *counts.entry((request.method.clone(), request.path.clone())).or_default() += 1;
    }
    let steps_on = |strategy: Strategy, namespace: &str, name: &str| {
        world
            .intents
            .iter()
            .filter(|i| i.strategy == strategy && i.target.namespace == namespace)
            .filter(|i| match strategy {
                Strategy::OwnerPatch => i.workload.as_ref().is_some_and(|w| w.name == name),
                _ => i.target.name == name,
            })
            // A template change that did not land or made things worse is taken back: one more write.
            .map(|i| {
                let took_back = strategy == Strategy::OwnerPatch
                    && matches!(i.result, Some(OutcomeResult::NotLanded | OutcomeResult::Reverted));
                if took_back { 2 } else { 1 }
            })
            .sum::<usize>()
    };
    for ((method, path), count) in &counts {
        let segments: Vec<&str> = path.trim_start_matches('/').split('/').collect();
        let namespace =
            segments.iter().position(|s| *s == "namespaces").and_then(|i| segments.get(i + 1)).copied();
        let allowed = match (method.as_str(), namespace, segments.as_slice()) {
            ("PATCH", Some(ns), [.., "deployments", name])
            | ("PATCH", Some(ns), [.., "statefulsets", name]) => steps_on(Strategy::OwnerPatch, ns, name),
            ("PATCH", Some(ns), [.., "pods", name, "resize"]) => steps_on(Strategy::InPlaceResize, ns, name),
            // An image patch, or the record a resize writes on the pod before it resizes (the intent of a
            // resize that fell back to a replace is a force replace by then).
            ("PATCH", Some(ns), [.., "pods", name]) => {
                steps_on(Strategy::PodPatch, ns, name)
                    + steps_on(Strategy::InPlaceResize, ns, name)
                    + steps_on(Strategy::ForceReplace, ns, name)
            }
            ("DELETE", Some(ns), [.., "pods", name]) => {
                steps_on(Strategy::ForceReplace, ns, name) + steps_on(Strategy::InPlaceResize, ns, name)
            }
            ("POST", Some(ns), [.., "pods"]) => world
                .intents
                .iter()
                .filter(|i| {
                    i.target.namespace == ns
                        && matches!(i.strategy, Strategy::ForceReplace | Strategy::InPlaceResize)
                })
                .count(),
            _ => 0,
        };
        if *count > allowed {
            violations.push(Violation {
                invariant: "no mutating request repeated for one step of one intent",
                detail: format!("{method} {path} succeeded {count} times for {allowed} intended step(s)"),
                history: Vec::new(),
            });
        }
    }

    // No force-replaced pod lost.
    for intent in world.intents.iter().filter(|i| {
        matches!(i.phase, Phase::Deleted | Phase::Created | Phase::Done)
            && (i.strategy == Strategy::ForceReplace || i.replacement_uid.is_some())
    }) {
        let exists = world.pods.iter().any(|p| {
            p.metadata.namespace.as_deref() == Some(intent.target.namespace.as_str())
                && p.metadata.name.as_deref() == Some(intent.target.name.as_str())
        });
        if !exists {
            violations.push(Violation {
                invariant: "no force-replaced pod lost",
                detail: format!("pod {}/{} is gone", intent.target.namespace, intent.target.name),
                history: history(&intent.incident),
            });
        }
    }

    // No action outside policy: only images the scenario set, memory within the cap.
    let containers = world
        .pods
        .iter()
        .flat_map(|p| {
            let name = format!(
                "pod {}/{}",
                p.metadata.namespace.clone().unwrap_or_default(),
                p.metadata.name.clone().unwrap_or_default()
            );
            p.spec.iter().flat_map(|s| s.containers.clone()).map(move |c| (name.clone(), c))
        })
        .chain(world.deployments.iter().flat_map(|d| {
            let name = format!(
                "Deployment {}/{}",
                d.metadata.namespace.clone().unwrap_or_default(),
                d.metadata.name.clone().unwrap_or_default()
            );
            d.spec
                .iter()
                .flat_map(|s| s.template.spec.clone())
                .flat_map(|s| s.containers)
                .map(move |c| (name.clone(), c))
        }));
    for (owner, container) in containers {
        let image = container.image.clone().unwrap_or_default();
        if !expected.images.contains(&image) {
            violations.push(Violation {
                invariant: "no action outside policy",
                detail: format!("{owner} runs {image}, an image the scenario never set"),
                history: Vec::new(),
            });
        }
        let limit = container
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .and_then(|l| l.get("memory"))
            .and_then(|q| MemoryQuantity::parse(&q.0).ok());
        if limit.is_some_and(|l| l > expected.max_memory) {
            violations.push(Violation {
                invariant: "no action outside policy",
                detail: format!("{owner} has a memory limit of {limit:?}, above {}", expected.max_memory),
                history: Vec::new(),
            });
        }
    }
    violations
}

/// The value of `label` in a Prometheus series (`name{result="healed"}` → `healed`).
fn label<'a>(series: &'a str, label: &str) -> Option<&'a str> {
    let start = series.find(&format!("{label}=\""))? + label.len() + 2;
    series[start..].split('"').next()
}

/// The remediators' own metrics, summed over every incarnation (see `Topology::counts`), count each
/// incident once: outcomes by result, healed observations by failure kind and fixes applied by failure
/// kind never exceed what the audit log and the intents hold. A repeat the stream's deduplication hides
/// (a verdict handed back after a failover and recorded again) shows here. Counts lost with a killed
/// process can only make the metrics smaller, never larger.
pub fn check_counts(world: &World, counts: &BTreeMap<String, f64>) -> Vec<Violation> {
    let mut allowed: BTreeMap<String, usize> = BTreeMap::new();
    for outcomes in world.finals().values() {
        let Some(first) = outcomes.first() else { continue };
        *allowed.entry(format!("outcomes:{}", first.result.as_str())).or_default() += 1;
        if first.result == OutcomeResult::Healed
            && let Some(diagnosis) = &first.diagnosis
        {
            *allowed.entry(format!("healed:{}", diagnosis.failure.kind.as_str())).or_default() += 1;
        }
    }
    for followed in world.outcomes.iter().filter(|o| o.result == OutcomeResult::Followed) {
        *allowed.entry(format!("outcomes:{}", followed.result.as_str())).or_default() += 1;
    }
    for intent in world.intents.iter().filter(|i| i.applied_at.is_some()) {
        if let Some(verdict) = &intent.verdict {
            *allowed.entry(format!("applied:{}", verdict.failure.kind.as_str())).or_default() += 1;
        }
    }
    let mut violations = Vec::new();
    for (series, value) in counts {
        let key = if series.starts_with("kubesent_remediator_outcomes_total") {
            label(series, "result").map(|r| format!("outcomes:{r}"))
        } else if series.starts_with("kubesent_remediator_failure_to_healed_seconds_count") {
            label(series, "kind").map(|k| format!("healed:{k}"))
        } else if series.starts_with("kubesent_remediator_verdict_to_fix_seconds_count") {
            label(series, "kind").map(|k| format!("applied:{k}"))
        } else {
            None
        };
        let Some(key) = key.filter(|k| k != "outcomes:awaiting_approval") else { continue };
        let most = allowed.get(&key).copied().unwrap_or(0);
        if *value > most as f64 {
            violations.push(Violation {
                invariant: "one outcome and one SLI observation per incident in the services' metrics",
                detail: format!("{series} counted {value} over every remediator, but the audit log and intents hold {most}"),
                history: Vec::new(),
            });
        }
    }
    violations
}

#[cfg(test)]
mod count_tests {
    use super::*;

    #[test]
    fn a_repeat_the_stream_hides_is_a_violation_and_lost_counts_are_not() {
        let healed: Outcome = serde_json::from_value(serde_json::json!({
            "schema": 1, "incident": "inc-aaaaaaaaaaaaaaaaaaaaaaaa",
            "pod": {"namespace": "shop", "name": "worker", "uid": "u", "resource_version": "1"},
            "action": {"type": "none"}, "result": "healed", "detail": "", "actor": "kubesent-remediator-0",
            "at": "2026-12-06T08:00:00Z"
        }))
        .expect("outcome");
        let world = World {
            outcomes: vec![healed],
            intents: Vec::new(),
            requests: Vec::new(),
            pods: Vec::new(),
            deployments: Vec::new(),
        };
        let series = "kubesent_remediator_outcomes_total{result=\"healed\"}".to_owned();
        assert!(check_counts(&world, &BTreeMap::from([(series.clone(), 1.0)])).is_empty(), "once");
        assert!(
            check_counts(&world, &BTreeMap::from([(series.clone(), 0.0)])).is_empty(),
            "lost with a kill"
        );
        let repeated = check_counts(&world, &BTreeMap::from([(series, 2.0)]));
        assert_eq!(repeated.len(), 1, "twice: {:?}", repeated.iter().map(|v| &v.detail).collect::<Vec<_>>());
        let waiting = "kubesent_remediator_outcomes_total{result=\"awaiting_approval\"}".to_owned();
        assert!(check_counts(&world, &BTreeMap::from([(waiting, 3.0)])).is_empty(), "not final");
    }
}
