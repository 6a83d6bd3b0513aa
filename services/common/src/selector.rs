//! Label selectors as the apiserver reads them (`matchLabels` and `matchExpressions`).

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

/// Whether `labels` match `selector`: every `matchLabels` pair, and every expression (`In`, `NotIn`,
/// `Exists`, `DoesNotExist`). An empty selector matches everything; an unknown operator matches nothing.
pub fn matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let pairs = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let expressions = selector.match_expressions.iter().flatten().all(|e| {
        let value = labels.get(&e.key);
        let listed = |v: &String| e.values.iter().flatten().any(|allowed| allowed == v);
        match e.operator.as_str() {
            "In" => value.is_some_and(listed),
            "NotIn" => !value.is_some_and(listed),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    pairs && expressions
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn selector(value: serde_json::Value) -> LabelSelector {
        serde_json::from_value(value).expect("selector")
    }

    #[test]
    fn labels_and_expressions_must_all_hold() {
        let labels: BTreeMap<String, String> = [("app", "web"), ("tier", "front")]
            .into_iter()
            .map(|(k, v)| (k.to_owned(), v.to_owned()))
            .collect();
        assert!(matches(&selector(json!({})), &labels), "empty matches all");
        assert!(matches(&selector(json!({"matchLabels": {"app": "web"}})), &labels));
        assert!(!matches(&selector(json!({"matchLabels": {"app": "db"}})), &labels));
        let expression = |op: &str, values: serde_json::Value| {
            selector(json!({"matchExpressions": [{"key": "tier", "operator": op, "values": values}]}))
        };
        assert!(matches(&expression("In", json!(["front", "back"])), &labels));
        assert!(!matches(&expression("NotIn", json!(["front"])), &labels));
        assert!(matches(&expression("Exists", json!(null)), &labels));
        assert!(!matches(&expression("DoesNotExist", json!(null)), &labels));
        assert!(!matches(&expression("Gt", json!(["1"])), &labels), "an unknown operator matches nothing");
    }
}
