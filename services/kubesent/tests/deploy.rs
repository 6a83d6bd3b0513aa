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
    rendered_from("deploy/base")
}

/// The objects `kubectl kustomize <dir>` renders.
fn rendered_from(dir: &str) -> Vec<Value> {
    let output = Command::new("kubectl")
        .arg("kustomize")
        .arg(repository().join(dir))
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
    for dir in RENDERED {
        pods_meet_the_restricted_standard(&rendered_from(dir));
    }
}

/// The base, and the overlays that add workloads.
const RENDERED: [&str; 3] = ["deploy/base", "deploy/overlays/notifications", "deploy/overlays/agents"];

fn pods_meet_the_restricted_standard(objects: &[Value]) {
    let objects = objects.to_vec();
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
    for dir in RENDERED {
        settings_are_read(&rendered_from(dir));
    }
}

fn settings_are_read(objects: &[Value]) {
    let objects = objects.to_vec();
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
        // OTEL_* variables are read by the OpenTelemetry SDK, not by a flag.
        for (variable, value) in
            environment(container, &maps).into_iter().filter(|(v, _)| !v.starts_with("OTEL_"))
        {
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
    // Every server by its stable name: <statefulset>-<ordinal>.<headless service>:<client port>.
    let set_name = nats.metadata.name.clone().expect("name");
    let headless = nats.spec.as_ref().and_then(|s| s.service_name.clone()).expect("serviceName");
    let urls: Vec<&str> = config["KUBESENT_NATS_URL"].split(',').collect();
    let expected: Vec<String> =
        (0..replicas).map(|i| format!("nats://{set_name}-{i}.{headless}:4222")).collect();
    assert_eq!(urls, expected, "the services know every server");
    let service = of_kind::<Service>(&objects, "Service")
        .into_iter()
        .find(|s| s.metadata.name.as_deref() == Some(headless.as_str()))
        .unwrap_or_else(|| panic!("the headless Service {headless:?}"));
    let service_spec = service.spec.expect("spec");
    assert_eq!(service_spec.cluster_ip.as_deref(), Some("None"));
    assert_eq!(service_spec.publish_not_ready_addresses, Some(true), "names resolve before readiness");
    assert!(service_spec.ports.iter().flatten().any(|p| p.port == 4222));
    let nats_labels =
        nats.spec.as_ref().and_then(|s| s.template.metadata.as_ref()).and_then(|m| m.labels.clone());
    let selector = service_spec.selector.expect("selector");
    assert!(
        selector.iter().all(|(k, v)| nats_labels.as_ref().and_then(|l| l.get(k)) == Some(v)),
        "the Service selects NATS"
    );

    let with_notifier = rendered_from("deploy/overlays/notifications");
    let budgets = of_kind::<PodDisruptionBudget>(&with_notifier, "PodDisruptionBudget");
    for (name, _) in pod_specs(&with_notifier) {
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
        // A row only groups the panels below it.
        let Some(targets) = panel["targets"].as_array() else {
            assert_eq!(panel["type"], "row", "a panel without queries: {panel}");
            continue;
        };
        for target in targets {
            let expr = target["expr"].as_str().expect("expr");
            // A legend names labels the query keeps (`{{kind}}` with `sum by (le, kind)`), in Grafana's
            // own braces.
            let legend = target["legendFormat"].as_str().unwrap_or_default();
            assert!(!legend.contains("{{{"), "{legend}: doubled braces, which Grafana prints as they are");
            for label in
                legend.split("{{").skip(1).filter_map(|rest| rest.split_once("}}")).map(|(l, _)| l.trim())
            {
                let kept = expr
                    .split("by (")
                    .skip(1)
                    .filter_map(|rest| rest.split_once(')'))
                    .any(|(labels, _)| labels.split(',').any(|l| l.trim() == label));
                assert!(kept, "{legend}: {label} is not a label {expr} keeps");
            }
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

/// A CA and a certificate for `names` (and 127.0.0.1), in `dir` as cert-manager lays them out.
fn tls_secret(dir: &std::path::Path, names: &[String]) {
    use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).expect("CA");
    let key = KeyPair::generate().expect("key");
    let mut sans = names.to_vec();
    sans.push("127.0.0.1".into());
    let cert = CertificateParams::new(sans).expect("params").signed_by(&key, &ca).expect("certificate");
    std::fs::create_dir_all(dir).expect("dir");
    std::fs::write(dir.join("ca.crt"), ca.pem()).expect("ca.crt");
    std::fs::write(dir.join("tls.crt"), cert.pem()).expect("tls.crt");
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).expect("tls.key");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_nats_configuration_runs_as_three_tls_servers_and_each_service_connects_with_what_it_is_given() {
    use kubesent_common::nats::{self, NatsArgs, Role, Topology};
    kubesent_common::install_crypto_provider();
    let objects = rendered();
    let maps = config_maps(&objects);
    let (_, nats_files) =
        maps.iter().find(|(name, _)| name.starts_with("kubesent-nats")).expect("the NATS ConfigMap");
    let nats_conf = &nats_files["nats.conf"];
    let auth_conf = &nats_files["auth.conf"];
    assert_eq!(auth_conf, kubesent_testkit::nats_server::DEPLOY_AUTH_FILE, "the layout the tests load");
    assert_ne!(
        auth_conf.as_str(),
        kubesent_testkit::nats_server::DEPLOY_AUTH_CONFIG.as_str(),
        "the tests' servers read the same passwords from the environment instead"
    );

    // One password per key of the Secret kubesent-nats-users, as an installer creates it; the servers'
    // init container renders them, from the mounted Secret, into the file nats.conf includes.
    let set = of_kind::<StatefulSet>(&objects, "StatefulSet").remove(0);
    let server_pod = set.spec.and_then(|s| s.template.spec).expect("pod");
    let server_env = server_pod.containers[0].env.clone().unwrap_or_default();
    assert!(
        server_env.iter().all(|v| v.value_from.as_ref().and_then(|f| f.secret_key_ref.as_ref()).is_none()),
        "no password in the servers' environment"
    );
    let render =
        server_pod.init_containers.clone().unwrap_or_default().into_iter().find(|c| c.name == "passwords");
    let render = render.expect("an init container renders the passwords");
    let script = render.command.clone().unwrap_or_default().last().cloned().expect("a script");
    let roles = ["detector", "diagnoser", "remediator", "operator", "reader", "notifier"];
    let passwords: BTreeMap<String, String> =
        roles.iter().map(|role| ((*role).to_owned(), format!("{role}-{}", free_port()))).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let users = dir.path().join("users");
    let rendered_dir = dir.path().join("nats-passwords");
    std::fs::create_dir_all(&users).expect("users dir");
    std::fs::create_dir_all(&rendered_dir).expect("rendered dir");
    for (role, password) in &passwords {
        std::fs::write(users.join(role), password).expect("a Secret key");
    }
    let local_script = script
        .replace("/etc/kubesent/nats-users", &users.display().to_string())
        .replace("/etc/nats-passwords", &rendered_dir.display().to_string());
    let status = std::process::Command::new("sh").args(["-c", &local_script]).status().expect("sh runs");
    assert!(status.success(), "the init container's script renders the passwords");
    let rendered_passwords = std::fs::read_to_string(rendered_dir.join("passwords.conf")).expect("rendered");
    let referenced = regex::Regex::new(r"\$(KUBESENT_[A-Z]+_PASSWORD)").expect("regex");
    for variable in referenced.captures_iter(auth_conf).map(|c| c[1].to_owned()) {
        assert!(
            rendered_passwords.contains(&format!("{variable}: ")),
            "the servers get {variable} from the Secret"
        );
    }
    assert!(auth_conf.contains("include ../nats-passwords/passwords.conf"), "auth.conf includes them");

    // The three servers from the rendered nats.conf, with only addresses and paths made local (each
    // node's directory beside the rendered passwords, as /etc/nats is beside /etc/nats-passwords).
    let config = &maps["kubesent-config"];
    let hosts: Vec<String> = config["KUBESENT_NATS_URL"]
        .split(',')
        .filter_map(|u| u.strip_prefix("nats://")?.split(':').next().map(str::to_owned))
        .collect();
    tls_secret(&dir.path().join("tls"), &hosts);
    let (clients, routes): (Vec<u16>, Vec<u16>) = (0..3).map(|_| (free_port(), free_port())).unzip();
    let mut servers = Vec::new();
    let route_pattern =
        regex::Regex::new(r"nats://kubesent-nats-\d\.kubesent-nats-headless:6222").expect("regex");
    for index in 0..3 {
        let node = dir.path().join(format!("node-{index}"));
        std::fs::create_dir_all(&node).expect("node dir");
        std::fs::write(node.join("auth.conf"), auth_conf).expect("auth.conf");
        let route_list: Vec<String> = routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let local = nats_conf
            .replace("port: 4222", &format!("listen: \"127.0.0.1:{}\"", clients[index]))
            .replace("http_port: 8222", "")
            .replace("port: 6222", &format!("listen: \"127.0.0.1:{}\"", routes[index]))
            .replace("/etc/nats/tls/", &format!("{}/", dir.path().join("tls").display()))
            .replace("store_dir: /data", &format!("store_dir: {:?}", node.join("data").display().to_string()))
            .replace("/tmp/nats.pid", &node.join("nats.pid").display().to_string());
        let local = route_pattern
            .replace_all(&local, "ROUTE")
            .replacen("ROUTE", &route_list[0], 1)
            .replacen("ROUTE", &route_list[1], 1)
            .replacen("ROUTE", &route_list[2], 1);
        let env = vec![("SERVER_NAME".to_owned(), format!("kubesent-nats-{index}"))];
        servers.push(async move {
            kubesent_testkit::nats_server::NatsServer::start_with_full_config(&node, &local, &env).await
        });
    }
    let _servers: Vec<_> = futures::future::join_all(servers)
        .await
        .into_iter()
        .map(|s| s.expect("a server starts from deploy/base's nats.conf"))
        .collect();

    // Each service, as its Deployment configures it (user, password from the Secret, the CA file, the
    // replicas), sets up what it owns on the three servers.
    let url: Vec<String> = clients.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
    let replicas: usize = config["KUBESENT_STREAM_REPLICAS"].parse().expect("replicas");
    let topology = Topology { replicas, ..Topology::default() };
    let never = tokio_util::sync::CancellationToken::new();
    for role in [Role::Detector, Role::Diagnoser, Role::Remediator] {
        let deployment = of_kind::<Deployment>(&objects, "Deployment")
            .into_iter()
            .find(|d| d.metadata.name.as_deref() == Some(role.service_name()))
            .expect("deployment");
        let container = deployment.spec.and_then(|s| s.template.spec).expect("pod").containers[0].clone();
        let env = environment(&container, &maps);
        // The password is a file: the mounted volume of the Secret's key for this role.
        let file = env["KUBESENT_NATS_PASSWORD_FILE"].clone().expect("a password file");
        let pod = deployment_pod(&objects, role.service_name());
        let secret = mounted_secret(&pod, &container, |path| file.starts_with(&format!("{path}/")));
        assert_eq!(secret.secret_name.as_deref(), Some("kubesent-nats-users"));
        let item = secret
            .items
            .iter()
            .flatten()
            .find(|i| file.ends_with(&format!("/{}", i.path)))
            .expect("its item");
        let password_key = item.key.clone();
        assert_eq!(password_key, role.as_str(), "each role reads its own password only");
        let mut args = NatsArgs::url(url.join(","));
        args.user = env["KUBESENT_NATS_USER"].clone();
        args.password = Some(passwords[&password_key].clone().into());
        assert_eq!(env["KUBESENT_NATS_TLS_CA"].as_deref(), Some("/etc/kubesent/nats-tls/ca.crt"));
        args.tls_ca = Some(dir.path().join("tls/ca.crt"));
        let client = nats::connect_as(&args, role, "deploy-test").await.expect("connects");
        let js = async_nats::jetstream::new(client);
        let setup = nats::prepare(&js, &topology, role, &never);
        tokio::time::timeout(Duration::from_secs(90), setup)
            .await
            .expect("set up in time")
            .unwrap_or_else(|e| panic!("{role:?} sets up what it owns: {e}"));
    }
}

/// The Secret volume `container` mounts at the path `at` accepts.
fn mounted_secret(
    pod: &PodSpec,
    container: &Container,
    at: impl Fn(&str) -> bool,
) -> k8s_openapi::api::core::v1::SecretVolumeSource {
    let mount =
        container.volume_mounts.iter().flatten().find(|m| at(&m.mount_path)).expect("a mounted volume");
    pod.volumes
        .iter()
        .flatten()
        .find(|v| v.name == mount.name)
        .and_then(|v| v.secret.clone())
        .expect("a Secret volume")
}

/// The pod spec of Deployment `name`.
fn deployment_pod(objects: &[Value], name: &str) -> PodSpec {
    of_kind::<Deployment>(objects, "Deployment")
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some(name))
        .and_then(|d| d.spec?.template.spec)
        .expect("a Deployment with a pod")
}

#[test]
fn cert_manager_issues_a_certificate_for_every_name_clients_and_routes_use() {
    let objects = rendered_from("deploy/overlays/cert-manager");
    let config = &config_maps(&objects)["kubesent-config"];
    let certificate = objects
        .iter()
        .find(|o| o["kind"] == "Certificate" && o["spec"]["secretName"] == "kubesent-nats-tls")
        .expect("a Certificate for the Secret kubesent-nats-tls");
    assert_eq!(certificate["metadata"]["namespace"], "kubesent");
    let names: Vec<&str> = certificate["spec"]["dnsNames"]
        .as_array()
        .expect("dnsNames")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let covered = |host: &str| {
        names.iter().any(|name| match name.strip_prefix("*.") {
            Some(domain) => host.split_once('.').is_some_and(|(_, rest)| rest == domain),
            None => *name == host,
        })
    };
    let maps = config_maps(&objects);
    let nats_conf =
        maps.iter().find(|(n, _)| n.starts_with("kubesent-nats")).expect("NATS config").1["nats.conf"]
            .clone();
    let routes = regex::Regex::new(r"nats://([a-z0-9.-]+):6222").expect("regex");
    let hosts: Vec<String> = config["KUBESENT_NATS_URL"]
        .split(',')
        .filter_map(|u| u.strip_prefix("nats://")?.split(':').next().map(str::to_owned))
        .chain(routes.captures_iter(&nats_conf).map(|c| c[1].to_owned()))
        .chain(["localhost".to_owned()])
        .collect();
    assert!(hosts.len() >= 7, "{hosts:?}");
    for host in hosts {
        assert!(covered(&host), "{host} is named by the certificate {names:?}");
    }
    let issuer = certificate["spec"]["issuerRef"]["name"].as_str().expect("issuer");
    assert!(objects.iter().any(|o| o["kind"] == "Issuer" && name_of(o) == issuer), "its issuer is deployed");
}

#[test]
fn the_notifications_overlay_adds_a_notifier_without_kubernetes_access_reading_its_urls_from_a_secret() {
    let objects = rendered_from("deploy/overlays/notifications");
    let notifier = of_kind::<Deployment>(&objects, "Deployment")
        .into_iter()
        .find(|d| d.metadata.name.as_deref() == Some("kubesent-notifier"))
        .expect("the notifier");
    let pod = notifier.spec.and_then(|s| s.template.spec).expect("pod spec");
    assert_eq!(pod.containers[0].args.as_deref(), Some(&["notifier".to_owned()][..]));
    assert_eq!(pod.automount_service_account_token, Some(false), "no Kubernetes credential");
    // The URLs and the signing key: the Secret mounted as files where KUBESENT_NOTIFICATIONS_DIR points,
    // never environment variables.
    let container = &pod.containers[0];
    let dir = container
        .env
        .iter()
        .flatten()
        .find(|v| v.name == "KUBESENT_NOTIFICATIONS_DIR")
        .and_then(|v| v.value.clone())
        .expect("the Secret's directory");
    let secret = mounted_secret(&pod, container, |path| path == dir);
    assert_eq!(secret.secret_name.as_deref(), Some("kubesent-notifications"));
    assert!(secret.items.is_none(), "every key: either sink may be left out");
    for variable in ["KUBESENT_SLACK_WEBHOOK_URL", "KUBESENT_WEBHOOK_URL", "KUBESENT_WEBHOOK_SECRET"] {
        assert!(
            container.env.iter().flatten().all(|v| v.name != variable),
            "{variable} is a file, not a variable"
        );
    }
    let bindings = objects.iter().filter(|o| o["kind"] == "ClusterRoleBinding" || o["kind"] == "RoleBinding");
    assert!(
        bindings.into_iter().all(|b| !b.to_string().contains("kubesent-notifier")),
        "no Kubernetes role for the notifier"
    );
    let base = rendered();
    assert!(
        !base.iter().any(|o| name_of(o) == "kubesent-notifier"),
        "the base installs no notifier: it needs a Secret with the URLs"
    );
}

#[test]
fn the_permission_table_in_deploy_readme_names_every_resource_and_verb_each_service_is_granted() {
    let objects = rendered();
    let readme = std::fs::read_to_string(repository().join("deploy/README.md")).expect("deploy/README.md");
    for service in ["detector", "diagnoser", "remediator"] {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| {service} |")))
            .unwrap_or_else(|| panic!("a row for the {service}"));
        let granted = objects.iter().filter(|o| {
            (o["kind"] == "ClusterRole" && o["metadata"]["name"] == format!("kubesent-{service}"))
                || (o["kind"] == "Role"
                    && o["metadata"]["name"] == "kubesent-leader-election"
                    && service != "diagnoser")
        });
        for role in granted {
            for rule in role["rules"].as_array().expect("rules") {
                for resource in rule["resources"].as_array().expect("resources") {
                    let resource = resource.as_str().expect("a resource");
                    assert!(row.contains(resource), "the {service} row names {resource}:\n{row}");
                    for verb in rule["verbs"].as_array().expect("verbs") {
                        let verb = format!("`{}`", verb.as_str().expect("a verb"));
                        assert!(row.contains(&verb), "the {service} row names {verb} ({resource}):\n{row}");
                    }
                }
            }
        }
    }
}
