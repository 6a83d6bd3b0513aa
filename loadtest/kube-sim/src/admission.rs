//! Admission of a new pod as the apiserver's `LimitRanger` and `ResourceQuota` plugins do it, as pure
//! functions over the namespace's LimitRanges and ResourceQuotas: LimitRange defaults first (requests and
//! limits a container does not set, recorded in the `kubernetes.io/limit-ranger` annotation), then the
//! LimitRange constraints (`min`, `max`, `maxLimitRequestRatio`, per Container and per Pod), then each
//! quota: the resources it tracks must be set (`must specify …`) and the pod's usage must fit (`exceeded
//! quota: …`). A refusal carries the plugins' own messages; the caller wraps them in the 403
//! `pods "<name>" is forbidden: …`.

use std::collections::BTreeMap;

use k8s_openapi::{
    api::core::v1::{Container, LimitRange, Pod, ResourceQuota},
    apimachinery::pkg::api::resource::Quantity,
};

/// The annotation the LimitRanger writes when it sets a default.
pub const LIMIT_RANGER_ANNOTATION: &str = "kubernetes.io/limit-ranger";

/// A quantity's value in thousandths of its unit (`500m` → 500, `1Gi` → 1073741824000), if it parses.
pub fn milli_value(text: &str) -> Option<i128> {
    let text = text.trim();
    let split =
        text.find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '+' || c == '-')).unwrap_or(text.len());
    let (number, suffix) = text.split_at(split);
    if number.is_empty() {
        return None;
    }
    let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
    let negative = whole.starts_with('-');
    let whole = whole.trim_start_matches(['+', '-']);
    if !whole.bytes().all(|b| b.is_ascii_digit()) || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // The number as an integer of its digits and a power of ten.
    let digits: i128 = format!("{whole}{fraction}").parse().ok().or(Some(0).filter(|_| whole.is_empty()))?;
    let mut exponent: i32 = -i32::try_from(fraction.len()).ok()?;
    let mut factor: i128 = 1;
    match suffix {
        "" => {}
        "m" => exponent -= 3,
        "k" => exponent += 3,
        "M" => exponent += 6,
        "G" => exponent += 9,
        "T" => exponent += 12,
        "P" => exponent += 15,
        "E" => exponent += 18,
        "Ki" => factor = 1 << 10,
        "Mi" => factor = 1 << 20,
        "Gi" => factor = 1 << 30,
        "Ti" => factor = 1 << 40,
        "Pi" => factor = 1 << 50,
        "Ei" => factor = 1 << 60,
        other => {
            let e: i32 = other.strip_prefix(['e', 'E'])?.parse().ok()?;
            exponent += e;
        }
    }
    // Thousandths: three more decimal places.
    exponent += 3;
    let mut value = digits.checked_mul(factor)?;
    if exponent >= 0 {
        value = value.checked_mul(10i128.checked_pow(u32::try_from(exponent).ok()?)?)?;
    } else {
        // Rounded up, as the apiserver rounds a quantity finer than a thousandth.
        let divisor = 10i128.checked_pow(u32::try_from(-exponent).ok()?)?;
        value = (value + divisor - 1) / divisor;
    }
    Some(if negative { -value } else { value })
}

