//! The real topology as OS processes, started the way `deploy/base` runs them: the settings of its
//! ConfigMaps and Deployments as environment variables, each replica with its own identity, NATS user
//! and ServiceAccount token (a kubeconfig of its own); a 3-server JetStream cluster with the permission
//! layout of `deploy/base/nats/auth.conf`; kube-sim with the RBAC of `deploy/base/rbac.yaml`. Only
//! addresses, file paths and the scenario's own knobs are changed. Processes that exit are started
//! again, as Kubernetes would; each one's RSS and CPU time are sampled.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use async_nats::jetstream;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kubesent_common::nats::{self, Role};
use kubesent_kube_sim::{KubeSim, SimConfig};
use kubesent_testkit::nats_server::{NatsCluster, NatsUsers, auth_config_with_observer};
use serde_json::{Value, json};

use crate::processes::{ServiceProcess, ServiceSpec};

const CONFIG_YAML: &str = include_str!("../../../../deploy/base/config.yaml");
const RBAC_YAML: &str = include_str!("../../../../deploy/base/rbac.yaml");
const DETECTOR_YAML: &str = include_str!("../../../../deploy/base/detector.yaml");
const DIAGNOSER_YAML: &str = include_str!("../../../../deploy/base/diagnoser.yaml");
const REMEDIATOR_YAML: &str = include_str!("../../../../deploy/base/remediator.yaml");

/// Settings a scenario changes from deploy/base, as `TopologyOptions::overrides` takes them.
pub fn overrides<const N: usize>(settings: [(&str, String); N]) -> Vec<(String, String)> {
    settings.into_iter().map(|(key, value)| (key.to_owned(), value)).collect()
}

/// What to start.
#[derive(Debug, Clone)]
pub struct TopologyOptions {
    /// The `kubesent` executable.
    pub exe: PathBuf,
    /// Replicas per role (deploy/base: 2 detectors, 2–10 diagnosers, 2 remediators).
    pub detectors: usize,
    /// Diagnoser replicas.
    pub diagnosers: usize,
    /// Remediator replicas.
    pub remediators: usize,
    /// kube-sim's kubelet time scale.
    pub time_scale: f64,
    /// The Kubernetes minor version kube-sim serves (32: no in-place resize, so bare pods are replaced).
    pub kubernetes_minor: u32,
    /// Settings the scenario changes from deploy/base (stated in its report), for every service.
    pub overrides: Vec<(String, String)>,
    /// Where logs and kubeconfigs go (a temporary directory when `None`).
    pub dir: Option<PathBuf>,
    /// kube-sim's nodes (its default when empty).
    pub nodes: Vec<kubesent_kube_sim::nodes::NodeConfig>,
    /// Namespaces kube-sim starts with besides the system ones (its default when empty).
    pub namespaces: Vec<String>,
    /// The autonomy policy the remediators read instead of deploy/base's ConfigMap.
    pub autonomy_policy: Option<String>,
}

impl Default for TopologyOptions {
    fn default() -> Self {
        Self {
            exe: PathBuf::from("kubesent"),
            detectors: 2,
            diagnosers: 3,
            remediators: 2,
            time_scale: 0.05,
            kubernetes_minor: 36,
            overrides: Vec::new(),
            // KUBESENT_CAMPAIGN_LOGS keeps every replica's log (and kubeconfig) for a look afterwards.
            dir: std::env::var_os("KUBESENT_CAMPAIGN_LOGS").map(PathBuf::from),
            nodes: Vec::new(),
            namespaces: Vec::new(),
            autonomy_policy: None,
        }
    }
}

/// One service replica.
pub struct Replica {
    /// Its role.
    pub role: Role,
    /// Its identity (POD_NAME).
    pub identity: String,
    /// Its ServiceAccount token (the client kube-sim's request log names).
    pub token: String,
    /// The process, while it runs.
    pub process: ServiceProcess,
    /// Times it was started again after exiting.
    pub restarts: u32,
    /// Stopped with SIGSTOP (and not continued yet).
    pub stopped: bool,
    /// Not started again when it exits (its pod is gone, as on a lost node) until released.
    pub held: bool,
    /// The outcome and SLI counts of its earlier incarnations, and of the current one at its last
    /// sample (see [`Topology::sample_counts`]).
    pub counted: BTreeMap<String, f64>,
    counting: BTreeMap<String, f64>,
    /// Peak RSS in bytes, and CPU seconds used by earlier incarnations plus the current one.
    pub peak_rss: u64,
    cpu_before: f64,
    cpu_now: f64,
}

