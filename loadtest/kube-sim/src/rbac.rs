//! Authentication by bearer token and RBAC authorization with the apiserver's 401/403 answers.
//!
//! Off by default (every request is allowed). When on, tokens map to users (ServiceAccounts get
//! `system:serviceaccount:<ns>:<name>` and their groups), and Roles, ClusterRoles and their bindings stored
//! in the simulator (for example loaded from the project's deployment YAML) decide.

use std::{
    collections::HashMap,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
};

use serde_json::{Value, json};

use crate::{
    api_error::ApiError,
    resources::{CLUSTERROLEBINDINGS, CLUSTERROLES, ROLEBINDINGS, ROLES, ResourceDef},
    store::{Filter, Store},
};

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserInfo {
    /// `system:serviceaccount:kubesent:remediator`, or a plain user name.
    pub name: String,
    /// Groups, including `system:authenticated`.
    pub groups: Vec<String>,
}

impl UserInfo {
    /// The user a ServiceAccount's token authenticates as.
    pub fn service_account(namespace: &str, name: &str) -> Self {
        Self {
            name: format!("system:serviceaccount:{namespace}:{name}"),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{namespace}"),
                "system:authenticated".into(),
            ],
        }
    }

    /// A cluster administrator (`system:masters`).
    pub fn admin() -> Self {
        Self {
            name: "kubernetes-admin".into(),
            groups: vec!["system:masters".into(), "system:authenticated".into()],
        }
    }
}

/// What a request asks to do, in RBAC terms.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attributes {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, `deletecollection`.
    pub verb: &'static str,
    /// The resource.
    pub def: &'static ResourceDef,
    /// `log`, `status`, `resize`, …
    pub subresource: Option<String>,
    /// The namespace, for namespaced requests.
    pub namespace: Option<String>,
    /// The object name, for object requests.
    pub name: Option<String>,
}

/// Token authentication and RBAC.
#[derive(Debug, Default)]
pub struct Rbac {
    enabled: AtomicBool,
    tokens: Mutex<HashMap<String, UserInfo>>,
}

fn strings(value: Option<&Value>) -> Vec<String> {
    value
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(|v| v.as_str().map(str::to_owned)).collect())
        .unwrap_or_default()
}

fn matches_any(list: &[String], wanted: &str) -> bool {
    list.iter().any(|x| x == "*" || x == wanted)
}

fn subject_matches(subject: &Value, user: &UserInfo) -> bool {
    let name = subject.get("name").and_then(Value::as_str).unwrap_or_default();
    match subject.get("kind").and_then(Value::as_str) {
        Some("User") => user.name == name,
        Some("Group") => user.groups.iter().any(|g| g == name),
        Some("ServiceAccount") => {
            let namespace = subject.get("namespace").and_then(Value::as_str).unwrap_or_default();
            user.name == format!("system:serviceaccount:{namespace}:{name}")
        }
        _ => false,
    }
}

fn rule_allows(rule: &Value, attrs: &Attributes) -> bool {
    let resource = match &attrs.subresource {
        Some(sub) => format!("{}/{sub}", attrs.def.plural),
        None => attrs.def.plural.to_owned(),
    };
    let resources = strings(rule.get("resources"));
    let resource_ok = resources.iter().any(|r| {
        r == "*" || *r == resource || attrs.subresource.as_ref().is_some_and(|sub| *r == format!("*/{sub}"))
    });
    let names = strings(rule.get("resourceNames"));
    let name_ok = names.is_empty() || attrs.name.as_ref().is_some_and(|n| names.contains(n));
    matches_any(&strings(rule.get("verbs")), attrs.verb)
        && matches_any(&strings(rule.get("apiGroups")), attrs.def.group)
        && resource_ok
        && name_ok
}

impl Rbac {
    /// Turns authentication and authorization on or off.
    pub fn set_enabled(&self, enabled: bool) {
        self.enabled.store(enabled, Ordering::SeqCst);
    }

    /// Whether RBAC is enforced.
    pub fn is_enabled(&self) -> bool {
        self.enabled.load(Ordering::SeqCst)
    }

    /// Registers a bearer token for `user`.
    pub fn add_token(&self, token: &str, user: UserInfo) {
        self.tokens.lock().unwrap_or_else(PoisonError::into_inner).insert(token.to_owned(), user);
    }