/// A quantity as the apiserver prints a computed one: memory-like values (`binary`) with the largest
/// binary suffix that divides them, others with the largest decimal suffix (`500m`, `2`, `3k`).
pub fn format_quantity(milli: i128, binary: bool) -> String {
    if milli % 1000 != 0 {
        return format!("{milli}m");
    }
    let mut value = milli / 1000;
    if value == 0 {
        return "0".into();
    }
    if binary && value % 1024 == 0 {
        let mut suffix = 0;
        while value % 1024 == 0 && suffix < 6 {
            value /= 1024;
            suffix += 1;
        }
        return format!("{value}{}", ["", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"][suffix]);
    }
    let mut suffix = 0;
    while value % 1000 == 0 && suffix < 6 {
        value /= 1000;
        suffix += 1;
    }
    format!("{value}{}", ["", "k", "M", "G", "T", "P", "E"][suffix])
}

/// Whether a resource is counted in bytes (printed with binary suffixes).
fn is_bytes(resource: &str) -> bool {
    resource.ends_with("memory") || resource.ends_with("storage")
}

type ResourceList = BTreeMap<String, Quantity>;

fn value_of(list: Option<&ResourceList>, resource: &str) -> Option<(i128, String)> {
    let quantity = list?.get(resource)?;
    Some((milli_value(&quantity.0)?, quantity.0.clone()))
}

/// Sets the requests and limits the namespace's LimitRanges default and a container does not set, as
/// `PodMutateLimitFunc` does, and records them in the [`LIMIT_RANGER_ANNOTATION`].
pub fn apply_limit_range_defaults(pod: &mut Pod, ranges: &[LimitRange]) {
    let mut default_requests = ResourceList::new();
    let mut default_limits = ResourceList::new();
    for item in ranges.iter().filter_map(|r| r.spec.as_ref()).flat_map(|s| &s.limits) {
        if item.type_ == "Container" {
            default_requests.extend(item.default_request.clone().unwrap_or_default());
            default_limits.extend(item.default.clone().unwrap_or_default());
        }
    }
    if default_requests.is_empty() && default_limits.is_empty() {
        return;
    }
    let mut notes = Vec::new();
    let Some(spec) = pod.spec.as_mut() else { return };
    let mut merge = |container: &mut Container, prefix: &str| {
        let resources = container.resources.get_or_insert_default();
        let set = |current: &mut Option<ResourceList>, defaults: &ResourceList| {
            let current = current.get_or_insert_default();
            let mut names: Vec<String> = Vec::new();
            for (name, value) in defaults {
                if !current.contains_key(name) {
                    current.insert(name.clone(), value.clone());
                    names.push(name.clone());
                }
            }
            names
        };
        let requests = set(&mut resources.requests, &default_requests);
        let limits = set(&mut resources.limits, &default_limits);
        if !requests.is_empty() {
            notes.push(format!("{} request for {prefix} {}", requests.join(", "), container.name));
        }
        if !limits.is_empty() {
            notes.push(format!("{} limit for {prefix} {}", limits.join(", "), container.name));
        }
    };
    for container in &mut spec.containers {
        merge(container, "container");
    }
    for container in spec.init_containers.iter_mut().flatten() {
        merge(container, "init container");
    }
    if !notes.is_empty() {
        pod.metadata
            .annotations
            .get_or_insert_default()
            .insert(LIMIT_RANGER_ANNOTATION.into(), format!("LimitRanger plugin set: {}", notes.join("; ")));
    }
}

/// `min`: a request must be set and at least the minimum, and a limit, when set, too.
fn min_constraint(
    kind: &str,
    resource: &str,
    enforced: &Quantity,
    requests: Option<&ResourceList>,
    limits: Option<&ResourceList>,
) -> Option<String> {
    let minimum = milli_value(&enforced.0)?;
    let Some((request, request_text)) = value_of(requests, resource) else {
        return Some(format!(
            "minimum {resource} usage per {kind} is {}.  No request is specified",
            enforced.0
        ));
    };
    if request < minimum {
        return Some(format!(
            "minimum {resource} usage per {kind} is {}, but request is {request_text}",
            enforced.0
        ));
    }
    match value_of(limits, resource) {
        Some((limit, text)) if limit < minimum => {
            Some(format!("minimum {resource} usage per {kind} is {}, but limit is {text}", enforced.0))
        }
        _ => None,
    }
}

/// `max`: a limit must be set and at most the maximum, and a request, when set, too.
fn max_constraint(
    kind: &str,
    resource: &str,
    enforced: &Quantity,
    requests: Option<&ResourceList>,
    limits: Option<&ResourceList>,
) -> Option<String> {
    let maximum = milli_value(&enforced.0)?;
    let Some((limit, limit_text)) = value_of(limits, resource) else {
        return Some(format!(
            "maximum {resource} usage per {kind} is {}.  No limit is specified",
            enforced.0
        ));
    };
    if limit > maximum {
        return Some(format!(
            "maximum {resource} usage per {kind} is {}, but limit is {limit_text}",
            enforced.0
        ));
    }
    match value_of(requests, resource) {
        Some((request, text)) if request > maximum => {
            Some(format!("maximum {resource} usage per {kind} is {}, but request is {text}", enforced.0))
        }
        _ => None,
    }
}

/// `maxLimitRequestRatio`: limit ÷ request at most the ratio.
fn ratio_constraint(
    kind: &str,
    resource: &str,
    enforced: &Quantity,
    requests: Option<&ResourceList>,
    limits: Option<&ResourceList>,
) -> Option<String> {
    let ratio = milli_value(&enforced.0)?;
    let request = value_of(requests, resource).map(|(v, _)| v).filter(|v| *v != 0);
    let Some(request) = request else {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {}, but no request is specified or request is 0",
            enforced.0
        ));
    };
    let limit = value_of(limits, resource).map(|(v, _)| v).filter(|v| *v != 0);
    let Some(limit) = limit else {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {}, but no limit is specified or limit is 0",
            enforced.0
        ));
    };
    // limit / request > ratio / 1000, in integers.
    if limit * 1000 > ratio * request {
        return Some(format!(
            "{resource} max limit to request ratio per {kind} is {}, but provided ratio is {:.6}",
            enforced.0,
            limit as f64 / request as f64
        ));
    }
    None
}