impl Replica {
    /// CPU seconds used so far, across restarts.
    pub fn cpu_seconds(&self) -> f64 {
        self.cpu_before + self.cpu_now
    }
}

/// The running topology.
pub struct Topology {
    /// The Kubernetes API simulator.
    pub sim: KubeSim,
    /// An administrator's client of it.
    pub kube: kube::Client,
    /// The administrator's token (for a kubeconfig people use to look around).
    pub admin_token: String,
    /// The NATS cluster.
    pub nats: NatsCluster,
    /// Its users.
    pub users: NatsUsers,
    /// An observer's JetStream (allowed everything; the services never use it).
    pub js: jetstream::Context,
    /// The service replicas.
    pub replicas: Vec<Replica>,
    /// The settings every service was given (deploy/base's, with the overrides), by role.
    pub settings: BTreeMap<&'static str, Vec<(String, String)>>,
    dir: PathBuf,
    _temp: Option<tempfile::TempDir>,
}

/// The environment deploy/base gives a role's container: its ConfigMaps (envFrom) and literal values.
pub fn deploy_env(role: Role) -> anyhow::Result<Vec<(String, String)>> {
    let deployment_yaml = match role {
        Role::Detector => DETECTOR_YAML,
        Role::Diagnoser => DIAGNOSER_YAML,
        Role::Remediator => REMEDIATOR_YAML,
        other => bail!("{other:?} is not deployed as a service"),
    };
    let maps: BTreeMap<String, BTreeMap<String, String>> = documents(CONFIG_YAML)?
        .into_iter()
        .filter(|d| d["kind"] == "ConfigMap")
        .map(|d| {
            let name = d["metadata"]["name"].as_str().unwrap_or_default().to_owned();
            let data = d["data"]
                .as_object()
                .map(|m| {
                    m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned())).collect()
                })
                .unwrap_or_default();
            (name, data)
        })
        .collect();
    let deployment = documents(deployment_yaml)?
        .into_iter()
        .find(|d| d["kind"] == "Deployment")
        .context("a Deployment")?;
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let mut env = Vec::new();
    for source in container["envFrom"].as_array().into_iter().flatten() {
        let name = source["configMapRef"]["name"].as_str().unwrap_or_default();
        let data = maps.get(name).with_context(|| format!("ConfigMap {name}"))?;
        env.extend(data.iter().map(|(k, v)| (k.clone(), v.clone())));
    }
    for var in container["env"].as_array().into_iter().flatten() {
        if let (Some(name), Some(value)) = (var["name"].as_str(), var["value"].as_str()) {
            env.push((name.to_owned(), value.to_owned()));
        }
    }
    Ok(env)
}

fn documents(yaml: &str) -> anyhow::Result<Vec<Value>> {
    Ok(serde_saphyr::from_multiple::<Value>(yaml)?.into_iter().filter(Value::is_object).collect())
}

fn kubeconfig(dir: &Path, name: &str, server: &str, token: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.kubeconfig"));
    let config = json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "sim",
        "clusters": [{"name": "sim", "cluster": {"server": server}}],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "sim", "context": {"cluster": "sim", "user": name}}]
    });
    std::fs::write(&path, serde_json::to_vec(&config)?)?;
    Ok(path)
}