    /// The user behind a request's `Authorization` header; 401 when RBAC is on and it is missing or unknown.
    pub fn authenticate(&self, authorization: Option<&str>) -> Result<Option<UserInfo>, ApiError> {
        if !self.is_enabled() {
            return Ok(None);
        }
        let token = authorization.and_then(|a| a.strip_prefix("Bearer ")).map(str::trim);
        let user =
            token.and_then(|t| self.tokens.lock().unwrap_or_else(PoisonError::into_inner).get(t).cloned());
        user.map(Some).ok_or_else(ApiError::unauthorized)
    }

    /// Allows or forbids `attrs` for `user` by the stored Roles, ClusterRoles and bindings.
    pub fn authorize(&self, store: &Store, user: &UserInfo, attrs: &Attributes) -> Result<(), ApiError> {
        if user.groups.iter().any(|g| g == "system:masters") || self.allowed(store, user, attrs) {
            return Ok(());
        }
        Err(ApiError::forbidden(&user.name, attrs))
    }

    fn allowed(&self, store: &Store, user: &UserInfo, attrs: &Attributes) -> bool {
        let cluster_role_rules = |name: &str| {
            store
                .get(&CLUSTERROLES, "", name)
                .map(|o| o.value().get("rules").cloned().unwrap_or(json!([])))
                .unwrap_or(json!([]))
        };
        let bound = |binding: &Value| {
            binding
                .get("subjects")
                .and_then(Value::as_array)
                .is_some_and(|s| s.iter().any(|s| subject_matches(s, user)))
        };
        let allows =
            |rules: &Value| rules.as_array().is_some_and(|r| r.iter().any(|rule| rule_allows(rule, attrs)));
        for binding in store.all(&CLUSTERROLEBINDINGS).iter().map(|o| o.value()) {
            if bound(&binding)
                && allows(&cluster_role_rules(
                    binding.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or_default(),
                ))
            {
                return true;
            }
        }
        let Some(namespace) = &attrs.namespace else { return false };
        let filter = Filter { namespace: Some(namespace.clone()), ..Filter::default() };
        let bindings = store.list(&ROLEBINDINGS, &filter, None, None).map(|p| p.items).unwrap_or_default();
        for binding in bindings.iter().map(|o| o.value()) {
            if !bound(&binding) {
                continue;
            }
            let role = binding.pointer("/roleRef/name").and_then(Value::as_str).unwrap_or_default();
            let rules = match binding.pointer("/roleRef/kind").and_then(Value::as_str) {
                Some("ClusterRole") => cluster_role_rules(role),
                _ => store
                    .get(&ROLES, namespace, role)
                    .map(|o| o.value().get("rules").cloned().unwrap_or(json!([])))
                    .unwrap_or(json!([])),
            };
            if allows(&rules) {
                return true;
            }
        }
        false
    }
}

impl ApiError {
    /// 401 for a request without valid credentials.
    pub fn unauthorized() -> Self {
        let mut error = ApiError::bad_request("Unauthorized");
        error.code = 401;
        error.reason = "Unauthorized";
        error
    }

    /// 403 with the RBAC authorizer's wording.
    pub fn forbidden(user: &str, attrs: &Attributes) -> Self {
        let resource = match &attrs.subresource {
            Some(sub) => format!("{}/{sub}", attrs.def.plural),
            None => attrs.def.plural.to_owned(),
        };
        let qualified = attrs.def.qualified_plural();
        let subject = match &attrs.name {
            Some(name) => format!("{qualified} \"{name}\" is forbidden"),
            None => format!("{qualified} is forbidden"),
        };
        let scope = match &attrs.namespace {
            Some(ns) => format!("in the namespace \"{ns}\""),
            None => "at the cluster scope".to_owned(),
        };
        let mut error = ApiError::bad_request(format!(
            "{subject}: User \"{user}\" cannot {} resource \"{resource}\" in API group \"{}\" {scope}",
            attrs.verb, attrs.def.group
        ));
        error.code = 403;
        error.reason = "Forbidden";
        error.details = Some(attrs.def.error_details(attrs.name.as_deref().unwrap_or_default()));
        error
    }
}