/// A pod's requests or limits summed over its containers, or its largest init container's when that is
/// more (what the Pod limits of a LimitRange and a quota's usage count).
fn pod_total(pod: &Pod, pick: impl Fn(&Container) -> Option<&ResourceList>) -> ResourceList {
    let mut sums: BTreeMap<String, i128> = BTreeMap::new();
    let Some(spec) = pod.spec.as_ref() else { return ResourceList::new() };
    for container in &spec.containers {
        for (name, quantity) in pick(container).into_iter().flatten() {
            *sums.entry(name.clone()).or_default() += milli_value(&quantity.0).unwrap_or(0);
        }
    }
    for container in spec.init_containers.iter().flatten() {
        for (name, quantity) in pick(container).into_iter().flatten() {
            let value = milli_value(&quantity.0).unwrap_or(0);
            let sum = sums.entry(name.clone()).or_default();
            *sum = (*sum).max(value);
        }
    }
    sums.into_iter()
        .map(|(name, milli)| {
            let text = format_quantity(milli, is_bytes(&name));
            (name, Quantity(text))
        })
        .collect()
}

fn requests_of(container: &Container) -> Option<&ResourceList> {
    container.resources.as_ref()?.requests.as_ref()
}

fn limits_of(container: &Container) -> Option<&ResourceList> {
    container.resources.as_ref()?.limits.as_ref()
}

/// What the namespace's LimitRanges refuse in `pod`, in the plugin's words (empty: nothing).
pub fn limit_range_violations(pod: &Pod, ranges: &[LimitRange]) -> Vec<String> {
    let mut errors = Vec::new();
    let Some(spec) = pod.spec.as_ref() else { return errors };
    for item in ranges.iter().filter_map(|r| r.spec.as_ref()).flat_map(|s| &s.limits) {
        let check = |kind: &str,
                     requests: Option<&ResourceList>,
                     limits: Option<&ResourceList>,
                     errors: &mut Vec<String>| {
            for (resource, enforced) in item.min.iter().flatten() {
                errors.extend(min_constraint(kind, resource, enforced, requests, limits));
            }
            for (resource, enforced) in item.max.iter().flatten() {
                errors.extend(max_constraint(kind, resource, enforced, requests, limits));
            }
            for (resource, enforced) in item.max_limit_request_ratio.iter().flatten() {
                errors.extend(ratio_constraint(kind, resource, enforced, requests, limits));
            }
        };
        match item.type_.as_str() {
            "Container" => {
                for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
                    check("Container", requests_of(container), limits_of(container), &mut errors);
                }
            }
            "Pod" => {
                let (requests, limits) = (pod_total(pod, requests_of), pod_total(pod, limits_of));
                check("Pod", Some(&requests), Some(&limits), &mut errors);
            }
            _ => {}
        }
    }
    errors
}

/// The plugins' aggregate of several errors: one as it is, more in brackets.
pub fn aggregate(errors: &[String]) -> String {
    match errors {
        [one] => one.clone(),
        many => format!("[{}]", many.join(", ")),
    }
}

