//! The kustomize base in `deploy/base`, built with `kubectl kustomize` as a user installs it: every object is
//! valid for its kind, the services run as their own ServiceAccounts under the restricted Pod Security
//! Standard, every setting they are given is one the binary reads, the pieces point at each other, and the
//! dashboard charts metrics the services export.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    time::Duration,
};

use k8s_openapi::api::{
    apps::v1::{Deployment, StatefulSet},
    autoscaling::v2::HorizontalPodAutoscaler,
    core::v1::{ConfigMap, Container, PodSpec, Service},
    policy::v1::PodDisruptionBudget,
};
use kubesent_diagnoser::{
    llm::{
        chain::{Backend, Model, ModelChain},
        gemini::{GeminiClient, Thinking},
    },
    ratelimit::{Limits, SharedLimiter},
};
use serde_json::Value;

fn repository() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The objects `kubectl kustomize deploy/base` renders.
fn rendered() -> Vec<Value> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(repository().join("deploy/base"))
        .output()
        .expect("kubectl runs (it is part of the development machine)");
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let yaml = String::from_utf8(output.stdout).expect("utf-8");
    serde_saphyr::from_multiple::<Value>(&yaml)
        .expect("valid YAML")
        .into_iter()
        .filter(Value::is_object)
        .collect()
}

fn of_kind<T: serde::de::DeserializeOwned>(objects: &[Value], kind: &str) -> Vec<T> {
    objects
        .iter()
        .filter(|o| o["kind"] == kind)
        .map(|o| {
            serde_json::from_value(o.clone())
                .unwrap_or_else(|e| panic!("{kind} {}: {e}", o["metadata"]["name"]))
        })
        .collect()
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

fn pod_specs(objects: &[Value]) -> Vec<(String, PodSpec)> {
    let mut specs = Vec::new();
    for deployment in of_kind::<Deployment>(objects, "Deployment") {
        let spec = deployment.spec.and_then(|s| s.template.spec).expect("pod spec");
        specs.push((deployment.metadata.name.unwrap_or_default(), spec));
    }
    for set in of_kind::<StatefulSet>(objects, "StatefulSet") {
        let spec = set.spec.and_then(|s| s.template.spec).expect("pod spec");
        specs.push((set.metadata.name.unwrap_or_default(), spec));
    }
    specs
}

fn config_maps(objects: &[Value]) -> BTreeMap<String, BTreeMap<String, String>> {
    of_kind::<ConfigMap>(objects, "ConfigMap")
        .into_iter()
        .map(|c| (c.metadata.name.unwrap_or_default(), c.data.unwrap_or_default()))
        .collect()
}

/// Every variable a container is given, with its value where it is literal or from a ConfigMap.
fn environment(
    container: &Container,
    maps: &BTreeMap<String, BTreeMap<String, String>>,
) -> BTreeMap<String, Option<String>> {
    let mut env = BTreeMap::new();
    for source in container.env_from.iter().flatten() {
        let name = source.config_map_ref.as_ref().map(|r| r.name.clone()).expect("envFrom a ConfigMap");
        let data = maps.get(&name).unwrap_or_else(|| panic!("ConfigMap {name} exists"));
        env.extend(data.iter().map(|(k, v)| (k.clone(), Some(v.clone()))));
    }
    for var in container.env.iter().flatten() {
        env.insert(var.name.clone(), var.value.clone());
    }
    env
}

#[test]
fn every_object_is_valid_for_its_kind_and_lives_in_the_kubesent_namespace() {
    let objects = rendered();
    let kinds: BTreeSet<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    for kind in [
        "Namespace",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ConfigMap",
        "Service",
        "StatefulSet",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    ] {
        assert!(kinds.contains(kind), "a {kind} is deployed: {kinds:?}");
    }
    for object in &objects {
        let kind = object["kind"].as_str().unwrap_or_default();
        let valid = match kind {
            "Deployment" => serde_json::from_value::<Deployment>(object.clone()).is_ok(),
            "StatefulSet" => serde_json::from_value::<StatefulSet>(object.clone()).is_ok(),
            "Service" => serde_json::from_value::<Service>(object.clone()).is_ok(),
            "ConfigMap" => serde_json::from_value::<ConfigMap>(object.clone()).is_ok(),
            "HorizontalPodAutoscaler" => {
                serde_json::from_value::<HorizontalPodAutoscaler>(object.clone()).is_ok()
            }
            "PodDisruptionBudget" => serde_json::from_value::<PodDisruptionBudget>(object.clone()).is_ok(),
            "NetworkPolicy" => {
                serde_json::from_value::<k8s_openapi::api::networking::v1::NetworkPolicy>(object.clone())
                    .is_ok()
            }
            _ => object["apiVersion"].is_string() && !name_of(object).is_empty(),
        };
        assert!(valid, "{kind} {} is valid", name_of(object));
        let cluster_scoped = matches!(kind, "Namespace" | "ClusterRole" | "ClusterRoleBinding");
        if !cluster_scoped {
            assert_eq!(object["metadata"]["namespace"], "kubesent", "{kind} {}", name_of(object));
        }
        assert_eq!(
            object["metadata"]["labels"]["app.kubernetes.io/part-of"],
            "kubesent",
            "{kind} {}",
            name_of(object)
        );
    }
}

#[test]
fn each_service_runs_its_role_as_its_own_service_account_with_probes_on_the_admin_port() {
    let objects = rendered();
    let accounts: BTreeSet<&str> =
        objects.iter().filter(|o| o["kind"] == "ServiceAccount").map(name_of).collect();
    let maps = config_maps(&objects);
    let admin_port =
        maps["kubesent-config"]["KUBESENT_ADMIN_LISTEN"].rsplit(':').next().expect("port").to_owned();
    let deployments = of_kind::<Deployment>(&objects, "Deployment");
    assert_eq!(deployments.len(), 3);
    for deployment in deployments {
        let name = deployment.metadata.name.clone().unwrap_or_default();
        let role = name.strip_prefix("kubesent-").expect("named kubesent-<role>");
        let spec = deployment.spec.clone().expect("spec");
        let pod = spec.template.spec.clone().expect("pod spec");
        assert_eq!(pod.service_account_name.as_deref(), Some(name.as_str()));
        assert!(accounts.contains(name.as_str()), "ServiceAccount {name} exists");
        assert_eq!(spec.replicas, Some(2), "{name}: a standby (or a second worker) is always there");
        let container = &pod.containers[0];
        assert_eq!(container.args.as_deref(), Some(&[role.to_owned()][..]), "{name} runs `kubesent {role}`");
        let port = container
            .ports
            .iter()
            .flatten()
            .find(|p| p.name.as_deref() == Some("admin"))
            .expect("admin port");
        assert_eq!(port.container_port.to_string(), admin_port);
        let probe_path = |probe: &Option<k8s_openapi::api::core::v1::Probe>| {
            probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|h| h.path.clone())
        };
        assert_eq!(probe_path(&container.liveness_probe).as_deref(), Some("/healthz"), "{name}");
        assert_eq!(probe_path(&container.readiness_probe).as_deref(), Some("/readyz"), "{name}");
        let env = environment(container, &maps);
        assert!(env.contains_key("POD_NAME"), "{name} knows its identity for leases and audit records");
    }
}