impl Topology {
    /// Starts kube-sim, the NATS cluster and every replica, and waits until all are ready.
    pub async fn start(options: &TopologyOptions) -> anyhow::Result<Self> {
        kubesent_common::install_crypto_provider();
        let (temp, dir) = match &options.dir {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                (None, dir.clone())
            }
            None => {
                let temp = tempfile::tempdir()?;
                let dir = temp.path().to_owned();
                (Some(temp), dir)
            }
        };
        let defaults = SimConfig::default();
        let sim = KubeSim::start(SimConfig {
            time_scale: options.time_scale,
            kubernetes_minor: options.kubernetes_minor,
            nodes: if options.nodes.is_empty() { defaults.nodes.clone() } else { options.nodes.clone() },
            namespaces: if options.namespaces.is_empty() {
                defaults.namespaces.clone()
            } else {
                options.namespaces.clone()
            },
            ..defaults
        })
        .await?;
        let admin = sim.enable_rbac();
        sim.apply_yaml(RBAC_YAML)
            .map_err(|e| anyhow::anyhow!("applying deploy/base/rbac.yaml: {}", e.message))?;
        let kube = kubesent_common::kube_client_with_token(Some(&sim.url()), Some(&admin)).await?;
        let admin_token = admin;
        let users = NatsUsers::generate();
        let nats = NatsCluster::start_with(3, &auth_config_with_observer(), &users.server_env()).await?;
        let observer =
            nats::connect_as(&users.args(&nats.urls(), Role::Admin), Role::Admin, "observer").await?;
        let js = jetstream::new(observer);

