//! Who makes a write: the user admission webhooks are told of, and the field manager `managedFields`
//! records the write under.

use crate::rbac::UserInfo;

/// The writer of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    /// The authenticated user.
    pub user: UserInfo,
    /// The field manager (`kubectl-client-side-apply`, `kube-controller-manager`, `kubelet`, …).
    pub manager: String,
}

impl Actor {
    /// A controller of kube-controller-manager, with its own ServiceAccount credentials (as with
    /// `--use-service-account-credentials`) and the manager name the real controllers write under.
    pub fn controller(name: &str) -> Self {
        Self {
            user: UserInfo::service_account("kube-system", name),
            manager: "kube-controller-manager".into(),
        }
    }

    /// The kubelet of a node.
    pub fn kubelet(node: &str) -> Self {
        Self {
            user: UserInfo {
                name: format!("system:node:{node}"),
                groups: vec!["system:nodes".into(), "system:authenticated".into()],
            },
            manager: "kubelet".into(),
        }
    }

    /// The cluster administrator writing with `manager` (kube-sim's own seeding and admin endpoints).
    pub fn admin(manager: &str) -> Self {
        Self { user: UserInfo::admin(), manager: manager.into() }
    }

    /// The writer of an HTTP request: its authenticated user (the administrator when authentication is
    /// off), and the `fieldManager` it names or, as the apiserver falls back to, the part of its
    /// `User-Agent` before the first `/` (`kubectl`, `kube-rs`).
    pub fn of_request(user: Option<&UserInfo>, field_manager: Option<&str>, user_agent: &str) -> Self {
        let manager = match field_manager.filter(|m| !m.is_empty()) {
            Some(manager) => manager.to_owned(),
            None => user_agent.split('/').next().unwrap_or_default().trim().to_owned(),
        };
        Self { user: user.cloned().unwrap_or_else(UserInfo::admin), manager }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_without_a_field_manager_is_named_by_its_user_agent() {
        let named = Actor::of_request(None, Some("kubesent-remediator"), "kube-rs/3.0");
        assert_eq!(named.manager, "kubesent-remediator");
        assert_eq!(named.user.name, "kubernetes-admin");
        let unnamed = Actor::of_request(None, None, "kubectl/v1.34.1 (linux/amd64) kubernetes/abc");
        assert_eq!(unnamed.manager, "kubectl");
        let bare = Actor::of_request(None, Some(""), "");
        assert_eq!(bare.manager, "");
    }
}