/// The compute resources a quota counts for a pod (`PodUsageFunc`): `pods`, `count/pods`, and the
/// requests and limits of cpu and memory (`cpu` and `memory` are the requests). A pod that finished counts
/// only in `count/pods`.
pub fn pod_usage(pod: &Pod) -> BTreeMap<String, i128> {
    let mut usage = BTreeMap::from([("count/pods".to_owned(), 1000)]);
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    if matches!(phase, Some("Succeeded" | "Failed")) {
        return usage;
    }
    usage.insert("pods".into(), 1000);
    let requests = pod_total(pod, requests_of);
    let limits = pod_total(pod, limits_of);
    for resource in ["cpu", "memory", "ephemeral-storage"] {
        if let Some((value, _)) = value_of(Some(&requests), resource) {
            usage.insert(resource.into(), value);
            usage.insert(format!("requests.{resource}"), value);
        }
        if let Some((value, _)) = value_of(Some(&limits), resource) {
            usage.insert(format!("limits.{resource}"), value);
        }
    }
    usage
}

/// Resources whose quota makes every container state them (a compatibility rule of the apiserver's).
const MUST_SPECIFY: [&str; 6] =
    ["cpu", "memory", "requests.cpu", "requests.memory", "limits.cpu", "limits.memory"];

/// The containers of `pod` that do not state a resource `quota` tracks and every container must state:
/// `must specify limits.memory for: app; requests.memory for: app,sidecar` (`None`: all state them).
fn missing_resources(pod: &Pod, tracked: &[&str]) -> Option<String> {
    let spec = pod.spec.as_ref()?;
    let mut missing: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for container in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        let has = |resource: &str| -> bool {
            let (kind, name) = resource.split_once('.').unwrap_or(("requests", resource));
            let list = if kind == "limits" { limits_of(container) } else { requests_of(container) };
            list.is_some_and(|l| l.contains_key(name))
        };
        for resource in tracked.iter().filter(|r| MUST_SPECIFY.contains(r)) {
            if !has(resource) {
                missing.entry(resource).or_default().push(container.name.clone());
            }
        }
    }
    if missing.is_empty() {
        return None;
    }
    let parts: Vec<String> = missing
        .into_iter()
        .map(|(resource, mut containers)| {
            containers.sort();
            containers.dedup();
            format!("{resource} for: {}", containers.join(","))
        })
        .collect();
    Some(format!("must specify {}", parts.join("; ")))
}