        let mut settings = BTreeMap::new();
        let mut replicas = Vec::new();
        for (role, count) in [
            (Role::Detector, options.detectors),
            (Role::Diagnoser, options.diagnosers),
            (Role::Remediator, options.remediators),
        ] {
            let mut env = deploy_env(role)?;
            // The campaign runs NATS without TLS (the TLS path is tested in services/common/tests/tls.rs
            // and by deploy.rs against deploy/base's own nats.conf).
            env.retain(|(k, _)| k != "KUBESENT_NATS_TLS_CA");
            // Secrets a pod reads from mounted files are given here as the variables they stand for
            // (each replica's NATS password below, a scenario's model key as an override).
            env.retain(|(k, _)| k != "KUBESENT_NATS_PASSWORD_FILE" && k != "KUBESENT_API_KEY_FILE");
            // The autonomy policy is deploy/base's ConfigMap, written where the pod would mount it.
            if env.iter().any(|(k, _)| k == "KUBESENT_AUTONOMY_POLICY") {
                let policy = dir.join("autonomy-policy.yaml");
                std::fs::write(
                    &policy,
                    options.autonomy_policy.as_deref().unwrap_or(DEPLOY_AUTONOMY_POLICY),
                )?;
                env.retain(|(k, _)| k != "KUBESENT_AUTONOMY_POLICY");
                env.push(("KUBESENT_AUTONOMY_POLICY".into(), policy.display().to_string()));
            }
            for (key, value) in &options.overrides {
                env.retain(|(k, _)| k != key);
                env.push((key.clone(), value.clone()));
            }
            settings.insert(role.as_str(), env.clone());
            for index in 0..count {
                let identity = format!("kubesent-{}-{index}", role.as_str());
                let token = sim.service_account_token("kubesent", role.service_name());
                let config = kubeconfig(&dir, &identity, &sim.url(), &token)?;
                // As the kubelet expands `$(POD_NAME)` in a Deployment's env values.
                let expanded: Vec<(String, String)> =
                    env.iter().map(|(k, v)| (k.clone(), v.replace("$(POD_NAME)", &identity))).collect();
                let mut spec = ServiceSpec::new(&options.exe, role, &identity, &nats.urls(), "")
                    .envs(expanded)
                    .envs(users.env(role))
                    .env("KUBECONFIG", config.display())
                    .env("POD_NAME", &identity);
                spec.log = Some(dir.join(format!("{identity}.log")));
                let process = ServiceProcess::spawn(spec)?;
                replicas.push(Replica {
                    role,
                    identity,
                    token,
                    process,
                    restarts: 0,
                    stopped: false,
                    held: false,
                    counted: BTreeMap::new(),
                    counting: BTreeMap::new(),
                    peak_rss: 0,
                    cpu_before: 0.0,
                    cpu_now: 0.0,
                });
            }
        }
        let mut topology =
            Self { sim, kube, admin_token, nats, users, js, replicas, settings, dir, _temp: temp };
        // Started together on a fresh cluster, every replica must get ready without exiting once (a
        // crash-looping start is an error here, not something to restart).
        for replica in &mut topology.replicas {
            replica.process.wait_ready(Duration::from_secs(120)).await?;
        }
        Ok(topology)
    }

    /// Where the logs are.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts every replica that exited again (as a Deployment's ReplicaSet would), and samples RSS and
    /// CPU of the rest. Returns the identities restarted.
    pub fn supervise(&mut self) -> anyhow::Result<Vec<String>> {
        let mut restarted = Vec::new();
        for replica in &mut self.replicas {
            if replica.held {
                continue;
            }
            if replica.process.exited()?.is_some() {
                replica.cpu_before += replica.cpu_now;
                replica.cpu_now = 0.0;
                for (series, value) in std::mem::take(&mut replica.counting) {
                    *replica.counted.entry(series).or_default() += value;
                }
                let spec = replica.process.spec.clone();
                replica.process = ServiceProcess::spawn(spec)?;
                replica.restarts += 1;
                replica.stopped = false;
                restarted.push(replica.identity.clone());
            } else if let Some(pid) = replica.process.pid()
                && let Ok((rss, cpu)) = usage(pid)
            {
                replica.peak_rss = replica.peak_rss.max(rss);
                replica.cpu_now = cpu;
            }
        }
        Ok(restarted)
    }

    /// Waits (at most `limit`, starting replicas that exited) until every replica of `role` is ready.
    pub async fn wait_ready(&mut self, role: Role, limit: Duration) -> anyhow::Result<()> {
        let started = Instant::now();
        loop {
            self.supervise()?;
            let mut ready = true;
            for replica in self.replicas.iter().filter(|r| r.role == role) {
                ready &= !replica.stopped && replica.process.is_ready().await;
            }
            if ready || started.elapsed() > limit {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The identity holding `role`'s Lease, and when it was last renewed.
    pub async fn leader(&self, role: Role) -> anyhow::Result<Option<(String, Option<String>)>> {
        let leases: Api<Lease> = Api::namespaced(self.kube.clone(), "kubesent");
        let lease = leases.get_opt(role.service_name()).await?;
        Ok(lease.and_then(|l| l.spec).and_then(|s| {
            let holder = s.holder_identity?;
            Some((holder, s.renew_time.map(|t| t.0.to_string())))
        }))
    }

    /// The replica with `identity`.
    pub fn replica_mut(&mut self, identity: &str) -> Option<&mut Replica> {
        self.replicas.iter_mut().find(|r| r.identity == identity)
    }

    /// Sends `signal` (`KILL`, `TERM`, `STOP`, `CONT`) to the replica with `identity`.
    pub fn signal(&mut self, identity: &str, signal: &str) -> anyhow::Result<()> {
        let replica = self.replica_mut(identity).with_context(|| format!("no replica {identity}"))?;
        let Some(pid) = replica.process.pid() else { return Ok(()) };
        let status =
            std::process::Command::new("kill").args([&format!("-{signal}"), &pid.to_string()]).status()?;
        if !status.success() {
            bail!("kill -{signal} {pid} failed");
        }
        replica.stopped = signal == "STOP" || (replica.stopped && signal != "CONT" && signal != "KILL");
        Ok(())
    }

    /// Reads the outcome and SLI counts ([`COUNTED_SERIES`]) of every running remediator from its own
    /// `/metrics`. Called before a replica is killed or stopped, and now and then, so what an
    /// incarnation counted survives it (a restart starts its counters at zero).
    pub async fn sample_counts(&mut self) {
        for replica in self.replicas.iter_mut().filter(|r| r.role == Role::Remediator && !r.stopped) {
            if let Ok(text) = replica.process.metrics().await {
                for (series, value) in counted_series(&text) {
                    let now = replica.counting.entry(series).or_default();
                    *now = now.max(value);
                }
            }
        }
    }

    /// Waits (at most `limit`) until no verdict is waiting for, or held by, a remediator: every verdict
    /// handed back by a replica that died has been delivered again and answered, so a repeat would show
    /// in the counts now.
    pub async fn verdicts_settled(&mut self, limit: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < limit {
            let _ = self.supervise();
            let info = async {
                let stream = self.js.get_stream(kubesent_proto::VERDICTS_STREAM).await.ok()?;
                let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                    stream.get_consumer(kubesent_proto::REMEDIATOR_CONSUMER).await.ok()?;
                consumer.info().await.ok().map(|i| (i.num_pending, i.num_ack_pending))
            }
            .await;
            if info == Some((0, 0)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        false
    }

    /// The outcome and SLI counts summed over every remediator incarnation, by series.
    pub fn counts(&self) -> BTreeMap<String, f64> {
        let mut sum: BTreeMap<String, f64> = BTreeMap::new();
        for replica in &self.replicas {
            for (series, value) in replica.counted.iter().chain(replica.counting.iter()) {
                *sum.entry(series.clone()).or_default() += value;
            }
        }
        sum
    }

    /// Lets every stopped replica continue.
    pub fn continue_all(&mut self) -> anyhow::Result<()> {
        let stopped: Vec<String> =
            self.replicas.iter().filter(|r| r.stopped).map(|r| r.identity.clone()).collect();
        for identity in stopped {
            self.signal(&identity, "CONT")?;
        }
        Ok(())
    }

    /// Stops every replica (SIGTERM), the simulators and the broker.
    pub async fn stop(mut self) {
        let _ = self.continue_all();
        for replica in &mut self.replicas {
            let _ = replica.process.terminate().await;
        }
        self.sim.shutdown().await;
    }
}

/// deploy/base's autonomy policy (the ConfigMap `kubesent-autonomy`).
pub const DEPLOY_AUTONOMY_POLICY: &str = include_str!("../../../../deploy/base/autonomy.yaml");

/// The remediator series counted once per incident: outcomes recorded, by result, and the SLI histograms'
/// observation counts, by failure kind.
pub const COUNTED_SERIES: [&str; 3] = [
    "kubesent_remediator_outcomes_total{",
    "kubesent_remediator_failure_to_healed_seconds_count{",
    "kubesent_remediator_verdict_to_fix_seconds_count{",
];

/// The [`COUNTED_SERIES`] lines of a `/metrics` text, by series (name and labels).
pub fn counted_series(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|line| COUNTED_SERIES.iter().any(|prefix| line.starts_with(prefix)))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            Some((series.to_owned(), value.parse().ok()?))
        })
        .collect()
}

/// RSS in bytes and CPU seconds (user + system) of process `pid`, from /proc.
pub fn usage(pid: u32) -> anyhow::Result<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("VmRSS")?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> =
        stat.rsplit_once(')').map(|(_, rest)| rest.split_whitespace().collect()).unwrap_or_default();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of /proc/<pid>/stat: 11 and 12 after the state field.
    let cpu = (ticks(11) + ticks(12)) / 100.0;
    Ok((rss_kib * 1024, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_role_gets_the_settings_deploy_base_gives_it() {
        let detector = deploy_env(Role::Detector).expect("detector");
        let get =
            |env: &[(String, String)], key: &str| env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone());
        assert_eq!(get(&detector, "KUBESENT_STREAM_REPLICAS").as_deref(), Some("3"));
        assert!(get(&detector, "KUBESENT_EXCLUDED_NAMESPACES").is_some(), "the detector's own literal");
        let remediator = deploy_env(Role::Remediator).expect("remediator");
        assert!(get(&remediator, "KUBESENT_CONFIDENCE_THRESHOLD").is_some(), "the policy ConfigMap");
        assert_eq!(get(&remediator, "KUBESENT_NATS_USER").as_deref(), Some("kubesent-remediator"));
        assert!(deploy_env(Role::Operator).is_err());
    }

    #[test]
    fn this_process_has_a_resident_set_and_cpu_time() {
        let (rss, cpu) = usage(std::process::id()).expect("usage");
        assert!(rss > 0 && cpu >= 0.0);
    }
}
