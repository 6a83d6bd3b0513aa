//! A whole KubeSent installation in one process: a local nats-server, the Kubernetes API simulator, the
//! Gemini emulator and the three services as libraries. Used by the end-to-end tests.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use async_nats::jetstream;
use kubesent_common::{
    admin::Health,
    nats::{self, Role, Topology},
};
use kubesent_detector::{DetectorConfig, DetectorDeps, DetectorMetrics};
use kubesent_diagnoser::{DiagnoserConfig, DiagnoserDeps, DiagnoserMetrics};
use kubesent_gemini_sim::{GeminiSim, GeminiSimConfig};
use kubesent_kube_sim::{KubeSim, SimConfig};
use kubesent_remediator::{RemediatorConfig, RemediatorDeps, RemediatorMetrics};
use kubesent_testkit::nats_server::{NatsServer, NatsUsers};
use prometheus_client::registry::Registry;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Longest wait for the services to set up their streams.
const SETUP_TIMEOUT: Duration = Duration::from_secs(60);

/// The least-privilege RBAC the services are deployed with.
const RBAC_YAML: &str = include_str!("../../../deploy/base/rbac.yaml");

/// How the in-process installation is set up.
#[derive(Debug, Clone)]
pub struct StackOptions {
    /// Wall-clock seconds per simulated second in kube-sim's kubelet.
    pub time_scale: f64,
    /// How long a fixed pod must stay healthy to count as healed.
    pub verify_window: Duration,
    /// Whether the remediator only suggests.
    pub dry_run: bool,
    /// Turn on kube-sim's RBAC with `deploy/base/rbac.yaml` and give each service its own
    /// ServiceAccount token, so a missing permission fails.
    pub rbac: bool,
    /// The Kubernetes minor version kube-sim serves (`pods/resize` exists from 33).
    pub kubernetes_minor: u32,
    /// How long a pod may stay unschedulable before it is reported.
    pub pending_threshold: Duration,
    /// How long a running container may stay not ready before it is reported.
    pub unready_threshold: Duration,
    /// Ask gemini-sim when the rules are unsure (else rules only).
    pub model: bool,
    /// kube-sim's nodes (its three large workers by default).
    pub nodes: Vec<kubesent_kube_sim::nodes::NodeConfig>,
    /// Whether the remediator takes back a change that did not land or made things worse.
    pub take_back: bool,
    /// How long a revision serves healthy before it is recorded known-good.
    pub known_good_after: Duration,
    /// The remediator's autonomy policy file (every class auto when unset).
    pub autonomy_policy: Option<std::path::PathBuf>,
}

impl Default for StackOptions {
    fn default() -> Self {
        Self {
            time_scale: 0.05,
            verify_window: Duration::from_secs(2),
            dry_run: false,
            rbac: false,
            kubernetes_minor: SimConfig::default().kubernetes_minor,
            pending_threshold: Duration::from_secs(1),
            unready_threshold: Duration::from_secs(2),
            model: false,
            nodes: SimConfig::default().nodes,
            take_back: true,
            known_good_after: Duration::from_secs(2),
            autonomy_policy: None,
        }
    }
}

/// Metrics of the three services, for assertions.
pub struct StackMetrics {
    /// Detector metrics.
    pub detector: Arc<DetectorMetrics>,
    /// Diagnoser metrics.
    pub diagnoser: Arc<DiagnoserMetrics>,
    /// Remediator metrics.
    pub remediator: Arc<RemediatorMetrics>,
    registry: Registry,
}

impl StackMetrics {
    /// Every metric in the Prometheus text format, as `/metrics` serves it.
    pub fn text(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }
}

/// A running installation; [`Stack::stop`] shuts it down.
pub struct Stack {
    /// The broker, with the permission layout of `deploy/base` (each service connects as its own user).
    pub nats: NatsServer,
    /// The broker's users: each role's credentials, and the observer's.
    pub users: NatsUsers,
    /// The Kubernetes API simulator.
    pub kube_sim: KubeSim,
    /// The Gemini emulator.
    pub gemini_sim: GeminiSim,
    /// A Kubernetes client for the simulator.
    pub kube: kube::Client,
    /// A NATS client of the observer (allowed everything; the services never use it).
    pub nats_client: async_nats::Client,
    /// JetStream on that client.
    pub js: jetstream::Context,
    /// The services' metrics.
    pub metrics: StackMetrics,
    shutdown: CancellationToken,
    services: Vec<JoinHandle<()>>,
}

