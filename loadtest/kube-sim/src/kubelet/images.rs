//! Starting a container needs its image (pulled from the simulated registry, with pull secrets) and its ConfigMap and Secret references.

use super::*;

impl Kubelet {
    pub(super) fn pull(&self, pod: &Pod, container: &Container) -> Result<(), PullError> {
        let image = container.image.clone().unwrap_or_default();
        let policy = container.image_pull_policy.as_deref().unwrap_or("IfNotPresent");
        let cached = lock(&self.pulled).contains(&image);
        if cached && policy != "Always" {
            self.event(
                pod,
                &container.name,
                "Normal",
                "Pulled",
                format!("Container image {image:?} already present on machine"),
            );
            return Ok(());
        }
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let authorized = pod
            .spec
            .iter()
            .flat_map(|s| s.image_pull_secrets.iter().flatten())
            .any(|secret| self.store.get(&SECRETS, &namespace, &secret.name).is_ok());
        self.event(pod, &container.name, "Normal", "Pulling", format!("Pulling image {image:?}"));
        self.registry.pull(&image, authorized)?;
        lock(&self.pulled).insert(image.clone());
        let took = self.clock.scaled(timing::IMAGE_PULL).max(Duration::from_millis(1));
        self.event(
            pod,
            &container.name,
            "Normal",
            "Pulled",
            format!("Successfully pulled image {image:?} in {:.3}s", took.as_secs_f64()),
        );
        Ok(())
    }

    /// The kubelet's error for a missing ConfigMap/Secret or key the container needs, if any.
    pub(super) fn config_error(&self, pod: &Pod, container: &Container) -> Option<String> {
        let namespace = pod.metadata.namespace.clone().unwrap_or_default();
        let data = |def, name: &str| -> Option<Value> {
            self.store.get(def, &namespace, name).ok().map(|o| o.value())
        };
        let has_key = |object: &Value, key: &str| {
            ["data", "binaryData", "stringData"]
                .iter()
                .any(|field| object.get(*field).and_then(|d| d.get(key)).is_some())
        };
        for env in container.env.iter().flatten() {
            let Some(source) = &env.value_from else { continue };
            if let Some(r) = &source.config_map_key_ref
                && !r.optional.unwrap_or(false)
            {
                match data(&CONFIGMAPS, &r.name) {
                    None => return Some(format!("configmap {:?} not found", r.name)),
                    Some(cm) if !has_key(&cm, &r.key) => {
                        return Some(format!(
                            "couldn't find key {} in ConfigMap {namespace}/{}",
                            r.key, r.name
                        ));
                    }
                    Some(_) => {}
                }
            }
            if let Some(r) = &source.secret_key_ref
                && !r.optional.unwrap_or(false)
            {
                match data(&SECRETS, &r.name) {
                    None => return Some(format!("secret {:?} not found", r.name)),
                    Some(secret) if !has_key(&secret, &r.key) => {
                        return Some(format!("couldn't find key {} in Secret {namespace}/{}", r.key, r.name));
                    }
                    Some(_) => {}
                }
            }
        }
        for source in container.env_from.iter().flatten() {
            if let Some(r) = &source.config_map_ref
                && !r.optional.unwrap_or(false)
                && data(&CONFIGMAPS, &r.name).is_none()
            {
                return Some(format!("configmap {:?} not found", r.name));
            }
            if let Some(r) = &source.secret_ref
                && !r.optional.unwrap_or(false)
                && data(&SECRETS, &r.name).is_none()
            {
                return Some(format!("secret {:?} not found", r.name));
            }
        }
        None
    }
}