#[test]
fn every_pod_meets_the_restricted_pod_security_standard() {
    let objects = rendered();
    let namespace = objects.iter().find(|o| o["kind"] == "Namespace").expect("namespace");
    assert_eq!(namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"], "restricted");
    for (name, pod) in pod_specs(&objects) {
        let security = pod.security_context.clone().unwrap_or_default();
        assert_eq!(security.run_as_non_root, Some(true), "{name}");
        assert_eq!(security.seccomp_profile.map(|s| s.type_).as_deref(), Some("RuntimeDefault"), "{name}");
        for container in &pod.containers {
            let context = container.security_context.clone().unwrap_or_default();
            assert_eq!(context.allow_privilege_escalation, Some(false), "{name}/{}", container.name);
            assert_eq!(context.read_only_root_filesystem, Some(true), "{name}/{}", container.name);
            let dropped = context.capabilities.and_then(|c| c.drop).unwrap_or_default();
            assert_eq!(dropped, ["ALL"], "{name}/{}", container.name);
            let limits = container.resources.as_ref().and_then(|r| r.limits.clone()).unwrap_or_default();
            assert!(limits.contains_key("memory"), "{name}/{} has a memory limit", container.name);
        }
    }
}

#[test]
fn every_setting_given_to_a_service_is_one_the_binary_reads() {
    let objects = rendered();
    let maps = config_maps(&objects);
    for deployment in of_kind::<Deployment>(&objects, "Deployment") {
        let pod = deployment.spec.and_then(|s| s.template.spec).expect("pod spec");
        let container = &pod.containers[0];
        let role = container.args.clone().unwrap_or_default().remove(0);
        let help = Command::new(env!("CARGO_BIN_EXE_kubesent"))
            .args([role.as_str(), "--help"])
            .output()
            .expect("runs");
        let help = String::from_utf8_lossy(&help.stdout).into_owned();
        for (variable, value) in environment(container, &maps) {
            assert!(help.contains(&format!("[env: {variable}")), "`kubesent {role}` reads {variable}");
            // A literal value must also parse: run the flag's parser through a `--help` with the value set.
            if let Some(value) = value {
                let checked = Command::new(env!("CARGO_BIN_EXE_kubesent"))
                    .args([role.as_str(), "--help"])
                    .env(&variable, &value)
                    .output()
                    .expect("runs");
                assert!(checked.status.success(), "{variable}={value} is accepted by `kubesent {role}`");
            }
        }
    }
}

#[test]
fn the_services_point_at_the_broker_and_every_workload_has_a_disruption_budget() {
    let objects = rendered();
    let maps = config_maps(&objects);
    let config = &maps["kubesent-config"];
    let nats = of_kind::<StatefulSet>(&objects, "StatefulSet").remove(0);
    let replicas = nats.spec.as_ref().and_then(|s| s.replicas).expect("replicas");
    assert_eq!(
        config["KUBESENT_STREAM_REPLICAS"],
        replicas.to_string(),
        "streams are replicated on every server"
    );
    let url = config["KUBESENT_NATS_URL"].strip_prefix("nats://").expect("a nats:// URL");
    let (host, port) = url.split_once(':').expect("host:port");
    let service = of_kind::<Service>(&objects, "Service")
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some(host))
        .unwrap_or_else(|| panic!("a Service {host}"));
    let service_spec = service.spec.expect("spec");
    assert!(service_spec.ports.iter().flatten().any(|p| p.port.to_string() == port));
    let nats_labels =
        nats.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.clone());
    let selector = service_spec.selector.expect("selector");
    assert!(
        selector.iter().all(|(k, v)| nats_labels.as_ref().and_then(|l| l.get(k)) == Some(v)),
        "the Service selects NATS"
    );

    let budgets = of_kind::<PodDisruptionBudget>(&objects, "PodDisruptionBudget");
    for (name, _) in pod_specs(&objects) {
        let covered = budgets.iter().any(|b| {
            b.spec
                .as_ref()
                .and_then(|s| s.selector.as_ref())
                .and_then(|s| s.match_labels.as_ref())
                .and_then(|l| l.get("app.kubernetes.io/name"))
                == Some(&name)
        });
        assert!(covered, "{name} has a PodDisruptionBudget");
    }
    let hpa = of_kind::<HorizontalPodAutoscaler>(&objects, "HorizontalPodAutoscaler").remove(0);
    assert_eq!(hpa.spec.scale_target_ref.name, "kubesent-diagnoser");
}

