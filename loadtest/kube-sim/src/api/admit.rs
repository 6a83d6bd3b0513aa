//! Dynamic admission in the write paths: the configured webhooks (see [`crate::webhooks`]) called for a
//! write, mutating ones first (their JSONPatches applied in turn), validating ones on the result.
//! A cluster without webhook configurations pays one count per write.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::{
    actor::Actor,
    api_error::ApiError,
    resources::{MUTATINGWEBHOOKCONFIGURATIONS, NAMESPACES, ResourceDef, VALIDATINGWEBHOOKCONFIGURATIONS},
    state::SimState,
    webhooks::{self, Answer, Attributes, Operation, Webhook},
};

/// One write as admission sees it, before the namespace's labels are looked up.
pub(crate) struct Write<'a> {
    pub def: &'a ResourceDef,
    pub subresource: Option<&'a str>,
    pub operation: Operation,
    pub namespace: &'a str,
    pub name: &'a str,
    pub actor: &'a Actor,
    pub dry_run: bool,
}

impl<'a> Write<'a> {
    /// An update (not a dry run) of `def` `namespace/name` or its `subresource` by `actor`.
    pub(super) fn update(
        def: &'a ResourceDef,
        namespace: &'a str,
        name: &'a str,
        subresource: Option<&'a str>,
        actor: &'a Actor,
    ) -> Self {
        Self { def, subresource, operation: Operation::Update, namespace, name, actor, dry_run: false }
    }
}

impl SimState {
    /// Whether any webhook is configured at all (the write paths skip admission's extra work otherwise).
    pub(crate) fn has_webhooks(&self) -> bool {
        self.store.count(&MUTATINGWEBHOOKCONFIGURATIONS) > 0
            || self.store.count(&VALIDATINGWEBHOOKCONFIGURATIONS) > 0
    }

    fn attributes<'a>(
        &self,
        write: &Write<'a>,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Attributes<'a> {
        let labels_of = |o: &Value| -> BTreeMap<String, String> {
            o.pointer("/metadata/labels")
                .and_then(|l| serde_json::from_value(l.clone()).ok())
                .unwrap_or_default()
        };
        let namespace_labels = if write.def == &NAMESPACES {
            object.or(old).map(labels_of).unwrap_or_default()
        } else if write.def.namespaced {
            self.store
                .get(&NAMESPACES, "", write.namespace)
                .map(|n| labels_of(&n.value()))
                .unwrap_or_default()
        } else {
            BTreeMap::new()
        };
        Attributes {
            def: write.def,
            subresource: write.subresource,
            operation: write.operation,
            namespace: write.namespace,
            name: write.name,
            namespace_labels,
            user: &write.actor.user,
            field_manager: &write.actor.manager,
            dry_run: write.dry_run,
        }
    }

    /// The webhooks of the configurations in the store, mutating or validating.
    fn configured_webhooks(&self, mutating: bool) -> Vec<Webhook> {
        let def = if mutating { &MUTATINGWEBHOOKCONFIGURATIONS } else { &VALIDATINGWEBHOOKCONFIGURATIONS };
        if self.store.count(def) == 0 {
            return Vec::new();
        }
        let objects = self.store.all(def);
        if mutating {
            webhooks::mutating_webhooks(objects.iter().filter_map(|o| o.typed().ok()).collect())
        } else {
            webhooks::validating_webhooks(objects.iter().filter_map(|o| o.typed().ok()).collect())
        }
    }

    /// Calls `hook`; `None` when it could not be used and its failure policy says to go on.
    fn consult(
        &self,
        hook: &Webhook,
        attrs: &Attributes<'_>,
        uid: &str,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<Option<Answer>, ApiError> {
        if attrs.dry_run && !hook.dry_run_safe {
            return Err(ApiError::bad_request(format!(
                "admission webhook {:?} does not support dry run",
                hook.name
            )));
        }
        let review = webhooks::review(uid, attrs, object, old);
        match webhooks::call(hook, &review).and_then(|answer| webhooks::read_answer(hook, uid, &answer)) {
            Ok(answer) => Ok(Some(answer)),
            Err(error) if hook.fail_closed => Err(webhooks::call_failed(&hook.name, &error)),
            Err(error) => {
                tracing::warn!(webhook = %hook.name, error = %error.0, "webhook failed, ignored by its failure policy");
                Ok(None)
            }
        }
    }

    /// The mutating webhooks that match the write, called in turn: the object as they patched it (a
    /// refusal or, under `failurePolicy: Fail`, an unusable webhook is the write's error).
    pub(crate) fn mutate_by_webhooks(
        &self,
        write: &Write<'_>,
        mut object: Value,
        old: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let hooks = self.configured_webhooks(true);
        if hooks.is_empty() {
            return Ok(object);
        }
        let uid = uuid::Uuid::new_v4().to_string();
        for hook in &hooks {
            let attrs = self.attributes(write, Some(&object), old);
            if !webhooks::matches(hook, &attrs, Some(&object), old) {
                continue;
            }
            match self.consult(hook, &attrs, &uid, Some(&object), old)? {
                Some(Answer::Denied(error)) => return Err(error),
                Some(Answer::Allowed { patch: Some(patch), .. }) => {
                    object = super::patch::json_patch(&object, &patch).map_err(|e| {
                        ApiError::internal(format!(
                            "applying the patch of webhook {:?}: {}",
                            hook.name, e.message
                        ))
                    })?;
                }
                Some(Answer::Allowed { patch: None, .. }) | None => {}
            }
        }
        Ok(object)
    }

    /// The validating webhooks that match the write (for a deletion also the mutating ones, whose
    /// patches mean nothing there): the first refusal is the write's error.
    pub(crate) fn validate_by_webhooks(
        &self,
        write: &Write<'_>,
        object: Option<&Value>,
        old: Option<&Value>,
    ) -> Result<(), ApiError> {
        let mut hooks = self.configured_webhooks(false);
        if write.operation == Operation::Delete {
            hooks.extend(self.configured_webhooks(true));
        }
        if hooks.is_empty() {
            return Ok(());
        }
        let attrs = self.attributes(write, object, old);
        let uid = uuid::Uuid::new_v4().to_string();
        for hook in hooks.iter().filter(|h| webhooks::matches(h, &attrs, object, old)) {
            if let Some(Answer::Denied(error)) = self.consult(hook, &attrs, &uid, object, old)? {
                return Err(error);
            }
        }
        Ok(())
    }
}