/// `key=value,…` sorted by key, as the plugin prints a resource list.
fn pretty(list: &BTreeMap<String, i128>, keys: &[String], originals: &BTreeMap<String, String>) -> String {
    keys.iter()
        .map(|key| {
            let value = list.get(key).copied().unwrap_or(0);
            let text = originals.get(key).cloned().unwrap_or_else(|| format_quantity(value, is_bytes(key)));
            format!("{key}={text}")
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// A quota's recorded use (`status.used`) of every resource its spec limits, in milli-units; `None` while
/// the quota controller has not recorded one of them yet.
pub fn recorded_use(quota: &ResourceQuota) -> Option<BTreeMap<String, i128>> {
    let hard = quota.spec.as_ref()?.hard.as_ref()?;
    let used = quota.status.as_ref()?.used.as_ref()?;
    hard.keys().map(|resource| Some((resource.clone(), milli_value(&used.get(resource)?.0)?))).collect()
}

/// A quota's `status.used` for the resources of its `hard` limits, given what is used (milli-units).
pub fn format_use(hard: &serde_json::Value, used: &BTreeMap<String, i128>) -> serde_json::Value {
    let counted: serde_json::Map<String, serde_json::Value> = hard
        .as_object()
        .into_iter()
        .flatten()
        .map(|(resource, _)| {
            let total = used.get(resource).copied().unwrap_or(0);
            (resource.clone(), serde_json::Value::String(format_quantity(total, is_bytes(resource))))
        })
        .collect();
    serde_json::Value::Object(counted)
}

/// A quota's new `status.used` once a pod is admitted.
#[derive(Debug, Clone, PartialEq)]
pub struct QuotaCharge {
    /// The quota.
    pub name: String,
    /// Its usage with the pod, per tracked resource, as the API prints it.
    pub used: BTreeMap<String, String>,
}

/// Checks `pod` against each quota of its namespace, given what the pods already there use (`used`, the
/// sum of [`pod_usage`] over them): the quota's message for the first one it does not fit, else each
/// quota's usage with the pod.
pub fn charge_quotas(
    pod: &Pod,
    quotas: &[ResourceQuota],
    used: &BTreeMap<String, i128>,
) -> Result<Vec<QuotaCharge>, String> {
    let usage = pod_usage(pod);
    let mut charges = Vec::new();
    for quota in quotas {
        let name = quota.metadata.name.clone().unwrap_or_default();
        let hard: BTreeMap<String, String> = quota
            .spec
            .as_ref()
            .and_then(|s| s.hard.clone())
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect();
        let tracked: Vec<&str> = hard.keys().map(String::as_str).collect();
        if let Some(missing) = missing_resources(pod, &tracked) {
            return Err(format!("failed quota: {name}: {missing}"));
        }
        let requested: Vec<String> =
            hard.keys().filter(|k| usage.get(*k).is_some_and(|v| *v != 0)).cloned().collect();
        let exceeded: Vec<String> = requested
            .iter()
            .filter(|k| {
                let limit = hard.get(*k).and_then(|v| milli_value(v)).unwrap_or(0);
                used.get(*k).copied().unwrap_or(0) + usage.get(*k).copied().unwrap_or(0) > limit
            })
            .cloned()
            .collect();
        if !exceeded.is_empty() {
            return Err(format!(
                "exceeded quota: {name}, requested: {}, used: {}, limited: {}",
                pretty(&usage, &exceeded, &BTreeMap::new()),
                pretty(used, &exceeded, &BTreeMap::new()),
                pretty(&BTreeMap::new(), &exceeded, &hard),
            ));
        }
        let with_pod = hard
            .keys()
            .map(|k| {
                let total = used.get(k).copied().unwrap_or(0) + usage.get(k).copied().unwrap_or(0);
                (k.clone(), format_quantity(total, is_bytes(k)))
            })
            .collect();
        charges.push(QuotaCharge { name, used: with_pod });
    }
    Ok(charges)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn pod(resources: serde_json::Value) -> Pod {
        serde_json::from_value(json!({"metadata": {"name": "web-1"},
            "spec": {"containers": [{"name": "app", "image": "web:1", "resources": resources}]}}))
        .expect("pod")
    }

    fn limit_range(items: serde_json::Value) -> LimitRange {
        serde_json::from_value(json!({"metadata": {"name": "limits"}, "spec": {"limits": items}}))
            .expect("range")
    }

    fn quota(hard: serde_json::Value) -> ResourceQuota {
        serde_json::from_value(json!({"metadata": {"name": "team"}, "spec": {"hard": hard}})).expect("quota")
    }

    #[test]
    fn quantities_are_read_and_printed_as_the_apiserver_does() {
        for (text, milli) in [
            ("500m", 500),
            ("2", 2000),
            ("1.5", 1500),
            ("1Gi", 1_073_741_824_000),
            ("128Mi", 134_217_728_000),
            ("1k", 1_000_000),
            ("1e3", 1_000_000),
            ("0.1m", 1),
        ] {
            assert_eq!(milli_value(text), Some(milli), "{text}");
        }
        assert_eq!(milli_value("lots"), None);
        assert_eq!(format_quantity(1536 * 1024 * 1024 * 1000, true), "1536Mi");
        assert_eq!(format_quantity(8 * 1024 * 1024 * 1024 * 1000, true), "8Gi");
        assert_eq!(format_quantity(3600, false), "3600m");
        assert_eq!(format_quantity(4000, false), "4");
        assert_eq!(format_quantity(0, true), "0");
    }

    #[test]
    fn a_limit_range_fills_what_a_container_leaves_out_and_says_so() {
        let ranges = [limit_range(json!([{"type": "Container", "default": {"memory": "512Mi", "cpu": "1"},
            "defaultRequest": {"memory": "256Mi"}}]))];
        let mut pod = pod(json!({"limits": {"cpu": "2"}}));
        apply_limit_range_defaults(&mut pod, &ranges);
        let container = &pod.spec.as_ref().expect("spec").containers[0];
        let resources = container.resources.as_ref().expect("resources");
        assert_eq!(resources.limits.as_ref().expect("limits")["memory"].0, "512Mi");
        assert_eq!(resources.limits.as_ref().expect("limits")["cpu"].0, "2", "set by the pod: kept");
        assert_eq!(resources.requests.as_ref().expect("requests")["memory"].0, "256Mi");
        assert_eq!(
            pod.metadata.annotations.as_ref().expect("annotations")[LIMIT_RANGER_ANNOTATION],
            "LimitRanger plugin set: memory request for container app; memory limit for container app"
        );
    }

    #[test]
    fn a_limit_range_refuses_with_the_plugins_messages() {
        let ranges = [limit_range(json!([
            {"type": "Container", "max": {"memory": "1Gi"}, "min": {"memory": "64Mi"}, "maxLimitRequestRatio": {"memory": "2"}},
            {"type": "Pod", "max": {"memory": "1536Mi"}}
        ]))];
        assert!(
            limit_range_violations(
                &pod(json!({"limits": {"memory": "512Mi"}, "requests": {"memory": "256Mi"}})),
                &ranges
            )
            .is_empty()
        );
        assert_eq!(
            limit_range_violations(
                &pod(json!({"limits": {"memory": "2Gi"}, "requests": {"memory": "2Gi"}})),
                &ranges
            ),
            [
                "maximum memory usage per Container is 1Gi, but limit is 2Gi",
                "maximum memory usage per Pod is 1536Mi, but limit is 2Gi",
            ]
        );
        assert_eq!(
            limit_range_violations(
                &pod(json!({"limits": {"memory": "512Mi"}, "requests": {"memory": "128Mi"}})),
                &ranges
            ),
            ["memory max limit to request ratio per Container is 2, but provided ratio is 4.000000"]
        );
        assert_eq!(
            limit_range_violations(&pod(json!({})), &ranges)[..2],
            [
                "minimum memory usage per Container is 64Mi.  No request is specified".to_owned(),
                "maximum memory usage per Container is 1Gi.  No limit is specified".to_owned(),
            ]
        );
        assert_eq!(aggregate(&["a".into()]), "a");
        assert_eq!(aggregate(&["a".into(), "b".into()]), "[a, b]");
    }

    #[test]
    fn a_quotas_recorded_use_counts_only_when_every_limited_resource_is_recorded() {
        let mut recorded = quota(json!({"pods": "10", "limits.memory": "1Gi"}));
        assert_eq!(recorded_use(&recorded), None, "no status yet");
        recorded.status = serde_json::from_value(json!({"used": {"pods": "2"}})).expect("status");
        assert_eq!(recorded_use(&recorded), None, "limits.memory not recorded");
        recorded.status =
            serde_json::from_value(json!({"used": {"pods": "2", "limits.memory": "512Mi"}})).expect("status");
        let used = recorded_use(&recorded).expect("recorded");
        assert_eq!(used["pods"], 2000);
        assert_eq!(used["limits.memory"], 512 * 1024 * 1024 * 1000);
        assert_eq!(
            format_use(&json!({"pods": "10", "limits.memory": "1Gi"}), &used),
            json!({"pods": "2", "limits.memory": "512Mi"})
        );
    }

    #[test]
    fn a_quota_counts_what_pods_request_and_refuses_what_would_not_fit() {
        let quotas = [quota(json!({"limits.memory": "1Gi", "pods": "3"}))];
        let used = BTreeMap::from([
            ("limits.memory".to_owned(), 768 * 1024 * 1024 * 1000),
            ("pods".to_owned(), 2000),
        ]);
        let fits = pod(json!({"limits": {"memory": "256Mi"}}));
        let charged = charge_quotas(&fits, &quotas, &used).expect("fits");
        assert_eq!(
            charged[0].used,
            BTreeMap::from([
                ("limits.memory".to_owned(), "1Gi".to_owned()),
                ("pods".to_owned(), "3".to_owned())
            ])
        );
        let too_big = pod(json!({"limits": {"memory": "512Mi"}}));
        assert_eq!(
            charge_quotas(&too_big, &quotas, &used),
            Err("exceeded quota: team, requested: limits.memory=512Mi, used: limits.memory=768Mi, limited: limits.memory=1Gi".into())
        );
        assert_eq!(
            charge_quotas(&pod(json!({})), &quotas, &used),
            Err("failed quota: team: must specify limits.memory for: app".into())
        );
        let mut finished = fits.clone();
        finished.status = serde_json::from_value(json!({"phase": "Succeeded"})).expect("status");
        assert_eq!(
            pod_usage(&finished),
            BTreeMap::from([("count/pods".to_owned(), 1000)]),
            "a finished pod uses nothing"
        );
    }
}
