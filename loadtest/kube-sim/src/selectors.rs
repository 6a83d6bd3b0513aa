//! Label and field selectors with the syntax and the errors of the real apiserver.

use std::collections::BTreeMap;

use crate::{api_error::ApiError, resources::ResourceDef};

/// One label requirement.
#[derive(Debug, Clone, PartialEq)]
enum LabelRequirement {
    Exists(String),
    NotExists(String),
    In(String, Vec<String>),
    NotIn(String, Vec<String>),
}

/// A parsed `labelSelector`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct LabelSelector(Vec<LabelRequirement>);

impl LabelSelector {
    /// Parses `app=web,tier in (a,b),!canary`.
    pub fn parse(text: &str) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in split_top_level(text) {
            let term = term.trim();
            if term.is_empty() {
                continue;
            }
            requirements.push(
                parse_label_term(term).map_err(|detail| {
                    ApiError::bad_request(format!("unable to parse requirement: {detail}"))
                })?,
            );
        }
        Ok(Self(requirements))
    }

    /// Whether `labels` satisfy every requirement.
    pub fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.0.iter().all(|req| match req {
            LabelRequirement::Exists(k) => labels.contains_key(k),
            LabelRequirement::NotExists(k) => !labels.contains_key(k),
            LabelRequirement::In(k, values) => labels.get(k).is_some_and(|v| values.contains(v)),
            LabelRequirement::NotIn(k, values) => labels.get(k).is_none_or(|v| !values.contains(v)),
        })
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Splits on commas that are not inside parentheses.
fn split_top_level(text: &str) -> Vec<&str> {
    let mut parts = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    for (i, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            ',' if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

fn valid_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    let prefix_ok = prefix.is_none_or(|p| {
        !p.is_empty()
            && p.len() <= 253
            && p.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '.'))
    });
    name_ok && prefix_ok
}

fn valid_label_value(value: &str) -> bool {
    value.is_empty()
        || (value.len() <= 63
            && value.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            && value.starts_with(|c: char| c.is_ascii_alphanumeric())
            && value.ends_with(|c: char| c.is_ascii_alphanumeric()))
}

fn parse_label_term(term: &str) -> Result<LabelRequirement, String> {
    let key_checked = |k: &str| -> Result<String, String> {
        let k = k.trim();
        if valid_label_key(k) { Ok(k.to_owned()) } else { Err(format!("invalid label key {k:?}")) }
    };
    let value_checked = |v: &str| -> Result<String, String> {
        let v = v.trim();
        if valid_label_value(v) { Ok(v.to_owned()) } else { Err(format!("invalid label value: {v:?}")) }
    };
    if let Some(key) = term.strip_prefix('!') {
        return Ok(LabelRequirement::NotExists(key_checked(key)?));
    }
    for (op, negate) in [("!=", true), ("==", false), ("=", false)] {
        if let Some((k, v)) = term.split_once(op) {
            if v.contains('=') {
                return Err(format!("found '=', expected: ',' or 'end of string' in {term:?}"));
            }
            let (k, v) = (key_checked(k)?, value_checked(v)?);
            return Ok(if negate {
                LabelRequirement::NotIn(k, vec![v])
            } else {
                LabelRequirement::In(k, vec![v])
            });
        }
    }
    let words: Vec<&str> = term.splitn(2, char::is_whitespace).collect();
    if let [key, rest] = words[..] {
        let rest = rest.trim_start();
        for (op, negate) in [("notin", true), ("in", false)] {
            if let Some(list) = rest.strip_prefix(op) {
                let list = list.trim();
                let inner = list
                    .strip_prefix('(')
                    .and_then(|l| l.strip_suffix(')'))
                    .ok_or_else(|| format!("found '{list}', expected: '('"))?;
                let values = inner.split(',').map(value_checked).collect::<Result<Vec<_>, _>>()?;
                let key = key_checked(key)?;
                return Ok(if negate {
                    LabelRequirement::NotIn(key, values)
                } else {
                    LabelRequirement::In(key, values)
                });
            }
        }
        return Err(format!("found '{rest}', expected: in, notin, =, ==, !=, gt, lt"));
    }
    Ok(LabelRequirement::Exists(key_checked(term)?))
}

/// One field requirement.
#[derive(Debug, Clone, PartialEq)]
struct FieldRequirement {
    field: String,
    value: String,
    negate: bool,
}