impl Stack {
    /// Starts everything and waits until the streams exist.
    pub async fn start(options: StackOptions) -> anyhow::Result<Self> {
        kubesent_common::install_crypto_provider();
        let (nats, users) = NatsServer::start_secured().await.context("starting nats-server")?;
        let kube_sim = KubeSim::start(SimConfig {
            time_scale: options.time_scale,
            kubernetes_minor: options.kubernetes_minor,
            nodes: options.nodes.clone(),
            ..SimConfig::default()
        })
        .await
        .context("starting kube-sim")?;
        let gemini_sim = GeminiSim::start(GeminiSimConfig::default()).await.context("starting gemini-sim")?;
        // Each service gets its own identity when RBAC is on; the test client is an administrator.
        let (kube, detector_kube, diagnoser_kube, remediator_kube) = if options.rbac {
            let admin = kube_sim.enable_rbac();
            kube_sim
                .apply_yaml(RBAC_YAML)
                .map_err(|e| anyhow::anyhow!("applying deploy/base/rbac.yaml: {}", e.message))?;
            let url = kube_sim.url();
            let client = |token: String| {
                let url = url.clone();
                async move { kubesent_common::kube_client_with_token(Some(&url), Some(&token)).await }
            };
            (
                client(admin).await?,
                client(kube_sim.service_account_token("kubesent", "kubesent-detector")).await?,
                client(kube_sim.service_account_token("kubesent", "kubesent-diagnoser")).await?,
                client(kube_sim.service_account_token("kubesent", "kubesent-remediator")).await?,
            )
        } else {
            let client = kubesent_common::kube_client(Some(&kube_sim.url())).await?;
            (client.clone(), client.clone(), client.clone(), client)
        };
        let nats_client =
            nats::connect_as(&users.args(nats.url(), Role::Admin), Role::Admin, "kubesent-stack").await?;
        let js = jetstream::new(nats_client.clone());
        let topology = Topology::default();
        // Each service sets up what it owns, as its own user.
        let as_role = |role: Role| {
            let args = users.args(nats.url(), role);
            async move {
                let client = nats::connect_as(&args, role, role.service_name()).await?;
                Ok::<_, anyhow::Error>(jetstream::new(client))
            }
        };
        let (detector_js, diagnoser_js, remediator_js) = (
            as_role(Role::Detector).await?,
            as_role(Role::Diagnoser).await?,
            as_role(Role::Remediator).await?,
        );

        let shutdown = CancellationToken::new();
        let mut registry = Registry::default();
        let metrics = StackMetrics {
            detector: DetectorMetrics::register(&mut registry),
            diagnoser: DiagnoserMetrics::register(&mut registry),
            remediator: RemediatorMetrics::register(&mut registry),
            registry,
        };
        let mut services = Vec::new();
        let ready: [Arc<Health>; 3] = Default::default();
        let detector = DetectorConfig {
            namespaces: Vec::new(),
            excluded_namespaces: vec!["kube-system".into()],
            leader: None,
            group_wait: kubesent_detector::DEFAULT_GROUP_WAIT,
            holds: kubesent_detector::incidents::Holds {
                unschedulable: options.pending_threshold,
                never_started: kubesent_detector::DEFAULT_START_THRESHOLD,
                not_ready: options.unready_threshold,
            },
            incident_ttl: kubesent_detector::DEFAULT_INCIDENT_TTL,
            topology: topology.clone(),
            known_good_after: options.known_good_after,
        };
        let deps = DetectorDeps {
            kube: detector_kube,
            js: detector_js,
            metrics: metrics.detector.clone(),
            health: ready[0].clone(),
        };
        let token = shutdown.clone();
        services.push(tokio::spawn(async move {
            if let Err(error) = kubesent_detector::run(detector, deps, token).await {
                tracing::error!(%error, "detector stopped");
            }
        }));
        let deps = DiagnoserDeps {
            kube: diagnoser_kube,
            js: diagnoser_js,
            metrics: metrics.diagnoser.clone(),
            models: if options.model {
                let settings = kubesent_diagnoser::llm::LlmSettings {
                    models: vec!["gemini-2.5-flash".into()],
                    backend: kubesent_diagnoser::llm::BackendKind::Gemini,
                    base_url: gemini_sim.url(),
                    api_key: Some(secrecy::SecretString::from("stack-key".to_owned())),
                    limits: kubesent_diagnoser::ratelimit::Limits { rpm: 600, tpm: None },
                    timeout: Duration::from_secs(10),
                    max_wait: Duration::from_secs(5),
                };
                kubesent_diagnoser::llm::build_chain(&settings, None)?
            } else {
                None
            },
            health: ready[1].clone(),
        };
        let config = DiagnoserConfig {
            topology: topology.clone(),
            known_good_after: options.known_good_after,
            ..DiagnoserConfig::default()
        };
        let token = shutdown.clone();
        services.push(tokio::spawn(async move {
            if let Err(error) = kubesent_diagnoser::run(config, deps, token).await {
                tracing::error!(%error, "diagnoser stopped");
            }
        }));
        let mut remediator = RemediatorConfig {
            topology,
            identity: "remediator-0".into(),
            verify_window: options.verify_window,
            verify_timeout: options.verify_window * 10 + Duration::from_secs(30),
            take_back: options.take_back,
            known_good_after: options.known_good_after,
            autonomy_policy: options.autonomy_policy.clone(),
            earned: kubesent_remediator::EarnedConfig {
                followup_every: Duration::from_millis(200),
                ..kubesent_remediator::EarnedConfig::default()
            },
            ..RemediatorConfig::default()
        };
        remediator.policy.dry_run = options.dry_run;
        let deps = RemediatorDeps {
            kube: remediator_kube,
            js: remediator_js,
            metrics: metrics.remediator.clone(),
            health: ready[2].clone(),
        };
        let token = shutdown.clone();
        services.push(tokio::spawn(async move {
            if let Err(error) = kubesent_remediator::run(remediator, deps, token).await {
                tracing::error!(%error, "remediator stopped");
            }
        })); // Ready when every service has set up what it owns (as its own user).
        for health in &ready {
            tokio::time::timeout(SETUP_TIMEOUT, health.wait_ready())
                .await
                .context("the services did not set up their streams in time")?;
        }
        Ok(Self { nats, users, kube_sim, gemini_sim, kube, nats_client, js, metrics, shutdown, services })
    }

    /// Stops the three services and waits for them (the broker and the simulators keep running, so what
    /// the services left behind can be inspected).
    pub async fn stop_services(&mut self) {
        self.shutdown.cancel();
        for service in self.services.drain(..) {
            let _ = service.await;
        }
    }

    /// Stops the services, then the simulators and the broker.
    pub async fn stop(mut self) {
        self.stop_services().await;
        self.kube_sim.shutdown().await;
        self.gemini_sim.shutdown().await;
    }
}