#[test]
fn the_dashboard_charts_only_metrics_the_services_export() {
    let dashboard: Value = serde_json::from_str(
        &std::fs::read_to_string(repository().join("deploy/base/dashboards/kubesent.json"))
            .expect("dashboard"),
    )
    .expect("dashboard JSON");
    let mut registry = prometheus_client::registry::Registry::default();
    kubesent_detector::DetectorMetrics::register(&mut registry);
    kubesent_diagnoser::DiagnoserMetrics::register(&mut registry);
    kubesent_remediator::RemediatorMetrics::register(&mut registry);
    let gemini = GeminiClient::new("http://127.0.0.1:9", "unused".to_owned().into(), Duration::from_secs(1))
        .expect("client");
    let model = Model {
        name: "gemini-3.5-flash".into(),
        backend: Backend::Gemini(gemini, Thinking::for_model("gemini-3.5-flash")),
        limiter: SharedLimiter::new("gemini-3.5-flash", Limits { rpm: 60, tpm: None }, None),
    };
    ModelChain::new(vec![model], Duration::from_secs(1)).register_metrics(&mut registry);
    let mut exposition = String::new();
    prometheus_client::encoding::text::encode(&mut exposition, &registry).expect("encoded");
    let exported: BTreeSet<String> = exposition
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split_whitespace().next())
        .map(str::to_owned)
        .collect();
    let mut charted = 0;
    for panel in dashboard["panels"].as_array().expect("panels") {
        for target in panel["targets"].as_array().expect("targets") {
            let expr = target["expr"].as_str().expect("expr");
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("kubesent_") {
                    let family = ["_total", "_bucket"]
                        .iter()
                        .fold(word, |w, suffix| w.strip_suffix(suffix).unwrap_or(w));
                    assert!(exported.contains(family), "{word} is exported: {exported:?}");
                    charted += 1;
                }
            }
        }
    }
    assert!(charted >= 10, "the dashboard charts the pipeline and the models");
}