/// A parsed `fieldSelector`, validated against the fields the resource supports.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FieldSelector(Vec<FieldRequirement>);

impl FieldSelector {
    /// Parses `metadata.name=web-1,status.phase!=Running` for `def`.
    pub fn parse(text: &str, def: &ResourceDef) -> Result<Self, ApiError> {
        let mut requirements = Vec::new();
        for term in split_unescaped(text, ',') {
            if term.is_empty() {
                continue;
            }
            let (field, value, negate) = if let Some((f, v)) = split_once_unescaped(&term, "!=") {
                (f, v, true)
            } else if let Some((f, v)) = split_once_unescaped(&term, "==") {
                (f, v, false)
            } else if let Some((f, v)) = split_once_unescaped(&term, "=") {
                (f, v, false)
            } else {
                return Err(ApiError::bad_request(format!(
                    "invalid selector: '{text}'; can't understand '{term}'"
                )));
            };
            if !def.supports_field(&field) {
                return Err(ApiError::bad_request(format!("field label not supported: {field}")));
            }
            requirements.push(FieldRequirement { field, value: unescape(&value), negate });
        }
        Ok(Self(requirements))
    }

    /// Whether the object's selectable field values satisfy every requirement.
    pub fn matches(&self, fields: &dyn Fn(&str) -> Option<String>) -> bool {
        self.0.iter().all(|req| {
            let value = fields(&req.field).unwrap_or_default();
            (value == req.value) != req.negate
        })
    }

    /// The value required for `field` by an `=` term, if any.
    pub fn required_value(&self, field: &str) -> Option<&str> {
        self.0.iter().find(|r| r.field == field && !r.negate).map(|r| r.value.as_str())
    }

    /// Whether the selector selects everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

fn split_unescaped(text: &str, sep: char) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut escaped = false;
    for c in text.chars() {
        if escaped {
            if let Some(last) = parts.last_mut() {
                last.push('\\');
                last.push(c);
            }
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else if c == sep {
            parts.push(String::new());
        } else if let Some(last) = parts.last_mut() {
            last.push(c);
        }
    }
    parts
}

fn split_once_unescaped(term: &str, op: &str) -> Option<(String, String)> {
    let bytes = term.as_bytes();
    let mut i = 0;
    while i + op.len() <= bytes.len() {
        if bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if term.get(i..i + op.len()) == Some(op) {
            return Some((term[..i].trim().to_owned(), term[i + op.len()..].to_owned()));
        }
        i += 1;
    }
    None
}

fn unescape(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    let mut escaped = false;
    for c in value.chars() {
        if escaped {
            out.push(c);
            escaped = false;
        } else if c == '\\' {
            escaped = true;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::PODS;

    fn labels(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    #[test]
    fn equality_set_and_existence_label_requirements_match_like_the_apiserver() {
        let sel = LabelSelector::parse("app=web,tier in (front, back),!canary,env!=prod").expect("parses");
        assert!(sel.matches(&labels(&[("app", "web"), ("tier", "front")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "front"), ("canary", "1")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "mid")])));
        assert!(!sel.matches(&labels(&[("app", "web"), ("tier", "back"), ("env", "prod")])));
        assert!(LabelSelector::parse("app").expect("parses").matches(&labels(&[("app", "")])));
        assert!(LabelSelector::parse("x notin (a)").expect("parses").matches(&labels(&[])));
    }

    #[test]
    fn a_malformed_label_selector_is_a_bad_request() {
        for bad in ["a==b==c", "a in b", "-bad=1", "a=b c"] {
            let err = LabelSelector::parse(bad).expect_err(bad);
            assert_eq!(err.code, 400, "{bad}");
        }
    }

    #[test]
    fn unsupported_pod_field_selectors_are_refused_with_the_real_message() {
        let err = FieldSelector::parse("spec.containers=x", &PODS).expect_err("unsupported");
        assert_eq!(err.code, 400);
        assert_eq!(err.message, "field label not supported: spec.containers");
        let sel =
            FieldSelector::parse("metadata.namespace!=kube-system,status.phase=Running", &PODS).expect("ok");
        let fields = |f: &str| match f {
            "metadata.namespace" => Some("shop".to_owned()),
            "status.phase" => Some("Running".to_owned()),
            _ => None,
        };
        assert!(sel.matches(&fields));
    }
}
